//! The sans-IO endpoints refuse bad input with counted drops, never panics, and the sender's
//! offer API says why it refused.

use std::net::SocketAddr;

use transport::frame::{self, flags, frame_type, DataHeader, Nak, Setup, StatusMessage};
use transport::{Config, CounterId, ImageEnd, ImageEvent, OfferError, Receiver, Sender};

mod common;

use common::{data_frame, setup_at, SESSION, STREAM};

fn source() -> SocketAddr {
    "10.0.0.1:1000".parse().unwrap()
}

fn setup() -> [u8; frame::SETUP_LENGTH] {
    setup_at(0)
}

/// A whole message of `session_id` at `term_offset` of the first term.
fn data(term_offset: i32, payload: &[u8], session_id: i32) -> Vec<u8> {
    data_frame(session_id, 5, term_offset, flags::UNFRAGMENTED, payload)
}

fn receiver() -> Receiver {
    let mut r = Receiver::new(Config::with_term_length(64 * 1024), STREAM, 1).unwrap();
    r.handle_datagram(0, source(), &setup());
    assert_eq!(r.image_count(), 1);
    r
}

fn delivered(r: &mut Receiver) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    r.poll(|m, _| v.push(m.to_vec()), usize::MAX);
    v
}

#[test]
fn truncated_wrong_version_and_lying_length_datagrams_are_dropped_and_counted() {
    let mut r = receiver();
    let good = data(0, b"hello", SESSION);
    r.handle_datagram(1, source(), &good[..20]);
    let mut bad_version = good.clone();
    bad_version[4] = 9;
    r.handle_datagram(1, source(), &bad_version);
    let mut lying = good.clone();
    lying[0..4].copy_from_slice(&5000i32.to_le_bytes());
    r.handle_datagram(1, source(), &lying);
    let mut past_term_end = data(65536 - 32, b"hello", SESSION);
    past_term_end[0..4].copy_from_slice(&64i32.to_le_bytes());
    r.handle_datagram(1, source(), &past_term_end);
    assert_eq!(r.counters().get(CounterId::DropsMalformed), 4);
    assert!(delivered(&mut r).is_empty());
    r.handle_datagram(1, source(), &good);
    assert_eq!(delivered(&mut r), vec![b"hello".to_vec()]);
}

#[test]
fn unknown_sessions_replays_and_strangers_are_dropped_and_counted() {
    let mut r = receiver();
    r.handle_datagram(1, source(), &data(0, b"a", SESSION + 1));
    assert_eq!(r.counters().get(CounterId::DropsUnknownSession), 1);
    let stranger: SocketAddr = "10.9.9.9:1000".parse().unwrap();
    r.handle_datagram(1, stranger, &data(0, b"evil", SESSION));
    assert_eq!(r.counters().get(CounterId::DropsUnexpectedSource), 1);
    let frame = data(0, b"once", SESSION);
    r.handle_datagram(1, source(), &frame);
    r.handle_datagram(2, source(), &frame);
    assert_eq!(delivered(&mut r), vec![b"once".to_vec()]);
    r.handle_datagram(3, source(), &frame);
    assert_eq!(r.counters().get(CounterId::DropsDuplicate), 2);
    assert!(
        delivered(&mut r).is_empty(),
        "a replay is never delivered twice"
    );
}

#[test]
fn an_unknown_session_gets_a_status_message_asking_for_setup() {
    let mut r = Receiver::new(Config::with_term_length(64 * 1024), STREAM, 1).unwrap();
    r.handle_datagram(1, source(), &data(0, b"a", SESSION));
    let mut buf = [0u8; 256];
    let t = r.poll_transmit(1, &mut buf).unwrap();
    assert_eq!(t.destination, Some(source()));
    match frame::decode(&buf[..t.length]).unwrap().0 {
        frame::Frame::StatusMessage(sm) => assert_ne!(sm.flags & flags::SM_SEND_SETUP, 0),
        other => panic!("{other:?}"),
    }
}

#[test]
fn out_of_order_frames_are_delivered_in_order_after_the_gap_is_filled() {
    let mut r = receiver();
    r.handle_datagram(1, source(), &data(64, b"second", SESSION));
    assert!(delivered(&mut r).is_empty());
    r.handle_datagram(2, source(), &data(0, b"first", SESSION));
    assert_eq!(
        delivered(&mut r),
        vec![b"first".to_vec(), b"second".to_vec()]
    );
}

#[test]
fn a_gap_is_naked_after_the_delay_with_its_term_offset_and_length() {
    let mut r = receiver();
    let mut buf = [0u8; 256];
    while r.poll_transmit(0, &mut buf).is_some() {}
    r.handle_datagram(1_000, source(), &data(64, b"second", SESSION));
    let delay = Config::default().nak_delay_unicast_ns;
    let mut nak = None;
    let mut now = 1_000;
    while nak.is_none() && now < 1_000 + 2 * delay {
        while let Some(t) = r.poll_transmit(now, &mut buf) {
            if let Ok((frame::Frame::Nak(n), _)) = frame::decode(&buf[..t.length]) {
                nak = Some((now, n));
            }
        }
        now += 10_000;
    }
    let (at, n) = nak.expect("a NAK");
    assert!(at >= 1_000 + delay);
    assert_eq!((n.term_id, n.term_offset, n.length), (5, 0, 64));
}

