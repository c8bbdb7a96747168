//! The socket driver: [`Publication`] and [`Subscription`] wrap the sans-IO
//! [`Sender`]/[`Receiver`] in non-blocking UDP sockets (`socket2`) with batched
//! `recvmmsg`/`sendmmsg`, and run as [`Agent`]s in the caller's duty-cycle loop.
//!
//! Owns: sockets and their options (buffer sizes, `SO_REUSEADDR`, multicast join, interface,
//! loop and TTL), batches of datagrams, the monotonic clock ([`now_ns`]), and optional seeded
//! loss injection for tests. Does not own threads or protocol logic.
//!
//! Control traffic (status messages, NAKs) goes unicast from each receiver to the sender's
//! source address, for unicast and multicast channels alike.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::config::{Config, ConfigError, FlowControl};
use crate::counters::{CounterId, Counters};
use crate::frame::FRAME_ALIGNMENT;
use crate::idle::Agent;
use crate::mmsg::Batch;
use crate::receiver::{ImageEvent, MessageHeader, Receiver};
use crate::rng::Rng;
use crate::sender::{Claim, OfferError, Refusal, Sender};

/// Requested socket send and receive buffer sizes, in bytes (the kernel may cap them at
/// `net.core.rmem_max`/`wmem_max`).
pub const SOCKET_BUFFER_LENGTH: usize = 4 * 1024 * 1024;
/// Datagrams per `recvmmsg`/`sendmmsg` call.
pub const BATCH_DATAGRAMS: usize = 32;
/// `recvmmsg` batches a subscription's duty cycle reads at most.
pub const RECEIVE_BATCHES_PER_CYCLE_MAX: usize = 4;
/// Bytes after which a subscription's duty cycle reads no further batch: about what fits in
/// a core's L2 cache beside the caller's own data, so that `poll` finds it there.
pub const RECEIVE_BYTES_PER_CYCLE_MAX: u64 = 192 * 1024;
/// Slot size for received data datagrams, in bytes: the largest UDP payload we accept.
/// A subscription starts with slots of its configured MTU (small slots keep a batch in cache)
/// and grows them to this length the first time a datagram arrives truncated; the sender
/// retransmits what was lost when the receiver NAKs the gap.
pub const RECEIVE_SLOT_LENGTH: usize = 65536;
/// Longest datagrams of an in-order stream that an idle subscription reads with its cheapest
/// call (`recvfrom`, into a slot, then copied into the log): copying that much costs less
/// than the call saves. A stream of longer ones (full datagrams of a large MTU, coalesced
/// runs) is read into its log in place.
const IDLE_READ_COPY_MAX: usize = 4096;
/// Longest a publication goes without reading its control socket while less than half the
/// receivers' window is left, in nanoseconds. A publication with flow-control room left needs
/// no status message yet, so it skips the (usually empty) `recvmmsg` on most duty cycles; it
/// reads every cycle while unconnected, blocked by flow control, closing, or after a full
/// batch of control traffic.
pub const CONTROL_POLL_INTERVAL_NS: u64 = 20_000;
/// Longest a publication goes without reading its control socket while more than half the
/// receivers' window is open, in nanoseconds: control traffic is then rare (a status message
/// per quarter window, NAKs after loss) and not urgent, and a read on every request/response
/// round trip would add a syscall to its latency.
pub const CONTROL_POLL_RELAXED_INTERVAL_NS: u64 = 1_000_000;
/// Duty cycles a publication goes at most without reading its control socket, whatever the
/// clock says (a caller may feed a frozen or coarse clock): while room is low, and while
/// relaxed.
pub const CONTROL_POLL_CYCLES_MAX: u32 = 64;
/// See [`CONTROL_POLL_CYCLES_MAX`].
pub const CONTROL_POLL_RELAXED_CYCLES_MAX: u32 = 4096;
/// Bytes the kernel charges a socket's receive buffer per datagram beyond its payload (socket
/// buffer bookkeeping), an estimate used to size the receiver window.
pub const DATAGRAM_OVERHEAD_ESTIMATE: usize = 1024;
/// Slot size for control datagrams (status messages, NAKs, RTTM, errors), in bytes.
pub const CONTROL_SLOT_LENGTH: usize = 2048;

