//! Messages end to end through a sender and a receiver wired back to back (no loss unless a
//! test drops a datagram itself): fragmentation and reassembly at the edges of the MTU, the
//! term and the publication window; offers and claims across term ends; what a receiver
//! reports when it loses part of a message.

use std::net::SocketAddr;

use transport::frame::{self, flags};
use transport::{Config, ImageEnd, ImageEvent, OfferError, Receiver, Sender};

mod common;

use common::{data_frame as fragment, setup_at, SESSION, STREAM};

fn publication() -> SocketAddr {
    "10.0.0.9:4000".parse().unwrap()
}

fn subscriber() -> SocketAddr {
    "10.0.0.1:1000".parse().unwrap()
}

/// A message whose bytes say its index and length, so that a corrupt or truncated one shows.
fn message(index: u32, length: usize) -> Vec<u8> {
    (0..length)
        .map(|k| (index as usize * 131 + k * 7 + length) as u8)
        .collect()
}

/// A sender and a receiver joined by a lossless, in-order link.
struct Pair {
    s: Sender,
    r: Receiver,
    now: u64,
    buf: Vec<u8>,
    got: Vec<Vec<u8>>,
    events: Vec<ImageEvent>,
}

impl Pair {
    fn new(cfg: Config, initial_term_id: i32) -> Pair {
        let s = Sender::new(cfg.clone(), SESSION, STREAM, initial_term_id, 0).unwrap();
        let r = Receiver::new(cfg, STREAM, 1).unwrap();
        let mut p = Pair {
            s,
            r,
            now: 0,
            buf: vec![0u8; 65536],
            got: Vec::new(),
            events: Vec::new(),
        };
        for _ in 0..3 {
            p.exchange();
        }
        assert!(p.s.is_connected());
        p
    }

    /// Every datagram due, both ways, once; then the receiver's messages are polled.
    fn exchange(&mut self) {
        self.now += 1_000;
        while let Some(t) = self.s.poll_transmit(self.now, &mut self.buf) {
            self.r
                .handle_datagram(self.now, publication(), &self.buf[..t.length]);
        }
        let got = &mut self.got;
        self.r.poll(|m, _| got.push(m.to_vec()), usize::MAX);
        while let Some(e) = self.r.poll_event() {
            self.events.push(e);
        }
        while let Some(t) = self.r.poll_transmit(self.now, &mut self.buf) {
            assert_eq!(t.destination, Some(publication()));
            self.s
                .handle_datagram(self.now, subscriber(), &self.buf[..t.length]);
        }
        self.s.handle_timeout(self.now);
        self.r.handle_timeout(self.now);
    }

    /// Offers `m`, exchanging while back-pressured; fails if it is refused for good.
    fn offer(&mut self, m: &[u8]) -> i64 {
        for _ in 0..1_000 {
            match self.s.offer(m) {
                Ok(p) => return p,
                Err(OfferError::BackPressured) => self.exchange(),
                Err(e) => panic!("offer of {} bytes: {e}", m.len()),
            }
        }
        panic!(
            "offer of {} bytes back-pressured for good: position {} sent {} limit {}",
            m.len(),
            self.s.position(),
            self.s.sender_position(),
            self.s.sender_limit()
        );
    }

    /// Exchanges until the receiver has consumed everything offered.
    fn drain(&mut self) {
        for _ in 0..1_000 {
            self.exchange();
            let (subscriber, _, _) = self.r.image_positions(SESSION).unwrap();
            if subscriber == self.s.position() {
                return;
            }
        }
        panic!("never drained");
    }
}

#[test]
fn a_largest_message_offered_just_short_of_a_term_end_is_sent_not_back_pressured_for_good() {
    // The message needs more than the rest of the term, so the rest is padded; padding and
    // message together are longer than the publication window, though each alone fits.
    let cfg = Config::with_term_length(64 * 1024);
    let largest = cfg.message_length_max;
    let mut p = Pair::new(cfg.clone(), 5);
    let term = cfg.term_length;
    // Fill the term up to 16,128 bytes before its end, in 1,024-byte frames and one to fit.
    let before_end = 16 * 1024 - 256;
    let mut k = 0;
    while p.s.position() as usize + 1024 <= term - before_end {
        p.offer(&message(k, 1024 - 32));
        k += 1;
        p.drain();
    }
    let rest = term - before_end - p.s.position() as usize;
    if rest > 0 {
        p.offer(&message(k, rest - 32));
        k += 1;
    }
    p.drain();
    assert_eq!(p.s.position() as usize, term - before_end);
    p.offer(&message(k, largest));
    p.drain();
    assert_eq!(p.got.len(), k as usize + 1);
    assert_eq!(p.got.last().unwrap(), &message(k, largest));
}

