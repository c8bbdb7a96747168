//! The sans-IO receiver of one subscription (channel + stream): images (one per publishing
//! session), gap detection and NAKs, status messages, reassembly and ordered delivery.
//!
//! Owns: each image's log (three terms), its positions (`subscriber <= rebuild <= hwm`), its
//! loss detector and its timers. Does not own sockets or a clock. Input:
//! [`Receiver::handle_datagram`], [`Receiver::handle_timeout`], and for the driver, datagrams
//! it received straight into a log region past the rebuild position
//! (`Receiver::direct_target`, then `accept_direct` or `take_direct` for each); output:
//! [`Receiver::poll_transmit`] (status messages, NAKs, setup requests, RTT requests, and ERR
//! frames telling a publication why its SETUP was refused),
//! [`Receiver::poll`] (messages, in order per session) and [`Receiver::poll_event`]
//! (images appearing and ending).
//!
//! Invariants: a frame is stored only from its image's source, at or after the rebuild
//! position, inside its term and below `cleaned_until` (lazily zeroed); `rebuild` only moves over
//! contiguous frames; messages are delivered once each, in position order per image. An image
//! whose sender has moved two terms past its rebuild position has lost data the sender no
//! longer holds: it ends with [`ImageEnd::FellBehind`] after delivering everything before the
//! gap. A refused SETUP is answered with at most one ERR frame per publication per
//! `setup_interval_ns`, and at most [`REFUSAL_REPLIES_PER_INTERVAL_MAX`] in all per interval.

use std::collections::VecDeque;
use std::net::SocketAddr;

use crate::config::{
    Config, ConfigError, IMAGES_MAX, MTU_MAX, MTU_MIN, RECEIVER_TRANSMIT_LENGTH_MIN,
    REFUSALS_TRACKED_MAX, REFUSAL_INTERVAL_MIN_NS, REFUSAL_REPLIES_PER_INTERVAL_MAX,
    REFUSAL_TEXT_LENGTH_MAX, TERM_LENGTH_MAX, TERM_LENGTH_MIN,
};
use crate::counters::{CounterId, Counters};
use crate::frame::{
    self, align_frame, flags, frame_type, read_i32, DataHeader, ErrorFrame, Frame, Frames, Nak,
    RefusalReason, Rttm, Setup, StatusMessage, DATA_HEADER_LENGTH, ERR_HEADER_LENGTH,
    ERR_MESSAGE_LENGTH_MAX, FRAME_ALIGNMENT, SM_WITH_GROUP_TAG_LENGTH,
};
use crate::log::{touch_lines, TermLog};
use crate::rng::Rng;
use crate::sender::Transmit;

/// Why an image ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageEnd {
    /// The publication closed cleanly and everything was delivered.
    EndOfStream,
    /// Nothing was heard from the sender for `image_liveness_timeout_ns`.
    Timeout,
    /// The sender moved beyond its retransmit window while this image had a gap: data from
    /// `position` (the event's) is lost here; the sender was at `sender_position`. Catch up
    /// from elsewhere (the journal); the session rejoins at the live position by itself.
    FellBehind {
        /// A position the sender had reached.
        sender_position: i64,
    },
}

/// Something that happened to an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageEvent {
    /// A new publishing session joined at `position`.
    Available {
        /// The session.
        session_id: i32,
        /// The sender's address.
        source: SocketAddr,
        /// Join position: data from here on is delivered. A message whose first fragments
        /// were sent before it is skipped (its other fragments are not delivered), so the
        /// first message delivered starts here or, after such a message, further on; a
        /// consumer that must not miss a message checks its own sequence in what arrives.
        position: i64,
    },
    /// An image ended after delivering everything up to `position`.
    Unavailable {
        /// The session.
        session_id: i32,
        /// Everything before this position was delivered.
        position: i64,
        /// Why.
        reason: ImageEnd,
    },
}

/// Where a delivered message sits in its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader {
    /// The publishing session.
    pub session_id: i32,
    /// The stream.
    pub stream_id: i32,
    /// Position just after the message.
    pub position: i64,
    /// Reserved value of the message's last frame.
    pub reserved_value: i64,
}

#[derive(Debug)]
struct Image {
    session_id: i32,
    source: SocketAddr,
    log: TermLog,
    receiver_window: i32,
    subscriber: i64,
    rebuild: i64,
    hwm: i64,
    /// Frames may be stored below this position: the log's partitions there hold no
    /// undelivered data (three terms from the subscriber's term start).
    cleaned_until: i64,
    /// Log bytes of positions in `[rebuild, zeroed_to)` are zero or belong to frames stored
    /// for those positions; beyond it they may be left from an earlier lap. Terms are cleaned
    /// lazily, only where a frame lands beyond the rebuild position or the high-water mark
    /// moves (`Image::ensure_zeroed`): in-order data overwrites old bytes with no cleaning at
    /// all. Invariant: `rebuild <= zeroed_to` and `min(hwm, cleaned_until) <= zeroed_to`.
    zeroed_to: i64,
    sm_due: bool,
    sm_next_ns: u64,
    sm_position: i64,
    gap: Option<(i64, i32)>,
    /// Whether the gap must be rescanned (a frame landed inside it or rebuild moved).
    gap_stale: bool,
    nak_next_ns: u64,
    rttm_due: bool,
    rtt_ns: Option<u64>,
    last_packet_ns: u64,
    eos_position: Option<i64>,
    end: Option<ImageEnd>,
    reassembly: Vec<u8>,
    reassembling: bool,
    /// Position of the first fragment of the message in `reassembly` (while `reassembling`):
    /// an image ending before that message is whole has delivered everything before it.
    reassembly_start: i64,
    /// A DATA frame ending a message (END flag) was delivered since the image joined: from
    /// then on a fragment with no message begun is a lie, not the tail of one begun before
    /// the join.
    synced: bool,
    /// Fragments dropped since the last `poll` counted them: a message over the size limit,
    /// or fragments out of sequence (see `Image::deliver`).
    fragments_dropped: u64,
}

