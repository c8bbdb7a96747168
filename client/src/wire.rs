//! The session envelope between a client and a node, over the transport.
//!
//! Owns: the stream ids, the query correlation-id space, and encode/decode helpers for the
//! four envelope messages of `schemas/ledger.xml` (`SessionConnect`, `SessionEvent`,
//! `RequestHeader`, `ReplyHeader`). Kept small and dependency-free beyond `schemas` so that
//! the node (`sequencer::node`, which may not depend on this crate) can mirror it.
//!
//! The protocol:
//! - The node subscribes on its listen address, stream [`INGRESS_STREAM_ID`]. Each client has
//!   one transport publication to it and one subscription on its own reply address, stream
//!   [`REPLY_STREAM_ID`].
//! - The client's first message is `SessionConnect` (a random non-zero `clientSessionId`, the
//!   reply stream id and the reply address as `"ip:port"`); the node answers with a
//!   `SessionEvent` (`connected`, `rejected`, `not_leader` or `closed`), with no reply header.
//! - Every request is one transport message: `RequestHeader` immediately followed by the
//!   header-prefixed command or query ([`encode_request`], [`decode_request`]).
//! - Every reply is one transport message: `ReplyHeader` immediately followed by the reply
//!   ([`encode_reply_header`], [`decode_from_node`]).
//!
//! Invariants: commands carry `clientSeq` 1, 2, 3, ... in order per session and a retry reuses
//! its `clientSeq`; queries carry correlation ids with [`QUERY_SEQ_BIT`] set, so a reply's
//! `clientSeq` alone says whether it answers a command or a query.

use schemas::ledger::{
    self, ReplyHeaderDecoder, ReplyHeaderEncoder, RequestHeaderDecoder, RequestHeaderEncoder,
    SessionConnectDecoder, SessionConnectEncoder, SessionEventCode, SessionEventDecoder,
    SessionEventEncoder,
};
use schemas::{DecodeError, EncodeError};

pub use schemas::envelope::{ENVELOPE_HEADER_LENGTH, INGRESS_STREAM_ID, REPLY_STREAM_ID};
/// Set in the `clientSeq` of every query: queries use correlation ids from their own space,
/// so they never collide with command sequence numbers (which stay below 2^63).
pub const QUERY_SEQ_BIT: u64 = 1 << 63;
/// Bytes of the longest `SessionConnect` or `SessionEvent` text (reply address or detail)
/// this module encodes; longer text is cut (at a character boundary).
pub const SESSION_TEXT_LENGTH_MAX: usize = 256;
/// Bytes that always hold an encoded `SessionConnect` or `SessionEvent`.
pub const SESSION_MESSAGE_LENGTH_MAX: usize =
    ledger::HEADER_LENGTH + 17 + 4 + SESSION_TEXT_LENGTH_MAX;

const _: () = assert!(
    RequestHeaderEncoder::BLOCK_LENGTH as usize + ledger::HEADER_LENGTH == ENVELOPE_HEADER_LENGTH
);
const _: () = assert!(
    ReplyHeaderEncoder::BLOCK_LENGTH as usize + ledger::HEADER_LENGTH == ENVELOPE_HEADER_LENGTH
);

/// Whether `client_seq` is a query's correlation id rather than a command's sequence number.
pub fn is_query_seq(client_seq: u64) -> bool {
    client_seq & QUERY_SEQ_BIT != 0
}

fn cut(text: &str) -> &[u8] {
    let mut end = text.len().min(SESSION_TEXT_LENGTH_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text.as_bytes()[..end]
}

/// A decoded `SessionConnect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    /// The client's session id (non-zero).
    pub client_session_id: u64,
    /// Stream id the client subscribes to for replies.
    pub response_stream_id: i32,
    /// Where replies go, `"ip:port"`.
    pub response_channel: String,
}

