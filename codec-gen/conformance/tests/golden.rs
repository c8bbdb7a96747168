//! Golden byte vectors written by hand from the SBE specification (little-endian; the standard
//! header is blockLength, templateId, schemaId, version as uint16; a group starts with its
//! dimension blockLength, numInGroup; var data with its length), checked against the generated
//! decoders and encoders and against the schema-driven JSON decoder.
//!
//! Schemas: `codec-gen/tests/schemas/versioned-v1.xml` and `versioned-v2.xml` (schema id 901):
//! v2 adds `limit` (optional int32) to the block, `venue` (uint16) to `fills` entries and the var
//! data `tag`.

use sbe_conformance::local::{versioned_v1 as v1, versioned_v2 as v2};
use serde_json::json;

/// Order{orderId 7, qty 100, fills [{price 1234}], note "hi"} written by version 1.
const ORDER_V1: &[u8] = &[
    0x0c, 0x00, 0x05, 0x00, 0x85, 0x03, 0x01,
    0x00, // header: blockLength 12, template 5, schema 901, version 1
    0x07, 0, 0, 0, 0, 0, 0, 0, // orderId
    0x64, 0, 0, 0, // qty
    0x08, 0x00, 0x01, 0x00, // fills: blockLength 8, numInGroup 1
    0xd2, 0x04, 0, 0, 0, 0, 0, 0, // price 1234
    0x02, 0x00, b'h', b'i', // note
];

/// The same order written by version 2, with limit -5, venue 3 and tag "x".
const ORDER_V2: &[u8] = &[
    0x10, 0x00, 0x05, 0x00, 0x85, 0x03, 0x02, 0x00, // header: blockLength 16, version 2
    0x07, 0, 0, 0, 0, 0, 0, 0, // orderId
    0x64, 0, 0, 0, // qty
    0xfb, 0xff, 0xff, 0xff, // limit -5
    0x0a, 0x00, 0x01, 0x00, // fills: blockLength 10, numInGroup 1
    0xd2, 0x04, 0, 0, 0, 0, 0, 0, // price 1234
    0x03, 0x00, // venue 3
    0x02, 0x00, b'h', b'i', // note
    0x01, 0x00, b'x', // tag
];

fn schema(xml: &str) -> codec_gen::Schema {
    codec_gen::parse(xml).expect("test schema is valid")
}

fn v1_schema() -> codec_gen::Schema {
    schema(include_str!("../../tests/schemas/versioned-v1.xml"))
}

fn v2_schema() -> codec_gen::Schema {
    schema(include_str!("../../tests/schemas/versioned-v2.xml"))
}

#[test]
fn header_reads_and_writes_the_four_standard_fields() {
    let h = v1::decode_header(ORDER_V1).expect("header fits");
    assert_eq!(
        h,
        codec_gen::runtime::Header {
            block_length: 12,
            template_id: 5,
            schema_id: 901,
            version: 1
        }
    );
    let mut buf = [0u8; 8];
    v1::encode_header(&mut buf, h);
    assert_eq!(&buf, &ORDER_V1[..8]);
    assert_eq!(v1::HEADER_LENGTH, 8);
    assert!(matches!(
        v1::decode_header(&ORDER_V1[..7]),
        Err(codec_gen::runtime::DecodeError::Truncated { offset: 6, .. })
    ));
}

#[test]
fn version_1_encoder_writes_the_golden_bytes() {
    let mut buf = [0u8; 64];
    let mut e = v1::OrderEncoder::wrap_with_header(&mut buf).expect("fits");
    e.set_order_id(7).set_qty(100);
    e.fills()
        .expect("fits")
        .next_entry()
        .expect("fits")
        .set_price(1234);
    e.set_note(b"hi").expect("fits");
    let len = e.finish().expect("fits");
    assert_eq!(&buf[..len], ORDER_V1);
}

#[test]
fn version_2_encoder_writes_the_golden_bytes() {
    let mut buf = [0u8; 64];
    let mut e = v2::OrderEncoder::wrap_with_header(&mut buf).expect("fits");
    e.set_order_id(7).set_qty(100).set_limit(Some(-5));
    e.fills()
        .expect("fits")
        .next_entry()
        .expect("fits")
        .set_price(1234)
        .set_venue(3);
    e.set_note(b"hi")
        .expect("fits")
        .set_tag(b"x")
        .expect("fits");
    let len = e.finish().expect("fits");
    assert_eq!(&buf[..len], ORDER_V2);
}

