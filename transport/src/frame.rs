//! Aeron's wire protocol frames, byte for byte (DESIGN §5a).
//!
//! Owns: the layouts of the DATA/PAD, SETUP, status message (SM), NAK, RTT measurement (RTTM)
//! and error (ERR) frames, their type codes and flag bits, and a checked parser. Does not own
//! any protocol state. Every multi-byte field is little-endian; every frame starts with the
//! 8-byte frame header (`frame_length` i32 @0, `version` u8 @4, `flags` u8 @5, `type` u16 @6).
//! Frames in a term (and in a datagram) start on [`FRAME_ALIGNMENT`] boundaries.
//!
//! Invariant: decoding never panics and never reads past the slice it was given; bad bytes
//! become a [`FrameError`] naming the failed check. Encoding cannot fail: it writes into a
//! fixed-size array the caller owns.

/// Frames in a term buffer and in a datagram start at multiples of this many bytes.
pub const FRAME_ALIGNMENT: usize = 32;
/// The protocol version this implementation speaks (`AERON_FRAME_HEADER_VERSION`).
pub const VERSION: u8 = 0;
/// Bytes in the common frame header shared by every frame type.
pub const FRAME_HEADER_LENGTH: usize = 8;
/// Bytes in a DATA or PAD header; the payload follows.
pub const DATA_HEADER_LENGTH: usize = 32;
/// Bytes in a SETUP frame.
pub const SETUP_LENGTH: usize = 40;
/// Bytes in a status message without the optional group tag.
pub const SM_LENGTH: usize = 36;
/// Bytes in a status message carrying the optional 8-byte group tag.
pub const SM_WITH_GROUP_TAG_LENGTH: usize = 44;
/// Bytes in a NAK frame.
pub const NAK_LENGTH: usize = 28;
/// Bytes in an RTT measurement frame.
pub const RTTM_LENGTH: usize = 40;
/// Bytes in an error frame before its message text.
pub const ERR_HEADER_LENGTH: usize = 40;
/// Longest error text an error frame carries (Aeron's `MAX_ERROR_MESSAGE_LENGTH`).
pub const ERR_MESSAGE_LENGTH_MAX: usize = 1023;

/// Frame type codes (`AERON_HDR_TYPE_*`).
pub mod frame_type {
    /// Padding to the end of a term.
    pub const PAD: u16 = 0x00;
    /// A message fragment (or, with `frame_length == 0`, a heartbeat).
    pub const DATA: u16 = 0x01;
    /// Negative acknowledgement: a receiver asking for a retransmit.
    pub const NAK: u16 = 0x02;
    /// Status message: a receiver's consumption position and window.
    pub const SM: u16 = 0x03;
    /// Error frame.
    pub const ERR: u16 = 0x04;
    /// Session setup.
    pub const SETUP: u16 = 0x05;
    /// Round-trip-time measurement.
    pub const RTTM: u16 = 0x06;
    /// Name resolution (not produced by tally; parsed as unsupported).
    pub const RES: u16 = 0x07;
    /// Aeron Transport Security DATA (unsupported).
    pub const ATS_DATA: u16 = 0x08;
    /// Aeron Transport Security SETUP (unsupported).
    pub const ATS_SETUP: u16 = 0x09;
    /// Aeron Transport Security SM (unsupported).
    pub const ATS_SM: u16 = 0x0A;
    /// Response setup (unsupported).
    pub const RSP_SETUP: u16 = 0x0B;
    /// Extension frame (never on the wire).
    pub const EXT: u16 = 0xFFFF;
}

/// Flag bits of the flags byte. Their meaning depends on the frame type.
pub mod flags {
    /// DATA: first fragment of a message.
    pub const BEGIN: u8 = 0x80;
    /// DATA: last fragment of a message.
    pub const END: u8 = 0x40;
    /// DATA: end of stream (set on the final heartbeat of a closing publication).
    pub const EOS: u8 = 0x20;
    /// DATA: a whole message in one frame.
    pub const UNFRAGMENTED: u8 = BEGIN | END;
    /// SM: the receiver asks the sender to send a SETUP frame.
    pub const SM_SEND_SETUP: u8 = 0x80;
    /// SM: the receiver is leaving (end of stream).
    pub const SM_EOS: u8 = 0x40;
    /// SETUP: the sender asks for a response stream (unused by tally).
    pub const SETUP_SEND_RESPONSE: u8 = 0x80;
    /// RTTM: this frame is the reply to a measurement request.
    pub const RTTM_REPLY: u8 = 0x80;
    /// ERR: the group tag field is meaningful.
    pub const ERR_HAS_GROUP_TAG: u8 = 0x08;
}

/// `error_code` values of the ERR frame a receiver answers a refused SETUP with (see
/// [`RefusalReason`]). tally's codes start at 1000, clear of Aeron's own `ErrorCode` values
/// (0 to 14 and -1), so that an Aeron publisher reports them as codes it does not know rather
/// than as one of its own.
pub mod error_code {
    /// The SETUP announced a term longer than the receiver's `image_term_length_max`.
    pub const TERM_LENGTH_OVER_CAP: i32 = 1001;
    /// The receiver already holds as many images as it may (`IMAGES_MAX`).
    pub const IMAGES_FULL: i32 = 1002;
}

