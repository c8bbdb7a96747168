//! Requests in flight: sequence numbers, correlation of replies, timeouts and retries.
//!
//! Owns: the session's command sequence (`clientSeq` 1, 2, 3, ...), the query correlation ids
//! ([`QUERY_SEQ_BIT`] set), and one [`Entry`] per request in flight holding its encoded
//! envelope, so that a retry re-sends the very same bytes: same `clientSeq`, same transfer
//! ids. Sans-IO: time comes in as `now_ns`, bytes go out through a caller-supplied `send`
//! closure, and completions come back as values. Does not own sockets or the clock.
//!
//! Invariants:
//! - A request completes exactly once: with its first valid reply, or with
//!   [`ClientError::Timeout`] after `retries + 1` attempts, or with the session's end.
//!   Later replies to it (a retry answered twice) are counted as stray and dropped.
//! - First sends leave in the order requests were started (a refused send stops the round),
//!   so the node sees commands in `clientSeq` order.
//! - A request answered `busy` (the node did not take it; never applied), or a query answered
//!   `not_ready` (a replica behind `min_position`), is re-sent after [`RESEND_DELAY_NS`]
//!   until its whole budget (`timeout × (retries + 1)` from its first send) is spent; then
//!   that reply is its result. Such re-sends do not count against `retries`.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use schemas::ledger::ResultCode;

use crate::error::ClientError;
use crate::message::{Request, Response, REQUEST_LEN_MAX};
use crate::wire::{self, Envelope, ENVELOPE_HEADER_LENGTH, QUERY_SEQ_BIT};

/// Wait before re-sending a request answered `busy` or a query answered `not_ready`, in
/// nanoseconds: a node drains a full pipeline, and a replica catching up applies thousands
/// of commands, within a few milliseconds.
pub const RESEND_DELAY_NS: u64 = 5_000_000;

/// Identifies a request until it completes: its `clientSeq` (commands) or correlation id
/// (queries, with [`QUERY_SEQ_BIT`] set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

impl RequestId {
    /// Whether the request is a query.
    pub fn is_query(self) -> bool {
        wire::is_query_seq(self.0)
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_query() {
            write!(f, "query {}", self.0 & !QUERY_SEQ_BIT)
        } else {
            write!(f, "command {}", self.0)
        }
    }
}

/// A finished request.
pub type Completion = (RequestId, Result<Response, ClientError>);

/// What a send attempt did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// The bytes were taken by the transport.
    Sent,
    /// Not now (back-pressure, not connected): try again on the next round.
    Later,
    /// Never (e.g. too long for the transport): complete the request with this error text.
    Refused,
}

/// Counts for diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests started.
    pub started: u64,
    /// Re-sends after a timeout.
    pub retries: u64,
    /// Re-sends after a `busy` or `not_ready` answer.
    pub later_resends: u64,
    /// Requests that timed out for good.
    pub timeouts: u64,
    /// Replies for no request in flight (a late second answer) or for another session.
    pub stray_replies: u64,
}

#[derive(Debug)]
struct Entry {
    bytes: Vec<u8>,
    /// Attempts sent so far.
    attempts: u32,
    /// When the current attempt times out (meaningful once `attempts > 0`).
    deadline_ns: u64,
    /// When the request's whole budget ends (set at the first send).
    budget_end_ns: u64,
    /// Waiting in `send_queue`.
    queued: bool,
}