/// An image that ended, and where: a SETUP of its stream joining below that position (an old
/// one, replayed or delayed) would deliver those messages a second time. After an end of
/// stream, one joining at that very position from the same source is old too (a closed
/// publication sends no SETUP: it was sent once everything was, before the close) and would
/// open an image of a stream that is over; after a timeout, that is the silent sender back.
/// A SETUP with another initial term id, or one arriving after the liveness timeout (longer
/// than any datagram lingers in a network), is from a publication opened again with the same
/// session id: a new stream, starting at its own position 0.
#[derive(Debug, Clone, Copy)]
struct Ended {
    session_id: i32,
    initial_term_id: i32,
    position: i64,
    at_ns: u64,
    source: SocketAddr,
    end: ImageEnd,
}

#[derive(Debug, Clone, Copy)]
struct SetupRequest {
    session_id: i32,
    source: SocketAddr,
    pending: bool,
    next_ns: u64,
}

/// A publication whose SETUP was refused, and when it may be told why again (see
/// `Receiver::refuse`).
#[derive(Debug, Clone, Copy)]
struct Refused {
    session_id: i32,
    source: SocketAddr,
    reason: RefusalReason,
    /// The term length its SETUP announced, for the reason text.
    term_length: usize,
    /// An ERR frame is due.
    pending: bool,
    /// No ERR frame for this publication before this time.
    next_ns: u64,
    /// Its latest refused SETUP.
    seen_ns: u64,
}

/// The receiver state machine of one subscription.
#[derive(Debug)]
pub struct Receiver {
    cfg: Config,
    stream_id: i32,
    receiver_id: i64,
    rng: Rng,
    images: Vec<Image>,
    setup_requests: Vec<SetupRequest>,
    events: VecDeque<ImageEvent>,
    counters: Counters,
    next_image: usize,
    closing: bool,
    eos_to_send: Vec<(SocketAddr, i32, i32, i32)>,
    /// See [`Receiver::last_in_order`].
    last_in_order: Option<(i32, usize)>,
    /// Images that ended lately (see [`Ended`]).
    ended: Vec<Ended>,
    /// Publications refused lately, oldest first (at most [`REFUSALS_TRACKED_MAX`]).
    refused: Vec<Refused>,
    /// Start of the current interval of ERR replies, and how many went out in it.
    refusal_window_ns: u64,
    refusal_replies: u32,
    /// The time of the last `handle_timeout`, for `reap` when called from `poll`.
    now_ns: u64,
}

