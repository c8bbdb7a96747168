//! Schema-driven decoding of SBE messages to JSON and encoding of JSON to SBE, with no generated
//! code: the IR is walked at run time. Powers `codec-gen decode` / `codec-gen encode` and tools
//! such as `tally log dump`.
//!
//! JSON shape, one object per message: `{"message": NAME, "templateId": N, "version": V, ...}`
//! then every field by its schema name. Enums are their `validValue` names (an unknown value is
//! its number), sets are arrays of choice names (unknown bits as numbers), char arrays and var
//! data with a `characterEncoding` are strings (`{"hex": ...}` when not valid UTF-8), other var
//! data is lowercase hex, char arrays read one char per byte (ISO-8859-1), composites are
//! nested objects, groups are arrays of objects, optional fields holding their null value (and
//! fields newer than the message's version) are `null`, constants show their value.
//!
//! Invariants: decoding checks every length against the input and reports the byte offset of
//! the first problem; it never panics. [`ENTRIES_MAX`] bounds the work one message can cause.

use crate::ir::*;
use serde_json::{Map, Number, Value as Json};
use std::fmt;

/// Most group entries (all groups, all nesting levels) decoded for one message: bounds the
/// memory and time a hostile message with empty entries and huge counts can cost.
pub const ENTRIES_MAX: usize = 1 << 17;

/// A decoding failure at a byte offset of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeFailure {
    /// Byte offset from the start of the input.
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for DecodeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed input at byte offset {}: {}",
            self.offset, self.message
        )
    }
}

impl std::error::Error for DecodeFailure {}

/// A JSON value that does not fit the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeFailure(pub String);

impl fmt::Display for EncodeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EncodeFailure {}

fn fail<T>(offset: usize, message: impl Into<String>) -> Result<T, DecodeFailure> {
    Err(DecodeFailure {
        offset,
        message: message.into(),
    })
}

struct Reader<'b> {
    buf: &'b [u8],
    be: bool,
    entries: usize,
}

