//! A client session over the transport: [`Client`].
//!
//! Owns: one transport [`Publication`] to the node (stream [`INGRESS_STREAM_ID`]), one
//! [`Subscription`] on the client's reply address (stream [`REPLY_STREAM_ID`]), the session
//! handshake, and the duty cycle that drives both with the [`Tracker`] (correlation,
//! timeouts, retries). Does not spawn threads: every call that waits drives the transport
//! itself with the configured idle strategy (back-off by default), and [`Client::poll`] is one
//! bounded duty cycle for callers running their own loop.
//!
//! Invariants: requests go out in the order they were started; a retry re-sends the same
//! bytes (same `clientSeq`, same transfer ids), so the node never applies a command twice;
//! every started request completes exactly once.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use schemas::ledger::SessionEventCode;
use transport::{now_ns, Agent, Channel, IdleKind, IdleStrategy, OfferError};
use transport::{Publication, Subscription};

use crate::error::ClientError;
use crate::ids::IdSource;
use crate::message::{Request, Response};
use crate::tracker::{Completion, RequestId, SendOutcome, Stats, Tracker};
use crate::wire::{
    self, Connect, FromNode, INGRESS_STREAM_ID, REPLY_STREAM_ID, SESSION_MESSAGE_LENGTH_MAX,
};

/// Term length of the client's publication, in bytes: 1 MiB holds thousands of requests in
/// flight (the largest request is ~16 KiB) at a quarter of the transport's default memory.
pub const CLIENT_TERM_LENGTH: usize = 1024 * 1024;
/// Messages taken from the reply subscription per duty cycle.
pub const REPLY_POLL_LIMIT: usize = 256;
/// Default wait per attempt, in milliseconds.
pub const TIMEOUT_MS_DEFAULT: u64 = 2000;
/// Default re-sends after the first attempt.
pub const RETRIES_DEFAULT: u32 = 3;
/// Default maximum of requests in flight.
pub const IN_FLIGHT_MAX_DEFAULT: usize = 1024;
/// Longest a [`Client::close`] waits for what is left to be sent, in milliseconds.
pub const CLOSE_LINGER_MS: u64 = 200;
/// Duty cycles [`Client::close`] runs after everything was sent (end-of-stream included).
const CLOSE_FLUSH_CYCLES: u32 = 3;

/// The default idle strategy of waiting calls: a back-off that parks almost at once (after
/// 10 spins, for at most 50 µs at a time). A client thread that spins or yields while it
/// waits takes a core from the node on a small machine; parking costs at most 50 µs of added
/// latency per wait.
pub const IDLE_DEFAULT: IdleKind = IdleKind::BackOff {
    spins_max: 10,
    yields_max: 0,
    park_min_ns: 1_000,
    park_max_ns: 50_000,
};

/// How to reach the node and how patient to be.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The node's listen address (`tally node --listen`). IPv4 only.
    pub node: SocketAddr,
    /// Where to receive replies. `None`: the local interface that routes to the node, any
    /// port. An unspecified IP (`0.0.0.0:P`) binds all interfaces and advertises the one that
    /// routes to the node.
    pub reply_bind: Option<SocketAddr>,
    /// Wait per attempt (connect and requests).
    pub timeout: Duration,
    /// Re-sends after the first attempt before giving up.
    pub retries: u32,
    /// Requests in flight at most; more is [`ClientError::BackPressured`].
    pub in_flight_max: usize,
    /// How waiting calls idle between duty cycles.
    pub idle: IdleKind,
}

impl ClientConfig {
    /// Defaults for a node at `node`: 2 s per attempt, 3 retries, 1024 in flight,
    /// [`IDLE_DEFAULT`].
    pub fn new(node: SocketAddr) -> Self {
        ClientConfig {
            node,
            reply_bind: None,
            timeout: Duration::from_millis(TIMEOUT_MS_DEFAULT),
            retries: RETRIES_DEFAULT,
            in_flight_max: IN_FLIGHT_MAX_DEFAULT,
            idle: IDLE_DEFAULT,
        }
    }

