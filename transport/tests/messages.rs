//! Messages end to end through a sender and a receiver wired back to back (no loss unless a
//! test drops a datagram itself): fragmentation and reassembly at the edges of the MTU, the
//! term and the publication window; offers and claims across term ends; what a receiver
//! reports when it loses part of a message.

use std::net::SocketAddr;

use transport::{Config, ImageEvent, OfferError, Receiver, Sender};

const STREAM: i32 = 7;
const SESSION: i32 = 3;

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
    // MTU): accepted by the config check, the message was back-pressured for good.
    let cfg = Config {
        publication_window: 16 * 1024,
        ..Config::with_term_length(64 * 1024)
    };
    assert_eq!(cfg.message_length_max, 16 * 1024);
    match cfg.validate() {
        Err(e) => assert!(
            e.0.contains("publication_window=16384") && e.0.contains("message_length_max"),
            "{e}"
        ),
        Ok(()) => {
            let mut p = Pair::new(cfg.clone(), 5);
            let m = message(0, cfg.message_length_max);
            p.offer(&m);
            p.drain();
            assert_eq!(p.got, vec![m]);
        }
    }
}
