//! The Rust code generator: [`Schema`] in, one Rust module's source text out.
//!
//! Owns the shape of generated code (documented in the crate docs, "Generated API"). The output
//! depends only on `zerocopy` and `codec_gen::runtime`, names both by absolute path, contains no
//! `unsafe`, and never panics on any input bytes: every length is checked when a decoder is
//! wrapped (blocks) or when a group or var data is reached, and problems are returned as
//! [`crate::runtime::DecodeError`] values.

use crate::ir::*;
use crate::names::{camel, dedupe, shouty, snake};
use std::collections::HashSet;
use std::fmt::Write;

const RT: &str = "::codec_gen::runtime";

/// Method names that generated flyweights use themselves; a field with such a name gets a
/// `_field` suffix.
const RESERVED: &[&str] = &[
    "wrap",
    "wrap_at",
    "wrap_with_header",
    "acting_version",
    "acting_block_length",
    "encoded_length",
    "encoded_end",
    "finish",
    "advance",
    "skip",
    "count",
    "next_entry",
    "zeroed",
    "sbe_init",
    "get",
    "is_empty",
    "raw",
    "from_raw",
    "name",
    "from_name",
];

/// Generates the Rust source of a module holding codecs for every type and message of `schema`.
pub fn generate(schema: &Schema) -> String {
    let mut g = Gen {
        s: schema,
        out: String::new(),
        bo: match schema.byte_order {
            ByteOrder::LittleEndian => "::zerocopy::byteorder::LittleEndian",
            ByteOrder::BigEndian => "::zerocopy::byteorder::BigEndian",
        },
        be: schema.byte_order == ByteOrder::BigEndian,
    };
    g.schema();
    inline_all(&g.out)
}

/// Marks every generated function `#[inline]`: generated code lives in another crate than its
/// callers, and without the hint small flyweight methods are not inlined across crates.
fn inline_all(code: &str) -> String {
    let mut out = String::with_capacity(code.len() + code.len() / 8);
    let mut prev = "";
    for line in code.lines() {
        let t = line.trim_start();
        let is_fn = t.starts_with("fn ")
            || t.starts_with("pub fn ")
            || t.starts_with("pub const fn ")
            || t.starts_with("const fn ");
        if is_fn && prev.trim() != "#[inline]" {
            out.push_str(&line[..line.len() - t.len()]);
            out.push_str("#[inline]\n");
        }
        out.push_str(line);
        out.push('\n');
        prev = line;
    }
    out
}

struct Gen<'s> {
    s: &'s Schema,
    out: String,
    bo: &'static str,
    be: bool,
}

/// Where accessors read and write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Decoder,
    Encoder,
    Composite,
}

/// One accessor target: a field of a block or a member of a composite.
struct Acc<'t> {
    schema_name: &'t str,
    ident: String,
    method: String,
    ty: &'t Type,
    presence: Presence,
    offset: usize,
    enum_constant: Option<&'t str>,
    /// Read from `self.base` (true) or checked from `self.block` (false); decoders only.
    in_base: bool,
    /// Version that introduced it, when newer than its owner (decoders check it).
    since_check: Option<u16>,
    description: &'t str,
}

fn native(p: Primitive) -> &'static str {
    match p {
        Primitive::Char | Primitive::Uint8 => "u8",
        Primitive::Int8 => "i8",
        Primitive::Int16 => "i16",
        Primitive::Int32 => "i32",
        Primitive::Int64 => "i64",
        Primitive::Uint16 => "u16",
        Primitive::Uint32 => "u32",
        Primitive::Uint64 => "u64",
        Primitive::Float => "f32",
        Primitive::Double => "f64",
    }
}

fn lit(p: Primitive, v: Value) -> String {
    let n = native(p);
    match v {
        Value::Float(f) if f.is_nan() => format!("{n}::NAN"),
        Value::Float(f) if f.is_infinite() && f > 0.0 => format!("{n}::INFINITY"),
        Value::Float(f) if f.is_infinite() => format!("{n}::NEG_INFINITY"),
        Value::Float(f) if p == Primitive::Float => format!("{:?}_f32", f as f32),
        Value::Float(f) => format!("{f:?}_f64"),
        Value::Int(i) if p.is_float() => format!("{:?}_{n}", i as f64),
        Value::Int(i) => format!("{i}_{n}"),
    }
}

fn doc(s: &str) -> String {
    let s = s.trim();
    if s.is_empty() {
        String::new()
    } else {
        s.lines()
            .map(|l| format!("/// {}\n", l.trim()))
            .collect::<String>()
    }
}

fn byte_lit(bytes: &[u8]) -> String {
    let mut s = String::from("b\"");
    for &b in bytes {
        match b {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => {
                let _ = write!(s, "\\x{b:02x}");
            }
        }
    }
    s.push('"');
    s
}

/// Every composite, enum and set of the schema (nested ones included), first definition of a
/// name wins.
fn all_named_types(schema: &Schema) -> Vec<&Type> {
    fn walk<'t>(t: &'t Type, seen: &mut HashSet<String>, out: &mut Vec<&'t Type>) {
        if let TypeKind::Composite(c) = &t.kind {
            for m in &c.members {
                walk(&m.ty, seen, out);
            }
        }
        if matches!(t.kind, TypeKind::Encoded(_)) || !t.named {
            return;
        }
        if seen.insert(camel(&t.name)) {
            out.push(t);
        }
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for t in &schema.types {
        walk(t, &mut seen, &mut out);
    }
    walk(&schema.header, &mut seen, &mut out);
    out
}

fn has_optional(t: &Type) -> bool {
    match &t.kind {
        TypeKind::Encoded(e) => e.presence == Presence::Optional && e.length == 1,
        TypeKind::Enum(e) => e.presence == Presence::Optional,
        TypeKind::Composite(c) => c.members.iter().any(|m| has_optional(&m.ty)),
        TypeKind::Set(_) => false,
    }
}

impl<'s> Gen<'s> {
    fn w(&mut self, s: &str) {
        self.out.push_str(s);
    }

    fn storage(&self, p: Primitive) -> String {
        match p {
            Primitive::Char | Primitive::Uint8 => "u8".into(),
            Primitive::Int8 => "i8".into(),
            Primitive::Int16 => format!("::zerocopy::byteorder::I16<{}>", self.bo),
            Primitive::Int32 => format!("::zerocopy::byteorder::I32<{}>", self.bo),
            Primitive::Int64 => format!("::zerocopy::byteorder::I64<{}>", self.bo),
            Primitive::Uint16 => format!("::zerocopy::byteorder::U16<{}>", self.bo),
            Primitive::Uint32 => format!("::zerocopy::byteorder::U32<{}>", self.bo),
            Primitive::Uint64 => format!("::zerocopy::byteorder::U64<{}>", self.bo),
            Primitive::Float => format!("::zerocopy::byteorder::F32<{}>", self.bo),
            Primitive::Double => format!("::zerocopy::byteorder::F64<{}>", self.bo),
        }
    }

    /// The zerocopy storage type of a non-constant type.
    fn storage_of(&self, t: &Type) -> String {
        match &t.kind {
            TypeKind::Encoded(e) if e.length == 1 => self.storage(e.primitive),
            TypeKind::Encoded(e) => format!("[{}; {}]", self.storage(e.primitive), e.length),
            TypeKind::Composite(_) => camel(&t.name),
            TypeKind::Enum(e) => self.storage(e.encoding),
            TypeKind::Set(s) => self.storage(s.encoding),
        }
    }

