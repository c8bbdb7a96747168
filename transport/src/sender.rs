//! The sans-IO sender of one publication: term buffers, framing, batching, flow control,
//! retransmits, SETUP, heartbeats and close.
//!
//! Owns: the publication's log (three terms), its positions, the receivers it has heard
//! from, and the latest refusal one of them sent ([`Sender::last_refusal`]). Does not own
//! sockets or a clock: callers feed `now_ns` and datagrams in ([`Sender::handle_datagram`],
//! [`Sender::handle_timeout`]) and take datagrams out ([`Sender::poll_transmit`]);
//! [`Sender::poll_timeout`] says when to call again.
//!
//! Methods, in the order a driver calls them each duty cycle: mutators ([`Sender::offer`],
//! [`Sender::try_claim`], [`Sender::close`]), input (`handle_datagram` for every control
//! datagram, `handle_timeout`), output (`poll_transmit` until it returns `None`).
//!
//! Invariants: `sender_position <= publisher_position <= sender_position + publication_window`;
//! data is sent only below the flow-control `sender_limit`; a retransmit only resends bytes
//! already sent and still in the log (the sender position's term and the one before). A
//! tracked receiver's position and limit never move back (a reordered status message changes
//! nothing), so the sender's limit moves back only when a receiver joins behind the others
//! (min and tagged strategies) or one leaves (max).

use std::net::SocketAddr;

use crate::config::{
    Config, ConfigError, FlowControl, FLOW_CONTROL_RECEIVERS_MAX, RETRANSMITS_MAX,
};
use crate::counters::{CounterId, Counters};
use crate::frame::{
    self, align_frame, flags, frame_type, DataHeader, ErrorFrame, Frame, Frames, Nak,
    RefusalReason, Rttm, Setup, StatusMessage, DATA_HEADER_LENGTH, FRAME_ALIGNMENT,
};
use crate::log::{touch_lines, TermLog};

/// Why an offer or claim was refused. Nothing was written; the caller decides what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferError {
    /// The publication is flow-controlled: retry after the driver has sent and receivers
    /// have acknowledged.
    BackPressured,
    /// No receiver has acknowledged the session (or all timed out). A receiver that refused
    /// it said why: [`Sender::last_refusal`].
    NotConnected,
    /// The publication is closing or closed; it closes by itself when its stream reaches
    /// its end, 2^31 terms (Aeron's MAX_POSITION_EXCEEDED).
    Closed,
    /// The message is longer than `message_length_max` (or a claim longer than one frame).
    MessageTooLong {
        /// The length offered.
        length: usize,
        /// The largest accepted.
        length_max: usize,
    },
}

impl std::fmt::Display for OfferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OfferError::BackPressured => f.write_str("back-pressured"),
            OfferError::NotConnected => f.write_str("not connected"),
            OfferError::Closed => f.write_str("closed"),
            OfferError::MessageTooLong { length, length_max } => {
                write!(f, "message of {length} bytes exceeds {length_max}")
            }
        }
    }
}

impl std::error::Error for OfferError {}

/// A receiver's refusal of this publication: the ERR frame it answered a SETUP with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why, from the frame's error code.
    pub reason: RefusalReason,
    /// The receiver's words with the figures, e.g. "term length 128 MiB over its cap 64 MiB
    /// (image_term_length_max)". At most `frame::ERR_MESSAGE_LENGTH_MAX` bytes as sent;
    /// control characters and invalid UTF-8 are replaced.
    pub text: String,
    /// When it arrived: the `now_ns` it was fed with.
    pub at_ns: u64,
    /// The receiver's address.
    pub source: SocketAddr,
    /// The receiver's id.
    pub receiver_id: i64,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.text.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            f.write_str(&self.text)
        }
    }
}

/// A datagram produced by `poll_transmit`: `length` bytes at the start of the caller's buffer,
/// for `destination` (`None`: the publication's channel endpoint or multicast group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send; `None` means the channel's endpoint.
    pub destination: Option<SocketAddr>,
    /// Bytes written into the buffer.
    pub length: usize,
}

#[derive(Debug, Clone, Copy)]
struct ReceiverEntry {
    receiver_id: i64,
    limit: i64,
    position: i64,
    last_seen_ns: u64,
    group_tag: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
enum RetransmitState {
    Pending,
    Lingering { until_ns: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Retransmit {
    start: i64,
    end: i64,
    cursor: i64,
    state: RetransmitState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    Closing { deadline_ns: u64 },
    Closed,
}

/// The sender state machine of one publication (session).
#[derive(Debug)]
pub struct Sender {
    cfg: Config,
    session_id: i32,
    stream_id: i32,
    log: TermLog,
    publisher_position: i64,
    sender_position: i64,
    sender_limit: i64,
    /// Frames from `run_start` up to the publisher position are all DATA frames of
    /// `run_frame` bytes (aligned), back to back: `frames_span` finds datagram boundaries
    /// there by arithmetic instead of walking every header. `run_frame == 0`: no such run.
    run_start: i64,
    run_frame: usize,
    /// The publisher's term, cached for `offer_fast`: where it ends, its term id, and what
    /// to add to a position in it to get its log index (see `Sender::publisher_term`).
    pub_term_end: i64,
    pub_term_id: i32,
    pub_term_index_delta: i64,
    receivers: Vec<ReceiverEntry>,
    retransmits: Vec<Retransmit>,
    setup_due: bool,
    setup_next_ns: u64,
    last_send_ns: u64,
    eos_sent: bool,
    rttm_reply: Option<(SocketAddr, Rttm)>,
    last_refusal: Option<Refusal>,
    state: State,
    counters: Counters,
}

impl Sender {
    /// A sender for `(session_id, stream_id)` whose stream starts at `initial_term_id`.
    ///
    /// # Errors
    /// The config is invalid.
    pub fn new(
        cfg: Config,
        session_id: i32,
        stream_id: i32,
        initial_term_id: i32,
        now_ns: u64,
    ) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Sender {
            log: TermLog::new(cfg.term_length, initial_term_id),
            cfg,
            session_id,
            stream_id,
            publisher_position: 0,
            sender_position: 0,
            sender_limit: 0,
            run_start: 0,
            run_frame: 0,
            pub_term_end: 0,
            pub_term_id: 0,
            pub_term_index_delta: 0,
            receivers: Vec::with_capacity(FLOW_CONTROL_RECEIVERS_MAX),
            retransmits: Vec::with_capacity(RETRANSMITS_MAX),
            setup_due: true,
            setup_next_ns: now_ns,
            last_send_ns: now_ns,
            eos_sent: false,
            rttm_reply: None,
            last_refusal: None,
            state: State::Active,
            counters: Counters::default(),
        })
    }