#[test]
fn every_valid_config_sends_its_largest_message_or_refuses_it_with_an_error() {
    // A window as long as the largest message, but not as long as its frames (a header each
    // MTU), was accepted by the config check, and that message was back-pressured for good.
    // Windows about the frames' length, at MTUs from the smallest up: each config is refused
    // naming the window, or sends its largest message.
    let mut refused = 0;
    for mtu in [64, 96, 1408, 8192] {
        let base = Config {
            mtu,
            ..Config::with_term_length(64 * 1024)
        };
        let frames = base.frames_length(base.message_length_max);
        for window in [base.message_length_max, frames - 32, frames] {
            let cfg = Config {
                publication_window: window,
                ..base.clone()
            };
            match cfg.validate() {
                Err(e) => {
                    assert!(window < frames, "mtu {mtu}, window {window}: {e}");
                    assert!(e.0.contains(&format!("publication_window={window}")), "{e}");
                    refused += 1;
                }
                Ok(()) => {
                    let mut p = Pair::new(cfg.clone(), 5);
                    let m = message(0, cfg.message_length_max);
                    p.offer(&m);
                    p.drain();
                    assert_eq!(p.got, vec![m], "mtu {mtu}, window {window}");
                }
            }
        }
    }
    assert!(refused >= 4, "the windows short of the frames are refused");
}

/// A SETUP of the test session, 64 KiB terms from term id 5, joining at the start.
fn setup() -> [u8; frame::SETUP_LENGTH] {
    setup_at(0)
}

fn joined_receiver() -> Receiver {
    let mut r = Receiver::new(Config::with_term_length(64 * 1024), STREAM, 1).unwrap();
    r.handle_datagram(0, publication(), &setup());
    assert!(matches!(r.poll_event(), Some(ImageEvent::Available { .. })));
    r
}

#[test]
fn an_image_ending_part_way_through_a_message_reports_the_message_start_as_delivered_up_to() {
    // The first fragment of a message arrives and is taken into reassembly; the rest is
    // lost. "Everything before `position` was delivered": a catch-up from there (the
    // journal) must include that message, so the position is its start, not the end of
    // the fragment that was read.
    for fell_behind in [true, false] {
        let mut r = joined_receiver();
        r.handle_datagram(
            1,
            publication(),
            &fragment(SESSION, 5, 0, flags::UNFRAGMENTED, b"one"),
        );
        let first = fragment(SESSION, 5, 64, flags::BEGIN, &[7u8; 1376]);
        r.handle_datagram(2, publication(), &first);
        let mut got = Vec::new();
        r.poll(|m, _| got.push(m.to_vec()), usize::MAX);
        assert_eq!(got, vec![b"one".to_vec()]);
        let now = if fell_behind {
            // The sender is two terms on: the END fragment is gone for good.
            r.handle_datagram(
                3,
                publication(),
                &fragment(SESSION, 7, 0, flags::UNFRAGMENTED, b"x"),
            );
            3
        } else {
            10 + Config::default().image_liveness_timeout_ns
        };
        r.handle_timeout(now);
        r.poll(|m, _| got.push(m.to_vec()), usize::MAX);
        assert_eq!(got.len(), 1, "the torn message is not delivered");
        let ended = r.poll_event();
        let Some(ImageEvent::Unavailable {
            position, reason, ..
        }) = ended
        else {
            panic!("{ended:?}");
        };
        assert_eq!(
            matches!(reason, ImageEnd::FellBehind { .. }),
            fell_behind,
            "{reason:?}"
        );
        assert_eq!(
            position, 64,
            "{reason:?}: delivered up to the torn message's start"
        );
    }
}

