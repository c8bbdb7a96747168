//! Limits and runtime configuration of publications and subscriptions.
//!
//! Owns: every limit of the crate as a named const with its unit, the [`Config`] with its
//! defaults, and [`Config::validate`], which checks values and how they relate once, at
//! creation, naming the key and the value on failure.

use crate::frame::{align_frame, DATA_HEADER_LENGTH, ERR_HEADER_LENGTH, FRAME_ALIGNMENT};

/// Default largest datagram, in bytes (Aeron's default MTU; fits a 1,500-byte Ethernet frame).
pub const MTU_DEFAULT: usize = 1408;
/// Smallest MTU accepted, in bytes: a header plus a useful payload.
pub const MTU_MIN: usize = 64;
/// Largest MTU accepted, in bytes: the largest UDP payload rounded down to the frame alignment.
pub const MTU_MAX: usize = 65504;
/// Default term length, in bytes (three terms make a log).
pub const TERM_LENGTH_DEFAULT: usize = 4 * 1024 * 1024;
/// Smallest term length, in bytes (Aeron's minimum).
pub const TERM_LENGTH_MIN: usize = 64 * 1024;
/// Largest term length, in bytes (Aeron's maximum: positions stay in i32 term offsets).
pub const TERM_LENGTH_MAX: usize = 1024 * 1024 * 1024;
/// Default of [`Config::image_term_length_max`]: 64 MiB, the term a 16 MiB message needs.
pub const IMAGE_TERM_LENGTH_MAX_DEFAULT: usize = 64 * 1024 * 1024;
/// Terms in a log buffer: one active, one kept for retransmits, one being cleaned.
pub const TERM_COUNT: usize = 3;
/// Upper bound of every interval, delay, timeout and linger in [`Config`]: one hour. Deadlines
/// are the current time plus one of them, so this keeps every sum far from overflowing.
pub const TIMER_MAX_NS: u64 = 3_600_000_000_000;
/// Entries in a sender's retransmit table; NAKs beyond it are ignored and counted.
pub const RETRANSMITS_MAX: usize = 16;
/// Receivers a multicast sender tracks for flow control; more are ignored and counted.
pub const FLOW_CONTROL_RECEIVERS_MAX: usize = 64;
/// Images (publishing sessions) one subscription accepts at once.
pub const IMAGES_MAX: usize = 64;

/// Bytes a receiver's `poll_transmit` buffer must hold: its longest control datagram, an ERR
/// frame refusing a SETUP with the longest reason text.
pub const RECEIVER_TRANSMIT_LENGTH_MIN: usize = 256;
/// Longest reason text of the ERR frame a receiver refuses a SETUP with, in bytes (the
/// figures fit in well under it).
pub const REFUSAL_TEXT_LENGTH_MAX: usize = RECEIVER_TRANSMIT_LENGTH_MIN - ERR_HEADER_LENGTH;
/// ERR frames a subscription sends at most per `setup_interval_ns` in reply to refused SETUPs,
/// all publications together (each one gets at most one per interval). Anyone can send a
/// SETUP from a forged source with a new session id each time: this keeps a flood of them
/// from turning the receiver into a source of replies aimed at someone else.
pub const REFUSAL_REPLIES_PER_INTERVAL_MAX: u32 = 4;
/// The shortest interval the ERR reply caps count over, whatever `setup_interval_ns` says
/// (a sender's knob, 0 allowed): without it a subscription so configured would answer every
/// refused SETUP.
pub const REFUSAL_INTERVAL_MIN_NS: u64 = 1_000_000;
/// Publications whose refusal a subscription remembers, to answer each at most once per
/// `setup_interval_ns`; the oldest is forgotten first.
pub const REFUSALS_TRACKED_MAX: usize = IMAGES_MAX;

const _: () = assert!(REFUSAL_TEXT_LENGTH_MAX <= crate::frame::ERR_MESSAGE_LENGTH_MAX);