#[test]
fn version_1_decoder_reads_a_version_2_message() {
    let d = v1::OrderDecoder::wrap_with_header(ORDER_V2).expect("valid");
    assert_eq!((d.acting_version(), d.acting_block_length()), (2, 16));
    assert_eq!((d.order_id(), d.qty()), (7, 100));
    let fills: Vec<i64> = d.fills().expect("valid").map(|f| f.price()).collect();
    assert_eq!(
        fills,
        [1234],
        "entries are strided by the sender's block length (10)"
    );
    assert_eq!(d.note().expect("valid"), b"hi");
    // A version-1 reader knows nothing after `note`: the message ends there for it.
    assert_eq!(d.encoded_length().expect("valid"), ORDER_V2.len() - 3);
}

#[test]
fn version_2_decoder_reads_a_version_1_message_with_new_fields_absent() {
    let d = v2::OrderDecoder::wrap_with_header(ORDER_V1).expect("valid");
    assert_eq!((d.acting_version(), d.acting_block_length()), (1, 12));
    assert_eq!((d.order_id(), d.qty(), d.limit()), (7, 100, None));
    let fill = d.fills().expect("valid").next().expect("one fill");
    assert_eq!((fill.price(), fill.venue()), (1234, None));
    assert_eq!(d.note().expect("valid"), b"hi");
    assert_eq!(
        d.tag().expect("valid"),
        b"",
        "tag is newer than the message"
    );
    assert_eq!(d.encoded_length().expect("valid"), ORDER_V1.len());
}

#[test]
fn version_2_decoder_reads_a_version_2_message() {
    let d = v2::OrderDecoder::wrap_with_header(ORDER_V2).expect("valid");
    assert_eq!(d.limit(), Some(-5));
    let fill = d.fills().expect("valid").next().expect("one fill");
    assert_eq!((fill.price(), fill.venue()), (1234, Some(3)));
    assert_eq!(d.tag().expect("valid"), b"x");
    assert_eq!(d.encoded_length().expect("valid"), ORDER_V2.len());
}

#[test]
fn json_decoder_reads_the_golden_messages_in_both_directions() {
    let (v, end) = codec_gen::json::decode_message(&v2_schema(), ORDER_V1, 0).expect("valid");
    assert_eq!(end, ORDER_V1.len());
    assert_eq!(
        v,
        json!({"message": "Order", "templateId": 5, "version": 1, "orderId": 7, "qty": 100,
               "limit": null, "fills": [{"price": 1234, "venue": null}], "note": "hi", "tag": null})
    );
    let (v, end) = codec_gen::json::decode_message(&v1_schema(), ORDER_V2, 0).expect("valid");
    assert_eq!(end, ORDER_V2.len() - 3);
    assert_eq!(
        v,
        json!({"message": "Order", "templateId": 5, "version": 2, "orderId": 7, "qty": 100,
               "fills": [{"price": 1234}], "note": "hi"})
    );
    let (v, _) = codec_gen::json::decode_message(&v2_schema(), ORDER_V2, 0).expect("valid");
    assert_eq!(v["limit"], json!(-5));
    assert_eq!(v["fills"][0]["venue"], json!(3));
    assert_eq!(v["tag"], json!("x"));
}

#[test]
fn json_encoder_writes_the_golden_bytes() {
    let v = json!({"message": "Order", "orderId": 7, "qty": 100, "limit": -5,
                   "fills": [{"price": 1234, "venue": 3}], "note": "hi", "tag": "x"});
    assert_eq!(
        codec_gen::json::encode_message(&v2_schema(), &v).expect("fits"),
        ORDER_V2
    );
    let v = json!({"message": "Order", "orderId": 7, "qty": 100, "fills": [{"price": 1234}], "note": "hi"});
    assert_eq!(
        codec_gen::json::encode_message(&v1_schema(), &v).expect("fits"),
        ORDER_V1
    );
}

#[test]
fn every_truncation_of_a_golden_message_is_an_error_not_a_panic() {
    for len in 0..ORDER_V2.len() {
        let bytes = &ORDER_V2[..len];
        let full = v2::OrderDecoder::wrap_with_header(bytes).and_then(|d| {
            d.fills()?.for_each(drop);
            d.note()?;
            d.tag()?;
            d.encoded_length()
        });
        assert!(
            full.is_err(),
            "a message cut to {len} bytes must not decode"
        );
        let json = codec_gen::json::decode_message(&v2_schema(), bytes, 0);
        let err = json.expect_err("truncated");
        assert!(
            err.offset <= len,
            "offset {} points inside the {len} bytes",
            err.offset
        );
    }
}