const _: () = assert!(CONTROL_SLOT_LENGTH >= crate::config::RECEIVER_TRANSMIT_LENGTH_MIN);

/// Nanoseconds on the system's monotonic clock (`CLOCK_MONOTONIC`: since an arbitrary point,
/// boot on Linux, never stepping back). Read straight from the kernel's clock data, without
/// the conversions of `Instant`: a busy-spinning agent reads it every cycle.
pub fn now_ns() -> u64 {
    crate::mmsg::monotonic_ns()
}

/// A malformed channel string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelError(pub String);

impl std::fmt::Display for ChannelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ChannelError {}

/// Where a stream travels: a unicast endpoint, or a multicast group joined on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channel {
    /// Unicast: the subscriber's address. Multicast: the group and port.
    pub endpoint: SocketAddrV4,
    /// Multicast: the interface to send on and join from.
    pub interface: Ipv4Addr,
    /// Multicast TTL.
    pub ttl: u8,
}

impl Channel {
    /// A unicast channel to `endpoint`.
    pub fn unicast(endpoint: SocketAddrV4) -> Self {
        Channel {
            endpoint,
            interface: Ipv4Addr::UNSPECIFIED,
            ttl: 0,
        }
    }

    /// A multicast channel on `group`, joined on `interface` (TTL 1).
    pub fn multicast(group: SocketAddrV4, interface: Ipv4Addr) -> Self {
        Channel {
            endpoint: group,
            interface,
            ttl: 1,
        }
    }

    /// Whether the endpoint is a multicast group.
    pub fn is_multicast(&self) -> bool {
        self.endpoint.ip().is_multicast()
    }

    /// Parses Aeron's URI form: `aeron:udp?endpoint=HOST:PORT[|interface=IP][|ttl=N]`.
    ///
    /// # Errors
    /// A [`ChannelError`] naming the bad part.
    pub fn parse(uri: &str) -> Result<Self, ChannelError> {
        let rest = uri
            .strip_prefix("aeron:udp?")
            .ok_or_else(|| ChannelError(format!("channel '{uri}' must start with 'aeron:udp?'")))?;
        let mut endpoint = None;
        let mut interface = Ipv4Addr::UNSPECIFIED;
        let mut ttl = None;
        for part in rest.split('|') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| ChannelError(format!("channel parameter '{part}' has no '='")))?;
            let bad = |what: &str| ChannelError(format!("channel {k}='{v}' is not {what}"));
            match k {
                "endpoint" => endpoint = Some(v.parse().map_err(|_| bad("an IPv4 HOST:PORT"))?),
                "interface" => {
                    let ip = v.split(':').next().unwrap_or(v);
                    interface = ip.parse().map_err(|_| bad("an IPv4 address"))?;
                }
                "ttl" => ttl = Some(v.parse().map_err(|_| bad("a TTL 0..=255"))?),
                _ => return Err(ChannelError(format!("unknown channel parameter '{k}'"))),
            }
        }
        let endpoint =
            endpoint.ok_or_else(|| ChannelError(format!("channel '{uri}' has no endpoint")))?;
        let mut c = Channel {
            endpoint,
            interface,
            ttl: 0,
        };
        if c.is_multicast() {
            c.ttl = ttl.unwrap_or(1);
        }
        Ok(c)
    }
}

fn config_error(e: ConfigError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}

fn new_socket() -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_nonblocking(true)?;
    // Best effort: the kernel caps these at its configured maxima.
    let _ = s.set_send_buffer_size(SOCKET_BUFFER_LENGTH);
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER_LENGTH);
    Ok(s)
}

/// Seeded inbound loss injection (tests): drops each received datagram with probability `rate`.
#[derive(Debug, Clone)]
struct Loss {
    rng: Rng,
    rate: f64,
}

impl Loss {
    fn drops(loss: &mut Option<Loss>) -> bool {
        loss.as_mut().is_some_and(|l| l.rng.chance(l.rate))
    }
}