    fn schema(&mut self) {
        let s = self.s;
        let _ = writeln!(
            self.out,
            "// Generated by codec-gen from SBE schema \"{}\" (id {}, version {}). Do not edit.\n",
            s.package, s.id, s.version
        );
        let _ = writeln!(
            self.out,
            "/// Schema id (`messageSchema/@id`).\npub const SCHEMA_ID: u16 = {};",
            s.id
        );
        let _ = writeln!(
            self.out,
            "/// Schema version (`messageSchema/@version`).\npub const SCHEMA_VERSION: u16 = {};",
            s.version
        );
        let _ = writeln!(
            self.out,
            "/// Schema package name.\npub const PACKAGE: &str = {:?};",
            s.package
        );
        let _ = writeln!(
            self.out,
            "/// Length in bytes of the message header.\npub const HEADER_LENGTH: usize = {};\n",
            s.header_size()
        );
        self.header_fns();
        for t in all_named_types(s) {
            match &t.kind {
                TypeKind::Composite(c) => self.composite(t, c),
                TypeKind::Enum(e) => self.enumeration(t, e),
                TypeKind::Set(st) => self.set(t, st),
                TypeKind::Encoded(_) => {}
            }
        }
        for m in &s.messages {
            let path = camel(&m.name);
            self.body(&path, &m.body, m.since_version, Some(m), None);
        }
        self.dispatch();
    }

    fn header_member(&self, name: &str) -> (usize, usize) {
        let (p, off, _) =
            composite_int_member(&self.s.header, name).unwrap_or((Primitive::Uint16, 0, None));
        (off, p.size())
    }

    fn header_fns(&mut self) {
        let be = self.be;
        let mut read = String::new();
        let mut write = String::new();
        for (field, name) in [
            ("block_length", "blockLength"),
            ("template_id", "templateId"),
            ("schema_id", "schemaId"),
            ("version", "version"),
        ] {
            let (off, width) = self.header_member(name);
            let _ = writeln!(
                read,
                "    let v = {RT}::read_uint(buf, {off}, {width}, {be})?;\n    let {field} = u16::try_from(v).map_err(|_| {RT}::DecodeError::HeaderValueTooLarge {{ offset: {off}, value: v }})?;"
            );
            let _ = writeln!(
                write,
                "    {RT}::write_uint(buf, {off}, {width}, {be}, u64::from(header.{field}));"
            );
        }
        let _ = write!(
            self.out,
            "/// Reads the message header at the start of `buf`.\n///\n/// # Errors\n/// [`{RT}::DecodeError::Truncated`] when `buf` is shorter than the header.\npub fn decode_header(buf: &[u8]) -> Result<{RT}::Header, {RT}::DecodeError> {{\n{read}    Ok({RT}::Header {{ block_length, template_id, schema_id, version }})\n}}\n\n\
/// Writes the message header at the start of `buf` (which must hold [`HEADER_LENGTH`] bytes;\n/// shorter buffers are left unchanged where the header does not fit).\npub fn encode_header(buf: &mut [u8], header: {RT}::Header) {{\n{write}}}\n\n"
        );
    }

    fn gen_struct(
        &mut self,
        name: &str,
        doc_text: &str,
        mut items: Vec<(String, String, usize, usize)>,
        total: usize,
    ) {
        items.sort_by_key(|i| i.2);
        let mut body = String::new();
        let mut pos = 0;
        let mut pad = 0;
        for (ident, ty, off, size) in items {
            if size == 0 {
                continue;
            }
            if off > pos {
                let _ = writeln!(body, "    _pad{pad}: [u8; {}],", off - pos);
                pad += 1;
            }
            let _ = writeln!(body, "    {ident}: {ty},");
            pos = off + size;
        }
        if total > pos {
            let _ = writeln!(body, "    _pad{pad}: [u8; {}],", total - pos);
        }
        let _ = write!(
            self.out,
            "{}#[derive(::zerocopy::FromBytes, ::zerocopy::IntoBytes, ::zerocopy::KnownLayout, ::zerocopy::Immutable, ::zerocopy::Unaligned, Clone, Copy, Debug)]\n#[repr(C)]\npub struct {name} {{\n{body}}}\n\n",
            doc(doc_text)
        );
    }

    fn composite(&mut self, t: &Type, c: &Composite) {
        let name = camel(&t.name);
        let idents = dedupe(c.members.iter().map(|m| snake(&m.name)).collect());
        let items = c
            .members
            .iter()
            .zip(&idents)
            .filter(|(m, _)| m.ty.size() > 0)
            .map(|(m, id)| (id.clone(), self.storage_of(&m.ty), m.offset, m.ty.size()))
            .collect();
        let d = format!(
            "Composite `{}`{}.",
            t.name,
            if t.description.is_empty() {
                String::new()
            } else {
                format!(": {}", t.description)
            }
        );
        self.gen_struct(&name, &d, items, c.size);
        let accs: Vec<Acc> = c
            .members
            .iter()
            .zip(&idents)
            .map(|(m, id)| {
                let (presence, enum_constant) = match &m.ty.kind {
                    TypeKind::Encoded(e) => (e.presence, None),
                    TypeKind::Enum(e) => (e.presence, None),
                    _ => (Presence::Required, None),
                };
                Acc {
                    schema_name: &m.name,
                    ident: id.clone(),
                    method: method_name(id),
                    ty: &m.ty,
                    presence,
                    offset: m.offset,
                    enum_constant,
                    in_base: true,
                    since_check: None,
                    description: &m.ty.description,
                }
            })
            .collect();
        let mut methods = String::new();
        for a in &accs {
            methods.push_str(&self.getter(a, Place::Composite));
            methods.push_str(&self.setter(a, Place::Composite));
        }
        let init = self.init_body(&accs);
        let _ = write!(
            self.out,
            "impl {name} {{\n    /// Encoded length in bytes.\n    pub const ENCODED_LENGTH: usize = {};\n\n    /// All bytes zero.\n    pub fn zeroed() -> Self {{\n        <Self as ::zerocopy::FromZeros>::new_zeroed()\n    }}\n\n    /// Sets optional members to their null values.\n    pub fn sbe_init(&mut self) {{\n{init}    }}\n\n{methods}}}\n\n",
            c.size
        );
    }

    /// Statements that set optional scalars to null and initialise nested composites.
    fn init_body(&self, accs: &[Acc]) -> String {
        let mut s = String::new();
        for a in accs {
            if a.presence == Presence::Constant || a.ty.size() == 0 {
                continue;
            }
            let place = format!("self.{}", a.ident);
            match &a.ty.kind {
                TypeKind::Encoded(e)
                    if (e.presence == Presence::Optional || a.presence == Presence::Optional)
                        && e.length == 1 =>
                {
                    let _ = writeln!(
                        s,
                        "        {};",
                        self.store(e.primitive, &place, &lit(e.primitive, e.null_value))
                    );
                }
                TypeKind::Enum(e)
                    if e.presence == Presence::Optional || a.presence == Presence::Optional =>
                {
                    let _ = writeln!(
                        s,
                        "        {};",
                        self.store(e.encoding, &place, &lit(e.encoding, e.null_value))
                    );
                }
                TypeKind::Composite(_) if has_optional(a.ty) => {
                    let _ = writeln!(s, "        {place}.sbe_init();");
                }
                _ => {}
            }
        }
        s
    }

    fn load(&self, p: Primitive, place: &str) -> String {
        if p.size() == 1 {
            place.to_string()
        } else {
            format!("{place}.get()")
        }
    }

    fn store(&self, p: Primitive, place: &str, value: &str) -> String {
        if p.size() == 1 {
            format!("{place} = {value}")
        } else {
            format!("{place}.set({value})")
        }
    }

