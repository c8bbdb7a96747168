//! Receivers clean their terms lazily (in-order data overwrites last lap's bytes; only where a
//! frame lands beyond the rebuild position is the log zeroed first): a gap in a reused term
//! must never be bridged by a stale frame left there three terms earlier.

use std::net::SocketAddr;

use transport::frame::{self, flags};
use transport::{Config, Receiver};

mod common;

use common::{data_frame, setup_at, SESSION, STREAM, TERM_LENGTH as TERM};

const FRAME: usize = 128;
const PAYLOAD: usize = FRAME - frame::DATA_HEADER_LENGTH;
const FRAMES_PER_TERM: usize = TERM / FRAME;

fn source() -> SocketAddr {
    "10.0.0.1:1000".parse().unwrap()
}

fn payload(term: usize, i: usize) -> [u8; PAYLOAD] {
    let mut p = [0u8; PAYLOAD];
    p[..8].copy_from_slice(&(term as u64).to_le_bytes());
    p[8..16].copy_from_slice(&(i as u64).to_le_bytes());
    p
}

fn data(term: usize, i: usize) -> Vec<u8> {
    data_frame(
        SESSION,
        5 + term as i32,
        (i * FRAME) as i32,
        flags::UNFRAGMENTED,
        &payload(term, i),
    )
}

#[test]
fn a_gap_in_a_reused_term_is_not_bridged_by_last_laps_frames() {
    let mut r = Receiver::new(Config::with_term_length(TERM), STREAM, 1).unwrap();
    r.handle_datagram(0, source(), &setup_at(0));
    let mut got: Vec<(u64, u64)> = Vec::new();
    let poll = |r: &mut Receiver, got: &mut Vec<(u64, u64)>| {
        r.poll(
            |m, _| {
                got.push((
                    u64::from_le_bytes(m[..8].try_into().unwrap()),
                    u64::from_le_bytes(m[8..16].try_into().unwrap()),
                ))
            },
            usize::MAX,
        );
    };
    let mut now = 1;
    for term in 0..9 {
        let mut i = 0;
        while i < FRAMES_PER_TERM {
            now += 1;
            // From the fourth term on (partitions hold last lap's frames), frames 100..=105
            // arrive as 101..=105 first, then 100.
            if term >= 3 && i == 100 {
                for j in 101..=105 {
                    r.handle_datagram(now, source(), &data(term, j));
                }
                let before = got.len();
                poll(&mut r, &mut got);
                assert_eq!(got.len(), before, "term {term}: delivered across the gap");
                let (_, rebuild, hwm) = r.image_positions(SESSION).unwrap();
                let term_start = (term * TERM) as i64;
                assert_eq!(rebuild, term_start + 100 * FRAME as i64, "term {term}");
                assert_eq!(hwm, term_start + 106 * FRAME as i64, "term {term}");
                r.handle_datagram(now, source(), &data(term, 100));
                i = 106;
            } else {
                r.handle_datagram(now, source(), &data(term, i));
                i += 1;
            }
            poll(&mut r, &mut got);
        }
    }
    let expected: Vec<(u64, u64)> = (0..9)
        .flat_map(|t| (0..FRAMES_PER_TERM as u64).map(move |i| (t, i)))
        .collect();
    assert_eq!(got, expected);
}
