//! Round-trip property tests over `codec-gen/tests/schemas/constructs.xml`, a schema with every
//! construct (fixed arrays, char strings, optional fields with and without explicit null values,
//! constants by value and by `valueRef`, char/uint8/optional enums, sets, composites with gaps,
//! refs, enums, sets and constant members, keyword names, `sinceVersion` fields, groups nested
//! two deep with var data, binary and text var data):
//! - random values → generated encoder → generated decoder give the same values;
//! - the generated encoder's bytes → JSON decoder → JSON encoder give the same bytes;
//! - random bytes never panic the generated decoders or the JSON decoder.

use proptest::prelude::*;
use sbe_conformance::local::constructs::*;

#[derive(Debug, Clone, PartialEq)]
struct Fill {
    px: i64,
    qty: u32,
    note: String,
}

#[derive(Debug, Clone, PartialEq)]
struct Leg {
    leg_id: u32,
    ratio: i16,
    side: Side,
    fills: Vec<Fill>,
    note: String,
}

#[derive(Debug, Clone, PartialEq)]
struct Everything {
    id: u64,
    symbol: [u8; 8],
    side: Side,
    status: Status,
    level: Option<Level>,
    flags: u8,
    wide: u32,
    price: Option<i64>,
    qty: Option<u32>,
    pct: u8,
    ratio: Option<f64>,
    weights: [i16; 3],
    digest: [u8; 4],
    seconds: u32,
    unit: Unit,
    stamp_flags: u8,
    stamp_price: i64,
    spare: Option<u16>,
    f32: f32,
    i8: i8,
    type_: i32,
    extra: u32,
    extra2: Option<u32>,
    legs: Vec<Leg>,
    tags: Vec<u16>,
    later: Vec<u64>,
    note: String,
    blob: Vec<u8>,
    later_note: String,
}

fn fill() -> impl Strategy<Value = Fill> {
    (any::<i64>(), any::<u32>(), ".{0,6}").prop_map(|(px, qty, note)| Fill { px, qty, note })
}

fn leg() -> impl Strategy<Value = Leg> {
    (
        any::<u32>(),
        any::<i16>(),
        prop::sample::select(Side::ALL.to_vec()),
        prop::collection::vec(fill(), 0..3),
        ".{0,6}",
    )
        .prop_map(|(leg_id, ratio, side, fills, note)| Leg {
            leg_id,
            ratio,
            side,
            fills,
            note,
        })
}

fn everything() -> impl Strategy<Value = Everything> {
    let a = (
        any::<u64>(),
        any::<[u8; 8]>(),
        prop::sample::select(Side::ALL.to_vec()),
        prop::sample::select(Status::ALL.to_vec()),
        prop::option::of(prop::sample::select(Level::ALL.to_vec())),
        any::<u8>(),
        any::<u32>(),
        prop::option::of((i64::MIN + 1)..=i64::MAX),
        prop::option::of(1u32..),
        0u8..=100,
    );
    let b = (
        prop::option::of(-1e300f64..1e300),
        any::<[i16; 3]>(),
        any::<[u8; 4]>(),
        any::<u32>(),
        prop::sample::select(Unit::ALL.to_vec()),
        any::<u8>(),
        any::<i64>(),
        prop::option::of(0u16..u16::MAX),
        -1e30f32..1e30,
        any::<i8>(),
    );
    let c = (
        any::<i32>(),
        any::<u32>(),
        prop::option::of(1u32..),
        prop::collection::vec(leg(), 0..3),
        prop::collection::vec(any::<u16>(), 0..4),
        prop::collection::vec(any::<u64>(), 0..3),
        ".{0,10}",
        prop::collection::vec(any::<u8>(), 0..12),
        ".{0,5}",
    );
    (a, b, c).prop_map(|(a, b, c)| Everything {
        id: a.0,
        symbol: a.1,
        side: a.2,
        status: a.3,
        level: a.4,
        flags: a.5,
        wide: a.6,
        price: a.7,
        qty: a.8,
        pct: a.9,
        ratio: b.0,
        weights: b.1,
        digest: b.2,
        seconds: b.3,
        unit: b.4,
        stamp_flags: b.5,
        stamp_price: b.6,
        spare: b.7,
        f32: b.8,
        i8: b.9,
        type_: c.0,
        extra: c.1,
        extra2: c.2,
        legs: c.3,
        tags: c.4,
        later: c.5,
        note: c.6,
        blob: c.7,
        later_note: c.8,
    })
}

