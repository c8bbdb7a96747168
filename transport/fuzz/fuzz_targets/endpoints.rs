//! A receiver (after a valid SETUP) and a sender fed arbitrary datagrams never panic, and the
//! receiver only ever delivers whole messages.
#![no_main]
use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use transport::frame::Setup;
use transport::{Config, Receiver, Sender};

fuzz_target!(|data: &[u8]| {
    // Images no longer than the SETUP below: a SETUP in the input may announce any term,
    // and a receiver maps three of them (the cap is what keeps a stranger's SETUP cheap).
    let cfg = Config {
        image_term_length_max: 64 * 1024,
        ..Config::with_term_length(64 * 1024)
    };
    let source: SocketAddr = "10.0.0.1:1000".parse().unwrap();
    let mut receiver = Receiver::new(cfg.clone(), 7, 1).unwrap();
    let setup = Setup {
        flags: 0,
        term_offset: 0,
        session_id: 3,
        stream_id: 7,
        initial_term_id: 5,
        active_term_id: 5,
        term_length: 64 * 1024,
        mtu: 1408,
        ttl: 0,
    };
    receiver.handle_datagram(0, source, &setup.encode());
    let mut sender = Sender::new(cfg, 3, 7, 5, 0).unwrap();
    let mut buf = vec![0u8; 65536];
    let _ = sender.offer(b"x");
    // Datagrams are length-prefixed (u16, little-endian; any byte may occur in them); even
    // ones go to the receiver, odd ones to the sender.
    let mut now = 1u64;
    let mut rest = data;
    let mut i = 0usize;
    while rest.len() >= 2 {
        let n = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let (dg, tail) = rest[2..].split_at(n);
        rest = tail;
        now += 1_000_000;
        i += 1;
        if i % 2 == 1 {
            receiver.handle_datagram(now, source, dg);
        } else {
            sender.handle_datagram(now, source, dg);
        }
        receiver.handle_timeout(now);
        sender.handle_timeout(now);
        while receiver.poll_transmit(now, &mut buf).is_some() {}
        let mut n = 0;
        while sender.poll_transmit(now, &mut buf).is_some() && n < 1000 {
            n += 1;
        }
        receiver.poll(|m, _| assert!(m.len() <= 64 * 1024), usize::MAX);
        while receiver.poll_event().is_some() {}
    }
});