impl Receiver {
    /// A receiver for `stream_id`; `seed` drives its receiver id and NAK delays.
    ///
    /// # Errors
    /// The config is invalid.
    pub fn new(cfg: Config, stream_id: i32, seed: u64) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let mut rng = Rng::new(seed);
        let receiver_id = rng.next_u64() as i64;
        Ok(Receiver {
            cfg,
            stream_id,
            receiver_id,
            rng,
            images: Vec::with_capacity(IMAGES_MAX),
            setup_requests: Vec::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
            next_image: 0,
            closing: false,
            eos_to_send: Vec::new(),
            last_in_order: None,
            ended: Vec::new(),
            refused: Vec::with_capacity(REFUSALS_TRACKED_MAX),
            refusal_window_ns: 0,
            refusal_replies: 0,
            now_ns: 0,
        })
    }

    /// The stream id.
    pub fn stream_id(&self) -> i32 {
        self.stream_id
    }
    /// This receiver's id (sent in status messages).
    pub fn receiver_id(&self) -> i64 {
        self.receiver_id
    }
    /// Counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
    /// Counters, for the driver to add socket-level figures.
    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }
    /// Number of live images.
    pub fn image_count(&self) -> usize {
        self.images.len()
    }
    /// Session ids of live images.
    pub fn sessions(&self) -> impl Iterator<Item = i32> + '_ {
        self.images.iter().map(|i| i.session_id)
    }
    /// `(subscriber, rebuild, hwm)` positions of a session's image.
    pub fn image_positions(&self, session_id: i32) -> Option<(i64, i64, i64)> {
        self.image(session_id)
            .map(|i| (i.subscriber, i.rebuild, i.hwm))
    }
    /// Last measured round-trip time to a session's sender, in nanoseconds.
    pub fn image_rtt_ns(&self, session_id: i32) -> Option<u64> {
        self.image(session_id).and_then(|i| i.rtt_ns)
    }
    fn image(&self, session_id: i32) -> Option<&Image> {
        self.images.iter().find(|i| i.session_id == session_id)
    }

    /// Next image event, if any.
    pub fn poll_event(&mut self) -> Option<ImageEvent> {
        self.events.pop_front()
    }

    /// Stops receiving: every image's sender is told (status message with the EOS flag) so it
    /// drops this receiver from flow control at once.
    pub fn close(&mut self) {
        if !self.closing {
            self.closing = true;
            for i in &self.images {
                let term_id = i.log.term_id(i.subscriber);
                let offset = i.log.term_offset(i.subscriber) as i32;
                self.eos_to_send
                    .push((i.source, i.session_id, term_id, offset));
            }
        }
    }

    /// Queues a status message with the EOS flag for a session's sender (once): this receiver
    /// leaves its flow control.
    fn leave(&mut self, source: SocketAddr, session_id: i32, term_id: i32, term_offset: i32) {
        if !self.closing && !self.eos_to_send.iter().any(|e| e.1 == session_id) {
            self.eos_to_send
                .push((source, session_id, term_id, term_offset));
        }
    }

    /// Feeds one datagram from `source`.
    pub fn handle_datagram(&mut self, now_ns: u64, source: SocketAddr, datagram: &[u8]) {
        self.last_in_order = None;
        self.counters.incr(CounterId::DatagramsReceived);
        self.counters
            .add(CounterId::BytesReceived, datagram.len() as u64);
        if self.closing || self.try_append_in_order(now_ns, source, datagram) {
            return;
        }
        let mut touched: u64 = 0;
        for f in Frames::new(datagram) {
            match f {
                Err(_) => self.counters.incr(CounterId::DropsMalformed),
                Ok(Frame::Data { header, frame }) => {
                    if let Some(i) = self.on_data(now_ns, source, &header, frame) {
                        touched |= 1 << i;
                    }
                }
                Ok(Frame::Pad(header)) => {
                    let mut bytes = [0u8; DATA_HEADER_LENGTH];
                    header.write(&mut bytes);
                    if let Some(i) = self.on_data(now_ns, source, &header, &bytes) {
                        touched |= 1 << i;
                    }
                }
                Ok(Frame::Setup(s)) => self.on_setup(now_ns, source, &s),
                Ok(Frame::Rttm(r)) if r.flags & flags::RTTM_REPLY != 0 => {
                    match self
                        .images
                        .iter_mut()
                        .find(|i| i.session_id == r.session_id && r.receiver_id == self.receiver_id)
                    {
                        Some(img) => {
                            let sent = r.echo_timestamp as u64;
                            img.rtt_ns = Some(
                                now_ns
                                    .saturating_sub(sent)
                                    .saturating_sub(r.reception_delta.max(0) as u64),
                            );
                        }
                        None => self.counters.incr(CounterId::DropsUnknownSession),
                    }
                }
                Ok(_) => self.counters.incr(CounterId::DropsUnexpectedType),
            }
        }
        for i in 0..self.images.len() {
            if touched & (1 << i) != 0 {
                self.update_gap(i, now_ns);
            }
        }
    }

    /// Fast path for the common case: a datagram of whole DATA frames that continues its
    /// image exactly at the rebuild position with no gap pending. Every header is validated as
    /// in the general path; the frames are then stored with one copy. Returns false (and
    /// changes nothing) when the datagram needs the general path.
    fn try_append_in_order(&mut self, now_ns: u64, source: SocketAddr, datagram: &[u8]) -> bool {
        self.last_in_order = None;
        let Some(first) = in_order_header(self.stream_id, datagram) else {
            return false;
        };
        let Some(k) = self
            .images
            .iter()
            .position(|i| i.session_id == first.session_id)
        else {
            return false;
        };
        let img = &mut self.images[k];
        let Some(frames) = img.in_order_frames(source, &first, datagram, true) else {
            return false;
        };
        let length = datagram.len();
        let index = img.log.index(img.rebuild);
        img.log.buf[index..index + length].copy_from_slice(datagram);
        img.append_in_order(now_ns, length);
        self.counters.add(CounterId::DataFramesReceived, frames);
        self.last_in_order = Some((first.session_id, length));
        true
    }

    /// The session and length of the last datagram fed, if it took the in-order fast path
    /// (the driver uses it to choose where to receive the next datagrams).
    pub(crate) fn last_in_order(&self) -> Option<(i32, usize)> {
        self.last_in_order
    }

    /// Where datagrams of `stride` bytes continuing `session_id` in order would go: a region
    /// of the image's log starting at its rebuild position (see [`Receiver::direct_region`]),
    /// or `None` when the image cannot take datagrams in place (out-of-order frames are
    /// stored beyond the rebuild position, it ended, the receiver is closing, or less than
    /// `stride` bytes are free before the term end).
    pub(crate) fn direct_target(&self, session_id: i32, stride: usize) -> Option<DirectTarget> {
        if self.closing || stride < DATA_HEADER_LENGTH {
            return None;
        }
        let image = self
            .images
            .iter()
            .position(|i| i.session_id == session_id)?;
        let img = &self.images[image];
        if img.end.is_some() || img.hwm != img.rebuild {
            return None;
        }
        let term_end = img.log.term_start(img.rebuild) + img.log.term_length as i64;
        let length = (term_end.min(img.cleaned_until) - img.rebuild).max(0) as usize;
        if length < stride {
            return None;
        }
        Some(DirectTarget {
            image,
            start: img.rebuild,
            length,
        })
    }

    /// The log bytes of a target from [`Receiver::direct_target`] (no other call in between),
    /// for the driver to receive datagrams into. Whatever lands there must then be passed,
    /// in order, to [`Receiver::accept_direct`] or [`Receiver::take_direct`].
    pub(crate) fn direct_region(&mut self, t: &DirectTarget) -> &mut [u8] {
        let img = &mut self.images[t.image];
        // The kernel may write into the region more than it reports: a datagram failing its
        // UDP checksum is copied in before the check, then dropped, and the next datagram (if
        // any, and maybe shorter) written over its start. From here on only what
        // `accept_direct` and `take_direct` account for is known to be frames or zero; the
        // rest is cleaned, like an earlier lap's bytes, before a frame is stored there.
        img.zeroed_to = img.zeroed_to.min(t.start);
        let log = &mut img.log;
        let at = log.index(t.start);
        &mut log.buf[at..at + t.length]
    }

    /// Takes the `length`-byte datagram from `source` that was received at `offset` of the
    /// target's region, in place, if it continues the image exactly at its rebuild position
    /// and passes every check of the in-order fast path. Returns false (changing nothing)
    /// otherwise: the caller must then [`Receiver::take_direct`] it.
    pub(crate) fn accept_direct(
        &mut self,
        t: &DirectTarget,
        now_ns: u64,
        source: SocketAddr,
        offset: usize,
        length: usize,
    ) -> bool {
        let stream_id = self.stream_id;
        let img = &mut self.images[t.image];
        if t.start + offset as i64 != img.rebuild || offset + length > t.length {
            return false;
        }
        let at = img.log.index(t.start) + offset;
        let datagram = &img.log.buf[at..at + length];
        let Some(first) = in_order_header(stream_id, datagram) else {
            return false;
        };
        if first.session_id != img.session_id {
            return false;
        }
        let Some(frames) = img.in_order_frames(source, &first, datagram, false) else {
            return false;
        };
        img.append_in_order(now_ns, length);
        self.counters.incr(CounterId::DatagramsReceived);
        self.counters.add(CounterId::BytesReceived, length as u64);
        self.counters.add(CounterId::DataFramesReceived, frames);
        self.last_in_order = Some((img.session_id, length));
        true
    }

    /// Copies `out.len()` bytes received at `offset` of the target's region into `out` and
    /// zeroes them in the log (they were not taken in place: what lies beyond the rebuild
    /// position must read as "not received" again). Call it for every datagram not accepted,
    /// before feeding any of them to [`Receiver::handle_datagram`].
    pub(crate) fn take_direct(&mut self, t: &DirectTarget, offset: usize, out: &mut [u8]) {
        let img = &mut self.images[t.image];
        debug_assert!(t.start + offset as i64 >= img.rebuild);
        let at = img.log.index(t.start) + offset;
        let bytes = &mut img.log.buf[at..at + out.len()];
        out.copy_from_slice(bytes);
        bytes.fill(0);
        let end = t.start + (offset + out.len()) as i64;
        if img.zeroed_to >= t.start + offset as i64 {
            img.zeroed_to = img.zeroed_to.max(end);
        }
    }

    fn request_setup(&mut self, now_ns: u64, session_id: i32, source: SocketAddr) {
        match self
            .setup_requests
            .iter_mut()
            .find(|r| r.session_id == session_id)
        {
            Some(r) => {
                if now_ns >= r.next_ns {
                    r.pending = true;
                    r.source = source;
                }
            }
            None => {
                if self.setup_requests.len() >= IMAGES_MAX {
                    self.setup_requests.remove(0);
                }
                self.setup_requests.push(SetupRequest {
                    session_id,
                    source,
                    pending: true,
                    next_ns: now_ns,
                });
            }
        }
    }

    /// Stores a DATA/PAD frame (or a heartbeat) and returns the index of its image.
    fn on_data(
        &mut self,
        now_ns: u64,
        source: SocketAddr,
        h: &DataHeader,
        bytes: &[u8],
    ) -> Option<usize> {
        if h.stream_id != self.stream_id {
            self.counters.incr(CounterId::DropsUnknownSession);
            return None;
        }
        let Some(idx) = self
            .images
            .iter()
            .position(|i| i.session_id == h.session_id)
        else {
            self.counters.incr(CounterId::DropsUnknownSession);
            if h.flags & flags::EOS == 0 {
                self.request_setup(now_ns, h.session_id, source);
            } else if self.ended.iter().any(|e| e.session_id == h.session_id) {
                // The sender of a stream that ended here is still closing: our status
                // message saying we left was lost. Say it again, or its close waits out
                // its linger.
                self.leave(source, h.session_id, h.term_id, h.term_offset);
            }
            return None;
        };
        let img = &mut self.images[idx];
        if img.source != source {
            self.counters.incr(CounterId::DropsUnexpectedSource);
            return None;
        }
        if img.end.is_some() {
            self.counters.incr(CounterId::DropsOutOfWindow);
            return None;
        }
        img.last_packet_ns = now_ns;
        let term_length = img.log.term_length as i64;
        let position = img.log.position(h.term_id, h.term_offset);
        let shift = img.log.shift;
        if position < 0 || (position >> shift) - (img.rebuild >> shift) >= 2 {
            if position >= 0 {
                img.end = Some(ImageEnd::FellBehind {
                    sender_position: position,
                });
                img.gap = None;
                self.counters.incr(CounterId::FellBehind);
            } else {
                self.counters.incr(CounterId::DropsDuplicate);
            }
            return None;
        }
        if h.is_heartbeat() {
            if position > img.hwm && position <= img.rebuild + 2 * term_length {
                img.hwm = position;
                img.ensure_zeroed(position);
                img.gap_stale = true;
            }
            if h.flags & flags::EOS != 0 {
                img.eos_position = Some(position);
            }
            return Some(idx);
        }
        let advance = align_frame(h.frame_length as usize) as i64;
        if h.term_offset as i64 + advance > term_length {
            self.counters.incr(CounterId::DropsMalformed);
            return None;
        }
        if position < img.rebuild {
            self.counters.incr(CounterId::DropsDuplicate);
            return None;
        }
        if position + advance > img.cleaned_until {
            self.counters.incr(CounterId::DropsOutOfWindow);
            return None;
        }
        img.ensure_zeroed(position + advance);
        let at = img.log.index(position);
        if read_i32(&img.log.buf, at) != 0 {
            self.counters.incr(CounterId::DropsDuplicate);
            return None;
        }
        let stored = bytes.len().min(advance as usize);
        img.log.buf[at..at + stored].copy_from_slice(&bytes[..stored]);
        self.counters.incr(CounterId::DataFramesReceived);
        let hwm_before = img.hwm;
        img.hwm = img.hwm.max(position + advance);
        if img.gap.is_none_or(|(start, length)| {
            let end = start + length as i64;
            position < end || end >= hwm_before
        }) {
            img.gap_stale = true;
        }
        if position == img.rebuild {
            img.scan_rebuild();
            img.gap_stale = true;
        }
        Some(idx)
    }

    fn on_setup(&mut self, now_ns: u64, source: SocketAddr, s: &Setup) {
        if s.stream_id != self.stream_id {
            self.counters.incr(CounterId::DropsUnknownSession);
            return;
        }
        if let Some(img) = self
            .images
            .iter_mut()
            .find(|i| i.session_id == s.session_id)
        {
            if img.source == source {
                img.last_packet_ns = now_ns;
                img.sm_due = true;
            } else {
                self.counters.incr(CounterId::DropsUnexpectedSource);
            }
            return;
        }
        let term_length = s.term_length as usize;
        let mtu = s.mtu as usize;
        if !term_length.is_power_of_two()
            || !(TERM_LENGTH_MIN..=TERM_LENGTH_MAX).contains(&term_length)
            || !(MTU_MIN..=MTU_MAX).contains(&mtu)
            || s.term_offset as usize >= term_length
        {
            self.counters.incr(CounterId::DropsMalformed);
            return;
        }
        // Where the image joins, before its log is allocated (a refused SETUP costs nothing).
        let join = TermLog::position_in(
            term_length.trailing_zeros(),
            s.initial_term_id,
            s.active_term_id,
            s.term_offset,
        );
        if join < 0 {
            self.counters.incr(CounterId::DropsMalformed);
            return;
        }
        if term_length > self.cfg.image_term_length_max {
            self.refuse(now_ns, source, s, RefusalReason::TermLengthOverCap);
            return;
        }
        if self.images.len() >= IMAGES_MAX {
            self.refuse(now_ns, source, s, RefusalReason::ImagesFull);
            return;
        }
        let cool_down = self.cfg.image_liveness_timeout_ns;
        if self.ended.iter().any(|e| {
            let over = e.end == ImageEnd::EndOfStream && e.source == source;
            e.session_id == s.session_id
                && e.initial_term_id == s.initial_term_id
                && (join < e.position || (join == e.position && over))
                && now_ns < e.at_ns.saturating_add(cool_down)
        }) {
            self.counters.incr(CounterId::DropsDuplicate);
            return;
        }
        let log = TermLog::new(term_length, s.initial_term_id);
        let cleaned_until = log.term_start(join) + 3 * term_length as i64;
        self.images.push(Image {
            session_id: s.session_id,
            source,
            log,
            receiver_window: self.cfg.receiver_window.min(term_length / 2) as i32,
            subscriber: join,
            rebuild: join,
            hwm: join,
            cleaned_until,
            zeroed_to: cleaned_until,
            sm_due: true,
            sm_next_ns: now_ns,
            sm_position: join,
            gap: None,
            gap_stale: true,
            nak_next_ns: 0,
            rttm_due: true,
            rtt_ns: None,
            last_packet_ns: now_ns,
            eos_position: None,
            end: None,
            reassembly: Vec::new(),
            reassembling: false,
            reassembly_start: join,
            synced: false,
            fragments_dropped: 0,
        });
        self.setup_requests.retain(|r| r.session_id != s.session_id);
        self.refused.retain(|r| r.session_id != s.session_id);
        self.events.push_back(ImageEvent::Available {
            session_id: s.session_id,
            source,
            position: join,
        });
    }

    /// Counts a refused SETUP and queues an ERR frame telling its publication why, unless
    /// that publication was told less than `setup_interval_ns` ago or
    /// [`REFUSAL_REPLIES_PER_INTERVAL_MAX`] were queued in this interval already (a flood of
    /// SETUPs from forged sources gets no more replies than that). With more publications
    /// refused lately than the budget holds, one just told waits that many budgets' worth of
    /// intervals, so that the others, whose SETUPs come later in each interval, get their turn.
    fn refuse(&mut self, now_ns: u64, source: SocketAddr, s: &Setup, reason: RefusalReason) {
        self.counters.incr(CounterId::SetupsRefused);
        let interval = self.cfg.setup_interval_ns.max(REFUSAL_INTERVAL_MIN_NS);
        let k = match self
            .refused
            .iter()
            .position(|r| r.session_id == s.session_id && r.source == source)
        {
            Some(k) => k,
            None => {
                if self.refused.len() >= REFUSALS_TRACKED_MAX {
                    // The oldest whose reply is not waiting to go out (a flood of new
                    // sessions must not evict the replies it was granted).
                    let oldest = self.refused.iter().position(|r| !r.pending).unwrap_or(0);
                    self.refused.remove(oldest);
                }
                self.refused.push(Refused {
                    session_id: s.session_id,
                    source,
                    reason,
                    term_length: 0,
                    pending: false,
                    next_ns: now_ns,
                    seen_ns: now_ns,
                });
                self.refused.len() - 1
            }
        };
        let r = &mut self.refused[k];
        r.reason = reason;
        r.term_length = s.term_length as usize;
        r.seen_ns = now_ns;
        if r.pending || now_ns < r.next_ns {
            return;
        }
        if now_ns >= self.refusal_window_ns.saturating_add(interval) {
            self.refusal_window_ns = now_ns;
            self.refusal_replies = 0;
        }
        if self.refusal_replies >= REFUSAL_REPLIES_PER_INTERVAL_MAX {
            return;
        }
        self.refusal_replies += 1;
        r.pending = true;
        let lately = self
            .refused
            .iter()
            .filter(|r| now_ns.saturating_sub(r.seen_ns) <= interval)
            .count();
        let turns = lately
            .div_ceil(REFUSAL_REPLIES_PER_INTERVAL_MAX as usize)
            .max(1) as u64;
        self.refused[k].next_ns = now_ns.saturating_add(interval.saturating_mul(turns));
    }

    /// Writes the ERR frame telling `r`'s publication why it was refused into `buf`, and
    /// returns its length.
    fn encode_refusal(&self, r: &Refused, buf: &mut [u8]) -> usize {
        use std::io::Write;
        let mut text = [0u8; REFUSAL_TEXT_LENGTH_MAX];
        let mut w = &mut text[..];
        // A text too long for the buffer is cut (never the case for these).
        let _ = match r.reason {
            RefusalReason::TermLengthOverCap => write!(
                w,
                "term length {} over its cap {} (image_term_length_max)",
                Bytes(r.term_length),
                Bytes(self.cfg.image_term_length_max)
            ),
            RefusalReason::ImagesFull => write!(
                w,
                "it holds {IMAGES_MAX} images, its most (IMAGES_MAX): one must end first"
            ),
            RefusalReason::Other(_) => Ok(()),
        };
        let text_length = REFUSAL_TEXT_LENGTH_MAX - w.len();
        let mut frame = [0u8; ERR_HEADER_LENGTH + ERR_MESSAGE_LENGTH_MAX];
        let n = ErrorFrame {
            session_id: r.session_id,
            stream_id: self.stream_id,
            receiver_id: self.receiver_id,
            group_tag: self.cfg.group_tag,
            error_code: r.reason.code(),
            message: &text[..text_length],
        }
        .encode(&mut frame);
        buf[..n].copy_from_slice(&frame[..n]);
        n
    }

    fn nak_delay(&mut self) -> u64 {
        if self.cfg.multicast {
            self.rng.below(self.cfg.nak_delay_multicast_max_ns)
        } else {
            self.cfg.nak_delay_unicast_ns
        }
    }

    /// Loss detector: finds the gap at the rebuild position and (re)arms its NAK timer.
    fn update_gap(&mut self, idx: usize, now_ns: u64) {
        let delay = self.nak_delay();
        let img = &mut self.images[idx];
        if img.end.is_some() || img.rebuild >= img.hwm {
            img.gap = None;
            return;
        }
        if !img.gap_stale && img.gap.is_some_and(|(start, _)| start == img.rebuild) {
            return; // same gap as last scan: keep its NAK timer
        }
        img.gap_stale = false;
        let term_end = img.log.term_start(img.rebuild) + img.log.term_length as i64;
        let limit = img.hwm.min(term_end).min(img.cleaned_until);
        let mut p = img.rebuild;
        while p < limit && read_i32(&img.log.buf, img.log.index(p)) == 0 {
            p += FRAME_ALIGNMENT as i64;
        }
        let length = (p - img.rebuild) as i32;
        if length <= 0 {
            img.gap = None;
            return;
        }
        match img.gap {
            Some((start, _)) if start == img.rebuild => img.gap = Some((start, length)),
            _ => {
                img.gap = Some((img.rebuild, length));
                img.nak_next_ns = now_ns + delay;
            }
        }
    }

    /// Delivers up to `limit` whole messages, in order per session, round-robin across
    /// sessions. Returns the number delivered.
    pub fn poll<F: FnMut(&[u8], &MessageHeader)>(&mut self, mut handler: F, limit: usize) -> usize {
        let mut delivered = 0;
        let n = self.images.len();
        for k in 0..n {
            if delivered >= limit {
                break;
            }
            let i = (self.next_image + k) % n;
            delivered += self.images[i].deliver(self.stream_id, &mut handler, limit - delivered);
            let dropped = std::mem::take(&mut self.images[i].fragments_dropped);
            self.counters.add(CounterId::DropsMalformed, dropped);
        }
        if n > 0 {
            self.next_image = (self.next_image + 1) % n;
        }
        self.reap();
        delivered
    }

    /// Removes ended images once drained, and marks end-of-stream images ended.
    fn reap(&mut self) {
        let mut i = 0;
        while i < self.images.len() {
            let img = &mut self.images[i];
            if img.end.is_none() {
                if let Some(eos) = img.eos_position {
                    if img.rebuild >= eos {
                        img.end = Some(ImageEnd::EndOfStream);
                    }
                }
            }
            match img.end {
                Some(reason) if img.subscriber >= img.rebuild => {
                    let img = self.images.remove(i);
                    // A message torn by the end was not delivered: everything before its
                    // first fragment was (the position a catch-up starts from).
                    let delivered_to = if img.reassembling {
                        img.reassembly_start
                    } else {
                        img.subscriber
                    };
                    if reason == ImageEnd::EndOfStream {
                        // Tells the closing sender everything arrived (see `Sender`'s close).
                        let term_id = img.log.term_id(img.subscriber);
                        let offset = img.log.term_offset(img.subscriber) as i32;
                        self.leave(img.source, img.session_id, term_id, offset);
                    }
                    self.ended.retain(|e| e.session_id != img.session_id);
                    if self.ended.len() >= IMAGES_MAX {
                        self.ended.remove(0);
                    }
                    self.ended.push(Ended {
                        session_id: img.session_id,
                        initial_term_id: img.log.initial_term_id,
                        position: img.subscriber,
                        at_ns: self.now_ns.max(img.last_packet_ns),
                        source: img.source,
                        end: reason,
                    });
                    self.events.push_back(ImageEvent::Unavailable {
                        session_id: img.session_id,
                        position: delivered_to,
                        reason,
                    });
                }
                _ => i += 1,
            }
        }
        if self.next_image >= self.images.len() {
            self.next_image = 0;
        }
    }

    /// Ends images that have been silent too long.
    pub fn handle_timeout(&mut self, now_ns: u64) {
        self.now_ns = now_ns;
        let timeout = self.cfg.image_liveness_timeout_ns;
        for img in &mut self.images {
            if img.end.is_none() && now_ns.saturating_sub(img.last_packet_ns) > timeout {
                img.end = Some(ImageEnd::Timeout);
                img.gap = None;
            }
        }
        self.reap();
    }

    /// The next time something is due, if anything.
    pub fn poll_timeout(&self) -> Option<u64> {
        let mut t: Option<u64> = None;
        let mut at = |x: u64| t = Some(t.map_or(x, |t| t.min(x)));
        for img in &self.images {
            if img.end.is_some() {
                continue;
            }
            at(img.sm_next_ns);
            at(img.last_packet_ns + self.cfg.image_liveness_timeout_ns + 1);
            if img.gap.is_some() {
                at(img.nak_next_ns);
            }
        }
        t
    }

    /// Writes the next control datagram into `buf`, if any is due.
    ///
    /// # Panics
    /// If `buf` is shorter than [`RECEIVER_TRANSMIT_LENGTH_MIN`] (a caller bug).
    pub fn poll_transmit(&mut self, now_ns: u64, buf: &mut [u8]) -> Option<Transmit> {
        assert!(buf.len() >= RECEIVER_TRANSMIT_LENGTH_MIN);
        let mut sm_buf = [0u8; SM_WITH_GROUP_TAG_LENGTH];
        if let Some((source, session_id, term_id, offset)) = self.eos_to_send.pop() {
            let mut sm = self.status_message(session_id, flags::SM_EOS, 0);
            sm.consumption_term_id = term_id;
            sm.consumption_term_offset = offset;
            let n = sm.encode(&mut sm_buf);
            buf[..n].copy_from_slice(&sm_buf[..n]);
            return Some(self.control_sent(source, n, CounterId::StatusMessagesSent));
        }
        if self.closing {
            return None;
        }
        if let Some(r) = self.setup_requests.iter_mut().find(|r| r.pending) {
            r.pending = false;
            r.next_ns = now_ns + self.cfg.setup_interval_ns;
            let (source, session_id) = (r.source, r.session_id);
            let sm = self.status_message(session_id, flags::SM_SEND_SETUP, 0);
            let n = sm.encode(&mut sm_buf);
            buf[..n].copy_from_slice(&sm_buf[..n]);
            return Some(self.control_sent(source, n, CounterId::StatusMessagesSent));
        }
        if let Some(r) = self.refused.iter_mut().find(|r| r.pending) {
            r.pending = false;
            let r = *r;
            let n = self.encode_refusal(&r, buf);
            return Some(self.control_sent(r.source, n, CounterId::ErrorFramesSent));
        }
        for k in 0..self.images.len() {
            let img = &mut self.images[k];
            if img.end.is_some() {
                continue;
            }
            if img.sm_due || now_ns >= img.sm_next_ns {
                img.sm_due = false;
                img.sm_next_ns = now_ns + self.cfg.status_interval_ns;
                img.sm_position = img.subscriber;
                let (source, session_id, position, window) = (
                    img.source,
                    img.session_id,
                    img.subscriber,
                    img.receiver_window,
                );
                let term_id = img.log.term_id(position);
                let offset = img.log.term_offset(position) as i32;
                let mut sm = self.status_message(session_id, 0, window);
                sm.consumption_term_id = term_id;
                sm.consumption_term_offset = offset;
                let n = sm.encode(&mut sm_buf);
                buf[..n].copy_from_slice(&sm_buf[..n]);
                return Some(self.control_sent(source, n, CounterId::StatusMessagesSent));
            }
            if let Some((start, length)) = img.gap {
                if now_ns >= img.nak_next_ns {
                    img.nak_next_ns = now_ns + self.cfg.nak_retry_ns;
                    let nak = Nak {
                        session_id: img.session_id,
                        stream_id: self.stream_id,
                        term_id: img.log.term_id(start),
                        term_offset: img.log.term_offset(start) as i32,
                        length,
                    };
                    let source = img.source;
                    buf[..frame::NAK_LENGTH].copy_from_slice(&nak.encode());
                    return Some(self.control_sent(source, frame::NAK_LENGTH, CounterId::NaksSent));
                }
            }
            if img.rttm_due {
                img.rttm_due = false;
                let r = Rttm {
                    flags: 0,
                    session_id: img.session_id,
                    stream_id: self.stream_id,
                    echo_timestamp: now_ns as i64,
                    reception_delta: 0,
                    receiver_id: self.receiver_id,
                };
                let source = img.source;
                buf[..frame::RTTM_LENGTH].copy_from_slice(&r.encode());
                return Some(self.control_sent(
                    source,
                    frame::RTTM_LENGTH,
                    CounterId::DatagramsSent,
                ));
            }
        }
        None
    }

    /// A status message at consumption position (term 0, offset 0); callers set the position.
    fn status_message(&self, session_id: i32, fl: u8, window: i32) -> StatusMessage {
        StatusMessage {
            flags: fl,
            session_id,
            stream_id: self.stream_id,
            consumption_term_id: 0,
            consumption_term_offset: 0,
            receiver_window: window,
            receiver_id: self.receiver_id,
            group_tag: self.cfg.group_tag,
        }
    }

    fn control_sent(&mut self, destination: SocketAddr, length: usize, id: CounterId) -> Transmit {
        if id != CounterId::DatagramsSent {
            self.counters.incr(id);
        }
        self.counters.incr(CounterId::DatagramsSent);
        self.counters.add(CounterId::BytesSent, length as u64);
        Transmit {
            destination: Some(destination),
            length,
        }
    }
}

