//! Deterministic network simulator: one or several publishers (distinct session ids, on one
//! stream or two), N receiving hosts, seeded loss, duplication, reordering, delay, partitions
//! and corruption (truncation, mangled headers, flipped bytes), virtual time. Every failure
//! prints its seed.
//!
//! Corruption and what stays checked: the protocol has no checksum of its own (UDP's catches
//! flipped bits on a real network), so a flipped payload byte is delivered as it arrived, a
//! flipped term offset or length misplaces data, and a flipped status message can raise a
//! receiver's window for good (so that it falls behind). Runs that check delivery exactly
//! (exactly once, in order, byte for byte) therefore corrupt only in ways the frame checks
//! must catch, both ways: any datagram cut short at any length, and a header field of any
//! frame set to a value the parser rejects (version, type, a misaligned term offset, a length
//! past the datagram's end). The chaos run flips arbitrary bytes of every datagram and checks
//! only what no input may break: no panic, and per image, messages delivered only while it is
//! live, at strictly increasing positions, within its join and end positions.

use std::collections::BinaryHeap;
use std::net::SocketAddr;

use transport::rng::Rng;
use transport::{
    Config, FlowControl, ImageEnd, ImageEvent, MessageHeader, OfferError, Receiver, Sender,
};

const STREAM_ID: i32 = 1001;
const SESSION_ID: i32 = 0x5eed;

#[derive(Clone, Copy, Debug)]
struct Faults {
    loss: f64,
    duplicate: f64,
    latency_ns: u64,
    jitter_ns: u64,
    /// Chance that a datagram is cut short (at any length, keeping at least one byte).
    truncate: f64,
    /// Chance that one frame header of a datagram gets a field the parser rejects.
    mangle: f64,
    /// Chance that a few bytes of a datagram are flipped (chaos runs only: content is no
    /// longer checked).
    flip: f64,
}

impl Faults {
    fn lossy(loss: f64) -> Self {
        Faults {
            loss,
            duplicate: 0.01,
            latency_ns: 100_000,
            jitter_ns: 80_000,
            truncate: 0.0,
            mangle: 0.0,
            flip: 0.0,
        }
    }
}

/// Where a datagram goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Node {
    /// A publisher, by index.
    Sender(usize),
    /// A receiving host, by index: every receiver there (one per stream) gets it.
    Host(usize),
}

#[derive(PartialEq, Eq)]
struct InFlight {
    at_ns: u64,
    seq: u64,
    to: Node,
    from: SocketAddr,
    bytes: Vec<u8>,
}

impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at_ns, other.seq).cmp(&(self.at_ns, self.seq))
    }
}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// A link cut: host `receiver`'s traffic (both ways) is dropped during `[from_ns, to_ns)`.
#[derive(Clone, Copy, Debug)]
struct Partition {
    receiver: usize,
    from_ns: u64,
    to_ns: u64,
}

/// What a receiver saw, in the order it happened: for the per-image checks of chaos runs.
#[derive(Clone, Copy, Debug)]
enum Seen {
    Event(ImageEvent),
    Message(MessageHeader),
}

struct Net {
    seed: u64,
    rng: Rng,
    faults: Faults,
    partitions: Vec<Partition>,
    queue: BinaryHeap<InFlight>,
    seq: u64,
    now_ns: u64,
    /// Publishers; publisher `k` offers the messages tagged `k << 32 | index`.
    senders: Vec<Sender>,
    hosts: usize,
    /// Receiver `r` subscribes on host `r % hosts` to stream `streams[r / hosts]`.
    receivers: Vec<Receiver>,
    /// Each receiver's messages, as tags, in delivery order.
    received: Vec<Vec<u64>>,
    events: Vec<Vec<ImageEvent>>,
    /// Each receiver's events and message headers in order (see [`Seen`]).
    seen: Vec<Vec<Seen>>,
    /// Whether delivered messages are checked byte for byte (off in chaos runs).
    check_content: bool,
    buf: Vec<u8>,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, (i + 1) as u8], 4000 + i as u16))
}

/// Publisher `k`'s address: publisher 0 has `addr(0)`, which no host uses.
fn sender_addr(k: usize) -> SocketAddr {
    if k == 0 {
        addr(0)
    } else {
        SocketAddr::from(([10, 0, 1, k as u8], 5000 + k as u16))
    }
}

/// Publisher `k`'s session id (`SESSION_ID` for the first).
fn session_of(k: usize) -> i32 {
    SESSION_ID + 0x1000 * k as i32
}

/// The message tagged `tag` (publisher `tag >> 32`, index `tag & 0xffff_ffff`): the tag, then
/// bytes that depend on the publisher, the index and the offset.
fn message(tag: u64, length: usize) -> Vec<u8> {
    let (publisher, index) = ((tag >> 32) as usize, tag as u32 as usize);
    let mut m = vec![0u8; length.max(8)];
    m[..8].copy_from_slice(&tag.to_le_bytes());
    for (k, b) in m.iter_mut().enumerate().skip(8) {
        *b = (index * 31 + k + publisher * 101) as u8;
    }
    m
}

