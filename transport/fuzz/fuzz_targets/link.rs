//! A sender and a receiver joined by a link the input drives: it offers and claims messages,
//! moves time on, delivers, drops, duplicates and reorders datagrams each way, and may inject
//! raw datagrams or flip bytes of real ones. Checked after every step:
//!
//! - nothing panics, and no delivered message is longer than `message_length_max`;
//! - while the input has injected or corrupted nothing, every delivered message is one that
//!   was offered, whole, in order and once: each has a higher sequence number than the one
//!   before, the next one unless the receiver (re)joined since;
//! - at the end, after the link has run clean for a while: if the image never ended and
//!   nothing was injected, every message offered since the receiver joined was delivered.
#![no_main]
use std::collections::VecDeque;
use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use transport::{Config, ImageEvent, Receiver, Sender};

const SESSION_ID: i32 = 3;
const STREAM_ID: i32 = 7;
const TERM_LENGTH: usize = 64 * 1024;
/// Datagrams waiting on one direction of the link, at most.
const QUEUE_MAX: usize = 256;

/// The bytes of message `seq` of `length` (at least 8): the sequence number, then a pattern
/// drawn from it, so that a message spliced from others or cut short is seen.
fn message(seq: u64, length: usize) -> Vec<u8> {
    let mut m = seq.to_le_bytes().to_vec();
    m.extend((8..length).map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i) as u8));
    m
}

/// Reads the input front to back; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

struct Link {
    sender: Sender,
    receiver: Receiver,
    to_receiver: VecDeque<Vec<u8>>,
    to_sender: VecDeque<Vec<u8>>,
    now: u64,
    buf: Vec<u8>,
    /// Sequence number of the next message offered, and the length of each offered.
    next_seq: u64,
    lengths: Vec<usize>,
    /// Last sequence number delivered, and whether the receiver joined since.
    last: Option<u64>,
    joined_since: bool,
    /// The first message offered after the latest join (messages before it may be skipped).
    join_floor: u64,
    injected: bool,
    image_ended: bool,
}

impl Link {
    fn offer(&mut self, length: usize) {
        let max = self.sender.config().message_length_max;
        let length = length.clamp(8, max);
        if self.sender.offer(&message(self.next_seq, length)).is_ok() {
            self.lengths.push(length);
            self.next_seq += 1;
        }
    }

    fn claim(&mut self, length: usize, commit: bool) {
        let length = length.clamp(8, self.sender.config().payload_length_max());
        let seq = self.next_seq;
        if let Ok(mut claim) = self.sender.try_claim(length) {
            claim.buffer_mut().copy_from_slice(&message(seq, length));
            if commit {
                claim.commit();
                self.lengths.push(length);
                self.next_seq += 1;
            }
        }
    }

    /// Both sides' timers, then everything they have to send onto the link.
    fn pump(&mut self) {
        self.sender.handle_timeout(self.now);
        self.receiver.handle_timeout(self.now);
        for _ in 0..64 {
            let Some(t) = self.sender.poll_transmit(self.now, &mut self.buf) else {
                break;
            };
            push(&mut self.to_receiver, &self.buf[..t.length]);
        }
        for _ in 0..64 {
            let Some(t) = self.receiver.poll_transmit(self.now, &mut self.buf) else {
                break;
            };
            push(&mut self.to_sender, &self.buf[..t.length]);
        }
    }

    fn poll(&mut self, limit: usize) {
        while let Some(e) = self.receiver.poll_event() {
            match e {
                ImageEvent::Available { .. } => {
                    self.joined_since = true;
                    self.join_floor = self.next_seq;
                }
                ImageEvent::Unavailable { .. } => self.image_ended = true,
            }
        }
        let max = self.sender.config().message_length_max;
        let check = !self.injected;
        let (last, joined_since, next_seq) =
            (&mut self.last, &mut self.joined_since, self.next_seq);
        let lengths = &self.lengths;
        self.receiver.poll(
            |m, _| {
                assert!(
                    m.len() <= max,
                    "delivered {} bytes, over the maximum",
                    m.len()
                );
                if !check {
                    return;
                }
                assert!(m.len() >= 8, "delivered a message of {} bytes", m.len());
                let seq = u64::from_le_bytes(m[..8].try_into().unwrap());
                assert!(seq < next_seq, "delivered message {seq}, never offered");
                assert_eq!(
                    m,
                    &message(seq, lengths[seq as usize])[..],
                    "message {seq} corrupt"
                );
                if let Some(l) = *last {
                    assert!(seq > l, "message {seq} delivered after {l}");
                    if !*joined_since {
                        assert_eq!(seq, l + 1, "message {} skipped", l + 1);
                    }
                }
                *last = Some(seq);
                *joined_since = false;
            },
            limit,
        );
    }
}

fn push(queue: &mut VecDeque<Vec<u8>>, datagram: &[u8]) {
    if queue.len() == QUEUE_MAX {
        queue.pop_front();
    }
    queue.push_back(datagram.to_vec());
}