fn encode(m: &Everything, buf: &mut [u8]) -> usize {
    let mut e = EverythingEncoder::wrap_with_header(buf).expect("buffer fits");
    e.set_id(m.id)
        .set_symbol(&m.symbol)
        .set_side(m.side)
        .set_status(m.status)
        .set_level(m.level);
    e.set_flags(Flags::from_raw(m.flags))
        .set_wide(WideFlags::from_raw(m.wide));
    e.set_price(m.price)
        .set_qty(m.qty)
        .set_pct(m.pct)
        .set_ratio(m.ratio);
    e.set_weights(&m.weights).set_digest(&m.digest);
    e.stamp_mut()
        .set_seconds(m.seconds)
        .set_unit(m.unit)
        .set_flags(Flags::from_raw(m.stamp_flags))
        .set_spare(m.spare);
    e.stamp_mut().price_mut().set_mantissa(m.stamp_price);
    e.set_f32(m.f32)
        .set_i8(m.i8)
        .set_type_(m.type_)
        .set_extra(m.extra)
        .set_extra2(m.extra2);
    {
        let mut legs = e.legs().expect("fits");
        for l in &m.legs {
            let mut le = legs.next_entry().expect("fits");
            le.set_leg_id(l.leg_id).set_ratio(l.ratio).set_side(l.side);
            {
                let mut fills = le.fills().expect("fits");
                for f in &l.fills {
                    let mut fe = fills.next_entry().expect("fits");
                    fe.px_mut().set_mantissa(f.px);
                    fe.set_qty(f.qty)
                        .set_venue_note(f.note.as_bytes())
                        .expect("fits");
                }
            }
            le.set_leg_note(l.note.as_bytes()).expect("fits");
        }
    }
    {
        let mut tags = e.tags().expect("fits");
        for t in &m.tags {
            tags.next_entry().expect("fits").set_tag(*t);
        }
    }
    {
        let mut later = e.later().expect("fits");
        for v in &m.later {
            later.next_entry().expect("fits").set_value(*v);
        }
    }
    e.set_note(m.note.as_bytes()).expect("fits");
    e.set_blob(&m.blob).expect("fits");
    e.set_later_note(m.later_note.as_bytes()).expect("fits");
    e.finish().expect("fits")
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).expect("utf-8 was written")
}

fn decode(buf: &[u8]) -> Result<Everything, DecodeError> {
    let d = EverythingDecoder::wrap_with_header(buf)?;
    assert_eq!(d.magic(), 4242);
    assert_eq!(d.venue(), b"XTAL");
    assert_eq!(d.fixed_status(), Status::Filled);
    assert_eq!(d.fixed_number(), 2);
    assert_eq!(d.stamp().price().exponent(), -2);
    let mut legs = Vec::new();
    for l in d.legs()? {
        let l = l?;
        let mut fills = Vec::new();
        for f in l.fills()? {
            let f = f?;
            fills.push(Fill {
                px: f.px().mantissa(),
                qty: f.qty(),
                note: text(f.venue_note()?),
            });
        }
        legs.push(Leg {
            leg_id: l.leg_id(),
            ratio: l.ratio(),
            side: l.side().expect("known"),
            fills,
            note: text(l.leg_note()?),
        });
    }
    Ok(Everything {
        id: d.id(),
        symbol: *d.symbol(),
        side: d.side().expect("known"),
        status: d.status().expect("known"),
        level: d.level(),
        flags: d.flags().raw(),
        wide: d.wide().raw(),
        price: d.price(),
        qty: d.qty(),
        pct: d.pct(),
        ratio: d.ratio(),
        weights: d.weights(),
        digest: *d.digest(),
        seconds: d.stamp().seconds(),
        unit: d.stamp().unit().expect("known"),
        stamp_flags: d.stamp().flags().raw(),
        stamp_price: d.stamp().price().mantissa(),
        spare: d.stamp().spare(),
        f32: d.f32(),
        i8: d.i8(),
        type_: d.type_(),
        extra: d.extra().expect("version 2 has it"),
        extra2: d.extra2(),
        legs,
        tags: d.tags()?.map(|t| t.tag()).collect(),
        later: d.later()?.map(|t| t.value()).collect(),
        note: text(d.note()?),
        blob: d.blob()?.to_vec(),
        later_note: text(d.later_note()?),
    })
}

