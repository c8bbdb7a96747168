//! The node over real UDP on loopback, driven by a minimal hand-written client (the `client`
//! crate builds the full one on the same protocol).

mod common;

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::*;
use schemas::ledger::{
    self, GetAccountEncoder, GetStatusEncoder, RequestHeaderEncoder, ResultCode,
    SessionConnectEncoder, SessionEventCode,
};
use sequencer::node::{Node, NodeConfig, INGRESS_STREAM_ID, REPLY_STREAM_ID};
use transport::{Agent, Channel, Publication, Subscription};

struct RawClient {
    id: u64,
    publication: Publication,
    subscription: Subscription,
    replies: Vec<(u64, Vec<u8>)>,
}

impl RawClient {
    fn connect(node: SocketAddr, id: u64) -> RawClient {
        let mut c = RawClient::open(node, id);
        let event = c.wait(is_session_event);
        assert_eq!(event_code(&event), Some(SessionEventCode::Connected));
        c
    }

    /// Opens the transport and sends `SessionConnect` without waiting for the answer.
    fn open(node: SocketAddr, id: u64) -> RawClient {
        let SocketAddr::V4(node) = node else {
            panic!("v4")
        };
        let publication = Publication::new(
            &Channel::unicast(node),
            INGRESS_STREAM_ID,
            transport::Config::default(),
        )
        .unwrap();
        let subscription = Subscription::new(
            &Channel::unicast("127.0.0.1:0".parse::<SocketAddrV4>().unwrap()),
            REPLY_STREAM_ID,
            transport::Config::default(),
        )
        .unwrap();
        let mut c = RawClient {
            id,
            publication,
            subscription,
            replies: Vec::new(),
        };
        let connect = c.connect_message();
        c.send_raw(&connect);
        c
    }

    /// This client's `SessionConnect`, naming its reply subscription's address.
    fn connect_message(&self) -> Vec<u8> {
        let reply_addr = self.subscription.local_addr().unwrap().to_string();
        let mut buf = vec![0u8; 128];
        let len = {
            let mut e = SessionConnectEncoder::wrap_with_header(&mut buf).unwrap();
            e.set_client_session_id(self.id)
                .set_response_stream_id(REPLY_STREAM_ID);
            e.set_response_channel(reply_addr.as_bytes()).unwrap();
            e.finish().unwrap()
        };
        buf.truncate(len);
        buf
    }

    /// Sends a request without waiting for its reply.
    fn send_request(&mut self, seq: u64, message: &[u8]) {
        let mut buf = vec![0u8; 24 + message.len()];
        {
            let mut h = RequestHeaderEncoder::wrap_with_header(&mut buf).unwrap();
            h.set_client_session_id(self.id).set_client_seq(seq);
        }
        buf[24..].copy_from_slice(message);
        self.send_raw(&buf);
    }

