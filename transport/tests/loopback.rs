//! Real sockets on loopback: unicast and multicast end to end, with in-process loss injection.
//! All agents run on the test thread with a back-off idle strategy (no busy-spinning).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use transport::frame;
use transport::{
    now_ns, Agent, Channel, Config, CounterId, IdleStrategy, ImageEvent, OfferError, Publication,
    Subscription,
};

const STREAM_ID: i32 = 77;

fn message(index: u64, length: usize) -> Vec<u8> {
    let mut m = vec![0u8; length.max(8)];
    m[..8].copy_from_slice(&index.to_le_bytes());
    for (k, b) in m.iter_mut().enumerate().skip(8) {
        *b = (index as usize + k) as u8;
    }
    m
}

fn test_config() -> Config {
    Config {
        nak_delay_multicast_max_ns: 200_000,
        nak_retry_ns: 2_000_000,
        retransmit_linger_ns: 1_000_000,
        heartbeat_interval_ns: 1_000_000,
        setup_interval_ns: 1_000_000,
        ..Config::with_term_length(1024 * 1024)
    }
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends `count` messages through `publication` and checks every subscription receives all of
/// them once, in order, within the deadline.
fn exchange(publication: &mut Publication, subs: &mut [Subscription], count: u64) {
    exchange_lengths(publication, subs, count, |i| 8 + (i as usize * 37) % 3000);
}

/// [`exchange`] with message `i` of `length(i)` bytes.
fn exchange_lengths(
    publication: &mut Publication,
    subs: &mut [Subscription],
    count: u64,
    length: impl Fn(u64) -> usize,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut idle = IdleStrategy::backoff();
    let mut next = 0u64;
    let mut received = vec![0u64; subs.len()];
    while received.iter().any(|&r| r < count) {
        assert!(
            Instant::now() < deadline,
            "timed out: offered {next}, received {received:?}, pub {:?}, subs {:?}",
            publication
                .counters()
                .iter()
                .filter(|c| c.1 > 0)
                .collect::<Vec<_>>(),
            subs.iter()
                .map(|s| s.counters().iter().filter(|c| c.1 > 0).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        );
        let mut work = 0;
        while next < count
            && publication.is_connected()
            && publication.sender().receiver_count() == subs.len()
        {
            match publication.offer(&message(next, length(next))) {
                Ok(_) => {
                    next += 1;
                    work += 1;
                }
                Err(OfferError::BackPressured) => break,
                Err(e) => panic!("offer: {e}"),
            }
        }
        let now = now_ns();
        work += publication.do_work(now);
        for (i, s) in subs.iter_mut().enumerate() {
            work += s.do_work(now);
            let r = &mut received[i];
            work += s.poll(
                |m, _| {
                    assert_eq!(m, &message(*r, m.len())[..], "subscriber {i} message {r}");
                    *r += 1;
                },
                256,
            );
        }
        idle.idle(work);
    }
}

/// A subscription on a free loopback port that drops `loss` of what it receives (seeded), and
/// a publication to it.
fn unicast_pair(loss: f64, seed: u64) -> (Subscription, Publication) {
    unicast_pair_with(loss, seed, test_config())
}

/// [`unicast_pair`] with both ends configured by `config`.
fn unicast_pair_with(loss: f64, seed: u64, config: Config) -> (Subscription, Publication) {
    let mut sub = Subscription::new(
        &Channel::unicast(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)),
        STREAM_ID,
        config.clone(),
    )
    .unwrap();
    let endpoint = match sub.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    };
    sub.inject_loss(loss, seed);
    let publication = Publication::new(&Channel::unicast(endpoint), STREAM_ID, config).unwrap();
    (sub, publication)
}

#[test]
fn unicast_on_loopback_delivers_every_message_in_order_despite_injected_loss() {
    let (sub, mut publication) = unicast_pair(0.05, 1);
    publication.inject_loss(0.05, 2);
    let mut subs = [sub];
    exchange(&mut publication, &mut subs, 5000);
    assert!(subs[0].counters().get(CounterId::DropsInjected) > 0);
    assert!(publication.counters().get(CounterId::Retransmits) > 0);
    assert!(matches!(
        subs[0].poll_event(),
        Some(ImageEvent::Available { .. })
    ));
}