/// Touches every accessor of whatever `decode` finds, returning the first error.
fn walk(buf: &[u8]) -> Result<usize, DecodeError> {
    match decode_any(buf)? {
        Decoded::Everything(d) => {
            let _ = (
                d.id(),
                d.symbol(),
                d.side(),
                d.level(),
                d.flags(),
                d.price(),
                d.qty(),
                d.ratio(),
                d.weights(),
            );
            let _ = (
                d.stamp().unit(),
                d.stamp().spare(),
                d.extra(),
                d.extra2(),
                d.f32(),
                d.type_(),
            );
            for l in d.legs()? {
                let l = l?;
                let _ = (l.leg_id(), l.side());
                for f in l.fills()? {
                    let f = f?;
                    let _ = (f.px().mantissa(), f.qty(), f.venue_note()?);
                }
                l.leg_note()?;
            }
            let _ = d
                .tags()?
                .fold(0u64, |a, t| a.wrapping_add(u64::from(t.tag())));
            let _ = d.later()?.fold(0u64, |a, t| a.wrapping_add(t.value()));
            d.note()?;
            d.blob()?;
            d.later_note()?;
            d.encoded_length()
        }
        Decoded::Empty(d) => d.encoded_length(),
        Decoded::OnlyData(d) => {
            d.payload()?;
            d.encoded_length()
        }
    }
}

fn decode_any(buf: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    sbe_conformance::local::constructs::decode(buf)
}

type DecodeError = codec_gen::runtime::DecodeError;

fn schema() -> codec_gen::Schema {
    codec_gen::parse(include_str!("../../tests/schemas/constructs.xml")).expect("valid")
}