const SENDER_ADDR: &str = "10.0.0.1:1000";
const RECEIVER_ADDR: &str = "10.0.0.2:2000";

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let sender_addr: SocketAddr = SENDER_ADDR.parse().unwrap();
    let receiver_addr: SocketAddr = RECEIVER_ADDR.parse().unwrap();
    let cfg = Config {
        image_term_length_max: TERM_LENGTH,
        ..Config::with_term_length(TERM_LENGTH)
    };
    // The initial term id: near the i32 wrap, or anywhere.
    let initial_term_id = match input.byte() % 4 {
        0 => i32::MAX - i32::from(input.byte() % 8),
        1 => i32::MIN + i32::from(input.byte() % 8),
        _ => i32::from_le_bytes([input.byte(), input.byte(), input.byte(), input.byte()]),
    };
    let mut link = Link {
        sender: Sender::new(cfg.clone(), SESSION_ID, STREAM_ID, initial_term_id, 0).unwrap(),
        receiver: Receiver::new(cfg, STREAM_ID, u64::from(input.byte())).unwrap(),
        to_receiver: VecDeque::new(),
        to_sender: VecDeque::new(),
        now: 1,
        buf: vec![0u8; 65536],
        next_seq: 0,
        lengths: Vec::new(),
        last: None,
        joined_since: false,
        join_floor: 0,
        injected: false,
        image_ended: false,
    };
    let mut steps = 0;
    while !input.0.is_empty() && steps < 4096 {
        steps += 1;
        match input.byte() % 16 {
            0 | 1 => {
                let length = match input.byte() % 4 {
                    0 => usize::from(input.u16()) % (TERM_LENGTH / 4 + 1),
                    1 => TERM_LENGTH / 4 - usize::from(input.byte()),
                    _ => usize::from(input.byte()),
                };
                link.offer(length);
            }
            2 => {
                let length = usize::from(input.u16());
                let commit = input.byte() % 4 != 0;
                link.claim(length, commit);
            }
            3 => link.now += u64::from(input.byte()) * 50_000,
            4 | 5 => {
                for _ in 0..=input.byte() % 8 {
                    if let Some(d) = link.to_receiver.pop_front() {
                        link.receiver.handle_datagram(link.now, sender_addr, &d);
                    }
                }
            }
            6 | 7 => {
                for _ in 0..=input.byte() % 8 {
                    if let Some(d) = link.to_sender.pop_front() {
                        link.sender.handle_datagram(link.now, receiver_addr, &d);
                    }
                }
            }
            8 => {
                link.to_receiver.pop_front();
            }
            9 => {
                link.to_sender.pop_front();
            }
            10 => {
                if let Some(d) = link.to_receiver.front().cloned() {
                    push(&mut link.to_receiver, &d);
                }
            }
            11 => {
                let n = link.to_receiver.len();
                if n >= 2 {
                    let i = usize::from(input.byte()) % n;
                    link.to_receiver.swap(0, i);
                }
            }
            12 => {
                link.injected = true;
                let n = usize::from(input.byte());
                let d = input.bytes(n).to_vec();
                link.receiver.handle_datagram(link.now, sender_addr, &d);
            }
            13 => {
                link.injected = true;
                let n = usize::from(input.byte());
                let d = input.bytes(n).to_vec();
                link.sender.handle_datagram(link.now, receiver_addr, &d);
            }
            14 => {
                let (at, xor) = (usize::from(input.u16()), input.byte());
                if let Some(d) = link.to_receiver.front_mut() {
                    if !d.is_empty() && xor != 0 {
                        link.injected = true;
                        let i = at % d.len();
                        d[i] ^= xor;
                    }
                }
            }
            _ => {
                let limit = usize::from(input.byte() % 8);
                link.poll(if limit == 0 { usize::MAX } else { limit });
            }
        }
        link.pump();
        link.poll(usize::MAX);
    }
    // A clean link for a while: everything offered since the receiver joined must arrive.
    if link.next_seq == 0 || link.injected {
        return;
    }
    for _ in 0..3000 {
        link.now += 1_000_000;
        link.pump();
        while let Some(d) = link.to_receiver.pop_front() {
            link.receiver.handle_datagram(link.now, sender_addr, &d);
        }
        while let Some(d) = link.to_sender.pop_front() {
            link.sender.handle_datagram(link.now, receiver_addr, &d);
        }
        link.poll(usize::MAX);
        if link.image_ended || link.last.is_some_and(|l| l + 1 == link.next_seq) {
            break;
        }
    }
    if !link.image_ended && link.join_floor < link.next_seq {
        assert_eq!(
            link.last.map(|l| l + 1),
            Some(link.next_seq),
            "offered {} messages (the receiver joined before message {}), the last delivered was {:?}",
            link.next_seq,
            link.join_floor,
            link.last
        );
    }
});
