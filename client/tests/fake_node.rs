//! The client against a tiny fake node over the real transport on loopback: handshake,
//! blocking and pipelined requests, retries that keep `clientSeq` and bytes, refusals and the
//! end of a session. The fake node answers commands with canned `CommandReply`s (the original
//! reply for a retried `clientSeq`, like the engine) and `GetStatus` with a `StatusReply`.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use client::wire::{self, SessionEvent, ToNode};
use client::{Client, ClientConfig, ClientError, Request, ResultCode};
use schemas::ledger::{self, CommandReplyEncoder, Role, SessionEventCode, StatusReplyEncoder};
use transport::{now_ns, Agent, Channel, IdleStrategy, Publication, Subscription};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    /// Answer everything.
    Answer,
    /// Refuse every session.
    Reject,
    /// Ignore the first delivery of this command `clientSeq` (forces a retry).
    DropFirst(u64),
    /// Answer `closed` instead of the n-th command (1-based).
    CloseAt(u64),
    /// A transport that takes no stream with terms over 64 KiB (the client's are 1 MiB): it
    /// refuses the client's SETUP with an ERR frame.
    CapTerms,
}

/// What the fake node saw.
#[derive(Debug, Default)]
struct Seen {
    /// (clientSeq, bytes after the envelope header) of every request, in arrival order.
    requests: Vec<(u64, Vec<u8>)>,
    /// Commands applied (first delivery of each clientSeq).
    applied: u64,
}

struct FakeNode {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Seen>>,
}

