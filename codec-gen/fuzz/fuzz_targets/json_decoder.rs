//! Arbitrary bytes through the schema-driven JSON decoder (ledger and constructs schemas).
//! Whatever decodes must encode back to the very same bytes (and decode to the same JSON).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn schemas() -> &'static [codec_gen::Schema; 2] {
    static S: OnceLock<[codec_gen::Schema; 2]> = OnceLock::new();
    S.get_or_init(|| {
        [
            codec_gen::parse(include_str!("../../../schemas/ledger.xml")).expect("valid"),
            codec_gen::parse(include_str!("../../tests/schemas/constructs.xml")).expect("valid"),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    for (schema, id) in schemas().iter().zip([7001u16, 900]) {
        let mut buf = data.to_vec();
        if buf.len() >= 6 {
            buf[4..6].copy_from_slice(&id.to_le_bytes());
        }
        let (msgs, err) = codec_gen::json::decode_all(schema, &buf);
        if let Some(e) = err {
            assert!(
                e.offset <= buf.len(),
                "offset {} beyond {} bytes",
                e.offset,
                buf.len()
            );
        }
        for m in msgs {
            let line = codec_gen::json::to_line(schema, &m);
            let v: serde_json::Value =
                serde_json::from_str(&line).expect("the decoder prints valid JSON");
            // A message can decode yet not re-encode (a group count above the schema's maxValue);
            // whatever does encode must decode again, to the same JSON when it was written with
            // the current version and block lengths.
            if let Ok(bytes) = codec_gen::json::encode_message(schema, &v) {
                let (again, end) = codec_gen::json::decode_message(schema, &bytes, 0)
                    .expect("encoded bytes decode");
                assert_eq!(end, bytes.len());
                let again = codec_gen::json::encode_message(schema, &again).expect("re-encodes");
                assert_eq!(again, bytes, "encode(decode(encode(x))) == encode(x)");
            }
        }
    }
});