/// Encodes a `SessionConnect` into `buf`; returns the length.
///
/// # Errors
/// `buf` too small (use [`SESSION_MESSAGE_LENGTH_MAX`]).
pub fn encode_connect(buf: &mut [u8], connect: &Connect) -> Result<usize, EncodeError> {
    let mut e = SessionConnectEncoder::wrap_with_header(buf)?;
    e.set_client_session_id(connect.client_session_id)
        .set_response_stream_id(connect.response_stream_id);
    e.set_response_channel(cut(&connect.response_channel))?;
    e.finish()
}

/// A decoded `SessionEvent`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionEvent {
    /// The session it is about.
    pub client_session_id: u64,
    /// What happened (`None`: a code this build does not know).
    pub code: Option<SessionEventCode>,
    /// The raw code.
    pub code_raw: u8,
    /// The node's applied position when it answered.
    pub position: u64,
    /// Why, for anything but `connected`.
    pub detail: String,
}

impl SessionEvent {
    /// The code's snake_case name (`unknown(N)` for an unknown code).
    pub fn code_name(&self) -> String {
        self.code.map_or_else(
            || format!("unknown({})", self.code_raw),
            |c| c.name().to_string(),
        )
    }
}

/// Encodes a `SessionEvent` into `buf`; returns the length.
///
/// # Errors
/// `buf` too small (use [`SESSION_MESSAGE_LENGTH_MAX`]).
pub fn encode_session_event(buf: &mut [u8], event: &SessionEvent) -> Result<usize, EncodeError> {
    let mut e = SessionEventEncoder::wrap_with_header(buf)?;
    e.set_client_session_id(event.client_session_id)
        .set_code_raw(event.code.map_or(event.code_raw, |c| c.raw()))
        .set_position(event.position);
    e.set_detail(cut(&event.detail))?;
    e.finish()
}

/// Writes a `RequestHeader` into `buf[..ENVELOPE_HEADER_LENGTH]`; the request's own
/// header-prefixed message goes right after it.
///
/// # Errors
/// `buf` shorter than [`ENVELOPE_HEADER_LENGTH`].
pub fn encode_request_header(
    buf: &mut [u8],
    client_session_id: u64,
    client_seq: u64,
) -> Result<usize, EncodeError> {
    let mut e = RequestHeaderEncoder::wrap_with_header(buf)?;
    e.set_client_session_id(client_session_id)
        .set_client_seq(client_seq);
    e.finish()
}

/// Encodes a whole request message: `RequestHeader` then `request`. Returns the length.
///
/// # Errors
/// `buf` too small, or the request does not encode (see [`crate::Request::encode`]).
pub fn encode_request(
    buf: &mut [u8],
    client_session_id: u64,
    client_seq: u64,
    request: &crate::Request,
) -> Result<usize, EncodeError> {
    let head = encode_request_header(buf, client_session_id, client_seq)?;
    let body = buf.get_mut(head..).ok_or(EncodeError::BufferTooShort {
        needed: head + 1,
        available: head,
    })?;
    Ok(head + request.encode(body)?)
}

/// Writes a `ReplyHeader` into `buf[..ENVELOPE_HEADER_LENGTH]`; the header-prefixed reply
/// goes right after it.
///
/// # Errors
/// `buf` shorter than [`ENVELOPE_HEADER_LENGTH`].
pub fn encode_reply_header(
    buf: &mut [u8],
    client_session_id: u64,
    client_seq: u64,
) -> Result<usize, EncodeError> {
    let mut e = ReplyHeaderEncoder::wrap_with_header(buf)?;
    e.set_client_session_id(client_session_id)
        .set_client_seq(client_seq);
    e.finish()
}

/// An envelope header: whose request, which sequence number or correlation id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The client session.
    pub client_session_id: u64,
    /// Command sequence number, or query correlation id ([`QUERY_SEQ_BIT`] set).
    pub client_seq: u64,
}