fn session_id_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32) ^ now_ns().rotate_left(17)
}

/// A publication on a channel: offers messages, sends them, answers control traffic.
pub struct Publication {
    sender: Sender,
    socket: Socket,
    endpoint: SockAddr,
    tx: Batch,
    rx: Batch,
    loss: Option<Loss>,
    /// When the control socket must be read again at the latest, besides the poll intervals
    /// (see [`CONTROL_POLL_INTERVAL_NS`]).
    control_next_ns: u64,
    /// When the control socket was last read.
    control_read_ns: u64,
    /// Duty cycles since the control socket was last read.
    control_skipped: u32,
    /// The socket is connected to the endpoint: datagrams for it go without an address.
    connected: bool,
}

impl std::fmt::Debug for Publication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publication")
            .field("session_id", &self.sender.session_id())
            .field("stream_id", &self.sender.stream_id())
            .finish()
    }
}

impl Publication {
    /// Opens a publication of `stream_id` on `channel` with a random session id.
    ///
    /// # Errors
    /// Invalid config, or a socket error.
    pub fn new(channel: &Channel, stream_id: i32, cfg: Config) -> io::Result<Self> {
        let mut rng = Rng::new(session_id_seed());
        let session_id = rng.next_u64() as i32;
        let initial_term_id = rng.next_u64() as i32;
        Self::with_session(channel, stream_id, session_id, initial_term_id, cfg)
    }

    /// Opens a publication with a chosen session id and initial term id.
    ///
    /// # Errors
    /// Invalid config, or a socket error.
    pub fn with_session(
        channel: &Channel,
        stream_id: i32,
        session_id: i32,
        initial_term_id: i32,
        mut cfg: Config,
    ) -> io::Result<Self> {
        cfg.multicast = channel.is_multicast();
        cfg.ttl = channel.ttl;
        if cfg.multicast && cfg.flow_control == FlowControl::Unicast {
            cfg.flow_control = FlowControl::Min;
        }
        let (mtu, offload) = (cfg.mtu, cfg.udp_segmentation);
        let sender = Sender::new(cfg, session_id, stream_id, initial_term_id, now_ns())
            .map_err(config_error)?;
        let socket = new_socket()?;
        if channel.is_multicast() {
            socket.set_multicast_if_v4(&channel.interface)?;
            socket.set_multicast_loop_v4(true)?;
            socket.set_multicast_ttl_v4(u32::from(channel.ttl))?;
            socket.bind(&SocketAddr::from((channel.interface, 0)).into())?;
        } else {
            let local = if channel.endpoint.ip().is_loopback() {
                Ipv4Addr::LOCALHOST
            } else {
                Ipv4Addr::UNSPECIFIED
            };
            socket.bind(&SocketAddr::from((local, 0)).into())?;
        }
        // Unicast: connect to the endpoint (as Aeron does), so sends reuse the socket's route
        // and IP id state instead of looking them up per datagram. Control traffic comes from
        // the subscriber's socket, which is bound to the endpoint, so connecting filters out
        // nothing we want. Best effort: unconnected sockets work too, only slower.
        let connected = !channel.is_multicast()
            && socket
                .connect(&SocketAddr::V4(channel.endpoint).into())
                .is_ok();
        let mut tx = Batch::new(BATCH_DATAGRAMS, mtu);
        tx.set_segmentation(offload);
        Ok(Publication {
            sender,
            socket,
            endpoint: SocketAddr::V4(channel.endpoint).into(),
            tx,
            rx: Batch::new(BATCH_DATAGRAMS, CONTROL_SLOT_LENGTH),
            loss: None,
            control_next_ns: 0,
            control_read_ns: 0,
            control_skipped: 0,
            connected,
        })
    }

    /// Drops inbound control datagrams with probability `rate` (tests).
    pub fn inject_loss(&mut self, rate: f64, seed: u64) {
        self.loss = Some(Loss {
            rng: Rng::new(seed),
            rate,
        });
    }

