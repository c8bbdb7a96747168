//! codec-gen against schemas other people wrote (`shared/conformance/sbe`, see its README):
//! every valid schema is accepted (and `build.rs` compiled its generated code into this crate),
//! every invalid one is refused with errors naming the problem, and messages of the CME and
//! Aeron schemas round-trip through the generated codecs and the JSON decoder.
//!
//! The folder is `TALLY_SBE_CONFORMANCE_DIR`, else `<workspace>/../shared/conformance`. When it
//! is missing these tests fail under `CI` and otherwise print a skip message.

use std::path::PathBuf;

/// The conformance folder, or `None` (after printing why) when it is absent outside CI.
fn conformance_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("TALLY_SBE_CONFORMANCE_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance"),
    };
    if dir.join("sbe/valid").is_dir() && sbe_conformance::CONFORMANCE_DIR_MISSING.is_none() {
        return Some(dir);
    }
    let msg = format!(
        "SBE conformance schemas not found at {} (set TALLY_SBE_CONFORMANCE_DIR, or place shared/ beside the workspace)",
        dir.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("skipping: {msg}");
    None
}

fn xml_files(dir: PathBuf) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_valid_schema_is_accepted_and_was_compiled_into_this_crate() {
    let Some(dir) = conformance_dir() else { return };
    let files = xml_files(dir.join("sbe/valid"));
    assert!(
        files.len() >= 20,
        "expected the 22 public schemas, found {}",
        files.len()
    );
    for f in &files {
        let xml = std::fs::read_to_string(f).expect("readable");
        let schema =
            codec_gen::parse(&xml).unwrap_or_else(|e| panic!("{} refused:\n{e}", f.display()));
        assert!(!codec_gen::generate(&schema).is_empty());
        let stem = f.file_stem().and_then(|s| s.to_str()).expect("utf-8 name");
        assert!(
            sbe_conformance::SCHEMAS.contains(&stem),
            "{stem} was not compiled by build.rs"
        );
    }
}

#[test]
fn every_invalid_schema_is_refused_with_every_error_named() {
    let Some(dir) = conformance_dir() else { return };
    let expected = [
        ("error-handler-dup-message-schema", "reuses template id 1"),
        (
            "error-handler-enum-violates-min-max-value-range",
            "outside the encoding's range",
        ),
        (
            "error-handler-group-dimensions-schema",
            "needs an integer member \"blockLength\"",
        ),
        (
            "error-handler-invalid-composite-offsets-schema",
            "overlaps the previous member",
        ),
        ("error-handler-invalid-composite", "contains <group>"),
        ("error-handler-message-schema", "unknown type \"XXXX\""),
        (
            "error-handler-since-version",
            "greater than the schema version",
        ),
        ("error-handler-types-schema", "has no value"),
    ];
    let files = xml_files(dir.join("sbe/invalid"));
    assert_eq!(
        files.len(),
        expected.len(),
        "one expectation per invalid schema"
    );
    for f in &files {
        let stem = f.file_stem().and_then(|s| s.to_str()).expect("utf-8 name");
        let (_, needle) = expected
            .iter()
            .find(|(name, _)| *name == stem)
            .unwrap_or_else(|| panic!("no expectation for {stem}"));
        let xml = std::fs::read_to_string(f).expect("readable");
        let err = codec_gen::parse(&xml).expect_err(stem);
        let text = err.to_string();
        assert!(
            text.contains(needle),
            "{stem}: expected an error containing {needle:?}, got:\n{text}"
        );
        assert!(
            text.ends_with(&format!("had {} errors", err.errors.len())),
            "{stem}: the report ends with the error count:\n{text}"
        );
        let unique: std::collections::HashSet<_> = err.errors.iter().collect();
        assert_eq!(
            unique.len(),
            err.errors.len(),
            "{stem}: no error is reported twice:\n{text}"
        );
    }
}

/// Needs the schema modules, compiled only when the folder was found at build time.
#[cfg(sbe_conformance_present)]
mod cme {
    use sbe_conformance::fix_binary::*;

