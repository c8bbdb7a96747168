//! Across network namespaces: a bridge and three hosts (one sender, two multicast receivers),
//! created by the test when it runs as root with `ip`; one receiver's link is cut and restored,
//! and it either recovers by NAK or is told it fell behind and rejoins live. Skipped with a
//! message otherwise. Namespaces get unique names (pid + time) and are deleted even on failure.
#![allow(unsafe_code)]

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use transport::{
    now_ns, Agent, Channel, Config, IdleStrategy, ImageEnd, ImageEvent, Publication, Subscription,
};

fn skip(why: &str) {
    eprintln!("SKIPPED a_receiver_whose_link_is_cut_recovers_or_is_told_it_fell_behind: {why}");
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Namespaces created by this test; deleted on drop (also when the test panics).
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Runs `f` with the calling thread inside network namespace `ns`, then returns to the
/// original namespace. Sockets created by `f` stay in `ns`.
fn in_namespace<T>(ns: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    let original = File::open("/proc/thread-self/ns/net").map_err(|e| e.to_string())?;
    let target = File::open(format!("/var/run/netns/{ns}")).map_err(|e| e.to_string())?;
    // SAFETY: setns on valid namespace fds owned by this function; it changes only this
    // thread's network namespace, which we restore below before returning.
    if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns {ns}: {}", std::io::Error::last_os_error()));
    }
    let r = f();
    // SAFETY: as above, returning to the namespace we started in.
    if unsafe { libc::setns(original.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        panic!("cannot return to the original network namespace");
    }
    Ok(r)
}

fn build(tag: &str) -> Result<Namespaces, String> {
    let bridge = format!("tb{tag}br");
    let hosts: Vec<String> = (0..3).map(|i| format!("tb{tag}h{i}")).collect();
    let mut nss = Namespaces(Vec::new());
    ip(&["netns", "add", &bridge])?;
    nss.0.push(bridge.clone());
    for h in &hosts {
        ip(&["netns", "add", h])?;
        nss.0.push(h.clone());
    }
    ip(&[
        "-n",
        &bridge,
        "link",
        "add",
        "br0",
        "type",
        "bridge",
        "mcast_snooping",
        "0",
    ])?;
    ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
    for (i, h) in hosts.iter().enumerate() {
        let port = format!("p{i}");
        ip(&[
            "-n", &bridge, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", h,
        ])?;
        ip(&["-n", &bridge, "link", "set", &port, "master", "br0", "up"])?;
        ip(&[
            "-n",
            h,
            "addr",
            "add",
            &format!("10.200.0.{}/24", i + 1),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", h, "link", "set", "eth0", "up"])?;
        ip(&["-n", h, "link", "set", "lo", "up"])?;
    }
    Ok(nss)
}

fn message(i: u64) -> Vec<u8> {
    let mut m = vec![(i % 251) as u8; 64];
    m[..8].copy_from_slice(&i.to_le_bytes());
    m
}

#[test]
fn a_receiver_whose_link_is_cut_recovers_or_is_told_it_fell_behind() {
    if Command::new("ip").arg("-V").output().is_err() {
        return skip("`ip` (iproute2) not found");
    }
    let tag = format!("{}{}", std::process::id() % 100_000, now_ns() % 1000);
    let nss = match build(&tag) {
        Ok(n) => n,
        Err(e) => return skip(&format!("cannot create namespaces (needs root): {e}")),
    };
    let bridge = nss.0[0].clone();
    let cfg = Config {
        receiver_timeout_ns: 200_000_000,
        heartbeat_interval_ns: 5_000_000,
        setup_interval_ns: 5_000_000,
        nak_retry_ns: 10_000_000,
        retransmit_linger_ns: 5_000_000,
        nak_delay_multicast_max_ns: 1_000_000,
        ..Config::with_term_length(64 * 1024)
    };
    let group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 7, 7), 40_777);
    let iface = |i: u8| Ipv4Addr::new(10, 200, 0, i);
    let mut publication = in_namespace(&nss.0[1], || {
        Publication::new(&Channel::multicast(group, iface(1)), 5, cfg.clone())
    })
    .unwrap()
    .unwrap();
    let mut subs: Vec<Subscription> = (0..2)
        .map(|i| {
            in_namespace(&nss.0[2 + i], || {
                Subscription::new(
                    &Channel::multicast(group, iface(2 + i as u8)),
                    5,
                    cfg.clone(),
                )
            })
            .unwrap()
            .unwrap()
        })
        .collect();

    let count = 12_000u64; // 12,000 x 96 bytes: about 18 terms of 64 KiB
    let mut received: Vec<Vec<u64>> = vec![Vec::new(), Vec::new()];
    let mut events: Vec<Vec<ImageEvent>> = vec![Vec::new(), Vec::new()];
    let mut next = 0u64;
    let mut idle = IdleStrategy::backoff();
    let start = Instant::now();
    let (cut_at, restore_at) = (Duration::from_millis(300), Duration::from_millis(1300));
    let (mut cut, mut restored) = (false, false);
    loop {
        let t = start.elapsed();
        assert!(
            t < Duration::from_secs(30),
            "timed out: offered {next}, received {:?}, events {events:?}",
            received.iter().map(Vec::len).collect::<Vec<_>>()
        );
        if !cut && t >= cut_at {
            ip(&["-n", &bridge, "link", "set", "p2", "down"]).unwrap();
            cut = true;
        }
        if !restored && t >= restore_at {
            ip(&["-n", &bridge, "link", "set", "p2", "up"]).unwrap();
            restored = true;
        }
        // Paced at about 6 messages per millisecond once both receivers have joined.
        let allowed = (t.as_millis() as u64 * 6).min(count);
        let mut work = 0;
        if publication.sender().receiver_count() >= 1
            && (cut || publication.sender().receiver_count() == 2)
        {
            while next < allowed && publication.offer(&message(next)).is_ok() {
                next += 1;
                work += 1;
            }
        }
        let now = now_ns();
        work += publication.do_work(now);
        for (i, s) in subs.iter_mut().enumerate() {
            work += s.do_work(now);
            let r = &mut received[i];
            work += s.poll(
                |m, _| {
                    let index = u64::from_le_bytes(m[..8].try_into().unwrap());
                    assert_eq!(
                        m,
                        &message(index)[..],
                        "receiver {i}: corrupt message {index}"
                    );
                    r.push(index);
                },
                1024,
            );
            while let Some(e) = s.poll_event() {
                events[i].push(e);
            }
        }
        let done = next == count
            && received[0].len() as u64 == count
            && received[1].last() == Some(&(count - 1));
        if done && restored {
            break;
        }
        idle.idle(work);
    }
    // The receiver whose link stayed up got everything, once, in order.
    assert_eq!(received[0], (0..count).collect::<Vec<_>>());
    // The cut receiver either recovered everything by NAK, or got a prefix, a fell-behind
    // signal, and a contiguous run from where it rejoined to the end.
    let got = &received[1];
    let fell_behind = events[1].iter().any(|e| {
        matches!(
            e,
            ImageEvent::Unavailable {
                reason: ImageEnd::FellBehind { .. },
                ..
            }
        )
    });
    let split = got
        .windows(2)
        .position(|w| w[1] != w[0] + 1)
        .map_or(got.len(), |p| p + 1);
    assert!(got[..split].iter().enumerate().all(|(i, &m)| m == i as u64));
    if split < got.len() {
        assert!(
            fell_behind,
            "a gap without a fell-behind signal: events {:?}",
            events[1]
        );
        assert!(got[split..].windows(2).all(|w| w[1] == w[0] + 1));
    }
    eprintln!(
        "netns: cut receiver got {} of {count}, fell behind: {fell_behind}, events {:?}",
        got.len(),
        events[1]
    );
    drop(nss);
}