/// How a multicast sender derives its send limit from receivers' status messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlowControl {
    /// One receiver: its position plus window.
    #[default]
    Unicast,
    /// The slowest live receiver sets the pace.
    Min,
    /// The fastest live receiver sets the pace; slower ones may fall behind.
    Max,
    /// The slowest live receiver carrying this group tag sets the pace; while none is
    /// tracked, the fastest of the others does (as in Aeron).
    Tagged(i64),
}

/// Configuration of a publication (sender side) or subscription (receiver side).
/// Times are nanoseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Largest datagram sent, in bytes; a multiple of 32 in `MTU_MIN..=MTU_MAX`.
    pub mtu: usize,
    /// Term length in bytes: a power of two in `TERM_LENGTH_MIN..=TERM_LENGTH_MAX`.
    pub term_length: usize,
    /// Largest message a publication accepts, in bytes; at most `term_length / 4`.
    pub message_length_max: usize,
    /// Sender: how far the publisher may run ahead of what was sent, in bytes
    /// (at most `term_length / 2`).
    pub publication_window: usize,
    /// Receiver: window advertised in status messages, in bytes (at most `term_length / 2`;
    /// the socket driver also keeps it within what half of the socket's receive buffer, as
    /// the kernel reports it, holds of full datagrams with the kernel's own per-datagram
    /// overhead counted).
    pub receiver_window: usize,
    /// Sender: flow control strategy.
    pub flow_control: FlowControl,
    /// Receiver: group tag sent in status messages (tagged flow control).
    pub group_tag: Option<i64>,
    /// Sender: SETUP resend interval while not connected. Receiver: a publication whose
    /// SETUP it refused gets at most one ERR frame saying why per this interval.
    pub setup_interval_ns: u64,
    /// Sender: a heartbeat goes out after this long without data.
    pub heartbeat_interval_ns: u64,
    /// Receiver: status message interval when nothing else triggers one.
    pub status_interval_ns: u64,
    /// Receiver: NAK delay after a gap is seen, unicast.
    pub nak_delay_unicast_ns: u64,
    /// Receiver: NAK delay upper bound, multicast (uniformly random below it, for suppression).
    pub nak_delay_multicast_max_ns: u64,
    /// Receiver: interval before re-sending a NAK for a gap that is still open.
    pub nak_retry_ns: u64,
    /// Sender: after retransmitting a range, NAKs for it are ignored for this long (coalescing).
    pub retransmit_linger_ns: u64,
    /// Sender: a receiver silent for this long leaves the flow-control set; with none left
    /// the publication is not connected.
    pub receiver_timeout_ns: u64,
    /// Receiver: the longest term a publication's SETUP may announce. Each image holds three
    /// terms in memory, mapped in full when it is created, so a SETUP (which anyone who can
    /// reach the port may send) makes this subscription allocate up to three times this, and
    /// all its images together at most [`IMAGES_MAX`] times that. Longer ones are refused,
    /// counted (`SetupsRefused`) and answered with an ERR frame saying so. Default
    /// [`IMAGE_TERM_LENGTH_MAX_DEFAULT`], or the config's own `term_length` if longer
    /// ([`Config::with_term_length`]).
    pub image_term_length_max: usize,
    /// Receiver: an image silent for this long is closed.
    pub image_liveness_timeout_ns: u64,
    /// Sender: how long a closing publication keeps sending end-of-stream heartbeats while
    /// waiting for every receiver to acknowledge the end (by leaving, once it has it all).
    pub close_linger_ns: u64,
    /// Whether this endpoint is multicast (chooses the NAK delay).
    pub multicast: bool,
    /// Multicast TTL advertised in SETUP.
    pub ttl: u8,
    /// Socket driver, sender: hand the kernel a run of equal datagrams lying back to back in
    /// the term in one call (`UDP_SEGMENT`): the same datagrams on the wire, a fraction of
    /// the per-datagram system cost. Turned off by itself when the kernel or the route
    /// refuses it (e.g. datagrams over a link's MTU). Default on.
    pub udp_segmentation: bool,
    /// Socket driver, receiver: take such runs in one read (`UDP_GRO`), in order straight
    /// into the log (receive slots are then 64 KiB). Off where the kernel lacks it. Default
    /// on.
    pub udp_coalescing: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mtu: MTU_DEFAULT,
            term_length: TERM_LENGTH_DEFAULT,
            message_length_max: TERM_LENGTH_DEFAULT / 4,
            publication_window: TERM_LENGTH_DEFAULT / 2,
            receiver_window: TERM_LENGTH_DEFAULT / 2,
            flow_control: FlowControl::Unicast,
            group_tag: None,
            setup_interval_ns: 10_000_000,
            heartbeat_interval_ns: 10_000_000,
            status_interval_ns: 20_000_000,
            nak_delay_unicast_ns: 50_000,
            nak_delay_multicast_max_ns: 2_000_000,
            nak_retry_ns: 20_000_000,
            retransmit_linger_ns: 10_000_000,
            receiver_timeout_ns: 2_000_000_000,
            image_term_length_max: IMAGE_TERM_LENGTH_MAX_DEFAULT,
            image_liveness_timeout_ns: 5_000_000_000,
            close_linger_ns: 1_000_000_000,
            multicast: false,
            ttl: 1,
            udp_segmentation: true,
            udp_coalescing: true,
        }
    }
}