    /// Appends a message; see [`Sender::offer`].
    ///
    /// # Errors
    /// [`OfferError`].
    #[inline]
    pub fn offer(&mut self, message: &[u8]) -> Result<i64, OfferError> {
        self.sender.offer(message)
    }

    /// Claims one frame to write in place; see [`Sender::try_claim`].
    ///
    /// # Errors
    /// [`OfferError`].
    pub fn try_claim(&mut self, length: usize) -> Result<Claim<'_>, OfferError> {
        self.sender.try_claim(length)
    }

    /// Starts a clean close (keep calling `do_work` until [`Publication::is_closed`]).
    pub fn close(&mut self) {
        self.sender.close(now_ns());
    }

    /// Whether the close finished.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
    /// Whether a receiver has acknowledged the session.
    pub fn is_connected(&self) -> bool {
        self.sender.is_connected()
    }
    /// The latest refusal by a receiver, if any; see [`Sender::last_refusal`].
    pub fn last_refusal(&self) -> Option<&Refusal> {
        self.sender.last_refusal()
    }
    /// The publication position.
    pub fn position(&self) -> i64 {
        self.sender.position()
    }
    /// The session id.
    pub fn session_id(&self) -> i32 {
        self.sender.session_id()
    }
    /// The protocol state machine (read-only).
    pub fn sender(&self) -> &Sender {
        &self.sender
    }
    /// Counters.
    pub fn counters(&self) -> &Counters {
        self.sender.counters()
    }
    /// The socket's local address (where control traffic arrives).
    ///
    /// # Errors
    /// A socket error.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))
    }

    fn receive(&mut self, now: u64) -> usize {
        match self.rx.recv(&self.socket, BATCH_DATAGRAMS) {
            Ok(n) => {
                for i in 0..n {
                    let (bytes, source) = self.rx.datagram(i);
                    let Some(source) = source else { continue };
                    if Loss::drops(&mut self.loss) {
                        self.sender.counters_mut().incr(CounterId::DropsInjected);
                    } else if self.rx.truncated(i) {
                        self.sender.counters_mut().incr(CounterId::DropsMalformed);
                    } else {
                        self.sender.handle_datagram(now, source, bytes);
                    }
                }
                n
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            // An earlier ICMP port-unreachable on the connected socket: not a receive error.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => 0,
            Err(_) => {
                self.sender.counters_mut().incr(CounterId::SocketErrors);
                0
            }
        }
    }

    fn transmit(&mut self, now: u64) -> usize {
        let mut work = 0;
        // Whether the sender may have more than the batch took: after sending the batch,
        // ask it again (a batch it did not fill was all it had).
        let mut more = true;
        loop {
            if self.tx.has_unsent() {
                match self.tx.send(&self.socket, self.sender.log_bytes()) {
                    Ok(n) => {
                        work += n;
                        let runs = self.tx.take_runs_sent();
                        self.sender
                            .counters_mut()
                            .add(CounterId::SegmentedSends, runs);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return work,
                    // A connected socket reports an earlier ICMP port-unreachable (no
                    // subscriber yet) once; the batch was not sent: retry it next cycle.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return work,
                    Err(_) => {
                        // Refused for its destination or length, say a reply to a stranger
                        // that cannot be sent to: drop that datagram only (a data datagram
                        // comes back when NAKed), and send the rest now.
                        self.sender.counters_mut().incr(CounterId::SocketErrors);
                        self.tx.skip_refused();
                        continue;
                    }
                }
                if self.tx.has_unsent() || !more {
                    return work;
                }
            }
            while !self.tx.is_full() {
                let slot = self.tx.next_slot();
                // Data datagrams stay in the term log and are sent from there (no copy).
                let Some((t, at)) = self.sender.poll_transmit_in_place(now, slot) else {
                    break;
                };
                let to = t.destination.map(SockAddr::from);
                let destination = match &to {
                    Some(d) => Some(d),
                    None if self.connected => None,
                    None => Some(&self.endpoint),
                };
                match (at, destination) {
                    (Some(at), d) => self.tx.push_external(at, t.length, d),
                    (None, Some(d)) => self.tx.push(t.length, d),
                    (None, None) => self.tx.push_connected(t.length),
                }
            }
            more = self.tx.is_full();
            if !self.tx.has_unsent() {
                return work;
            }
        }
    }
}

impl Agent for Publication {
    fn do_work(&mut self, now_ns: u64) -> usize {
        let s = &self.sender;
        let room_low = s.is_flow_control_room_low();
        let (interval, cycles_max) = if room_low {
            (CONTROL_POLL_INTERVAL_NS, CONTROL_POLL_CYCLES_MAX)
        } else {
            (
                CONTROL_POLL_RELAXED_INTERVAL_NS,
                CONTROL_POLL_RELAXED_CYCLES_MAX,
            )
        };
        let control_due = s.is_flow_control_blocked()
            || !s.is_connected()
            || s.is_closing()
            || now_ns
                >= self
                    .control_next_ns
                    .min(self.control_read_ns.saturating_add(interval))
            || self.control_skipped >= cycles_max;
        let mut work = 0;
        if control_due {
            let n = self.receive(now_ns);
            work += n;
            self.control_skipped = 0;
            self.control_read_ns = now_ns;
            // A full batch means more may be queued: read again next cycle.
            self.control_next_ns = if n == BATCH_DATAGRAMS {
                now_ns
            } else {
                u64::MAX
            };
        } else {
            self.control_skipped += 1;
        }
        self.sender.handle_timeout(now_ns);
        work += self.transmit(now_ns);
        work
    }

    fn name(&self) -> &str {
        "publication"
    }
}

/// What a received batch says about where the next datagrams will go (see
/// `Subscription::receive`): every datagram continued the same session in order (the
/// receiver's fast path), and the longest of them.
#[derive(Debug, Default)]
struct Run {
    session_id: Option<i32>,
    length_max: usize,
    broken: bool,
}

impl Run {
    /// One more datagram: `in_order` is `Receiver::last_in_order` after it (or `None`).
    fn add(&mut self, in_order: Option<(i32, usize)>) {
        match in_order {
            Some((session_id, length)) if self.session_id.is_none_or(|s| s == session_id) => {
                self.session_id = Some(session_id);
                self.length_max = self.length_max.max(length);
            }
            _ => self.broken = true,
        }
    }

    /// The session and slot length to receive the next datagrams in place with, if any.
    fn target(&self) -> Option<(i32, usize)> {
        match self.session_id {
            Some(s) if !self.broken => Some((s, self.length_max)),
            _ => None,
        }
    }
}

/// A subscription to a stream on a channel: receives, rebuilds, acknowledges and delivers.
pub struct Subscription {
    receiver: Receiver,
    socket: Socket,
    rx: Batch,
    tx: Batch,
    loss: Option<Loss>,
    /// The last read found nothing (see `receive`).
    rx_idle: bool,
    /// Session and datagram length of a stream arriving in order: the next datagrams are
    /// received straight into its log (see `receive`).
    direct: Option<(i32, usize)>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("stream_id", &self.receiver.stream_id())
            .finish()
    }
}