    /// Like `wait`, but gives up after `timeout`.
    fn try_wait(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.replies.iter().position(|(_, b)| pred(b)) {
                return Some(self.replies.remove(i).1);
            }
            if Instant::now() >= deadline {
                return None;
            }
            self.pump();
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn pump(&mut self) {
        let now = transport::now_ns();
        self.publication.do_work(now);
        self.subscription.do_work(now);
        let replies = &mut self.replies;
        self.subscription.poll(
            |bytes, _| {
                // Either a bare SessionEvent or ReplyHeader + reply.
                match ledger::decode(bytes) {
                    Ok(ledger::Decoded::ReplyHeader(h)) => {
                        replies.push((h.client_seq(), bytes[24..].to_vec()))
                    }
                    _ => replies.push((0, bytes.to_vec())),
                }
            },
            64,
        );
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.publication.offer(bytes).is_err() {
            assert!(Instant::now() < deadline, "could not offer");
            self.pump();
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn request(&mut self, seq: u64, message: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 24 + message.len()];
        {
            let mut h = RequestHeaderEncoder::wrap_with_header(&mut buf).unwrap();
            h.set_client_session_id(self.id).set_client_seq(seq);
        }
        buf[24..].copy_from_slice(message);
        self.send_raw(&buf);
        self.wait_seq(seq)
    }

    fn wait_seq(&mut self, seq: u64) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(i) = self.replies.iter().position(|(s, _)| *s == seq) {
                return self.replies.remove(i).1;
            }
            assert!(Instant::now() < deadline, "no reply to seq {seq}");
            self.pump();
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn wait(&mut self, mut pred: impl FnMut(&[u8]) -> bool) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(i) = self.replies.iter().position(|(_, b)| pred(b)) {
                return self.replies.remove(i).1;
            }
            assert!(Instant::now() < deadline, "no matching message");
            self.pump();
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

fn is_session_event(bytes: &[u8]) -> bool {
    matches!(ledger::decode(bytes), Ok(ledger::Decoded::SessionEvent(_)))
}

fn event_code(bytes: &[u8]) -> Option<SessionEventCode> {
    match ledger::decode(bytes) {
        Ok(ledger::Decoded::SessionEvent(e)) => e.code(),
        _ => None,
    }
}

fn result_of(reply: &[u8]) -> ResultCode {
    match ledger::decode(reply).unwrap() {
        ledger::Decoded::CommandReply(r) => r.result().unwrap(),
        ledger::Decoded::AccountReply(r) => r.result().unwrap(),
        other => panic!("unexpected reply {other:?}"),
    }
}

fn start_node(dir: &std::path::Path) -> Node {
    let mut config = NodeConfig::new(dir);
    config.pipeline = test_config(dir);
    config.listen = "127.0.0.1:0".parse().unwrap();
    Node::start(config).unwrap().0
}

fn get_account(id: u64) -> Vec<u8> {
    let mut buf = vec![0u8; 64];
    let len = {
        let mut e = GetAccountEncoder::wrap_with_header(&mut buf).unwrap();
        e.set_account_id(id);
        e.finish().unwrap()
    };
    buf.truncate(len);
    buf
}

#[test]
fn a_client_creates_deposits_transfers_and_queries_over_udp() {
    let dir = TempDir::new("node-basic");
    let node = start_node(dir.path());
    let mut c = RawClient::connect(node.local_addr(), 42);
    assert_eq!(
        result_of(&c.request(1, &create_external(99, 1))),
        ResultCode::Ok
    );
    assert_eq!(
        result_of(&c.request(2, &create_account(1, 1, true))),
        ResultCode::Ok
    );
    assert_eq!(
        result_of(&c.request(3, &create_account(2, 1, true))),
        ResultCode::Ok
    );
    assert_eq!(
        result_of(&c.request(4, &deposit(10, 1, 500))),
        ResultCode::Ok
    );
    assert_eq!(
        result_of(&c.request(5, &transfer(11, 1, 2, 200, 1))),
        ResultCode::Ok
    );
    assert_eq!(
        result_of(&c.request(6, &transfer(12, 1, 2, 301, 1))),
        ResultCode::InsufficientFunds
    );
    // A retry of the last command is answered with its original result and applies nothing;
    // an older one is refused as a duplicate (its transfer id is also retained).
    assert_eq!(
        result_of(&c.request(6, &transfer(12, 1, 2, 301, 1))),
        ResultCode::InsufficientFunds
    );
    assert_eq!(
        result_of(&c.request(5, &transfer(11, 1, 2, 200, 1))),
        ResultCode::DuplicateRequest
    );

    let reply = c.request(1 << 63, &get_account(1));
    let ledger::Decoded::AccountReply(a) = ledger::decode(&reply).unwrap() else {
        panic!()
    };
    assert_eq!((a.credits_posted(), a.debits_posted()), (500, 200));
    assert!(a.position() >= 6);

    let mut buf = [0u8; 32];
    let len = GetStatusEncoder::wrap_with_header(&mut buf)
        .unwrap()
        .finish()
        .unwrap();
    let reply = c.request((1 << 63) + 1, &buf[..len]);
    let ledger::Decoded::StatusReply(s) = ledger::decode(&reply).unwrap() else {
        panic!()
    };
    assert!(
        s.durable_position() >= 6,
        "the node fills in the durable position"
    );
    assert_eq!(s.sessions(), 1);
    node.shutdown();
}

#[test]
fn bad_input_is_dropped_or_refused_and_the_node_keeps_serving() {
    let dir = TempDir::new("node-bad");
    let node = start_node(dir.path());
    // Garbage datagrams straight at the listen port.
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    for len in [0usize, 1, 7, 31, 32, 64, 1500] {
        raw.send_to(&vec![0xA5; len], node.local_addr()).unwrap();
    }
    let mut c = RawClient::connect(node.local_addr(), 7);
    // An unknown template id behind a valid envelope is answered invalid_command.
    let mut bogus = [0u8; 16];
    bogus[..8].copy_from_slice(&[8, 0, 99, 0, 0x59, 0x1b, 1, 0]);
    assert_eq!(result_of(&c.request(1, &bogus)), ResultCode::InvalidCommand);
    // A request from a session that never connected is dropped and counted.
    let mut stranger = RawClient::connect(node.local_addr(), 8);
    stranger.id = 999;
    let mut buf = vec![0u8; 24];
    {
        let mut h = RequestHeaderEncoder::wrap_with_header(&mut buf).unwrap();
        h.set_client_session_id(999).set_client_seq(1);
    }
    buf.extend_from_slice(&create_account(5, 1, false));
    stranger.send_raw(&buf);
    // A command for a non-existent account gets a result code.
    assert_eq!(
        result_of(&c.request(2, &deposit(1, 12345, 10))),
        ResultCode::AccountNotFound
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while node
        .counters()
        .unknown_session
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the stranger's request was not counted"
        );
        stranger.pump();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        node.counters()
            .invalid_request
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    // Still serving.
    assert_eq!(
        result_of(&c.request(3, &create_external(99, 1))),
        ResultCode::Ok
    );
    node.shutdown();
}

#[test]
fn a_restarted_node_keeps_every_acknowledged_effect() {
    let dir = TempDir::new("node-restart");
    {
        let node = start_node(dir.path());
        let mut c = RawClient::connect(node.local_addr(), 1);
        c.request(1, &create_external(99, 1));
        c.request(2, &create_account(1, 1, true));
        for i in 0..50u64 {
            assert_eq!(
                result_of(&c.request(3 + i, &deposit(100 + u128::from(i), 1, 2))),
                ResultCode::Ok
            );
        }
        node.shutdown();
    }
    let node = start_node(dir.path());
    let mut c = RawClient::connect(node.local_addr(), 2);
    let reply = c.request(1 << 63, &get_account(1));
    let ledger::Decoded::AccountReply(a) = ledger::decode(&reply).unwrap() else {
        panic!()
    };
    assert_eq!(a.credits_posted(), 100);
    node.shutdown();
}

#[test]
fn a_flooding_client_does_not_starve_another_and_a_vanished_one_is_forgotten() {
    let dir = TempDir::new("node-flood");
    let mut config = NodeConfig::new(dir.path());
    config.pipeline = test_config(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.transport.image_liveness_timeout_ns = 300_000_000;
    let node = Node::start(config).unwrap().0;
    let mut quiet = RawClient::connect(node.local_addr(), 1);
    assert_eq!(
        result_of(&quiet.request(1, &create_external(99, 1))),
        ResultCode::Ok
    );
    assert_eq!(
        result_of(&quiet.request(2, &create_account(1, 1, false))),
        ResultCode::Ok
    );

    // The flooder offers as fast as its publication takes requests and never reads a reply.
    let mut flooder = RawClient::connect(node.local_addr(), 2);
    let started = Instant::now();
    let mut flooded = 0u64;
    while started.elapsed() < Duration::from_millis(500) {
        let mut buf = vec![0u8; 24];
        {
            let mut h = RequestHeaderEncoder::wrap_with_header(&mut buf).unwrap();
            h.set_client_session_id(2).set_client_seq(flooded + 1);
        }
        buf.extend_from_slice(&deposit(1_000_000 + u128::from(flooded), 1, 1));
        if flooder.publication.offer(&buf).is_ok() {
            flooded += 1;
        }
        flooder.publication.do_work(transport::now_ns());
        // The quiet client stays alive (heartbeats) while the flood goes on.
        if flooded.is_multiple_of(64) {
            quiet.pump();
        }
    }
    assert!(flooded > 100, "the flood was a flood");
    // The quiet client is still answered promptly.
    let t = Instant::now();
    assert_eq!(
        result_of(&quiet.request(3, &deposit(7, 1, 5))),
        ResultCode::Ok
    );
    assert!(t.elapsed() < Duration::from_secs(5));

    // The flooder vanishes without closing: its session is dropped after the liveness timeout.
    drop(flooder);
    let deadline = Instant::now() + Duration::from_secs(10);
    while node
        .counters()
        .sessions_closed
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the vanished session was never closed"
        );
        quiet.pump();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        result_of(&quiet.request(4, &deposit(8, 1, 5))),
        ResultCode::Ok
    );
    node.shutdown();
}

#[test]
fn a_command_with_too_many_transfers_is_answered_invalid_command() {
    let dir = TempDir::new("node-large");
    let node = start_node(dir.path());
    let mut c = RawClient::connect(node.local_addr(), 3);
    let mut buf = vec![0u8; 64 * 1024];
    let len = {
        let mut e = schemas::ledger::TransfersEncoder::wrap_with_header(&mut buf).unwrap();
        {
            let mut g = e.transfers().unwrap();
            for i in 0..(engine::TRANSFERS_PER_COMMAND_MAX as u64 + 1) {
                let mut t = g.next_entry().unwrap();
                t.id_mut().set_lo(i + 1);
                t.set_debit_account_id(1)
                    .set_credit_account_id(2)
                    .set_amount(1)
                    .set_ledger(1);
            }
        }
        e.finish().unwrap()
    };
    assert_eq!(
        result_of(&c.request(1, &buf[..len])),
        ResultCode::InvalidCommand
    );
    assert_eq!(
        result_of(&c.request(2, &create_external(99, 1))),
        ResultCode::Ok
    );
    node.shutdown();
}

fn node_with(dir: &std::path::Path, edit: impl FnOnce(&mut NodeConfig)) -> Node {
    let mut config = NodeConfig::new(dir);
    config.pipeline = test_config(dir);
    config.listen = "127.0.0.1:0".parse().unwrap();
    edit(&mut config);
    Node::start(config).unwrap().0
}

#[test]
fn a_session_reconnecting_from_a_new_reply_address_is_answered_there() {
    let dir = TempDir::new("node-reconnect-addr");
    let node = start_node(dir.path());
    let mut first = RawClient::connect(node.local_addr(), 5);
    assert_eq!(
        result_of(&first.request(1, &create_external(99, 1))),
        ResultCode::Ok
    );
    // The client restarts: new transport session, new reply address, same client session.
    drop(first);
    let mut second = RawClient::open(node.local_addr(), 5);
    let event = second
        .try_wait(Duration::from_secs(3), is_session_event)
        .expect("the reconnect is answered at the new reply address");
    assert_eq!(event_code(&event), Some(SessionEventCode::Connected));
    assert_eq!(
        result_of(&second.request(2, &create_account(1, 1, false))),
        ResultCode::Ok
    );
    node.shutdown();
}

#[test]
fn the_old_transport_session_ending_does_not_close_a_reconnected_session() {
    let dir = TempDir::new("node-reconnect-transport");
    let node = node_with(dir.path(), |c| {
        c.transport.image_liveness_timeout_ns = 300_000_000
    });
    let mut c = RawClient::connect(node.local_addr(), 6);
    assert_eq!(
        result_of(&c.request(1, &create_external(99, 1))),
        ResultCode::Ok
    );
    // The client restarts its publication only (same reply address) and connects again.
    let SocketAddr::V4(addr) = node.local_addr() else {
        panic!("v4")
    };
    let old = std::mem::replace(
        &mut c.publication,
        Publication::new(
            &Channel::unicast(addr),
            INGRESS_STREAM_ID,
            transport::Config::default(),
        )
        .unwrap(),
    );
    drop(old);
    let connect = c.connect_message();
    c.send_raw(&connect);
    let event = c.wait(is_session_event);
    assert_eq!(event_code(&event), Some(SessionEventCode::Connected));
    // The old transport session's image times out on the node.
    let wait_until = Instant::now() + Duration::from_millis(1_000);
    while Instant::now() < wait_until {
        c.pump();
        std::thread::sleep(Duration::from_millis(2));
    }
    c.send_request(2, &create_account(1, 1, false));
    let reply = c
        .try_wait(Duration::from_secs(3), |b| {
            matches!(ledger::decode(b), Ok(ledger::Decoded::CommandReply(_)))
        })
        .expect("the reconnected session is still served");
    assert_eq!(result_of(&reply), ResultCode::Ok);
    assert_eq!(node.counters().sessions_closed.load(Relaxed), 0);
    node.shutdown();
}

#[test]
fn a_refused_session_gets_no_command_applied() {
    let dir = TempDir::new("node-refused");
    let node = node_with(dir.path(), |c| c.sessions_max = 1);
    let mut a = RawClient::connect(node.local_addr(), 1);
    assert_eq!(
        result_of(&a.request(1, &create_external(99, 1))),
        ResultCode::Ok
    );
    assert_eq!(node.status().sequenced_position, 1);
    // A second session (the table is full) sends a command right behind its connect.
    let mut b = RawClient::open(node.local_addr(), 2);
    b.send_request(1, &create_account(77, 1, false));
    let event = b.wait(is_session_event);
    assert_eq!(event_code(&event), Some(SessionEventCode::Rejected));
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        b.pump();
        std::thread::sleep(Duration::from_millis(2));
    }
    let reply = a.request(1 << 63, &get_account(77));
    assert_eq!(result_of(&reply), ResultCode::AccountNotFound);
    assert_eq!(
        node.status().sequenced_position,
        1,
        "nothing from the refused session was sequenced"
    );
    node.shutdown();
}

#[test]
fn a_client_that_stops_reading_is_dropped_once_its_queue_is_full() {
    let dir = TempDir::new("node-stalled");
    let node = start_node(dir.path());
    let mut c = RawClient::connect(node.local_addr(), 9);
    let mut buf = [0u8; 32];
    let len = GetStatusEncoder::wrap_with_header(&mut buf)
        .unwrap()
        .finish()
        .unwrap();
    let mut request = vec![0u8; 24 + len];
    request[24..].copy_from_slice(&buf[..len]);
    // Queries without ever reading a reply again: 65,536 queue at the node, then more.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 0u64;
    while sent < 200_000 && node.counters().sessions_closed.load(Relaxed) == 0 {
        assert!(Instant::now() < deadline, "could not send the queries");
        {
            let mut h = RequestHeaderEncoder::wrap_with_header(&mut request).unwrap();
            h.set_client_session_id(9).set_client_seq((1 << 63) + sent);
        }
        if c.publication.offer(&request).is_ok() {
            sent += 1;
        } else {
            c.publication.do_work(transport::now_ns());
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.counters().sessions_closed.load(Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "a client with {sent} unread replies was never dropped"
        );
        c.publication.do_work(transport::now_ns());
        std::thread::sleep(Duration::from_millis(5));
    }
    node.shutdown();
}

#[test]
fn shutdown_delivers_every_reply_to_a_client_that_reads_slowly() {
    let dir = TempDir::new("node-shutdown-replies");
    let node = start_node(dir.path());
    let SocketAddr::V4(addr) = node.local_addr() else {
        panic!("v4")
    };
    // A client with a small receive window, so replies wait at the node for it.
    let small = transport::Config {
        term_length: transport::config::TERM_LENGTH_MIN,
        message_length_max: transport::config::TERM_LENGTH_MIN / 4,
        publication_window: transport::config::TERM_LENGTH_MIN / 2,
        receiver_window: 4096,
        ..transport::Config::default()
    };
    let mut c = RawClient {
        id: 11,
        publication: Publication::new(&Channel::unicast(addr), INGRESS_STREAM_ID, small.clone())
            .unwrap(),
        subscription: Subscription::new(
            &Channel::unicast("127.0.0.1:0".parse::<SocketAddrV4>().unwrap()),
            REPLY_STREAM_ID,
            small,
        )
        .unwrap(),
        replies: Vec::new(),
    };
    let connect = c.connect_message();
    c.send_raw(&connect);
    let event = c.wait(is_session_event);
    assert_eq!(event_code(&event), Some(SessionEventCode::Connected));
    c.send_request(1, &create_external(99, 1));
    c.send_request(2, &create_account(1, 1, false));
    const N: u64 = 2_000;
    for i in 0..N {
        c.send_request(3 + i, &deposit(1_000 + u128::from(i), 1, 1));
    }
    // Everything sent is taken (durable or answered busy) before the shutdown starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.status().durable_position < N + 2 {
        assert!(Instant::now() < deadline, "commands not durable");
        c.publication.do_work(transport::now_ns());
        std::thread::sleep(Duration::from_millis(1));
    }
    let stopper = std::thread::spawn(move || node.shutdown());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut seqs: Vec<u64> = c.replies.iter().map(|(s, _)| *s).collect();
        seqs.sort_unstable();
        seqs.dedup();
        if seqs.len() as u64 == N + 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {} durable replies arrived",
            seqs.len(),
            N + 2
        );
        c.pump();
        std::thread::sleep(Duration::from_micros(500));
    }
    stopper.join().unwrap();
}