    /// The session id.
    pub fn session_id(&self) -> i32 {
        self.session_id
    }
    /// The stream id.
    pub fn stream_id(&self) -> i32 {
        self.stream_id
    }
    /// The config.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    /// Position after the last committed message.
    pub fn position(&self) -> i64 {
        self.publisher_position
    }
    /// Position up to which data has been sent at least once.
    pub fn sender_position(&self) -> i64 {
        self.sender_position
    }
    /// The flow-control limit: data below it may be sent.
    pub fn sender_limit(&self) -> i64 {
        self.sender_limit
    }
    /// Whether some receiver has acknowledged the session and not timed out.
    pub fn is_connected(&self) -> bool {
        !self.receivers.is_empty()
    }
    /// Whether unsent data waits for flow control: less than an MTU of room is left below
    /// the limit (so the next datagram may not fit), and a status message is what helps.
    pub fn is_flow_control_blocked(&self) -> bool {
        self.publisher_position > self.sender_position
            && self.sender_limit - self.sender_position < self.cfg.mtu as i64
    }
    /// Whether less than half of the receivers' advertised window is left before the
    /// flow-control limit: status messages are then awaited, and worth reading promptly.
    pub fn is_flow_control_room_low(&self) -> bool {
        let window = self
            .receivers
            .iter()
            .map(|r| r.limit - r.position)
            .max()
            .unwrap_or(0);
        self.sender_limit - self.sender_position < window / 2
    }
    /// Whether a close started and has not finished yet.
    pub fn is_closing(&self) -> bool {
        matches!(self.state, State::Closing { .. })
    }
    /// Whether the publication finished closing.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }
    /// The latest refusal of this publication by a receiver, if any. The publication keeps
    /// sending SETUPs meanwhile, and joins if the receiver takes one later (an image ended and
    /// made room); the refusal stays here after that, and a multicast publication may be
    /// connected to other receivers, so compare `at_ns` with the time of interest.
    pub fn last_refusal(&self) -> Option<&Refusal> {
        self.last_refusal.as_ref()
    }
    /// Receivers currently in the flow-control set.
    pub fn receiver_count(&self) -> usize {
        self.receivers.len()
    }
    /// Counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
    /// Counters, for the driver to add socket-level figures.
    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    /// Checks state, length and limits, writes padding to the term end if needed, and returns
    /// the position where `required` bytes of frames may be written.
    fn reserve(&mut self, length: usize, length_max: usize) -> Result<(i64, usize), OfferError> {
        if self.state != State::Active {
            return Err(OfferError::Closed);
        }
        if length > length_max {
            return Err(OfferError::MessageTooLong { length, length_max });
        }
        if !self.is_connected() {
            return Err(OfferError::NotConnected);
        }
        let required = self.cfg.frames_length(length);
        let offset = self.log.term_offset(self.publisher_position);
        let term_length = self.cfg.term_length;
        let pad = if offset + required > term_length {
            term_length - offset
        } else {
            0
        };
        if self.publisher_position + (pad + required) as i64 > self.position_max() {
            // The stream's end (Aeron's MAX_POSITION_EXCEEDED): the publication closes, and a
            // new one (its own session) must carry on. The sender's last send stands in for
            // the time (a connected sender sends at least every heartbeat interval while its
            // driver polls it, so the linger may be shorter by that much).
            self.close(self.last_send_ns);
            return Err(OfferError::Closed);
        }
        let limit = self.sender_position + self.cfg.publication_window as i64;
        // Padding to the term's end goes in as soon as it fits in the window, on its own (as
        // Aeron's term rotation does): checked together with the message's frames, a long
        // message offered near a term's end never fit, though each did alone.
        let back_pressured = |s: &mut Self| {
            s.counters.incr(CounterId::BackPressureEvents);
            Err(OfferError::BackPressured)
        };
        if pad > 0 {
            if self.publisher_position + pad as i64 > limit {
                return back_pressured(self);
            }
            self.run_frame = 0;
            let p = self.publisher_position;
            self.write_header(p, pad as i32, flags::UNFRAGMENTED, frame_type::PAD);
            self.publisher_position += pad as i64;
        }
        if self.publisher_position + required as i64 > limit {
            return back_pressured(self);
        }
        // Fragments and claims are written outside the run of equal frames.
        self.run_frame = 0;
        Ok((self.publisher_position, required))
    }

