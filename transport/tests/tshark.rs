//! Wireshark's Aeron dissector (Debian `tshark`) decodes every frame we send as valid Aeron:
//! capture our loopback traffic (unicast, with loss injected so NAKs and retransmits occur,
//! fragmented messages, RTT measurement, a clean close), then decode it with
//! `-d udp.port==PORT,aeron` and require no malformed packet and no warning or error mark.
//! Skipped, with a message, when tshark is absent or cannot capture (not root).

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use transport::{
    now_ns, Agent, Channel, Config, IdleStrategy, ImageEvent, Publication, Subscription,
};

fn skip(why: &str) {
    eprintln!("SKIPPED tshark_decodes_every_frame_as_aeron: {why}");
}

/// Stops tshark with SIGINT so that it also stops its `dumpcap` child and flushes the file
/// (SIGKILL would orphan `dumpcap`); kills it only if it does not exit.
fn stop(capture: &mut std::process::Child) {
    let _ = Command::new("kill")
        .args(["-INT", &capture.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = capture.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = capture.kill();
    let _ = capture.wait();
}

/// The running capture; stopped on drop, also when the test panics.
struct Capture(std::process::Child);

impl Drop for Capture {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

#[test]
fn tshark_decodes_every_captured_frame_as_aeron_without_malformed_or_warning_marks() {
    if Command::new("tshark").arg("--version").output().is_err() {
        return skip("tshark not found (apt-get install tshark)");
    }
    let cfg = Config {
        heartbeat_interval_ns: 2_000_000,
        setup_interval_ns: 2_000_000,
        nak_retry_ns: 5_000_000,
        retransmit_linger_ns: 2_000_000,
        ..Config::with_term_length(64 * 1024)
    };
    let mut sub = Subscription::new(
        &Channel::unicast(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)),
        9,
        cfg.clone(),
    )
    .unwrap();
    let SocketAddr::V4(endpoint) = sub.local_addr().unwrap() else {
        panic!("v4")
    };
    let mut publication = Publication::new(&Channel::unicast(endpoint), 9, cfg).unwrap();
    let pub_port = publication.local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!(
        "tally-tshark-{}-{}",
        std::process::id(),
        endpoint.port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let pcap = dir.join("capture.pcapng");
    let filter = format!("udp and (port {} or port {pub_port})", endpoint.port());
    let capture = match Command::new("tshark")
        .args(["-i", "lo", "-f", &filter, "-w"])
        .arg(&pcap)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => Capture(c),
        Err(e) => return skip(&format!("cannot start tshark: {e}")),
    };
    let mut capture = capture;
    // Wait until tshark reports that it is capturing.
    let stderr = capture.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started = loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(l) if l.contains("Capturing on") => break true,
            Ok(_) => continue,
            Err(_) => break false,
        }
    };
    if !started {
        drop(capture);
        return skip("tshark could not capture on lo (needs root or capture capabilities)");
    }
    std::thread::sleep(Duration::from_millis(300));

    sub.inject_loss(0.1, 7);
    let mut idle = IdleStrategy::backoff();
    let deadline = Instant::now() + Duration::from_secs(15);
    let (count, mut next, mut received, mut closed) = (300u64, 0u64, 0u64, false);
    while !closed {
        assert!(
            Instant::now() < deadline,
            "exchange timed out: {next} sent, {received} received"
        );
        if publication.is_connected() && next < count {
            let len = if next % 50 == 0 {
                5000
            } else {
                8 + next as usize % 200
            };
            if publication.offer(&vec![next as u8; len]).is_ok() {
                next += 1;
            }
        }
        if next == count && received == count && !publication.is_closed() {
            publication.close();
        }
        let now = now_ns();
        let mut work = publication.do_work(now) + sub.do_work(now);
        work += sub.poll(|_, _| received += 1, 64);
        while let Some(e) = sub.poll_event() {
            closed |= matches!(e, ImageEvent::Unavailable { .. });
        }
        idle.idle(work);
    }
    std::thread::sleep(Duration::from_millis(500));
    drop(capture);

    let decode = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .args(["-d", &format!("udp.port=={},aeron", endpoint.port())])
        .args(["-T", "fields", "-E", "separator=;", "-E", "occurrence=a"])
        .args([
            "-e",
            "frame.number",
            "-e",
            "_ws.col.Protocol",
            "-e",
            "_ws.malformed",
        ])
        .args(["-e", "_ws.expert.severity", "-e", "_ws.expert.message"])
        .args([
            "-e",
            "aeron.setup.type",
            "-e",
            "aeron.data.type",
            "-e",
            "aeron.sm.type",
        ])
        .args([
            "-e",
            "aeron.nak.type",
            "-e",
            "aeron.rtt.type",
            "-e",
            "aeron.pad.type",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&decode.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.len() > 50,
        "too few packets captured: {}\n{}",
        lines.len(),
        String::from_utf8_lossy(&decode.stderr)
    );
    let mut seen = [0usize; 6];
    let mut nak_reports = 0usize;
    for line in &lines {
        let f: Vec<&str> = line.split(';').collect();
        assert_eq!(f.len(), 11, "{line}");
        assert_eq!(f[1], "Aeron", "not decoded as Aeron: {line}");
        assert!(f[2].is_empty(), "malformed: {line}");
        // Severity: 2097152 = note, 4194304 = warning, 8388608 = error (epan/proto.h).
        // The dissector marks every NAK frame itself with a warning-level "NAK offset X length
        // Y" report (its loss analysis, emitted for any NAK from any implementation); that
        // one is a report of what the frame says, not a decoding complaint, and is allowed.
        let messages: Vec<&str> = f[4].split(',').collect();
        for (i, s) in f[3].split(',').filter(|s| !s.is_empty()).enumerate() {
            let severity: u64 = s.parse().unwrap_or(u64::MAX);
            let message = messages.get(i).copied().unwrap_or("");
            let nak_report = message.starts_with("NAK offset") && !f[8].is_empty();
            assert!(
                severity < 4_194_304 || nak_report,
                "warning or error mark: {line}"
            );
            if nak_report {
                nak_reports += 1;
            }
        }
        for (k, col) in f[5..].iter().enumerate() {
            if !col.is_empty() {
                seen[k] += 1;
            }
        }
    }
    let names = ["setup", "data", "status message", "nak", "rtt", "pad"];
    for (k, n) in seen.iter().enumerate().take(5) {
        assert!(*n > 0, "no {} frame decoded: {seen:?}", names[k]);
    }
    eprintln!("tshark decoded {} packets as Aeron: setup/data/sm/nak/rtt/pad frames {seen:?}, {nak_reports} NAK reports", lines.len());
    let _ = std::fs::remove_dir_all(&dir);
}