    #[test]
    fn cme_incremental_refresh_book_round_trips_through_generated_codecs_and_json() {
        if super::conformance_dir().is_none() {
            return;
        }
        let mut buf = [0u8; 256];
        let mut e = MdIncrementalRefreshBook32Encoder::wrap_with_header(&mut buf).expect("fits");
        e.set_transact_time(1_700_000_000_000_000_000);
        e.set_match_event_indicator(MatchEventIndicator::empty().with_end_of_event(true));
        {
            let mut entries = e.no_md_entries().expect("fits");
            for (i, px) in [(1i32, 4_500_250_000_000i64), (2, 4_500_500_000_000)] {
                let mut x = entries.next_entry().expect("fits");
                x.md_entry_px_mut().set_mantissa(Some(px));
                x.set_md_entry_size(Some(10 * i))
                    .set_security_id(42)
                    .set_rpt_seq(i as u32);
                x.set_number_of_orders(None).set_md_price_level(i as u8);
                x.set_md_update_action(MdUpdateAction::New)
                    .set_md_entry_type(MdEntryTypeBook::Bid);
            }
        }
        let len = e.finish().expect("fits");

        let d = MdIncrementalRefreshBook32Decoder::wrap_with_header(&buf[..len]).expect("valid");
        assert!(d.match_event_indicator().end_of_event());
        let entries: Vec<_> = d.no_md_entries().expect("valid").collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].md_entry_px().mantissa(), Some(4_500_500_000_000));
        assert_eq!(entries[1].md_entry_size(), Some(20));
        assert_eq!(entries[0].number_of_orders(), None);
        assert_eq!(entries[0].md_update_action(), Some(MdUpdateAction::New));
        assert_eq!(
            d.no_order_id_entries().expect("valid").count(),
            0,
            "a skipped group is written empty"
        );
        assert_eq!(d.encoded_length().expect("valid"), len);

        let xml = std::fs::read_to_string(
            super::conformance_dir()
                .expect("present")
                .join("sbe/valid/FixBinary.xml"),
        )
        .expect("readable");
        let schema = codec_gen::parse(&xml).expect("valid");
        let (v, end) = codec_gen::json::decode_message(&schema, &buf[..len], 0).expect("valid");
        assert_eq!(end, len);
        assert_eq!(v["message"], "MDIncrementalRefreshBook32");
        assert_eq!(v["MatchEventIndicator"], serde_json::json!(["EndOfEvent"]));
        assert_eq!(
            v["NoMDEntries"][1]["MDEntryPx"]["mantissa"],
            4_500_500_000_000i64
        );
        assert_eq!(v["NoMDEntries"][0]["MDUpdateAction"], "New");
        assert_eq!(
            v["NoMDEntries"][0]["NumberOfOrders"],
            serde_json::Value::Null
        );
        assert_eq!(
            codec_gen::json::encode_message(&schema, &v).expect("encodes"),
            &buf[..len]
        );
    }
}

#[cfg(sbe_conformance_present)]
mod aeron {
    use sbe_conformance::aeron_cluster_codecs::*;

    #[test]
    fn aeron_cluster_connect_request_round_trips_and_old_versions_read_as_absent() {
        if super::conformance_dir().is_none() {
            return;
        }
        let mut buf = [0u8; 256];
        let mut e = SessionConnectRequestEncoder::wrap_with_header(&mut buf).expect("fits");
        e.set_correlation_id(-7)
            .set_response_stream_id(102)
            .set_version(Some(0x0001_0002));
        e.set_response_channel(b"aeron:udp?endpoint=localhost:20121")
            .expect("fits");
        e.set_encoded_credentials(&[1, 2, 3]).expect("fits");
        let len = e.finish().expect("fits");

        let d = SessionConnectRequestDecoder::wrap_with_header(&buf[..len]).expect("valid");
        assert_eq!((d.correlation_id(), d.response_stream_id()), (-7, 102));
        assert_eq!(d.version(), Some(0x0001_0002));
        assert_eq!(
            d.response_channel().expect("valid"),
            b"aeron:udp?endpoint=localhost:20121"
        );
        assert_eq!(d.encoded_credentials().expect("valid"), &[1, 2, 3]);

        // The same block read as version 1, before `version` existed: the field is absent.
        let h = decode_header(&buf).expect("valid");
        let old = SessionConnectRequestDecoder::wrap(
            &buf[HEADER_LENGTH..len],
            usize::from(h.block_length),
            1,
        )
        .expect("valid");
        assert_eq!(old.version(), None);
        assert_eq!(
            old.response_channel().expect("valid"),
            b"aeron:udp?endpoint=localhost:20121"
        );

        let xml = std::fs::read_to_string(
            super::conformance_dir()
                .expect("present")
                .join("sbe/valid/aeron-cluster-codecs.xml"),
        )
        .expect("readable");
        let schema = codec_gen::parse(&xml).expect("valid");
        let (v, _) = codec_gen::json::decode_message(&schema, &buf[..len], 0).expect("valid");
        assert_eq!(v["responseChannel"], "aeron:udp?endpoint=localhost:20121");
        assert_eq!(
            v["encodedCredentials"], "010203",
            "binary var data prints as hex"
        );
        assert_eq!(
            codec_gen::json::encode_message(&schema, &v).expect("encodes"),
            &buf[..len]
        );
    }
}