    fn write_header(&mut self, position: i64, frame_length: i32, fl: u8, ty: u16) {
        let idx = self.log.index(position);
        // Encoded into a fixed-size array (no per-field bounds checks), then copied at once.
        let header = DataHeader {
            frame_length,
            flags: fl,
            frame_type: ty,
            term_offset: self.log.term_offset(position) as i32,
            session_id: self.session_id,
            stream_id: self.stream_id,
            term_id: self.log.term_id(position),
            reserved_value: 0,
        }
        .to_bytes();
        self.log.buf[idx..idx + DATA_HEADER_LENGTH].copy_from_slice(&header);
    }

    /// Appends `message` to the log (fragmenting it above `mtu - 32` bytes) and returns the
    /// new publication position. Never blocks and never drops.
    ///
    /// # Errors
    /// [`OfferError`]: back-pressured, not connected, closed, or too long.
    #[inline]
    pub fn offer(&mut self, message: &[u8]) -> Result<i64, OfferError> {
        if let Some(position) = self.offer_fast(message) {
            return Ok(position);
        }
        self.offer_slow(message)
    }

    /// [`Sender::offer`] beyond its fast path: kept out of line so that the fast path, inlined
    /// into the caller's loop, stays small.
    #[inline(never)]
    fn offer_slow(&mut self, message: &[u8]) -> Result<i64, OfferError> {
        let (mut position, required) = self.reserve(message.len(), self.cfg.message_length_max)?;
        let payload_max = self.cfg.payload_length_max();
        if message.len() <= payload_max {
            // One frame, the common case: header, payload, zeroed alignment tail.
            let frame_length = DATA_HEADER_LENGTH + message.len();
            self.write_header(
                position,
                frame_length as i32,
                flags::UNFRAGMENTED,
                frame_type::DATA,
            );
            let idx = self.log.index(position);
            let frame = &mut self.log.buf[idx..idx + required];
            frame[DATA_HEADER_LENGTH..frame_length].copy_from_slice(message);
            frame[frame_length..].fill(0);
            self.publisher_position += required as i64;
            return Ok(self.publisher_position);
        }
        let mut chunks = message.chunks(payload_max).peekable();
        let mut first = true;
        if message.is_empty() {
            self.write_header(
                position,
                DATA_HEADER_LENGTH as i32,
                flags::UNFRAGMENTED,
                frame_type::DATA,
            );
        }
        while let Some(chunk) = chunks.next() {
            let mut fl = 0;
            if first {
                fl |= flags::BEGIN;
            }
            if chunks.peek().is_none() {
                fl |= flags::END;
            }
            first = false;
            let frame_length = DATA_HEADER_LENGTH + chunk.len();
            self.write_header(position, frame_length as i32, fl, frame_type::DATA);
            let idx = self.log.index(position);
            let aligned = align_frame(frame_length);
            self.log.buf[idx + DATA_HEADER_LENGTH..idx + frame_length].copy_from_slice(chunk);
            self.log.buf[idx + frame_length..idx + aligned].fill(0);
            position += aligned as i64;
        }
        self.publisher_position += required as i64;
        Ok(self.publisher_position)
    }

    /// The common case of [`Sender::offer`] in one pass: an active, connected publication, a
    /// message that fits one frame, in the current term and inside the publication window.
    /// Writes the frame and returns the new position; `None` (nothing written) sends the
    /// caller down the general path, which also reports the errors.
    #[inline(always)]
    fn offer_fast(&mut self, message: &[u8]) -> Option<i64> {
        let length = message.len();
        if self.state != State::Active
            || self.receivers.is_empty()
            || length > self.cfg.payload_length_max()
            || length > self.cfg.message_length_max
        {
            return None;
        }
        let frame_length = DATA_HEADER_LENGTH + length;
        let required = align_frame(frame_length);
        let position = self.publisher_position;
        if position >= self.pub_term_end {
            self.publisher_term();
        }
        let end = position + required as i64;
        if end > self.pub_term_end
            || end > self.sender_position + self.cfg.publication_window as i64
        {
            return None;
        }
        let offset = self.log.term_offset(position);
        let header = DataHeader {
            frame_length: frame_length as i32,
            flags: flags::UNFRAGMENTED,
            frame_type: frame_type::DATA,
            term_offset: offset as i32,
            session_id: self.session_id,
            stream_id: self.stream_id,
            term_id: self.pub_term_id,
            reserved_value: 0,
        }
        .to_bytes();
        if self.run_frame != required {
            self.run_start = position;
            self.run_frame = required;
        }
        let idx = (position + self.pub_term_index_delta) as usize;
        let frame = &mut self.log.buf[idx..idx + required];
        let (head, rest) = frame.split_at_mut(DATA_HEADER_LENGTH);
        head.copy_from_slice(&header);
        let (payload, tail) = rest.split_at_mut(length);
        copy_small(payload, message);
        if !tail.is_empty() {
            tail.fill(0);
        }
        self.publisher_position = end;
        Some(end)
    }