fn check_message(seed: u64, bytes: &[u8]) -> u64 {
    assert!(bytes.len() >= 8, "seed={seed}: short message");
    let tag = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert_eq!(
        bytes,
        &message(tag, bytes.len())[..],
        "seed={seed}: corrupt message {tag:#x}"
    );
    tag
}

/// Offsets of the frames of a datagram, as a receiver walks them (DATA by their aligned
/// length, a heartbeat or PAD by its header, a control frame takes the rest).
fn frame_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        offsets.push(at);
        let length = i32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let ty = u16::from_le_bytes(bytes[at + 6..at + 8].try_into().unwrap());
        at += match ty {
            1 if length > 32 => (length as usize).next_multiple_of(32),
            0 | 1 => 32,
            _ => break,
        };
    }
    offsets
}

impl Net {
    fn new(seed: u64, receivers: usize, cfg: Config, faults: Faults) -> Net {
        Net::with_publishers(seed, receivers, cfg, faults, &[STREAM_ID])
    }

    /// Publisher `k` publishes on `streams_of[k]`, with session id `session_of(k)`; every
    /// host subscribes to each stream used.
    fn with_publishers(
        seed: u64,
        hosts: usize,
        cfg: Config,
        faults: Faults,
        streams_of: &[i32],
    ) -> Net {
        let senders: Vec<Sender> = streams_of
            .iter()
            .enumerate()
            .map(|(k, &stream_id)| {
                // Odd seeds start a few terms short of the term id's wrap (i32::MAX to
                // i32::MIN), which the run crosses; even seeds anywhere.
                let initial_term_id = if seed % 2 == 1 {
                    i32::MAX - ((seed + k as u64) % 8) as i32
                } else {
                    (seed as i32).wrapping_add(k as i32 * 7919)
                };
                Sender::new(cfg.clone(), session_of(k), stream_id, initial_term_id, 0)
                    .unwrap_or_else(|e| panic!("seed={seed}: {e}"))
            })
            .collect();
        let mut streams: Vec<i32> = streams_of.to_vec();
        streams.sort_unstable();
        streams.dedup();
        let rs: Vec<Receiver> = streams
            .iter()
            .flat_map(|&stream_id| (0..hosts).map(move |h| (stream_id, h)))
            .enumerate()
            .map(|(r, (stream_id, _))| {
                Receiver::new(cfg.clone(), stream_id, seed ^ ((r as u64 + 1) * 0x9E37)).unwrap()
            })
            .collect();
        let n = rs.len();
        Net {
            seed,
            rng: Rng::new(seed),
            faults,
            partitions: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            now_ns: 0,
            senders,
            hosts,
            receivers: rs,
            received: vec![Vec::new(); n],
            events: vec![Vec::new(); n],
            seen: vec![Vec::new(); n],
            check_content: true,
            buf: Vec::new(),
        }
    }

    /// The publishers whose stream receiver `r` subscribes to.
    fn publishers_of(&self, r: usize) -> Vec<usize> {
        let stream_id = self.receivers[r].stream_id();
        (0..self.senders.len())
            .filter(|&k| self.senders[k].stream_id() == stream_id)
            .collect()
    }

    fn cut(&self, host: usize) -> bool {
        self.partitions
            .iter()
            .any(|p| p.receiver == host && (p.from_ns..p.to_ns).contains(&self.now_ns))
    }

    /// Flips 1 to 3 bytes of `bytes` (each at least one bit).
    fn flip(&mut self, bytes: &mut [u8]) {
        for _ in 0..1 + self.rng.below(3) {
            let at = self.rng.below(bytes.len() as u64) as usize;
            bytes[at] ^= 1 + self.rng.below(255) as u8;
        }
    }

    /// Gives one frame header of `bytes` a field its parser must reject.
    fn mangle(&mut self, bytes: &mut [u8]) {
        let offsets = frame_offsets(bytes);
        if offsets.is_empty() {
            return;
        }
        let at = offsets[self.rng.below(offsets.len() as u64) as usize];
        let rest = (bytes.len() - at) as i32;
        // A PAD's length may well exceed the datagram (only its header travels), so that one
        // is not a field the parser can reject.
        let pad = bytes[at + 6..at + 8] == [0, 0];
        match self.rng.below(4) {
            // The version.
            0 => bytes[at + 4] = 1 + self.rng.below(255) as u8,
            // The type.
            1 => bytes[at + 6..at + 8].copy_from_slice(&0x7f00u16.to_le_bytes()),
            // The term offset (misaligned) of a DATA or PAD frame. At the same place other
            // frames (status messages, NAKs, RTT, ERR) hold their session id, which the parser
            // does not check: there it acts like a loss, which the exact checks allow.
            2 if bytes.len() >= at + 12 => bytes[at + 8] |= 1 + self.rng.below(31) as u8,
            // The length: past the datagram's end.
            3 if !pad => {
                let length = rest + 1 + self.rng.below(64) as i32;
                bytes[at..at + 4].copy_from_slice(&length.to_le_bytes());
            }
            _ => bytes[at + 4] = 1,
        }
    }

