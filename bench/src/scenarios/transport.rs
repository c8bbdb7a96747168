//! `bench transport`: throughput of 64-byte messages over the transport (unicast, and multicast
//! to 2 receivers, on loopback) and ping-pong round-trip latency, each beside a raw-UDP
//! baseline measured in the same run with the same datagram sizes (`sendmmsg`/`recvmmsg`, no
//! protocol), so the ratio is visible.
//!
//! The transport runs as configured by default, with segmented sends and coalesced reads
//! (`Config::udp_segmentation`, `Config::udp_coalescing`: a run of equal datagrams goes to the
//! kernel in one call and comes back in one read), so it can beat the raw baseline, which
//! sends and reads datagram by datagram as the issue defines it; the datagrams on the wire are
//! the same. So a second raw baseline does what the transport does, with no protocol: 32
//! datagrams per call as runs (`UDP_SEGMENT`, up to 65,507 bytes per run) read coalesced
//! (`UDP_GRO`), same datagram length (`raw_udp_segmented_*`, `*_ratio_to_raw_udp_segmented`):
//! that ratio is the cost of the protocol and of handling 64-byte messages one by one. `--no-udp-segmentation --no-udp-coalescing` measures the transport
//! datagram by datagram too.
//!
//! Byte ratios compare the bytes of the frames delivered (messages delivered whole times
//! their 96-byte frame: retransmits, duplicates, padding and control frames left out) with
//! the raw baseline's datagram bytes. Each message delivered is checked to be the next one
//! offered (its length, its bytes, and a sequence number the publisher writes in it, in order
//! per receiver from the first it gets); one that is not stops the run with an error.
//!
//! Round trips have two raw baselines, measured in turn with the transport's, 100,000 round
//! trips of each kind by default in 10 alternating slices (`--rtt-samples`, `--rtt-rounds`). The issue's:
//! `sendmmsg`/`recvmmsg` of one datagram each (`raw_udp_rtt`, and `rtt_p99_ratio_to_raw_udp`
//! against it). And a stricter one, `send`/`recv` (`raw_udp_send_recv_rtt`,
//! `rtt_p99_ratio_to_raw_udp_send_recv`): those calls copy in no message header, which saved
//! about 0.3 µs per round trip (four calls) at p50 on the development VM.
//!
//! Round trips of 10 µs or more are counted as slow (`rtt_slow_share`, and per second spent in
//! round trips `rtt_slow_per_rtt_s`, beside raw UDP's). On the development VM the host stalls
//! the guest for about 10 µs at random times, and a stall during a round trip makes it slow
//! whatever carries it, so the longer round trip has the larger share of slow ones, and the
//! p99 ratio swings with where 1 % falls. Equal rates per second spent in round trips mean
//! the stalls alone; a higher one for the transport, slow round trips of its own besides
//! (its wider body has more of them within a small delay of 10 µs).
//!
//! Threads: never more than 2 spinning threads (this VM has 2 cores): publisher + subscriber,
//! with both multicast receivers composed onto one thread; ping + pong. Busy-spin idle
//! strategy, threads pinned to cores 0 and 1 when they exist.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use transport::{frame, now_ns, Agent, Channel, Config, OfferError, Publication, Subscription};

use crate::report::{latency_us, machine, peak_rss_bytes, pin_to, print};

const MESSAGE_LENGTH: usize = 64;
/// What follows the sequence number in every throughput message.
const TAIL: [u8; MESSAGE_LENGTH - 8] = [42; MESSAGE_LENGTH - 8];
const STREAM_ID: i32 = 1;
/// Default term length of the logs, in bytes: 1 MiB. Its half-term receiver window still
/// covers 64 datagrams at an 8 KiB MTU (hundreds at the default MTU), and the three-term logs
/// (3 MiB on each side) stay within a core's L2 cache, so neither the publisher's writes nor
/// the kernel's copies into the subscriber's log wait for memory (with 4 MiB terms, 12 MiB
/// logs, a publisher's offers cost about twice as much CPU per datagram here).
const TERM_LENGTH: usize = 1024 * 1024;
const PHASES: [&str; 9] = [
    "raw-unicast",
    "raw-multicast",
    "raw-unicast-segmented",
    "raw-multicast-segmented",
    "unicast",
    "multicast",
    "raw-rtt",
    "raw-rtt-send-recv",
    "rtt",
];

struct Options {
    mtu: usize,
    json: bool,
    seconds: f64,
    rtt_samples: u64,
    /// Alternating raw/transport slices per throughput figure (see `run`).
    rounds: u64,
    /// Alternating raw/transport slices of the round-trip figures.
    rtt_rounds: u64,
    /// Phases to run (profiling); all when empty. Skipped phases report 0.
    phases: Vec<String>,
    /// Term length of every log, in bytes.
    term_length: usize,
    /// `Config::udp_segmentation` and `Config::udp_coalescing` of every endpoint.
    udp_segmentation: bool,
    udp_coalescing: bool,
    /// Where to write every round trip (diagnosis of the latency tail), if anywhere.
    rtt_trace: Option<String>,
}

/// What every endpoint of a run is configured from: MTU, term length, UDP segmentation and
/// coalescing.
type Setup = (usize, usize, bool, bool);

impl Options {
    fn setup(&self) -> Setup {
        (
            self.mtu,
            self.term_length,
            self.udp_segmentation,
            self.udp_coalescing,
        )
    }