/// Why a receiver refused a publication's SETUP, as the `error_code` of its ERR frame says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The SETUP announced a term longer than the receiver's `image_term_length_max`
    /// ([`error_code::TERM_LENGTH_OVER_CAP`]). Fix: a shorter `term_length` on the
    /// publication, or a larger cap on the subscription.
    TermLengthOverCap,
    /// The receiver already holds `IMAGES_MAX` images ([`error_code::IMAGES_FULL`]); the
    /// publication keeps sending SETUPs and joins once one ends.
    ImagesFull,
    /// A code tally does not define (another implementation's); the text says more.
    Other(i32),
}

impl RefusalReason {
    /// The reason of an ERR frame's `error_code`.
    pub fn from_code(code: i32) -> Self {
        match code {
            error_code::TERM_LENGTH_OVER_CAP => RefusalReason::TermLengthOverCap,
            error_code::IMAGES_FULL => RefusalReason::ImagesFull,
            other => RefusalReason::Other(other),
        }
    }

    /// The ERR frame's `error_code` for this reason.
    pub fn code(self) -> i32 {
        match self {
            RefusalReason::TermLengthOverCap => error_code::TERM_LENGTH_OVER_CAP,
            RefusalReason::ImagesFull => error_code::IMAGES_FULL,
            RefusalReason::Other(code) => code,
        }
    }
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefusalReason::TermLengthOverCap => f.write_str("term length over the receiver's cap"),
            RefusalReason::ImagesFull => f.write_str("no room for another image"),
            RefusalReason::Other(code) => write!(f, "error code {code}"),
        }
    }
}

/// Rounds `length` up to the next multiple of [`FRAME_ALIGNMENT`].
pub const fn align_frame(length: usize) -> usize {
    (length + FRAME_ALIGNMENT - 1) & !(FRAME_ALIGNMENT - 1)
}

/// Why a frame was rejected. Each variant names the check that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the frame type's fixed layout needs.
    Truncated {
        /// Bytes the layout needs.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// The version byte is not [`VERSION`].
    Version(u8),
    /// `frame_length` is negative, shorter than the header, or longer than the bytes present.
    FrameLength(i32),
    /// A term offset that is negative or not a multiple of [`FRAME_ALIGNMENT`].
    TermOffset(i32),
    /// A negative length or window field.
    NegativeField(&'static str),
    /// A frame type tally does not accept on the wire.
    UnsupportedType(u16),
    /// A length field over the most the frame type allows.
    LengthOverMax {
        /// The field.
        field: &'static str,
        /// Its value.
        length: i32,
        /// The most allowed.
        length_max: usize,
    },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Truncated { needed, available } => {
                write!(f, "truncated frame: needs {needed} bytes, has {available}")
            }
            FrameError::Version(v) => write!(f, "unsupported frame version {v}"),
            FrameError::FrameLength(l) => write!(f, "bad frame_length {l}"),
            FrameError::TermOffset(o) => write!(f, "bad term_offset {o}"),
            FrameError::NegativeField(name) => write!(f, "negative field {name}"),
            FrameError::UnsupportedType(t) => write!(f, "unsupported frame type {t:#06x}"),
            FrameError::LengthOverMax {
                field,
                length,
                length_max,
            } => write!(f, "{field} {length} over its maximum {length_max}"),
        }
    }
}

impl std::error::Error for FrameError {}