    /// The bytes that arrive of one copy of a datagram.
    fn damage(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut b = bytes.to_vec();
        let f = self.faults;
        if f.flip > 0.0 && self.rng.chance(f.flip) {
            self.flip(&mut b);
        }
        if f.mangle > 0.0 && self.rng.chance(f.mangle) {
            self.mangle(&mut b);
        }
        if f.truncate > 0.0 && b.len() > 1 && self.rng.chance(f.truncate) {
            let keep = 1 + self.rng.below(b.len() as u64 - 1) as usize;
            b.truncate(keep);
        }
        b
    }

    fn send(&mut self, from: SocketAddr, to: Node, bytes: &[u8], link: usize) {
        if self.cut(link) {
            return;
        }
        let copies = if self.rng.chance(self.faults.loss) {
            0
        } else if self.rng.chance(self.faults.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at_ns =
                self.now_ns + self.faults.latency_ns + self.rng.below(self.faults.jitter_ns + 1);
            let bytes = self.damage(bytes);
            self.seq += 1;
            self.queue.push(InFlight {
                at_ns,
                seq: self.seq,
                to,
                from,
                bytes,
            });
        }
    }

    /// Runs sends, polls and deliveries at the current time.
    fn pump(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(65536, 0);
        for k in 0..self.senders.len() {
            while let Some(t) = self.senders[k].poll_transmit(self.now_ns, &mut buf) {
                let bytes = buf[..t.length].to_vec();
                match t.destination {
                    None => {
                        for h in 0..self.hosts {
                            self.send(sender_addr(k), Node::Host(h), &bytes, h);
                        }
                    }
                    Some(d) => {
                        let h = (0..self.hosts).find(|&h| addr(h + 1) == d).unwrap();
                        self.send(sender_addr(k), Node::Host(h), &bytes, h);
                    }
                }
            }
        }
        for r in 0..self.receivers.len() {
            let seed = self.seed;
            let check = self.check_content;
            let publishers = self.publishers_of(r);
            let (got, seen) = (&mut self.received[r], &mut self.seen[r]);
            while let Some(e) = self.receivers[r].poll_event() {
                self.events[r].push(e);
                seen.push(Seen::Event(e));
            }
            self.receivers[r].poll(
                |m, h| {
                    seen.push(Seen::Message(*h));
                    if check {
                        let tag = check_message(seed, m);
                        let k = (tag >> 32) as usize;
                        assert!(
                            publishers.contains(&k) && h.session_id == session_of(k),
                            "seed={seed}: message {tag:#x} of another stream or session: {h:?}"
                        );
                        got.push(tag);
                    }
                },
                usize::MAX,
            );
            while let Some(e) = self.receivers[r].poll_event() {
                self.events[r].push(e);
                seen.push(Seen::Event(e));
            }
            let host = r % self.hosts;
            while let Some(t) = self.receivers[r].poll_transmit(self.now_ns, &mut buf) {
                let d = t
                    .destination
                    .expect("a receiver's datagram has a destination");
                let k = (0..self.senders.len())
                    .find(|&k| sender_addr(k) == d)
                    .unwrap_or_else(|| panic!("seed={seed}: datagram to a stranger {d}"));
                let bytes = buf[..t.length].to_vec();
                self.send(addr(host + 1), Node::Sender(k), &bytes, host);
            }
        }
        self.buf = buf;
    }

    /// Advances virtual time to the next event (at most `tick_ns` ahead) and delivers.
    fn step(&mut self, tick_ns: u64) {
        let mut next = self.now_ns + tick_ns;
        if let Some(h) = self.queue.peek() {
            next = next.min(h.at_ns);
        }
        for s in &self.senders {
            if let Some(t) = s.poll_timeout() {
                next = next.min(t.max(self.now_ns + 1));
            }
        }
        for r in &self.receivers {
            if let Some(t) = r.poll_timeout() {
                next = next.min(t.max(self.now_ns + 1));
            }
        }
        self.now_ns = next;
        while self.queue.peek().is_some_and(|h| h.at_ns <= self.now_ns) {
            let d = self.queue.pop().unwrap();
            match d.to {
                Node::Sender(k) => {
                    if !self.cut_from(d.from) {
                        self.senders[k].handle_datagram(self.now_ns, d.from, &d.bytes);
                    }
                }
                Node::Host(h) => {
                    if !self.cut(h) {
                        for r in (h..self.receivers.len()).step_by(self.hosts) {
                            self.receivers[r].handle_datagram(self.now_ns, d.from, &d.bytes);
                        }
                    }
                }
            }
        }
        for s in &mut self.senders {
            s.handle_timeout(self.now_ns);
        }
        for r in &mut self.receivers {
            r.handle_timeout(self.now_ns);
        }
    }