/// A configuration value out of range, or two values that do not fit together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// A default config with the given term length, and the message length and windows that
    /// follow from it.
    pub fn with_term_length(term_length: usize) -> Self {
        Config {
            term_length,
            message_length_max: (term_length / 4).min(16 * 1024 * 1024),
            publication_window: term_length / 2,
            receiver_window: term_length / 2,
            image_term_length_max: IMAGE_TERM_LENGTH_MAX_DEFAULT.max(term_length),
            ..Config::default()
        }
    }

    /// Largest payload in one frame, in bytes.
    pub fn payload_length_max(&self) -> usize {
        self.mtu - DATA_HEADER_LENGTH
    }

    /// Bytes of the frames a message of `length` bytes takes in a term: one aligned frame
    /// up to `payload_length_max`, else a full MTU per fragment and the rest aligned.
    pub fn frames_length(&self, length: usize) -> usize {
        let payload_max = self.payload_length_max();
        if length <= payload_max {
            return align_frame(length + DATA_HEADER_LENGTH);
        }
        let full = length / payload_max;
        let rest = length % payload_max;
        full * self.mtu
            + if rest > 0 {
                align_frame(rest + DATA_HEADER_LENGTH)
            } else {
                0
            }
    }

    /// Checks every value and their relations.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key, the value and the bound.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |s: String| Err(ConfigError(s));
        if self.mtu < MTU_MIN || self.mtu > MTU_MAX || !self.mtu.is_multiple_of(FRAME_ALIGNMENT) {
            return err(format!(
                "mtu={} must be a multiple of {FRAME_ALIGNMENT} in {MTU_MIN}..={MTU_MAX}",
                self.mtu
            ));
        }
        if !self.term_length.is_power_of_two()
            || self.term_length < TERM_LENGTH_MIN
            || self.term_length > TERM_LENGTH_MAX
        {
            return err(format!(
                "term_length={} must be a power of two in {TERM_LENGTH_MIN}..={TERM_LENGTH_MAX}",
                self.term_length
            ));
        }
        if !self.image_term_length_max.is_power_of_two()
            || self.image_term_length_max < TERM_LENGTH_MIN
            || self.image_term_length_max > TERM_LENGTH_MAX
        {
            return err(format!(
                "image_term_length_max={} must be a power of two in {TERM_LENGTH_MIN}..={TERM_LENGTH_MAX}",
                self.image_term_length_max
            ));
        }
        if self.message_length_max == 0 || self.message_length_max > self.term_length / 4 {
            return err(format!(
                "message_length_max={} must be in 1..=term_length/4={}",
                self.message_length_max,
                self.term_length / 4
            ));
        }
        for (name, v) in [
            ("publication_window", self.publication_window),
            ("receiver_window", self.receiver_window),
        ] {
            if v < self.mtu || v > self.term_length / 2 {
                return err(format!(
                    "{name}={v} must be in mtu={}..=term_length/2={}",
                    self.mtu,
                    self.term_length / 2
                ));
            }
        }
        // The largest message's frames (a header per MTU) must fit in the window at once:
        // a window of only the message's length left that message back-pressured for good.
        let frames_max = self.frames_length(self.message_length_max);
        if self.publication_window < frames_max {
            return err(format!(
                "publication_window={} < {frames_max}, the frames of a message of message_length_max={} at mtu={}: the largest message could never be offered",
                self.publication_window, self.message_length_max, self.mtu
            ));
        }
        for (name, v) in [
            ("setup_interval_ns", self.setup_interval_ns),
            ("heartbeat_interval_ns", self.heartbeat_interval_ns),
            ("status_interval_ns", self.status_interval_ns),
            ("nak_delay_unicast_ns", self.nak_delay_unicast_ns),
            (
                "nak_delay_multicast_max_ns",
                self.nak_delay_multicast_max_ns,
            ),
            ("nak_retry_ns", self.nak_retry_ns),
            ("retransmit_linger_ns", self.retransmit_linger_ns),
            ("receiver_timeout_ns", self.receiver_timeout_ns),
            ("image_liveness_timeout_ns", self.image_liveness_timeout_ns),
            ("close_linger_ns", self.close_linger_ns),
        ] {
            if v > TIMER_MAX_NS {
                return err(format!(
                    "{name}={v} must be at most {TIMER_MAX_NS} (one hour): deadlines are sums of times and intervals"
                ));
            }
        }
        if self.retransmit_linger_ns >= self.nak_retry_ns {
            return err(format!(
                "retransmit_linger_ns={} >= nak_retry_ns={}: a retried NAK would always be ignored",
                self.retransmit_linger_ns, self.nak_retry_ns
            ));
        }
        if self.heartbeat_interval_ns >= self.image_liveness_timeout_ns {
            return err(format!(
                "heartbeat_interval_ns={} >= image_liveness_timeout_ns={}: idle images would time out",
                self.heartbeat_interval_ns, self.image_liveness_timeout_ns
            ));
        }
        if self.status_interval_ns >= self.receiver_timeout_ns {
            return err(format!(
                "status_interval_ns={} >= receiver_timeout_ns={}: idle receivers would time out",
                self.status_interval_ns, self.receiver_timeout_ns
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_is_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
        assert_eq!(Config::with_term_length(TERM_LENGTH_MIN).validate(), Ok(()));
    }

    #[test]
    fn a_16_mib_message_length_is_accepted_with_a_64_mib_term() {
        let c = Config::with_term_length(64 * 1024 * 1024);
        assert_eq!(c.message_length_max, 16 * 1024 * 1024);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn bad_values_are_rejected_naming_key_and_value() {
        let c = Config {
            mtu: 1000,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().0.contains("mtu=1000"));
        let c = Config {
            term_length: 100_000,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().0.contains("term_length=100000"));
        let c = Config {
            retransmit_linger_ns: 30_000_000,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().0.contains("retransmit_linger_ns"));
        // A timeout near u64::MAX would overflow the deadlines computed from it.
        let c = Config {
            image_liveness_timeout_ns: u64::MAX - 1,
            ..Config::default()
        };
        let e = c.validate().unwrap_err().0;
        assert!(
            e.contains("image_liveness_timeout_ns=") && e.contains("one hour"),
            "{e}"
        );
        let c = Config {
            close_linger_ns: TIMER_MAX_NS,
            ..Config::default()
        };
        assert_eq!(c.validate(), Ok(()));
    }
}
