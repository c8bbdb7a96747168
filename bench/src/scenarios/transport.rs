//! `bench transport`: throughput of 64-byte messages over the transport (unicast, and multicast
//! to 2 receivers, on loopback) and ping-pong round-trip latency, each beside a raw-UDP
//! baseline measured in the same run with the same datagram sizes (`sendmmsg`/`recvmmsg`, no
//! protocol), so the ratio is visible.
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
use transport::{now_ns, Agent, Channel, Config, OfferError, Publication, Subscription};

use crate::report::{latency_us, machine, peak_rss_bytes, pin_to, print};

const MESSAGE_LENGTH: usize = 64;
const STREAM_ID: i32 = 1;

struct Options {
    mtu: usize,
    json: bool,
    seconds: f64,
    rtt_samples: u64,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        mtu: transport::config::MTU_DEFAULT,
        json: false,
        seconds: 2.0,
        rtt_samples: 20_000,
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
            "--help" | "-h" => {
                return Err("options: --mtu N (default 1408; a multiple of 32), --seconds S \
                            (per throughput phase, default 2), --rtt-samples N (default 20000), --json"
                    .into())
            }
            other => return Err(format!("unknown option '{other}' (try --help)")),
        }
    }
    Ok(o)
}

fn config(mtu: usize) -> Config {
    // A term large enough that the publication window covers many datagrams at any MTU.
    let term_length = (mtu * 2048).next_power_of_two().max(4 * 1024 * 1024);
    Config {
        mtu,
        ..Config::with_term_length(term_length)
    }
}