/// The subscription's socket, for callers that wait for input with `poll`/`epoll` instead of
/// spinning (readable = a datagram to take with [`Agent::do_work`]). Never read it directly.
impl std::os::fd::AsRawFd for Subscription {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }
}

impl Subscription {
    /// Blocks until a datagram is waiting on the subscription's socket or `timeout` has
    /// passed, and returns whether one is (a duty-cycle agent that would otherwise park can
    /// wait here and wake as soon as input arrives). Call [`Agent::do_work`] afterwards.
    ///
    /// # Errors
    /// A `ppoll` failure.
    pub fn wait_readable(&self, timeout: std::time::Duration) -> io::Result<bool> {
        crate::mmsg::wait_readable(&self.socket, timeout)
    }

    /// Opens a subscription to `stream_id` on `channel`. Unicast binds the endpoint; multicast
    /// binds the group's port with `SO_REUSEADDR` (several subscribers may share it) and joins
    /// the group on the channel's interface.
    ///
    /// # Errors
    /// Invalid config, or a socket error (e.g. the endpoint is in use).
    pub fn new(channel: &Channel, stream_id: i32, mut cfg: Config) -> io::Result<Self> {
        cfg.multicast = channel.is_multicast();
        // Checked before anything is derived from it (a window from the MTU below): a bad
        // value is a config error naming it, not an overflow.
        cfg.validate().map_err(config_error)?;
        let socket = new_socket()?;
        // A window larger than the socket can queue turns bursts into kernel drops and NAK
        // storms: keep it within half of what the (kernel-doubled) receive buffer holds,
        // counting the kernel's own bytes per datagram (its "truesize").
        let rcvbuf = socket.recv_buffer_size().unwrap_or(0);
        let window_max = (rcvbuf / 2 / (cfg.mtu + DATAGRAM_OVERHEAD_ESTIMATE) * cfg.mtu)
            & !(FRAME_ALIGNMENT - 1);
        cfg.receiver_window = cfg.receiver_window.min(window_max).max(cfg.mtu);
        // Coalesced runs (a sender's segmented sends) arrive up to 64 KiB at a time.
        let coalescing = cfg.udp_coalescing && crate::mmsg::enable_coalescing(&socket);
        let receive_slot = if coalescing {
            RECEIVE_SLOT_LENGTH
        } else {
            cfg.mtu.max(CONTROL_SLOT_LENGTH)
        };
        let receiver = Receiver::new(cfg, stream_id, session_id_seed()).map_err(config_error)?;
        if channel.is_multicast() {
            socket.set_reuse_address(true)?;
            socket.bind(&SocketAddr::V4(channel.endpoint).into())?;
            socket.join_multicast_v4(channel.endpoint.ip(), &channel.interface)?;
            socket.set_multicast_if_v4(&channel.interface)?;
            socket.set_multicast_loop_v4(true)?;
        } else {
            socket.bind(&SocketAddr::V4(channel.endpoint).into())?;
        }
        let mut rx = Batch::new(BATCH_DATAGRAMS, receive_slot);
        rx.set_coalescing(coalescing);
        Ok(Subscription {
            receiver,
            socket,
            rx,
            tx: Batch::new(BATCH_DATAGRAMS, CONTROL_SLOT_LENGTH),
            loss: None,
            rx_idle: false,
            direct: None,
        })
    }