    fn validate(&self) -> Result<(SocketAddrV4, SocketAddrV4), ClientError> {
        let SocketAddr::V4(node) = self.node else {
            return Err(ClientError::Config(format!(
                "node address {} is IPv6; the transport is IPv4 only",
                self.node
            )));
        };
        if self.timeout.is_zero() {
            return Err(ClientError::Config("timeout must be more than 0".into()));
        }
        if self.in_flight_max == 0 {
            return Err(ClientError::Config(
                "in_flight_max must be at least 1".into(),
            ));
        }
        let reply = match self.reply_bind {
            Some(SocketAddr::V4(a)) => a,
            Some(other) => {
                return Err(ClientError::Config(format!(
                    "reply address {other} is IPv6; the transport is IPv4 only"
                )))
            }
            None => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        };
        Ok((node, reply))
    }
}

/// The local IPv4 address the OS would use to reach `node` (no packet is sent).
fn route_to(node: SocketAddrV4) -> Result<Ipv4Addr, ClientError> {
    if node.ip().is_loopback() {
        return Ok(Ipv4Addr::LOCALHOST);
    }
    let probe = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect(node).map(|()| s))
        .and_then(|s| s.local_addr())
        .map_err(|e| ClientError::Io(format!("no route to {node}: {e}")))?;
    match probe.ip() {
        IpAddr::V4(ip) => Ok(ip),
        IpAddr::V6(_) => Err(ClientError::Config(format!("no IPv4 route to {node}"))),
    }
}

fn transport_config() -> transport::Config {
    let term_length = CLIENT_TERM_LENGTH;
    transport::Config {
        term_length,
        message_length_max: term_length / 4,
        publication_window: term_length / 2,
        receiver_window: term_length / 2,
        // The client's subscription takes only the node's reply stream, whose term the node's
        // configuration chooses: refusing a long one would cut the client off.
        image_term_length_max: transport::config::TERM_LENGTH_MAX,
        ..transport::Config::default()
    }
}

/// A session with a node: blocking [`Client::request`], or [`Client::try_send`] +
/// [`Client::poll`] for many requests in flight.
///
/// ```no_run
/// use client::{Client, ClientConfig, Request};
///
/// let mut client = Client::connect(ClientConfig::new("127.0.0.1:7400".parse()?))?;
/// // Blocking: one request, one typed response (retried on timeout with the same ids).
/// let reply = client.request(&Request::GetAccount { id: 10, min_position: 0 })?;
/// println!("{}", reply.to_json());
///
/// // Pipelined: many in flight, completions delivered by `poll` in any order.
/// let mut pending = 0;
/// for _ in 0..100 {
///     let id = client.new_transfer_id();
///     client.try_send(&Request::Deposit { id, account_id: 10, amount: 1 })?;
///     pending += 1;
/// }
/// while pending > 0 {
///     pending -= client.poll(|id, result| match result {
///         Ok(r) => println!("{id}: {:?}", r.result()),
///         Err(e) => eprintln!("{id}: {e}"),
///     }, 64);
/// }
/// client.close();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Client {
    config: ClientConfig,
    session_id: u64,
    reply_addr: SocketAddr,
    publication: Publication,
    subscription: Subscription,
    tracker: Tracker,
    idle: IdleStrategy,
    ids: IdSource,
    completed: VecDeque<Completion>,
    scratch: Vec<Completion>,
    /// Why the session ended, once it has.
    ended: Option<ClientError>,
    /// The node's applied position when it accepted the session.
    connect_position: u64,
    /// Since when requests have waited on a publication that lost the node (its transport
    /// stopped acknowledging, so every send is refused); `None` while connected or idle.
    unreachable_since: Option<u64>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("node", &self.config.node)
            .field("session_id", &self.session_id)
            .field("reply_addr", &self.reply_addr)
            .field("in_flight", &self.tracker.in_flight())
            .finish()
    }
}