    /// The furthest a stream's data may reach: term ids are i32, so a position's term id
    /// wraps to before the initial one after 2^31 terms (receivers would read it as a
    /// negative position), and a heartbeat at the end must still be a valid position.
    fn position_max(&self) -> i64 {
        ((1i64 << 31) << self.log.shift) - FRAME_ALIGNMENT as i64
    }

    /// Caches the publisher position's term for `offer_fast`.
    #[cold]
    fn publisher_term(&mut self) {
        let p = self.publisher_position;
        let start = self.log.term_start(p);
        self.pub_term_end = (start + self.cfg.term_length as i64).min(self.position_max());
        self.pub_term_id = self.log.term_id(p);
        self.pub_term_index_delta = self.log.index(start) as i64 - start;
    }

    /// Reserves one unfragmented frame of `length` payload bytes to be written in place.
    ///
    /// # Errors
    /// As [`Sender::offer`]; `length` may be at most `mtu - 32`.
    pub fn try_claim(&mut self, length: usize) -> Result<Claim<'_>, OfferError> {
        let length_max = self
            .cfg
            .payload_length_max()
            .min(self.cfg.message_length_max);
        let (position, _) = self.reserve(length, length_max)?;
        let frame_length = DATA_HEADER_LENGTH + length;
        self.write_header(
            position,
            frame_length as i32,
            flags::UNFRAGMENTED,
            frame_type::DATA,
        );
        let idx = self.log.index(position);
        self.log.buf[idx + frame_length..idx + align_frame(frame_length)].fill(0);
        Ok(Claim {
            sender: self,
            position,
            length,
        })
    }

    /// Starts a clean close: no more offers; remaining data is sent, then end-of-stream
    /// heartbeats until every receiver has left (a status message with the EOS flag: it has
    /// everything) or `close_linger_ns` passes.
    pub fn close(&mut self, now_ns: u64) {
        if self.state == State::Active {
            self.state = State::Closing {
                deadline_ns: now_ns + self.cfg.close_linger_ns,
            };
        }
    }

    /// Feeds one datagram received on the publication's socket (status messages, NAKs, RTT
    /// requests, ERR frames refusing it). Anything else is dropped and counted.
    pub fn handle_datagram(&mut self, now_ns: u64, source: SocketAddr, datagram: &[u8]) {
        self.counters.incr(CounterId::DatagramsReceived);
        self.counters
            .add(CounterId::BytesReceived, datagram.len() as u64);
        for f in Frames::new(datagram) {
            match f {
                Err(_) => self.counters.incr(CounterId::DropsMalformed),
                Ok(Frame::StatusMessage(sm)) => self.on_status_message(now_ns, &sm),
                Ok(Frame::Nak(nak)) => self.on_nak(now_ns, &nak),
                Ok(Frame::Error(e)) => self.on_error(now_ns, source, &e),
                Ok(Frame::Rttm(r)) if r.flags & flags::RTTM_REPLY == 0 => {
                    if r.session_id == self.session_id && r.stream_id == self.stream_id {
                        self.rttm_reply = Some((
                            source,
                            Rttm {
                                flags: flags::RTTM_REPLY,
                                reception_delta: 0,
                                ..r
                            },
                        ));
                    } else {
                        self.counters.incr(CounterId::DropsUnknownSession);
                    }
                }
                Ok(_) => self.counters.incr(CounterId::DropsUnexpectedType),
            }
        }
    }

    /// Records a receiver's refusal (the frame's text is copied into the kept `String`, so a
    /// flood of them allocates nothing after the first).
    fn on_error(&mut self, now_ns: u64, source: SocketAddr, e: &ErrorFrame<'_>) {
        if e.session_id != self.session_id || e.stream_id != self.stream_id {
            self.counters.incr(CounterId::DropsUnknownSession);
            return;
        }
        self.counters.incr(CounterId::ErrorFramesReceived);
        let r = self.last_refusal.get_or_insert_with(|| Refusal {
            reason: RefusalReason::Other(0),
            text: String::new(),
            at_ns: 0,
            source,
            receiver_id: 0,
        });
        r.reason = RefusalReason::from_code(e.error_code);
        r.at_ns = now_ns;
        r.source = source;
        r.receiver_id = e.receiver_id;
        r.text.clear();
        // The text reaches users' terminals and logs: nothing in it may act as a control,
        // nor reorder what is shown around it (the bidirectional embeddings, overrides and
        // isolates).
        for chunk in e.message.utf8_chunks() {
            r.text.extend(chunk.valid().chars().map(|c| {
                if c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
                {
                    '\u{FFFD}'
                } else {
                    c
                }
            }));
            if !chunk.invalid().is_empty() {
                r.text.push('\u{FFFD}');
            }
        }
    }