/// A length in bytes, written in the largest binary unit that divides it ("128 MiB").
struct Bytes(usize);

impl std::fmt::Display for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [(usize, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        match UNITS
            .iter()
            .find(|(unit, _)| self.0 >= *unit && self.0.is_multiple_of(*unit))
        {
            Some((unit, name)) => write!(f, "{} {name}", self.0 / unit),
            None => write!(f, "{} bytes", self.0),
        }
    }
}

/// A region of an image's log where the next datagrams of its stream would lie, in order
/// (see [`Receiver::direct_target`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DirectTarget {
    image: usize,
    /// Position of the region's first byte: the image's rebuild position.
    start: i64,
    /// Bytes in the region (up to the term end or `cleaned_until`).
    pub length: usize,
}

/// The first header of a datagram that may take the in-order fast path: a whole number of
/// 32-byte units, at least one header long, starting with a DATA frame of `stream_id` and
/// our version.
fn in_order_header(stream_id: i32, datagram: &[u8]) -> Option<DataHeader> {
    let length = datagram.len();
    if length < DATA_HEADER_LENGTH || !length.is_multiple_of(FRAME_ALIGNMENT) {
        return None;
    }
    let first = DataHeader::read_unchecked(datagram);
    (datagram[4] == frame::VERSION
        && first.frame_type == frame_type::DATA
        && first.stream_id == stream_id)
        .then_some(first)
}

