//! The frame parser never panics and never reads out of bounds, whatever the bytes; an ERR
//! frame it accepts encodes back to one that decodes the same.
#![no_main]
use libfuzzer_sys::fuzz_target;
use transport::frame::{decode, Frame, Frames, ERR_HEADER_LENGTH, ERR_MESSAGE_LENGTH_MAX};

fuzz_target!(|data: &[u8]| {
    if let Ok((frame, used)) = decode(data) {
        assert!(used <= data.len());
        match frame {
            Frame::Data { frame, .. } => assert!(frame.len() <= data.len()),
            Frame::Error(e) => {
                assert!(e.message.len() <= ERR_MESSAGE_LENGTH_MAX);
                let mut b = [0u8; ERR_HEADER_LENGTH + ERR_MESSAGE_LENGTH_MAX];
                let n = e.encode(&mut b);
                assert_eq!(decode(&b[..n]).map(|(f, _)| f), Ok(Frame::Error(e)));
            }
            _ => {}
        }
    }
    for f in Frames::new(data) {
        let _ = f;
    }
});