    /// A getter for `a`. Decoders read from `self.base` or, checked, from `self.block`.
    fn getter(&self, a: &Acc, place: Place) -> String {
        let lt = if place == Place::Decoder { "'a " } else { "" };
        let mut docs = doc(a.description);
        let _ = writeln!(
            docs,
            "    /// `{}`: offset {}, {} bytes{}.",
            a.schema_name,
            a.offset,
            a.ty.size(),
            a.since_check.map_or(String::new(), |v| format!(
                ", since version {v} (older messages read as `None`)"
            ))
        );
        let docs = docs
            .lines()
            .map(|l| format!("    {}\n", l.trim_start()))
            .collect::<String>();
        // Constants first: no bytes to read.
        if a.presence == Presence::Constant {
            return match (&a.ty.kind, a.enum_constant) {
                (TypeKind::Enum(_), Some(v)) => {
                    let en = camel(&a.ty.name);
                    let variant = variant_names(a.ty).into_iter().zip(enum_values(a.ty)).find(|(_, vv)| vv.name == v).map(|(n, _)| n).unwrap_or_default();
                    format!("{docs}    #[inline]\n    pub fn {}(&self) -> {en} {{\n        {en}::{variant}\n    }}\n\n", a.method)
                }
                (TypeKind::Encoded(e), _) => match &e.constant {
                    Some(Constant::Bytes(b)) => format!("{docs}    #[inline]\n    pub fn {}(&self) -> &'static [u8] {{\n        {}\n    }}\n\n", a.method, byte_lit(b)),
                    Some(Constant::Number(v)) | Some(Constant::EnumValue { value: v, .. }) => format!(
                        "{docs}    #[inline]\n    pub fn {}(&self) -> {} {{\n        {}\n    }}\n\n",
                        a.method,
                        native(e.primitive),
                        lit(e.primitive, *v)
                    ),
                    None => String::new(),
                },
                (TypeKind::Enum(e), None) => {
                    // Constant enum type without a field valueRef: the first value.
                    let en = camel(&a.ty.name);
                    match variant_names(a.ty).first() {
                        Some(v) if !e.values.is_empty() => format!("{docs}    #[inline]\n    pub fn {}(&self) -> {en} {{\n        {en}::{v}\n    }}\n\n", a.method),
                        _ => String::new(),
                    }
                }
                _ => String::new(),
            };
        }
        if a.ty.size() == 0 {
            return String::new();
        }
        let storage = self.storage_of(a.ty);
        // `r` is a `&'a Storage` (or we return None).
        let (fetch, optional_wrap) = match place {
            Place::Composite => (format!("let r = &self.{};", a.ident), false),
            Place::Encoder => (format!("let r = &self.block.{};", a.ident), false),
            Place::Decoder => {
                let mut f = String::new();
                if let Some(v) = a.since_check {
                    let _ = write!(f, "if self.acting_version < {v} {{\n            return None;\n        }}\n        ");
                }
                if a.in_base {
                    let _ = write!(
                        f,
                        "let base: &'a _ = self.base;\n        let r: &'a {storage} = &base.{};",
                        a.ident
                    );
                } else {
                    let _ = write!(
                        f,
                        "let r: &'a {storage} = {RT}::view_at::<{storage}>(self.block, {})?;",
                        a.offset
                    );
                }
                (f, a.since_check.is_some() || !a.in_base)
            }
        };
        let wrap_t = |t: String| {
            if optional_wrap {
                format!("Option<{t}>")
            } else {
                t
            }
        };
        let wrap_v = |v: String| {
            if optional_wrap {
                format!("Some({v})")
            } else {
                v
            }
        };
        let m = &a.method;
        match &a.ty.kind {
            TypeKind::Encoded(e) if e.length == 1 => {
                let n = native(e.primitive);
                let v = self.load(e.primitive, "(*r)");
                let v = if e.primitive.size() == 1 {
                    "*r".to_string()
                } else {
                    v.replace("(*r)", "r")
                };
                if a.presence == Presence::Optional {
                    let null = lit(e.primitive, e.null_value);
                    let cond = if e.primitive.is_float() && e.null_value.as_f64().is_nan() {
                        "v.is_nan()".to_string()
                    } else {
                        format!("v == {null}")
                    };
                    format!("{docs}    #[inline]\n    pub fn {m}(&self) -> Option<{n}> {{\n        {fetch}\n        let v = {v};\n        if {cond} {{\n            None\n        }} else {{\n            Some(v)\n        }}\n    }}\n\n")
                } else {
                    format!("{docs}    #[inline]\n    pub fn {m}(&self) -> {} {{\n        {fetch}\n        {}\n    }}\n\n", wrap_t(n.to_string()), wrap_v(v))
                }
            }
            TypeKind::Encoded(e) => {
                if e.primitive.size() == 1 {
                    let n = native(e.primitive);
                    let t = format!("&{lt}[{n}; {}]", e.length);
                    format!("{docs}    #[inline]\n    pub fn {m}(&self) -> {} {{\n        {fetch}\n        {}\n    }}\n\n", wrap_t(t), wrap_v("r".into()))
                } else {
                    let n = native(e.primitive);
                    let t = format!("[{n}; {}]", e.length);
                    format!("{docs}    #[inline]\n    pub fn {m}(&self) -> {} {{\n        {fetch}\n        {}\n    }}\n\n", wrap_t(t), wrap_v("core::array::from_fn(|i| r[i].get())".into()))
                }
            }
            TypeKind::Composite(_) => {
                let t = format!("&{lt}{}", camel(&a.ty.name));
                format!("{docs}    #[inline]\n    pub fn {m}(&self) -> {} {{\n        {fetch}\n        {}\n    }}\n\n", wrap_t(t), wrap_v("r".into()))
            }
            TypeKind::Enum(e) => {
                let en = camel(&a.ty.name);
                let n = native(e.encoding);
                let v = if e.encoding.size() == 1 {
                    "*r".to_string()
                } else {
                    "r.get()".to_string()
                };
                let opt_q = if optional_wrap { "?" } else { "" };
                let _ = opt_q;
                let raw_fn = format!("{docs}    #[inline]\n    pub fn {m}_raw(&self) -> {} {{\n        {fetch}\n        {}\n    }}\n\n", wrap_t(n.to_string()), wrap_v(v.clone()));
                let typed = format!(
                    "{docs}    /// `None` when the raw value names no value of [`{en}`] (or is null).\n    #[inline]\n    pub fn {m}(&self) -> Option<{en}> {{\n        {fetch}\n        {en}::from_raw({v})\n    }}\n\n"
                );
                format!("{raw_fn}{typed}")
            }
            TypeKind::Set(s) => {
                let st = camel(&a.ty.name);
                let v = if s.encoding.size() == 1 {
                    "*r".to_string()
                } else {
                    "r.get()".to_string()
                };
                format!("{docs}    #[inline]\n    pub fn {m}(&self) -> {} {{\n        {fetch}\n        {}\n    }}\n\n", wrap_t(st.clone()), wrap_v(format!("{st}::from_raw({v})")))
            }
        }
    }

