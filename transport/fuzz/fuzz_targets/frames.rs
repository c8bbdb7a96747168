//! The frame parser never panics and never reads out of bounds, whatever the bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use transport::frame::{decode, Frame, Frames};

fuzz_target!(|data: &[u8]| {
    if let Ok((frame, used)) = decode(data) {
        assert!(used <= data.len());
        if let Frame::Data { frame, .. } = frame {
            assert!(frame.len() <= data.len());
        }
    }
    for f in Frames::new(data) {
        let _ = f;
    }
});
