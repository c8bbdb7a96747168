//! `codec-gen`: reads SBE XML schemas (FIX Simple Binary Encoding 1.0) and
//! - generates Rust flyweight codecs ([`generate`], `codec-gen generate`),
//! - decodes and encodes messages as JSON lines without generated code ([`json`],
//!   `codec-gen decode` / `codec-gen encode`).
//!
//! Pipeline: XML → [`ir::parse`] (types resolved, offsets and block lengths computed, every
//! error collected) → [`gen::generate`] (a `String` of Rust) or [`json`] (walks the IR).
//! [`runtime`] holds the few items generated code uses (`codec_gen::runtime::*`).
//!
//! # Generated API
//! For a schema, the generated module holds (schema names converted: types and messages to
//! `CamelCase`, fields to `snake_case`, Rust keywords get a trailing `_`):
//! - `SCHEMA_ID`, `SCHEMA_VERSION`, `HEADER_LENGTH`, `decode_header(&[u8]) -> Result<Header>`,
//!   `encode_header(&mut [u8], Header)`, and `decode(&[u8]) -> Result<Decoded>` that reads the
//!   header and returns `Decoded::<Message>(<Message>Decoder)` by template id.
//! - Per composite `C`: a `zerocopy` struct `C` with getters `member()`, setters
//!   `set_member(v) -> &mut Self`, `member_mut() -> &mut Inner` for nested composites,
//!   `zeroed()`, `ENCODED_LENGTH`.
//! - Per enum `E`: `#[repr(prim)] enum E` with `raw()`, `from_raw(raw) -> Option<E>`,
//!   `name() -> &'static str` (the schema name), `from_name`, `ALL`, `TryFrom<prim>`, `Display`.
//! - Per set `S`: `struct S(pub prim)` with per choice `choice() -> bool`,
//!   `set_choice(bool) -> &mut Self`, `with_choice(bool) -> Self`, const `CHOICE`, and `raw()`,
//!   `from_raw()`, `empty()`, `is_empty()`, `unknown_bits()`, `union()`, `KNOWN_BITS`, `CHOICES`.
//! - Per message `M`: `MDecoder<'a>` (`wrap_with_header(&[u8])`, `wrap(&[u8], block_length,
//!   version)`, `TEMPLATE_ID`, `BLOCK_LENGTH`, `acting_version()`, `encoded_length()`, one getter
//!   per field, one method per group `g()` returning `Result<MGGroupDecoder>` (an `Iterator` over
//!   entry decoders `MGDecoder`, with `count()` and, for fixed-size entries, `get(i)`; items are
//!   `Result`s when entries hold nested groups or var data), one method per var data `d()`
//!   returning `Result<&[u8]>`), and `MEncoder<'a>` (`wrap_with_header(&mut [u8])`, `wrap`,
//!   setters `set_f(v) -> &mut Self`, `f_mut() -> &mut Composite`, `g()` returning
//!   `Result<MGGroupEncoder>` whose `next_entry()` returns `Result<MGEncoder>`,
//!   `set_d(&[u8]) -> Result<&mut Self>`, `finish() -> Result<usize>` = bytes written). Nested
//!   group names chain: `MGHDecoder` for group `h` inside group `g`. The fixed blocks are
//!   `zerocopy` structs `MBlock` / `MGBlock`.
//! - Getters return plain values for required fields, `Option` for optional fields (null → `None`)
//!   and for fields newer than the message's own version (older senders → `None`); enums read as
//!   `field() -> Option<E>` plus `field_raw()`; sets as `S`; composites as `&C`; byte arrays as
//!   `&[u8; N]`; constants return their value.
//! - Decoders check lengths when wrapped (the block) and when a group is reached (all its fixed
//!   entries at once) and return [`runtime::DecodeError`]; nothing panics on any input.
#![forbid(unsafe_code)]

pub mod gen;
pub mod ir;
pub mod json;
mod names;
pub mod runtime;

pub use gen::generate;
pub use ir::{parse, Schema, SchemaErrors};

/// Parses `xml` and generates the Rust codec module for it.
///
/// # Errors
/// Every problem in the schema.
pub fn generate_from_xml(xml: &str) -> Result<String, SchemaErrors> {
    parse(xml).map(|s| generate(&s))
}
