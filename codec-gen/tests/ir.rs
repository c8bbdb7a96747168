//! The parser's IR: offsets, sizes, versions and constants computed as the SBE specification
//! says, and every error collected.

use codec_gen::ir::*;

fn constructs() -> Schema {
    parse(include_str!("schemas/constructs.xml")).expect("valid")
}

#[test]
fn fields_get_sequential_offsets_explicit_offsets_and_the_declared_block_length() {
    let s = constructs();
    let m = s.message_by_name("Everything").expect("declared");
    let off = |n: &str| {
        m.body
            .fields
            .iter()
            .find(|f| f.name == n)
            .map(|f| (f.offset, f.size()))
    };
    assert_eq!(off("id"), Some((0, 8)));
    assert_eq!(off("symbol"), Some((8, 8)));
    assert_eq!(off("side"), Some((16, 1)));
    assert_eq!(off("pct"), Some((37, 1)));
    assert_eq!(off("magic"), Some((38, 0)), "constants take no bytes");
    assert_eq!(off("ratio"), Some((38, 8)));
    assert_eq!(
        off("stamp"),
        Some((64, 18)),
        "explicit offset; a composite with a 2-byte gap"
    );
    assert_eq!(
        m.body.block_length, 120,
        "declared blockLength pads the block"
    );
    assert_eq!(s.header_size(), 8);
}

#[test]
fn composites_place_members_at_declared_offsets() {
    let s = constructs();
    let stamp = s
        .types
        .iter()
        .find(|t| t.name == "Stamp")
        .expect("declared");
    let TypeKind::Composite(c) = &stamp.kind else {
        panic!("a composite")
    };
    let offsets: Vec<(&str, usize)> = c
        .members
        .iter()
        .map(|m| (m.name.as_str(), m.offset))
        .collect();
    assert_eq!(
        offsets,
        [
            ("seconds", 0),
            ("Unit", 6),
            ("flags", 7),
            ("price", 8),
            ("spare", 16)
        ]
    );
    assert_eq!(
        c.size, 18,
        "4 + 2 (gap) + 1 + 1 + 8 (Money; its constant exponent takes none) + 2"
    );
}

#[test]
fn constants_by_value_ref_and_by_text_are_evaluated() {
    let s = constructs();
    let m = s.message_by_name("Everything").expect("declared");
    let f = |n: &str| {
        m.body
            .fields
            .iter()
            .find(|f| f.name == n)
            .expect("declared")
            .clone()
    };
    assert_eq!(f("fixedStatus").enum_constant.as_deref(), Some("filled"));
    let TypeKind::Encoded(e) = f("fixedNumber").ty.kind else {
        panic!("encoded")
    };
    assert!(matches!(
        e.constant,
        Some(Constant::EnumValue {
            value: Value::Int(2),
            ..
        })
    ));
    let TypeKind::Encoded(e) = f("venue").ty.kind else {
        panic!("encoded")
    };
    assert_eq!(e.constant, Some(Constant::Bytes(b"XTAL".to_vec())));
}

#[test]
fn every_error_is_collected_and_counted() {
    let xml = include_str!("schemas/versioned-v2.xml")
        .replace(r#"id="5">"#, r#"id="5" sinceVersion="9">"#)
        .replace(r#"type="uint32"/>"#, r#"type="Missing"/>"#)
        .replace(r#"<type name="length" primitiveType="uint16"/>"#, r#"<type name="length" primitiveType="uint16" offset="1"/><type name="x" primitiveType="uint8" offset="0"/>"#);
    let err = parse(&xml).expect_err("three problems");
    let text = err.to_string();
    assert!(
        text.contains("sinceVersion=9 greater than the schema version 2"),
        "{text}"
    );
    assert!(text.contains("unknown type \"Missing\""), "{text}");
    assert!(text.contains("member \"x\" offset 0 overlaps"), "{text}");
    assert!(
        text.ends_with(&format!("had {} errors", err.errors.len())),
        "{text}"
    );
    assert_eq!(err.errors.len(), 3, "{text}");
}

#[test]
fn malformed_xml_is_one_error() {
    let err = parse("<messageSchema").expect_err("not XML");
    assert_eq!(err.errors.len(), 1);
    assert!(err.errors[0].contains("XML"));
}