fn free_port() -> Result<u16, String> {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

// ---------------------------------------------------------------- raw UDP baselines

#[allow(unsafe_code)]
mod raw {
    //! Raw UDP with `sendmmsg`/`recvmmsg` and no protocol: the baseline.
    use std::os::fd::AsRawFd;

    pub const BATCH: usize = 32;

    /// Sends `BATCH` datagrams of `length` bytes to the socket's connected peer; returns sent.
    pub fn send_batch(socket: &impl AsRawFd, buf: &mut [u8], length: usize) -> usize {
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
                BATCH as u32,
                libc::MSG_DONTWAIT,
            )
        };
        r.max(0) as usize
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

/// Raw UDP throughput: datagrams/s and bytes/s per receiver.
fn raw_throughput(
    datagram_length: usize,
    receivers: usize,
    seconds: f64,
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
        let mut buf = vec![7u8; datagram_length];
        while !stop2.load(Ordering::Relaxed) {
            raw::send_batch(&s, &mut buf, datagram_length);
        }
        Ok(())
    });
    pin_to(1);
    let slot = datagram_length.max(2048);
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
    while Instant::now() < end {
        for (i, s) in sockets.iter().enumerate() {
            let (n, b) = raw::recv_batch(s, &mut bufs, slot);
            datagrams[i] += n;
            bytes[i] += b;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    sender.join().map_err(|_| "raw sender panicked")??;
    let min = |v: &[usize]| *v.iter().min().unwrap_or(&0) as f64 / elapsed;
    Ok((min(&datagrams), min(&bytes)))
}

/// Raw UDP ping-pong round trips of `datagram_length` bytes, in nanoseconds.
fn raw_rtt(datagram_length: usize, samples: u64) -> Result<Histogram<u64>, String> {
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
            if let Ok(n) = b.recv(&mut buf) {
                let _ = b.send(&buf[..n]);
            }
        }
    });
    pin_to(0);
    let mut h =
        Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).map_err(|e| e.to_string())?;
    let mut buf = vec![1u8; datagram_length];
    let mut rbuf = vec![0u8; 65536];
    let mut lost = 0u64;
    for i in 0..samples + samples / 10 {
        buf[..8].copy_from_slice(&i.to_le_bytes());
        let t0 = Instant::now();
        a.send(&buf).map_err(|e| e.to_string())?;
        loop {
            if let Ok(n) = a.recv(&mut rbuf) {
                if n >= 8 && rbuf[..8] == buf[..8] {
                    break;
                }
            }
            if t0.elapsed() > Duration::from_millis(200) {
                lost += 1; // raw UDP has no recovery: resend and record the wait
                let _ = a.send(&buf);
            }
            if lost > 100 {
                return Err("raw UDP ping-pong lost more than 100 datagrams".into());
            }
        }
        if i >= samples / 10 {
            let _ = h.record(t0.elapsed().as_nanos() as u64);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = pong.join();
    Ok(h)
}

// ---------------------------------------------------------------- transport

/// Transport throughput of 64-byte messages: (messages/s per receiver, min over receivers;
/// wire bytes/s per receiver).
fn transport_throughput(mtu: usize, receivers: usize, seconds: f64) -> Result<(f64, f64), String> {
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
        subs.push(Subscription::new(&channel, STREAM_ID, config(mtu)).map_err(|e| e.to_string())?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let offered = Arc::new(AtomicU64::new(0));
    let offered2 = offered.clone();
    let publisher = std::thread::spawn(move || -> Result<u64, String> {
        pin_to(0);
        let mut p =
            Publication::new(&channel, STREAM_ID, config(mtu)).map_err(|e| e.to_string())?;
        let msg = [42u8; MESSAGE_LENGTH];
        let offers_per_cycle = (mtu / 96).max(1) * 16;
        let mut back_pressure = 0u64;
        let mut cycles = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            cycles += 1;
            // Offer up to a few datagrams' worth per duty cycle so each sendmmsg carries many.
            for _ in 0..offers_per_cycle {
                match p.offer(&msg) {
                    Ok(_) => {}
                    Err(OfferError::BackPressured) => {
                        back_pressure += 1;
                        break;
                    }
                    Err(OfferError::NotConnected) => break,
                    Err(e) => return Err(e.to_string()),
                }
            }
            p.do_work(now_ns());
        }
        offered2.store(p.position() as u64, Ordering::Relaxed);
        let c = p.counters();
        eprintln!(
            "bench transport: publisher cycles={cycles} back_pressured={back_pressure} datagrams_sent={} data_frames_sent={} status_messages_received={}",
            c.get(transport::CounterId::DatagramsSent),
            c.get(transport::CounterId::DataFramesSent),
            c.get(transport::CounterId::StatusMessagesReceived),
        );
        Ok(back_pressure)
    });
    pin_to(1);
    let mut counts = vec![0u64; receivers];
    let wire = |subs: &[Subscription]| -> Vec<u64> {
        subs.iter()
            .map(|s| s.counters().get(transport::CounterId::BytesReceived))
            .collect()
    };
    let run = |subs: &mut Vec<Subscription>, counts: &mut Vec<u64>, until: Instant| {
        // One clock read per duty cycle, as the raw-UDP receiver loop does.
        let until_ns = now_ns() + until.saturating_duration_since(Instant::now()).as_nanos() as u64;
        loop {
            let now = now_ns();
            if now >= until_ns {
                break;
            }
            for (i, s) in subs.iter_mut().enumerate() {
                s.do_work(now);
                let c = &mut counts[i];
                s.poll(|_, _| *c += 1, 4096);
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
    let msgs = (0..receivers)
        .map(|i| (counts[i] - c0[i]) as f64 / elapsed)
        .fold(f64::INFINITY, f64::min);
    let bytes = (0..receivers)
        .map(|i| (w1[i] - w0[i]) as f64 / elapsed)
        .fold(f64::INFINITY, f64::min);
    Ok((msgs, bytes))
}

/// Transport ping-pong: round trips of one 64-byte message, in nanoseconds.
fn transport_rtt(mtu: usize, samples: u64) -> Result<Histogram<u64>, String> {
    let (port_a, port_b) = (free_port()?, free_port()?);
    let ch_a = Channel::unicast(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port_a));
    let ch_b = Channel::unicast(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port_b));
    let mut ping_sub =
        Subscription::new(&ch_b, STREAM_ID, config(mtu)).map_err(|e| e.to_string())?;
    let mut ping_pub =
        Publication::new(&ch_a, STREAM_ID, config(mtu)).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let pong = std::thread::spawn(move || -> Result<(), String> {
        pin_to(1);
        let mut sub =
            Subscription::new(&ch_a, STREAM_ID, config(mtu)).map_err(|e| e.to_string())?;
        let mut publication =
            Publication::new(&ch_b, STREAM_ID, config(mtu)).map_err(|e| e.to_string())?;
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
        let t0 = Instant::now();
        while ping_pub.offer(&msg).is_err() {
            ping_pub.do_work(now_ns());
        }
        let mut got = false;
        while !got {
            let now = now_ns();
            ping_pub.do_work(now);
            ping_sub.do_work(now);
            ping_sub.poll(|m, _| got |= m.len() >= 8 && m[..8] == i.to_le_bytes(), 16);
            if t0.elapsed() > Duration::from_secs(1) {
                break; // a lost datagram waits for a NAK round; record it as measured
            }
        }
        if i >= samples / 10 {
            let _ = h.record(t0.elapsed().as_nanos() as u64);
        }
    }
    stop.store(true, Ordering::Relaxed);
    pong.join().map_err(|_| "pong panicked")??;
    Ok(h)
}

/// Runs the scenario.
pub fn run(args: &[String]) -> Result<(), String> {
    let o = parse(args)?;
    let machine = machine(); // before pinning, which narrows the visible cores
    config(o.mtu)
        .validate()
        .map_err(|e| format!("--mtu {}: {e}", o.mtu))?;
    // A full datagram of 64-byte messages: each frame is 96 bytes (32-byte header).
    let frame = (MESSAGE_LENGTH + 32).div_ceil(32) * 32;
    let datagram = o.mtu / frame * frame;

    let phase = |name: &str| eprintln!("bench transport: {name}");
    phase("raw UDP unicast throughput");
    let (raw_uni_dgrams, raw_uni_bytes) = raw_throughput(datagram, 1, o.seconds)?;
    phase("raw UDP multicast throughput");
    let (raw_multi_dgrams, raw_multi_bytes) = raw_throughput(datagram, 2, o.seconds)?;
    phase("transport unicast throughput");
    let (uni_msgs, uni_bytes) = transport_throughput(o.mtu, 1, o.seconds)?;
    phase("transport multicast throughput");
    let (multi_msgs, multi_bytes) = transport_throughput(o.mtu, 2, o.seconds)?;
    phase("raw UDP round trips");
    let raw_h = raw_rtt(frame, o.rtt_samples)?;
    phase("transport round trips");
    let tr_h = transport_rtt(o.mtu, o.rtt_samples)?;
    let p99 = |h: &Histogram<u64>| h.value_at_quantile(0.99) as f64 / 1000.0;

    let v = json!({
        "scenario": "transport",
        "machine": machine,
        "command": format!("cargo run --release -p bench -- transport --mtu {} --seconds {} --rtt-samples {}{}",
            o.mtu, o.seconds, o.rtt_samples, if o.json { " --json" } else { "" }),
        "mtu": o.mtu,
        "message_length": MESSAGE_LENGTH,
        "datagram_length": datagram,
        "unicast_msgs_per_s": uni_msgs.round(),
        "multicast_msgs_per_s": multi_msgs.round(),
        "unicast_wire_bytes_per_s": uni_bytes.round(),
        "multicast_wire_bytes_per_s": multi_bytes.round(),
        "raw_udp_unicast_datagrams_per_s": raw_uni_dgrams.round(),
        "raw_udp_unicast_bytes_per_s": raw_uni_bytes.round(),
        "raw_udp_multicast_datagrams_per_s": raw_multi_dgrams.round(),
        "raw_udp_multicast_bytes_per_s": raw_multi_bytes.round(),
        "throughput_ratio_to_raw_udp": (uni_bytes / raw_uni_bytes * 1000.0).round() / 1000.0,
        "multicast_throughput_ratio_to_raw_udp": (multi_bytes / raw_multi_bytes * 1000.0).round() / 1000.0,
        "rtt_p99_us": p99(&tr_h),
        "raw_udp_rtt_p99_us": p99(&raw_h),
        "rtt_p99_ratio_to_raw_udp": ((p99(&tr_h) / p99(&raw_h)) * 1000.0).round() / 1000.0,
        "rtt": latency_us(&tr_h),
        "raw_udp_rtt": latency_us(&raw_h),
        "idle_strategy": "busy-spin, 2 threads pinned to cores 0 and 1",
        "peak_rss_bytes": peak_rss_bytes(),
        "loadavg_at_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    });
    print(o.json, &v);
    Ok(())
}
