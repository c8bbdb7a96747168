//! The leader node on the network: transport ingress → pipeline → durable replies back out.
//!
//! Owns: the ingress [`Subscription`] on the listen address, one reply [`Publication`] per
//! client session, and the session table. Runs as the pipeline's [`Frontend`], i.e. on the
//! sequencer thread (DESIGN §1): a command is read from the transport's buffer straight into
//! the open batch.
//!
//! Protocol (schema messages at the end of `ledger.xml`):
//! - A client's first message is `SessionConnect { clientSessionId, responseStreamId,
//!   responseChannel }`; the node opens a publication to `responseChannel` and answers
//!   `SessionEvent { code: connected }` (or `rejected` with a reason).
//! - Every request is one transport message: `RequestHeader { clientSessionId, clientSeq }`
//!   followed by a command (into the log) or a query (answered by the engine thread).
//! - Every reply is one transport message: `ReplyHeader { clientSessionId, clientSeq }`
//!   followed by the reply. Command replies leave in log order, once durable.
//!
//! Bad input never stops the node: an envelope that does not decode, a request from a session
//! that never connected, a message that is neither a command nor a query — each is dropped
//! (or answered `invalid_command`) and counted in [`NodeCounters`]. When the pipeline cannot
//! take a command (every batch buffer in flight), the client is answered `busy` and retries
//! with the same `clientSeq`; nothing is applied.

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use schemas::ledger::{
    self, CommandReplyEncoder, ReplyHeaderEncoder, ResultCode, SessionEventCode,
    SessionEventEncoder,
};
use transport::{Agent, Channel, ImageEvent, Publication, Subscription};

use crate::pipeline::{
    Frontend, FrontendIo, OfferError, Pipeline, PipelineConfig, StartReport, Status,
};

pub use schemas::envelope::{INGRESS_STREAM_ID, REPLY_STREAM_ID};
/// Default listen address.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:7400";
/// Messages taken from the ingress per duty cycle.
const INGRESS_POLL_LIMIT: usize = 256;
/// Replies sent per duty cycle.
const EGRESS_POLL_LIMIT: usize = 1024;
/// Replies queued for one client whose publication is not connected or is back-pressured;
/// beyond this the session is dropped (a client that stopped reading).
const PENDING_REPLIES_MAX: usize = 65_536;
use schemas::envelope::ENVELOPE_HEADER_LENGTH as ENVELOPE_LEN;

/// Node settings.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The pipeline (data folder, tables, idle strategy, pinning, snapshots).
    pub pipeline: PipelineConfig,
    /// Where clients send requests.
    pub listen: SocketAddrV4,
    /// Transport settings for the ingress and reply streams.
    pub transport: transport::Config,
    /// Client sessions the node holds at once. Default 1,024.
    pub sessions_max: usize,
    /// Name reported by `status`.
    pub name: String,
}

impl NodeConfig {
    /// Defaults for a data folder.
    pub fn new(data_dir: impl Into<std::path::PathBuf>) -> Self {
        NodeConfig {
            pipeline: PipelineConfig::new(data_dir),
            listen: LISTEN_DEFAULT.parse().expect("valid default"),
            transport: transport::Config::default(),
            sessions_max: 1_024,
            name: "tally".into(),
        }
    }
}

/// Counters of the node's network side (dropped and refused input, by reason).
#[derive(Debug, Default)]
pub struct NodeCounters {
    /// Requests whose envelope did not decode.
    pub malformed: AtomicU64,
    /// Requests from a session that never connected (or was dropped).
    pub unknown_session: AtomicU64,
    /// Requests that are neither a command nor a query (answered `invalid_command`).
    pub invalid_request: AtomicU64,
    /// Commands answered `busy`.
    pub busy: AtomicU64,
    /// Sessions opened.
    pub sessions_opened: AtomicU64,
    /// Sessions closed (client left, or stopped reading).
    pub sessions_closed: AtomicU64,
    /// Sessions refused (table full, bad response channel).
    pub sessions_rejected: AtomicU64,
    /// Sessions open now.
    pub sessions_open: AtomicU64,
}

/// A running node.
pub struct Node {
    pipeline: Pipeline,
    local_addr: SocketAddr,
    counters: Arc<NodeCounters>,
}