    fn on_status_message(&mut self, now_ns: u64, sm: &StatusMessage) {
        if sm.session_id != self.session_id || sm.stream_id != self.stream_id {
            self.counters.incr(CounterId::DropsUnknownSession);
            return;
        }
        self.counters.incr(CounterId::StatusMessagesReceived);
        if sm.flags & flags::SM_EOS != 0 {
            self.receivers.retain(|r| r.receiver_id != sm.receiver_id);
            self.recompute_limit();
            return;
        }
        if sm.flags & flags::SM_SEND_SETUP != 0 {
            self.setup_due = true;
        }
        let position = self
            .log
            .position(sm.consumption_term_id, sm.consumption_term_offset);
        if sm.flags & flags::SM_SEND_SETUP != 0 && sm.receiver_window == 0 {
            return; // a setup request, not an acknowledgement
        }
        if position < 0 || position > self.publisher_position {
            self.counters.incr(CounterId::DropsOutOfWindow);
            return;
        }
        let limit = position + sm.receiver_window as i64;
        let count = self.receivers.len();
        match self
            .receivers
            .iter_mut()
            .find(|r| r.receiver_id == sm.receiver_id)
        {
            Some(r) => {
                // A status message older than one already taken (reordered on the way, or a
                // copy) must not move its receiver back: what it granted stays granted. Under
                // the min strategies that receiver would otherwise pull the sender's limit back
                // with it, stalling sends until its next status message.
                r.limit = r.limit.max(limit);
                r.position = r.position.max(position);
                r.last_seen_ns = now_ns;
                r.group_tag = sm.group_tag;
            }
            None if count < FLOW_CONTROL_RECEIVERS_MAX => self.receivers.push(ReceiverEntry {
                receiver_id: sm.receiver_id,
                limit,
                position,
                last_seen_ns: now_ns,
                group_tag: sm.group_tag,
            }),
            None => self.counters.incr(CounterId::DropsOutOfWindow),
        }
        self.recompute_limit();
    }

    fn recompute_limit(&mut self) {
        let limits = self.receivers.iter();
        let new = match self.cfg.flow_control {
            FlowControl::Unicast => limits
                .map(|r| r.limit)
                .max()
                .map(|l| l.max(self.sender_limit)),
            FlowControl::Max => limits.map(|r| r.limit).max(),
            FlowControl::Min => limits.map(|r| r.limit).min(),
            // With no receiver of the group tracked, the others set the pace, as in Aeron:
            // they make the publication connected, so offers are taken, and a limit that
            // waited for the group would hold those messages back for good.
            FlowControl::Tagged(tag) => limits
                .clone()
                .filter(|r| r.group_tag == Some(tag))
                .map(|r| r.limit)
                .min()
                .or_else(|| {
                    limits
                        .map(|r| r.limit)
                        .max()
                        .map(|l| l.max(self.sender_limit))
                }),
        };
        if let Some(l) = new {
            self.sender_limit = l;
        }
    }

    /// Oldest position still in the log: the start of the term before the sender's term.
    /// Its partition is reused only once the publisher enters the third term after it, and
    /// the publisher runs at most half a term ahead of the sender position. Counting from
    /// the publisher's term instead refused data still held to a receiver that cannot tell
    /// it fell behind (it sees no frame beyond the sender position), and under the min
    /// strategy such a receiver holds the sender's limit: the whole group stalled.
    fn oldest_available(&self) -> i64 {
        (self.log.term_start(self.sender_position) - self.cfg.term_length as i64).max(0)
    }

    /// Whether a valid frame of ours starts at `position`.
    fn is_frame_start(&self, position: i64) -> bool {
        // Frames start on the alignment: an unaligned position (a peer's NAK may say
        // anything) is none, and near the log's end its header would not even fit.
        if position % FRAME_ALIGNMENT as i64 != 0 {
            return false;
        }
        let idx = self.log.index(position);
        let h = DataHeader::read_unchecked(&self.log.buf[idx..idx + DATA_HEADER_LENGTH]);
        h.frame_length >= DATA_HEADER_LENGTH as i32
            && h.term_id == self.log.term_id(position)
            && h.term_offset as usize == self.log.term_offset(position)
            && h.session_id == self.session_id
    }

    fn on_nak(&mut self, now_ns: u64, nak: &Nak) {
        if nak.session_id != self.session_id || nak.stream_id != self.stream_id {
            self.counters.incr(CounterId::DropsUnknownSession);
            return;
        }
        self.counters.incr(CounterId::NaksReceived);
        let start = self.log.position(nak.term_id, nak.term_offset);
        let end = (start + nak.length as i64).min(self.sender_position);
        if nak.length == 0
            || start < self.oldest_available()
            || start >= end
            || !self.is_frame_start(start)
        {
            self.counters.incr(CounterId::NaksUnavailable);
            return;
        }
        let overlaps = self
            .retransmits
            .iter()
            .any(|r| start < r.end && r.start < end);
        if overlaps || self.retransmits.len() >= RETRANSMITS_MAX {
            self.counters.incr(CounterId::NaksCoalesced);
            return;
        }
        let _ = now_ns;
        self.retransmits.push(Retransmit {
            start,
            end,
            cursor: start,
            state: RetransmitState::Pending,
        });
    }

    /// Finds the whole frames from `from` (ending at or below `limit`, starting below
    /// `stop_at`, within one term, at most `mtu` bytes on the wire): they are the datagram
    /// `log.buf[log.index(from)..][..length]`. Returns (length, position after them, data
    /// frames).
    fn frames_span(&self, from: i64, limit: i64, stop_at: i64) -> (usize, i64, u64) {
        let term_end = self.log.term_start(from) + self.cfg.term_length as i64;
        let f = self.run_frame as i64;
        if f > 0 && from >= self.run_start && (from - self.run_start) % f == 0 {
            // Inside the run of equal frames: whole frames ending by the limit (and the term
            // end, and the publisher position where the run ends), starting before `stop_at`,
            // at most an MTU of them.
            let end = limit.min(term_end).min(self.publisher_position);
            let by_end = ((end - from).max(0) / f) as usize;
            let start_before = (end.min(stop_at) - from).max(0);
            let by_start = ((start_before + f - 1) / f) as usize;
            let n = by_end.min(by_start).min(self.cfg.mtu / self.run_frame);
            return (
                n * self.run_frame,
                from + (n * self.run_frame) as i64,
                n as u64,
            );
        }
        self.frames_span_walk(from, limit, stop_at)
    }