/// Hashes the in-flight table's keys, consecutive sequence numbers, with one multiply (they
/// come from this process, not from the network, so no keyed hash is needed).
#[derive(Default)]
struct SeqHasher(u64);

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, key: u64) {
        self.0 = (self.0 ^ key).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type SeqMap<V> = HashMap<u64, V, BuildHasherDefault<SeqHasher>>;

/// Encoded requests kept for reuse, at most this many (one per request in flight is enough).
const SPARE_BUFFERS_MAX: usize = 4096;

/// The in-flight table of one session.
#[derive(Debug)]
pub struct Tracker {
    session_id: u64,
    command_seq_next: u64,
    query_seq_next: u64,
    in_flight_max: usize,
    timeout_ns: u64,
    retries: u32,
    entries: SeqMap<Entry>,
    /// Byte buffers of completed requests, reused by the next ones (no allocation per request).
    spare: Vec<Vec<u8>>,
    /// Ids to (re)send, in order.
    send_queue: VecDeque<u64>,
    /// (deadline, id) in send order; deadlines grow because the timeout is fixed. Stale
    /// items (deadline no longer the entry's) are skipped.
    deadlines: VecDeque<(u64, u64)>,
    /// (due, id) of `not_ready` queries; dues grow because the delay is fixed.
    delayed: VecDeque<(u64, u64)>,
    stats: Stats,
    scratch: Vec<u8>,
}

impl Tracker {
    /// A tracker for `session_id`: at most `in_flight_max` requests, each attempt waiting
    /// `timeout_ns`, and `retries` re-sends after the first attempt.
    pub fn new(session_id: u64, in_flight_max: usize, timeout_ns: u64, retries: u32) -> Self {
        Tracker {
            session_id,
            command_seq_next: 1,
            query_seq_next: 1,
            in_flight_max,
            timeout_ns,
            retries,
            entries: SeqMap::with_capacity_and_hasher(in_flight_max, Default::default()),
            spare: Vec::new(),
            send_queue: VecDeque::with_capacity(in_flight_max),
            deadlines: VecDeque::with_capacity(in_flight_max),
            delayed: VecDeque::new(),
            stats: Stats::default(),
            scratch: vec![0u8; ENVELOPE_HEADER_LENGTH + REQUEST_LEN_MAX],
        }
    }

    /// Requests in flight (started, not completed).
    pub fn in_flight(&self) -> usize {
        self.entries.len()
    }

    /// Whether `id` was started and has not completed.
    pub fn is_in_flight(&self, id: RequestId) -> bool {
        self.entries.contains_key(&id.0)
    }

    /// Counts for diagnostics.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Starts a request: gives it the next `clientSeq` (or query id), encodes its envelope
    /// once, and queues it for sending.
    ///
    /// # Errors
    /// [`ClientError::BackPressured`] when `in_flight_max` requests are in flight;
    /// [`ClientError::Encode`] when the request does not encode (no id is used up).
    pub fn start(&mut self, request: &Request) -> Result<RequestId, ClientError> {
        if self.entries.len() >= self.in_flight_max {
            return Err(ClientError::BackPressured {
                in_flight_max: self.in_flight_max,
            });
        }
        let seq = if request.is_command() {
            self.command_seq_next
        } else {
            QUERY_SEQ_BIT | (self.query_seq_next & !QUERY_SEQ_BIT)
        };
        let len = wire::encode_request(&mut self.scratch, self.session_id, seq, request)
            .map_err(|e| ClientError::Encode(e.to_string()))?;
        if request.is_command() {
            self.command_seq_next += 1;
        } else {
            self.query_seq_next += 1;
        }
        let mut bytes = self.spare.pop().unwrap_or_default();
        bytes.clear();
        bytes.extend_from_slice(&self.scratch[..len]);
        self.entries.insert(
            seq,
            Entry {
                bytes,
                attempts: 0,
                deadline_ns: 0,
                budget_end_ns: 0,
                queued: true,
            },
        );
        self.send_queue.push_back(seq);
        self.stats.started += 1;
        Ok(RequestId(seq))
    }

    /// Offers queued requests to `send` in order until it says [`SendOutcome::Later`].
    /// Returns how many were sent; pushes requests the transport refuses for good to `done`.
    pub fn poll_send(
        &mut self,
        now_ns: u64,
        mut send: impl FnMut(&[u8]) -> SendOutcome,
        done: &mut Vec<Completion>,
    ) -> usize {
        let mut sent = 0;
        while let Some(&seq) = self.send_queue.front() {
            let Some(entry) = self.entries.get_mut(&seq) else {
                self.send_queue.pop_front();
                continue;
            };
            match send(&entry.bytes) {
                SendOutcome::Sent => {
                    self.send_queue.pop_front();
                    entry.queued = false;
                    if entry.attempts == 0 {
                        let budget = self.timeout_ns.saturating_mul(u64::from(self.retries) + 1);
                        entry.budget_end_ns = now_ns.saturating_add(budget);
                    }
                    entry.attempts += 1;
                    entry.deadline_ns = now_ns.saturating_add(self.timeout_ns);
                    self.deadlines.push_back((entry.deadline_ns, seq));
                    sent += 1;
                }
                SendOutcome::Later => break,
                SendOutcome::Refused => {
                    self.send_queue.pop_front();
                    let len = entry.bytes.len();
                    self.entries.remove(&seq);
                    done.push((
                        RequestId(seq),
                        Err(ClientError::Encode(format!(
                            "the transport refused a {len}-byte request"
                        ))),
                    ));
                }
            }
        }
        sent
    }

    /// Handles a reply envelope and its body. Returns the completion it finishes, if any.
    pub fn handle_reply(
        &mut self,
        now_ns: u64,
        envelope: Envelope,
        body: &[u8],
    ) -> Option<Completion> {
        if envelope.client_session_id != self.session_id {
            self.stats.stray_replies += 1;
            return None;
        }
        let seq = envelope.client_seq;
        let Some(entry) = self.entries.get_mut(&seq) else {
            self.stats.stray_replies += 1;
            return None;
        };
        let response = match Response::decode(body) {
            Ok(r) => r,
            Err(e) => {
                self.entries.remove(&seq);
                return Some((RequestId(seq), Err(ClientError::Malformed(e.to_string()))));
            }
        };
        let later = match response.result() {
            Some(ResultCode::Busy) => true,
            Some(ResultCode::NotReady) => wire::is_query_seq(seq),
            _ => false,
        };
        let due = now_ns.saturating_add(RESEND_DELAY_NS);
        if later && due < entry.budget_end_ns {
            if !entry.queued {
                // Parked: no attempt is outstanding until it is re-sent, and the re-send
                // does not count against `retries` (the node did answer).
                entry.deadline_ns = u64::MAX;
                entry.attempts = entry.attempts.saturating_sub(1);
                self.delayed.push_back((due, seq));
            }
            return None;
        }
        self.retire(seq);
        Some((RequestId(seq), Ok(response)))
    }

    /// Handles the passing of time: queues re-sends of timed-out attempts and of delayed
    /// `not_ready` queries, and pushes requests out of attempts to `done`.
    pub fn handle_timeout(&mut self, now_ns: u64, done: &mut Vec<Completion>) {
        while let Some(&(due, seq)) = self.delayed.front() {
            if due > now_ns {
                break;
            }
            self.delayed.pop_front();
            if let Some(entry) = self.entries.get_mut(&seq) {
                if !entry.queued {
                    entry.queued = true;
                    self.send_queue.push_back(seq);
                    self.stats.later_resends += 1;
                }
            }
        }
        while let Some(&(deadline, seq)) = self.deadlines.front() {
            if deadline > now_ns {
                break;
            }
            self.deadlines.pop_front();
            let Some(entry) = self.entries.get_mut(&seq) else {
                continue;
            };
            if entry.deadline_ns != deadline || entry.queued {
                continue; // superseded by a later attempt, or parked
            }
            if entry.attempts > self.retries {
                let attempts = entry.attempts;
                self.entries.remove(&seq);
                self.stats.timeouts += 1;
                done.push((
                    RequestId(seq),
                    Err(ClientError::Timeout {
                        client_seq: seq,
                        attempts,
                        timeout_ms: self.timeout_ns / 1_000_000,
                    }),
                ));
            } else {
                entry.queued = true;
                self.send_queue.push_back(seq);
                self.stats.retries += 1;
            }
        }
    }

    /// Removes a completed request, keeping its buffer for reuse.
    fn retire(&mut self, seq: u64) {
        if let Some(entry) = self.entries.remove(&seq) {
            if self.spare.len() < SPARE_BUFFERS_MAX.min(self.in_flight_max) {
                self.spare.push(entry.bytes);
            }
        }
    }

    /// Completes every request in flight with `error` (the session ended).
    pub fn fail_all(&mut self, error: &ClientError, done: &mut Vec<Completion>) {
        let mut seqs: Vec<u64> = self.entries.keys().copied().collect();
        seqs.sort_unstable();
        for seq in seqs {
            done.push((RequestId(seq), Err(error.clone())));
        }
        self.entries.clear();
        self.send_queue.clear();
        self.deadlines.clear();
        self.delayed.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode_request, encode_reply_header, ToNode};
    use schemas::ledger::{AccountReplyEncoder, CommandReplyEncoder};

    const MS: u64 = 1_000_000;
    const SESSION: u64 = 77;

    fn deposit(id: u128) -> Request {
        Request::Deposit {
            id,
            account_id: 10,
            amount: 5,
        }
    }

    fn command_reply(seq: u64, result: ResultCode) -> Vec<u8> {
        let mut buf = vec![0u8; 256];
        let mut e = CommandReplyEncoder::wrap_with_header(&mut buf).unwrap();
        e.set_position(seq).set_client_seq(seq).set_result(result);
        let len = e.finish().unwrap();
        buf.truncate(len);
        buf
    }

    fn account_reply(result: ResultCode) -> Vec<u8> {
        let mut buf = vec![0u8; 256];
        let mut e = AccountReplyEncoder::wrap_with_header(&mut buf).unwrap();
        e.set_position(3).set_result(result).set_id(10);
        let len = e.finish().unwrap();
        buf.truncate(len);
        buf
    }

    fn envelope(seq: u64) -> Envelope {
        Envelope {
            client_session_id: SESSION,
            client_seq: seq,
        }
    }

    /// Sends everything queued; returns the (clientSeq, body) pairs the node would see.
    fn send_all(t: &mut Tracker, now: u64) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut done = Vec::new();
        t.poll_send(
            now,
            |bytes| {
                match decode_request(bytes).unwrap() {
                    ToNode::Request(env, body) => out.push((env.client_seq, body.to_vec())),
                    other => panic!("expected a request, got {other:?}"),
                }
                SendOutcome::Sent
            },
            &mut done,
        );
        assert!(done.is_empty());
        out
    }

    #[test]
    fn commands_are_numbered_from_one_and_queries_live_in_their_own_space() {
        let mut t = Tracker::new(SESSION, 8, 100 * MS, 2);
        let a = t.start(&deposit(1)).unwrap();
        let q = t.start(&Request::GetStatus { min_position: 0 }).unwrap();
        let b = t.start(&deposit(2)).unwrap();
        assert_eq!((a, b), (RequestId(1), RequestId(2)));
        assert!(q.is_query() && !a.is_query());
        assert_eq!(q, RequestId(QUERY_SEQ_BIT | 1));
        let sent: Vec<u64> = send_all(&mut t, 0).into_iter().map(|(s, _)| s).collect();
        assert_eq!(
            sent,
            [1, QUERY_SEQ_BIT | 1, 2],
            "first sends keep start order"
        );
    }

    #[test]
    fn replies_complete_the_matching_request_in_any_order() {
        let mut t = Tracker::new(SESSION, 8, 100 * MS, 2);
        t.start(&deposit(1)).unwrap();
        t.start(&deposit(2)).unwrap();
        send_all(&mut t, 0);
        let (id, r) = t
            .handle_reply(1, envelope(2), &command_reply(2, ResultCode::Ok))
            .unwrap();
        assert_eq!(id, RequestId(2));
        assert_eq!(r.unwrap().result(), Some(ResultCode::Ok));
        let (id, r) = t
            .handle_reply(
                1,
                envelope(1),
                &command_reply(1, ResultCode::InsufficientFunds),
            )
            .unwrap();
        assert_eq!(id, RequestId(1));
        assert_eq!(r.unwrap().result(), Some(ResultCode::InsufficientFunds));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn a_retry_resends_the_same_bytes_with_the_same_seq_and_transfer_id() {
        let mut t = Tracker::new(SESSION, 8, 100 * MS, 2);
        t.start(&deposit(0xABCD)).unwrap();
        let first = send_all(&mut t, 0);
        let mut done = Vec::new();
        t.handle_timeout(99 * MS, &mut done);
        assert!(
            send_all(&mut t, 99 * MS).is_empty(),
            "not before the timeout"
        );
        t.handle_timeout(100 * MS, &mut done);
        let second = send_all(&mut t, 100 * MS);
        assert_eq!(first, second, "same clientSeq, same command bytes");
        assert_eq!(second[0].1, deposit(0xABCD).to_bytes().unwrap());
        assert!(done.is_empty());
        assert_eq!(t.stats().retries, 1);
    }

    #[test]
    fn a_request_times_out_after_retries_plus_one_attempts() {
        let mut t = Tracker::new(SESSION, 8, 100 * MS, 2);
        t.start(&deposit(1)).unwrap();
        let mut done = Vec::new();
        let mut now = 0;
        let mut attempts = 0;
        while done.is_empty() {
            attempts += send_all(&mut t, now).len();
            now += 100 * MS;
            t.handle_timeout(now, &mut done);
        }
        assert_eq!(attempts, 3);
        assert_eq!(
            done,
            vec![(
                RequestId(1),
                Err(ClientError::Timeout {
                    client_seq: 1,
                    attempts: 3,
                    timeout_ms: 100
                })
            )]
        );
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn a_second_reply_to_a_retried_command_is_dropped_as_stray() {
        let mut t = Tracker::new(SESSION, 8, 100 * MS, 2);
        t.start(&deposit(1)).unwrap();
        send_all(&mut t, 0);
        let mut done = Vec::new();
        t.handle_timeout(100 * MS, &mut done);
        send_all(&mut t, 100 * MS);
        let reply = command_reply(1, ResultCode::Ok);
        assert!(t.handle_reply(101 * MS, envelope(1), &reply).is_some());
        assert!(t.handle_reply(102 * MS, envelope(1), &reply).is_none());
        t.handle_timeout(500 * MS, &mut done);
        assert!(done.is_empty(), "a completed request never times out");
        assert_eq!(t.stats().stray_replies, 1);
    }

    #[test]
    fn replies_for_another_session_are_ignored() {
        let mut t = Tracker::new(SESSION, 8, 100 * MS, 2);
        t.start(&deposit(1)).unwrap();
        send_all(&mut t, 0);
        let other = Envelope {
            client_session_id: SESSION + 1,
            client_seq: 1,
        };
        assert!(t
            .handle_reply(1, other, &command_reply(1, ResultCode::Ok))
            .is_none());
        assert_eq!(t.in_flight(), 1);
    }

    #[test]
    fn a_full_table_is_back_pressure_and_frees_up_on_completion() {
        let mut t = Tracker::new(SESSION, 2, 100 * MS, 0);
        t.start(&deposit(1)).unwrap();
        t.start(&deposit(2)).unwrap();
        assert_eq!(
            t.start(&deposit(3)),
            Err(ClientError::BackPressured { in_flight_max: 2 })
        );
        send_all(&mut t, 0);
        assert!(t
            .handle_reply(1, envelope(1), &command_reply(1, ResultCode::Ok))
            .is_some());
        assert_eq!(t.start(&deposit(3)), Ok(RequestId(3)));
    }

    #[test]
    fn a_refused_send_stops_the_round_and_keeps_order() {
        let mut t = Tracker::new(SESSION, 8, 100 * MS, 0);
        t.start(&deposit(1)).unwrap();
        t.start(&deposit(2)).unwrap();
        let mut done = Vec::new();
        let mut calls = 0;
        let sent = t.poll_send(
            0,
            |_| {
                calls += 1;
                SendOutcome::Later
            },
            &mut done,
        );
        assert_eq!((sent, calls), (0, 1));
        let order: Vec<u64> = send_all(&mut t, 1).into_iter().map(|(s, _)| s).collect();
        assert_eq!(order, [1, 2]);
    }

    #[test]
    fn a_not_ready_query_is_resent_after_a_short_delay_then_answered() {
        let mut t = Tracker::new(SESSION, 8, 100 * MS, 1);
        let q = t
            .start(&Request::GetAccount {
                id: 10,
                min_position: 9,
            })
            .unwrap();
        send_all(&mut t, 0);
        let env = envelope(q.0);
        assert!(t
            .handle_reply(MS, env, &account_reply(ResultCode::NotReady))
            .is_none());
        let mut done = Vec::new();
        t.handle_timeout(MS + RESEND_DELAY_NS - 1, &mut done);
        assert!(send_all(&mut t, MS + RESEND_DELAY_NS - 1).is_empty());
        t.handle_timeout(MS + RESEND_DELAY_NS, &mut done);
        assert_eq!(send_all(&mut t, MS + RESEND_DELAY_NS).len(), 1);
        let (id, r) = t
            .handle_reply(7 * MS, env, &account_reply(ResultCode::Ok))
            .unwrap();
        assert_eq!((id, r.unwrap().result()), (q, Some(ResultCode::Ok)));
        assert!(done.is_empty());
        assert_eq!(t.stats().later_resends, 1);
    }

    #[test]
    fn not_ready_is_the_answer_once_the_budget_is_spent() {
        let mut t = Tracker::new(SESSION, 8, 10 * MS, 0);
        let q = t.start(&Request::GetStatus { min_position: 9 }).unwrap();
        send_all(&mut t, 0);
        let r = t
            .handle_reply(8 * MS, envelope(q.0), &account_reply(ResultCode::NotReady))
            .unwrap();
        assert_eq!(r.1.unwrap().result(), Some(ResultCode::NotReady));
    }

    #[test]
    fn a_malformed_reply_completes_its_request_with_an_error() {
        let mut t = Tracker::new(SESSION, 8, 100 * MS, 0);
        t.start(&deposit(1)).unwrap();
        send_all(&mut t, 0);
        let (_, r) = t.handle_reply(1, envelope(1), &[1, 2, 3]).unwrap();
        assert!(matches!(r, Err(ClientError::Malformed(_))));
    }

    #[test]
    fn a_request_that_does_not_encode_uses_no_sequence_number() {
        let mut t = Tracker::new(SESSION, 8, 100 * MS, 0);
        let too_many = Request::Transfers {
            atomic: false,
            transfers: vec![
                crate::Transfer {
                    id: 1,
                    debit_account_id: 1,
                    credit_account_id: 2,
                    amount: 1,
                    ledger: 1,
                    pending: false,
                    timeout_s: 0,
                    code: 0,
                };
                crate::message::TRANSFERS_PER_REQUEST_MAX + 1
            ],
        };
        assert!(matches!(t.start(&too_many), Err(ClientError::Encode(_))));
        assert_eq!(t.start(&deposit(1)), Ok(RequestId(1)));
    }

    #[test]
    fn ending_the_session_fails_everything_in_flight() {
        let mut t = Tracker::new(SESSION, 8, 100 * MS, 0);
        t.start(&deposit(1)).unwrap();
        t.start(&deposit(2)).unwrap();
        let error = ClientError::Session {
            code: "closed".into(),
            detail: "shutdown".into(),
        };
        let mut done = Vec::new();
        t.fail_all(&error, &mut done);
        assert_eq!(
            done,
            vec![
                (RequestId(1), Err(error.clone())),
                (RequestId(2), Err(error))
            ]
        );
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn encode_reply_header_and_body_round_trip_through_the_tracker() {
        // The fake node in tests/ builds replies this way; check it here once.
        let mut t = Tracker::new(SESSION, 8, 100 * MS, 0);
        t.start(&deposit(1)).unwrap();
        send_all(&mut t, 0);
        let mut buf = vec![0u8; 256];
        let head = encode_reply_header(&mut buf, SESSION, 1).unwrap();
        let body = command_reply(1, ResultCode::Ok);
        buf[head..head + body.len()].copy_from_slice(&body);
        let bytes = &buf[..head + body.len()];
        let crate::wire::FromNode::Reply(env, body) = crate::wire::decode_from_node(bytes).unwrap()
        else {
            panic!("expected a reply");
        };
        assert!(t.handle_reply(1, env, body).is_some());
    }

    #[test]
    fn a_busy_command_is_resent_with_the_same_seq_after_a_short_delay() {
        let mut t = Tracker::new(SESSION, 8, 100 * MS, 0);
        t.start(&deposit(5)).unwrap();
        let first = send_all(&mut t, 0);
        assert!(t
            .handle_reply(MS, envelope(1), &command_reply(1, ResultCode::Busy))
            .is_none());
        let mut done = Vec::new();
        t.handle_timeout(MS + RESEND_DELAY_NS, &mut done);
        assert_eq!(send_all(&mut t, MS + RESEND_DELAY_NS), first);
        let (_, r) = t
            .handle_reply(7 * MS, envelope(1), &command_reply(1, ResultCode::Ok))
            .unwrap();
        assert_eq!(r.unwrap().result(), Some(ResultCode::Ok));
        assert!(
            done.is_empty(),
            "a busy re-send does not use up the retries"
        );
    }
}
