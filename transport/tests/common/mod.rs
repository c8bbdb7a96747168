//! Frames for the tests that drive the sans-IO endpoints directly, of one test session:
//! stream 7, session 3, terms of 64 KiB from term id 5, MTU 1,408.
#![allow(dead_code)] // each test binary compiles this module; not all use everything

use transport::frame::{self, frame_type, DataHeader, Setup};

pub const STREAM: i32 = 7;
pub const SESSION: i32 = 3;
pub const INITIAL_TERM_ID: i32 = 5;
pub const TERM_LENGTH: usize = 64 * 1024;

/// A SETUP of the test session joining at `term_offset` of its first term.
pub fn setup_at(term_offset: i32) -> [u8; frame::SETUP_LENGTH] {
    Setup {
        flags: 0,
        term_offset,
        session_id: SESSION,
        stream_id: STREAM,
        initial_term_id: INITIAL_TERM_ID,
        active_term_id: INITIAL_TERM_ID,
        term_length: TERM_LENGTH as i32,
        mtu: 1408,
        ttl: 0,
    }
    .encode()
}

/// A DATA frame of `session_id` (on the test stream) at `(term_id, term_offset)` with the
/// fragment flags `fl`, padded to the frame alignment.
pub fn data_frame(
    session_id: i32,
    term_id: i32,
    term_offset: i32,
    fl: u8,
    payload: &[u8],
) -> Vec<u8> {
    let length = frame::DATA_HEADER_LENGTH + payload.len();
    let mut b = vec![0u8; frame::align_frame(length)];
    DataHeader {
        frame_length: length as i32,
        flags: fl,
        frame_type: frame_type::DATA,
        term_offset,
        session_id,
        stream_id: STREAM,
        term_id,
        reserved_value: 0,
    }
    .write(&mut b);
    b[frame::DATA_HEADER_LENGTH..length].copy_from_slice(payload);
    b
}