proptest! {
    #[test]
    fn generated_codecs_round_trip_every_construct(m in everything()) {
        let mut buf = vec![0u8; 4096];
        let len = encode(&m, &mut buf);
        let back = decode(&buf[..len]).expect("decodes");
        prop_assert_eq!(&back, &m);
        prop_assert_eq!(walk(&buf[..len]), Ok(len));
    }

    #[test]
    fn json_decode_then_encode_gives_back_the_same_bytes(m in everything()) {
        let mut buf = vec![0u8; 4096];
        let len = encode(&m, &mut buf);
        let schema = schema();
        let (v, end) = codec_gen::json::decode_message(&schema, &buf[..len], 0).expect("decodes");
        prop_assert_eq!(end, len);
        let line = codec_gen::json::to_line(&schema, &v);
        let reparsed: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        let bytes = codec_gen::json::encode_message(&schema, &reparsed).expect("encodes");
        prop_assert_eq!(&bytes[..], &buf[..len]);
    }

    #[test]
    fn random_bytes_never_panic_the_decoders(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = walk(&bytes);
        let _ = codec_gen::json::decode_all(&schema(), &bytes);
    }

    #[test]
    fn corrupted_messages_never_panic_the_decoders(m in everything(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let mut buf = vec![0u8; 4096];
        let len = encode(&m, &mut buf);
        let i = at.index(len);
        buf[i] = byte;
        let cut = cut.index(len + 1);
        let _ = walk(&buf[..cut]);
        let _ = codec_gen::json::decode_all(&schema(), &buf[..cut]);
    }
}

#[test]
fn empty_and_data_only_messages_round_trip() {
    let mut buf = [0u8; 64];
    let len = EmptyEncoder::wrap_with_header(&mut buf)
        .expect("fits")
        .finish()
        .expect("fits");
    assert_eq!(len, HEADER_LENGTH);
    assert_eq!(walk(&buf[..len]), Ok(len));
    let mut e = OnlyDataEncoder::wrap_with_header(&mut buf).expect("fits");
    e.set_payload(&[9, 8, 7]).expect("fits");
    let len = e.finish().expect("fits");
    let d = OnlyDataDecoder::wrap_with_header(&buf[..len]).expect("valid");
    assert_eq!(d.payload(), Ok(&[9u8, 8, 7][..]));
}

#[test]
fn parts_skipped_by_the_encoder_are_written_empty_and_out_of_order_parts_are_refused() {
    let mut buf = [0u8; 512];
    let mut e = EverythingEncoder::wrap_with_header(&mut buf).expect("fits");
    e.set_note(b"only the note").expect("fits");
    assert!(matches!(
        e.legs(),
        Err(codec_gen::runtime::EncodeError::OutOfOrder { part: "legs" })
    ));
    let len = e.finish().expect("fits");
    let d = EverythingDecoder::wrap_with_header(&buf[..len]).expect("valid");
    assert_eq!(d.legs().expect("valid").count(), 0);
    assert_eq!(d.note(), Ok(&b"only the note"[..]));
    assert_eq!(d.later_note(), Ok(&b""[..]));
    assert_eq!(d.price(), None, "optional fields start null");
    assert_eq!(d.level(), None);
    assert_eq!(
        d.stamp().spare(),
        None,
        "optional composite members start null"
    );
}

#[test]
fn an_entry_dropped_before_its_nested_parts_still_leaves_well_formed_bytes() {
    let mut buf = [0u8; 512];
    let mut e = EverythingEncoder::wrap_with_header(&mut buf).expect("fits");
    {
        let mut legs = e.legs().expect("fits");
        legs.next_entry().expect("fits").set_leg_id(1);
        legs.next_entry().expect("fits").set_leg_id(2);
    }
    let len = e.finish().expect("fits");
    let ids: Vec<u32> = EverythingDecoder::wrap_with_header(&buf[..len])
        .expect("valid")
        .legs()
        .expect("valid")
        .map(|l| l.expect("valid").leg_id())
        .collect();
    assert_eq!(ids, [1, 2]);
    assert_eq!(walk(&buf[..len]), Ok(len));
}

#[test]
fn encoders_report_a_short_buffer_and_limits_instead_of_panicking() {
    let mut small = [0u8; 10];
    assert!(matches!(
        EverythingEncoder::wrap_with_header(&mut small),
        Err(codec_gen::runtime::EncodeError::BufferTooShort { .. })
    ));
    let mut buf = vec![0u8; 1 << 16];
    let mut e = EverythingEncoder::wrap_with_header(&mut buf).expect("fits");
    {
        let mut legs = e.legs().expect("fits");
        let mut leg = legs.next_entry().expect("fits");
        let mut fills = leg.fills().expect("fits");
        for _ in 0..100 {
            fills
                .next_entry()
                .expect("under the schema's maxValue of 100");
        }
        assert!(matches!(
            fills.next_entry(),
            Err(codec_gen::runtime::EncodeError::TooManyEntries { max: 100, .. })
        ));
    }
    assert!(matches!(
        e.set_blob(&vec![0u8; 65537]),
        Err(codec_gen::runtime::EncodeError::TooLong { max: 65536, .. })
    ));
}