    /// [`Sender::frames_span`] by walking the frame headers.
    fn frames_span_walk(&self, from: i64, limit: i64, stop_at: i64) -> (usize, i64, u64) {
        let start = self.log.index(from);
        let term_end = self.log.term_start(from) + self.cfg.term_length as i64;
        // Frames of one term are contiguous in the log: the span is sent as it lies there.
        // Offsets below are relative to `from`; frames must end by `end` and start before
        // `start_before`, and the bytes on the wire may not exceed the MTU.
        let end = (limit.min(term_end) - from).max(0) as usize;
        let start_before = (limit.min(term_end).min(stop_at) - from).max(0) as usize;
        let mtu = self.cfg.mtu;
        let log = &self.log.buf[start..];
        // The walk below is a chain of dependent loads (each frame's length gives the next
        // header's place); when the publisher wrote these bytes long ago (it may run a
        // publication window ahead) each would miss the cache in turn. Touching every cache
        // line of the datagram first, with independent loads, overlaps those misses; the
        // kernel's copy then finds the bytes in cache too.
        touch_lines(&log[..end.min(mtu).min(log.len())]);
        let (mut span, mut length, mut count) = (0usize, 0usize, 0u64);
        while span < start_before {
            let Some(h) = log.get(span..).and_then(|b| b.first_chunk::<8>()) else {
                break;
            };
            let frame_length = i32::from_le_bytes([h[0], h[1], h[2], h[3]]);
            if frame_length < DATA_HEADER_LENGTH as i32 {
                break; // defensive: never reached for frames we wrote
            }
            let advance = align_frame(frame_length as usize);
            let is_pad = u16::from_le_bytes([h[6], h[7]]) == frame_type::PAD;
            let wire = if is_pad { DATA_HEADER_LENGTH } else { advance };
            // A pad travels as its header: only that must fit below the limit (as in Aeron).
            // Counting all of it stalled the stream for good when the pad was longer than
            // the receivers' window.
            if span + wire > end || length + wire > mtu {
                break;
            }
            length += wire;
            span += advance;
            if is_pad {
                break;
            }
            count += 1;
        }
        (length, from + span as i64, count)
    }

    /// Writes the next datagram to send into `buf` (at least `mtu` bytes), if any.
    ///
    /// # Panics
    /// If `buf` is shorter than the MTU (a caller bug).
    pub fn poll_transmit(&mut self, now_ns: u64, buf: &mut [u8]) -> Option<Transmit> {
        let (t, at) = self.poll_transmit_in_place(now_ns, buf)?;
        if let Some(at) = at {
            buf[..t.length].copy_from_slice(&self.log.buf[at..at + t.length]);
        }
        Some(t)
    }

    /// The term log's bytes, where [`Sender::poll_transmit_in_place`] points data datagrams.
    pub(crate) fn log_bytes(&self) -> &[u8] {
        &self.log.buf
    }

    /// As [`Sender::poll_transmit`], but a data datagram (first transmission or retransmit)
    /// is not copied: it is returned as `Some(index)`, meaning `log_bytes()[index..][..length]`,
    /// bytes that stay unchanged until the publisher moves two terms on (at least until
    /// `sender_position` advances by `term_length / 2`). Other datagrams are written to `buf`
    /// (`None`).
    pub(crate) fn poll_transmit_in_place(
        &mut self,
        now_ns: u64,
        buf: &mut [u8],
    ) -> Option<(Transmit, Option<usize>)> {
        assert!(buf.len() >= self.cfg.mtu);
        if self.state == State::Closed {
            return None;
        }
        if let Some((destination, rttm)) = self.rttm_reply.take() {
            buf[..frame::RTTM_LENGTH].copy_from_slice(&rttm.encode());
            return self
                .sent(now_ns, Some(destination), frame::RTTM_LENGTH, false)
                .map(|t| (t, None));
        }
        let setup_wanted = self.setup_due || (!self.is_connected() && now_ns >= self.setup_next_ns);
        if setup_wanted && self.state == State::Active {
            self.setup_due = false;
            self.setup_next_ns = now_ns + self.cfg.setup_interval_ns;
            let setup = Setup {
                flags: 0,
                term_offset: self.log.term_offset(self.sender_position) as i32,
                session_id: self.session_id,
                stream_id: self.stream_id,
                initial_term_id: self.log.initial_term_id,
                active_term_id: self.log.term_id(self.sender_position),
                term_length: self.cfg.term_length as i32,
                mtu: self.cfg.mtu as i32,
                ttl: if self.cfg.multicast {
                    self.cfg.ttl as i32
                } else {
                    0
                },
            };
            buf[..frame::SETUP_LENGTH].copy_from_slice(&setup.encode());
            self.counters.incr(CounterId::SetupsSent);
            return self
                .sent(now_ns, None, frame::SETUP_LENGTH, false)
                .map(|t| (t, None));
        }
        if let Some(i) = self
            .retransmits
            .iter()
            .position(|r| matches!(r.state, RetransmitState::Pending))
        {
            let r = self.retransmits[i];
            let at = self.log.index(r.cursor);
            let (length, next, _) = self.frames_span(r.cursor, self.sender_position, r.end);
            let r = &mut self.retransmits[i];
            if length == 0 || next >= r.end {
                r.state = RetransmitState::Lingering {
                    until_ns: now_ns + self.cfg.retransmit_linger_ns,
                };
            } else {
                r.cursor = next;
            }
            if length > 0 {
                self.counters.incr(CounterId::Retransmits);
                return self
                    .sent(now_ns, None, length, false)
                    .map(|t| (t, Some(at)));
            }
        }
        let limit = self.publisher_position.min(self.sender_limit);
        if self.sender_position < limit {
            let at = self.log.index(self.sender_position);
            let (length, next, frames) = self.frames_span(self.sender_position, limit, i64::MAX);
            if length > 0 {
                self.sender_position = next;
                self.counters.add(CounterId::DataFramesSent, frames);
                return self.sent(now_ns, None, length, true).map(|t| (t, Some(at)));
            }
        }
        let closing = matches!(self.state, State::Closing { .. })
            && self.sender_position == self.publisher_position;
        let heartbeat_due =
            now_ns.saturating_sub(self.last_send_ns) >= self.cfg.heartbeat_interval_ns;
        if (self.is_connected() && heartbeat_due) || (closing && (!self.eos_sent || heartbeat_due))
        {
            let fl = flags::UNFRAGMENTED | if closing { flags::EOS } else { 0 };
            DataHeader {
                frame_length: 0,
                flags: fl,
                frame_type: frame_type::DATA,
                term_offset: self.log.term_offset(self.sender_position) as i32,
                session_id: self.session_id,
                stream_id: self.stream_id,
                term_id: self.log.term_id(self.sender_position),
                reserved_value: 0,
            }
            .write(buf);
            self.eos_sent |= closing;
            self.counters.incr(CounterId::HeartbeatsSent);
            return self
                .sent(now_ns, None, DATA_HEADER_LENGTH, true)
                .map(|t| (t, None));
        }
        None
    }