    fn cut_from(&self, from: SocketAddr) -> bool {
        (0..self.hosts).any(|h| addr(h + 1) == from && self.cut(h))
    }

    /// Whether every publisher counts every host subscribed to its stream as a receiver.
    fn all_joined(&self) -> bool {
        self.senders.iter().all(|s| {
            let hosts = self
                .receivers
                .iter()
                .filter(|r| r.stream_id() == s.stream_id())
                .count();
            s.receiver_count() >= hosts
        })
    }
}

/// Mostly short messages, some of a few MTUs, and a few of the largest length allowed or
/// near it (so that long messages meet term ends and the publication window).
fn lengths(seed: u64, count: usize, cfg: &Config) -> Vec<usize> {
    let mut rng = Rng::new(seed ^ 0xABCD);
    let max = cfg.message_length_max as u64;
    (0..count)
        .map(|_| match rng.below(100) {
            0 => max as usize,
            1 => (max - rng.below(max / 2)) as usize,
            2..=5 => 8 + rng.below(4 * cfg.mtu as u64) as usize,
            _ => 8 + rng.below(120) as usize,
        })
        .collect()
}

/// Offers `count` messages from each publisher (interleaved) and runs until every receiver
/// has them all from each publisher of its stream, or fails with the seed.
fn run_to_completion(net: &mut Net, count: usize, deadline_ns: u64) {
    let seed = net.seed;
    let publishers = net.senders.len();
    let lens: Vec<Vec<usize>> = (0..publishers)
        .map(|k| lengths(seed ^ (k as u64 * 0x5151), count, net.senders[k].config()))
        .collect();
    let mut next = vec![0usize; publishers];
    let mut steps = 0u64;
    // Late joiners start at the live position (Aeron semantics): offer once all have joined.
    while !net.all_joined() {
        assert!(
            net.now_ns < deadline_ns,
            "seed={seed}: receivers never joined"
        );
        net.pump();
        net.step(1_000_000);
    }
    let expected_of = |net: &Net, r: usize| net.publishers_of(r).len() * count;
    loop {
        for k in 0..publishers {
            while next[k] < count {
                let tag = (k as u64) << 32 | next[k] as u64;
                match net.senders[k].offer(&message(tag, lens[k][next[k]])) {
                    Ok(_) => next[k] += 1,
                    Err(OfferError::BackPressured | OfferError::NotConnected) => break,
                    Err(e) => panic!("seed={seed}: offer failed: {e}"),
                }
            }
        }
        net.pump();
        let done = next.iter().all(|&n| n == count)
            && (0..net.receivers.len()).all(|r| net.received[r].len() == expected_of(net, r));
        if done {
            break;
        }
        assert!(
            net.now_ns < deadline_ns,
            "seed={seed}: not done by {} ms: offered {next:?}/{count}, received {:?}\nsenders {:?}\nreceivers {:?}",
            deadline_ns / 1_000_000,
            net.received.iter().map(Vec::len).collect::<Vec<_>>(),
            net.senders.iter().map(|s| (s.position(), s.sender_position(), s.sender_limit(), s.counters().iter().filter(|c| c.1 > 0).collect::<Vec<_>>())).collect::<Vec<_>>(),
            net.receivers.iter().map(|r| (r.sessions().map(|s| r.image_positions(s)).collect::<Vec<_>>(), r.counters().iter().filter(|c| c.1 > 0).collect::<Vec<_>>())).collect::<Vec<_>>(),
        );
        net.step(1_000_000);
        steps += 1;
    }
    if std::env::var_os("SIM_VERBOSE").is_some() {
        eprintln!(
            "seed={seed} virtual_ms={} steps={steps}",
            net.now_ns / 1_000_000
        );
    }
    for (r, got) in net.received.iter().enumerate() {
        for k in net.publishers_of(r) {
            let of_k: Vec<u64> = got
                .iter()
                .filter(|&&t| (t >> 32) as usize == k)
                .map(|&t| t & 0xffff_ffff)
                .collect();
            let expected: Vec<u64> = (0..count as u64).collect();
            assert_eq!(
                of_k, expected,
                "seed={seed}: receiver {r} got publisher {k}'s messages out of order or twice"
            );
        }
    }
}