#[test]
fn messages_at_the_mtu_edges_cross_term_ends_and_the_term_id_wrap_intact() {
    let cfg = Config::with_term_length(64 * 1024);
    let payload_max = cfg.payload_length_max();
    let lengths = [
        0,
        1,
        payload_max - 1,
        payload_max,
        payload_max + 1,
        2 * payload_max,
        2 * payload_max + 1,
        cfg.message_length_max,
        cfg.message_length_max - 1,
        777,
    ];
    // Term ids wrap from i32::MAX to i32::MIN two terms in.
    let mut p = Pair::new(cfg.clone(), i32::MAX - 1);
    let mut expected = Vec::new();
    let mut k = 0u32;
    while p.s.position() < 5 * cfg.term_length as i64 {
        let m = message(k, lengths[k as usize % lengths.len()]);
        if k % 7 == 3 {
            // A claim in place, and now and then one abandoned.
            let length = m.len().min(payload_max);
            let claim = loop {
                match p.s.try_claim(length) {
                    Ok(c) => break c,
                    Err(OfferError::BackPressured) => p.exchange(),
                    Err(e) => panic!("{e}"),
                }
            };
            let mut claim = claim;
            claim.buffer_mut().copy_from_slice(&m[..length]);
            if k.is_multiple_of(2) {
                claim.commit();
                expected.push(m[..length].to_vec());
            }
        } else {
            p.offer(&m);
            expected.push(m);
        }
        k += 1;
        p.exchange();
    }
    p.drain();
    assert_eq!(p.got.len(), expected.len());
    assert!(p.got == expected, "messages differ");
    assert_eq!(p.r.counters().drops_total(), 0);
}

#[test]
fn a_fragment_lost_mid_message_is_retransmitted_and_the_message_delivered_once() {
    let cfg = Config::with_term_length(64 * 1024);
    for lost in 0..4usize {
        let mut p = Pair::new(cfg.clone(), 5);
        let m = message(1, 4 * 1376 - 5); // four fragments
        p.s.offer(&m).unwrap();
        p.s.offer(b"after").unwrap();
        // Send the datagrams by hand, dropping the `lost`th.
        p.now += 1_000;
        let mut k = 0;
        while let Some(t) = p.s.poll_transmit(p.now, &mut p.buf) {
            if k != lost {
                p.r.handle_datagram(p.now, publication(), &p.buf[..t.length]);
            }
            k += 1;
        }
        p.drain();
        assert_eq!(p.got, vec![m.clone(), b"after".to_vec()], "lost {lost}");
        assert!(p.s.counters().get(transport::CounterId::Retransmits) >= 1);
    }
}

#[test]
fn interleaved_sessions_are_each_delivered_whole_and_in_order_under_a_poll_limit_of_one() {
    let cfg = Config::with_term_length(64 * 1024);
    let mut r = Receiver::new(cfg.clone(), STREAM, 1).unwrap();
    let sources: Vec<SocketAddr> = (0..3)
        .map(|i| format!("10.0.1.{i}:5000").parse().unwrap())
        .collect();
    let mut senders: Vec<Sender> = (0..3)
        .map(|i| Sender::new(cfg.clone(), 100 + i, STREAM, 1000 * i, 0).unwrap())
        .collect();
    let mut buf = vec![0u8; 65536];
    let mut now = 0;
    let mut got: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 3];
    let mut next = [0u32; 3];
    let count = 200u32;
    for round in 0..20_000 {
        now += 1_000;
        // Datagrams of the three sessions interleaved one by one.
        let mut pending: Vec<Vec<(usize, Vec<u8>)>> = vec![Vec::new(); 3];
        for (i, s) in senders.iter_mut().enumerate() {
            while next[i] < count {
                let length = [10usize, 3000, 1376, 1377, 4000][(next[i] as usize + i) % 5];
                if s.offer(&message(next[i] * 3 + i as u32, length)).is_err() {
                    break;
                }
                next[i] += 1;
            }
            while let Some(t) = s.poll_transmit(now, &mut buf) {
                pending[i].push((i, buf[..t.length].to_vec()));
            }
        }
        let longest = pending.iter().map(Vec::len).max().unwrap();
        for k in 0..longest {
            for p in &pending {
                if let Some((i, d)) = p.get(k) {
                    r.handle_datagram(now, sources[*i], d);
                }
            }
        }
        while r.poll(
            |m, h| got[(h.session_id - 100) as usize].push(m.to_vec()),
            1,
        ) == 1
        {}
        while let Some(t) = r.poll_transmit(now, &mut buf) {
            let i = sources
                .iter()
                .position(|s| Some(*s) == t.destination)
                .unwrap();
            senders[i].handle_datagram(now, subscriber(), &buf[..t.length]);
        }
        for s in &mut senders {
            s.handle_timeout(now);
        }
        r.handle_timeout(now);
        if got.iter().all(|g| g.len() == count as usize) {
            break;
        }
        assert!(
            round < 19_999,
            "{:?}",
            got.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }
    for (i, g) in got.iter().enumerate() {
        for (k, m) in g.iter().enumerate() {
            let length = [10usize, 3000, 1376, 1377, 4000][(k + i) % 5];
            assert!(
                m == &message(k as u32 * 3 + i as u32, length),
                "session {i} message {k}"
            );
        }
    }
}