#[test]
fn runs_of_equal_datagrams_received_in_place_survive_loss_and_length_changes() {
    runs_of_equal_datagrams_with(true, true);
}

/// The same with segmented sends read datagram by datagram.
#[test]
fn runs_of_equal_datagrams_sent_segmented_and_read_one_by_one_survive_loss_and_length_changes() {
    runs_of_equal_datagrams_with(true, false);
}

/// Coalesced runs broken part way (taken in place up to a datagram the in-order path does
/// not take, the rest the general way) deliver every message intact: messages of many
/// lengths, fragmented ones among them, in small terms.
#[test]
fn coalesced_runs_broken_part_way_deliver_every_message_intact() {
    let config = Config {
        udp_segmentation: true,
        udp_coalescing: true,
        ..Config {
            nak_delay_multicast_max_ns: 200_000,
            nak_retry_ns: 2_000_000,
            retransmit_linger_ns: 1_000_000,
            heartbeat_interval_ns: 1_000_000,
            setup_interval_ns: 1_000_000,
            ..Config::with_term_length(64 * 1024)
        }
    };
    let (sub, mut publication) = unicast_pair_with(0.0, 1, config);
    let mut subs = [sub];
    exchange(&mut publication, &mut subs, 100_000);
    assert!(subs[0].counters().get(CounterId::CoalescedReceives) > 0);
}

/// The same without UDP segmentation offload: datagram by datagram through the kernel.
#[test]
fn runs_of_equal_datagrams_survive_loss_and_length_changes_without_udp_offload() {
    runs_of_equal_datagrams_with(false, false);
}

fn runs_of_equal_datagrams_with(udp_segmentation: bool, udp_coalescing: bool) {
    // Long runs of equal messages make equal full datagrams, which a subscription receives
    // straight into its log (with offload, runs of them coalesced in one read); injected loss,
    // shorter datagrams and changes of message length interrupt those runs in the middle of a
    // batch.
    let config = Config {
        udp_segmentation,
        udp_coalescing,
        ..test_config()
    };
    let (sub, mut publication) = unicast_pair_with(0.003, 5, config);
    let mut subs = [sub];
    exchange_lengths(&mut publication, &mut subs, 60_000, |i| {
        match (i / 5000) % 4 {
            0 | 2 => 64,
            1 => 100 + (i % 3) as usize,
            _ => 64 + (i % 1500) as usize,
        }
    });
    assert!(subs[0].counters().get(CounterId::DropsInjected) > 0);
    assert!(publication.counters().get(CounterId::Retransmits) > 0);
    let segmented = publication.counters().get(CounterId::SegmentedSends);
    let coalesced = subs[0].counters().get(CounterId::CoalescedReceives);
    // Loopback takes segmented sends on every kernel since 4.18, coalesced reads since 5.0.
    assert_eq!(
        segmented > 0,
        udp_segmentation,
        "runs sent segmented: {segmented}"
    );
    assert_eq!(
        coalesced > 0,
        udp_coalescing,
        "runs read coalesced: {coalesced}"
    );
}

#[test]
fn a_subscriber_configured_for_a_smaller_mtu_recovers_the_publishers_larger_datagrams() {
    // Without coalesced reads (which take 64 KiB slots from the start), the subscription
    // sizes its receive slots for its own MTU; the publication's first larger datagrams
    // arrive truncated, are dropped, and come back as retransmits once the slots have grown.
    let sub = Subscription::new(
        &Channel::unicast(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)),
        STREAM_ID,
        Config {
            udp_coalescing: false,
            ..test_config()
        },
    )
    .unwrap();
    let endpoint = match sub.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    };
    let big = Config {
        mtu: 8192,
        ..test_config()
    };
    let mut publication = Publication::new(&Channel::unicast(endpoint), STREAM_ID, big).unwrap();
    let mut subs = [sub];
    exchange(&mut publication, &mut subs, 2000);
    assert!(
        subs[0].counters().get(CounterId::DropsMalformed) > 0,
        "some datagram arrived truncated before the slots grew"
    );
    assert!(publication.counters().get(CounterId::Retransmits) > 0);
}