// Little-endian field access. Callers check lengths first; `get` keeps out-of-range reads a
// zero rather than a panic, as a second line of defence.
pub(crate) fn read_i32(b: &[u8], at: usize) -> i32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(i32::from_le_bytes)
        .unwrap_or(0)
}
pub(crate) fn read_i64(b: &[u8], at: usize) -> i64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(i64::from_le_bytes)
        .unwrap_or(0)
}
pub(crate) fn read_u16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_le_bytes)
        .unwrap_or(0)
}
fn put_i32(b: &mut [u8], at: usize, v: i32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_i64(b: &mut [u8], at: usize, v: i64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn put_header(b: &mut [u8], frame_length: i32, flags: u8, frame_type: u16) {
    put_i32(b, 0, frame_length);
    b[4] = VERSION;
    b[5] = flags;
    b[6..8].copy_from_slice(&frame_type.to_le_bytes());
}

/// The 32-byte DATA (or PAD) header. Offsets: `term_offset` i32 @8, `session_id` i32 @12,
/// `stream_id` i32 @16, `term_id` i32 @20, `reserved_value` i64 @24.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    /// Header plus payload bytes (unaligned); 0 for a heartbeat.
    pub frame_length: i32,
    /// [`flags::BEGIN`], [`flags::END`], [`flags::EOS`].
    pub flags: u8,
    /// [`frame_type::DATA`] or [`frame_type::PAD`].
    pub frame_type: u16,
    /// Offset of this frame in its term.
    pub term_offset: i32,
    /// The publishing session.
    pub session_id: i32,
    /// The stream.
    pub stream_id: i32,
    /// The term this frame belongs to.
    pub term_id: i32,
    /// Application-defined 64 bits (tally writes 0).
    pub reserved_value: i64,
}

impl DataHeader {
    /// Writes the header into the first 32 bytes of `b`.
    ///
    /// # Panics
    /// If `b` is shorter than [`DATA_HEADER_LENGTH`] (a caller bug, not input).
    pub fn write(&self, b: &mut [u8]) {
        assert!(b.len() >= DATA_HEADER_LENGTH);
        put_header(b, self.frame_length, self.flags, self.frame_type);
        put_i32(b, 8, self.term_offset);
        put_i32(b, 12, self.session_id);
        put_i32(b, 16, self.stream_id);
        put_i32(b, 20, self.term_id);
        put_i64(b, 24, self.reserved_value);
    }

    /// The encoded header, built in registers (the hot path of `offer`).
    #[inline]
    pub(crate) fn to_bytes(self) -> [u8; DATA_HEADER_LENGTH] {
        let word = |lo: i32, hi: i32| u64::from(lo as u32) | (u64::from(hi as u32) << 32);
        let type_word = i32::from_le_bytes([
            VERSION,
            self.flags,
            self.frame_type.to_le_bytes()[0],
            self.frame_type.to_le_bytes()[1],
        ]);
        let mut b = [0u8; DATA_HEADER_LENGTH];
        b[0..8].copy_from_slice(&word(self.frame_length, type_word).to_le_bytes());
        b[8..16].copy_from_slice(&word(self.term_offset, self.session_id).to_le_bytes());
        b[16..24].copy_from_slice(&word(self.stream_id, self.term_id).to_le_bytes());
        b[24..32].copy_from_slice(&self.reserved_value.to_le_bytes());
        b
    }

    /// Reads a header without validating it (used on our own term buffers).
    #[inline(always)]
    pub(crate) fn read_unchecked(b: &[u8]) -> DataHeader {
        if let Some(h) = b.first_chunk::<DATA_HEADER_LENGTH>() {
            // Hot path (every frame received and delivered): fixed offsets, no bounds checks.
            let i32_at = |at: usize| i32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
            let mut reserved = [0u8; 8];
            reserved.copy_from_slice(&h[24..32]);
            return DataHeader {
                frame_length: i32_at(0),
                flags: h[5],
                frame_type: u16::from_le_bytes([h[6], h[7]]),
                term_offset: i32_at(8),
                session_id: i32_at(12),
                stream_id: i32_at(16),
                term_id: i32_at(20),
                reserved_value: i64::from_le_bytes(reserved),
            };
        }
        DataHeader {
            frame_length: read_i32(b, 0),
            flags: b.get(5).copied().unwrap_or(0),
            frame_type: read_u16(b, 6),
            term_offset: read_i32(b, 8),
            session_id: read_i32(b, 12),
            stream_id: read_i32(b, 16),
            term_id: read_i32(b, 20),
            reserved_value: read_i64(b, 24),
        }
    }

    /// True for a zero-length DATA frame: a heartbeat.
    pub fn is_heartbeat(&self) -> bool {
        self.frame_type == frame_type::DATA && self.frame_length == 0
    }
}

/// SETUP: `term_offset` @8, `session_id` @12, `stream_id` @16, `initial_term_id` @20,
/// `active_term_id` @24, `term_length` @28, `mtu` @32, `ttl` @36 (all i32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    /// Flags byte (tally sends 0).
    pub flags: u8,
    /// Offset of the sender's position in the active term.
    pub term_offset: i32,
    /// The publishing session.
    pub session_id: i32,
    /// The stream.
    pub stream_id: i32,
    /// Term id at position 0 of the stream.
    pub initial_term_id: i32,
    /// Term id of the sender's current position.
    pub active_term_id: i32,
    /// Term length in bytes (a power of two).
    pub term_length: i32,
    /// Largest datagram the sender emits, in bytes.
    pub mtu: i32,
    /// Multicast TTL (0 for unicast).
    pub ttl: i32,
}

impl Setup {
    /// Encodes the frame.
    pub fn encode(&self) -> [u8; SETUP_LENGTH] {
        let mut b = [0u8; SETUP_LENGTH];
        put_header(&mut b, SETUP_LENGTH as i32, self.flags, frame_type::SETUP);
        put_i32(&mut b, 8, self.term_offset);
        put_i32(&mut b, 12, self.session_id);
        put_i32(&mut b, 16, self.stream_id);
        put_i32(&mut b, 20, self.initial_term_id);
        put_i32(&mut b, 24, self.active_term_id);
        put_i32(&mut b, 28, self.term_length);
        put_i32(&mut b, 32, self.mtu);
        put_i32(&mut b, 36, self.ttl);
        b
    }
}