impl Image {
    /// Checks a datagram whose first header is `first` (see [`in_order_header`]) as the
    /// in-order fast path requires: from the image's source, the image live with no frames
    /// stored beyond the rebuild position, starting exactly there, inside one term and below
    /// `cleaned_until`, and made of whole DATA frames of this session, stream and term with
    /// consecutive offsets. Returns the number of frames.
    /// `touch`: pull the datagram's lines into cache first (see `touch_lines`); needless
    /// when this core's kernel just wrote them.
    fn in_order_frames(
        &self,
        source: SocketAddr,
        first: &DataHeader,
        datagram: &[u8],
        touch: bool,
    ) -> Option<u64> {
        let length = datagram.len();
        if self.source != source || self.end.is_some() || self.hwm != self.rebuild {
            return None;
        }
        let position = self.log.position(first.term_id, first.term_offset);
        let end = position + length as i64;
        if position != self.rebuild
            || first.term_offset < 0
            || first.term_offset as usize + length > self.log.term_length
            || end > self.cleaned_until
        {
            return None;
        }
        // Every header, checked as three words: length/version/type (flags free), then
        // term offset + session id, then stream id + term id.
        let word = |h: &[u8; DATA_HEADER_LENGTH], at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&h[at..at + 8]);
            u64::from_le_bytes(w)
        };
        const VERSION_TYPE_MASK: u64 = 0xFFFF_00FF_0000_0000;
        const VERSION_TYPE: u64 =
            ((frame_type::DATA as u64) << 48) | ((frame::VERSION as u64) << 32);
        let session_word = u64::from(first.session_id as u32) << 32;
        let stream_term_word =
            u64::from(first.stream_id as u32) | (u64::from(first.term_id as u32) << 32);
        if touch {
            touch_lines(datagram);
        }
        let f = align_frame(first.frame_length.max(0) as usize);
        if f >= DATA_HEADER_LENGTH && length.is_multiple_of(f) {
            // Frames of one length, the common case: every header's place is known up
            // front, so the checks below are independent of each other (the walk after it
            // finds each header from the one before). If any fails, the walk decides.
            let mut ok = true;
            for (k, frame) in datagram.chunks_exact(f).enumerate() {
                let h = frame.first_chunk::<DATA_HEADER_LENGTH>()?;
                let w0 = word(h, 0);
                let frame_length = w0 as u32 as usize;
                let term_offset = (first.term_offset as u32).wrapping_add((k * f) as u32);
                ok &= frame_length >= DATA_HEADER_LENGTH
                    && frame_length <= f
                    && frame_length + FRAME_ALIGNMENT > f
                    && w0 & VERSION_TYPE_MASK == VERSION_TYPE
                    && word(h, 8) == u64::from(term_offset) | session_word
                    && word(h, 16) == stream_term_word;
            }
            if ok {
                return Some((length / f) as u64);
            }
        }
        let mut at = 0;
        let mut frames = 0;
        while at < length {
            let h = datagram[at..].first_chunk::<DATA_HEADER_LENGTH>()?;
            let w0 = word(h, 0);
            let frame_length = w0 as u32 as i32;
            let term_offset = (first.term_offset as u32).wrapping_add(at as u32);
            if frame_length < DATA_HEADER_LENGTH as i32
                || w0 & VERSION_TYPE_MASK != VERSION_TYPE
                || word(h, 8) != u64::from(term_offset) | session_word
                || word(h, 16) != stream_term_word
            {
                return None;
            }
            at += align_frame(frame_length as usize);
            frames += 1;
        }
        (at == length).then_some(frames)
    }

    /// Records `length` bytes of frames stored in order at the rebuild position.
    fn append_in_order(&mut self, now_ns: u64, length: usize) {
        let end = self.rebuild + length as i64;
        self.rebuild = end;
        self.hwm = end;
        self.zeroed_to = self.zeroed_to.max(end);
        self.last_packet_ns = now_ns;
    }

    /// Zeroes the log from `zeroed_to` up to `upto` (at most `cleaned_until`), so that what
    /// lies there reads as "not received".
    fn ensure_zeroed(&mut self, upto: i64) {
        let upto = upto.min(self.cleaned_until);
        while self.zeroed_to < upto {
            let term_end = self.log.term_start(self.zeroed_to) + self.log.term_length as i64;
            let to = upto.min(term_end);
            let at = self.log.index(self.zeroed_to);
            self.log.buf[at..at + (to - self.zeroed_to) as usize].fill(0);
            self.zeroed_to = to;
        }
    }

    fn scan_rebuild(&mut self) {
        let limit = self.hwm.min(self.cleaned_until);
        while self.rebuild < limit {
            let fl = read_i32(&self.log.buf, self.log.index(self.rebuild));
            if fl <= 0 {
                break;
            }
            self.rebuild += align_frame(fl as usize) as i64;
        }
    }

    fn deliver<F: FnMut(&[u8], &MessageHeader)>(
        &mut self,
        stream_id: i32,
        handler: &mut F,
        limit: usize,
    ) -> usize {
        let mut delivered = 0;
        let start_term = self.log.term_start(self.subscriber);
        let term_length = self.log.term_length;
        // The longest message a sender of this image may write (its `message_length_max` is
        // at most a quarter term): a longer one, whole or reassembled, is dropped and counted.
        let message_max = term_length / 4;
        while self.subscriber < self.rebuild && delivered < limit {
            // Frames from the subscriber up to the rebuild position or the end of its term are
            // contiguous in the log: walk them by offset from one base index.
            let span_end = self
                .rebuild
                .min(self.log.term_start(self.subscriber) + term_length as i64);
            let span = (span_end - self.subscriber) as usize;
            let base = self.log.index(self.subscriber);
            let buf = &self.log.buf;
            let mut off = 0usize;
            // No `touch_lines` ahead of this walk: the frames were stored by this core (the
            // kernel received them into the log, or `handle_datagram` copied them there)
            // and the log is small enough to still be in its cache.
            while off < span && delivered < limit {
                let at = base + off;
                let h = DataHeader::read_unchecked(&buf[at..]);
                let advance = align_frame(h.frame_length.max(DATA_HEADER_LENGTH as i32) as usize);
                off += advance;
                if h.frame_type == frame_type::DATA {
                    let payload = &buf[at + DATA_HEADER_LENGTH..at + h.frame_length as usize];
                    let header = MessageHeader {
                        session_id: self.session_id,
                        stream_id,
                        position: self.subscriber + off as i64,
                        reserved_value: h.reserved_value,
                    };
                    if h.flags & flags::UNFRAGMENTED == flags::UNFRAGMENTED {
                        // The common case first: a whole message in one frame.
                        if self.reassembling {
                            // Inside a message begun before: that one is torn. Left
                            // reassembling, a later END finished it with another
                            // message's fragment.
                            self.reassembling = false;
                            self.fragments_dropped += 1;
                        }
                        self.synced = true;
                        if payload.len() > message_max {
                            // Over the limit (see below): no sender of ours writes one.
                            self.fragments_dropped += 1;
                            continue;
                        }
                        handler(payload, &header);
                        delivered += 1;
                        continue;
                    }
                    // Out of sequence (never so from a sender of Aeron's protocol: a message's
                    // fragments lie back to back): a message begun again, or a fragment with
                    // none begun once the stream is past a message's end. The torn message or
                    // the stray fragment is dropped and counted.
                    match h.flags & flags::UNFRAGMENTED {
                        flags::BEGIN => {
                            if self.reassembling {
                                self.fragments_dropped += 1;
                            }
                            self.reassembly.clear();
                            self.reassembly.extend_from_slice(payload);
                            self.reassembling = true;
                            self.reassembly_start = self.subscriber + (off - advance) as i64;
                        }
                        flags::END => {
                            if self.reassembling {
                                self.reassembling = false;
                                if self.reassembly.len() + payload.len() > message_max {
                                    // The last fragment takes it over the limit.
                                    self.reassembly.clear();
                                    self.fragments_dropped += 1;
                                } else {
                                    self.reassembly.extend_from_slice(payload);
                                    handler(&self.reassembly, &header);
                                    delivered += 1;
                                }
                            } else if self.synced {
                                self.fragments_dropped += 1;
                            }
                            self.synced = true;
                        }
                        _ => {
                            if self.reassembling {
                                self.reassembly.extend_from_slice(payload);
                            } else if self.synced {
                                self.fragments_dropped += 1;
                            }
                        }
                    }
                    // A message may not exceed a quarter term (the sender's limit): a peer
                    // that never ends one must not grow the buffer without bound.
                    if self.reassembling && self.reassembly.len() > message_max {
                        self.reassembling = false;
                        self.reassembly.clear();
                        self.fragments_dropped += 1;
                        // Its remaining fragments go uncounted, as after a join.
                        self.synced = false;
                    }
                }
            }
            self.subscriber += off as i64;
        }
        let new_term = self.log.term_start(self.subscriber);
        if new_term > start_term {
            // Terms before the subscriber's are free for reuse ahead (cleaned lazily).
            self.cleaned_until = new_term + 3 * self.log.term_length as i64;
            let hwm = self.hwm;
            self.ensure_zeroed(hwm);
        }
        if self.subscriber - self.sm_position >= self.receiver_window as i64 / 4 {
            self.sm_due = true;
        }
        delivered
    }
}