#[test]
fn multicast_on_loopback_delivers_every_message_in_order_to_two_subscribers_despite_loss() {
    let port = free_port();
    let group = SocketAddrV4::new(
        Ipv4Addr::new(239, 255, 90, (std::process::id() % 200) as u8 + 1),
        port,
    );
    let channel = Channel::multicast(group, Ipv4Addr::LOCALHOST);
    let mut subs = Vec::new();
    for i in 0..2 {
        let mut s = match Subscription::new(&channel, STREAM_ID, test_config()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("SKIPPED: multicast on loopback unavailable here: {e}");
                return;
            }
        };
        s.inject_loss(0.03, 10 + i);
        subs.push(s);
    }
    let mut publication = Publication::new(&channel, STREAM_ID, test_config()).unwrap();
    exchange(&mut publication, &mut subs, 5000);
    for s in &subs {
        assert!(s.counters().get(CounterId::DropsInjected) > 0);
    }
    assert!(publication.counters().get(CounterId::NaksReceived) > 0);
}

/// A unicast subscription on an ephemeral loopback port, and its address.
fn unicast_subscription() -> (Subscription, SocketAddrV4) {
    unicast_subscription_with(test_config())
}

/// [`unicast_subscription`] with `config`.
fn unicast_subscription_with(config: Config) -> (Subscription, SocketAddrV4) {
    let sub = Subscription::new(
        &Channel::unicast(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)),
        STREAM_ID,
        config,
    )
    .unwrap();
    let std::net::SocketAddr::V4(endpoint) = sub.local_addr().unwrap() else {
        panic!("not v4")
    };
    (sub, endpoint)
}

#[test]
fn try_claim_writes_in_place_and_a_closed_publication_ends_the_image() {
    let (mut sub, endpoint) = unicast_subscription();
    let mut publication =
        Publication::new(&Channel::unicast(endpoint), STREAM_ID, test_config()).unwrap();
    assert_eq!(publication.offer(b"x"), Err(OfferError::NotConnected));
    let mut idle = IdleStrategy::backoff();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut claimed = false;
    let mut got = Vec::new();
    let mut ended = false;
    while !ended {
        assert!(Instant::now() < deadline, "claimed={claimed} got={got:?}");
        if !claimed && publication.is_connected() {
            let mut c = publication.try_claim(5).unwrap();
            c.buffer_mut().copy_from_slice(b"hello");
            c.commit();
            claimed = true;
            publication.close();
        }
        let now = now_ns();
        let mut work = publication.do_work(now) + sub.do_work(now);
        work += sub.poll(|m, _| got.push(m.to_vec()), 10);
        while let Some(e) = sub.poll_event() {
            if let ImageEvent::Unavailable { reason, .. } = e {
                assert_eq!(reason, transport::ImageEnd::EndOfStream);
                ended = true;
            }
        }
        idle.idle(work);
    }
    assert_eq!(got, vec![b"hello".to_vec()]);
}