/// One transport message a node receives on [`INGRESS_STREAM_ID`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToNode<'a> {
    /// A session opening.
    Connect(Connect),
    /// A request: its envelope and the header-prefixed command or query bytes.
    Request(Envelope, &'a [u8]),
}

/// One transport message a client receives on [`REPLY_STREAM_ID`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromNode<'a> {
    /// News about a session.
    Event(SessionEvent),
    /// A reply: its envelope and the header-prefixed reply bytes
    /// (decode with [`crate::Response::decode`]).
    Reply(Envelope, &'a [u8]),
}

/// A message that is not what the envelope expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Malformed SBE.
    Decode(DecodeError),
    /// A well-formed message of the wrong kind for this direction.
    Unexpected {
        /// Its template id.
        template_id: u16,
    },
}

impl From<DecodeError> for EnvelopeError {
    fn from(e: DecodeError) -> Self {
        EnvelopeError::Decode(e)
    }
}

impl std::fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnvelopeError::Decode(e) => write!(f, "malformed envelope: {e}"),
            EnvelopeError::Unexpected { template_id } => {
                write!(f, "template id {template_id} is not expected here")
            }
        }
    }
}

impl std::error::Error for EnvelopeError {}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The bytes after an envelope header whose own block is `block_length` long.
fn body(bytes: &[u8], block_length: usize) -> Result<&[u8], DecodeError> {
    let start = ledger::HEADER_LENGTH + block_length;
    bytes.get(start..).ok_or(DecodeError::Truncated {
        offset: 0,
        needed: start,
        available: bytes.len(),
    })
}

/// Decodes a message a node received (node side).
///
/// # Errors
/// Malformed bytes, or a message that is neither `SessionConnect` nor `RequestHeader`.
pub fn decode_request(bytes: &[u8]) -> Result<ToNode<'_>, EnvelopeError> {
    let header = ledger::decode_header(bytes)?;
    match header.template_id {
        SessionConnectDecoder::TEMPLATE_ID => {
            let m = SessionConnectDecoder::wrap_with_header(bytes)?;
            Ok(ToNode::Connect(Connect {
                client_session_id: m.client_session_id(),
                response_stream_id: m.response_stream_id(),
                response_channel: text(m.response_channel()?),
            }))
        }
        RequestHeaderDecoder::TEMPLATE_ID => {
            let m = RequestHeaderDecoder::wrap_with_header(bytes)?;
            let envelope = Envelope {
                client_session_id: m.client_session_id(),
                client_seq: m.client_seq(),
            };
            Ok(ToNode::Request(
                envelope,
                body(bytes, m.acting_block_length())?,
            ))
        }
        template_id => Err(EnvelopeError::Unexpected { template_id }),
    }
}