    fn setter(&self, a: &Acc, place: Place) -> String {
        if a.presence == Presence::Constant || a.ty.size() == 0 {
            return String::new();
        }
        let p = match place {
            Place::Composite => format!("self.{}", a.ident),
            _ => format!("self.block.{}", a.ident),
        };
        let m = &a.method;
        let docs = format!("    /// Sets `{}`.\n", a.schema_name);
        match &a.ty.kind {
            TypeKind::Encoded(e) if e.length == 1 => {
                let n = native(e.primitive);
                if a.presence == Presence::Optional {
                    let null = lit(e.primitive, e.null_value);
                    format!("{docs}    #[inline]\n    pub fn set_{m}(&mut self, v: Option<{n}>) -> &mut Self {{\n        {};\n        self\n    }}\n\n", self.store(e.primitive, &p, &format!("v.unwrap_or({null})")))
                } else {
                    format!("{docs}    #[inline]\n    pub fn set_{m}(&mut self, v: {n}) -> &mut Self {{\n        {};\n        self\n    }}\n\n", self.store(e.primitive, &p, "v"))
                }
            }
            TypeKind::Encoded(e) => {
                let n = native(e.primitive);
                if e.primitive.size() == 1 {
                    format!("{docs}    #[inline]\n    pub fn set_{m}(&mut self, v: &[{n}; {}]) -> &mut Self {{\n        {p} = *v;\n        self\n    }}\n\n", e.length)
                } else {
                    format!("{docs}    #[inline]\n    pub fn set_{m}(&mut self, v: &[{n}; {}]) -> &mut Self {{\n        for (d, s) in {p}.iter_mut().zip(v.iter()) {{\n            d.set(*s);\n        }}\n        self\n    }}\n\n", e.length)
                }
            }
            TypeKind::Composite(_) => {
                let c = camel(&a.ty.name);
                format!("    /// The composite `{}`, to set its members.\n    #[inline]\n    pub fn {m}_mut(&mut self) -> &mut {c} {{\n        &mut {p}\n    }}\n\n", a.schema_name)
            }
            TypeKind::Enum(e) => {
                let en = camel(&a.ty.name);
                let n = native(e.encoding);
                let raw = format!("{docs}    #[inline]\n    pub fn set_{m}_raw(&mut self, v: {n}) -> &mut Self {{\n        {};\n        self\n    }}\n\n", self.store(e.encoding, &p, "v"));
                let typed = if a.presence == Presence::Optional || e.presence == Presence::Optional
                {
                    let null = lit(e.encoding, e.null_value);
                    format!("{docs}    #[inline]\n    pub fn set_{m}(&mut self, v: Option<{en}>) -> &mut Self {{\n        {};\n        self\n    }}\n\n", self.store(e.encoding, &p, &format!("v.map_or({null}, {en}::raw)")))
                } else {
                    format!("{docs}    #[inline]\n    pub fn set_{m}(&mut self, v: {en}) -> &mut Self {{\n        {};\n        self\n    }}\n\n", self.store(e.encoding, &p, "v.raw()"))
                };
                format!("{raw}{typed}")
            }
            TypeKind::Set(s) => {
                let st = camel(&a.ty.name);
                format!("{docs}    #[inline]\n    pub fn set_{m}(&mut self, v: {st}) -> &mut Self {{\n        {};\n        self\n    }}\n\n", self.store(s.encoding, &p, "v.raw()"))
            }
        }
    }

    fn enumeration(&mut self, t: &Type, e: &EnumType) {
        let name = camel(&t.name);
        let n = native(e.encoding);
        let variants = variant_names(t);
        let mut decl = String::new();
        let mut from_raw = String::new();
        let mut names = String::new();
        let mut from_name = String::new();
        let mut all = String::new();
        for (v, vn) in e.values.iter().zip(&variants) {
            let _ = writeln!(
                decl,
                "{}    {vn} = {},",
                doc(&v.description)
                    .lines()
                    .map(|l| format!("    {l}\n"))
                    .collect::<String>(),
                lit(e.encoding, Value::Int(v.value))
            );
            let _ = writeln!(
                from_raw,
                "            {} => Some(Self::{vn}),",
                lit(e.encoding, Value::Int(v.value))
            );
            let _ = writeln!(names, "            Self::{vn} => {:?},", v.name);
            let _ = writeln!(from_name, "            {:?} => Some(Self::{vn}),", v.name);
            let _ = write!(all, "Self::{vn}, ");
        }
        let repr = if e.values.is_empty() {
            String::new()
        } else {
            format!("#[repr({n})]\n")
        };
        let raw_body = if e.values.is_empty() {
            "match self {}".to_string()
        } else {
            format!("self as {n}")
        };
        let names_body = if e.values.is_empty() {
            "match self {}".to_string()
        } else {
            format!("match self {{\n{names}        }}")
        };
        let d = doc(&t.description);
        let _ = write!(
            self.out,
            "{d}/// Enum `{sname}` encoded as `{prim}`.\n#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]\n{repr}pub enum {name} {{\n{decl}}}\n\n\
impl {name} {{\n    /// Every value, in schema order.\n    pub const ALL: [Self; {count}] = [{all}];\n    /// The null value of the encoding.\n    pub const NULL_VALUE: {n} = {null};\n\n\
    /// The encoded value.\n    #[inline]\n    pub const fn raw(self) -> {n} {{\n        {raw_body}\n    }}\n\n\
    /// The value with this encoding, if any.\n    #[inline]\n    pub const fn from_raw(raw: {n}) -> Option<Self> {{\n        #[allow(unreachable_patterns)]\n        match raw {{\n{from_raw}            _ => None,\n        }}\n    }}\n\n\
    /// The schema's name for this value.\n    pub const fn name(self) -> &'static str {{\n        {names_body}\n    }}\n\n\
    /// The value with this schema name, if any.\n    pub fn from_name(name: &str) -> Option<Self> {{\n        match name {{\n{from_name}            _ => None,\n        }}\n    }}\n}}\n\n\
impl TryFrom<{n}> for {name} {{\n    type Error = {RT}::UnknownValue;\n    fn try_from(raw: {n}) -> Result<Self, {RT}::UnknownValue> {{\n        Self::from_raw(raw).ok_or({RT}::UnknownValue(raw as i128))\n    }}\n}}\n\n\
impl From<{name}> for {n} {{\n    fn from(v: {name}) -> {n} {{\n        v.raw()\n    }}\n}}\n\n\
impl core::fmt::Display for {name} {{\n    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {{\n        f.write_str(self.name())\n    }}\n}}\n\n",
            sname = t.name,
            prim = e.encoding.name(),
            count = e.values.len(),
            null = lit(e.encoding, e.null_value),
        );
    }

    fn set(&mut self, t: &Type, s: &SetType) {
        let name = camel(&t.name);
        let n = native(s.encoding);
        let idents = dedupe(
            s.choices
                .iter()
                .map(|c| {
                    let id = snake(&c.name);
                    if RESERVED.contains(&id.as_str()) || id == "empty" || id == "known_bits" {
                        format!("{id}_choice")
                    } else {
                        id
                    }
                })
                .collect(),
        );
        let consts = dedupe(s.choices.iter().map(|c| shouty(&c.name)).collect());
        let mut methods = String::new();
        let mut known: u64 = 0;
        let mut table = String::new();
        for ((c, id), k) in s.choices.iter().zip(&idents).zip(&consts) {
            known |= 1u64 << c.bit;
            let _ = write!(table, "({:?}, {}), ", c.name, c.bit);
            let _ = write!(
                methods,
                "{d}    /// Bit {bit} of the set: `{cn}`.\n    pub const {k}: Self = Self(1 << {bit});\n\n    /// True when `{cn}` is set.\n    #[inline]\n    pub const fn {id}(self) -> bool {{\n        self.0 & (1 << {bit}) != 0\n    }}\n\n    /// Sets or clears `{cn}`.\n    #[inline]\n    pub fn set_{id}(&mut self, on: bool) -> &mut Self {{\n        if on {{\n            self.0 |= 1 << {bit};\n        }} else {{\n            self.0 &= !(1 << {bit});\n        }}\n        self\n    }}\n\n    /// This set with `{cn}` set or cleared.\n    #[inline]\n    pub const fn with_{id}(self, on: bool) -> Self {{\n        if on {{\n            Self(self.0 | (1 << {bit}))\n        }} else {{\n            Self(self.0 & !(1 << {bit}))\n        }}\n    }}\n\n",
                d = doc(&c.description).lines().map(|l| format!("    {l}\n")).collect::<String>(),
                bit = c.bit,
                cn = c.name,
            );
        }
        let _ = write!(
            self.out,
            "{d}/// Set `{sname}` encoded as `{prim}`: one bit per choice.\n#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]\npub struct {name}(pub {n});\n\n\
impl {name} {{\n    /// Bits that name a choice.\n    pub const KNOWN_BITS: {n} = {known};\n    /// (choice name, bit) for every choice, in schema order.\n    pub const CHOICES: &'static [(&'static str, u32)] = &[{table}];\n\n\
    /// No choice set.\n    #[inline]\n    pub const fn empty() -> Self {{\n        Self(0)\n    }}\n\n    /// The set with these raw bits.\n    #[inline]\n    pub const fn from_raw(raw: {n}) -> Self {{\n        Self(raw)\n    }}\n\n    /// The raw bits.\n    #[inline]\n    pub const fn raw(self) -> {n} {{\n        self.0\n    }}\n\n    /// True when no bit is set.\n    #[inline]\n    pub const fn is_empty(self) -> bool {{\n        self.0 == 0\n    }}\n\n    /// Bits set that name no choice.\n    #[inline]\n    pub const fn unknown_bits(self) -> {n} {{\n        self.0 & !Self::KNOWN_BITS\n    }}\n\n    /// The union of both sets.\n    #[inline]\n    pub const fn union(self, other: Self) -> Self {{\n        Self(self.0 | other.0)\n    }}\n\n{methods}}}\n\n",
            d = doc(&t.description),
            sname = t.name,
            prim = s.encoding.name(),
            known = known,
        );
    }