impl FakeNode {
    fn spawn(behaviour: Behaviour) -> FakeNode {
        let mut sub = Subscription::new(
            &Channel::unicast("127.0.0.1:0".parse().unwrap()),
            wire::INGRESS_STREAM_ID,
            transport::Config {
                image_term_length_max: if behaviour == Behaviour::CapTerms {
                    64 * 1024
                } else {
                    transport::Config::default().image_term_length_max
                },
                ..transport::Config::default()
            },
        )
        .unwrap();
        let addr = sub.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut seen = Seen::default();
            let mut replies: Option<Publication> = None;
            let mut outbox: Vec<Vec<u8>> = Vec::new();
            let mut positions: HashMap<u64, u64> = HashMap::new();
            let mut dropped = false;
            let mut idle = IdleStrategy::backoff();
            while !stop_flag.load(Ordering::Relaxed) {
                let now = now_ns();
                let mut work = sub.do_work(now);
                let mut inbox: Vec<Vec<u8>> = Vec::new();
                work += sub.poll(|bytes, _| inbox.push(bytes.to_vec()), 256);
                for bytes in inbox {
                    match wire::decode_request(&bytes).unwrap() {
                        ToNode::Connect(c) => {
                            let to: SocketAddrV4 = c.response_channel.parse().unwrap();
                            replies = Some(
                                Publication::new(
                                    &Channel::unicast(to),
                                    c.response_stream_id,
                                    transport::Config::default(),
                                )
                                .unwrap(),
                            );
                            let code = if behaviour == Behaviour::Reject {
                                SessionEventCode::Rejected
                            } else {
                                SessionEventCode::Connected
                            };
                            let mut buf = vec![0u8; wire::SESSION_MESSAGE_LENGTH_MAX];
                            let len = wire::encode_session_event(
                                &mut buf,
                                &SessionEvent {
                                    client_session_id: c.client_session_id,
                                    code: Some(code),
                                    code_raw: code.raw(),
                                    position: 0,
                                    detail: "too many sessions".into(),
                                },
                            )
                            .unwrap();
                            buf.truncate(len);
                            outbox.push(buf);
                        }
                        ToNode::Request(env, body) => {
                            seen.requests.push((env.client_seq, body.to_vec()));
                            if behaviour == Behaviour::DropFirst(env.client_seq) && !dropped {
                                dropped = true;
                                continue;
                            }
                            let mut buf = vec![0u8; 512];
                            let head = wire::encode_reply_header(
                                &mut buf,
                                env.client_session_id,
                                env.client_seq,
                            )
                            .unwrap();
                            let is_status = matches!(
                                ledger::decode(body).unwrap(),
                                ledger::Decoded::GetStatus(_)
                            );
                            let len = if is_status {
                                let mut e =
                                    StatusReplyEncoder::wrap_with_header(&mut buf[head..]).unwrap();
                                e.set_role(Role::Leader)
                                    .set_position(seen.applied)
                                    .set_durable_position(seen.applied)
                                    .set_state_hash(0xABC)
                                    .set_sessions(1);
                                e.set_node_name(b"fake").unwrap();
                                e.finish().unwrap()
                            } else if behaviour == Behaviour::CloseAt(seen.applied + 1) {
                                buf.truncate(0);
                                buf.resize(wire::SESSION_MESSAGE_LENGTH_MAX, 0);
                                let len = wire::encode_session_event(
                                    &mut buf,
                                    &SessionEvent {
                                        client_session_id: env.client_session_id,
                                        code: Some(SessionEventCode::Closed),
                                        code_raw: SessionEventCode::Closed.raw(),
                                        position: seen.applied,
                                        detail: "shutting down".into(),
                                    },
                                )
                                .unwrap();
                                buf.truncate(len);
                                outbox.push(buf);
                                continue;
                            } else {
                                let position =
                                    *positions.entry(env.client_seq).or_insert_with(|| {
                                        seen.applied += 1;
                                        seen.applied
                                    });
                                let mut e = CommandReplyEncoder::wrap_with_header(&mut buf[head..])
                                    .unwrap();
                                e.set_position(position)
                                    .set_client_seq(env.client_seq)
                                    .set_result(ResultCode::Ok);
                                e.finish().unwrap()
                            };
                            buf.truncate(head + len);
                            outbox.push(buf);
                        }
                    }
                }
                if let Some(p) = replies.as_mut() {
                    while let Some(first) = outbox.first() {
                        if p.offer(first).is_err() {
                            break;
                        }
                        outbox.remove(0);
                        work += 1;
                    }
                    work += p.do_work(now);
                }
                idle.idle(work);
            }
            seen
        });
        FakeNode {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn config(node: SocketAddr, timeout_ms: u64, retries: u32) -> ClientConfig {
    ClientConfig {
        timeout: Duration::from_millis(timeout_ms),
        retries,
        ..ClientConfig::new(node)
    }
}

fn deposit(id: u128) -> Request {
    Request::Deposit {
        id,
        account_id: 10,
        amount: 5,
    }
}

#[test]
fn a_blocking_request_gets_its_typed_reply_after_the_handshake() {
    let node = FakeNode::spawn(Behaviour::Answer);
    let mut client = Client::connect(config(node.addr, 2000, 1)).unwrap();
    assert!(client.reply_addr().ip().is_loopback());
    let reply = client.request(&deposit(1)).unwrap();
    assert_eq!(reply.result(), Some(ResultCode::Ok));
    assert_eq!(reply.to_json()["client_seq"], 1);
    assert_eq!(
        client.wait(client::RequestId(1)),
        Err(ClientError::NotInFlight { client_seq: 1 }),
        "a completion is delivered once"
    );
    let status = client
        .request(&Request::GetStatus { min_position: 0 })
        .unwrap();
    assert_eq!(status.to_json()["role"], "leader");
    assert_eq!(status.to_json()["position"], 1);
    client.close();
    let seen = node.stop();
    assert_eq!(seen.applied, 1);
}

#[test]
fn pipelined_requests_all_complete_once_and_commands_arrive_in_sequence_order() {
    let node = FakeNode::spawn(Behaviour::Answer);
    let mut client = Client::connect(ClientConfig {
        in_flight_max: 64,
        ..config(node.addr, 2000, 1)
    })
    .unwrap();
    let total = 500u64;
    let mut started = 0u64;
    let mut completed = Vec::new();
    while (completed.len() as u64) < total {
        while started < total {
            let id = client.new_transfer_id();
            match client.try_send(&deposit(id)) {
                Ok(_) => started += 1,
                Err(ClientError::BackPressured { in_flight_max }) => {
                    assert_eq!(in_flight_max, 64);
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        client.poll(
            |id, result| {
                assert_eq!(result.unwrap().result(), Some(ResultCode::Ok));
                completed.push(id.0);
            },
            64,
        );
    }
    completed.sort_unstable();
    assert_eq!(completed, (1..=total).collect::<Vec<_>>());
    assert_eq!(client.in_flight(), 0);
    client.close();
    let seen = node.stop();
    let seqs: Vec<u64> = seen.requests.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
}

#[test]
fn a_lost_command_is_retried_with_the_same_seq_and_bytes_and_applied_once() {
    let node = FakeNode::spawn(Behaviour::DropFirst(2));
    let mut client = Client::connect(config(node.addr, 100, 3)).unwrap();
    let first = client.request(&deposit(11)).unwrap();
    let second = client.request(&deposit(22)).unwrap();
    assert_eq!(first.to_json()["position"], 1);
    assert_eq!(second.to_json()["position"], 2);
    assert_eq!(client.stats().retries, 1);
    client.close();
    let seen = node.stop();
    let twos: Vec<&Vec<u8>> = seen
        .requests
        .iter()
        .filter(|(s, _)| *s == 2)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(twos.len(), 2, "sent twice");
    assert_eq!(twos[0], twos[1], "the retry carries the same transfer id");
    assert_eq!(*twos[0], deposit(22).to_bytes().unwrap());
    assert_eq!(seen.applied, 2);
}

#[test]
fn a_refused_session_is_an_error_naming_the_code_and_detail() {
    let node = FakeNode::spawn(Behaviour::Reject);
    let err = Client::connect(config(node.addr, 2000, 0)).unwrap_err();
    assert_eq!(
        err,
        ClientError::Session {
            code: "rejected".into(),
            detail: "too many sessions".into()
        }
    );
}

#[test]
fn no_node_at_the_address_is_not_connected_after_the_timeout() {
    // Bind and drop a socket to find a port nobody listens on.
    let free = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let start = std::time::Instant::now();
    let err = Client::connect(config(free, 200, 0)).unwrap_err();
    assert!(matches!(err, ClientError::NotConnected { node, .. } if node == free));
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(err.to_string().contains("is `tally node` running"));
}

#[test]
fn a_node_whose_transport_refuses_the_client_is_named_with_its_reason() {
    let node = FakeNode::spawn(Behaviour::CapTerms);
    let err = Client::connect(config(node.addr, 300, 0)).unwrap_err();
    assert!(
        matches!(&err, ClientError::Refused { node: n, reason }
            if *n == node.addr
                && reason == "term length 1 MiB over its cap 64 KiB (image_term_length_max)"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(
            "refused the connection: term length 1 MiB over its cap 64 KiB \
             (image_term_length_max)"
        ),
        "{err}"
    );
    node.stop();
}

#[test]
fn a_closed_session_fails_requests_in_flight_and_later_ones() {
    let node = FakeNode::spawn(Behaviour::CloseAt(2));
    let mut client = Client::connect(config(node.addr, 2000, 0)).unwrap();
    assert!(client.request(&deposit(1)).is_ok());
    let err = client.request(&deposit(2)).unwrap_err();
    assert!(
        matches!(&err, ClientError::Session { code, .. } if code == "closed"),
        "{err}"
    );
    assert_eq!(client.try_send(&deposit(3)).unwrap_err(), err);
}

#[test]
fn poll_wait_returns_as_soon_as_replies_arrive_not_at_its_timeout() {
    let node = FakeNode::spawn(Behaviour::Answer);
    let mut client = Client::connect(ClientConfig {
        in_flight_max: 16,
        ..config(node.addr, 2000, 1)
    })
    .unwrap();
    // Each wait may last a minute: if replies did not end it, 50 rounds would take nearly an
    // hour; they take milliseconds. The bound below is loose on purpose (no timing target).
    let wait = std::time::Duration::from_secs(60);
    let started_at = std::time::Instant::now();
    let mut completed = 0;
    for _ in 0..50 {
        let id = client.new_transfer_id();
        client.try_send(&deposit(id)).unwrap();
        let mut got = 0;
        while got == 0 {
            got = client.poll_wait(
                |_, result| assert_eq!(result.unwrap().result(), Some(ResultCode::Ok)),
                usize::MAX,
                wait,
            );
        }
        completed += got;
    }
    assert_eq!(completed, 50);
    assert!(
        started_at.elapsed() < wait,
        "poll_wait waited out its timeout instead of waking on the reply"
    );
    // Nothing in flight: a zero timeout returns at once with nothing.
    assert_eq!(
        client.poll_wait(|_, _| {}, usize::MAX, std::time::Duration::ZERO),
        0
    );
    client.close();
    node.stop();
}

#[test]
fn a_request_to_a_node_that_went_away_fails_instead_of_hanging() {
    let node = FakeNode::spawn(Behaviour::Answer);
    let mut client = Client::connect(config(node.addr, 300, 1)).unwrap();
    assert!(client.request(&deposit(1)).is_ok());
    node.stop(); // its transport goes silent: no more status messages
                 // Past the transport's receiver timeout the client's publication has no receiver left and
                 // refuses every send (not connected): a retry or a new request can never go out.
    let receiver_timeout = Duration::from_nanos(transport::Config::default().receiver_timeout_ns);
    std::thread::sleep(receiver_timeout + Duration::from_millis(200));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(client.request(&deposit(2)));
    });
    // 300 ms per attempt, 2 attempts: the answer is due within a second; allow five.
    let result = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("request() to a dead node neither completed nor timed out");
    assert!(
        matches!(result, Err(ClientError::NotConnected { .. })),
        "{result:?}"
    );
}