    fn sent(
        &mut self,
        now_ns: u64,
        destination: Option<SocketAddr>,
        length: usize,
        resets_heartbeat: bool,
    ) -> Option<Transmit> {
        if resets_heartbeat {
            self.last_send_ns = now_ns;
        }
        self.counters.incr(CounterId::DatagramsSent);
        self.counters.add(CounterId::BytesSent, length as u64);
        Some(Transmit {
            destination,
            length,
        })
    }

    /// Expires receivers, lingering retransmits and the close linger.
    pub fn handle_timeout(&mut self, now_ns: u64) {
        let timeout = self.cfg.receiver_timeout_ns;
        let before = self.receivers.len();
        self.receivers
            .retain(|r| now_ns.saturating_sub(r.last_seen_ns) <= timeout);
        if self.receivers.len() != before {
            self.recompute_limit();
        }
        self.retransmits.retain(|r| match r.state {
            RetransmitState::Lingering { until_ns } => now_ns < until_ns,
            RetransmitState::Pending => true,
        });
        if let State::Closing { deadline_ns } = self.state {
            // Receivers acknowledge the end of the stream by leaving: a status message with
            // the EOS flag once their image has delivered everything up to it. Positions do
            // not show it: closing once they reached the end left a receiver whose
            // end-of-stream heartbeat was lost to end its image by timeout, as if the
            // publisher had died. Receivers that do not say so keep the close to its linger.
            let acked = self.eos_sent && self.receivers.is_empty();
            if acked || now_ns >= deadline_ns {
                self.state = State::Closed;
            }
        }
    }

    /// The next time `handle_timeout`/`poll_transmit` have something to do, if any.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.state == State::Closed {
            return None;
        }
        let closing = matches!(self.state, State::Closing { .. });
        // Heartbeats go out only when connected or closing; otherwise SETUP is what is due.
        let mut t = if self.is_connected() || closing {
            self.last_send_ns + self.cfg.heartbeat_interval_ns
        } else {
            self.setup_next_ns
        };
        for r in &self.receivers {
            t = t.min(r.last_seen_ns + self.cfg.receiver_timeout_ns + 1);
        }
        for r in &self.retransmits {
            if let RetransmitState::Lingering { until_ns } = r.state {
                t = t.min(until_ns);
            }
        }
        if let State::Closing { deadline_ns } = self.state {
            t = t.min(deadline_ns);
        }
        Some(t)
    }
}

/// `dst.copy_from_slice(src)` for equal lengths, with messages of up to 128 bytes (the
/// common case) copied as two overlapping fixed-size moves instead of a `memcpy` call.
#[inline(always)]
fn copy_small(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    if (16..=32).contains(&n) {
        dst[..16].copy_from_slice(&src[..16]);
        dst[n - 16..n].copy_from_slice(&src[n - 16..]);
    } else if (32..=64).contains(&n) {
        dst[..32].copy_from_slice(&src[..32]);
        dst[n - 32..n].copy_from_slice(&src[n - 32..]);
    } else if (64..=128).contains(&n) {
        dst[..64].copy_from_slice(&src[..64]);
        dst[n - 64..n].copy_from_slice(&src[n - 64..]);
    } else {
        dst.copy_from_slice(src);
    }
}

/// A frame reserved by [`Sender::try_claim`]: write the payload with [`Claim::buffer_mut`],
/// then [`Claim::commit`]. Dropping it uncommitted abandons the frame (nothing is sent).
#[derive(Debug)]
pub struct Claim<'a> {
    sender: &'a mut Sender,
    position: i64,
    length: usize,
}