/// Status message: `session_id` @8, `stream_id` @12, `consumption_term_id` @16,
/// `consumption_term_offset` @20, `receiver_window` @24 (i32), `receiver_id` i64 @28, and
/// optionally `group_tag` i64 @36.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusMessage {
    /// [`flags::SM_SEND_SETUP`], [`flags::SM_EOS`].
    pub flags: u8,
    /// The session being acknowledged.
    pub session_id: i32,
    /// The stream.
    pub stream_id: i32,
    /// Term id of the receiver's consumption position.
    pub consumption_term_id: i32,
    /// Term offset of the receiver's consumption position.
    pub consumption_term_offset: i32,
    /// Bytes beyond the consumption position the sender may send.
    pub receiver_window: i32,
    /// Identifies the receiver (random per receiver) for multicast flow control.
    pub receiver_id: i64,
    /// Optional group tag (tagged multicast flow control).
    pub group_tag: Option<i64>,
}

impl StatusMessage {
    /// Encodes the frame into `b`, returning its length (36, or 44 with a group tag).
    pub fn encode(&self, b: &mut [u8; SM_WITH_GROUP_TAG_LENGTH]) -> usize {
        let len = if self.group_tag.is_some() {
            SM_WITH_GROUP_TAG_LENGTH
        } else {
            SM_LENGTH
        };
        put_header(b, len as i32, self.flags, frame_type::SM);
        put_i32(b, 8, self.session_id);
        put_i32(b, 12, self.stream_id);
        put_i32(b, 16, self.consumption_term_id);
        put_i32(b, 20, self.consumption_term_offset);
        put_i32(b, 24, self.receiver_window);
        put_i64(b, 28, self.receiver_id);
        if let Some(tag) = self.group_tag {
            put_i64(b, 36, tag);
        }
        len
    }
}

/// NAK: `session_id` @8, `stream_id` @12, `term_id` @16, `term_offset` @20, `length` @24.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nak {
    /// The session with the gap.
    pub session_id: i32,
    /// The stream.
    pub stream_id: i32,
    /// Term of the gap.
    pub term_id: i32,
    /// Start of the gap in its term.
    pub term_offset: i32,
    /// Bytes missing.
    pub length: i32,
}

impl Nak {
    /// Encodes the frame.
    pub fn encode(&self) -> [u8; NAK_LENGTH] {
        let mut b = [0u8; NAK_LENGTH];
        put_header(&mut b, NAK_LENGTH as i32, 0, frame_type::NAK);
        put_i32(&mut b, 8, self.session_id);
        put_i32(&mut b, 12, self.stream_id);
        put_i32(&mut b, 16, self.term_id);
        put_i32(&mut b, 20, self.term_offset);
        put_i32(&mut b, 24, self.length);
        b
    }
}

/// RTT measurement: `session_id` @8, `stream_id` @12, `echo_timestamp` i64 @16,
/// `reception_delta` i64 @24, `receiver_id` i64 @32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rttm {
    /// [`flags::RTTM_REPLY`] on a reply.
    pub flags: u8,
    /// The session.
    pub session_id: i32,
    /// The stream.
    pub stream_id: i32,
    /// The requester's timestamp, echoed back.
    pub echo_timestamp: i64,
    /// Time the replier held the request, in nanoseconds.
    pub reception_delta: i64,
    /// The receiver measuring.
    pub receiver_id: i64,
}

impl Rttm {
    /// Encodes the frame.
    pub fn encode(&self) -> [u8; RTTM_LENGTH] {
        let mut b = [0u8; RTTM_LENGTH];
        put_header(&mut b, RTTM_LENGTH as i32, self.flags, frame_type::RTTM);
        put_i32(&mut b, 8, self.session_id);
        put_i32(&mut b, 12, self.stream_id);
        put_i64(&mut b, 16, self.echo_timestamp);
        put_i64(&mut b, 24, self.reception_delta);
        put_i64(&mut b, 32, self.receiver_id);
        b
    }
}

/// Error frame (Aeron's layout): `session_id` @8, `stream_id` @12, `receiver_id` i64 @16,
/// `group_tag` i64 @24, `error_code` i32 @32, error text length i32 @36 (at most
/// [`ERR_MESSAGE_LENGTH_MAX`]), text @40; `frame_length` covers at least the text.
///
/// A receiver sends one to a publication's control address (where its status messages go)
/// when it refuses the publication's SETUP, `error_code` saying why ([`RefusalReason`]) and
/// the text with the figures ("term length 128 MiB over the receiver's cap 64 MiB ...").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorFrame<'a> {
    /// The session.
    pub session_id: i32,
    /// The stream.
    pub stream_id: i32,
    /// The receiver reporting.
    pub receiver_id: i64,
    /// Group tag, when [`flags::ERR_HAS_GROUP_TAG`] is set.
    pub group_tag: Option<i64>,
    /// Why: one of [`error_code`] from tally, any value from other implementations.
    pub error_code: i32,
    /// Error text (ASCII), at most [`ERR_MESSAGE_LENGTH_MAX`] bytes.
    pub message: &'a [u8],
}