#[test]
fn a_publication_whose_term_is_over_the_subscribers_cap_is_told_why_and_never_connects() {
    let (mut sub, endpoint) = unicast_subscription_with(Config {
        image_term_length_max: 1024 * 1024,
        ..test_config()
    });
    let mut publication = Publication::new(
        &Channel::unicast(endpoint),
        STREAM_ID,
        Config {
            setup_interval_ns: 1_000_000,
            ..Config::with_term_length(2 * 1024 * 1024)
        },
    )
    .unwrap();
    let mut idle = IdleStrategy::backoff();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Until several refusals came back (each SETUP interval's), never connected.
    while publication.counters().get(CounterId::ErrorFramesReceived) < 5 {
        assert!(Instant::now() < deadline, "{:?}", publication.counters());
        let now = now_ns();
        let work = publication.do_work(now) + sub.do_work(now);
        assert!(!publication.is_connected());
        assert_eq!(sub.receiver().image_count(), 0);
        idle.idle(work);
    }
    assert_eq!(publication.offer(b"x"), Err(OfferError::NotConnected));
    let refusal = publication.last_refusal().expect("told why");
    assert_eq!(refusal.reason, transport::RefusalReason::TermLengthOverCap);
    assert_eq!(
        refusal.text,
        "term length 2 MiB over its cap 1 MiB (image_term_length_max)"
    );
    assert_eq!(refusal.source, std::net::SocketAddr::V4(endpoint));
    assert!(refusal.at_ns <= now_ns());
    assert!(sub.poll_event().is_none());
    let c = sub.counters();
    assert!(c.get(CounterId::SetupsRefused) >= c.get(CounterId::ErrorFramesSent));
    assert!(c.get(CounterId::ErrorFramesSent) >= 5);
}

/// A publisher played by hand from a plain socket: SETUP and DATA frames of session
/// [`PEER_SESSION`], term 0 of a 1 MiB term, written exactly as the test wants them.
struct Peer {
    socket: UdpSocket,
    to: std::net::SocketAddr,
}

const PEER_SESSION: i32 = 0x5eed;
const PEER_TERM_LENGTH: usize = 1024 * 1024;

impl Peer {
    fn new(to: std::net::SocketAddr) -> Peer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        Peer { socket, to }
    }

    fn setup(&self) {
        let s = frame::Setup {
            flags: 0,
            term_offset: 0,
            session_id: PEER_SESSION,
            stream_id: STREAM_ID,
            initial_term_id: 0,
            active_term_id: 0,
            term_length: PEER_TERM_LENGTH as i32,
            mtu: 1408,
            ttl: 0,
        };
        self.socket.send_to(&s.encode(), self.to).unwrap();
    }

    /// One DATA frame at `term_offset` carrying `message(index, length - 32)`.
    fn data(index: u64, term_offset: usize, length: usize) -> Vec<u8> {
        let mut b = vec![0u8; length];
        frame::DataHeader {
            frame_length: length as i32,
            flags: frame::flags::UNFRAGMENTED,
            frame_type: frame::frame_type::DATA,
            term_offset: term_offset as i32,
            session_id: PEER_SESSION,
            stream_id: STREAM_ID,
            term_id: 0,
            reserved_value: 0,
        }
        .write(&mut b);
        let payload = length - frame::DATA_HEADER_LENGTH;
        b[frame::DATA_HEADER_LENGTH..].copy_from_slice(&message(index, payload));
        b
    }

    /// A heartbeat: a DATA header with no frame, saying the stream reached `term_offset`.
    fn heartbeat(term_offset: usize) -> [u8; frame::DATA_HEADER_LENGTH] {
        let mut b = [0u8; frame::DATA_HEADER_LENGTH];
        b.copy_from_slice(&Peer::data(0, term_offset, 64)[..frame::DATA_HEADER_LENGTH]);
        b[..4].copy_from_slice(&0i32.to_le_bytes());
        b
    }

    fn send(&self, datagram: &[u8]) {
        self.socket.send_to(datagram, self.to).unwrap();
    }

    /// The control frames the subscription sent us so far.
    fn control(&self) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = self.socket.recv(&mut buf) {
            v.push(buf[..n].to_vec());
        }
        v
    }
}

/// Sends `payload` to `to` (a loopback address) in a UDP datagram from a raw socket, with a
/// header written here: from `source_port`, with the right checksum or, if `corrupt`, one
/// that is wrong (the kernel then drops the datagram on receipt, but only after copying it
/// into the reader's buffer). Returns false when raw sockets are not permitted here.
fn send_raw(source_port: u16, to: SocketAddrV4, payload: &[u8], corrupt: bool) -> bool {
    use socket2::{Domain, Protocol, Socket, Type};
    let Ok(raw) = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP)) else {
        return false;
    };
    let length = (8 + payload.len()) as u16;
    let mut datagram = Vec::with_capacity(usize::from(length));
    datagram.extend_from_slice(&source_port.to_be_bytes());
    datagram.extend_from_slice(&to.port().to_be_bytes());
    datagram.extend_from_slice(&length.to_be_bytes());
    datagram.extend_from_slice(&[0, 0]);
    datagram.extend_from_slice(payload);
    // RFC 768: over a pseudo-header of addresses, protocol and length, then the datagram.
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&to.ip().octets());
    pseudo.extend_from_slice(&to.ip().octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&length.to_be_bytes());
    pseudo.extend_from_slice(&datagram);
    let mut sum: u32 = pseudo
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // 0 means "no checksum": a right one of 0 is sent as 0xffff, a wrong one is never 0.
    let right = match !(sum as u16) {
        0 => 0xffff,
        c => c,
    };
    let checksum = match (corrupt, right.wrapping_add(1)) {
        (false, _) => right,
        (true, 0) => 1,
        (true, wrong) => wrong,
    };
    datagram[6..8].copy_from_slice(&checksum.to_be_bytes());
    raw.send_to(&datagram, &SocketAddrV4::new(*to.ip(), 0).into())
        .unwrap();
    true
}