/// Seeds `base..base + n`; `n` is `default` or `$TRANSPORT_SIM_SEEDS` (for long runs, e.g.
/// `TRANSPORT_SIM_SEEDS=1000 cargo test --release -p transport --test sim`).
fn seeds(base: u64, default: u64) -> std::ops::Range<u64> {
    let n = std::env::var("TRANSPORT_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    base..base + n
}

fn sim_config(multicast: bool) -> Config {
    Config {
        multicast,
        flow_control: if multicast {
            FlowControl::Min
        } else {
            FlowControl::Unicast
        },
        ..Config::with_term_length(64 * 1024)
    }
}

#[test]
fn unicast_delivers_every_message_once_in_order_under_1_to_20_percent_loss() {
    for seed in seeds(0, 100) {
        let loss = 0.01 + (seed % 20) as f64 * 0.01;
        let mut net = Net::new(seed, 1, sim_config(false), Faults::lossy(loss));
        run_to_completion(&mut net, 1500, 60_000_000_000);
        assert!(
            loss < 0.02
                || net.senders[0]
                    .counters()
                    .get(transport::CounterId::Retransmits)
                    > 0,
            "seed={seed}: loss without retransmits"
        );
    }
}

#[test]
fn multicast_delivers_every_message_once_in_order_to_three_receivers_under_loss() {
    for seed in seeds(100, 50) {
        let loss = 0.01 + (seed % 20) as f64 * 0.01;
        let mut net = Net::new(seed, 3, sim_config(true), Faults::lossy(loss));
        run_to_completion(&mut net, 1500, 60_000_000_000);
    }
}

#[test]
fn a_short_partition_of_one_multicast_receiver_is_recovered_by_naks() {
    for seed in seeds(200, 20) {
        let mut net = Net::new(seed, 3, sim_config(true), Faults::lossy(0.02));
        net.partitions.push(Partition {
            receiver: 1,
            from_ns: 5_000_000,
            to_ns: 300_000_000,
        });
        run_to_completion(&mut net, 3000, 60_000_000_000);
    }
}

#[test]
fn nak_suppression_keeps_retransmits_below_one_per_receiver_for_shared_loss() {
    // Every receiver misses the same datagram (loss on the sender's side of the group):
    // random NAK delays and the retransmit linger must coalesce their NAKs.
    let seed = 300;
    let mut net = Net::new(seed, 3, sim_config(true), Faults::lossy(0.0));
    net.faults.duplicate = 0.0;
    let mut buf = vec![0u8; 65536];
    // Connect.
    for _ in 0..50 {
        net.pump();
        net.step(1_000_000);
    }
    assert!(net.senders[0].is_connected(), "seed={seed}");
    for i in 0..10u64 {
        net.senders[0].offer(&message(i, 64)).unwrap();
    }
    // Drop the first data datagram for everyone.
    let t = net.senders[0].poll_transmit(net.now_ns, &mut buf).unwrap();
    assert!(t.length > 0);
    net.senders[0].offer(&message(10, 64)).unwrap();
    for i in 11..20u64 {
        net.senders[0].offer(&message(i, 64)).unwrap();
    }
    for _ in 0..200 {
        net.pump();
        net.step(1_000_000);
    }
    let expected: Vec<u64> = (0..20).collect();
    for r in &net.received {
        assert_eq!(r, &expected, "seed={seed}");
    }
    let c = net.senders[0].counters();
    assert_eq!(
        c.get(transport::CounterId::Retransmits),
        1,
        "seed={seed}: {:?}",
        c
    );
}

#[test]
fn a_receiver_cut_off_beyond_the_retransmit_window_is_told_it_fell_behind_and_rejoins_live() {
    for seed in seeds(400, 10) {
        let cfg = Config {
            receiver_timeout_ns: 100_000_000,
            ..sim_config(true)
        };
        let mut net = Net::new(seed, 3, cfg, Faults::lossy(0.0));
        net.partitions.push(Partition {
            receiver: 2,
            from_ns: 20_000_000,
            to_ns: 400_000_000,
        });
        let count = 8000usize; // 8000 * 96 bytes: several 64 KiB terms
        let mut next = 0usize;
        while net.now_ns < 3_000_000_000 {
            // Paced: 10 messages per virtual millisecond, so the cut spans several terms.
            let allowed = ((net.now_ns / 1_000_000) as usize * 10).min(count);
            while next < allowed {
                match net.senders[0].offer(&message(next as u64, 64)) {
                    Ok(_) => next += 1,
                    Err(_) => break,
                }
            }
            net.pump();
            if next == count
                && net.received[0].len() == count
                && net.received[2].last() == Some(&(count as u64 - 1))
                && net.now_ns > 500_000_000
            {
                break;
            }
            net.step(1_000_000);
        }
        let fell = net.events[2].iter().find_map(|e| match e {
            ImageEvent::Unavailable {
                position,
                reason: ImageEnd::FellBehind { sender_position },
                ..
            } => Some((*position, *sender_position)),
            _ => None,
        });
        let (position, sender_position) = fell.unwrap_or_else(|| {
            panic!("seed={seed}: no fell-behind event: {:?} at {} ms; next {next}; received {:?}; r2 {:?} {:?}; sender {} {} {}", net.events[2], net.now_ns / 1_000_000,
                net.received.iter().map(Vec::len).collect::<Vec<_>>(), net.receivers[2].image_positions(SESSION_ID),
                net.receivers[2].counters().iter().filter(|c| c.1 > 0).collect::<Vec<_>>(),
                net.senders[0].position(), net.senders[0].sender_position(), net.senders[0].receiver_count())
        });
        assert!(sender_position > position, "seed={seed}");
        let rejoined = net.events[2]
            .iter()
            .filter(|e| matches!(e, ImageEvent::Available { .. }))
            .count();
        assert_eq!(
            rejoined, 2,
            "seed={seed}: joined, then rejoined at the live position"
        );
        // What receiver 2 got: a prefix, then (after the gap) a contiguous run to the end.
        let got = &net.received[2];
        let split = got
            .windows(2)
            .position(|w| w[1] != w[0] + 1)
            .map(|p| p + 1)
            .unwrap_or(got.len());
        assert!(
            got[..split].iter().enumerate().all(|(i, &m)| m == i as u64),
            "seed={seed}"
        );
        assert!(
            split < got.len(),
            "seed={seed}: nothing received after rejoining"
        );
        assert!(
            got[split..].windows(2).all(|w| w[1] == w[0] + 1),
            "seed={seed}: suffix not contiguous"
        );
        assert_eq!(*got.last().unwrap(), count as u64 - 1, "seed={seed}");
        assert_eq!(
            net.received[0].len(),
            count,
            "seed={seed}: live receivers unaffected"
        );
    }
}

#[test]
fn a_message_of_16_mib_is_fragmented_and_reassembled() {
    let seed = 500;
    let cfg = Config::with_term_length(64 * 1024 * 1024);
    assert_eq!(cfg.message_length_max, 16 * 1024 * 1024);
    let mut net = Net::new(seed, 1, cfg, Faults::lossy(0.0));
    net.faults.duplicate = 0.0;
    net.faults.jitter_ns = 0;
    for _ in 0..5 {
        net.pump();
        net.step(1_000_000);
    }
    let big = message(0, 16 * 1024 * 1024);
    net.senders[0].offer(&big).unwrap();
    let mut got = Vec::new();
    for _ in 0..100_000 {
        net.pump();
        let r = &mut net.receivers[0];
        r.poll(|m, _| got.push(m.len()), 10);
        if !got.is_empty() {
            break;
        }
        net.step(10_000);
    }
    // `pump` consumed the message into `received` (checked there) or we did.
    let total = net.received[0].len() + got.len();
    assert_eq!(total, 1, "seed={seed}");
}

#[test]
fn a_clean_close_ends_the_image_with_end_of_stream_after_all_data() {
    let seed = 600;
    let mut net = Net::new(seed, 2, sim_config(true), Faults::lossy(0.05));
    run_to_completion(&mut net, 200, 30_000_000_000);
    net.senders[0].close(net.now_ns);
    for _ in 0..2000 {
        net.pump();
        net.step(1_000_000);
        if net.senders[0].is_closed() && net.events.iter().all(|e| e.len() == 2) {
            break;
        }
    }
    assert!(net.senders[0].is_closed(), "seed={seed}");
    for e in &net.events {
        assert!(
            matches!(
                e.last(),
                Some(ImageEvent::Unavailable {
                    reason: ImageEnd::EndOfStream,
                    ..
                })
            ),
            "seed={seed}: {e:?}"
        );
    }
    assert_eq!(net.senders[0].offer(b"late"), Err(OfferError::Closed));
}

#[test]
fn a_min_receiver_back_from_a_cut_while_the_publisher_is_a_term_ahead_of_the_sender_stalls_no_one()
{
    // Min flow control. Receiver 1 is cut off until the sender drops it; the publication
    // goes on with receiver 0 until the sender has sent well into the term after receiver
    // 1's, and the publisher (a publication window ahead) has entered the term after that.
    // Receiver 1 comes back: its status message pulls the limit below the sender position
    // (min strategy), and it NAKs the rest of its term, which the sender still holds (the
    // third partition is not reused before the publisher enters a fourth term). Either it
    // is served or told it fell behind; in no case may the group stall.
    let seed = 700;
    let cfg = Config {
        receiver_timeout_ns: 100_000_000,
        ..sim_config(true)
    };
    let term = cfg.term_length as i64;
    let mut net = Net::new(seed, 2, cfg, Faults::lossy(0.0));
    net.faults.duplicate = 0.0;
    net.faults.jitter_ns = 0;
    while net.senders[0].receiver_count() < 2 {
        assert!(net.now_ns < 1_000_000_000, "never connected");
        net.pump();
        net.step(1_000_000);
    }
    let mut next = 0u64;
    let offer_one = |net: &mut Net, next: &mut u64| -> bool {
        match net.senders[0].offer(&message(*next, 64)) {
            Ok(_) => {
                *next += 1;
                true
            }
            Err(_) => false,
        }
    };
    for _ in 0..10 {
        assert!(offer_one(&mut net, &mut next));
    }
    for _ in 0..5 {
        net.pump();
        net.step(1_000_000);
    }
    assert_eq!(net.received[1].len(), 10);
    net.partitions.push(Partition {
        receiver: 1,
        from_ns: net.now_ns,
        to_ns: u64::MAX,
    });
    while net.senders[0].receiver_count() > 1 {
        assert!(net.now_ns < 2_000_000_000, "receiver 1 never timed out");
        net.pump();
        net.step(1_000_000);
    }
    // Send into the second term, past its middle.
    while net.senders[0].sender_position() < term + term / 2 + 1024 {
        while offer_one(&mut net, &mut next) && net.senders[0].position() < term + term / 2 + 2048 {
        }
        net.pump();
        net.step(100_000);
    }
    // The publisher runs a window ahead, into the third term.
    while offer_one(&mut net, &mut next) {}
    assert!(net.senders[0].position() > 2 * term && net.senders[0].sender_position() < 2 * term);
    // The cut heals; receiver 1's status message reaches the sender first.
    net.partitions[0].to_ns = net.now_ns;
    let mut buf = vec![0u8; 65536];
    net.now_ns += 20_000_000;
    let t = net.receivers[1]
        .poll_transmit(net.now_ns, &mut buf)
        .unwrap();
    net.senders[0].handle_datagram(net.now_ns, addr(2), &buf[..t.length]);
    assert_eq!(net.senders[0].receiver_count(), 2);
    let end = net.now_ns + 3_000_000_000;
    let target = next + 2000;
    while net.now_ns < end {
        while next < target && offer_one(&mut net, &mut next) {}
        net.pump();
        let fell = net.events[1].iter().any(|e| {
            matches!(
                e,
                ImageEvent::Unavailable {
                    reason: ImageEnd::FellBehind { .. },
                    ..
                }
            )
        });
        if next == target
            && net.received[0].len() as u64 == target
            && (fell || net.received[1].len() as u64 == target)
        {
            break;
        }
        net.step(1_000_000);
    }
    let expected: Vec<u64> = (0..target).collect();
    assert_eq!(
        net.received[0].len() as u64,
        target,
        "seed={seed}: receiver 0 stalled: offered {next}, sender pos {} sent {} limit {}, receiver 1 {:?} {:?}",
        net.senders[0].position(),
        net.senders[0].sender_position(),
        net.senders[0].sender_limit(),
        net.receivers[1].image_positions(SESSION_ID),
        net.receivers[1].counters().iter().filter(|c| c.1 > 0).collect::<Vec<_>>(),
    );
    assert_eq!(net.received[0], expected);
    let got = &net.received[1];
    assert!(
        got.len() as u64 == target || net.events[1].len() >= 2,
        "seed={seed}: receiver 1 neither caught up nor fell behind: {} {:?}",
        got.len(),
        net.events[1]
    );
    assert!(got.windows(2).all(|w| w[1] > w[0]), "seed={seed}");
}

/// Faults for the runs with several publishers: 1-20 % loss, and more duplication and
/// reordering than `Faults::lossy` (a jitter of four latencies' spacing).
fn busy(seed: u64) -> Faults {
    Faults {
        duplicate: 0.03,
        jitter_ns: 400_000,
        ..Faults::lossy(0.01 + (seed % 20) as f64 * 0.01)
    }
}

/// Each receiver saw exactly one image per publisher of its stream come and none go.
fn assert_one_image_per_session(net: &Net) {
    let seed = net.seed;
    for (r, events) in net.events.iter().enumerate() {
        let mut sessions: Vec<i32> = events
            .iter()
            .map(|e| match e {
                ImageEvent::Available { session_id, .. } => *session_id,
                other => panic!("seed={seed}: receiver {r}: {other:?}"),
            })
            .collect();
        sessions.sort_unstable();
        let expected: Vec<i32> = net.publishers_of(r).into_iter().map(session_of).collect();
        assert_eq!(sessions, expected, "seed={seed}: receiver {r}'s images");
    }
}

/// Checks what each receiver saw, image by image: messages only while their session's image
/// is live, at strictly increasing positions after its join position, and an end position
/// no lower than what was delivered. Returns how many messages were delivered in all.
fn assert_images_in_order(net: &Net) -> usize {
    let seed = net.seed;
    let mut messages = 0;
    for (r, seen) in net.seen.iter().enumerate() {
        // Live images: (session, join position, last position delivered).
        let mut live: Vec<(i32, i64, i64)> = Vec::new();
        for s in seen {
            match *s {
                Seen::Event(ImageEvent::Available {
                    session_id,
                    position,
                    ..
                }) => {
                    assert!(
                        live.iter().all(|l| l.0 != session_id),
                        "seed={seed}: receiver {r}: session {session_id:#x} joined twice"
                    );
                    live.push((session_id, position, position));
                }
                Seen::Event(ImageEvent::Unavailable {
                    session_id,
                    position,
                    ..
                }) => {
                    let k = live
                        .iter()
                        .position(|l| l.0 == session_id)
                        .unwrap_or_else(|| {
                            panic!("seed={seed}: receiver {r}: {session_id:#x} ended, not live")
                        });
                    let (_, join, last) = live.remove(k);
                    assert!(
                        join <= position && last <= position,
                        "seed={seed}: receiver {r}: {session_id:#x} joined at {join}, \
                         delivered to {last}, ended at {position}"
                    );
                }
                Seen::Message(h) => {
                    messages += 1;
                    let l = live
                        .iter_mut()
                        .find(|l| l.0 == h.session_id)
                        .unwrap_or_else(|| {
                            panic!("seed={seed}: receiver {r}: message of no live image {h:?}")
                        });
                    assert!(
                        h.position > l.2,
                        "seed={seed}: receiver {r}: {h:?} after position {}",
                        l.2
                    );
                    l.2 = h.position;
                }
            }
        }
    }
    messages
}

#[test]
fn several_publishers_on_one_unicast_stream_each_deliver_every_message_once_in_order() {
    for seed in seeds(800, 30) {
        let publishers = 2 + seed as usize % 2;
        let streams = vec![STREAM_ID; publishers];
        let mut net = Net::with_publishers(seed, 1, sim_config(false), busy(seed), &streams);
        run_to_completion(&mut net, 500, 60_000_000_000);
        assert_one_image_per_session(&net);
    }
}

#[test]
fn several_publishers_multicast_to_three_receivers_deliver_each_session_once_in_order() {
    // Odd seeds put the last publisher on a stream of its own: every host then has a
    // receiver per stream, each of which must pass over the other stream's traffic.
    for seed in seeds(900, 16) {
        let publishers = 2 + (seed / 2) as usize % 2;
        let mut streams = vec![STREAM_ID; publishers];
        if seed % 2 == 1 {
            streams[publishers - 1] = STREAM_ID + 1;
        }
        let mut net = Net::with_publishers(seed, 3, sim_config(true), busy(seed), &streams);
        run_to_completion(&mut net, 400, 60_000_000_000);
        assert_one_image_per_session(&net);
    }
}

#[test]
fn truncated_and_mangled_datagrams_are_dropped_and_what_they_carried_is_recovered() {
    // Datagrams cut short, and frame headers with a field the parser rejects, both ways:
    // each is dropped (the rest of a datagram after a bad frame too) and what it carried
    // comes back by NAK, or by the next status message. Delivery is checked exactly (see
    // the module doc).
    let mut malformed = 0;
    for seed in seeds(1000, 20) {
        let (multicast, hosts, publishers) = corrupted_run_shape(seed);
        let streams = vec![STREAM_ID; publishers];
        let faults = Faults {
            truncate: 0.03,
            mangle: 0.03,
            ..busy(seed % 5)
        };
        let mut net = Net::with_publishers(seed, hosts, sim_config(multicast), faults, &streams);
        run_to_completion(&mut net, 400, 60_000_000_000);
        assert_one_image_per_session(&net);
        malformed += net
            .receivers
            .iter()
            .map(|r| r.counters().get(transport::CounterId::DropsMalformed))
            .sum::<u64>();
    }
    assert!(malformed > 0, "no corrupted datagram was caught");
}

/// A corrupted run's network by its seed: (multicast, hosts, publishers). Odd seeds are
/// multicast to three hosts, even ones unicast to one; two or three publishers.
fn corrupted_run_shape(seed: u64) -> (bool, usize, usize) {
    let multicast = seed % 2 == 1;
    (
        multicast,
        if multicast { 3 } else { 1 },
        2 + (seed / 2) as usize % 2,
    )
}

#[test]
fn bytes_flipped_anywhere_never_panic_nor_break_an_images_order() {
    // Flipped bytes anywhere, truncation, loss, duplication and reordering, in both
    // directions: what is delivered can no longer be checked byte for byte (no checksum), but
    // nothing may panic, and each image delivers in position order while it is live.
    for seed in seeds(1100, 12) {
        let (multicast, hosts, publishers) = corrupted_run_shape(seed);
        let mut streams = vec![STREAM_ID; publishers];
        if seed % 4 == 3 {
            streams[publishers - 1] = STREAM_ID + 1;
        }
        let faults = Faults {
            flip: 0.05,
            truncate: 0.02,
            ..busy(seed % 5)
        };
        let mut net = Net::with_publishers(seed, hosts, sim_config(multicast), faults, &streams);
        net.check_content = false;
        let lens: Vec<Vec<usize>> = (0..publishers)
            .map(|k| lengths(seed ^ k as u64, 4000, net.senders[k].config()))
            .collect();
        let mut next = vec![0usize; publishers];
        while net.now_ns < 1_500_000_000 {
            // Paced: 4 messages per publisher per virtual millisecond.
            let allowed = ((net.now_ns / 1_000_000) as usize * 4).min(4000);
            for k in 0..publishers {
                while next[k] < allowed {
                    let tag = (k as u64) << 32 | next[k] as u64;
                    match net.senders[k].offer(&message(tag, lens[k][next[k]])) {
                        Ok(_) => next[k] += 1,
                        Err(_) => break,
                    }
                }
            }
            net.pump();
            net.step(1_000_000);
        }
        let delivered = assert_images_in_order(&net);
        assert!(delivered > 0, "seed={seed}: nothing delivered");
    }
}
