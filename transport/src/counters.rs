//! Counters of one publication or subscription: bytes, frames, NAKs, retransmits, drops by
//! reason, back-pressure. Each counter has a stable index ([`CounterId`]) so that a reader
//! outside the agent (a metrics thread, a CLI) can name them permanently.

/// Stable counter ids. New counters are appended; ids never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum CounterId {
    /// Bytes sent in datagrams.
    BytesSent = 0,
    /// Bytes received in datagrams.
    BytesReceived = 1,
    /// Datagrams sent.
    DatagramsSent = 2,
    /// Datagrams received.
    DatagramsReceived = 3,
    /// DATA frames sent (first transmission; the PAD frame that fills a term's end is not one).
    DataFramesSent = 4,
    /// DATA and PAD frames received and stored (so one more than the sender's
    /// `DataFramesSent` per padded term end).
    DataFramesReceived = 5,
    /// NAKs sent.
    NaksSent = 6,
    /// NAKs received.
    NaksReceived = 7,
    /// Retransmitted datagrams.
    Retransmits = 8,
    /// Status messages sent.
    StatusMessagesSent = 9,
    /// Status messages received.
    StatusMessagesReceived = 10,
    /// SETUP frames sent.
    SetupsSent = 11,
    /// Heartbeats sent.
    HeartbeatsSent = 12,
    /// Frames dropped: they failed to decode (or, on a subscription, fragments that make no
    /// message: one over the size limit, or out of sequence).
    DropsMalformed = 13,
    /// Frames dropped: unknown session or stream.
    DropsUnknownSession = 14,
    /// Frames dropped: already received (duplicates, replays).
    DropsDuplicate = 15,
    /// Frames dropped: outside the receive window or the term.
    DropsOutOfWindow = 16,
    /// Frames dropped: from a source other than the image's sender.
    DropsUnexpectedSource = 17,
    /// Offers refused for back-pressure.
    BackPressureEvents = 18,
    /// NAKs ignored: the range is being retransmitted or lingering.
    NaksCoalesced = 19,
    /// NAKs ignored: the data is no longer in the sender's buffer, or not sent yet.
    NaksUnavailable = 20,
    /// Images that fell behind the sender's retransmit window.
    FellBehind = 21,
    /// Frames dropped: a valid frame of a type this endpoint does not consume.
    DropsUnexpectedType = 22,
    /// Datagrams dropped by injected loss (tests).
    DropsInjected = 23,
    /// Errors returned by socket calls.
    SocketErrors = 24,
    /// Runs of several datagrams handed to the kernel in one (`Config::udp_segmentation`).
    SegmentedSends = 25,
    /// Reads that brought a run of several datagrams coalesced (`Config::udp_coalescing`).
    CoalescedReceives = 26,
    /// SETUPs refused: a term longer than `Config::image_term_length_max`, or no room for
    /// another image (`IMAGES_MAX`).
    SetupsRefused = 27,
    /// ERR frames sent, each saying why a SETUP was refused (rate-limited: fewer than
    /// `SetupsRefused`).
    ErrorFramesSent = 28,
    /// ERR frames received for this publication: a receiver refused it
    /// (`Sender::last_refusal`). ERR frames for other sessions count as
    /// `DropsUnknownSession`, malformed ones as `DropsMalformed`.
    ErrorFramesReceived = 29,
}

/// Number of counters.
pub const COUNTER_COUNT: usize = 30;

/// Labels, indexed by [`CounterId`].
pub const COUNTER_LABELS: [&str; COUNTER_COUNT] = [
    "bytes_sent",
    "bytes_received",
    "datagrams_sent",
    "datagrams_received",
    "data_frames_sent",
    "data_frames_received",
    "naks_sent",
    "naks_received",
    "retransmits",
    "status_messages_sent",
    "status_messages_received",
    "setups_sent",
    "heartbeats_sent",
    "drops_malformed",
    "drops_unknown_session",
    "drops_duplicate",
    "drops_out_of_window",
    "drops_unexpected_source",
    "back_pressure_events",
    "naks_coalesced",
    "naks_unavailable",
    "fell_behind",
    "drops_unexpected_type",
    "drops_injected",
    "socket_errors",
    "segmented_sends",
    "coalesced_receives",
    "setups_refused",
    "error_frames_sent",
    "error_frames_received",
];

const _: () = assert!(CounterId::ErrorFramesReceived as usize + 1 == COUNTER_COUNT);

/// A set of counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    values: [u64; COUNTER_COUNT],
}

impl Counters {
    /// Adds `n` to a counter.
    pub fn add(&mut self, id: CounterId, n: u64) {
        self.values[id as usize] = self.values[id as usize].wrapping_add(n);
    }

    /// Adds one.
    pub fn incr(&mut self, id: CounterId) {
        self.add(id, 1);
    }

    /// A counter's value.
    pub fn get(&self, id: CounterId) -> u64 {
        self.values[id as usize]
    }

    /// `(label, value)` for every counter, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        COUNTER_LABELS
            .iter()
            .copied()
            .zip(self.values.iter().copied())
    }

    /// Total frames dropped for any reason but injected loss (refused SETUPs included; an ERR
    /// frame its publication takes is no drop, one for another session is).
    pub fn drops_total(&self) -> u64 {
        use CounterId::*;
        [
            DropsMalformed,
            DropsUnknownSession,
            DropsDuplicate,
            DropsOutOfWindow,
            DropsUnexpectedSource,
            DropsUnexpectedType,
            SetupsRefused,
        ]
        .iter()
        .map(|&c| self.get(c))
        .sum()
    }
}