fn connected_sender(cfg: Config) -> Sender {
    let mut s = Sender::new(cfg, SESSION, STREAM, 5, 0).unwrap();
    let mut sm = [0u8; frame::SM_WITH_GROUP_TAG_LENGTH];
    let n = StatusMessage {
        flags: 0,
        session_id: SESSION,
        stream_id: STREAM,
        consumption_term_id: 5,
        consumption_term_offset: 0,
        receiver_window: 64 * 1024,
        receiver_id: 1,
        group_tag: None,
    }
    .encode(&mut sm);
    s.handle_datagram(0, source(), &sm[..n]);
    assert!(s.is_connected());
    s
}

#[test]
fn offer_refuses_with_not_connected_too_long_back_pressured_and_closed() {
    let cfg = Config::with_term_length(64 * 1024);
    let mut s = Sender::new(cfg.clone(), SESSION, STREAM, 5, 0).unwrap();
    assert_eq!(s.offer(b"x"), Err(OfferError::NotConnected));
    let mut s = connected_sender(cfg.clone());
    let too_long = vec![0u8; cfg.message_length_max + 1];
    assert!(matches!(
        s.offer(&too_long),
        Err(OfferError::MessageTooLong { .. })
    ));
    let mut offered = 0;
    let err = loop {
        match s.offer(&[1u8; 1000]) {
            Ok(_) => offered += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(err, OfferError::BackPressured);
    assert!(offered * 1056 <= cfg.publication_window);
    assert_eq!(s.counters().get(CounterId::BackPressureEvents), 1);
    s.close(0);
    assert_eq!(s.offer(b"x"), Err(OfferError::Closed));
}

#[test]
fn several_small_messages_are_batched_into_one_datagram_up_to_the_mtu() {
    let mut s = connected_sender(Config::with_term_length(64 * 1024));
    for _ in 0..20 {
        s.offer(&[9u8; 64]).unwrap();
    }
    let mut buf = vec![0u8; 2048];
    // The first datagram is the SETUP; then data.
    let mut lengths = Vec::new();
    while let Some(t) = s.poll_transmit(0, &mut buf) {
        if frame::decode(&buf[..t.length])
            .is_ok_and(|(f, _)| matches!(f, frame::Frame::Data { .. }))
        {
            lengths.push(t.length);
        }
    }
    assert_eq!(
        lengths,
        vec![14 * 96, 6 * 96],
        "96-byte frames packed into 1,408-byte datagrams"
    );
}

#[test]
fn a_nak_is_answered_with_one_retransmit_and_duplicates_linger() {
    let mut s = connected_sender(Config::with_term_length(64 * 1024));
    s.offer(&[1u8; 64]).unwrap();
    let mut buf = vec![0u8; 2048];
    while s.poll_transmit(0, &mut buf).is_some() {}
    let nak = Nak {
        session_id: SESSION,
        stream_id: STREAM,
        term_id: 5,
        term_offset: 0,
        length: 96,
    }
    .encode();
    s.handle_datagram(10, source(), &nak);
    s.handle_datagram(11, source(), &nak);
    let mut sent = 0;
    while s.poll_transmit(12, &mut buf).is_some() {
        sent += 1;
    }
    assert_eq!(sent, 1);
    assert_eq!(s.counters().get(CounterId::Retransmits), 1);
    assert_eq!(s.counters().get(CounterId::NaksCoalesced), 1);
    let bogus = Nak {
        term_offset: 32,
        ..Nak {
            session_id: SESSION,
            stream_id: STREAM,
            term_id: 5,
            term_offset: 0,
            length: 64,
        }
    }
    .encode();
    s.handle_datagram(13, source(), &bogus);
    assert_eq!(
        s.counters().get(CounterId::NaksUnavailable),
        1,
        "not a frame start"
    );
}

#[test]
fn try_claim_publishes_only_on_commit() {
    let mut s = connected_sender(Config::with_term_length(64 * 1024));
    let p0 = s.position();
    {
        let mut c = s.try_claim(10).unwrap();
        c.buffer_mut().copy_from_slice(b"0123456789");
    }
    assert_eq!(s.position(), p0, "an uncommitted claim publishes nothing");
    let mut c = s.try_claim(10).unwrap();
    c.buffer_mut().copy_from_slice(b"0123456789");
    assert_eq!(c.commit(), p0 + 64);
    assert!(matches!(
        s.try_claim(5000),
        Err(OfferError::MessageTooLong { .. })
    ));
}

fn status(receiver_id: i64, offset: i32, window: i32, group_tag: Option<i64>) -> Vec<u8> {
    let mut b = [0u8; frame::SM_WITH_GROUP_TAG_LENGTH];
    let n = StatusMessage {
        flags: 0,
        session_id: SESSION,
        stream_id: STREAM,
        consumption_term_id: 5,
        consumption_term_offset: offset,
        receiver_window: window,
        receiver_id,
        group_tag,
    }
    .encode(&mut b);
    b[..n].to_vec()
}

fn limit_with(flow_control: transport::FlowControl, timeout_at: Option<u64>) -> i64 {
    let cfg = Config {
        flow_control,
        multicast: true,
        ..Config::with_term_length(64 * 1024)
    };
    let mut s = Sender::new(cfg, SESSION, STREAM, 5, 0).unwrap();
    // Positions must not exceed what was published: let the first SM connect, then publish.
    s.handle_datagram(0, source(), &status(1, 0, 4096, None));
    for _ in 0..8 {
        s.offer(&[0u8; 1000]).unwrap();
    }
    s.handle_datagram(1, source(), &status(1, 1024, 4096, None));
    s.handle_datagram(1, source(), &status(2, 2048, 4096, Some(9)));
    s.handle_datagram(1, source(), &status(3, 4096, 4096, Some(9)));
    if let Some(t) = timeout_at {
        s.handle_datagram(t - 1, source(), &status(3, 4096, 4096, Some(9)));
        s.handle_timeout(t);
    }
    s.sender_limit()
}

#[test]
fn multicast_flow_control_follows_the_slowest_fastest_or_tagged_receivers() {
    use transport::FlowControl::*;
    assert_eq!(
        limit_with(Min, None),
        1024 + 4096,
        "min: the slowest receiver"
    );
    assert_eq!(
        limit_with(Max, None),
        4096 + 4096,
        "max: the fastest receiver"
    );
    assert_eq!(
        limit_with(Tagged(9), None),
        2048 + 4096,
        "tagged: slowest of group 9"
    );
    let timeout = Config::default().receiver_timeout_ns + 10;
    assert_eq!(
        limit_with(Min, Some(timeout)),
        4096 + 4096,
        "receivers that time out leave the set"
    );
}

#[test]
fn padding_longer_than_the_receiver_window_is_sent_and_the_stream_goes_on() {
    // A message that does not fit before the term end pads it; the pad travels as its
    // 32-byte header. A receiver window shorter than the pad (valid: at least an MTU; the
    // socket driver may shrink it to a quarter of the receive buffer) must not stop it.
    let term = 64 * 1024;
    let cfg = Config::with_term_length(term);
    let mut s = Sender::new(cfg.clone(), SESSION, STREAM, 5, 0).unwrap();
    let rcfg = Config {
        receiver_window: 4096,
        ..cfg
    };
    let mut r = Receiver::new(rcfg, STREAM, 1).unwrap();
    let receiver_addr: SocketAddr = "10.0.0.2:2000".parse().unwrap();
    // 55 frames of 1,056 bytes leave 7,456 bytes in the term: the 10,000-byte message
    // (10,272 bytes of frames) pads them, a pad longer than the window.
    let mut messages: Vec<Vec<u8>> = (0..55u8).map(|i| vec![i; 1000]).collect();
    messages.push(vec![200; 10_000]);
    messages.extend((0..5u8).map(|i| vec![100 + i; 1000]));
    let mut next = 0;
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut now = 0u64;
    for _ in 0..2000 {
        while next < messages.len() && s.offer(&messages[next]).is_ok() {
            next += 1;
        }
        while let Some(t) = s.poll_transmit(now, &mut buf) {
            r.handle_datagram(now, source(), &buf[..t.length]);
        }
        r.poll(|m, _| got.push(m.to_vec()), usize::MAX);
        while let Some(t) = r.poll_transmit(now, &mut buf) {
            s.handle_datagram(now, receiver_addr, &buf[..t.length]);
        }
        if got.len() == messages.len() {
            break;
        }
        now += 1_000_000;
        s.handle_timeout(now);
        r.handle_timeout(now);
    }
    assert_eq!(
        got.len(),
        messages.len(),
        "stalled: offered {next}, sender at {} of {}, limit {}",
        s.sender_position(),
        s.position(),
        s.sender_limit()
    );
    assert_eq!(got, messages);
}

#[test]
fn a_replayed_old_setup_after_the_image_ended_does_not_deliver_its_messages_again() {
    let mut r = receiver();
    r.handle_datagram(1, source(), &data(0, b"a", SESSION));
    r.handle_datagram(2, source(), &data(64, b"b", SESSION));
    assert_eq!(delivered(&mut r), vec![b"a".to_vec(), b"b".to_vec()]);
    // The sender goes silent past the liveness timeout (a cut): the image ends.
    let later = Config::default().image_liveness_timeout_ns + 10;
    r.handle_timeout(later);
    assert_eq!(r.image_count(), 0);
    // The first SETUP (position 0) arrives again, then frames the sender still holds (its
    // retransmits answering the new image's NAK). Nothing may be delivered a second time.
    r.handle_datagram(later + 1, source(), &setup());
    r.handle_datagram(later + 2, source(), &data(0, b"a", SESSION));
    r.handle_datagram(later + 3, source(), &data(64, b"b", SESSION));
    assert!(
        delivered(&mut r).is_empty(),
        "messages delivered by the ended image were delivered again"
    );
    // A SETUP at or past where the ended image stopped joins as before.
    r.handle_datagram(later + 4, source(), &setup_at(128));
    assert_eq!(r.image_count(), 1);
    r.handle_datagram(later + 5, source(), &data(128, b"c", SESSION));
    assert_eq!(delivered(&mut r), vec![b"c".to_vec()]);
}

#[test]
fn a_tagged_publication_with_no_receiver_of_its_group_follows_the_others() {
    // As Aeron's tagged strategy: with no receiver of the group tracked, any receiver's
    // status message moves the limit. Before, the publication counted as connected (offers
    // were taken) but its limit never left 0: nothing was ever sent.
    let cfg = Config {
        flow_control: transport::FlowControl::Tagged(9),
        multicast: true,
        ..Config::with_term_length(64 * 1024)
    };
    let mut s = Sender::new(cfg, SESSION, STREAM, 5, 0).unwrap();
    s.handle_datagram(0, source(), &status(1, 0, 4096, None));
    assert!(s.is_connected());
    s.offer(&[0u8; 1000]).unwrap();
    let mut buf = vec![0u8; 65536];
    while s.poll_transmit(1, &mut buf).is_some() {}
    assert_eq!(
        s.sender_position(),
        s.position(),
        "the untagged receiver's window"
    );
    // A receiver of the group joins: it alone sets the pace.
    s.handle_datagram(2, source(), &status(2, 0, 2048, Some(9)));
    s.handle_datagram(2, source(), &status(1, 1056, 8192, None));
    assert_eq!(s.sender_limit(), 2048);
    for _ in 0..4 {
        s.offer(&[0u8; 1000]).unwrap();
    }
    while s.poll_transmit(3, &mut buf).is_some() {}
    assert_eq!(s.sender_position(), 1056, "held at the group's limit");
    // The group's receiver times out; the untagged one stays: the others set the pace again.
    let later = Config::default().receiver_timeout_ns + 10;
    s.handle_datagram(later - 5, source(), &status(1, 1056, 8192, None));
    s.handle_timeout(later);
    assert_eq!(s.receiver_count(), 1);
    s.handle_datagram(later + 1, source(), &status(1, 1056, 8192, None));
    while s.poll_transmit(later + 2, &mut buf).is_some() {}
    assert_eq!(
        s.sender_position(),
        s.position(),
        "stalled after the group left"
    );
}

/// A SETUP of the test session from a publication whose stream starts at `initial_term_id`.
fn setup_of(initial_term_id: i32) -> [u8; frame::SETUP_LENGTH] {
    Setup {
        flags: 0,
        term_offset: 0,
        session_id: SESSION,
        stream_id: STREAM,
        initial_term_id,
        active_term_id: initial_term_id,
        term_length: 64 * 1024,
        mtu: 1408,
        ttl: 0,
    }
    .encode()
}

/// A receiver whose image of the test session delivered two messages and then ended with an
/// end of stream at 128 (at time 3).
fn ended_cleanly_at_128() -> Receiver {
    let mut r = receiver();
    r.handle_datagram(1, source(), &data(0, b"a", SESSION));
    r.handle_datagram(2, source(), &data(64, b"b", SESSION));
    r.handle_datagram(3, source(), &end_of_stream_at(128));
    assert_eq!(delivered(&mut r), vec![b"a".to_vec(), b"b".to_vec()]);
    assert_eq!(r.image_count(), 0);
    r
}

#[test]
fn a_publication_re_created_with_the_same_session_id_is_joined_once_the_old_one_ended() {
    // A publication with a chosen session id (`Publication::with_session`) ends cleanly and
    // is opened again: its new stream starts at position 0, below where the old image
    // ended. It is a new stream (another initial term id, or the same one once a replayed
    // SETUP could no longer be in flight), not a replay of the old one.
    let mut r = ended_cleanly_at_128();
    // The new publication: a new socket (another port) and a new initial term id.
    let again: SocketAddr = "10.0.0.1:1001".parse().unwrap();
    r.handle_datagram(4, again, &setup_of(77));
    assert_eq!(r.image_count(), 1, "a new stream with the same session id");
    let mut frame = data(0, b"new", SESSION);
    frame[20..24].copy_from_slice(&77i32.to_le_bytes()); // term id
    r.handle_datagram(5, again, &frame);
    assert_eq!(delivered(&mut r), vec![b"new".to_vec()]);
    // It ends too (its sender goes silent) and is opened once more, this time with the same
    // initial term id: taken once an old SETUP could no longer arrive.
    let later = 10 + Config::default().image_liveness_timeout_ns;
    r.handle_timeout(later);
    assert_eq!(r.image_count(), 0);
    r.handle_datagram(later + 1, again, &setup_of(77));
    assert_eq!(
        r.image_count(),
        0,
        "within the liveness timeout: maybe a replay"
    );
    let much_later = 2 * later + 10;
    r.handle_datagram(much_later, again, &setup_of(77));
    assert_eq!(r.image_count(), 1, "refused for good");
    let mut frame = data(0, b"third", SESSION);
    frame[20..24].copy_from_slice(&77i32.to_le_bytes()); // term id
    r.handle_datagram(much_later, again, &frame);
    assert_eq!(delivered(&mut r), vec![b"third".to_vec()]);
}

/// The test session's end-of-stream heartbeat at `term_offset` of its first term.
fn end_of_stream_at(term_offset: i32) -> [u8; frame::DATA_HEADER_LENGTH] {
    let mut eos = [0u8; frame::DATA_HEADER_LENGTH];
    DataHeader {
        frame_length: 0,
        flags: flags::UNFRAGMENTED | flags::EOS,
        frame_type: frame_type::DATA,
        term_offset,
        session_id: SESSION,
        stream_id: STREAM,
        term_id: 5,
        reserved_value: 0,
    }
    .write(&mut eos);
    eos
}

#[test]
fn a_late_setup_at_the_end_of_a_stream_that_ended_cleanly_opens_no_image() {
    // The publication sent a SETUP with everything sent (at its final position: say in
    // answer to another receiver's setup request), then closed; that SETUP arrives after the
    // end of stream closed the image here. The stream it announces is over: an image for it
    // came and went (a spurious Available, then Unavailable a liveness timeout later), and
    // its status messages held the closing publication to its linger.
    let mut r = ended_cleanly_at_128();
    let events: Vec<_> = std::iter::from_fn(|| r.poll_event()).collect();
    assert!(matches!(
        events[..],
        [
            ImageEvent::Available { position: 0, .. },
            ImageEvent::Unavailable {
                position: 128,
                reason: ImageEnd::EndOfStream,
                ..
            }
        ]
    ));
    let duplicates = r.counters().get(CounterId::DropsDuplicate);
    r.handle_datagram(4, source(), &setup_at(128));
    assert_eq!(r.image_count(), 0, "a phantom image of an ended stream");
    assert_eq!(r.poll_event(), None);
    assert_eq!(r.counters().get(CounterId::DropsDuplicate), duplicates + 1);

    // A sender that went silent, so that its image timed out, and comes back at the same
    // position is the same stream going on: joined again at once.
    let mut r = receiver();
    r.handle_datagram(1, source(), &data(0, b"a", SESSION));
    r.handle_datagram(2, source(), &data(64, b"b", SESSION));
    assert_eq!(delivered(&mut r).len(), 2);
    let later = 10 + Config::default().image_liveness_timeout_ns;
    r.handle_timeout(later);
    assert_eq!(r.image_count(), 0);
    r.handle_datagram(later + 1, source(), &setup_at(128));
    assert_eq!(r.image_count(), 1, "the silent sender is back");
    r.handle_datagram(later + 2, source(), &data(128, b"c", SESSION));
    assert_eq!(delivered(&mut r), vec![b"c".to_vec()]);
}

#[test]
fn a_lost_end_of_stream_still_ends_the_image_cleanly_and_the_close_promptly() {
    // The publication closes with everything acknowledged; its first end-of-stream
    // heartbeat is lost. Before, the receiver's next status message (at the end position)
    // closed the publication: no end-of-stream ever came again and the image ended by
    // timeout, seconds later, as if the publisher had died. Then the receiver's own
    // end-of-stream status message (it leaves) is lost too: the close must not wait out
    // its linger for it.
    let cfg = Config::with_term_length(64 * 1024);
    let mut s = Sender::new(cfg.clone(), SESSION, STREAM, 5, 0).unwrap();
    let mut r = Receiver::new(cfg.clone(), STREAM, 1).unwrap();
    let receiver_addr: SocketAddr = "10.0.0.2:2000".parse().unwrap();
    let mut buf = vec![0u8; 65536];
    let mut got = Vec::new();
    let mut events = Vec::new();
    let (mut eos_dropped, mut sm_eos_dropped) = (false, false);
    let mut closed_at = None;
    let mut now = 0u64;
    let step = 1_000_000;
    while now < 3_000_000_000 && (events.len() < 2 || closed_at.is_none()) {
        if now == 50 * step {
            for i in 0..3u8 {
                s.offer(&[i; 100]).unwrap();
            }
        }
        if now == 100 * step {
            assert_eq!(got.len(), 3);
            s.close(now);
        }
        while let Some(t) = s.poll_transmit(now, &mut buf) {
            let eos = matches!(
                frame::decode(&buf[..t.length]),
                Ok((frame::Frame::Data { header, .. }, _)) if header.flags & flags::EOS != 0
            );
            if eos && !eos_dropped {
                eos_dropped = true;
                continue;
            }
            r.handle_datagram(now, source(), &buf[..t.length]);
        }
        r.poll(|m, _| got.push(m.to_vec()), usize::MAX);
        while let Some(e) = r.poll_event() {
            events.push(e);
        }
        while let Some(t) = r.poll_transmit(now, &mut buf) {
            let sm_eos = matches!(
                frame::decode(&buf[..t.length]),
                Ok((frame::Frame::StatusMessage(sm), _)) if sm.flags & flags::SM_EOS != 0
            );
            if sm_eos && !sm_eos_dropped {
                sm_eos_dropped = true;
                continue;
            }
            s.handle_datagram(now, receiver_addr, &buf[..t.length]);
        }
        now += step;
        s.handle_timeout(now);
        r.handle_timeout(now);
        if s.is_closed() && closed_at.is_none() {
            closed_at = Some(now);
        }
    }
    assert!(eos_dropped);
    assert!(
        matches!(
            events.last(),
            Some(transport::ImageEvent::Unavailable {
                reason: transport::ImageEnd::EndOfStream,
                position: 480, // three frames of 160 bytes
                ..
            })
        ),
        "{events:?}"
    );
    let closed_at = closed_at.expect("the publication closed");
    assert!(
        closed_at < 100 * step + cfg.close_linger_ns / 2,
        "the close waited out its linger: {closed_at}"
    );
}

#[test]
fn a_setup_announcing_a_term_longer_than_the_cap_is_refused_before_any_allocation() {
    // Anyone who can reach the port can send a SETUP, and an image maps three of its terms:
    // without a cap, one datagram would make the receiver allocate up to 3 GiB.
    let mut r = receiver_capped();
    let announce = setup_with;
    r.handle_datagram(0, source(), &announce(SESSION, 1 << 30));
    r.handle_datagram(0, source(), &announce(SESSION + 1, 256 * 1024));
    assert_eq!(r.image_count(), 0);
    assert_eq!(r.counters().get(CounterId::SetupsRefused), 2);
    assert_eq!(r.counters().get(CounterId::DropsMalformed), 0);
    // At the cap, it is taken.
    r.handle_datagram(0, source(), &announce(SESSION + 2, 128 * 1024));
    assert_eq!(r.image_count(), 1);
    // A cap that is not a valid term length is a config error naming it.
    let bad = Config {
        image_term_length_max: 100_000,
        ..Config::default()
    };
    assert!(bad
        .validate()
        .unwrap_err()
        .0
        .contains("image_term_length_max=100000"));
    // A config for long terms accepts images of its own length.
    let long = Config::with_term_length(256 * 1024 * 1024);
    assert_eq!(long.image_term_length_max, 256 * 1024 * 1024);
}

/// A receiver of 64 KiB terms that takes images of terms up to 128 KiB.
fn receiver_capped() -> Receiver {
    let cfg = Config {
        image_term_length_max: 128 * 1024,
        ..Config::with_term_length(64 * 1024)
    };
    Receiver::new(cfg, STREAM, 1).unwrap()
}

/// A config of 64 KiB terms that takes images of no longer terms.
fn capped_at_own_term() -> Config {
    Config {
        image_term_length_max: 64 * 1024,
        ..Config::with_term_length(64 * 1024)
    }
}

/// A receiver of [`capped_at_own_term`], and its SETUP interval.
fn receiver_capped_at_own_term() -> (Receiver, u64) {
    let cfg = capped_at_own_term();
    let interval = cfg.setup_interval_ns;
    (Receiver::new(cfg, STREAM, 1).unwrap(), interval)
}

/// A SETUP of `session_id` announcing `term_length`.
fn setup_with(session_id: i32, term_length: i32) -> [u8; frame::SETUP_LENGTH] {
    Setup {
        flags: 0,
        term_offset: 0,
        session_id,
        stream_id: STREAM,
        initial_term_id: 5,
        active_term_id: 5,
        term_length,
        mtu: 1408,
        ttl: 0,
    }
    .encode()
}

/// Every control datagram the receiver has due at `now`, with its destination.
fn control_from(r: &mut Receiver, now: u64) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut buf = [0u8; 256];
    let mut v = Vec::new();
    while let Some(t) = r.poll_transmit(now, &mut buf) {
        v.push((t.destination.unwrap(), buf[..t.length].to_vec()));
    }
    v
}

/// The ERR frames among `control`: (destination, session, stream, error code, text).
fn error_frames(control: &[(SocketAddr, Vec<u8>)]) -> Vec<(SocketAddr, i32, i32, i32, String)> {
    control
        .iter()
        .filter_map(|(to, bytes)| match frame::decode(bytes) {
            Ok((frame::Frame::Error(e), _)) => Some((
                *to,
                e.session_id,
                e.stream_id,
                e.error_code,
                String::from_utf8(e.message.to_vec()).unwrap(),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn a_setup_over_the_term_cap_is_answered_with_an_err_frame_naming_both_lengths() {
    let mut r = receiver_capped();
    r.handle_datagram(0, source(), &setup_with(SESSION, 2 * 1024 * 1024));
    assert_eq!(r.image_count(), 0);
    let errors = error_frames(&control_from(&mut r, 0));
    assert_eq!(
        errors,
        vec![(
            source(),
            SESSION,
            STREAM,
            frame::error_code::TERM_LENGTH_OVER_CAP,
            "term length 2 MiB over its cap 128 KiB (image_term_length_max)".to_string()
        )]
    );
    assert_eq!(r.counters().get(CounterId::SetupsRefused), 1);
    assert_eq!(r.counters().get(CounterId::ErrorFramesSent), 1);
}

#[test]
fn a_setup_finding_every_image_taken_is_answered_with_an_err_frame_saying_so() {
    let mut r = Receiver::new(Config::with_term_length(64 * 1024), STREAM, 1).unwrap();
    let max = transport::config::IMAGES_MAX as i32;
    for session_id in 0..max {
        r.handle_datagram(0, source(), &setup_with(session_id, 64 * 1024));
    }
    assert_eq!(r.image_count(), max as usize);
    let _ = control_from(&mut r, 0);
    r.handle_datagram(1, source(), &setup_with(max, 64 * 1024));
    let errors = error_frames(&control_from(&mut r, 1));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        (errors[0].1, errors[0].3),
        (max, frame::error_code::IMAGES_FULL)
    );
    assert_eq!(
        errors[0].4,
        format!("it holds {max} images, its most (IMAGES_MAX): one must end first")
    );
    assert_eq!(
        frame::RefusalReason::from_code(errors[0].3),
        frame::RefusalReason::ImagesFull
    );
    // A SETUP of a session already joined is no refusal.
    r.handle_datagram(2, source(), &setup_with(0, 64 * 1024));
    assert!(error_frames(&control_from(&mut r, 2)).is_empty());
    assert_eq!(r.counters().get(CounterId::SetupsRefused), 1);
}

#[test]
fn a_burst_of_refused_setups_gets_one_reply_per_interval_and_a_forged_flood_a_bounded_few() {
    let (mut r, interval) = receiver_capped_at_own_term();
    let too_long = 128 * 1024;
    // One publication re-sending its SETUP 100 times within an interval: one reply.
    let mut replies = 0;
    for k in 0..100u64 {
        r.handle_datagram(k * interval / 100, source(), &setup_with(SESSION, too_long));
        replies += error_frames(&control_from(&mut r, k * interval / 100)).len();
    }
    assert_eq!(replies, 1);
    // The next interval, one more.
    r.handle_datagram(interval, source(), &setup_with(SESSION, too_long));
    assert_eq!(error_frames(&control_from(&mut r, interval)).len(), 1);
    // A flood of SETUPs from 1,000 forged sources and sessions within one interval gets at
    // most the per-interval budget of replies, whoever they claim to be.
    let t = 3 * interval;
    for k in 0..1000i32 {
        let forged: SocketAddr = format!("10.1.{}.{}:{}", k / 250, k % 250, 2000 + k)
            .parse()
            .unwrap();
        r.handle_datagram(t, forged, &setup_with(1000 + k, too_long));
    }
    let flood = error_frames(&control_from(&mut r, t));
    assert_eq!(
        flood.len(),
        transport::config::REFUSAL_REPLIES_PER_INTERVAL_MAX as usize
    );
    assert_eq!(r.counters().get(CounterId::SetupsRefused), 1101);
    assert_eq!(
        r.counters().get(CounterId::ErrorFramesSent),
        2 + transport::config::REFUSAL_REPLIES_PER_INTERVAL_MAX as u64
    );
}

#[test]
fn a_forged_flood_gets_a_bounded_few_replies_even_with_no_setup_interval() {
    // setup_interval_ns is a sender's knob (0: a SETUP on every poll); a subscription
    // configured so must not answer every forged SETUP.
    for setup_interval_ns in [0, 1] {
        let cfg = Config {
            setup_interval_ns,
            ..capped_at_own_term()
        };
        let mut r = Receiver::new(cfg, STREAM, 1).unwrap();
        // 1,000 forged SETUPs within a millisecond.
        let mut replies = 0;
        for k in 0..1000i32 {
            let forged: SocketAddr = format!("10.1.{}.{}:{}", k / 250, k % 250, 2000 + k)
                .parse()
                .unwrap();
            let now = k as u64 * 1000;
            r.handle_datagram(now, forged, &setup_with(1000 + k, 128 * 1024));
            replies += error_frames(&control_from(&mut r, now)).len();
        }
        assert!(
            replies <= 2 * transport::config::REFUSAL_REPLIES_PER_INTERVAL_MAX as usize,
            "setup_interval_ns={setup_interval_ns}: {replies} replies"
        );
        assert_eq!(r.counters().get(CounterId::SetupsRefused), 1000);
    }
}

#[test]
fn more_refused_publications_than_the_reply_budget_each_learn_why_in_turn() {
    // Eight publications refused at once (say eight clients with terms over the cap), each
    // re-sending its SETUP once per interval at its own steady phase: the budget of four
    // replies per interval must not go to the same four every time.
    let (mut r, interval) = receiver_capped_at_own_term();
    let publications: Vec<(i32, SocketAddr)> = (0..8)
        .map(|k| (100 + k, format!("10.0.1.{}:4000", k + 1).parse().unwrap()))
        .collect();
    let mut told = vec![0; publications.len()];
    for round in 0..20u64 {
        for (k, (session_id, from)) in publications.iter().enumerate() {
            let now = round * interval + k as u64 * interval / 10;
            r.handle_datagram(now, *from, &setup_with(*session_id, 128 * 1024));
            for (to, session, ..) in error_frames(&control_from(&mut r, now)) {
                assert_eq!((to, session), (*from, *session_id));
                told[k] += 1;
            }
        }
    }
    assert!(
        told.iter().all(|&n| n >= 3),
        "replies per publication: {told:?}"
    );
    assert!(
        told.iter().sum::<usize>()
            <= 20 * transport::config::REFUSAL_REPLIES_PER_INTERVAL_MAX as usize,
        "{told:?}"
    );
}

/// Feeds every datagram the sender has due at `now` to the receiver and back, once.
fn exchange_once(s: &mut Sender, r: &mut Receiver, now: u64) {
    let publication: SocketAddr = "10.0.0.9:4000".parse().unwrap();
    let mut buf = vec![0u8; 65536];
    while let Some(t) = s.poll_transmit(now, &mut buf) {
        r.handle_datagram(now, publication, &buf[..t.length]);
    }
    for (to, bytes) in control_from(r, now) {
        if to == publication {
            s.handle_datagram(now, source(), &bytes);
        }
    }
}

#[test]
fn a_publication_finding_every_image_taken_learns_why_and_never_connects() {
    let cfg = Config::with_term_length(64 * 1024);
    let mut r = Receiver::new(cfg.clone(), STREAM, 1).unwrap();
    let max = transport::config::IMAGES_MAX as i32;
    for session_id in 0..max {
        r.handle_datagram(0, source(), &setup_with(1000 + session_id, 64 * 1024));
    }
    let _ = control_from(&mut r, 0);
    let mut s = Sender::new(cfg.clone(), SESSION, STREAM, 5, 0).unwrap();
    assert_eq!(s.last_refusal(), None);
    // Ten SETUP intervals: a SETUP each, an ERR frame for each, never a status message.
    for k in 0..10 {
        let now = k * cfg.setup_interval_ns;
        exchange_once(&mut s, &mut r, now);
        assert!(!s.is_connected());
        assert_eq!(s.offer(b"x"), Err(OfferError::NotConnected));
        let refusal = s.last_refusal().expect("told why");
        assert_eq!(refusal.reason, transport::RefusalReason::ImagesFull);
        assert_eq!(refusal.at_ns, now);
        assert_eq!(refusal.receiver_id, r.receiver_id());
        assert_eq!(
            refusal.to_string(),
            format!("it holds {max} images, its most (IMAGES_MAX): one must end first")
        );
    }
    assert_eq!(s.counters().get(CounterId::SetupsSent), 10);
    assert_eq!(s.counters().get(CounterId::ErrorFramesReceived), 10);
    assert_eq!(s.counters().drops_total(), 0);
    assert_eq!(r.counters().get(CounterId::ErrorFramesSent), 10);
}

fn error_frame(session_id: i32, stream_id: i32, text: &[u8]) -> Vec<u8> {
    let mut b = [0u8; frame::ERR_HEADER_LENGTH + frame::ERR_MESSAGE_LENGTH_MAX];
    let n = frame::ErrorFrame {
        session_id,
        stream_id,
        receiver_id: 9,
        group_tag: None,
        error_code: frame::error_code::TERM_LENGTH_OVER_CAP,
        message: text,
    }
    .encode(&mut b);
    b[..n].to_vec()
}

#[test]
fn a_malformed_error_frame_is_dropped_and_counted() {
    let mut s = Sender::new(Config::with_term_length(64 * 1024), SESSION, STREAM, 5, 0).unwrap();
    let good = error_frame(SESSION, STREAM, b"term length 128 KiB over its cap 64 KiB");
    let mut lying = good.clone();
    lying[36..40].copy_from_slice(&1000i32.to_le_bytes()); // text beyond the frame
    let mut negative = good.clone();
    negative[36..40].copy_from_slice(&(-1i32).to_le_bytes());
    let mut short = good.clone();
    short[0..4].copy_from_slice(&39i32.to_le_bytes()); // frame shorter than its header
    for bad in [&lying[..], &negative[..], &short[..], &good[..30]] {
        s.handle_datagram(1, source(), bad);
    }
    assert_eq!(s.counters().get(CounterId::DropsMalformed), 4);
    assert_eq!(s.counters().get(CounterId::ErrorFramesReceived), 0);
    assert_eq!(s.counters().drops_total(), 4);
    assert_eq!(s.last_refusal(), None);
    // The well-formed one is taken; control characters in its text are replaced, and so are
    // the bidirectional overrides and isolates that would reorder it on a terminal.
    s.handle_datagram(
        2,
        source(),
        &error_frame(
            SESSION,
            STREAM,
            "over\x1b[2J cap \u{202E}gib\u{2066}x".as_bytes(),
        ),
    );
    assert_eq!(s.counters().get(CounterId::ErrorFramesReceived), 1);
    let refusal = s.last_refusal().unwrap();
    assert_eq!(refusal.text, "over\u{FFFD}[2J cap \u{FFFD}gib\u{FFFD}x");
    assert_eq!(refusal.reason, transport::RefusalReason::TermLengthOverCap);
    s.handle_datagram(3, source(), &error_frame(SESSION, STREAM, b"cap \xff"));
    assert_eq!(s.last_refusal().unwrap().text, "cap \u{FFFD}");
}

#[test]
fn an_error_frame_for_another_session_or_stream_is_ignored() {
    let mut s = Sender::new(Config::with_term_length(64 * 1024), SESSION, STREAM, 5, 0).unwrap();
    s.handle_datagram(1, source(), &error_frame(SESSION + 1, STREAM, b"not yours"));
    s.handle_datagram(1, source(), &error_frame(SESSION, STREAM + 1, b"not yours"));
    assert_eq!(s.last_refusal(), None);
    assert_eq!(s.counters().get(CounterId::DropsUnknownSession), 2);
    assert_eq!(s.counters().get(CounterId::ErrorFramesReceived), 0);
    // A receiver takes no ERR frame at all.
    let mut r = receiver();
    r.handle_datagram(1, source(), &error_frame(SESSION, STREAM, b"to a receiver"));
    assert_eq!(r.counters().get(CounterId::DropsUnexpectedType), 1);
}

/// A multicast sender with `flow_control`, connected by receiver 1 and with 8,000 bytes
/// published, so that status messages up to there are in range.
fn published_sender(flow_control: transport::FlowControl) -> Sender {
    let cfg = Config {
        flow_control,
        multicast: true,
        ..Config::with_term_length(64 * 1024)
    };
    let mut s = Sender::new(cfg, SESSION, STREAM, 5, 0).unwrap();
    s.handle_datagram(0, source(), &status(1, 0, 4096, Some(9)));
    for _ in 0..8 {
        s.offer(&[0u8; 1000]).unwrap();
    }
    s
}

#[test]
fn a_reordered_older_status_message_moves_neither_its_receiver_nor_the_limit_back() {
    use transport::FlowControl::*;
    for fc in [Unicast, Min, Max, Tagged(9)] {
        // Two receivers; each one's older status message arrives after its newer one.
        let mut s = published_sender(fc);
        s.handle_datagram(1, source(), &status(1, 2048, 4096, Some(9)));
        s.handle_datagram(1, source(), &status(2, 3072, 4096, Some(9)));
        let limit = s.sender_limit();
        let expected = match fc {
            Min | Tagged(_) => 2048 + 4096,
            Unicast | Max => 3072 + 4096,
        };
        assert_eq!(limit, expected, "{fc:?}");
        for (receiver, older) in [(2, 1024), (1, 0), (2, 2048), (1, 1024)] {
            s.handle_datagram(2, source(), &status(receiver, older, 4096, Some(9)));
            assert_eq!(
                s.sender_limit(),
                limit,
                "{fc:?}: receiver {receiver} at {older}"
            );
        }
        // The same position again with a smaller window (a reordered copy) does not shrink
        // what was granted either.
        s.handle_datagram(2, source(), &status(1, 2048, 1024, Some(9)));
        assert_eq!(s.sender_limit(), limit, "{fc:?}: a smaller window");
        // What each receiver reached is remembered: receiver 1 moving on past receiver 2
        // leaves the slowest at receiver 2's newest position, not at its reordered one.
        s.handle_datagram(3, source(), &status(1, 4096, 4096, Some(9)));
        let expected = match fc {
            Min | Tagged(_) => 3072 + 4096,
            Unicast | Max => 4096 + 4096,
        };
        assert_eq!(
            s.sender_limit(),
            expected,
            "{fc:?}: after receiver 1 moved on"
        );
    }
}

#[test]
fn a_new_receiver_joining_behind_still_holds_a_min_sender_back() {
    // Not a reordering: a receiver the sender has not heard from joins at a lower position,
    // and the slowest-receiver strategies wait for it.
    let mut s = published_sender(transport::FlowControl::Min);
    s.handle_datagram(1, source(), &status(1, 4096, 4096, None));
    assert_eq!(s.sender_limit(), 4096 + 4096);
    s.handle_datagram(1, source(), &status(2, 1024, 4096, None));
    assert_eq!(s.sender_limit(), 1024 + 4096);
}