    fn runs(&self, phase: &str) -> bool {
        self.phases.is_empty() || self.phases.iter().any(|p| p == phase)
    }
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        mtu: transport::config::MTU_DEFAULT,
        json: false,
        seconds: 2.0,
        rtt_samples: 100_000,
        rounds: 3,
        rtt_rounds: 10,
        phases: Vec::new(),
        term_length: TERM_LENGTH,
        udp_segmentation: true,
        udp_coalescing: true,
        rtt_trace: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value"))
                .cloned()
        };
        match a.as_str() {
            "--json" => o.json = true,
            "--no-udp-segmentation" => o.udp_segmentation = false,
            "--no-udp-coalescing" => o.udp_coalescing = false,
            "--mtu" => {
                let v = value("--mtu")?;
                o.mtu = v.parse().map_err(|_| format!("--mtu '{v}' is not a number"))?;
            }
            "--seconds" => {
                let v = value("--seconds")?;
                o.seconds = v
                    .parse()
                    .map_err(|_| format!("--seconds '{v}' is not a number"))?;
            }
            "--rtt-samples" => {
                let v = value("--rtt-samples")?;
                o.rtt_samples = v
                    .parse()
                    .map_err(|_| format!("--rtt-samples '{v}' is not a number"))?;
            }
            "--rounds" => {
                let v = value("--rounds")?;
                o.rounds = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--rounds '{v}' is not a positive number"))?;
            }
            "--rtt-rounds" => {
                let v = value("--rtt-rounds")?;
                o.rtt_rounds = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--rtt-rounds '{v}' is not a positive number"))?;
            }
            "--term-length" => {
                let v = value("--term-length")?;
                o.term_length = v
                    .parse()
                    .map_err(|_| format!("--term-length '{v}' is not a number"))?;
            }
            "--rtt-trace" => o.rtt_trace = Some(value("--rtt-trace")?),
            "--phases" => {
                let v = value("--phases")?;
                o.phases = v.split(',').map(str::to_owned).collect();
                if let Some(bad) = o.phases.iter().find(|p| !PHASES.contains(&p.as_str())) {
                    return Err(format!("--phases: unknown phase '{bad}' (one of {PHASES:?})"));
                }
            }
            "--help" | "-h" => {
                return Err(format!("options: --mtu N (default 1408; a multiple of 32), --seconds S \
                            (per throughput figure, default 2), --rtt-samples N (default 100000), --rounds N \
                            (raw/transport alternations each throughput figure is split into, default 3), \
                            --rtt-rounds N (the same for round trips, default 10), --json, \
                            --term-length N (bytes, a power of two; default {TERM_LENGTH}), \
                            --rtt-trace FILE (writes every round trip as \
                            'raw|raw-send-recv|transport START_NS RTT_NS', start on one monotonic clock, to find \
                            what makes the tail), --phases a,b (profiling: run only these of raw-unicast, raw-multicast, \
                            raw-unicast-segmented, raw-multicast-segmented, unicast, multicast, raw-rtt, \
                            raw-rtt-send-recv, rtt; the others report 0), --no-udp-segmentation \
                            (the transport sends datagram by datagram, as the raw baseline does), \
                            --no-udp-coalescing (subscriptions read datagram by datagram)"
                ))
            }
            other => return Err(format!("unknown option '{other}' (try --help)")),
        }
    }
    Ok(o)
}

fn config((mtu, term_length, udp_segmentation, udp_coalescing): Setup) -> Config {
    // See `TERM_LENGTH` for the term length.
    // The publisher may run this far ahead of what was sent: a few send batches, so what
    // it wrote is still in cache when the driver sends it (a half-term window lets a
    // flow-controlled publisher run megabytes ahead, and every datagram is then read back
    // from memory). Only 64-byte messages are offered here.
    let publication_window = publication_window(mtu).min(term_length / 2);
    Config {
        mtu,
        publication_window,
        // The longest message whose frames (a header each MTU) fit in the window.
        message_length_max: (publication_window / mtu * (mtu - frame::DATA_HEADER_LENGTH))
            .min(term_length / 4),
        udp_segmentation,
        udp_coalescing,
        ..Config::with_term_length(term_length)
    }
}

/// The publication window used by the throughput runs, in bytes: 64 full datagrams.
fn publication_window(mtu: usize) -> usize {
    64 * mtu
}

fn free_port() -> Result<u16, String> {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// CPU time of the calling thread, in nanoseconds (time it actually ran, whatever the other
/// processes on the machine do): printed per datagram to compare sending costs.
#[allow(unsafe_code)]
fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

// ---------------------------------------------------------------- raw UDP baselines

#[allow(unsafe_code)]
mod raw {
    //! Raw UDP with `sendmmsg`/`recvmmsg` and no protocol: the baseline.
    use std::os::fd::AsRawFd;

    /// Datagrams per `sendmmsg`, segmented or not, and reads per `recvmmsg`: the transport's
    /// batch (`transport::driver::BATCH_DATAGRAMS`).
    pub const BATCH: usize = 32;
    /// The most bytes one segmented message may hold (a UDP datagram's limit).
    pub const SEGMENTED_BYTES_MAX: usize = 65_507;

    /// Sets an `int` option at level `SOL_UDP` (`UDP_SEGMENT`, `UDP_GRO`).
    pub fn set_udp_option(socket: &impl AsRawFd, option: i32, value: i32) -> Result<(), String> {
        // SAFETY: `value` is a valid int for the call to read, with its length.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_UDP,
                option,
                (&value as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(format!(
                "setsockopt(SOL_UDP, {option}): {}",
                std::io::Error::last_os_error()
            ))
        }
    }

    /// Sends `messages` (at most `BATCH`) messages of `length` bytes to the socket's connected
    /// peer; returns how many went, or the error number (`EAGAIN` and `ENOBUFS` when the
    /// socket's buffer is full).
    pub fn send_batch(
        socket: &impl AsRawFd,
        buf: &mut [u8],
        length: usize,
        messages: usize,
    ) -> Result<usize, i32> {
        let messages = messages.min(BATCH);
        let mut iov: [libc::iovec; BATCH] = [libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: length,
        }; BATCH];
        // SAFETY: all-zero bytes are a valid mmsghdr.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at `buf` (valid for `length` bytes, only read) through
        // `iov`, both live for the call; the socket is connected so no address is needed.
        let r = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                messages as u32,
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        } else {
            Ok(r as usize)
        }
    }

    /// A message header over `iov` alone, with no address (a connected socket's peer).
    fn header_over(iov: &mut libc::iovec) -> libc::mmsghdr {
        // SAFETY: all-zero bytes are a valid mmsghdr.
        let mut msg: libc::mmsghdr = unsafe { std::mem::zeroed() };
        msg.msg_hdr.msg_iov = iov;
        msg.msg_hdr.msg_iovlen = 1;
        msg
    }

    /// Sends one datagram (`sendmmsg` of one message) to the socket's connected peer;
    /// returns whether it went.
    pub fn send_one(socket: &impl AsRawFd, buf: &[u8]) -> bool {
        let mut iov = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let mut msg = header_over(&mut iov);
        // SAFETY: the header points at `buf` (only read) through `iov`, both live for the
        // call; the socket is connected so no address is needed.
        unsafe { libc::sendmmsg(socket.as_raw_fd(), &mut msg, 1, libc::MSG_DONTWAIT) == 1 }
    }

    /// Receives one datagram (`recvmmsg` of one message) into `buf` without blocking;
    /// returns its length, if one was waiting.
    pub fn recv_one(socket: &impl AsRawFd, buf: &mut [u8]) -> Option<usize> {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let mut msg = header_over(&mut iov);
        // SAFETY: the header points at `buf` through `iov`, both live for the call; the
        // kernel writes at most `buf.len()` bytes.
        let r = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                &mut msg,
                1,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        (r == 1).then_some(msg.msg_len as usize)
    }

    /// Receives up to `BATCH` datagrams into `bufs` (BATCH slots of `slot` bytes); returns
    /// (datagrams, bytes).
    pub fn recv_batch(socket: &impl AsRawFd, bufs: &mut [u8], slot: usize) -> (usize, usize) {
        // SAFETY: all-zero bytes are valid iovec and mmsghdr values.
        let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..BATCH {
            iov[i].iov_base = bufs[i * slot..].as_mut_ptr() as *mut libc::c_void;
            iov[i].iov_len = slot;
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: each header points at its own `slot`-byte region of `bufs` via `iov`; all
        // live for the call and the kernel writes at most `iov_len` bytes into each.
        let r = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r <= 0 {
            return (0, 0);
        }
        let n = r as usize;
        (n, msgs[..n].iter().map(|m| m.msg_len as usize).sum())
    }
}