impl Client {
    /// Opens the transport session to the node and the session handshake: waits up to
    /// `timeout` for the node's transport to answer, then sends `SessionConnect` up to
    /// `retries + 1` times, `timeout` apart, until the node answers.
    ///
    /// # Errors
    /// [`ClientError::NotConnected`] when the node does not answer; [`ClientError::Refused`]
    /// when its transport refuses the client's stream and says why; [`ClientError::Session`]
    /// when it refuses (`rejected`, `not_leader`); [`ClientError::Config`] or
    /// [`ClientError::Io`] for unusable addresses.
    pub fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let (node, reply) = config.validate()?;
        let routed = route_to(node)?;
        let bind_ip = if reply.ip().is_unspecified() && config.reply_bind.is_none() {
            routed
        } else {
            *reply.ip()
        };
        let subscription = Subscription::new(
            &Channel::unicast(SocketAddrV4::new(bind_ip, reply.port())),
            REPLY_STREAM_ID,
            transport_config(),
        )
        .map_err(|e| ClientError::Io(format!("cannot bind the reply address {reply}: {e}")))?;
        let bound = subscription
            .local_addr()
            .map_err(|e| ClientError::Io(e.to_string()))?;
        let advertised_ip = match bound.ip() {
            IpAddr::V4(ip) if !ip.is_unspecified() => ip,
            _ => routed,
        };
        let reply_addr = SocketAddr::from((advertised_ip, bound.port()));
        let publication = Publication::new(
            &Channel::unicast(node),
            INGRESS_STREAM_ID,
            transport_config(),
        )
        .map_err(|e| ClientError::Io(format!("cannot open a publication to {node}: {e}")))?;
        let mut ids = IdSource::new();
        let session_id = ids.next_u64();
        let timeout_ns = config.timeout.as_nanos().min(u128::from(u64::MAX)) as u64;
        let mut client = Client {
            session_id,
            reply_addr,
            publication,
            subscription,
            tracker: Tracker::new(session_id, config.in_flight_max, timeout_ns, config.retries),
            idle: IdleStrategy::new(config.idle),
            ids,
            completed: VecDeque::new(),
            scratch: Vec::new(),
            ended: None,
            connect_position: 0,
            unreachable_since: None,
            config,
        };
        client.handshake(timeout_ns)?;
        Ok(client)
    }

    /// The node unreachable since `started_ns`: refused, if its transport said why since then.
    fn not_connected(&self, started_ns: u64) -> ClientError {
        if let Some(refusal) = self
            .publication
            .last_refusal()
            .filter(|r| r.at_ns >= started_ns)
        {
            return ClientError::Refused {
                node: self.config.node,
                reason: refusal.to_string(),
            };
        }
        ClientError::NotConnected {
            node: self.config.node,
            waited_ms: now_ns().saturating_sub(started_ns) / 1_000_000,
        }
    }

    fn handshake(&mut self, timeout_ns: u64) -> Result<(), ClientError> {
        let started = now_ns();
        // 1. The node's transport acknowledges our publication (status message).
        while !self.publication.is_connected() {
            if now_ns().saturating_sub(started) >= timeout_ns {
                return Err(self.not_connected(started));
            }
            let work = self.drive_transport(now_ns());
            self.idle.idle(work);
        }
        // 2. SessionConnect until a SessionEvent for this session arrives.
        let mut buf = [0u8; SESSION_MESSAGE_LENGTH_MAX];
        let len = wire::encode_connect(
            &mut buf,
            &Connect {
                client_session_id: self.session_id,
                response_stream_id: REPLY_STREAM_ID,
                response_channel: self.reply_addr.to_string(),
            },
        )
        .map_err(|e| ClientError::Encode(e.to_string()))?;
        for _attempt in 0..=self.config.retries {
            let attempt_start = now_ns();
            let mut sent = false;
            while now_ns().saturating_sub(attempt_start) < timeout_ns {
                if !sent {
                    sent = self.publication.offer(&buf[..len]).is_ok();
                }
                let mut work = self.drive_transport(now_ns());
                let mut answer = None;
                let session_id = self.session_id;
                work += self.subscription.poll(
                    |bytes, _| {
                        if let Ok(FromNode::Event(e)) = wire::decode_from_node(bytes) {
                            if e.client_session_id == session_id {
                                answer = Some(e);
                            }
                        }
                    },
                    REPLY_POLL_LIMIT,
                );
                if let Some(event) = answer {
                    return match event.code {
                        Some(SessionEventCode::Connected) => {
                            self.connect_position = event.position;
                            Ok(())
                        }
                        _ => Err(ClientError::Session {
                            code: event.code_name(),
                            detail: event.detail,
                        }),
                    };
                }
                self.idle.idle(work);
            }
        }
        Err(self.not_connected(started))
    }

    /// Runs both transport agents once.
    fn drive_transport(&mut self, now: u64) -> usize {
        let work = self.publication.do_work(now) + self.subscription.do_work(now);
        while self.subscription.poll_event().is_some() {}
        work
    }

    /// The client session id (random, non-zero).
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// The address replies come to (advertised to the node).
    pub fn reply_addr(&self) -> SocketAddr {
        self.reply_addr
    }

    /// The node's applied position when it accepted the session.
    pub fn connect_position(&self) -> u64 {
        self.connect_position
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.tracker.in_flight()
    }

    /// Counts of retries, timeouts and stray replies.
    pub fn stats(&self) -> Stats {
        self.tracker.stats()
    }

    /// A fresh random transfer id (non-zero).
    pub fn new_transfer_id(&mut self) -> u128 {
        self.ids.next_u128()
    }

    /// Starts a request without waiting: it goes out on the next [`Client::poll`] (requests
    /// started back to back share datagrams). Its completion is delivered by `poll`.
    ///
    /// # Errors
    /// [`ClientError::BackPressured`] when `in_flight_max` requests are in flight (poll, then
    /// try again); [`ClientError::Encode`]; the session's end error once it has ended.
    pub fn try_send(&mut self, request: &Request) -> Result<RequestId, ClientError> {
        if let Some(e) = &self.ended {
            return Err(e.clone());
        }
        self.tracker.start(request)
    }

    /// One duty cycle: sends what is queued, receives replies, handles timeouts and retries,
    /// then calls `handler` for up to `limit` completed requests. Returns how many it
    /// delivered (idle with your own strategy when it returns 0, or call it in a loop: its
    /// transport work is non-blocking).
    pub fn poll<F: FnMut(RequestId, Result<Response, ClientError>)>(
        &mut self,
        mut handler: F,
        limit: usize,
    ) -> usize {
        let work = self.do_work();
        let delivered = self.deliver(&mut handler, limit);
        if delivered == 0 {
            self.idle.idle(work);
        } else {
            self.idle.reset();
        }
        delivered
    }

    /// Like [`Client::poll`], but when nothing completes it blocks until a reply datagram
    /// arrives or `timeout` passes (then runs one more duty cycle), instead of spinning or
    /// parking: the thread sleeps in the kernel and wakes as soon as the node answers. For
    /// loops that also have their own deadlines (a send schedule), pass the time left until
    /// the next one. Returns how many completions it delivered.
    pub fn poll_wait<F: FnMut(RequestId, Result<Response, ClientError>)>(
        &mut self,
        mut handler: F,
        limit: usize,
        timeout: Duration,
    ) -> usize {
        self.do_work();
        if self.completed.is_empty() && !timeout.is_zero() {
            // An error here only means the wait ended early; the next cycle reads anyway.
            let _ = self.subscription.wait_readable(timeout);
            self.do_work();
        }
        let delivered = self.deliver(&mut handler, limit);
        self.idle.reset();
        delivered
    }

    /// Hands up to `limit` completed requests to `handler`, oldest first; returns how many.
    fn deliver<F: FnMut(RequestId, Result<Response, ClientError>)>(
        &mut self,
        handler: &mut F,
        limit: usize,
    ) -> usize {
        let mut delivered = 0;
        while delivered < limit {
            let Some((id, result)) = self.completed.pop_front() else {
                break;
            };
            handler(id, result);
            delivered += 1;
        }
        delivered
    }

    /// Sends `request` and waits for its reply, re-sending it (same `clientSeq`, same ids)
    /// after each `timeout`, up to `retries` times. Business rejections are `Ok` responses
    /// with a non-`ok` result; see [`Response::result`].
    ///
    /// # Errors
    /// [`ClientError::Timeout`] after every attempt; [`ClientError::NotConnected`] when the
    /// node's transport stopped answering for a timeout ([`ClientError::Refused`] if it said
    /// why); [`ClientError::Session`] when the node
    /// ends the session; [`ClientError::Malformed`]; [`ClientError::Encode`].
    pub fn request(&mut self, request: &Request) -> Result<Response, ClientError> {
        let id = loop {
            match self.try_send(request) {
                Ok(id) => break id,
                Err(ClientError::BackPressured { .. }) => {
                    let work = self.do_work();
                    self.idle.idle(work);
                }
                Err(e) => return Err(e),
            }
        };
        self.wait(id)
    }

    /// Sends every request pipelined (as many in flight as `in_flight_max` allows) and waits
    /// until all have completed, calling `on_reply` for each completion as it arrives. Returns
    /// how many requests were sent. Completions of requests started earlier with
    /// [`Client::try_send`] are delivered to `on_reply` too.
    ///
    /// # Errors
    /// A request that cannot be started (encode error, ended session); requests already in
    /// flight still complete through `on_reply` first.
    pub fn send_all(
        &mut self,
        requests: impl IntoIterator<Item = Request>,
        mut on_reply: impl FnMut(RequestId, Result<Response, ClientError>),
    ) -> Result<u64, ClientError> {
        let mut requests = requests.into_iter().peekable();
        let mut sent = 0u64;
        let mut failure = None;
        while failure.is_none() && requests.peek().is_some() || self.tracker.in_flight() > 0 {
            while failure.is_none() {
                let Some(request) = requests.peek() else {
                    break;
                };
                match self.try_send(request) {
                    Ok(_) => {
                        requests.next();
                        sent += 1;
                    }
                    Err(ClientError::BackPressured { .. }) => break,
                    Err(e) => failure = Some(e),
                }
            }
            self.poll(&mut on_reply, usize::MAX);
        }
        while let Some((id, result)) = self.completed.pop_front() {
            on_reply(id, result);
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(sent),
        }
    }

    /// [`Client::send_all`] for set-up work where every reply must be `ok`.
    ///
    /// # Errors
    /// The first reply that is not `ok` (its result code name) or the first error, as text.
    pub fn send_all_ok(
        &mut self,
        requests: impl IntoIterator<Item = Request>,
    ) -> Result<u64, String> {
        let mut failure = None;
        let sent = self
            .send_all(requests, |_, result| match result {
                Ok(r) if r.result() == Some(schemas::ledger::ResultCode::Ok) => {}
                Ok(r) => {
                    failure.get_or_insert(
                        r.result()
                            .map_or("unknown result", |c| c.name())
                            .to_string(),
                    );
                }
                Err(e) => {
                    failure.get_or_insert(e.to_string());
                }
            })
            .map_err(|e| e.to_string())?;
        match failure {
            Some(f) => Err(format!("a request was not ok: {f}")),
            None => Ok(sent),
        }
    }

    /// Waits for the completion of `id` (started with [`Client::try_send`]); other
    /// completions stay queued for [`Client::poll`].
    ///
    /// # Errors
    /// As [`Client::request`].
    pub fn wait(&mut self, id: RequestId) -> Result<Response, ClientError> {
        loop {
            if let Some(i) = self.completed.iter().position(|(done, _)| *done == id) {
                if let Some((_, result)) = self.completed.remove(i) {
                    self.idle.reset();
                    return result;
                }
            }
            if !self.tracker.is_in_flight(id) {
                return Err(ClientError::NotInFlight { client_seq: id.0 });
            }
            let work = self.do_work();
            self.idle.idle(work);
        }
    }

    /// One duty cycle without delivering completions (they queue for `poll`/`wait`).
    /// Returns the work done (0 = idle).
    pub fn do_work(&mut self) -> usize {
        let now = now_ns();
        let mut done = std::mem::take(&mut self.scratch);
        let mut work = self.subscription.do_work(now);
        while self.subscription.poll_event().is_some() {}
        let tracker = &mut self.tracker;
        let session_id = self.session_id;
        let mut ended = None;
        work += self.subscription.poll(
            |bytes, _| match wire::decode_from_node(bytes) {
                Ok(FromNode::Reply(envelope, body)) => {
                    if let Some(c) = tracker.handle_reply(now, envelope, body) {
                        done.push(c);
                    }
                }
                Ok(FromNode::Event(event)) => {
                    if event.client_session_id == session_id
                        && event.code != Some(SessionEventCode::Connected)
                    {
                        ended = Some(ClientError::Session {
                            code: event.code_name(),
                            detail: event.detail,
                        });
                    }
                }
                // Not for us or not a reply: dropped (the transport is shared by nothing
                // else, so this only happens with a mismatched node version).
                Err(_) => {}
            },
            REPLY_POLL_LIMIT,
        );
        if let Some(e) = ended {
            self.tracker.fail_all(&e, &mut done);
            self.ended = Some(e);
        }
        self.tracker.handle_timeout(now, &mut done);
        let publication = &mut self.publication;
        work += self.tracker.poll_send(
            now,
            |bytes| match publication.offer(bytes) {
                Ok(_) => SendOutcome::Sent,
                Err(OfferError::BackPressured | OfferError::NotConnected) => SendOutcome::Later,
                Err(OfferError::Closed | OfferError::MessageTooLong { .. }) => SendOutcome::Refused,
            },
            &mut done,
        );
        work += self.publication.do_work(now);
        // A publication without a receiver refuses every send, so queued requests (first
        // sends, retries, busy re-sends) would wait forever: after one timeout they fail.
        if self.publication.is_connected() || self.tracker.in_flight() == 0 {
            self.unreachable_since = None;
        } else {
            let since = *self.unreachable_since.get_or_insert(now);
            let timeout_ns = self.config.timeout.as_nanos().min(u128::from(u64::MAX)) as u64;
            if now.saturating_sub(since) >= timeout_ns {
                let error = self.not_connected(since);
                self.tracker.fail_all(&error, &mut done);
                self.unreachable_since = None;
            }
        }
        work += done.len();
        self.completed.extend(done.drain(..));
        self.scratch = done;
        work
    }

    /// Closes the session's transport cleanly: sends what is left and the end-of-stream
    /// mark, so the node ends the session at once (instead of after its image liveness
    /// timeout). Waits at most [`CLOSE_LINGER_MS`]. Requests still in flight are abandoned.
    pub fn close(mut self) {
        self.publication.close();
        self.subscription.close();
        let start = now_ns();
        let mut idle = IdleStrategy::backoff();
        let mut flushed_cycles = 0;
        while !self.publication.is_closed()
            && now_ns().saturating_sub(start) < CLOSE_LINGER_MS * 1_000_000
        {
            let work = self.drive_transport(now_ns());
            // The end-of-stream frame leaves in the same round as the last data, so once
            // everything is sent a couple more cycles are enough; the node does not always
            // acknowledge it (its image ends), so waiting for `is_closed` alone would linger.
            let sender = self.publication.sender();
            if sender.sender_position() >= sender.position() {
                flushed_cycles += 1;
                if flushed_cycles >= CLOSE_FLUSH_CYCLES {
                    break;
                }
            }
            idle.idle(work);
        }
    }
}