    /// Drops inbound data datagrams with probability `rate` (tests).
    pub fn inject_loss(&mut self, rate: f64, seed: u64) {
        self.loss = Some(Loss {
            rng: Rng::new(seed),
            rate,
        });
    }

    /// Delivers up to `limit` whole messages in order per session; see [`Receiver::poll`].
    /// Network I/O happens in `do_work`.
    pub fn poll<F: FnMut(&[u8], &MessageHeader)>(&mut self, handler: F, limit: usize) -> usize {
        self.receiver.poll(handler, limit)
    }

    /// Next image event (joined, ended, fell behind).
    pub fn poll_event(&mut self) -> Option<ImageEvent> {
        self.receiver.poll_event()
    }

    /// Tells the senders this subscriber is leaving (flushed by the next `do_work`).
    pub fn close(&mut self) {
        self.receiver.close();
    }

    /// The protocol state machine (read-only).
    pub fn receiver(&self) -> &Receiver {
        &self.receiver
    }
    /// Counters.
    pub fn counters(&self) -> &Counters {
        self.receiver.counters()
    }
    /// The socket's local address.
    ///
    /// # Errors
    /// A socket error.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))
    }

    fn receive(&mut self, now: u64) -> usize {
        // After an empty read, ask for one datagram: when traffic is sparse (request/response)
        // one is all there is, and a read that finds data asks for a whole batch next. Small
        // datagrams are then read with the cheapest call there is: a busy-spinning
        // subscription makes it over and over, so its cost is part of every round trip
        // (`recvfrom` against `recvmmsg` of one: about 70 ns less when nothing is waiting and
        // 150-250 ns less when a datagram is, on the development VM). A stream of large
        // datagrams (or coalesced runs) goes on into its log in place.
        let idle = self.rx_idle;
        let one = idle
            && self
                .direct
                .is_none_or(|(_, stride)| stride <= IDLE_READ_COPY_MAX);
        let max = if idle { 1 } else { BATCH_DATAGRAMS };
        // While a stream arrives in order in datagrams of one length, receive the next ones
        // straight into its log where they belong (no copy); otherwise into the slots.
        let target = self
            .direct
            .filter(|_| !one)
            .and_then(|(session_id, stride)| {
                if stride > self.rx.slot_length() {
                    return None;
                }
                self.receiver
                    .direct_target(session_id, stride)
                    .map(|t| (t, stride))
            });
        let received = match &target {
            Some((t, stride)) => {
                let region = self.receiver.direct_region(t);
                self.rx.recv_direct(&self.socket, region, *stride, max)
            }
            None if one => self.rx.recv_one(&self.socket),
            None => self.rx.recv(&self.socket, max),
        };
        self.rx_idle = !matches!(received, Ok(n) if n > 0);
        match received {
            Ok(n) => {
                let coalesced = (0..n)
                    .filter(|&i| (1..self.rx.length(i)).contains(&self.rx.segment(i)))
                    .count();
                self.receiver
                    .counters_mut()
                    .add(CounterId::CoalescedReceives, coalesced as u64);
                // Slots before `from` were taken in place, and the first `from_segment`
                // datagrams of slot `from` (a coalesced run, see `Batch::segment`, broken part
                // way); `drawn` is the slot whose loss injection was already drawn, and the draw. `run`
                // follows whether every slot of the batch continued one session in order, and
                // the longest of them.
                let (mut from, mut from_segment, mut drawn) = (0, 0, None);
                let mut run = Run::default();
                if let Some((t, stride)) = &target {
                    'slots: while from < n {
                        let length = self.rx.length(from);
                        let Some(source) = self.rx.source(from) else {
                            break;
                        };
                        if length > *stride || self.rx.truncated(from) {
                            break;
                        }
                        let lost = Loss::drops(&mut self.loss);
                        drawn = Some((from, lost));
                        if lost {
                            break;
                        }
                        let segment = match self.rx.segment(from) {
                            0 => length,
                            g => g,
                        };
                        let mut at = 0;
                        while at < length || at == 0 {
                            let part = segment.min(length - at);
                            if !self.receiver.accept_direct(
                                t,
                                now,
                                source,
                                from * stride + at,
                                part,
                            ) {
                                from_segment = at / segment.max(1);
                                break 'slots;
                            }
                            at += part.max(1);
                        }
                        run.add(self.receiver.last_in_order().map(|(s, _)| (s, length)));
                        from += 1;
                    }
                    // The rest lie in the log where they may not stay: move each to its slot
                    // (what did not fit there is already in the slot, past `stride`). Of slot
                    // `from`, only what follows the datagrams already taken in place: those
                    // are the image's now.
                    for i in from..n {
                        let part = self.rx.length(i).min(*stride);
                        let taken = if i == from {
                            (from_segment * self.rx.segment(i)).min(part)
                        } else {
                            0
                        };
                        let slot = &mut self.rx.slot_mut(i)[taken..part];
                        self.receiver.take_direct(t, i * stride + taken, slot);
                    }
                }
                let mut truncated = false;
                for i in from..n {
                    let (bytes, source) = self.rx.datagram(i);
                    let Some(source) = source else {
                        run.add(None);
                        continue;
                    };
                    // Loss is drawn once per slot (slot `from`'s may have been drawn above).
                    let lost = match drawn {
                        Some((slot, lost)) if slot == i => lost,
                        _ => Loss::drops(&mut self.loss),
                    };
                    if lost {
                        self.receiver.counters_mut().incr(CounterId::DropsInjected);
                        run.add(None);
                    } else if self.rx.truncated(i) {
                        self.receiver.counters_mut().incr(CounterId::DropsMalformed);
                        truncated = true;
                        run.add(None);
                    } else {
                        let segment = self.rx.segment(i);
                        if segment == 0 || bytes.len() <= segment {
                            self.receiver.handle_datagram(now, source, bytes);
                            run.add(self.receiver.last_in_order());
                        } else {
                            // A coalesced run: its datagrams one by one.
                            let skip = if i == from { from_segment } else { 0 };
                            let mut in_order = true;
                            for datagram in bytes.chunks(segment).skip(skip) {
                                self.receiver.handle_datagram(now, source, datagram);
                                in_order &= self.receiver.last_in_order().is_some();
                            }
                            let last = self.receiver.last_in_order();
                            run.add(last.filter(|_| in_order).map(|(s, _)| (s, bytes.len())));
                        }
                    }
                }
                if n > 0 {
                    // A batch that continued one session in order: receive the next ones in
                    // place, in slots of its longest datagram (a stream's full datagrams).
                    self.direct = run.target();
                }
                if truncated && self.rx.slot_length() < RECEIVE_SLOT_LENGTH {
                    // A sender with a larger MTU: take whole datagrams from now on (the lost
                    // one comes back as a retransmit once the gap is NAKed).
                    self.rx = Batch::new(BATCH_DATAGRAMS, RECEIVE_SLOT_LENGTH);
                }
                n
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                self.receiver.counters_mut().incr(CounterId::SocketErrors);
                0
            }
        }
    }

    fn transmit(&mut self, now: u64) -> usize {
        if !self.tx.has_unsent() {
            self.tx.clear();
            while !self.tx.is_full() {
                let slot = self.tx.next_slot();
                match self.receiver.poll_transmit(now, slot) {
                    Some(t) => {
                        let dest = SockAddr::from(
                            t.destination
                                .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))),
                        );
                        self.tx.push(t.length, &dest);
                    }
                    None => break,
                }
            }
        }
        let mut sent = 0;
        while self.tx.has_unsent() {
            match self.tx.send(&self.socket, &[]) {
                // Some went out; the next call sends the rest, or says why not.
                Ok(0) => break,
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    // Refused for its destination (a source that cannot be answered, an
                    // unreachable sender): drop that datagram only, not the status messages
                    // and NAKs for other senders queued behind it.
                    self.receiver.counters_mut().incr(CounterId::SocketErrors);
                    self.tx.skip_refused();
                }
            }
        }
        sent
    }
}