/// Raw UDP throughput: datagrams/s and bytes/s per receiver. The sender hands the kernel 32
/// datagrams per call, as the transport's driver does at most. With `segmented`, they go as
/// runs in one message each (`UDP_SEGMENT`: 32 datagrams per message up to 65,507 bytes, so
/// one message of 32 at the default MTU, four of 8 at 8 KiB) and the receivers read runs
/// coalesced (`UDP_GRO`), as the transport does by default: the same datagrams on the wire,
/// fewer system calls.
fn raw_throughput(
    datagram_length: usize,
    receivers: usize,
    seconds: f64,
    segmented: bool,
) -> Result<(f64, f64), String> {
    let port = free_port()?;
    let multicast = receivers > 1;
    let group = Ipv4Addr::new(239, 255, 77, 1);
    let mut sockets = Vec::new();
    for _ in 0..receivers {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
            .map_err(|e| e.to_string())?;
        let _ = s.set_recv_buffer_size(4 << 20);
        if multicast {
            s.set_reuse_address(true).map_err(|e| e.to_string())?;
            s.bind(&SocketAddr::from((group, port)).into())
                .map_err(|e| e.to_string())?;
            s.join_multicast_v4(&group, &Ipv4Addr::LOCALHOST)
                .map_err(|e| e.to_string())?;
        } else {
            s.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())
                .map_err(|e| e.to_string())?;
        }
        if segmented {
            raw::set_udp_option(&s, libc::UDP_GRO, 1)?;
        }
        sockets.push(UdpSocket::from(s));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let target = if multicast {
        group
    } else {
        Ipv4Addr::LOCALHOST
    };
    let sender = std::thread::spawn(move || -> Result<(), String> {
        pin_to(0);
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
            .map_err(|e| e.to_string())?;
        let _ = s.set_send_buffer_size(4 << 20);
        s.set_multicast_if_v4(&Ipv4Addr::LOCALHOST)
            .map_err(|e| e.to_string())?;
        s.set_multicast_loop_v4(true).map_err(|e| e.to_string())?;
        s.connect(&SocketAddr::from((target, port)).into())
            .map_err(|e| e.to_string())?;
        // Datagrams per message handed to the kernel, and messages per call: 32 datagrams.
        let run = if segmented {
            raw::set_udp_option(&s, libc::UDP_SEGMENT, datagram_length as i32)?;
            (raw::SEGMENTED_BYTES_MAX / datagram_length).clamp(1, raw::BATCH)
        } else {
            1
        };
        let messages = raw::BATCH.div_ceil(run);
        let mut buf = vec![7u8; datagram_length * run];
        let (cpu0, mut sent) = (thread_cpu_ns(), 0u64);
        while !stop2.load(Ordering::Relaxed) {
            match raw::send_batch(&s, &mut buf, datagram_length * run, messages) {
                Ok(n) => sent += (n * run) as u64,
                Err(libc::EAGAIN | libc::ENOBUFS) => {}
                // Other errors are not expected on loopback; a segmented send the kernel
                // refuses would otherwise read as a baseline of zero.
                Err(e) if segmented => {
                    return Err(format!(
                        "raw UDP segmented send: {}",
                        std::io::Error::from_raw_os_error(e)
                    ))
                }
                Err(_) => {}
            }
        }
        eprintln!(
            "bench transport: raw sender datagrams={sent} cpu_ns_per_datagram={:.0}",
            (thread_cpu_ns() - cpu0) as f64 / sent.max(1) as f64
        );
        Ok(())
    });
    pin_to(1);
    // A coalesced read can be as long as the longest segmented send.
    let slot = if segmented {
        65_536
    } else {
        datagram_length.max(2048)
    };
    let mut bufs = vec![0u8; raw::BATCH * slot];
    let warm = Instant::now() + Duration::from_millis(200);
    while Instant::now() < warm {
        for s in &sockets {
            raw::recv_batch(s, &mut bufs, slot);
        }
    }
    let (mut datagrams, mut bytes) = (vec![0usize; receivers], vec![0usize; receivers]);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    // One clock read per duty cycle (and one more after a busy one), as the transport's
    // receiving loop does.
    let end_ns = now_ns() + end.saturating_duration_since(Instant::now()).as_nanos() as u64;
    let mut busy_ns = 0u64;
    loop {
        let t0 = now_ns();
        if t0 >= end_ns {
            break;
        }
        let mut work = 0;
        for (i, s) in sockets.iter().enumerate() {
            let (n, b) = raw::recv_batch(s, &mut bufs, slot);
            // Every datagram has the same length, so a coalesced read holds b / length.
            datagrams[i] += if segmented { b / datagram_length } else { n };
            bytes[i] += b;
            work += n;
        }
        if work > 0 {
            busy_ns += now_ns() - t0;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    eprintln!(
        "bench transport: raw receiving thread busy_ns_per_datagram={:.0}",
        busy_ns as f64 / datagrams.iter().sum::<usize>().max(1) as f64
    );
    stop.store(true, Ordering::Relaxed);
    sender.join().map_err(|_| "raw sender panicked")??;
    let min = |v: &[usize]| *v.iter().min().unwrap_or(&0) as f64 / elapsed;
    Ok((min(&datagrams), min(&bytes)))
}

/// The system calls a raw-UDP ping-pong makes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RawCalls {
    /// `sendmmsg` and `recvmmsg` of one datagram each: the baseline as the transport issue
    /// defines it (the calls a batching implementation makes).
    Mmsg,
    /// `send` and `recv`: the cheapest calls there are (no message header to copy in), a
    /// stricter baseline, reported beside it.
    SendRecv,
}

/// Raw UDP ping-pong round trips of `datagram_length` bytes, in nanoseconds.
fn raw_rtt(
    datagram_length: usize,
    samples: u64,
    calls: RawCalls,
    trace: &mut Vec<(u64, u64)>,
) -> Result<Histogram<u64>, String> {
    let send = move |s: &UdpSocket, b: &[u8]| match calls {
        RawCalls::Mmsg => raw::send_one(s, b),
        RawCalls::SendRecv => s.send(b).is_ok(),
    };
    let recv = move |s: &UdpSocket, b: &mut [u8]| match calls {
        RawCalls::Mmsg => raw::recv_one(s, b),
        RawCalls::SendRecv => s.recv(b).ok(),
    };
    let a = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let b = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    a.connect(b.local_addr().unwrap())
        .map_err(|e| e.to_string())?;
    b.connect(a.local_addr().unwrap())
        .map_err(|e| e.to_string())?;
    a.set_nonblocking(true).map_err(|e| e.to_string())?;
    b.set_nonblocking(true).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let pong = std::thread::spawn(move || {
        pin_to(1);
        let mut buf = vec![0u8; 65536];
        while !stop2.load(Ordering::Relaxed) {
            if let Some(n) = recv(&b, &mut buf) {
                send(&b, &buf[..n]);
            }
        }
    });
    pin_to(0);
    let mut h =
        Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).map_err(|e| e.to_string())?;
    // Reserved ahead: growing it while measuring would add to the tail being measured.
    trace.reserve(samples as usize);
    let mut buf = vec![1u8; datagram_length];
    let mut rbuf = vec![0u8; 65536];
    let mut lost = 0u64;
    for i in 0..samples + samples / 10 {
        buf[..8].copy_from_slice(&i.to_le_bytes());
        let (t0, t0_ns) = (Instant::now(), now_ns());
        let mut resend_after = Duration::from_millis(200);
        if !send(&a, &buf) {
            return Err(format!("raw UDP send: {}", std::io::Error::last_os_error()));
        }
        loop {
            if let Some(n) = recv(&a, &mut rbuf) {
                if n >= 8 && rbuf[..8] == buf[..8] {
                    break;
                }
            }
            if t0.elapsed() > resend_after {
                lost += 1; // raw UDP has no recovery: resend and record the wait
                resend_after += Duration::from_millis(200);
                send(&a, &buf);
            }
            if lost > 100 {
                return Err("raw UDP ping-pong lost more than 100 datagrams".into());
            }
        }
        if i >= samples / 10 {
            let rtt = t0.elapsed().as_nanos() as u64;
            let _ = h.record(rtt);
            trace.push((t0_ns, rtt));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = pong.join();
    Ok(h)
}

// ---------------------------------------------------------------- transport

/// Transport throughput of 64-byte messages per receiver, the slowest receiver's.
fn transport_throughput(setup: Setup, receivers: usize, seconds: f64) -> Result<Rate, String> {
    let mtu = setup.0;
    let port = free_port()?;
    let channel = if receivers > 1 {
        Channel::multicast(
            SocketAddrV4::new(Ipv4Addr::new(239, 255, 77, 2), port),
            Ipv4Addr::LOCALHOST,
        )
    } else {
        Channel::unicast(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
    };
    let mut subs = Vec::new();
    for _ in 0..receivers {
        subs.push(
            Subscription::new(&channel, STREAM_ID, config(setup)).map_err(|e| e.to_string())?,
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let offered = Arc::new(AtomicU64::new(0));
    let offered2 = offered.clone();
    let publisher = std::thread::spawn(move || -> Result<u64, String> {
        pin_to(0);
        let mut p =
            Publication::new(&channel, STREAM_ID, config(setup)).map_err(|e| e.to_string())?;
        // Each message: its sequence number (8 bytes, little-endian), then `TAIL`.
        let mut msg = [42u8; MESSAGE_LENGTH];
        let mut seq = 0u64;
        let offers_per_cycle = (mtu / 96).max(1) * 16;
        let mut back_pressure = 0u64;
        let mut cycles = 0u64;
        let mut flow_blocked = 0u64;
        let mut ahead_sum = 0u64;
        let mut busy_ns = 0u64;
        let cpu0 = thread_cpu_ns();
        while !stop2.load(Ordering::Relaxed) {
            cycles += 1;
            {
                if p.sender().is_flow_control_blocked() {
                    flow_blocked += 1;
                }
                ahead_sum += (p.position() - p.sender().sender_position()) as u64;
            }
            // Offer up to a few datagrams' worth per duty cycle so each sendmmsg carries many.
            let t0 = now_ns();
            let mut work = 0;
            for _ in 0..offers_per_cycle {
                msg[..8].copy_from_slice(&seq.to_le_bytes());
                match p.offer(&msg) {
                    Ok(_) => {
                        work += 1;
                        seq += 1;
                    }
                    Err(OfferError::BackPressured) => {
                        back_pressure += 1;
                        break;
                    }
                    Err(OfferError::NotConnected) => break,
                    Err(e) => return Err(e.to_string()),
                }
            }
            work += p.do_work(t0);
            if work > 0 {
                busy_ns += now_ns() - t0;
            }
        }
        offered2.store(p.position() as u64, Ordering::Relaxed);
        let c = p.counters();
        eprintln!(
            "bench transport: publisher cpu_ns_per_datagram={:.0} (including waits for flow control) busy_ns_per_datagram={:.0} unsent_bytes_mean={}",
            (thread_cpu_ns() - cpu0) as f64
                / c.get(transport::CounterId::DatagramsSent).max(1) as f64,
            busy_ns as f64 / c.get(transport::CounterId::DatagramsSent).max(1) as f64,
            ahead_sum / cycles.max(1)
        );
        eprintln!(
            "bench transport: publisher cycles={cycles} back_pressured={back_pressure} flow_control_blocked={flow_blocked} datagrams_sent={} data_frames_sent={} status_messages_received={}",
            c.get(transport::CounterId::DatagramsSent),
            c.get(transport::CounterId::DataFramesSent),
            c.get(transport::CounterId::StatusMessagesReceived),
        );
        Ok(back_pressure)
    });
    pin_to(1);
    let mut counts = vec![0u64; receivers];
    // Per receiver, the sequence number its next message must carry (none before the first).
    let mut next: Vec<Option<u64>> = vec![None; receivers];
    let mut malformed = 0u64;
    let wire = |subs: &[Subscription]| -> Vec<u64> {
        subs.iter()
            .map(|s| s.counters().get(transport::CounterId::BytesReceived))
            .collect()
    };
    // Duty cycles of the receiving thread, and those where no subscription had work (how
    // often the receiver waited for the sender: printed to tell which side limits).
    let (mut rx_cycles, mut rx_idle, mut rx_busy_ns) = (0u64, 0u64, 0u64);
    let mut run = |subs: &mut Vec<Subscription>, counts: &mut Vec<u64>, until: Instant| {
        // One clock read per duty cycle, as the raw-UDP receiver loop does.
        let until_ns = now_ns() + until.saturating_duration_since(Instant::now()).as_nanos() as u64;
        loop {
            let now = now_ns();
            if now >= until_ns {
                break;
            }
            let mut work = 0;
            for (i, s) in subs.iter_mut().enumerate() {
                work += s.do_work(now);
                let (c, next, bad) = (&mut counts[i], &mut next[i], &mut malformed);
                work += s.poll(
                    |m, _| {
                        if next_offered(next, m) {
                            *c += 1;
                        } else {
                            *bad += 1;
                        }
                    },
                    4096,
                );
            }
            rx_cycles += 1;
            rx_idle += u64::from(work == 0);
            if work > 0 {
                rx_busy_ns += now_ns() - now;
            }
        }
    };
    // Connect and warm up.
    let connect_deadline = Instant::now() + Duration::from_secs(5);
    while counts.contains(&0) {
        if Instant::now() > connect_deadline {
            stop.store(true, Ordering::Relaxed);
            let _ = publisher.join();
            return Err(format!(
                "transport did not connect on {:?}",
                channel.endpoint
            ));
        }
        run(
            &mut subs,
            &mut counts,
            Instant::now() + Duration::from_millis(10),
        );
    }
    run(
        &mut subs,
        &mut counts,
        Instant::now() + Duration::from_millis(300),
    );
    let (c0, w0) = (counts.clone(), wire(&subs));
    let start = Instant::now();
    run(
        &mut subs,
        &mut counts,
        start + Duration::from_secs_f64(seconds),
    );
    let elapsed = start.elapsed().as_secs_f64();
    let w1 = wire(&subs);
    let datagrams: u64 = subs
        .iter()
        .map(|s| s.counters().get(transport::CounterId::DatagramsReceived))
        .sum();
    eprintln!(
        "bench transport: receiving thread cycles={rx_cycles} idle={rx_idle} busy_ns_per_datagram={:.0}",
        rx_busy_ns as f64 / datagrams.max(1) as f64
    );
    for s in &subs {
        let c = s.counters();
        eprintln!(
            "bench transport: receiver naks_sent={} drops_duplicate={} drops_out_of_window={} datagrams_received={}",
            c.get(transport::CounterId::NaksSent),
            c.get(transport::CounterId::DropsDuplicate),
            c.get(transport::CounterId::DropsOutOfWindow),
            c.get(transport::CounterId::DatagramsReceived)
        );
    }
    stop.store(true, Ordering::Relaxed);
    publisher.join().map_err(|_| "publisher panicked")??;
    if malformed > 0 {
        return Err(format!(
            "the transport delivered {malformed} messages that were not the next one offered \
             (length, contents or sequence)"
        ));
    }
    let msgs = (0..receivers)
        .map(|i| (counts[i] - c0[i]) as f64 / elapsed)
        .fold(f64::INFINITY, f64::min);
    let wire_bytes = (0..receivers)
        .map(|i| (w1[i] - w0[i]) as f64 / elapsed)
        .fold(f64::INFINITY, f64::min);
    Ok(Rate {
        msgs,
        delivered_bytes: msgs * frame_length() as f64,
        wire_bytes,
    })
}

/// Whether `m` is the message offered after the last one this receiver took (`next`: the
/// sequence number it must carry, none before the first): its length, its sequence number and
/// [`TAIL`]. Takes it (moves `next` on) if so.
#[inline(always)]
fn next_offered(next: &mut Option<u64>, m: &[u8]) -> bool {
    // One `bcmp` of the 56 bytes after the sequence number: a check byte by byte cost more
    // per message than the transport's own work.
    if m.len() != MESSAGE_LENGTH || m[8..] != TAIL {
        return false;
    }
    let seq = u64::from_le_bytes(m[..8].try_into().expect("8 bytes"));
    if next.is_some_and(|n| n != seq) {
        return false;
    }
    *next = Some(seq + 1);
    true
}

/// The length of one 64-byte message's frame: header and message, aligned.
fn frame_length() -> usize {
    (MESSAGE_LENGTH + frame::DATA_HEADER_LENGTH).div_ceil(frame::FRAME_ALIGNMENT)
        * frame::FRAME_ALIGNMENT
}

/// A transport throughput figure, per receiver (the slowest's).
#[derive(Clone, Copy)]
struct Rate {
    /// Messages delivered whole per second.
    msgs: f64,
    /// Their frames' bytes per second (header and message, aligned): what the datagrams
    /// carried that was delivered, retransmits, duplicates and control frames left out.
    delivered_bytes: f64,
    /// Every byte the subscription read per second (the `BytesReceived` counter).
    wire_bytes: f64,
}

/// Transport ping-pong: round trips of one 64-byte message, in nanoseconds.
fn transport_rtt(
    setup: Setup,
    samples: u64,
    trace: &mut Vec<(u64, u64)>,
) -> Result<Histogram<u64>, String> {
    let (port_a, port_b) = (free_port()?, free_port()?);
    let ch_a = Channel::unicast(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port_a));
    let ch_b = Channel::unicast(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port_b));
    let mut ping_sub =
        Subscription::new(&ch_b, STREAM_ID, config(setup)).map_err(|e| e.to_string())?;
    let mut ping_pub =
        Publication::new(&ch_a, STREAM_ID, config(setup)).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let pong = std::thread::spawn(move || -> Result<(), String> {
        pin_to(1);
        let mut sub =
            Subscription::new(&ch_a, STREAM_ID, config(setup)).map_err(|e| e.to_string())?;
        let mut publication =
            Publication::new(&ch_b, STREAM_ID, config(setup)).map_err(|e| e.to_string())?;
        let mut pending: Option<[u8; MESSAGE_LENGTH]> = None;
        while !stop2.load(Ordering::Relaxed) {
            let now = now_ns();
            sub.do_work(now);
            if pending.is_none() {
                sub.poll(
                    |m, _| {
                        let mut b = [0u8; MESSAGE_LENGTH];
                        b[..m.len().min(MESSAGE_LENGTH)]
                            .copy_from_slice(&m[..m.len().min(MESSAGE_LENGTH)]);
                        pending = Some(b);
                    },
                    1,
                );
            }
            if let Some(b) = pending {
                if publication.offer(&b).is_ok() {
                    pending = None;
                }
            }
            publication.do_work(now);
        }
        Ok(())
    });
    pin_to(0);
    let mut h =
        Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).map_err(|e| e.to_string())?;
    // Reserved ahead: growing it while measuring would add to the tail being measured.
    trace.reserve(samples as usize);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(ping_pub.is_connected() && ping_sub.receiver().image_count() > 0) {
        if Instant::now() > deadline {
            stop.store(true, Ordering::Relaxed);
            let _ = pong.join();
            return Err("ping-pong did not connect".into());
        }
        let now = now_ns();
        ping_pub.do_work(now);
        ping_sub.do_work(now);
        // Prime the pong side's publication with one message so it connects too.
        if ping_pub.is_connected() && ping_sub.receiver().image_count() == 0 {
            let _ = ping_pub.offer(&[0u8; MESSAGE_LENGTH]);
        }
    }
    ping_sub.poll(|_, _| {}, usize::MAX);
    let mut msg = [0u8; MESSAGE_LENGTH];
    for i in 0..samples + samples / 10 {
        msg[..8].copy_from_slice(&i.to_le_bytes());
        let (t0, t0_ns) = (Instant::now(), now_ns());
        while ping_pub.offer(&msg).is_err() {
            ping_pub.do_work(now_ns());
        }
        let mut got = false;
        while !got {
            let now = now_ns();
            ping_pub.do_work(now);
            ping_sub.do_work(now);
            ping_sub.poll(|m, _| got |= m.len() >= 8 && m[..8] == i.to_le_bytes(), 16);
            // One clock read per spin, as in the raw loop (the transport needs `now` anyway).
            if now.saturating_sub(t0_ns) > 1_000_000_000 {
                break; // a lost datagram waits for a NAK round; record it as measured
            }
        }
        if i >= samples / 10 {
            let rtt = t0.elapsed().as_nanos() as u64;
            let _ = h.record(rtt);
            trace.push((t0_ns, rtt));
        }
    }
    stop.store(true, Ordering::Relaxed);
    pong.join().map_err(|_| "pong panicked")??;
    Ok(h)
}

/// Round trips from this long count as slow in [`slow_round_trips`]: about twice raw UDP's
/// p50 on loopback here, where the host's stalls of the guest (about 10 µs) land them.
const SLOW_ROUND_TRIP_NS: u64 = 10_000;

/// How often round trips were slow ([`SLOW_ROUND_TRIP_NS`] or more).
struct Slow {
    /// Of all round trips.
    share: f64,
    /// Per second spent in round trips: stalls that strike at random times hit a longer
    /// round trip more often, so stalls alone give two kinds of round trip the same rate
    /// here, and shares in proportion to their lengths; p99 crosses into the stalls' region
    /// once the share passes 1 %.
    per_rtt_s: f64,
}

fn slow_round_trips(trace: &[(u64, u64)]) -> Slow {
    let slow = trace
        .iter()
        .filter(|&&(_, rtt)| rtt >= SLOW_ROUND_TRIP_NS)
        .count() as f64;
    let spent_s = trace.iter().map(|&(_, rtt)| rtt as f64).sum::<f64>() / 1e9;
    Slow {
        share: (slow / trace.len().max(1) as f64 * 1e5).round() / 1e5,
        per_rtt_s: if spent_s > 0.0 { slow / spent_s } else { 0.0 },
    }
}

/// Writes round trips as lines `LABEL START_NS RTT_NS`.
fn write_rtt_trace(path: &str, traces: &[(&str, &[(u64, u64)])]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (label, samples) in traces {
        for (start, rtt) in *samples {
            writeln!(out, "{label} {start} {rtt}")?;
        }
    }
    out.flush()
}

/// Runs the scenario.
pub fn run(args: &[String]) -> Result<(), String> {
    let o = parse(args)?;
    let machine = machine(); // before pinning, which narrows the visible cores
    config(o.setup())
        .validate()
        .map_err(|e| format!("--mtu {} --term-length {}: {e}", o.mtu, o.term_length))?;
    // A full datagram of 64-byte messages: each frame is 96 bytes (32-byte header).
    let frame = frame_length();
    let datagram = o.mtu / frame * frame;

    let phase = |name: &str| eprintln!("bench transport: {name}");
    let empty =
        || Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).map_err(|e| e.to_string());
    // Each figure is measured in `rounds` slices, the raw-UDP baseline and the transport in
    // turn (raw, transport, raw, transport, ...), so that both see the same machine: on a
    // shared machine the load drifts over seconds, and a baseline measured minutes apart
    // from its transport run is not the same measurement. Rates are means over the rounds;
    // ratios are the median of the rounds' ratios (each from adjacent slices).
    let rounds = o.rounds;
    let slice = o.seconds / rounds as f64;
    let mut raw_uni = Vec::new();
    let mut uni = Vec::new();
    let mut raw_multi = Vec::new();
    let mut multi = Vec::new();
    let (mut raw_uni_seg, mut raw_multi_seg) = (Vec::new(), Vec::new());
    let mut raw_h = empty()?;
    let mut raw_sr_h = empty()?;
    let mut tr_h = empty()?;
    let (mut raw_trace, mut raw_sr_trace, mut tr_trace) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        // Announces phase `key` of this round and says whether it is to run.
        let step = |key: &str, what: &str| {
            phase(&format!("round {round}/{rounds}: {what}"));
            o.runs(key)
        };
        if step("raw-unicast", "raw UDP unicast throughput") {
            raw_uni.push(raw_throughput(datagram, 1, slice, false)?);
        }
        if step("unicast", "transport unicast throughput") {
            uni.push(transport_throughput(o.setup(), 1, slice)?);
        }
        if step(
            "raw-unicast-segmented",
            "raw UDP unicast throughput, segmented",
        ) {
            raw_uni_seg.push(raw_throughput(datagram, 1, slice, true)?);
        }
        if step("raw-multicast", "raw UDP multicast throughput") {
            raw_multi.push(raw_throughput(datagram, 2, slice, false)?);
        }
        if step("multicast", "transport multicast throughput") {
            multi.push(transport_throughput(o.setup(), 2, slice)?);
        }
        if step(
            "raw-multicast-segmented",
            "raw UDP multicast throughput, segmented",
        ) {
            raw_multi_seg.push(raw_throughput(datagram, 2, slice, true)?);
        }
    }
    // Round trips alternate on their own, in shorter and more numerous slices than
    // throughput: the host's bursts of noise last tens of milliseconds, and a slice of a few
    // tens of milliseconds that one of them hit, with the other kind's slice spared, moved
    // the p99 ratio by half (20,000 round trips in 3 slices of about 30 ms gave 0.99-1.61
    // on the development VM).
    let rtt_rounds = o.rtt_rounds;
    for round in 1..=rtt_rounds {
        let step = |key: &str, what: &str| {
            phase(&format!("round trips {round}/{rtt_rounds}: {what}"));
            o.runs(key)
        };
        for (key, what, calls, h, trace) in [
            (
                "raw-rtt",
                "raw UDP round trips (sendmmsg/recvmmsg)",
                RawCalls::Mmsg,
                &mut raw_h,
                &mut raw_trace,
            ),
            (
                "raw-rtt-send-recv",
                "raw UDP round trips (send/recv)",
                RawCalls::SendRecv,
                &mut raw_sr_h,
                &mut raw_sr_trace,
            ),
        ] {
            if step(key, what) {
                h.add(raw_rtt(frame, o.rtt_samples / rtt_rounds, calls, trace)?)
                    .map_err(|e| e.to_string())?;
            }
        }
        if step("rtt", "transport round trips") {
            tr_h.add(transport_rtt(
                o.setup(),
                o.rtt_samples / rtt_rounds,
                &mut tr_trace,
            )?)
            .map_err(|e| e.to_string())?;
        }
    }
    if let Some(path) = &o.rtt_trace {
        write_rtt_trace(
            path,
            &[
                ("raw", &raw_trace),
                ("raw-send-recv", &raw_sr_trace),
                ("transport", &tr_trace),
            ],
        )
        .map_err(|e| format!("--rtt-trace {path}: {e}"))?;
    }
    let mean = |v: &[(f64, f64)], second: bool| {
        v.iter()
            .map(|p| if second { p.1 } else { p.0 })
            .sum::<f64>()
            / v.len().max(1) as f64
    };
    let mean_of =
        |v: &[Rate], f: fn(&Rate) -> f64| v.iter().map(f).sum::<f64>() / v.len().max(1) as f64;
    // Delivered bytes against the raw baseline's bytes, round by round.
    let ratios = |t: &[Rate], r: &[(f64, f64)]| -> Vec<f64> {
        t.iter()
            .zip(r)
            .map(|(t, r)| (t.delivered_bytes / r.1 * 1000.0).round() / 1000.0)
            .collect()
    };
    let median = |mut v: Vec<f64>| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    let (raw_uni_dgrams, raw_uni_bytes) = (mean(&raw_uni, false), mean(&raw_uni, true));
    let (raw_multi_dgrams, raw_multi_bytes) = (mean(&raw_multi, false), mean(&raw_multi, true));
    let (raw_uni_seg_dgrams, raw_multi_seg_dgrams) =
        (mean(&raw_uni_seg, false), mean(&raw_multi_seg, false));
    let (raw_uni_seg_bytes, raw_multi_seg_bytes) =
        (mean(&raw_uni_seg, true), mean(&raw_multi_seg, true));
    let (uni_msgs, uni_bytes) = (mean_of(&uni, |r| r.msgs), mean_of(&uni, |r| r.wire_bytes));
    let (multi_msgs, multi_bytes) = (
        mean_of(&multi, |r| r.msgs),
        mean_of(&multi, |r| r.wire_bytes),
    );
    let uni_ratios = ratios(&uni, &raw_uni);
    let multi_ratios = ratios(&multi, &raw_multi);
    let uni_seg_ratios = ratios(&uni, &raw_uni_seg);
    let multi_seg_ratios = ratios(&multi, &raw_multi_seg);
    let p99 = |h: &Histogram<u64>| h.value_at_quantile(0.99) as f64 / 1000.0;
    let (raw_slow, raw_sr_slow, tr_slow) = (
        slow_round_trips(&raw_trace),
        slow_round_trips(&raw_sr_trace),
        slow_round_trips(&tr_trace),
    );
    let ratio = |a: f64, b: f64| ((a / b) * 1000.0).round() / 1000.0;

    let v = json!({
        "scenario": "transport",
        "machine": machine,
        "command": format!("cargo run --release -p bench -- transport --mtu {} --term-length {} --seconds {} --rtt-samples {} --rounds {} --rtt-rounds {}{}{}{}{}",
            o.mtu, o.term_length, o.seconds, o.rtt_samples, o.rounds, o.rtt_rounds,
            if o.phases.is_empty() { String::new() } else { format!(" --phases {}", o.phases.join(",")) },
            if o.udp_segmentation { "" } else { " --no-udp-segmentation" },
            if o.udp_coalescing { "" } else { " --no-udp-coalescing" },
            if o.json { " --json" } else { "" }),
        "mtu": o.mtu,
        "message_length": MESSAGE_LENGTH,
        "datagram_length": datagram,
        "term_length": config(o.setup()).term_length,
        "publication_window": config(o.setup()).publication_window,
        "udp_segmentation": o.udp_segmentation,
        "udp_coalescing": o.udp_coalescing,
        "unicast_msgs_per_s": uni_msgs.round(),
        "multicast_msgs_per_s": multi_msgs.round(),
        "unicast_wire_bytes_per_s": uni_bytes.round(),
        "multicast_wire_bytes_per_s": multi_bytes.round(),
        "unicast_delivered_bytes_per_s": mean_of(&uni, |r| r.delivered_bytes).round(),
        "multicast_delivered_bytes_per_s": mean_of(&multi, |r| r.delivered_bytes).round(),
        "raw_udp_unicast_datagrams_per_s": raw_uni_dgrams.round(),
        "raw_udp_unicast_bytes_per_s": raw_uni_bytes.round(),
        "raw_udp_multicast_datagrams_per_s": raw_multi_dgrams.round(),
        "raw_udp_multicast_bytes_per_s": raw_multi_bytes.round(),
        "throughput_ratio_to_raw_udp": median(uni_ratios.clone()),
        "multicast_throughput_ratio_to_raw_udp": median(multi_ratios.clone()),
        "throughput_ratio_to_raw_udp_per_round": uni_ratios,
        "multicast_throughput_ratio_to_raw_udp_per_round": multi_ratios,
        "raw_udp_segmented_unicast_datagrams_per_s": raw_uni_seg_dgrams.round(),
        "raw_udp_segmented_multicast_datagrams_per_s": raw_multi_seg_dgrams.round(),
        "raw_udp_segmented_unicast_bytes_per_s": raw_uni_seg_bytes.round(),
        "raw_udp_segmented_multicast_bytes_per_s": raw_multi_seg_bytes.round(),
        "throughput_ratio_to_raw_udp_segmented": median(uni_seg_ratios.clone()),
        "multicast_throughput_ratio_to_raw_udp_segmented": median(multi_seg_ratios.clone()),
        "throughput_ratio_to_raw_udp_segmented_per_round": uni_seg_ratios,
        "multicast_throughput_ratio_to_raw_udp_segmented_per_round": multi_seg_ratios,
        "rounds": rounds,
        "rtt_rounds": rtt_rounds,
        "rtt_samples": o.rtt_samples,
        "rtt_p99_us": p99(&tr_h),
        "raw_udp_rtt_p99_us": p99(&raw_h),
        "rtt_p99_ratio_to_raw_udp": ratio(p99(&tr_h), p99(&raw_h)),
        "rtt": latency_us(&tr_h),
        "raw_udp_rtt": latency_us(&raw_h),
        "raw_udp_rtt_calls": "sendmmsg/recvmmsg, one datagram each",
        "raw_udp_send_recv_rtt_p99_us": p99(&raw_sr_h),
        "rtt_p99_ratio_to_raw_udp_send_recv": ratio(p99(&tr_h), p99(&raw_sr_h)),
        "raw_udp_send_recv_rtt": latency_us(&raw_sr_h),
        "rtt_slow_threshold_us": SLOW_ROUND_TRIP_NS as f64 / 1000.0,
        "rtt_slow_share": tr_slow.share,
        "raw_udp_rtt_slow_share": raw_slow.share,
        "rtt_slow_per_rtt_s": tr_slow.per_rtt_s.round(),
        "raw_udp_rtt_slow_per_rtt_s": raw_slow.per_rtt_s.round(),
        "raw_udp_send_recv_rtt_slow_share": raw_sr_slow.share,
        "raw_udp_send_recv_rtt_slow_per_rtt_s": raw_sr_slow.per_rtt_s.round(),
        "idle_strategy": "busy-spin, 2 threads pinned to cores 0 and 1",
        "peak_rss_bytes": peak_rss_bytes(),
        "loadavg_at_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    });
    print(o.json, &v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64) -> [u8; MESSAGE_LENGTH] {
        let mut m = [42u8; MESSAGE_LENGTH];
        m[..8].copy_from_slice(&seq.to_le_bytes());
        m
    }

    #[test]
    fn only_the_next_message_offered_is_taken() {
        let mut next = None;
        assert!(
            next_offered(&mut next, &message(7)),
            "the first may carry any number"
        );
        assert!(next_offered(&mut next, &message(8)));
        assert!(!next_offered(&mut next, &message(8)), "a duplicate");
        assert!(!next_offered(&mut next, &message(10)), "a message skipped");
        assert!(!next_offered(&mut next, &message(7)), "an older one");
        let mut corrupt = message(9);
        corrupt[MESSAGE_LENGTH - 1] = 0;
        assert!(!next_offered(&mut next, &corrupt), "a changed byte");
        assert!(!next_offered(&mut next, &message(9)[..40]), "a short one");
        assert!(!next_offered(&mut next, &[]), "an empty one");
        assert!(
            next_offered(&mut next, &message(9)),
            "refusals leave the sequence where it was"
        );
        assert_eq!(next, Some(10));
    }
}
