//! What can go wrong between a client and a node, each error saying what to do about it.
//!
//! Owns: [`ClientError`]. Business rejections (`insufficient_funds`, ...) are not errors: they
//! come back as a [`crate::Response`] with a non-`ok` result.

use std::net::SocketAddr;

/// Why a connection or a request failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// The node never acknowledged the transport session or never answered `SessionConnect`,
    /// or its transport stopped acknowledging while requests were in flight (they fail after
    /// one timeout). Fix: start the node, or point the client at the address it listens on.
    NotConnected {
        /// The node address tried.
        node: SocketAddr,
        /// How long the client waited, in milliseconds.
        waited_ms: u64,
    },
    /// The node's transport refused the client's stream and said why (an ERR frame), e.g. it
    /// holds as many client streams as it may (`it holds 64 images, its most (IMAGES_MAX): one
    /// must end first`), or the client's term length is over the node's cap. Fix: depends on
    /// `reason`; the first kind passes once other clients disconnect.
    Refused {
        /// The node address tried.
        node: SocketAddr,
        /// The node's words.
        reason: String,
    },
    /// The node answered `SessionConnect` with something else than `connected`, or closed the
    /// session later. Fix: depends on `code` (`not_leader`: connect to the leader;
    /// `rejected`: see `detail`; `closed`: reconnect).
    Session {
        /// The `SessionEventCode` name.
        code: String,
        /// The node's reason.
        detail: String,
    },
    /// No reply after every attempt. Retrying later with the same ids is safe: a command is
    /// never applied twice.
    Timeout {
        /// The request's `clientSeq` (commands) or correlation id (queries).
        client_seq: u64,
        /// Attempts sent.
        attempts: u32,
        /// Wait per attempt, in milliseconds.
        timeout_ms: u64,
    },
    /// Already `in_flight_max` requests in flight, or the transport is flow-controlled.
    /// Fix: poll for replies, then send again.
    BackPressured {
        /// The configured maximum of requests in flight.
        in_flight_max: usize,
    },
    /// The node sent bytes that are not a valid reply.
    Malformed(String),
    /// The request does not encode (e.g. too many transfers in one command).
    Encode(String),
    /// A configuration value is unusable (e.g. an IPv6 address: the transport is IPv4).
    Config(String),
    /// A socket could not be opened or bound.
    Io(String),
    /// [`crate::Client::wait`] on a request that is not in flight (its completion was
    /// already taken, or it was never started).
    NotInFlight {
        /// The request's `clientSeq` or correlation id.
        client_seq: u64,
    },
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::NotConnected { node, waited_ms } => write!(
                f,
                "no answer from a node at {node} within {waited_ms} ms: is `tally node` running \
                 at {node}? (start one with `tally node --listen {node}`, or pass --connect ADDR)"
            ),
            ClientError::Refused { node, reason } => {
                write!(f, "the node at {node} refused the connection: {reason}")
            }
            ClientError::Session { code, detail } => {
                let hint = match code.as_str() {
                    "not_leader" => ": connect to the leader instead",
                    "closed" => ": the node closed the session; connect again",
                    _ => "",
                };
                if detail.is_empty() {
                    write!(f, "the node answered `{code}`{hint}")
                } else {
                    write!(f, "the node answered `{code}` ({detail}){hint}")
                }
            }
            ClientError::Timeout {
                client_seq,
                attempts,
                timeout_ms,
            } => write!(
                f,
                "no reply to request {client_seq} after {attempts} attempts of {timeout_ms} ms: \
                 the node may be overloaded or gone; retrying with the same ids is safe \
                 (try a larger --timeout-ms or --retries)"
            ),
            ClientError::BackPressured { in_flight_max } => write!(
                f,
                "back-pressured: {in_flight_max} requests already in flight; poll for replies \
                 before sending more"
            ),
            ClientError::Malformed(e) => write!(
                f,
                "malformed reply from the node ({e}): is the node the same tally version?"
            ),
            ClientError::Encode(e) => write!(f, "the request does not encode: {e}"),
            ClientError::Config(e) => write!(f, "bad client configuration: {e}"),
            ClientError::Io(e) => write!(f, "socket error: {e}"),
            ClientError::NotInFlight { client_seq } => write!(
                f,
                "request {client_seq} is not in flight: its completion was already taken"
            ),
        }
    }
}

impl std::error::Error for ClientError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_connected_says_to_start_the_node_at_that_address() {
        let e = ClientError::NotConnected {
            node: "127.0.0.1:7400".parse().unwrap(),
            waited_ms: 2000,
        };
        let text = e.to_string();
        assert!(
            text.contains("is `tally node` running at 127.0.0.1:7400?"),
            "{text}"
        );
    }

    #[test]
    fn refused_names_the_nodes_reason() {
        let e = ClientError::Refused {
            node: "127.0.0.1:7400".parse().unwrap(),
            reason: "term length 128 MiB over its cap 64 MiB (image_term_length_max)".into(),
        };
        assert_eq!(
            e.to_string(),
            "the node at 127.0.0.1:7400 refused the connection: term length 128 MiB over its \
             cap 64 MiB (image_term_length_max)"
        );
    }

    #[test]
    fn not_leader_says_to_connect_to_the_leader() {
        let e = ClientError::Session {
            code: "not_leader".into(),
            detail: String::new(),
        };
        assert!(e.to_string().contains("connect to the leader"));
    }
}