impl Agent for Subscription {
    fn do_work(&mut self, now_ns: u64) -> usize {
        let mut work = 0;
        // Drain what the socket holds, bounded by bytes so that what was stored is still in
        // cache when the caller polls it: several batches of small datagrams, one of large.
        let before = self.receiver.counters().get(CounterId::BytesReceived);
        for _ in 0..RECEIVE_BATCHES_PER_CYCLE_MAX {
            let n = self.receive(now_ns);
            work += n;
            let bytes = self.receiver.counters().get(CounterId::BytesReceived) - before;
            if n < BATCH_DATAGRAMS || bytes >= RECEIVE_BYTES_PER_CYCLE_MAX {
                break;
            }
        }
        self.receiver.handle_timeout(now_ns);
        work += self.transmit(now_ns);
        work
    }

    fn name(&self) -> &str {
        "subscription"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_parse_from_aeron_uris() {
        let c = Channel::parse("aeron:udp?endpoint=127.0.0.1:40123").unwrap();
        assert_eq!(c, Channel::unicast("127.0.0.1:40123".parse().unwrap()));
        let m = Channel::parse("aeron:udp?endpoint=239.255.1.2:40456|interface=127.0.0.1|ttl=2")
            .unwrap();
        assert!(m.is_multicast());
        assert_eq!((m.interface, m.ttl), (Ipv4Addr::LOCALHOST, 2));
        assert!(Channel::parse("udp://x")
            .unwrap_err()
            .0
            .contains("aeron:udp?"));
        assert!(Channel::parse("aeron:udp?endpoint=nope")
            .unwrap_err()
            .0
            .contains("endpoint='nope'"));
    }
}