/// Decodes a message a client received (client side).
///
/// # Errors
/// Malformed bytes, or a message that is neither `SessionEvent` nor `ReplyHeader`.
pub fn decode_from_node(bytes: &[u8]) -> Result<FromNode<'_>, EnvelopeError> {
    let header = ledger::decode_header(bytes)?;
    match header.template_id {
        SessionEventDecoder::TEMPLATE_ID => {
            let m = SessionEventDecoder::wrap_with_header(bytes)?;
            Ok(FromNode::Event(SessionEvent {
                client_session_id: m.client_session_id(),
                code: m.code(),
                code_raw: m.code_raw(),
                position: m.position(),
                detail: text(m.detail()?),
            }))
        }
        ReplyHeaderDecoder::TEMPLATE_ID => {
            let m = ReplyHeaderDecoder::wrap_with_header(bytes)?;
            let envelope = Envelope {
                client_session_id: m.client_session_id(),
                client_seq: m.client_seq(),
            };
            Ok(FromNode::Reply(
                envelope,
                body(bytes, m.acting_block_length())?,
            ))
        }
        template_id => Err(EnvelopeError::Unexpected { template_id }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Request, Response};
    use schemas::ledger::{CommandReplyEncoder, ResultCode};

    #[test]
    fn a_connect_round_trips_through_the_node_side_decoder() {
        let connect = Connect {
            client_session_id: 0xDEAD_BEEF,
            response_stream_id: REPLY_STREAM_ID,
            response_channel: "127.0.0.1:40123".into(),
        };
        let mut buf = [0u8; SESSION_MESSAGE_LENGTH_MAX];
        let len = encode_connect(&mut buf, &connect).unwrap();
        assert_eq!(
            decode_request(&buf[..len]).unwrap(),
            ToNode::Connect(connect)
        );
    }

    #[test]
    fn a_request_is_the_header_immediately_followed_by_the_command() {
        let request = Request::Deposit {
            id: 7,
            account_id: 10,
            amount: 500,
        };
        let mut buf = [0u8; 256];
        let len = encode_request(&mut buf, 99, 3, &request).unwrap();
        let command = request.to_bytes().unwrap();
        assert_eq!(len, ENVELOPE_HEADER_LENGTH + command.len());
        assert_eq!(&buf[ENVELOPE_HEADER_LENGTH..len], &command[..]);
        match decode_request(&buf[..len]).unwrap() {
            ToNode::Request(envelope, body) => {
                assert_eq!(
                    envelope,
                    Envelope {
                        client_session_id: 99,
                        client_seq: 3
                    }
                );
                assert_eq!(body, &command[..]);
            }
            other => panic!("expected a request, got {other:?}"),
        }
    }

    #[test]
    fn a_reply_and_a_session_event_decode_on_the_client_side() {
        let mut buf = [0u8; 256];
        let head = encode_reply_header(&mut buf, 99, QUERY_SEQ_BIT | 1).unwrap();
        let mut e = CommandReplyEncoder::wrap_with_header(&mut buf[head..]).unwrap();
        e.set_position(5)
            .set_client_seq(1)
            .set_result(ResultCode::Ok);
        let len = head + e.finish().unwrap();
        match decode_from_node(&buf[..len]).unwrap() {
            FromNode::Reply(envelope, body) => {
                assert!(is_query_seq(envelope.client_seq));
                assert!(matches!(
                    Response::decode(body).unwrap(),
                    Response::Command { position: 5, .. }
                ));
            }
            other => panic!("expected a reply, got {other:?}"),
        }

        let event = SessionEvent {
            client_session_id: 99,
            code: Some(SessionEventCode::Rejected),
            code_raw: 1,
            position: 12,
            detail: "too many sessions".into(),
        };
        let len = encode_session_event(&mut buf, &event).unwrap();
        assert_eq!(
            decode_from_node(&buf[..len]).unwrap(),
            FromNode::Event(event)
        );
    }

    #[test]
    fn truncated_or_misdirected_messages_are_errors_not_panics() {
        let mut buf = [0u8; 64];
        let len = encode_request_header(&mut buf, 1, 1).unwrap();
        for cut_at in 0..len {
            assert!(decode_request(&buf[..cut_at]).is_err());
            assert!(decode_from_node(&buf[..cut_at]).is_err());
        }
        assert_eq!(
            decode_from_node(&buf[..len]),
            Err(EnvelopeError::Unexpected { template_id: 42 })
        );
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        let detail = "é".repeat(SESSION_TEXT_LENGTH_MAX);
        let event = SessionEvent {
            client_session_id: 1,
            code: Some(SessionEventCode::Closed),
            code_raw: 3,
            position: 0,
            detail,
        };
        let mut buf = [0u8; SESSION_MESSAGE_LENGTH_MAX];
        let len = encode_session_event(&mut buf, &event).unwrap();
        let FromNode::Event(decoded) = decode_from_node(&buf[..len]).unwrap() else {
            panic!("expected an event");
        };
        assert_eq!(decoded.detail.len(), SESSION_TEXT_LENGTH_MAX);
        assert_eq!(decoded.code_name(), "closed");
    }
}