    /// Accessors for the fields of a body. `owner_since` is the version of the message/group.
    fn accs<'t>(&self, body: &'t Body, owner_since: u16) -> (Vec<Acc<'t>>, usize) {
        let idents = dedupe(body.fields.iter().map(|f| snake(&f.name)).collect());
        let base_len = body
            .fields
            .iter()
            .filter(|f| f.since_version <= owner_since && f.size() > 0)
            .map(|f| f.offset + f.size())
            .max()
            .unwrap_or(0);
        let accs = body
            .fields
            .iter()
            .zip(idents)
            .map(|(f, id)| Acc {
                schema_name: &f.name,
                method: method_name(&id),
                ident: id,
                ty: &f.ty,
                presence: f.presence,
                offset: f.offset,
                enum_constant: f.enum_constant.as_deref(),
                in_base: f.offset + f.size() <= base_len,
                since_check: (f.since_version > owner_since).then_some(f.since_version),
                description: &f.description,
            })
            .collect();
        (accs, base_len)
    }

    fn body(
        &mut self,
        path: &str,
        body: &Body,
        owner_since: u16,
        msg: Option<&Message>,
        group: Option<&Group>,
    ) {
        let (accs, base_len) = self.accs(body, owner_since);
        let block = format!("{path}Block");
        let base = format!("{path}Base");
        let items: Vec<_> = accs
            .iter()
            .filter(|a| a.presence != Presence::Constant && a.ty.size() > 0)
            .map(|a| {
                (
                    a.ident.clone(),
                    self.storage_of(a.ty),
                    a.offset,
                    a.ty.size(),
                )
            })
            .collect();
        let what = match (msg, group) {
            (Some(m), _) => format!("message `{}`", m.name),
            (_, Some(g)) => format!("an entry of group `{}`", g.name),
            _ => String::new(),
        };
        self.gen_struct(
            &block,
            &format!("The fixed block of {what} (current schema version)."),
            items.clone(),
            body.block_length,
        );
        let base_items: Vec<_> = items
            .iter()
            .filter(|i| i.2 + i.3 <= base_len)
            .cloned()
            .collect();
        if base_len == body.block_length && base_items.len() == items.len() {
            let _ = writeln!(self.out, "/// The part of [`{block}`] every version of {what} has.\npub type {base} = {block};\n");
        } else {
            self.gen_struct(
                &base,
                &format!("The part of the block every version of {what} has."),
                base_items,
                base_len,
            );
        }
        let init = self.init_body(&accs);
        let _ = write!(self.out, "impl {block} {{\n    /// Sets optional fields to their null values.\n    pub fn sbe_init(&mut self) {{\n{init}    }}\n}}\n\n");

        // Parts: groups then var data.
        let parts: Vec<Part> = body
            .groups
            .iter()
            .map(Part::Group)
            .chain(body.datas.iter().map(Part::Data))
            .collect();
        let part_methods = dedupe(
            parts
                .iter()
                .map(|p| method_name(&snake(p.name())))
                .collect::<Vec<_>>(),
        );
        for g in &body.groups {
            let gp = format!("{path}{}", camel(&g.name));
            self.body(
                &gp,
                &g.body,
                g.since_version.max(owner_since),
                None,
                Some(g),
            );
            self.group_codecs(&gp, g);
        }
        self.decoder(path, body, &accs, base_len, msg, &parts, &part_methods);
        self.encoder(path, body, &accs, msg, group, &parts, &part_methods);
    }

    #[allow(clippy::too_many_arguments)]
    fn decoder(
        &mut self,
        path: &str,
        body: &Body,
        accs: &[Acc],
        base_len: usize,
        msg: Option<&Message>,
        parts: &[Part],
        part_methods: &[String],
    ) {
        let name = format!("{path}Decoder");
        let base = format!("{path}Base");
        let mut s = String::new();
        let what = match msg {
            Some(m) => format!("message `{}` (template id {})", m.name, m.id),
            None => "one group entry".to_string(),
        };
        let _ = write!(
            s,
            "/// Decoder (flyweight over `&[u8]`) for {what}.\n#[derive(Debug, Clone, Copy)]\npub struct {name}<'a> {{\n    #[allow(dead_code)]\n    buf: &'a [u8],\n    block: &'a [u8],\n    base: &'a {base},\n    parts: usize,\n    acting_version: u16,\n}}\n\nimpl<'a> {name}<'a> {{\n    /// Block length of the current schema version.\n    pub const BLOCK_LENGTH: u16 = {bl};\n    /// The shortest block any version may send.\n    pub const MIN_BLOCK_LENGTH: usize = {base_len};\n",
            bl = body.block_length,
        );
        if let Some(m) = msg {
            let _ = write!(
                s,
                "    /// Template id.\n    pub const TEMPLATE_ID: u16 = {};\n    /// Schema name.\n    pub const NAME: &'static str = {:?};\n    /// Version that introduced the message.\n    pub const SINCE_VERSION: u16 = {};\n",
                m.id, m.name, m.since_version
            );
        }
        let _ = write!(
            s,
            "\n    fn wrap_at(buf: &'a [u8], offset: usize, block_length: usize, acting_version: u16) -> Result<Self, {RT}::DecodeError> {{\n        if block_length < Self::MIN_BLOCK_LENGTH {{\n            return Err({RT}::DecodeError::BlockLengthTooShort {{ offset, block_length, minimum: Self::MIN_BLOCK_LENGTH }});\n        }}\n        let block = {RT}::slice(buf, offset, block_length)?;\n        let base = {RT}::view_prefix::<{base}>(block, offset)?;\n        Ok(Self {{ buf, block, base, parts: offset + block_length, acting_version }})\n    }}\n\n"
        );
        if msg.is_some() {
            let (t_off, _) = self.header_member("templateId");
            let (s_off, _) = self.header_member("schemaId");
            let _ = write!(
                s,
                "    /// Wraps a message without header at the start of `buf`, written with `acting_block_length`\n    /// and `acting_version` (from a header read elsewhere). Checks the block fits.\n    ///\n    /// # Errors\n    /// The block is truncated or shorter than every version's fields.\n    pub fn wrap(buf: &'a [u8], acting_block_length: usize, acting_version: u16) -> Result<Self, {RT}::DecodeError> {{\n        Self::wrap_at(buf, 0, acting_block_length, acting_version)\n    }}\n\n\
    /// Wraps a header-prefixed message at the start of `buf`, checking schema and template id.\n    ///\n    /// # Errors\n    /// Truncated header or block, another schema or template, or a too-short block length.\n    pub fn wrap_with_header(buf: &'a [u8]) -> Result<Self, {RT}::DecodeError> {{\n        let h = decode_header(buf)?;\n        if h.schema_id != SCHEMA_ID {{\n            return Err({RT}::DecodeError::WrongSchemaId {{ offset: {s_off}, expected: SCHEMA_ID, actual: h.schema_id }});\n        }}\n        if h.template_id != Self::TEMPLATE_ID {{\n            return Err({RT}::DecodeError::WrongTemplateId {{ offset: {t_off}, expected: Self::TEMPLATE_ID, actual: h.template_id }});\n        }}\n        Self::wrap_at(buf, HEADER_LENGTH, usize::from(h.block_length), h.version)\n    }}\n\n\
    /// Bytes of the whole message from the start of the wrapped buffer (header included when\n    /// wrapped with one), walking its groups and var data.\n    ///\n    /// # Errors\n    /// A group or var data runs past the end of the buffer.\n    pub fn encoded_length(&self) -> Result<usize, {RT}::DecodeError> {{\n        self.encoded_end()\n    }}\n\n"
            );
        }
        let _ = write!(
            s,
            "    /// The version the message was written with.\n    #[inline]\n    pub fn acting_version(&self) -> u16 {{\n        self.acting_version\n    }}\n\n    /// The block length the message was written with.\n    #[inline]\n    pub fn acting_block_length(&self) -> usize {{\n        self.block.len()\n    }}\n\n"
        );
        // encoded_end
        let mut walk = String::from("        let pos = self.parts;\n");
        for p in parts {
            let _ = writeln!(walk, "        let pos = {};", self.skip_expr(path, p));
        }
        let _ = write!(s, "    #[allow(dead_code)]\n    fn encoded_end(&self) -> Result<usize, {RT}::DecodeError> {{\n{walk}        Ok(pos)\n    }}\n\n");
        let _ = base_len;
        for a in accs {
            s.push_str(&self.getter(a, Place::Decoder));
        }
        for (k, p) in parts.iter().enumerate() {
            let mut pre = String::from("        let pos = self.parts;\n");
            for q in &parts[..k] {
                let _ = writeln!(pre, "        let pos = {};", self.skip_expr(path, q));
            }
            let m = &part_methods[k];
            match p {
                Part::Group(g) => {
                    let gd = format!("{path}{}GroupDecoder", camel(&g.name));
                    let _ = write!(
                        s,
                        "{}    /// Group `{}`: an iterator over its entries.\n    ///\n    /// # Errors\n    /// A preceding part or this group's dimension runs past the buffer.\n    pub fn {m}(&self) -> Result<{gd}<'a>, {RT}::DecodeError> {{\n{pre}        {gd}::wrap_at(self.buf, pos, self.acting_version)\n    }}\n\n",
                        doc(&g.description).lines().map(|l| format!("    {l}\n")).collect::<String>(),
                        g.name
                    );
                }
                Part::Data(d) => {
                    let (lo, lw) = data_len(d);
                    let hs = d.header_size();
                    let be = self.be;
                    let since = if d.since_version > 0 {
                        format!("        if self.acting_version < {} {{\n            return Ok(&[]);\n        }}\n", d.since_version)
                    } else {
                        String::new()
                    };
                    let _ = write!(
                        s,
                        "{}    /// Var data `{}`{}.\n    ///\n    /// # Errors\n    /// A preceding part or this data runs past the buffer.\n    pub fn {m}(&self) -> Result<&'a [u8], {RT}::DecodeError> {{\n{pre}{since}        Ok({RT}::read_var_data(self.buf, pos, {lo}, {lw}, {hs}, {be})?.0)\n    }}\n\n",
                        doc(&d.description).lines().map(|l| format!("    {l}\n")).collect::<String>(),
                        d.name,
                        d.character_encoding().map_or(String::new(), |c| format!(" ({c} text)"))
                    );
                }
            }
        }
        s.push_str("}\n\n");
        self.w(&s);
    }

    fn skip_expr(&self, path: &str, p: &Part) -> String {
        match p {
            Part::Group(g) => format!(
                "{path}{}GroupDecoder::skip(self.buf, pos, self.acting_version)?",
                camel(&g.name)
            ),
            Part::Data(d) => {
                let (lo, lw) = data_len(d);
                let read = format!(
                    "{RT}::read_var_data(self.buf, pos, {lo}, {lw}, {}, {})?.1",
                    d.header_size(),
                    self.be
                );
                if d.since_version > 0 {
                    format!(
                        "if self.acting_version < {} {{ pos }} else {{ {read} }}",
                        d.since_version
                    )
                } else {
                    read
                }
            }
        }
    }

    fn group_codecs(&mut self, gp: &str, g: &Group) {
        let (blp, blo, _) = g.block_length_encoding();
        let (np, no, _) = g.num_in_group_encoding();
        let dim = g.dimension.size();
        let be = self.be;
        let fixed = g.body.is_fixed();
        let dec = format!("{gp}Decoder");
        let gd = format!("{gp}GroupDecoder");
        let since = if g.since_version > 0 {
            format!("        if acting_version < {} {{\n            return Ok(Self {{ buf, start: pos, pos, block_length: 0, remaining: 0, count: 0, acting_version }});\n        }}\n", g.since_version)
        } else {
            String::new()
        };
        let check_all = if fixed {
            format!("        let total = block_length.checked_mul(count).ok_or({RT}::DecodeError::Truncated {{ offset: start, needed: usize::MAX, available: buf.len().saturating_sub(start) }})?;\n        {RT}::slice(buf, start, total)?;\n")
        } else {
            String::new()
        };
        let skip_body = if fixed {
            "        Ok(g.pos + g.remaining * g.block_length)\n".to_string()
        } else {
            "        while g.remaining > 0 {\n            if let Some(Err(e)) = g.next() {\n                return Err(e);\n            }\n        }\n        Ok(g.pos)\n".to_string()
        };
        let (item, next_body) = if fixed {
            (
                format!("{dec}<'a>"),
                format!("        if self.remaining == 0 {{\n            return None;\n        }}\n        let e = {dec}::wrap_at(self.buf, self.pos, self.block_length, self.acting_version).ok()?;\n        self.pos += self.block_length;\n        self.remaining -= 1;\n        Some(e)\n"),
            )
        } else {
            (
                format!("Result<{dec}<'a>, {RT}::DecodeError>"),
                format!("        if self.remaining == 0 {{\n            return None;\n        }}\n        let r = {dec}::wrap_at(self.buf, self.pos, self.block_length, self.acting_version).and_then(|e| e.encoded_end().map(|end| (e, end)));\n        match r {{\n            Ok((e, end)) => {{\n                self.pos = end;\n                self.remaining -= 1;\n                Some(Ok(e))\n            }}\n            Err(err) => {{\n                self.remaining = 0;\n                Some(Err(err))\n            }}\n        }}\n"),
            )
        };
        let get = if fixed {
            format!("    /// Entry `index` (0-based) of the group, if it exists.\n    #[inline]\n    pub fn get(&self, index: usize) -> Option<{dec}<'a>> {{\n        if index >= self.count {{\n            return None;\n        }}\n        {dec}::wrap_at(self.buf, self.start + index * self.block_length, self.block_length, self.acting_version).ok()\n    }}\n\n")
        } else {
            String::new()
        };
        let exact = if fixed {
            format!("impl ExactSizeIterator for {gd}<'_> {{}}\n\n")
        } else {
            String::new()
        };
        let _ = write!(
            self.out,
            "/// Iterator over the entries of group `{gname}`{fixed_doc}.\n#[derive(Debug, Clone, Copy)]\npub struct {gd}<'a> {{\n    buf: &'a [u8],\n    start: usize,\n    pos: usize,\n    block_length: usize,\n    remaining: usize,\n    count: usize,\n    acting_version: u16,\n}}\n\n\
impl<'a> {gd}<'a> {{\n    /// Length in bytes of the group's dimension header.\n    pub const DIMENSION_LENGTH: usize = {dim};\n\n\
    fn wrap_at(buf: &'a [u8], pos: usize, acting_version: u16) -> Result<Self, {RT}::DecodeError> {{\n{since}        {RT}::slice(buf, pos, {dim})?;\n        let block_length = {RT}::read_uint(buf, pos + {blo}, {blw}, {be})? as usize;\n        let count = {RT}::read_uint(buf, pos + {no}, {nw}, {be})? as usize;\n        if block_length < {dec}::MIN_BLOCK_LENGTH {{\n            return Err({RT}::DecodeError::BlockLengthTooShort {{ offset: pos + {blo}, block_length, minimum: {dec}::MIN_BLOCK_LENGTH }});\n        }}\n        let start = pos + {dim};\n{check_all}        Ok(Self {{ buf, start, pos: start, block_length, remaining: count, count, acting_version }})\n    }}\n\n\
    #[allow(dead_code)]\n    fn skip(buf: &'a [u8], pos: usize, acting_version: u16) -> Result<usize, {RT}::DecodeError> {{\n        #[allow(unused_mut)]\n        let mut g = Self::wrap_at(buf, pos, acting_version)?;\n{skip_body}    }}\n\n\
    /// Number of entries the group holds.\n    #[inline]\n    pub fn count(&self) -> usize {{\n        self.count\n    }}\n\n    /// True when the group has no entries.\n    #[inline]\n    pub fn is_empty(&self) -> bool {{\n        self.count == 0\n    }}\n\n{get}}}\n\n\
impl<'a> Iterator for {gd}<'a> {{\n    type Item = {item};\n\n    #[inline]\n    fn next(&mut self) -> Option<Self::Item> {{\n{next_body}    }}\n\n    fn size_hint(&self) -> (usize, Option<usize>) {{\n        (self.remaining, Some(self.remaining))\n    }}\n}}\n\n{exact}",
            gname = g.name,
            fixed_doc = if fixed { " (entries are fixed blocks, checked when the group is reached)" } else { " (each entry is checked as it is reached)" },
            blw = blp.size(),
            nw = np.size(),
        );
        // Encoder.
        let enc = format!("{gp}Encoder");
        let ge = format!("{gp}GroupEncoder");
        let has_parts = !fixed;
        let part_init = if has_parts { ", part: 0" } else { "" };
        let _ = write!(
            self.out,
            "/// Writes the entries of group `{gname}`; the dimension's count follows every `next_entry`.\n#[derive(Debug)]\npub struct {ge}<'e, 'a> {{\n    tail: &'e mut {RT}::WriteBuf<'a>,\n    dim: &'a mut [u8],\n    count: u64,\n}}\n\n\
impl<'e, 'a> {ge}<'e, 'a> {{\n    /// The most entries the dimension can count.\n    pub const MAX_COUNT: u64 = {max};\n\n\
    fn wrap(tail: &'e mut {RT}::WriteBuf<'a>) -> Result<Self, {RT}::EncodeError> {{\n        let dim = tail.take({dim})?;\n        {RT}::write_uint(dim, {blo}, {blw}, {be}, {bl});\n        Ok(Self {{ tail, dim, count: 0 }})\n    }}\n\n\
    /// Appends an entry (its block zeroed, optional fields null) and returns its encoder.\n    ///\n    /// # Errors\n    /// The buffer is full, or the group already has [`Self::MAX_COUNT`] entries.\n    pub fn next_entry(&mut self) -> Result<{enc}<'_, 'a>, {RT}::EncodeError> {{\n        if self.count >= Self::MAX_COUNT {{\n            return Err({RT}::EncodeError::TooManyEntries {{ group: {gname:?}, max: Self::MAX_COUNT }});\n        }}\n        let bytes = self.tail.take({bl})?;\n        let block = {RT}::view_mut::<{gp}Block>(bytes)?;\n        block.sbe_init();\n        self.count += 1;\n        {RT}::write_uint(self.dim, {no}, {nw}, {be}, self.count);\n        Ok({enc} {{ block, tail: &mut *self.tail{part_init} }})\n    }}\n\n\
    /// Entries written so far.\n    #[inline]\n    pub fn count(&self) -> u64 {{\n        self.count\n    }}\n}}\n\n",
            gname = g.name,
            max = g.max_count(),
            blw = blp.size(),
            nw = np.size(),
            bl = g.body.block_length,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn encoder(
        &mut self,
        path: &str,
        body: &Body,
        accs: &[Acc],
        msg: Option<&Message>,
        group: Option<&Group>,
        parts: &[Part],
        part_methods: &[String],
    ) {
        let name = format!("{path}Encoder");
        let block = format!("{path}Block");
        let has_parts = !parts.is_empty();
        let part_field = if has_parts { "    part: usize,\n" } else { "" };
        let mut s = String::new();
        let (generics, tail_ty, tail) = if msg.is_some() {
            (
                "<'a>".to_string(),
                format!("{RT}::WriteBuf<'a>"),
                "&mut self.tail",
            )
        } else {
            (
                "<'e, 'a>".to_string(),
                format!("&'e mut {RT}::WriteBuf<'a>"),
                "&mut *self.tail",
            )
        };
        let what = match (msg, group) {
            (Some(m), _) => format!("message `{}` (template id {})", m.name, m.id),
            (_, Some(g)) => format!("one entry of group `{}`", g.name),
            _ => String::new(),
        };
        let _ = write!(
            s,
            "/// Encoder (flyweight over `&mut [u8]`) for {what}. Groups and var data must be written in\n/// schema order; parts skipped are written empty.\n#[derive(Debug)]\npub struct {name}{generics} {{\n    block: &'a mut {block},\n    #[allow(dead_code)]\n    tail: {tail_ty},\n{part_field}}}\n\nimpl{generics} {name}{generics} {{\n    /// Block length of the current schema version.\n    pub const BLOCK_LENGTH: u16 = {bl};\n",
            bl = body.block_length
        );
        if let Some(m) = msg {
            let part_init = if has_parts { ", part: 0" } else { "" };
            let _ = write!(
                s,
                "    /// Template id.\n    pub const TEMPLATE_ID: u16 = {id};\n    /// Schema name.\n    pub const NAME: &'static str = {mname:?};\n\n\
    /// Starts a message without header at the start of `buf`: zeroes the block and sets\n    /// optional fields to null.\n    ///\n    /// # Errors\n    /// `buf` is shorter than the block.\n    pub fn wrap(buf: &'a mut [u8]) -> Result<Self, {RT}::EncodeError> {{\n        Self::start({RT}::WriteBuf::new(buf))\n    }}\n\n\
    /// Starts a message at the start of `buf` with the standard header (this schema's id and\n    /// version, this message's template id and block length).\n    ///\n    /// # Errors\n    /// `buf` is shorter than header and block.\n    pub fn wrap_with_header(buf: &'a mut [u8]) -> Result<Self, {RT}::EncodeError> {{\n        let mut tail = {RT}::WriteBuf::new(buf);\n        let h = tail.take(HEADER_LENGTH)?;\n        encode_header(h, {RT}::Header {{ block_length: Self::BLOCK_LENGTH, template_id: Self::TEMPLATE_ID, schema_id: SCHEMA_ID, version: SCHEMA_VERSION }});\n        Self::start(tail)\n    }}\n\n\
    fn start(mut tail: {RT}::WriteBuf<'a>) -> Result<Self, {RT}::EncodeError> {{\n        let bytes = tail.take({bl})?;\n        let block = {RT}::view_mut::<{block}>(bytes)?;\n        block.sbe_init();\n        Ok(Self {{ block, tail{part_init} }})\n    }}\n\n\
    /// Completes the message (writing any groups and var data not written as empty) and\n    /// returns its length in bytes, header included when wrapped with one.\n    ///\n    /// # Errors\n    /// The buffer is too short for the rest, or an earlier write failed.\n    pub fn finish({mut_self}self) -> Result<usize, {RT}::EncodeError> {{\n{adv}        self.tail.check()?;\n        Ok(self.tail.written())\n    }}\n\n",
                id = m.id,
                mname = m.name,
                bl = body.block_length,
                mut_self = if has_parts { "mut " } else { "" },
                adv = if has_parts { format!("        self.advance({})?;\n", parts.len()) } else { String::new() },
            );
        }
        for a in accs {
            s.push_str(&self.setter(a, Place::Encoder));
        }
        if has_parts {
            let mut empties = String::new();
            for (k, p) in parts.iter().enumerate() {
                let e = match p {
                    Part::Group(g) => format!(
                        "{path}{}GroupEncoder::wrap({tail}).map(|_| ())",
                        camel(&g.name)
                    ),
                    Part::Data(d) => {
                        let (lo, lw) = data_len(d);
                        format!(
                            "self.tail.put_var_data(&[], {lo}, {lw}, {}, 0, {}, {:?})",
                            d.header_size(),
                            self.be,
                            d.name
                        )
                    }
                };
                let _ = writeln!(empties, "                {k} => {e}?,");
            }
            let names: Vec<String> = parts.iter().map(|p| format!("{:?}", p.name())).collect();
            let _ = write!(
                s,
                "    fn advance(&mut self, k: usize) -> Result<(), {RT}::EncodeError> {{\n        const PARTS: [&str; {n}] = [{names}];\n        if self.part > k {{\n            return Err({RT}::EncodeError::OutOfOrder {{ part: PARTS.get(k).copied().unwrap_or(\"\") }});\n        }}\n        while self.part < k {{\n            match self.part {{\n{empties}                _ => {{}}\n            }}\n            self.part += 1;\n        }}\n        Ok(())\n    }}\n\n",
                n = parts.len(),
                names = names.join(", ")
            );
        }
        for (k, p) in parts.iter().enumerate() {
            let m = &part_methods[k];
            match p {
                Part::Group(g) => {
                    let ge = format!("{path}{}GroupEncoder", camel(&g.name));
                    let _ = write!(
                        s,
                        "    /// Starts group `{}` (after writing skipped parts empty); add entries with `next_entry`.\n    ///\n    /// # Errors\n    /// Written out of order, or the buffer is too short for the dimension.\n    pub fn {m}(&mut self) -> Result<{ge}<'_, 'a>, {RT}::EncodeError> {{\n        self.advance({k})?;\n        self.part = {k} + 1;\n        {ge}::wrap({tail})\n    }}\n\n",
                        g.name
                    );
                }
                Part::Data(d) => {
                    let (lo, lw) = data_len(d);
                    let max = data_max(d);
                    let _ = write!(
                        s,
                        "    /// Writes var data `{}` (after writing skipped parts empty).\n    ///\n    /// # Errors\n    /// Written out of order, longer than {max} bytes, or the buffer is too short.\n    pub fn set_{m}(&mut self, v: &[u8]) -> Result<&mut Self, {RT}::EncodeError> {{\n        self.advance({k})?;\n        self.tail.put_var_data(v, {lo}, {lw}, {hs}, {max}, {be}, {dn:?})?;\n        self.part = {k} + 1;\n        Ok(self)\n    }}\n\n",
                        d.name,
                        hs = d.header_size(),
                        be = self.be,
                        dn = d.name,
                    );
                }
            }
        }
        s.push_str("}\n\n");
        if msg.is_none() && has_parts {
            let _ = write!(
                s,
                "impl Drop for {name}<'_, '_> {{\n    /// Writes the entry's remaining groups and var data empty, so the bytes stay well formed;\n    /// a failure is kept and reported by the message encoder's `finish`.\n    fn drop(&mut self) {{\n        if let Err(e) = self.advance({n}) {{\n            self.tail.fail(e);\n        }}\n    }}\n}}\n\n",
                n = parts.len()
            );
        }
        self.w(&s);
    }

    fn dispatch(&mut self) {
        let s = self.s;
        let (t_off, _) = self.header_member("templateId");
        let (s_off, _) = self.header_member("schemaId");
        let mut variants = String::new();
        let mut arms = String::new();
        let names = dedupe(s.messages.iter().map(|m| camel(&m.name)).collect());
        for (m, v) in s.messages.iter().zip(&names) {
            let d = format!("{}Decoder", camel(&m.name));
            let _ = writeln!(variants, "    /// Message `{}`.\n    {v}({d}<'a>),", m.name);
            let _ = writeln!(arms, "        {} => Ok(Decoded::{v}({d}::wrap_at(buf, HEADER_LENGTH, usize::from(h.block_length), h.version)?)),", m.id);
        }
        let lt_use = if s.messages.is_empty() {
            "    #[doc(hidden)]\n    _Unused(core::marker::PhantomData<&'a ()>),\n"
        } else {
            ""
        };
        let _ = write!(
            self.out,
            "/// Any message of the schema, decoded by template id.\n#[derive(Debug, Clone, Copy)]\npub enum Decoded<'a> {{\n{variants}{lt_use}}}\n\n\
/// Reads the header at the start of `buf` and wraps the message it names.\n///\n/// # Errors\n/// Truncated input, another schema id, an unknown template id or a too-short block length.\npub fn decode(buf: &[u8]) -> Result<Decoded<'_>, {RT}::DecodeError> {{\n    let h = decode_header(buf)?;\n    if h.schema_id != SCHEMA_ID {{\n        return Err({RT}::DecodeError::WrongSchemaId {{ offset: {s_off}, expected: SCHEMA_ID, actual: h.schema_id }});\n    }}\n    match h.template_id {{\n{arms}        t => Err({RT}::DecodeError::UnknownTemplateId {{ offset: {t_off}, template_id: t }}),\n    }}\n}}\n"
        );
    }
}

/// A group or a var data of a body, in SBE order.
enum Part<'b> {
    Group(&'b Group),
    Data(&'b Data),
}

impl Part<'_> {
    fn name(&self) -> &str {
        match self {
            Part::Group(g) => &g.name,
            Part::Data(d) => &d.name,
        }
    }
}

fn data_len(d: &Data) -> (usize, usize) {
    let (p, off, _) = d.length_encoding();
    (off, p.size())
}

fn data_max(d: &Data) -> u64 {
    let (p, _, max) = d.length_encoding();
    let hi = p.bounds().1.min(u32::MAX as i128);
    max.map_or(hi, |m| m.min(hi)).max(0) as u64
}

fn method_name(ident: &str) -> String {
    if RESERVED.contains(&ident) {
        format!("{ident}_field")
    } else {
        ident.to_string()
    }
}

fn enum_values(t: &Type) -> Vec<ValidValue> {
    match &t.kind {
        TypeKind::Enum(e) => e.values.clone(),
        _ => Vec::new(),
    }
}

fn variant_names(t: &Type) -> Vec<String> {
    dedupe(enum_values(t).iter().map(|v| camel(&v.name)).collect())
}