impl ErrorFrame<'_> {
    /// Encodes the frame into `b`, returning its length. The text is truncated to
    /// [`ERR_MESSAGE_LENGTH_MAX`] bytes.
    pub fn encode(&self, b: &mut [u8; ERR_HEADER_LENGTH + ERR_MESSAGE_LENGTH_MAX]) -> usize {
        let text = &self.message[..self.message.len().min(ERR_MESSAGE_LENGTH_MAX)];
        let len = ERR_HEADER_LENGTH + text.len();
        let fl = if self.group_tag.is_some() {
            flags::ERR_HAS_GROUP_TAG
        } else {
            0
        };
        put_header(b, len as i32, fl, frame_type::ERR);
        put_i32(b, 8, self.session_id);
        put_i32(b, 12, self.stream_id);
        put_i64(b, 16, self.receiver_id);
        put_i64(b, 24, self.group_tag.unwrap_or(0));
        put_i32(b, 32, self.error_code);
        put_i32(b, 36, text.len() as i32);
        b[ERR_HEADER_LENGTH..len].copy_from_slice(text);
        len
    }
}

/// One decoded frame, borrowing the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A DATA frame (heartbeat when `header.frame_length == 0`); `frame` is the header plus
    /// payload, exactly `frame_length` bytes (32 for a heartbeat).
    Data {
        /// The decoded header.
        header: DataHeader,
        /// Header and payload bytes as they go into a term buffer.
        frame: &'a [u8],
    },
    /// A PAD frame; only its 32-byte header travels.
    Pad(DataHeader),
    /// SETUP.
    Setup(Setup),
    /// Status message.
    StatusMessage(StatusMessage),
    /// NAK.
    Nak(Nak),
    /// RTT measurement.
    Rttm(Rttm),
    /// Error frame.
    Error(ErrorFrame<'a>),
}

fn need(b: &[u8], n: usize) -> Result<(), FrameError> {
    if b.len() < n {
        Err(FrameError::Truncated {
            needed: n,
            available: b.len(),
        })
    } else {
        Ok(())
    }
}

/// Decodes the frame at the start of `b` and returns it with the number of bytes it occupies
/// in the datagram (DATA/PAD: aligned frame length; control frames: the rest of the datagram,
/// since Aeron sends one control frame per datagram).
///
/// # Errors
/// A [`FrameError`] naming the first failed check.
pub fn decode(b: &[u8]) -> Result<(Frame<'_>, usize), FrameError> {
    need(b, FRAME_HEADER_LENGTH)?;
    let frame_length = read_i32(b, 0);
    let version = b[4];
    let fl = b[5];
    let ty = read_u16(b, 6);
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    match ty {
        frame_type::DATA | frame_type::PAD => {
            need(b, DATA_HEADER_LENGTH)?;
            let header = DataHeader::read_unchecked(b);
            if header.term_offset < 0
                || !(header.term_offset as usize).is_multiple_of(FRAME_ALIGNMENT)
            {
                return Err(FrameError::TermOffset(header.term_offset));
            }
            if ty == frame_type::PAD {
                if frame_length < DATA_HEADER_LENGTH as i32 {
                    return Err(FrameError::FrameLength(frame_length));
                }
                return Ok((Frame::Pad(header), DATA_HEADER_LENGTH));
            }
            if frame_length == 0 {
                let frame = &b[..DATA_HEADER_LENGTH];
                return Ok((Frame::Data { header, frame }, DATA_HEADER_LENGTH));
            }
            if frame_length < DATA_HEADER_LENGTH as i32 || frame_length as usize > b.len() {
                return Err(FrameError::FrameLength(frame_length));
            }
            let frame = &b[..frame_length as usize];
            let consumed = align_frame(frame_length as usize).min(b.len());
            Ok((Frame::Data { header, frame }, consumed))
        }
        frame_type::SETUP => {
            need(b, SETUP_LENGTH)?;
            check_length(frame_length, SETUP_LENGTH, b.len())?;
            let s = Setup {
                flags: fl,
                term_offset: read_i32(b, 8),
                session_id: read_i32(b, 12),
                stream_id: read_i32(b, 16),
                initial_term_id: read_i32(b, 20),
                active_term_id: read_i32(b, 24),
                term_length: read_i32(b, 28),
                mtu: read_i32(b, 32),
                ttl: read_i32(b, 36),
            };
            if s.term_offset < 0 || !(s.term_offset as usize).is_multiple_of(FRAME_ALIGNMENT) {
                return Err(FrameError::TermOffset(s.term_offset));
            }
            if s.term_length <= 0 {
                return Err(FrameError::NegativeField("term_length"));
            }
            if s.mtu <= 0 {
                return Err(FrameError::NegativeField("mtu"));
            }
            Ok((Frame::Setup(s), b.len()))
        }
        frame_type::SM => {
            need(b, SM_LENGTH)?;
            check_length(frame_length, SM_LENGTH, b.len())?;
            let group_tag = if frame_length as usize >= SM_WITH_GROUP_TAG_LENGTH {
                Some(read_i64(b, 36))
            } else {
                None
            };
            let sm = StatusMessage {
                flags: fl,
                session_id: read_i32(b, 8),
                stream_id: read_i32(b, 12),
                consumption_term_id: read_i32(b, 16),
                consumption_term_offset: read_i32(b, 20),
                receiver_window: read_i32(b, 24),
                receiver_id: read_i64(b, 28),
                group_tag,
            };
            if sm.consumption_term_offset < 0 {
                return Err(FrameError::TermOffset(sm.consumption_term_offset));
            }
            if sm.receiver_window < 0 {
                return Err(FrameError::NegativeField("receiver_window"));
            }
            Ok((Frame::StatusMessage(sm), b.len()))
        }
        frame_type::NAK => {
            need(b, NAK_LENGTH)?;
            check_length(frame_length, NAK_LENGTH, b.len())?;
            let n = Nak {
                session_id: read_i32(b, 8),
                stream_id: read_i32(b, 12),
                term_id: read_i32(b, 16),
                term_offset: read_i32(b, 20),
                length: read_i32(b, 24),
            };
            if n.term_offset < 0 {
                return Err(FrameError::TermOffset(n.term_offset));
            }
            if n.length < 0 {
                return Err(FrameError::NegativeField("length"));
            }
            Ok((Frame::Nak(n), b.len()))
        }
        frame_type::RTTM => {
            need(b, RTTM_LENGTH)?;
            check_length(frame_length, RTTM_LENGTH, b.len())?;
            Ok((
                Frame::Rttm(Rttm {
                    flags: fl,
                    session_id: read_i32(b, 8),
                    stream_id: read_i32(b, 12),
                    echo_timestamp: read_i64(b, 16),
                    reception_delta: read_i64(b, 24),
                    receiver_id: read_i64(b, 32),
                }),
                b.len(),
            ))
        }
        frame_type::ERR => {
            need(b, ERR_HEADER_LENGTH)?;
            check_length(frame_length, ERR_HEADER_LENGTH, b.len())?;
            let text_len = read_i32(b, 36);
            if text_len < 0 {
                return Err(FrameError::NegativeField("error_length"));
            }
            if text_len as usize > ERR_MESSAGE_LENGTH_MAX {
                return Err(FrameError::LengthOverMax {
                    field: "error_length",
                    length: text_len,
                    length_max: ERR_MESSAGE_LENGTH_MAX,
                });
            }
            let end = ERR_HEADER_LENGTH + text_len as usize;
            if end > frame_length as usize {
                return Err(FrameError::FrameLength(frame_length));
            }
            Ok((
                Frame::Error(ErrorFrame {
                    session_id: read_i32(b, 8),
                    stream_id: read_i32(b, 12),
                    receiver_id: read_i64(b, 16),
                    group_tag: (fl & flags::ERR_HAS_GROUP_TAG != 0).then(|| read_i64(b, 24)),
                    error_code: read_i32(b, 32),
                    message: &b[ERR_HEADER_LENGTH..end],
                }),
                b.len(),
            ))
        }
        other => Err(FrameError::UnsupportedType(other)),
    }
}