fn malformed(r: &Receiver) -> u64 {
    r.counters().get(transport::CounterId::DropsMalformed)
}

/// Feeds a joined receiver the frames `(flags, payload)` back to back from the term's start,
/// one datagram each, and returns what a poll then delivers.
fn feed(r: &mut Receiver, frames: &[(u8, &[u8])]) -> Vec<Vec<u8>> {
    let mut offset = 0;
    for (fl, payload) in frames {
        let f = fragment(SESSION, 5, offset, *fl, payload);
        offset += f.len() as i32;
        r.handle_datagram(1, publication(), &f);
    }
    let mut got = Vec::new();
    r.poll(|m, _| got.push(m.to_vec()), usize::MAX);
    got
}

#[test]
fn fragments_out_of_sequence_are_dropped_and_counted_never_spliced_into_a_message() {
    let (b, e, u, mid) = (flags::BEGIN, flags::END, flags::UNFRAGMENTED, 0u8);
    // A whole message inside another one: the torn one is dropped, not finished with the
    // next message's end.
    let mut r = joined_receiver();
    let got = feed(&mut r, &[(b, b"A1"), (u, b"B"), (e, b"C2"), (u, b"D")]);
    assert_eq!(got, vec![b"B".to_vec(), b"D".to_vec()]);
    assert_eq!(malformed(&r), 2, "A1 torn, C2 with no beginning");
    // A message begun twice: the first is dropped.
    let mut r = joined_receiver();
    let got = feed(&mut r, &[(b, b"A1"), (b, b"D1"), (mid, b"D2"), (e, b"D3")]);
    assert_eq!(got, vec![b"D1D2D3".to_vec()]);
    assert_eq!(malformed(&r), 1);
    // Joining part way through a message is no lie: its end is dropped uncounted.
    let mut r = joined_receiver();
    let got = feed(
        &mut r,
        &[(mid, b"x2"), (e, b"x3"), (u, b"Y"), (b, b"Z1"), (e, b"Z2")],
    );
    assert_eq!(got, vec![b"Y".to_vec(), b"Z1Z2".to_vec()]);
    assert_eq!(malformed(&r), 0);
}

#[test]
fn no_message_over_a_quarter_term_is_delivered_whatever_the_fragments_say() {
    // Terms of 64 KiB: no message may exceed 16 KiB (the sender's `message_length_max` is at
    // most a quarter term). Found by the `link` fuzz target: an END fragment taking a message
    // over the limit delivered it, as the size was checked only while the message went on.
    let limit = 16 * 1024;
    let lengths = |got: Vec<Vec<u8>>| got.iter().map(Vec::len).collect::<Vec<_>>();
    let (b, e, u) = (flags::BEGIN, flags::END, flags::UNFRAGMENTED);
    // Exactly the limit in two fragments: delivered.
    let mut r = joined_receiver();
    let got = feed(&mut r, &[(b, &[1; 8 * 1024]), (e, &[2; 8 * 1024])]);
    assert_eq!(lengths(got), vec![limit]);
    assert_eq!(malformed(&r), 0);
    // One byte over, the excess in the END fragment: dropped and counted, and the stream
    // goes on with the next message.
    let mut r = joined_receiver();
    let got = feed(
        &mut r,
        &[(b, &[1; 8 * 1024]), (e, &[2; 8 * 1024 + 1]), (u, &[3; 10])],
    );
    assert_eq!(lengths(got), vec![10]);
    assert_eq!(malformed(&r), 1);
    // One whole frame over the limit: dropped and counted too.
    let mut r = joined_receiver();
    let got = feed(&mut r, &[(u, &[4; 16 * 1024 + 1]), (u, &[5; 10])]);
    assert_eq!(lengths(got), vec![10]);
    assert_eq!(malformed(&r), 1);
}