impl Node {
    /// Binds the listen address, recovers the data folder and starts serving.
    ///
    /// # Errors
    /// The listen address cannot be bound (names it), or as [`Pipeline::start`].
    pub fn start(config: NodeConfig) -> Result<(Node, StartReport), String> {
        config
            .transport
            .validate()
            .map_err(|e| format!("transport: {e}"))?;
        if config.sessions_max == 0 {
            return Err("sessions_max = 0: must be at least 1".into());
        }
        let ingress = Subscription::new(
            &Channel::unicast(config.listen),
            INGRESS_STREAM_ID,
            config.transport.clone(),
        )
        .map_err(|e| {
            format!(
                "cannot listen on {}: {e} (is another node running there?)",
                config.listen
            )
        })?;
        let local_addr = ingress.local_addr().map_err(|e| e.to_string())?;
        let counters = Arc::new(NodeCounters::default());
        let frontend = NodeFrontend {
            ingress,
            sessions: HashMap::new(),
            by_transport: HashMap::new(),
            transport: config.transport.clone(),
            sessions_max: config.sessions_max,
            name: config.name.clone(),
            counters: counters.clone(),
            scratch: vec![0u8; engine::REPLY_LEN_MAX + ENVELOPE_LEN],
            closed: Vec::new(),
            inbound: Vec::with_capacity(INGRESS_POLL_LIMIT),
            bodies: Vec::with_capacity(1 << 16),
            cursor: 0,
        };
        let (pipeline, report) = Pipeline::start_with(config.pipeline, Box::new(frontend))?;
        Ok((
            Node {
                pipeline,
                local_addr,
                counters,
            },
            report,
        ))
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Pipeline status.
    pub fn status(&self) -> Status {
        self.pipeline.status()
    }

    /// The network side's counters.
    pub fn counters(&self) -> &NodeCounters {
        &self.counters
    }

    /// Stops taking requests, makes everything taken durable, sends the last replies, joins.
    pub fn shutdown(self) -> Status {
        self.pipeline.shutdown()
    }
}

struct ClientSession {
    publication: Publication,
    /// Where `publication` sends: the response channel the client named.
    channel: SocketAddrV4,
    transport_session: i32,
    /// Replies waiting for the publication to connect or to have room.
    pending: VecDeque<Vec<u8>>,
    /// Refused (kept only to deliver the refusal): its requests are not taken.
    refused: bool,
    /// Stopped reading (its queue overflowed): closed at the end of the cycle.
    stalled: bool,
}

struct NodeFrontend {
    ingress: Subscription,
    sessions: HashMap<u64, ClientSession>,
    by_transport: HashMap<i32, u64>,
    transport: transport::Config,
    sessions_max: usize,
    name: String,
    counters: Arc<NodeCounters>,
    scratch: Vec<u8>,
    closed: Vec<u64>,
    /// Per-cycle buffers, kept to avoid allocating each cycle.
    inbound: Vec<(Inbound, usize)>,
    bodies: Vec<u8>,
    /// Next entry of `inbound` to hand to the pipeline.
    cursor: usize,
}

/// What one ingress message asked for.
#[derive(Clone, Copy)]
enum Inbound {
    Connect {
        client: u64,
        channel: Option<SocketAddrV4>,
        transport_session: i32,
    },
    Request {
        client: u64,
        seq: u64,
        start: usize,
        query: bool,
    },
    Invalid {
        client: u64,
        seq: u64,
    },
    Malformed,
}

fn classify(bytes: &[u8], transport_session: i32) -> Inbound {
    let Ok(header) = ledger::decode_header(bytes) else {
        return Inbound::Malformed;
    };
    match ledger::decode(bytes) {
        Ok(ledger::Decoded::SessionConnect(m)) => {
            let channel = m
                .response_channel()
                .ok()
                .and_then(|c| std::str::from_utf8(c).ok())
                .and_then(|c| c.parse::<SocketAddrV4>().ok());
            Inbound::Connect {
                client: m.client_session_id(),
                channel,
                transport_session,
            }
        }
        Ok(ledger::Decoded::RequestHeader(m)) => {
            let start = ENVELOPE_LEN.min(bytes.len());
            let (client, seq) = (m.client_session_id(), m.client_seq());
            let _ = header;
            match ledger::decode_header(&bytes[start..]).map(|h| h.template_id) {
                Ok(10..=15) => Inbound::Request {
                    client,
                    seq,
                    start,
                    query: false,
                },
                Ok(20..=23) => Inbound::Request {
                    client,
                    seq,
                    start,
                    query: true,
                },
                _ => Inbound::Invalid { client, seq },
            }
        }
        _ => Inbound::Malformed,
    }
}

impl NodeFrontend {
    fn connect(
        &mut self,
        client: u64,
        channel: Option<SocketAddrV4>,
        transport_session: i32,
        io: &FrontendIo<'_>,
    ) {
        let Some(channel) = channel else {
            self.counters
                .sessions_rejected
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        if let Some(existing) = self.sessions.get_mut(&client) {
            if existing.refused {
                // Its refusal is on the way; it is closed once sent.
                return;
            }
            // A reconnect of a known session (e.g. the client restarted its transport):
            // keep the reply publication if the address is the same.
            if existing.channel != channel {
                let Ok(publication) = Publication::new(
                    &Channel::unicast(channel),
                    REPLY_STREAM_ID,
                    self.transport.clone(),
                ) else {
                    self.counters
                        .sessions_rejected
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                };
                std::mem::replace(&mut existing.publication, publication).close();
                existing.channel = channel;
            }
            // The old transport session no longer speaks for this client: its end must not
            // close the session.
            if existing.transport_session != transport_session
                && self.by_transport.get(&existing.transport_session) == Some(&client)
            {
                self.by_transport.remove(&existing.transport_session);
            }
            self.by_transport.insert(transport_session, client);
            existing.transport_session = transport_session;
            let position = io.applied_position();
            let event = session_event(client, SessionEventCode::Connected, position, "");
            existing.pending.push_back(event);
            return;
        }
        let publication = match Publication::new(
            &Channel::unicast(channel),
            REPLY_STREAM_ID,
            self.transport.clone(),
        ) {
            Ok(p) => p,
            Err(_) => {
                self.counters
                    .sessions_rejected
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let mut session = ClientSession {
            publication,
            channel,
            transport_session,
            pending: VecDeque::new(),
            refused: false,
            stalled: false,
        };
        let (code, detail) = if io.is_stopping() {
            (SessionEventCode::Closed, "the node is shutting down")
        } else if self.sessions.len() >= self.sessions_max {
            (
                SessionEventCode::Rejected,
                "too many sessions (sessions_max)",
            )
        } else {
            (SessionEventCode::Connected, "")
        };
        session
            .pending
            .push_back(session_event(client, code, io.applied_position(), detail));
        session.refused = code != SessionEventCode::Connected;
        if code == SessionEventCode::Connected {
            self.counters
                .sessions_opened
                .fetch_add(1, Ordering::Relaxed);
        } else {
            self.counters
                .sessions_rejected
                .fetch_add(1, Ordering::Relaxed);
            // Keep it only long enough to deliver the refusal: closed below once sent.
            self.closed.push(client);
        }
        self.by_transport.insert(transport_session, client);
        self.sessions.insert(client, session);
        self.counters
            .sessions_open
            .store(self.sessions.len() as u64, Ordering::Relaxed);
    }

    /// Sends (or queues) one reply message for `client`.
    fn send(&mut self, client: u64, seq: u64, reply: &[u8]) {
        send_reply(
            &mut self.sessions,
            &mut self.scratch,
            &mut self.closed,
            client,
            seq,
            reply,
        );
    }

    fn busy(&mut self, client: u64, seq: u64) {
        self.counters.busy.fetch_add(1, Ordering::Relaxed);
        self.refuse(client, seq, ResultCode::Busy);
    }

    fn refuse(&mut self, client: u64, seq: u64, result: ResultCode) {
        let mut buf = [0u8; 64];
        let len = {
            let mut e = CommandReplyEncoder::wrap_with_header(&mut buf).expect("fits");
            e.set_client_seq(seq).set_result(result);
            e.finish().expect("fits")
        };
        self.send(client, seq, &buf[..len]);
    }

    fn close_session(&mut self, client: u64) {
        if let Some(mut session) = self.sessions.remove(&client) {
            session.publication.close();
            self.by_transport.remove(&session.transport_session);
            self.counters
                .sessions_closed
                .fetch_add(1, Ordering::Relaxed);
            self.counters
                .sessions_open
                .store(self.sessions.len() as u64, Ordering::Relaxed);
        }
    }
}

/// Sends (or queues) one reply for `client`: `ReplyHeader` + `reply` in one message.
fn send_reply(
    sessions: &mut HashMap<u64, ClientSession>,
    scratch: &mut [u8],
    closed: &mut Vec<u64>,
    client: u64,
    seq: u64,
    reply: &[u8],
) {
    let Some(session) = sessions.get_mut(&client) else {
        return;
    };
    if session.stalled {
        return;
    }
    let len = ENVELOPE_LEN + reply.len();
    let Some(buf) = scratch.get_mut(..len) else {
        return;
    };
    {
        let Ok(mut h) = ReplyHeaderEncoder::wrap_with_header(buf) else {
            return;
        };
        h.set_client_session_id(client).set_client_seq(seq);
    }
    buf[ENVELOPE_LEN..].copy_from_slice(reply);
    if session.pending.is_empty() && session.publication.offer(buf).is_ok() {
        return;
    }
    if session.pending.len() >= PENDING_REPLIES_MAX {
        // The client stopped reading: drop it rather than grow without bound.
        session.stalled = true;
        closed.push(client);
        return;
    }
    session.pending.push_back(buf.to_vec());
}

fn session_event(client: u64, code: SessionEventCode, position: u64, detail: &str) -> Vec<u8> {
    let mut buf = vec![0u8; 64 + detail.len()];
    let len = {
        let mut e = SessionEventEncoder::wrap_with_header(&mut buf).expect("fits");
        e.set_client_session_id(client)
            .set_code(code)
            .set_position(position);
        e.set_detail(detail.as_bytes()).expect("fits");
        e.finish().expect("fits")
    };
    buf.truncate(len);
    buf
}

/// Fills in what only the node knows in a `StatusReply` (durable position, sessions, name).
fn patch_status(reply: &[u8], durable: u64, sessions: u32, name: &str) -> Option<Vec<u8>> {
    let ledger::Decoded::StatusReply(m) = ledger::decode(reply).ok()? else {
        return None;
    };
    let mut buf = vec![0u8; 128 + name.len()];
    let len = {
        let mut e = ledger::StatusReplyEncoder::wrap_with_header(&mut buf).ok()?;
        e.set_role_raw(m.role_raw())
            .set_position(m.position())
            .set_durable_position(durable)
            .set_state_hash(m.state_hash())
            .set_sessions(sessions);
        e.set_node_name(name.as_bytes()).ok()?;
        e.finish().ok()?
    };
    buf.truncate(len);
    Some(buf)
}

impl Frontend for NodeFrontend {
    fn wait_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        Some(self.ingress.as_raw_fd())
    }

    fn do_work(&mut self, _wall_ns: u64, io: &mut FrontendIo<'_>) -> usize {
        let now = transport::now_ns();
        let mut work = self.ingress.do_work(now);

        // Session ends: a client whose transport image went away.
        while let Some(event) = self.ingress.poll_event() {
            if let ImageEvent::Unavailable { session_id, .. } = event {
                if let Some(client) = self.by_transport.remove(&session_id) {
                    self.close_session(client);
                }
            }
        }

        // Requests in. Messages left over from a cycle where the pipeline was full go first,
        // in order; new ones are polled only once those are taken. While the node does not
        // poll, the transport's receiver window closes and clients see back-pressure: a
        // session's commands are never reordered or refused for lack of room.
        let mut inbound = std::mem::take(&mut self.inbound);
        let mut bodies = std::mem::take(&mut self.bodies);
        if self.cursor >= inbound.len() {
            inbound.clear();
            bodies.clear();
            self.cursor = 0;
            work += self.ingress.poll(
                |bytes, header| {
                    let kind = classify(bytes, header.session_id);
                    if let Inbound::Request { start, .. } = kind {
                        let at = bodies.len();
                        bodies.extend_from_slice(&bytes[start..]);
                        inbound.push((kind, at));
                    } else {
                        inbound.push((kind, bodies.len()));
                    }
                },
                INGRESS_POLL_LIMIT,
            );
        }
        while self.cursor < inbound.len() {
            let i = self.cursor;
            let end = inbound.get(i + 1).map_or(bodies.len(), |(_, at)| *at);
            let at = inbound[i].1;
            match inbound[i].0 {
                Inbound::Connect {
                    client,
                    channel,
                    transport_session,
                } => self.connect(client, channel, transport_session, io),
                Inbound::Request {
                    client, seq, query, ..
                } => {
                    if self.sessions.get(&client).is_none_or(|s| s.refused) {
                        self.counters
                            .unknown_session
                            .fetch_add(1, Ordering::Relaxed);
                        self.cursor += 1;
                        continue;
                    }
                    let body = &bodies[at..end];
                    let offered = if query {
                        io.offer_query(client, seq, body).map(|_| ())
                    } else {
                        io.offer_command(client, seq, body).map(|_| ())
                    };
                    match offered {
                        Ok(()) => {}
                        // Full: keep this and the rest for the next cycle.
                        Err(OfferError::BackPressured) => break,
                        Err(OfferError::TooLarge) => {
                            self.counters
                                .invalid_request
                                .fetch_add(1, Ordering::Relaxed);
                            self.refuse(client, seq, ResultCode::InvalidCommand)
                        }
                        // Shutting down: never applied; the client retries elsewhere or later.
                        Err(OfferError::Closed) => self.busy(client, seq),
                    }
                }
                Inbound::Invalid { client, seq } => {
                    self.counters
                        .invalid_request
                        .fetch_add(1, Ordering::Relaxed);
                    if self.sessions.contains_key(&client) {
                        self.refuse(client, seq, ResultCode::InvalidCommand);
                    } else {
                        self.counters
                            .unknown_session
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                Inbound::Malformed => {
                    self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.cursor += 1;
        }
        self.inbound = inbound;
        self.bodies = bodies;

        // Durable replies out.
        let durable = io.durable_position();
        let session_count = self.sessions.len() as u32;
        let (sessions, scratch, closed, name) = (
            &mut self.sessions,
            &mut self.scratch,
            &mut self.closed,
            &self.name,
        );
        work += io.poll_replies(EGRESS_POLL_LIMIT, |r| {
            let is_status = ledger::decode_header(r.bytes).map(|h| h.template_id)
                == Ok(ledger::StatusReplyDecoder::TEMPLATE_ID);
            let patched = is_status
                .then(|| patch_status(r.bytes, durable, session_count, name))
                .flatten();
            let bytes = patched.as_deref().unwrap_or(r.bytes);
            send_reply(sessions, scratch, closed, r.session_id, r.client_seq, bytes);
        });

        // Drive every reply publication; flush queued replies.
        for session in self.sessions.values_mut() {
            while let Some(front) = session.pending.front() {
                if session.publication.offer(front).is_err() {
                    break;
                }
                session.pending.pop_front();
                work += 1;
            }
            work += session.publication.do_work(now);
        }
        for client in std::mem::take(&mut self.closed) {
            // A rejected session is closed once its refusal has been sent; a stalled one now.
            if self
                .sessions
                .get(&client)
                .is_some_and(|s| s.pending.is_empty() || s.stalled)
            {
                self.close_session(client);
            } else if self.sessions.contains_key(&client) {
                self.closed.push(client);
            }
        }
        work
    }

    fn flushed(&self) -> bool {
        self.sessions
            .values()
            .all(|s| s.pending.is_empty() || s.stalled)
    }

    fn on_shutdown(&mut self) {
        // A clean close sends what the publications hold and lingers until the clients
        // acknowledged it (bounded by the transport's close linger).
        for session in self.sessions.values_mut() {
            session.publication.close();
        }
        let deadline = transport::now_ns() + self.transport.close_linger_ns;
        while transport::now_ns() < deadline
            && self.sessions.values().any(|s| !s.publication.is_closed())
        {
            let now = transport::now_ns();
            let work: usize = self
                .sessions
                .values_mut()
                .map(|s| s.publication.do_work(now))
                .sum();
            if work == 0 {
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
        }
        let clients: Vec<u64> = self.sessions.keys().copied().collect();
        for client in clients {
            self.close_session(client);
        }
        self.ingress.close();
        let _ = self.ingress.do_work(transport::now_ns());
    }
}