impl<'b> Reader<'b> {
    fn bytes(&self, at: usize, len: usize, what: &str) -> Result<&'b [u8], DecodeFailure> {
        match at.checked_add(len).and_then(|end| self.buf.get(at..end)) {
            Some(b) => Ok(b),
            None => fail(
                at,
                format!(
                    "{what} needs {len} bytes, only {} remain",
                    self.buf.len().saturating_sub(at)
                ),
            ),
        }
    }

    fn uint(&self, at: usize, width: usize, what: &str) -> Result<u64, DecodeFailure> {
        let b = self.bytes(at, width, what)?;
        let mut v = 0u64;
        let mut push = |x: u8| v = (v << 8) | u64::from(x);
        if self.be {
            b.iter().for_each(|&x| push(x));
        } else {
            b.iter().rev().for_each(|&x| push(x));
        }
        Ok(v)
    }

    /// Reads a primitive as an integer (sign-extended) or float.
    fn prim(&self, at: usize, p: Primitive, what: &str) -> Result<Value, DecodeFailure> {
        let raw = self.uint(at, p.size(), what)?;
        Ok(match p {
            Primitive::Float => Value::Float(f64::from(f32::from_bits(raw as u32))),
            Primitive::Double => Value::Float(f64::from_bits(raw)),
            Primitive::Int8 => Value::Int(i128::from(raw as u8 as i8)),
            Primitive::Int16 => Value::Int(i128::from(raw as u16 as i16)),
            Primitive::Int32 => Value::Int(i128::from(raw as u32 as i32)),
            Primitive::Int64 => Value::Int(i128::from(raw as i64)),
            _ => Value::Int(i128::from(raw)),
        })
    }

    fn message(&mut self, schema: &Schema, at: usize) -> Result<(Json, usize), DecodeFailure> {
        let hs = schema.header_size();
        self.bytes(at, hs, "message header")?;
        let member = |name: &str| {
            composite_int_member(&schema.header, name).unwrap_or((Primitive::Uint16, 0, None))
        };
        let get = |r: &Self, name: &str| {
            let (p, off, _) = member(name);
            r.uint(at + off, p.size(), name)
        };
        let block_length = get(self, "blockLength")? as usize;
        let template_id = get(self, "templateId")?;
        let schema_id = get(self, "schemaId")?;
        let version = get(self, "version")?;
        if schema_id != u64::from(schema.id) {
            return fail(
                at + member("schemaId").1,
                format!("schema id {schema_id}, expected {}", schema.id),
            );
        }
        let Some(m) = schema
            .messages
            .iter()
            .find(|m| u64::from(m.id) == template_id)
        else {
            return fail(
                at + member("templateId").1,
                format!("unknown template id {template_id}"),
            );
        };
        let version = u16::try_from(version).unwrap_or(u16::MAX);
        let mut obj = Map::new();
        obj.insert("message".into(), Json::String(m.name.clone()));
        obj.insert("templateId".into(), Json::from(template_id));
        obj.insert("version".into(), Json::from(version));
        self.entries = 0;
        let end = self.body(&m.body, at + hs, block_length, version, &mut obj)?;
        Ok((Json::Object(obj), end))
    }

    fn body(
        &mut self,
        body: &Body,
        start: usize,
        block_length: usize,
        version: u16,
        obj: &mut Map<String, Json>,
    ) -> Result<usize, DecodeFailure> {
        let min = body
            .fields
            .iter()
            .filter(|f| f.since_version == 0 && f.size() > 0)
            .map(|f| f.offset + f.size())
            .max()
            .unwrap_or(0);
        if block_length < min {
            return fail(start, format!("block length {block_length} is shorter than the fields every version has ({min})"));
        }
        self.bytes(start, block_length, "block")?;
        for f in &body.fields {
            let v = if f.since_version > version {
                Json::Null
            } else if f.presence == Presence::Constant {
                constant_json(f)
            } else if f.offset + f.size() > block_length {
                Json::Null
            } else {
                self.ty(&f.ty, f.presence, start + f.offset)?
            };
            obj.insert(f.name.clone(), v);
        }
        let mut pos = start + block_length;
        for g in &body.groups {
            if g.since_version > version {
                obj.insert(g.name.clone(), Json::Array(Vec::new()));
                continue;
            }
            let (blp, blo, _) = g.block_length_encoding();
            let (np, no, _) = g.num_in_group_encoding();
            self.bytes(pos, g.dimension.size(), "group dimension")?;
            let bl = self.uint(pos + blo, blp.size(), "blockLength")? as usize;
            let n = self.uint(pos + no, np.size(), "numInGroup")? as usize;
            pos += g.dimension.size();
            let mut entries = Vec::new();
            for _ in 0..n {
                self.entries += 1;
                if self.entries > ENTRIES_MAX {
                    return fail(
                        pos,
                        format!("more than {ENTRIES_MAX} group entries in one message"),
                    );
                }
                let mut e = Map::new();
                pos = self.body(&g.body, pos, bl, version, &mut e)?;
                entries.push(Json::Object(e));
            }
            obj.insert(g.name.clone(), Json::Array(entries));
        }
        for d in &body.datas {
            if d.since_version > version {
                obj.insert(d.name.clone(), Json::Null);
                continue;
            }
            let (lp, lo, _) = d.length_encoding();
            let len = self.uint(pos + lo, lp.size(), "var data length")?;
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            let at = pos + d.header_size();
            let bytes = self.bytes(at, len, "var data")?;
            let v = match (d.character_encoding(), std::str::from_utf8(bytes)) {
                (Some(_), Ok(s)) => Json::String(s.to_string()),
                (Some(_), Err(_)) => serde_json::json!({ "hex": hex(bytes) }),
                (None, _) => Json::String(hex(bytes)),
            };
            obj.insert(d.name.clone(), v);
            pos = at + len;
        }
        Ok(pos)
    }

    fn ty(&self, t: &Type, presence: Presence, at: usize) -> Result<Json, DecodeFailure> {
        Ok(match &t.kind {
            TypeKind::Encoded(e) => {
                if e.presence == Presence::Constant {
                    return Ok(encoded_constant_json(e));
                }
                if e.length == 1 {
                    let v = self.prim(at, e.primitive, &t.name)?;
                    let optional =
                        presence == Presence::Optional || e.presence == Presence::Optional;
                    if optional && is_null(v, e.null_value) {
                        Json::Null
                    } else if e.primitive == Primitive::Char {
                        let b = v.as_int().unwrap_or(0) as u8;
                        Json::String(chars(&[b]))
                    } else {
                        num(v)
                    }
                } else if e.length == 0 {
                    Json::Null
                } else if e.primitive == Primitive::Char {
                    Json::String(chars(self.bytes(at, e.length, &t.name)?))
                } else {
                    let mut a = Vec::with_capacity(e.length);
                    for i in 0..e.length {
                        a.push(num(self.prim(
                            at + i * e.primitive.size(),
                            e.primitive,
                            &t.name,
                        )?));
                    }
                    Json::Array(a)
                }
            }
            TypeKind::Composite(c) => {
                let mut o = Map::new();
                for m in &c.members {
                    if m.ty.size() == 0 && !is_constant(&m.ty) {
                        continue;
                    }
                    let p = match &m.ty.kind {
                        TypeKind::Encoded(e) => e.presence,
                        TypeKind::Enum(e) => e.presence,
                        _ => Presence::Required,
                    };
                    o.insert(m.name.clone(), self.ty(&m.ty, p, at + m.offset)?);
                }
                Json::Object(o)
            }
            TypeKind::Enum(e) => {
                if e.presence == Presence::Constant || presence == Presence::Constant {
                    return Ok(e
                        .values
                        .first()
                        .map_or(Json::Null, |v| Json::String(v.name.clone())));
                }
                let v = self.prim(at, e.encoding, &t.name)?;
                let raw = v.as_int().unwrap_or(0);
                match e.values.iter().find(|x| x.value == raw) {
                    Some(x) => Json::String(x.name.clone()),
                    None if raw == e.null_value.as_int().unwrap_or(i128::MIN) => Json::Null,
                    None => num(v),
                }
            }
            TypeKind::Set(s) => {
                let raw = self.uint(at, s.encoding.size(), &t.name)?;
                let mut names = Vec::new();
                for bit in 0..(s.encoding.size() * 8) as u32 {
                    if raw & (1u64 << bit) == 0 {
                        continue;
                    }
                    match s.choices.iter().find(|c| c.bit == bit) {
                        Some(c) => names.push(Json::String(c.name.clone())),
                        None => names.push(Json::from(bit)),
                    }
                }
                Json::Array(names)
            }
        })
    }
}