/// Runs `sub` until `done` says so (panicking after two seconds), and returns what it
/// delivered.
fn run_until(
    sub: &mut Subscription,
    what: &str,
    mut done: impl FnMut(&mut Subscription, &[Vec<u8>]) -> bool,
) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut idle = IdleStrategy::backoff();
    let mut got = Vec::new();
    while !done(sub, &got) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: delivered {}, counters {:?}",
            got.len(),
            sub.counters()
                .iter()
                .filter(|c| c.1 > 0)
                .collect::<Vec<_>>()
        );
        let mut work = sub.do_work(now_ns());
        work += sub.poll(|m, _| got.push(m.to_vec()), 64);
        idle.idle(work);
    }
    got
}

/// A datagram that fails its UDP checksum is copied into the reader's buffer before the
/// kernel checks it, drops it and reads on. Received in place, that buffer is the image's log
/// past the rebuild position: what such a datagram left there must not read as frames
/// received, or the frame really sent for that place is refused as a duplicate and the
/// leftover delivered instead.
#[test]
fn bytes_left_in_the_log_by_a_datagram_failing_its_checksum_are_never_delivered() {
    let mut sub = Subscription::new(
        &Channel::unicast(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)),
        STREAM_ID,
        Config {
            nak_delay_unicast_ns: 100_000,
            ..test_config()
        },
    )
    .unwrap();
    let std::net::SocketAddr::V4(endpoint) = sub.local_addr().unwrap() else {
        panic!("not v4")
    };
    let peer = Peer::new(endpoint.into());
    peer.setup();
    run_until(&mut sub, "the image", |s, _| {
        s.receiver().image_count() == 1
    });
    // Datagrams of one length, in order: the subscription takes the next ones in place.
    const LONG: usize = 256;
    for i in 0..8u64 {
        peer.send(&Peer::data(i, i as usize * LONG, LONG));
        run_until(&mut sub, "in-order data", |_, got| got.len() == 1);
    }
    // A corrupted datagram lands where the next ones would, holding what looks like a frame
    // of the stream 128 bytes on.
    let at = 8 * LONG;
    const SHORT: usize = 64;
    let mut corrupted = vec![0u8; LONG];
    corrupted[128..128 + SHORT].copy_from_slice(&Peer::data(666, at + 128, SHORT));
    if !send_raw(40_000, endpoint, &corrupted, true) {
        eprintln!("SKIPPED: raw sockets are not permitted here");
        return;
    }
    std::thread::sleep(Duration::from_millis(5));
    sub.do_work(now_ns());
    // Shorter datagrams follow; the second is lost on the way, the third arrives, a heartbeat
    // shows the gap, and the lost one comes back once NAKed.
    peer.send(&Peer::data(8, at, SHORT));
    let mut got = run_until(&mut sub, "datagram 8", |_, got| got.len() == 1);
    let received = sub.counters().get(CounterId::DatagramsReceived);
    peer.send(&Peer::data(10, at + 2 * SHORT, SHORT));
    run_until(&mut sub, "datagram 10", |s, _| {
        s.counters().get(CounterId::DatagramsReceived) > received
    });
    peer.send(&Peer::heartbeat(at + 3 * SHORT));
    peer.control();
    run_until(&mut sub, "a NAK of datagram 9", |_, _| {
        peer.control().iter().any(|c| {
            matches!(frame::decode(c), Ok((frame::Frame::Nak(nak), _))
                if nak.term_offset as usize == at + SHORT)
        })
    });
    peer.send(&Peer::data(9, at + SHORT, SHORT));
    got.extend(run_until(&mut sub, "datagrams 9 and 10", |_, got| {
        got.len() == 2
    }));
    let expected: Vec<Vec<u8>> = (8..11).map(|i| message(i, SHORT - 32)).collect();
    assert_eq!(got, expected);
}