fn check_length(frame_length: i32, min: usize, available: usize) -> Result<(), FrameError> {
    if frame_length < min as i32 || frame_length as usize > available {
        Err(FrameError::FrameLength(frame_length))
    } else {
        Ok(())
    }
}

/// Iterates the frames of one datagram. Stops at the first bad frame (yielding its error once)
/// or when the bytes run out.
pub struct Frames<'a> {
    rest: &'a [u8],
}

impl<'a> Frames<'a> {
    /// Starts iterating `datagram`.
    pub fn new(datagram: &'a [u8]) -> Self {
        Frames { rest: datagram }
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match decode(self.rest) {
            Ok((frame, used)) => {
                self.rest = self.rest.get(used.max(1)..).unwrap_or(&[]);
                Some(Ok(frame))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_header_fields_sit_at_the_spec_offsets() {
        let h = DataHeader {
            frame_length: 0x0102_0304,
            flags: flags::UNFRAGMENTED,
            frame_type: frame_type::DATA,
            term_offset: 0x1122_3340,
            session_id: 0x0A0B_0C0D,
            stream_id: 0x1A1B_1C1D,
            term_id: 0x2A2B_2C2D,
            reserved_value: 0x0102_0304_0506_0708,
        };
        let mut b = [0u8; 32];
        h.write(&mut b);
        assert_eq!(&b[0..4], &[0x04, 0x03, 0x02, 0x01]);
        assert_eq!(b[4], 0, "version");
        assert_eq!(b[5], 0xC0, "flags");
        assert_eq!(&b[6..8], &[0x01, 0x00], "type");
        assert_eq!(&b[8..12], &[0x40, 0x33, 0x22, 0x11]);
        assert_eq!(&b[12..16], &[0x0D, 0x0C, 0x0B, 0x0A]);
        assert_eq!(&b[16..20], &[0x1D, 0x1C, 0x1B, 0x1A]);
        assert_eq!(&b[20..24], &[0x2D, 0x2C, 0x2B, 0x2A]);
        assert_eq!(&b[24..32], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(DataHeader::read_unchecked(&b), h);
        assert_eq!(h.to_bytes()[..], b[..DATA_HEADER_LENGTH]);
    }

    #[test]
    fn type_codes_and_flags_match_the_specification() {
        assert_eq!(
            [
                frame_type::PAD,
                frame_type::DATA,
                frame_type::NAK,
                frame_type::SM,
                frame_type::ERR,
                frame_type::SETUP,
                frame_type::RTTM,
                frame_type::RES,
                frame_type::ATS_DATA,
                frame_type::ATS_SETUP,
                frame_type::ATS_SM,
                frame_type::RSP_SETUP,
                frame_type::EXT
            ],
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0xFFFF]
        );
        assert_eq!((flags::BEGIN, flags::END, flags::EOS), (0x80, 0x40, 0x20));
        assert_eq!((flags::SM_SEND_SETUP, flags::SM_EOS), (0x80, 0x40));
        assert_eq!(flags::RTTM_REPLY, 0x80);
        assert_eq!(flags::ERR_HAS_GROUP_TAG, 0x08);
    }

    #[test]
    fn setup_frame_is_40_bytes_with_fields_at_spec_offsets() {
        let s = Setup {
            flags: 0,
            term_offset: 64,
            session_id: 7,
            stream_id: 8,
            initial_term_id: 9,
            active_term_id: 10,
            term_length: 65536,
            mtu: 1408,
            ttl: 3,
        };
        let b = s.encode();
        assert_eq!(read_i32(&b, 0), 40);
        assert_eq!(read_u16(&b, 6), 5);
        let fields: Vec<i32> = (8..40).step_by(4).map(|o| read_i32(&b, o)).collect();
        assert_eq!(fields, vec![64, 7, 8, 9, 10, 65536, 1408, 3]);
        assert_eq!(decode(&b).unwrap(), (Frame::Setup(s), 40));
    }

    #[test]
    fn status_message_is_36_bytes_or_44_with_a_group_tag() {
        let mut sm = StatusMessage {
            flags: flags::SM_SEND_SETUP,
            session_id: 1,
            stream_id: 2,
            consumption_term_id: 3,
            consumption_term_offset: 4,
            receiver_window: 5,
            receiver_id: 0x0607_0809_0A0B_0C0D,
            group_tag: None,
        };
        let mut b = [0u8; SM_WITH_GROUP_TAG_LENGTH];
        assert_eq!(sm.encode(&mut b), 36);
        assert_eq!(read_i32(&b, 0), 36);
        assert_eq!(b[5], 0x80);
        assert_eq!(read_u16(&b, 6), 3);
        let fields: Vec<i32> = (8..28).step_by(4).map(|o| read_i32(&b, o)).collect();
        assert_eq!(fields, vec![1, 2, 3, 4, 5]);
        assert_eq!(read_i64(&b, 28), 0x0607_0809_0A0B_0C0D);
        assert_eq!(decode(&b[..36]).unwrap().0, Frame::StatusMessage(sm));
        sm.group_tag = Some(-99);
        assert_eq!(sm.encode(&mut b), 44);
        assert_eq!(read_i64(&b, 36), -99);
        assert_eq!(decode(&b).unwrap().0, Frame::StatusMessage(sm));
    }

    #[test]
    fn nak_is_28_bytes_with_fields_at_spec_offsets() {
        let n = Nak {
            session_id: 11,
            stream_id: 12,
            term_id: 13,
            term_offset: 1024,
            length: 96,
        };
        let b = n.encode();
        assert_eq!(read_i32(&b, 0), 28);
        assert_eq!(read_u16(&b, 6), 2);
        let fields: Vec<i32> = (8..28).step_by(4).map(|o| read_i32(&b, o)).collect();
        assert_eq!(fields, vec![11, 12, 13, 1024, 96]);
        assert_eq!(decode(&b).unwrap().0, Frame::Nak(n));
    }

    #[test]
    fn rttm_is_40_bytes_with_fields_at_spec_offsets() {
        let r = Rttm {
            flags: flags::RTTM_REPLY,
            session_id: 1,
            stream_id: 2,
            echo_timestamp: 3,
            reception_delta: 4,
            receiver_id: 5,
        };
        let b = r.encode();
        assert_eq!(read_i32(&b, 0), 40);
        assert_eq!(b[5], 0x80);
        assert_eq!(read_u16(&b, 6), 6);
        assert_eq!(
            (read_i32(&b, 8), read_i32(&b, 12)),
            (1, 2),
            "session, stream"
        );
        assert_eq!(
            (read_i64(&b, 16), read_i64(&b, 24), read_i64(&b, 32)),
            (3, 4, 5)
        );
        assert_eq!(decode(&b).unwrap().0, Frame::Rttm(r));
    }

    #[test]
    fn error_frame_has_a_40_byte_header_then_its_text() {
        let e = ErrorFrame {
            session_id: 1,
            stream_id: 2,
            receiver_id: 3,
            group_tag: Some(4),
            error_code: 5,
            message: b"fell behind",
        };
        let mut b = [0u8; ERR_HEADER_LENGTH + ERR_MESSAGE_LENGTH_MAX];
        let len = e.encode(&mut b);
        assert_eq!(len, 51);
        assert_eq!(read_i32(&b, 0), 51);
        assert_eq!(b[5], 0x08);
        assert_eq!(read_u16(&b, 6), 4);
        assert_eq!((read_i32(&b, 8), read_i32(&b, 12)), (1, 2));
        assert_eq!((read_i64(&b, 16), read_i64(&b, 24)), (3, 4));
        assert_eq!((read_i32(&b, 32), read_i32(&b, 36)), (5, 11));
        assert_eq!(&b[40..51], b"fell behind");
        assert_eq!(decode(&b[..len]).unwrap().0, Frame::Error(e));
    }

    #[test]
    fn an_error_frame_whose_text_overruns_its_frame_or_the_maximum_is_malformed() {
        let e = ErrorFrame {
            session_id: 1,
            stream_id: 2,
            receiver_id: 3,
            group_tag: None,
            error_code: error_code::IMAGES_FULL,
            message: b"refused",
        };
        let mut b = [0u8; ERR_HEADER_LENGTH + ERR_MESSAGE_LENGTH_MAX + 1];
        let frame: &mut [u8; ERR_HEADER_LENGTH + ERR_MESSAGE_LENGTH_MAX] = (&mut b
            [..ERR_HEADER_LENGTH + ERR_MESSAGE_LENGTH_MAX])
            .try_into()
            .unwrap();
        let len = e.encode(frame);
        assert_eq!(decode(&b[..len]).unwrap().0, Frame::Error(e));
        // Text longer than the frame says.
        let mut bad = b;
        put_i32(&mut bad, 36, 8);
        assert_eq!(decode(&bad[..len]), Err(FrameError::FrameLength(47)));
        put_i32(&mut bad, 36, -1);
        assert_eq!(
            decode(&bad[..len]),
            Err(FrameError::NegativeField("error_length"))
        );
        // Text over the maximum, even in a frame that holds it.
        let mut long = [0u8; ERR_HEADER_LENGTH + ERR_MESSAGE_LENGTH_MAX + 1];
        long[..len].copy_from_slice(&b[..len]);
        let long_length = long.len() as i32;
        put_i32(&mut long, 0, long_length);
        put_i32(&mut long, 36, ERR_MESSAGE_LENGTH_MAX as i32 + 1);
        assert_eq!(
            decode(&long),
            Err(FrameError::LengthOverMax {
                field: "error_length",
                length: 1024,
                length_max: ERR_MESSAGE_LENGTH_MAX
            })
        );
        // A header cut short, and a frame length beyond the datagram.
        assert!(matches!(
            decode(&b[..ERR_HEADER_LENGTH - 1]),
            Err(FrameError::Truncated { .. })
        ));
        assert_eq!(
            decode(&b[..len - 1]),
            Err(FrameError::FrameLength(len as i32))
        );
    }

    #[test]
    fn refusal_reasons_map_to_their_error_codes_and_back() {
        for reason in [
            RefusalReason::TermLengthOverCap,
            RefusalReason::ImagesFull,
            RefusalReason::Other(13),
        ] {
            assert_eq!(RefusalReason::from_code(reason.code()), reason);
        }
        assert_eq!(
            (error_code::TERM_LENGTH_OVER_CAP, error_code::IMAGES_FULL),
            (1001, 1002)
        );
    }

    #[test]
    fn a_datagram_of_batched_data_frames_iterates_at_aligned_offsets() {
        let mut dg = vec![0u8; 128 + 32];
        for (i, off) in [0usize, 64].iter().enumerate() {
            DataHeader {
                frame_length: 32 + 20,
                flags: flags::UNFRAGMENTED,
                frame_type: frame_type::DATA,
                term_offset: *off as i32,
                session_id: 1,
                stream_id: 2,
                term_id: 3,
                reserved_value: i as i64,
            }
            .write(&mut dg[*off..]);
        }
        DataHeader {
            frame_length: 65536 - 128,
            flags: 0,
            frame_type: frame_type::PAD,
            term_offset: 128,
            session_id: 1,
            stream_id: 2,
            term_id: 3,
            reserved_value: 0,
        }
        .write(&mut dg[128..]);
        let frames: Vec<_> = Frames::new(&dg).collect();
        assert_eq!(frames.len(), 3);
        assert!(matches!(frames[0], Ok(Frame::Data { frame, .. }) if frame.len() == 52));
        assert!(matches!(frames[2], Ok(Frame::Pad(h)) if h.term_offset == 128));
    }

    #[test]
    fn lying_truncated_and_foreign_frames_are_errors_not_panics() {
        let mut b = [0u8; 32];
        DataHeader {
            frame_length: 500,
            flags: 0,
            frame_type: frame_type::DATA,
            term_offset: 0,
            session_id: 0,
            stream_id: 0,
            term_id: 0,
            reserved_value: 0,
        }
        .write(&mut b);
        assert_eq!(decode(&b), Err(FrameError::FrameLength(500)));
        assert!(matches!(decode(&b[..7]), Err(FrameError::Truncated { .. })));
        b[4] = 1;
        assert_eq!(decode(&b), Err(FrameError::Version(1)));
        b[4] = 0;
        b[6] = 0x07;
        assert_eq!(decode(&b), Err(FrameError::UnsupportedType(7)));
        b[6] = 1;
        b[8] = 3;
        assert_eq!(decode(&b), Err(FrameError::TermOffset(3)));
    }
}