fn is_constant(t: &Type) -> bool {
    matches!(&t.kind, TypeKind::Encoded(e) if e.presence == Presence::Constant)
        || matches!(&t.kind, TypeKind::Enum(e) if e.presence == Presence::Constant)
}

fn is_null(v: Value, null: Value) -> bool {
    match (v, null) {
        (Value::Float(a), Value::Float(b)) if b.is_nan() => a.is_nan(),
        (a, b) => a == b,
    }
}

fn num(v: Value) -> Json {
    match v {
        Value::Int(i) => {
            if let Ok(u) = u64::try_from(i) {
                Json::from(u)
            } else {
                Json::from(i as i64)
            }
        }
        Value::Float(f) => Number::from_f64(f).map_or(Json::Null, Json::Number),
    }
}

/// Char array bytes as a string: trailing NULs dropped, one char per byte (ISO-8859-1, so that
/// every byte string round-trips; ASCII reads as itself).
fn chars(b: &[u8]) -> String {
    let end = b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
    b.iter().take(end).map(|&x| x as char).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn encoded_constant_json(e: &Encoded) -> Json {
    match &e.constant {
        Some(Constant::Bytes(b)) => Json::String(chars(b)),
        Some(Constant::Number(v)) | Some(Constant::EnumValue { value: v, .. }) => {
            if e.primitive == Primitive::Char {
                Json::String(chars(&[v.as_int().unwrap_or(0) as u8]))
            } else {
                num(*v)
            }
        }
        None => Json::Null,
    }
}

fn constant_json(f: &Field) -> Json {
    match &f.ty.kind {
        TypeKind::Encoded(e) => encoded_constant_json(e),
        TypeKind::Enum(e) => match &f.enum_constant {
            Some(n) => Json::String(n.clone()),
            None => e
                .values
                .first()
                .map_or(Json::Null, |v| Json::String(v.name.clone())),
        },
        _ => Json::Null,
    }
}

/// Decodes one header-prefixed message at `offset` of `buf`; returns its JSON and the offset
/// just after it.
///
/// # Errors
/// The byte offset and nature of the first problem.
pub fn decode_message(
    schema: &Schema,
    buf: &[u8],
    offset: usize,
) -> Result<(Json, usize), DecodeFailure> {
    let mut r = Reader {
        buf,
        be: schema.byte_order == ByteOrder::BigEndian,
        entries: 0,
    };
    r.message(schema, offset)
}

/// Decodes consecutive header-prefixed messages filling `buf`. Returns the messages decoded
/// and, if decoding stopped early, why.
pub fn decode_all(schema: &Schema, buf: &[u8]) -> (Vec<Json>, Option<DecodeFailure>) {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        match decode_message(schema, buf, pos) {
            Ok((v, end)) => {
                out.push(v);
                pos = end;
            }
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

struct Writer {
    out: Vec<u8>,
    be: bool,
}

fn efail<T>(msg: String) -> Result<T, EncodeFailure> {
    Err(EncodeFailure(msg))
}

impl Writer {
    fn uint_at(&mut self, at: usize, width: usize, v: u64) {
        for i in 0..width {
            let shift = if self.be { (width - 1 - i) * 8 } else { i * 8 };
            if let Some(b) = self.out.get_mut(at + i) {
                *b = (v >> shift) as u8;
            }
        }
    }

    fn prim_at(&mut self, at: usize, p: Primitive, v: Value) {
        let raw = match (p, v) {
            (Primitive::Float, v) => u64::from((v.as_f64() as f32).to_bits()),
            (Primitive::Double, v) => v.as_f64().to_bits(),
            (_, Value::Int(i)) => i as u64,
            (_, Value::Float(f)) => f as i64 as u64,
        };
        self.uint_at(at, p.size(), raw);
    }

    fn grow(&mut self, len: usize) -> usize {
        let at = self.out.len();
        self.out.resize(at + len, 0);
        at
    }

    fn body(&mut self, body: &Body, obj: &Json, what: &str) -> Result<(), EncodeFailure> {
        let empty = Map::new();
        let map = match obj {
            Json::Object(m) => m,
            Json::Null => &empty,
            _ => return efail(format!("{what}: expected an object")),
        };
        for k in map.keys() {
            let known = body.fields.iter().any(|f| &f.name == k)
                || body.groups.iter().any(|g| &g.name == k)
                || body.datas.iter().any(|d| &d.name == k);
            let header_key =
                what == "message" && matches!(k.as_str(), "message" | "templateId" | "version");
            if !known && !header_key {
                return efail(format!("{what}: unknown field \"{k}\""));
            }
        }
        let start = self.grow(body.block_length);
        for f in &body.fields {
            if f.presence == Presence::Constant || f.size() == 0 {
                continue;
            }
            let v = map.get(&f.name).unwrap_or(&Json::Null);
            self.ty(&f.ty, f.presence, start + f.offset, v, &f.name)?;
        }
        for g in &body.groups {
            let entries: &[Json] = match map.get(&g.name) {
                None | Some(Json::Null) => &[],
                Some(Json::Array(a)) => a,
                Some(_) => return efail(format!("group \"{}\": expected an array", g.name)),
            };
            if entries.len() as u64 > g.max_count() {
                return efail(format!(
                    "group \"{}\": {} entries, at most {}",
                    g.name,
                    entries.len(),
                    g.max_count()
                ));
            }
            let (blp, blo, _) = g.block_length_encoding();
            let (np, no, _) = g.num_in_group_encoding();
            let at = self.grow(g.dimension.size());
            self.uint_at(at + blo, blp.size(), g.body.block_length as u64);
            self.uint_at(at + no, np.size(), entries.len() as u64);
            for e in entries {
                self.body(&g.body, e, &g.name)?;
            }
        }
        for d in &body.datas {
            let bytes: Vec<u8> = match map.get(&d.name) {
                None | Some(Json::Null) => Vec::new(),
                Some(Json::String(s)) if d.character_encoding().is_some() => s.as_bytes().to_vec(),
                Some(Json::String(s)) => unhex(s).ok_or_else(|| {
                    EncodeFailure(format!("var data \"{}\": not a hex string", d.name))
                })?,
                Some(Json::Object(o))
                    if o.len() == 1 && o.get("hex").is_some_and(Json::is_string) =>
                {
                    let h = o.get("hex").and_then(Json::as_str).unwrap_or("");
                    unhex(h).ok_or_else(|| {
                        EncodeFailure(format!("var data \"{}\": not a hex string", d.name))
                    })?
                }
                Some(_) => return efail(format!("var data \"{}\": expected a string", d.name)),
            };
            let (lp, lo, max) = d.length_encoding();
            let hi = max.unwrap_or(lp.bounds().1);
            if bytes.len() as i128 > hi {
                return efail(format!(
                    "var data \"{}\": {} bytes, at most {hi}",
                    d.name,
                    bytes.len()
                ));
            }
            let at = self.grow(d.header_size());
            self.uint_at(at + lo, lp.size(), bytes.len() as u64);
            self.out.extend_from_slice(&bytes);
        }
        Ok(())
    }

    fn ty(
        &mut self,
        t: &Type,
        presence: Presence,
        at: usize,
        v: &Json,
        name: &str,
    ) -> Result<(), EncodeFailure> {
        match &t.kind {
            TypeKind::Encoded(e) => {
                if e.presence == Presence::Constant {
                    return Ok(());
                }
                let optional = presence == Presence::Optional || e.presence == Presence::Optional;
                if e.length == 1 {
                    let val = match v {
                        Json::Null if optional => e.null_value,
                        Json::Null => Value::Int(0),
                        Json::String(s) if e.primitive == Primitive::Char => {
                            let b = s.as_bytes();
                            if b.len() > 1 {
                                return efail(format!("\"{name}\": \"{s}\" is more than one char"));
                            }
                            Value::Int(i128::from(b.first().copied().unwrap_or(0)))
                        }
                        other => json_prim(other, e.primitive, name)?,
                    };
                    self.prim_at(at, e.primitive, val);
                } else if e.length == 0 {
                    // Var data bytes are written by `body`.
                } else if e.primitive == Primitive::Char
                    || (matches!(v, Json::String(_)) && e.primitive.size() == 1)
                {
                    let s = match v {
                        Json::String(s) => s.as_str(),
                        Json::Null => "",
                        _ => return efail(format!("\"{name}\": expected a string")),
                    };
                    if s.chars().any(|c| c as u32 > 0xff) {
                        return efail(format!("\"{name}\": \"{s}\" has a char above U+00FF"));
                    }
                    let b: Vec<u8> = s.chars().map(|c| c as u8).collect();
                    if b.len() > e.length {
                        return efail(format!(
                            "\"{name}\": \"{s}\" is longer than {} chars",
                            e.length
                        ));
                    }
                    if let Some(dst) = self.out.get_mut(at..at + b.len()) {
                        dst.copy_from_slice(&b);
                    }
                } else {
                    let items: &[Json] = match v {
                        Json::Array(a) => a,
                        Json::Null => &[],
                        _ => return efail(format!("\"{name}\": expected an array")),
                    };
                    if items.len() > e.length {
                        return efail(format!(
                            "\"{name}\": {} items, at most {}",
                            items.len(),
                            e.length
                        ));
                    }
                    for (i, item) in items.iter().enumerate() {
                        let val = json_prim(item, e.primitive, name)?;
                        self.prim_at(at + i * e.primitive.size(), e.primitive, val);
                    }
                }
            }
            TypeKind::Composite(c) => {
                let empty = Map::new();
                let map = match v {
                    Json::Object(m) => m,
                    Json::Null => &empty,
                    _ => return efail(format!("\"{name}\": expected an object")),
                };
                for k in map.keys() {
                    if c.member(k).is_none() {
                        return efail(format!("\"{name}\": unknown member \"{k}\""));
                    }
                }
                for m in &c.members {
                    let p = match &m.ty.kind {
                        TypeKind::Encoded(e) => e.presence,
                        TypeKind::Enum(e) => e.presence,
                        _ => Presence::Required,
                    };
                    self.ty(
                        &m.ty,
                        p,
                        at + m.offset,
                        map.get(&m.name).unwrap_or(&Json::Null),
                        &m.name,
                    )?;
                }
            }
            TypeKind::Enum(e) => {
                if e.presence == Presence::Constant || presence == Presence::Constant {
                    return Ok(());
                }
                let val = match v {
                    Json::Null => e.null_value,
                    Json::String(s) => match e.values.iter().find(|x| &x.name == s) {
                        Some(x) => Value::Int(x.value),
                        None => {
                            return efail(format!(
                                "\"{name}\": \"{s}\" is not a value of {}",
                                t.name
                            ))
                        }
                    },
                    other => json_prim(other, e.encoding, name)?,
                };
                self.prim_at(at, e.encoding, val);
            }
            TypeKind::Set(s) => {
                let mut raw: u64 = 0;
                match v {
                    Json::Null => {}
                    Json::Array(items) => {
                        for item in items {
                            let bit = match item {
                                Json::String(n) => match s.choices.iter().find(|c| &c.name == n) {
                                    Some(c) => c.bit,
                                    None => {
                                        return efail(format!(
                                            "\"{name}\": \"{n}\" is not a choice of {}",
                                            t.name
                                        ))
                                    }
                                },
                                Json::Number(n) => match n.as_u64() {
                                    Some(b) if b < (s.encoding.size() * 8) as u64 => b as u32,
                                    _ => {
                                        return efail(format!(
                                            "\"{name}\": bit {n} is out of range"
                                        ))
                                    }
                                },
                                _ => {
                                    return efail(format!("\"{name}\": set items are choice names"))
                                }
                            };
                            raw |= 1u64 << bit;
                        }
                    }
                    _ => return efail(format!("\"{name}\": expected an array of choice names")),
                }
                self.uint_at(at, s.encoding.size(), raw);
            }
        }
        Ok(())
    }
}

fn json_prim(v: &Json, p: Primitive, name: &str) -> Result<Value, EncodeFailure> {
    let Json::Number(n) = v else {
        return efail(format!("\"{name}\": expected a number, got {v}"));
    };
    if p.is_float() {
        return n
            .as_f64()
            .map(Value::Float)
            .ok_or_else(|| EncodeFailure(format!("\"{name}\": {n} is not a number")));
    }
    let i = n
        .as_u64()
        .map(i128::from)
        .or_else(|| n.as_i64().map(i128::from))
        .ok_or_else(|| EncodeFailure(format!("\"{name}\": {n} is not an integer")))?;
    let (lo, hi) = p.bounds();
    if i < lo || i > hi {
        return efail(format!("\"{name}\": {i} does not fit {}", p.name()));
    }
    Ok(Value::Int(i))
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// Encodes one JSON object (`{"message": NAME, ...}` as [`decode_message`] prints it) as a
/// header-prefixed message of the schema's current version. Missing fields are null (optional)
/// or zero, missing groups and var data empty; unknown keys are refused.
///
/// # Errors
/// An unknown message or field, or a value that does not fit its type.
pub fn encode_message(schema: &Schema, v: &Json) -> Result<Vec<u8>, EncodeFailure> {
    let m = match (v.get("message"), v.get("templateId")) {
        (Some(Json::String(name)), _) => schema
            .message_by_name(name)
            .ok_or_else(|| EncodeFailure(format!("unknown message \"{name}\"")))?,
        (None, Some(Json::Number(n))) => n
            .as_u64()
            .and_then(|id| schema.messages.iter().find(|m| u64::from(m.id) == id))
            .ok_or_else(|| EncodeFailure(format!("unknown template id {n}")))?,
        _ => return efail("expected an object with \"message\": NAME".into()),
    };
    let mut w = Writer {
        out: Vec::new(),
        be: schema.byte_order == ByteOrder::BigEndian,
    };
    let hs = w.grow(schema.header_size());
    for (name, val) in [
        ("blockLength", m.body.block_length as u64),
        ("templateId", u64::from(m.id)),
        ("schemaId", u64::from(schema.id)),
        ("version", u64::from(schema.version)),
    ] {
        if let Some((p, off, _)) = composite_int_member(&schema.header, name) {
            w.uint_at(hs + off, p.size(), val);
        }
    }
    w.body(&m.body, v, "message")?;
    Ok(w.out)
}

/// Renders a decoded message as one JSON line with keys in schema order (`message`,
/// `templateId`, `version`, then fields, groups and var data as the schema declares them).
pub fn to_line(schema: &Schema, v: &Json) -> String {
    let body = v
        .get("message")
        .and_then(Json::as_str)
        .and_then(|n| schema.message_by_name(n))
        .map(|m| &m.body);
    let mut out = String::new();
    match (v, body) {
        (Json::Object(map), Some(body)) => {
            out.push('{');
            let mut first = true;
            for k in ["message", "templateId", "version"] {
                if let Some(x) = map.get(k) {
                    push_key(&mut out, &mut first, k);
                    out.push_str(&x.to_string());
                }
            }
            render_body(&mut out, &mut first, body, map);
            out.push('}');
        }
        _ => out.push_str(&v.to_string()),
    }
    out
}

fn push_key(out: &mut String, first: &mut bool, k: &str) {
    if !*first {
        out.push(',');
    }
    *first = false;
    out.push_str(&Json::String(k.to_string()).to_string());
    out.push(':');
}

fn render_body(out: &mut String, first: &mut bool, body: &Body, map: &Map<String, Json>) {
    for f in &body.fields {
        if let Some(x) = map.get(&f.name) {
            push_key(out, first, &f.name);
            render_ty(out, &f.ty, x);
        }
    }
    for g in &body.groups {
        if let Some(x) = map.get(&g.name) {
            push_key(out, first, &g.name);
            match x {
                Json::Array(entries) => {
                    out.push('[');
                    for (i, e) in entries.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        match e {
                            Json::Object(m) => {
                                out.push('{');
                                let mut f = true;
                                render_body(out, &mut f, &g.body, m);
                                out.push('}');
                            }
                            other => out.push_str(&other.to_string()),
                        }
                    }
                    out.push(']');
                }
                other => out.push_str(&other.to_string()),
            }
        }
    }
    for d in &body.datas {
        if let Some(x) = map.get(&d.name) {
            push_key(out, first, &d.name);
            out.push_str(&x.to_string());
        }
    }
}

fn render_ty(out: &mut String, t: &Type, v: &Json) {
    match (&t.kind, v) {
        (TypeKind::Composite(c), Json::Object(m)) => {
            out.push('{');
            let mut first = true;
            for mem in &c.members {
                if let Some(x) = m.get(&mem.name) {
                    push_key(out, &mut first, &mem.name);
                    render_ty(out, &mem.ty, x);
                }
            }
            out.push('}');
        }
        _ => out.push_str(&v.to_string()),
    }
}