impl Claim<'_> {
    /// The payload bytes to fill.
    pub fn buffer_mut(&mut self) -> &mut [u8] {
        let idx = self.sender.log.index(self.position) + DATA_HEADER_LENGTH;
        &mut self.sender.log.buf[idx..idx + self.length]
    }

    /// Publishes the frame and returns the new publication position.
    pub fn commit(self) -> i64 {
        self.sender.publisher_position =
            self.position + align_frame(DATA_HEADER_LENGTH + self.length) as i64;
        self.sender.publisher_position
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender (session 7, stream 1) with one receiver whose window never closes.
    fn unlimited(cfg: Config, initial_term_id: i32) -> Sender {
        let mut s = Sender::new(cfg, 7, 1, initial_term_id, 0).unwrap();
        s.receivers.push(ReceiverEntry {
            receiver_id: 1,
            limit: i64::MAX,
            position: 0,
            last_seen_ns: 0,
            group_tag: None,
        });
        s
    }
    #[test]
    fn datagram_spans_found_by_arithmetic_match_the_header_walk() {
        let cfg = Config {
            mtu: 1408,
            ..Config::with_term_length(crate::config::TERM_LENGTH_MIN)
        };
        let mut s = unlimited(cfg, 100);
        // Runs of equal messages, changes of length, fragments, claims and padding at the
        // term ends; the sender position follows so the publication window never closes.
        let mut checked = 0;
        for i in 0..6000usize {
            let length = match i % 500 {
                0..=199 => 64,
                200..=209 => 3000,
                210..=349 => 100 + i % 3,
                350 => 0,
                _ => 64,
            };
            if i % 97 == 0 {
                let mut c = s.try_claim(40).unwrap();
                c.buffer_mut().fill(1);
                c.commit();
            } else {
                s.offer(&vec![i as u8; length]).unwrap();
            }
            let p = s.publisher_position;
            let oldest = s.oldest_available();
            for back in [0i64, 96, 1408, 4992, 5000] {
                let from = (s.sender_position - back).max(oldest);
                if !s.is_frame_start(from) {
                    continue;
                }
                for (limit, stop_at) in [(p, i64::MAX), (p - 200, i64::MAX), (p, from + 500)] {
                    assert_eq!(
                        s.frames_span(from, limit, stop_at),
                        s.frames_span_walk(from, limit, stop_at),
                        "from {from} limit {limit} stop_at {stop_at} run {} {}",
                        s.run_start,
                        s.run_frame
                    );
                    checked += 1;
                }
            }
            // Send the way the driver does, datagram by datagram.
            while s.sender_position < p {
                let (_, next, _) = s.frames_span(s.sender_position, p, i64::MAX);
                if next == s.sender_position {
                    break;
                }
                s.sender_position = next;
            }
        }
        assert!(checked > 10_000, "{checked}");
    }

    #[test]
    fn a_nak_for_an_unaligned_offset_at_the_end_of_the_log_is_refused_not_a_panic() {
        let t = crate::config::TERM_LENGTH_MIN;
        let mut s = Sender::new(Config::with_term_length(t), 7, 1, 100, 0).unwrap();
        // The publisher in the fourth term: the third term (the log's last partition) is
        // still available for retransmits.
        s.publisher_position = 3 * t as i64 + 64;
        s.sender_position = s.publisher_position;
        let nak = Nak {
            session_id: 7,
            stream_id: 1,
            term_id: 102,
            term_offset: t as i32 - 8,
            length: 96,
        };
        s.on_nak(0, &nak);
        assert_eq!(s.counters().get(CounterId::NaksUnavailable), 1);
        assert!(s.retransmits.is_empty());
    }

    #[test]
    fn a_stream_at_its_last_term_refuses_offers_that_would_wrap_its_term_id_and_closes() {
        // Term ids are i32: after 2^31 terms a position's term id would wrap back to the
        // initial one's past, and receivers would take everything beyond as old (negative
        // positions), a stall with no error. As Aeron (MAX_POSITION_EXCEEDED), the stream
        // ends there: the offer is refused and the publication closes.
        let t = crate::config::TERM_LENGTH_MIN;
        let mut s = unlimited(Config::with_term_length(t), i32::MAX - 9);
        let max = (1i64 << 31) * t as i64;
        s.publisher_position = max - 4 * 96;
        s.sender_position = s.publisher_position;
        s.sender_limit = i64::MAX;
        let mut offered = 0;
        let refusal = loop {
            match s.offer(&[1u8; 64]) {
                Ok(p) => {
                    assert!(p < max, "position {p} reaches 2^31 terms");
                    offered += 1;
                }
                Err(e) => break e,
            }
            assert!(offered < 10, "never refused");
        };
        assert_eq!(refusal, OfferError::Closed);
        assert!(s.is_closing());
        assert!(s.publisher_position < max);
        assert!(s.log.position(s.log.term_id(s.publisher_position), 0) >= 0);
        assert!(matches!(s.try_claim(8), Err(OfferError::Closed)));
    }

    #[test]
    fn small_copies_copy_every_byte_at_every_length() {
        for n in 0..300usize {
            let src: Vec<u8> = (0..n).map(|i| (i * 7 + 1) as u8).collect();
            let mut dst = vec![0u8; n];
            copy_small(&mut dst, &src);
            assert_eq!(dst, src, "length {n}");
        }
    }
}