/// A control datagram the kernel refuses for its destination (here an answer to a source
/// claiming port 0, where nothing can be sent) costs only itself: the status messages queued
/// behind it in the same batch still go out.
#[test]
fn a_status_message_the_kernel_refuses_does_not_take_the_rest_of_its_batch_with_it() {
    let (mut sub, endpoint) = unicast_subscription();
    // Data of sessions the subscription does not know: each source is asked for a SETUP, the
    // stranger first.
    let mut stranger = Peer::data(0, 0, 64);
    stranger[12..16].copy_from_slice(&(PEER_SESSION + 1).to_le_bytes());
    if !send_raw(0, endpoint, &stranger, false) {
        eprintln!("SKIPPED: raw sockets are not permitted here");
        return;
    }
    let peer = Peer::new(endpoint.into());
    peer.send(&Peer::data(0, 0, 64));
    std::thread::sleep(Duration::from_millis(5));
    let mut asked = false;
    run_until(&mut sub, "the peer to be asked for a SETUP", |_, _| {
        asked |= peer.control().iter().any(|c| {
            matches!(frame::decode(c), Ok((frame::Frame::StatusMessage(sm), _))
                if sm.session_id == PEER_SESSION && sm.flags & frame::flags::SM_SEND_SETUP != 0)
        });
        asked
    });
    assert_eq!(sub.counters().get(CounterId::SocketErrors), 1);
}

/// The same for a publication: a reply to an RTT request from a stranger it cannot answer
/// costs only itself, not the data datagrams sent in the same batch (a multicast
/// publication's socket is not connected, so strangers reach it).
#[test]
fn a_reply_the_kernel_refuses_does_not_take_the_data_of_its_batch_with_it() {
    let group = SocketAddrV4::new(
        Ipv4Addr::new(239, 255, 91, (std::process::id() % 200) as u8 + 1),
        free_port(),
    );
    let channel = Channel::multicast(group, Ipv4Addr::LOCALHOST);
    let sub = match Subscription::new(&channel, STREAM_ID, test_config()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("SKIPPED: multicast on loopback unavailable here: {e}");
            return;
        }
    };
    let mut publication = Publication::new(&channel, STREAM_ID, test_config()).unwrap();
    let mut subs = [sub];
    exchange(&mut publication, &mut subs, 10);
    let std::net::SocketAddr::V4(control) = publication.local_addr().unwrap() else {
        panic!("not v4")
    };
    let request = frame::Rttm {
        flags: 0,
        session_id: publication.session_id(),
        stream_id: STREAM_ID,
        echo_timestamp: 1,
        reception_delta: 0,
        receiver_id: 1,
    }
    .encode();
    const ROUNDS: u64 = 20;
    for i in 0..ROUNDS {
        if !send_raw(0, control, &request, false) {
            eprintln!("SKIPPED: raw sockets are not permitted here");
            return;
        }
        // Past the publication's relaxed control poll interval: the next cycle reads the
        // request and sends its reply first, then the message.
        std::thread::sleep(Duration::from_millis(2));
        publication.offer(&message(i, 100)).unwrap();
        publication.do_work(now_ns());
        let got = run_until(&mut subs[0], "the message", |_, got| {
            publication.do_work(now_ns());
            got.len() == 1
        });
        assert_eq!(got, vec![message(i, 100)]);
    }
    assert_eq!(publication.counters().get(CounterId::SocketErrors), ROUNDS);
    assert_eq!(publication.counters().get(CounterId::Retransmits), 0);
}

/// A subscription polled while idle reads with one cheap call that returns no segment size,
/// so a run the kernel kept whole (a segmented send to a coalescing socket) comes back as one
/// datagram of all its bytes: its frames, back to back, deliver every message once, in order.
/// Once the stream's datagrams are that long (over 4 KiB), an idle read takes the next run
/// into the log in place instead, with its segment size.
#[test]
fn a_coalesced_run_read_by_an_idle_subscription_delivers_every_message() {
    let config = Config {
        udp_segmentation: true,
        udp_coalescing: true,
        // No heartbeat between the runs: a datagram of its own would set the stream's
        // datagram length the idle read goes by.
        heartbeat_interval_ns: 1_000_000_000,
        ..test_config()
    };
    let (sub, mut publication) = unicast_pair_with(0.0, 1, config);
    let mut subs = [sub];
    exchange(&mut publication, &mut subs, 10);
    let sub = &mut subs[0];
    let count = 200u64;
    let mut next = 1000u64;
    // Returns (datagrams counted, coalesced reads counted) of one run of `count` messages
    // sent while the subscription is idle, and checks that one duty cycle took it all.
    let mut idle_run = |sub: &mut Subscription, publication: &mut Publication| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while sub.do_work(now_ns()) > 0 || publication.do_work(now_ns()) > 0 {
            assert!(Instant::now() < deadline);
        }
        // Idle: the last read found nothing, so the next takes one datagram. (A duty cycle
        // that sent a status message on its timer counts as work: read again.)
        while sub.do_work(now_ns()) > 0 {
            assert!(Instant::now() < deadline);
        }
        let first = next;
        for i in 0..count {
            publication.offer(&message(first + i, 64)).unwrap();
        }
        let (runs, datagrams, coalesced) = (
            publication.counters().get(CounterId::SegmentedSends),
            sub.counters().get(CounterId::DatagramsReceived),
            sub.counters().get(CounterId::CoalescedReceives),
        );
        publication.do_work(now_ns());
        assert!(
            publication.counters().get(CounterId::SegmentedSends) > runs,
            "the messages went out as a segmented run"
        );
        std::thread::sleep(Duration::from_millis(5));
        // One duty cycle. (Its count of work may include a status message sent on its timer,
        // so what it read is checked by the counters and by what the polls deliver.)
        sub.do_work(now_ns());
        while sub.poll(
            |m, _| {
                assert_eq!(m, &message(next, 64)[..]);
                next += 1;
            },
            usize::MAX,
        ) > 0
        {}
        assert_eq!(
            next,
            first + count,
            "every message of the run, in order, after one duty cycle"
        );
        assert_eq!(sub.counters().get(CounterId::DropsMalformed), 0);
        (
            sub.counters().get(CounterId::DatagramsReceived) - datagrams,
            sub.counters().get(CounterId::CoalescedReceives) - coalesced,
        )
    };
    // Small datagrams so far: the run comes whole through `recvfrom`.
    let (datagrams, coalesced) = idle_run(sub, &mut publication);
    assert_eq!((datagrams, coalesced), (1, 0), "the run arrived whole");
    // Now the stream's datagrams are a 20 KiB run: the next one goes in place, in segments.
    let (datagrams, coalesced) = idle_run(sub, &mut publication);
    assert_eq!(coalesced, 1, "read in place with its segment size");
    assert!(datagrams > 1, "taken datagram by datagram: {datagrams}");
}

/// A publication with more datagrams ready than a send batch holds sends them all in one duty
/// cycle: after a full batch it asks its sender again (and after one it did not fill, it
/// does not).
#[test]
fn a_publication_sends_more_than_a_batch_in_one_duty_cycle() {
    let config = Config {
        udp_segmentation: false,
        ..test_config()
    };
    let (sub, mut publication) = unicast_pair_with(0.0, 1, config);
    let mut subs = [sub];
    exchange(&mut publication, &mut subs, 10);
    // Each message fills a datagram of its own: more than a batch of them.
    let count = transport::driver::BATCH_DATAGRAMS as u64 + 8;
    let length = publication.sender().config().mtu - frame::DATA_HEADER_LENGTH;
    for i in 0..count {
        publication.offer(&message(i, length)).unwrap();
    }
    let sent = publication.counters().get(CounterId::DatagramsSent);
    publication.do_work(now_ns());
    assert_eq!(
        publication.sender().sender_position(),
        publication.position(),
        "everything offered went out in one duty cycle"
    );
    assert_eq!(
        publication.counters().get(CounterId::DatagramsSent) - sent,
        count
    );
}

#[test]
fn an_mtu_out_of_range_is_refused_as_invalid_config_by_either_end_never_a_panic() {
    for mtu in [0, 100, usize::MAX - 1023, usize::MAX] {
        let cfg = Config {
            mtu,
            ..test_config()
        };
        let endpoint = SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_port());
        let e = Subscription::new(&Channel::unicast(endpoint), STREAM_ID, cfg.clone())
            .expect_err("a subscription with a bad mtu");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "mtu={mtu}: {e}");
        assert!(e.to_string().contains("mtu="), "mtu={mtu}: {e}");
        let e = Publication::new(&Channel::unicast(endpoint), STREAM_ID, cfg)
            .expect_err("a publication with a bad mtu");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "mtu={mtu}: {e}");
    }
}
