//! The schema IR: an SBE XML schema parsed, resolved and validated.
//!
//! Owns: reading the FIX SBE 1.0 XML format (`messageSchema`, `types`, `type`, `composite`, `enum`,
//! `set`, `ref`, `message`, `field`, `group`, `data`) into plain Rust values with every type
//! reference resolved (each use holds a copy of its type), every offset and block length
//! computed, and every constant evaluated.
//!
//! Invariants of a successfully parsed [`Schema`]:
//! - fields of a block are in offset order, do not overlap, and end at or before the block length;
//! - composite members are in offset order and do not overlap; a composite's size is the end of
//!   its last member;
//! - every group dimension has integer `blockLength` and `numInGroup` members, every var data
//!   type has integer `length` and a `varData` member;
//! - enum values lie inside their encoding's range and differ from its null value;
//! - no `sinceVersion` exceeds the schema version.
//!
//! Parsing never stops at the first problem: every error is collected, and [`SchemaErrors`]
//! prints them all, ending with "had N errors" like SBE's own `ErrorHandler`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

/// An SBE primitive type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Primitive {
    Char,
    Int8,
    Int16,
    Int32,
    Int64,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Float,
    Double,
}

impl Primitive {
    /// Parses an SBE primitive type name.
    pub fn from_name(name: &str) -> Option<Primitive> {
        Some(match name {
            "char" => Primitive::Char,
            "int8" => Primitive::Int8,
            "int16" => Primitive::Int16,
            "int32" => Primitive::Int32,
            "int64" => Primitive::Int64,
            "uint8" => Primitive::Uint8,
            "uint16" => Primitive::Uint16,
            "uint32" => Primitive::Uint32,
            "uint64" => Primitive::Uint64,
            "float" => Primitive::Float,
            "double" => Primitive::Double,
            _ => return None,
        })
    }

    /// The SBE name.
    pub fn name(self) -> &'static str {
        match self {
            Primitive::Char => "char",
            Primitive::Int8 => "int8",
            Primitive::Int16 => "int16",
            Primitive::Int32 => "int32",
            Primitive::Int64 => "int64",
            Primitive::Uint8 => "uint8",
            Primitive::Uint16 => "uint16",
            Primitive::Uint32 => "uint32",
            Primitive::Uint64 => "uint64",
            Primitive::Float => "float",
            Primitive::Double => "double",
        }
    }

    /// Encoded size in bytes.
    pub fn size(self) -> usize {
        match self {
            Primitive::Char | Primitive::Int8 | Primitive::Uint8 => 1,
            Primitive::Int16 | Primitive::Uint16 => 2,
            Primitive::Int32 | Primitive::Uint32 | Primitive::Float => 4,
            Primitive::Int64 | Primitive::Uint64 | Primitive::Double => 8,
        }
    }

    /// True for float and double.
    pub fn is_float(self) -> bool {
        matches!(self, Primitive::Float | Primitive::Double)
    }

    /// True for the signed integer types.
    pub fn is_signed(self) -> bool {
        matches!(
            self,
            Primitive::Int8 | Primitive::Int16 | Primitive::Int32 | Primitive::Int64
        )
    }

    /// The full range of the Rust type that holds it (integers only).
    pub fn bounds(self) -> (i128, i128) {
        match self {
            Primitive::Char | Primitive::Uint8 => (0, u8::MAX as i128),
            Primitive::Int8 => (i8::MIN as i128, i8::MAX as i128),
            Primitive::Int16 => (i16::MIN as i128, i16::MAX as i128),
            Primitive::Int32 => (i32::MIN as i128, i32::MAX as i128),
            Primitive::Int64 => (i64::MIN as i128, i64::MAX as i128),
            Primitive::Uint16 => (0, u16::MAX as i128),
            Primitive::Uint32 => (0, u32::MAX as i128),
            Primitive::Uint64 => (0, u64::MAX as i128),
            Primitive::Float | Primitive::Double => (i128::MIN, i128::MAX),
        }
    }

    /// SBE's default null value.
    pub fn default_null(self) -> Value {
        match self {
            Primitive::Char => Value::Int(0),
            Primitive::Float | Primitive::Double => Value::Float(f64::NAN),
            p if p.is_signed() => Value::Int(p.bounds().0),
            p => Value::Int(p.bounds().1),
        }
    }

    /// SBE's default minimum valid value.
    pub fn default_min(self) -> Value {
        match self {
            Primitive::Char => Value::Int(0x20),
            Primitive::Float | Primitive::Double => Value::Float(f64::MIN),
            p if p.is_signed() => Value::Int(p.bounds().0 + 1),
            _ => Value::Int(0),
        }
    }

    /// SBE's default maximum valid value.
    pub fn default_max(self) -> Value {
        match self {
            Primitive::Char => Value::Int(0x7e),
            Primitive::Float | Primitive::Double => Value::Float(f64::MAX),
            p if p.is_signed() => Value::Int(p.bounds().1),
            p => Value::Int(p.bounds().1 - 1),
        }
    }

    /// Parses a literal of this type (a char literal is one character).
    pub fn parse_value(self, text: &str) -> Option<Value> {
        let text = text.trim();
        if self.is_float() {
            return match text {
                "NaN" | "nan" => Some(Value::Float(f64::NAN)),
                _ => text.parse::<f64>().ok().map(Value::Float),
            };
        }
        if self == Primitive::Char {
            let mut chars = text.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                if c.is_ascii() {
                    return Some(Value::Int(c as i128));
                }
            }
            return None;
        }
        let v: i128 = text.parse().ok()?;
        let (lo, hi) = self.bounds();
        (lo..=hi).contains(&v).then_some(Value::Int(v))
    }
}

/// A literal value of a primitive type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(i128),
    Float(f64),
}

impl Value {
    /// The integer, if it is one.
    pub fn as_int(self) -> Option<i128> {
        match self {
            Value::Int(v) => Some(v),
            Value::Float(_) => None,
        }
    }
    /// The value as f64.
    pub fn as_f64(self) -> f64 {
        match self {
            Value::Int(v) => v as f64,
            Value::Float(f) => f,
        }
    }
}

/// Field or type presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Required,
    Optional,
    Constant,
}

/// Byte order of the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteOrder {
    LittleEndian,
    BigEndian,
}

/// The value of a constant.
#[derive(Debug, Clone, PartialEq)]
pub enum Constant {
    /// A number (for a `valueRef` to an enum on a primitive, the enum value).
    Number(Value),
    /// Characters of a char array constant.
    Bytes(Vec<u8>),
    /// A `valueRef` naming an enum value, used by constant enum fields.
    EnumValue {
        enum_name: String,
        value_name: String,
        value: Value,
    },
}

/// A simple (encoded) type: a primitive or a fixed array of one.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub primitive: Primitive,
    /// Number of elements; 1 for a scalar, 0 for var data.
    pub length: usize,
    pub presence: Presence,
    pub null_value: Value,
    pub min_value: Value,
    pub max_value: Value,
    pub constant: Option<Constant>,
    pub character_encoding: Option<String>,
}

impl Encoded {
    /// Encoded size in bytes (0 for constants).
    pub fn size(&self) -> usize {
        if self.presence == Presence::Constant {
            0
        } else {
            self.primitive.size() * self.length
        }
    }
    /// True for arrays (length other than 1) and char strings.
    pub fn is_array(&self) -> bool {
        self.length != 1
    }
}

/// A composite: members at fixed offsets.
#[derive(Debug, Clone, PartialEq)]
pub struct Composite {
    pub members: Vec<Member>,
    /// Encoded size in bytes.
    pub size: usize,
}

impl Composite {
    /// The member with this name.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }
}

/// A member of a composite.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: String,
    pub offset: usize,
    pub ty: Type,
}

/// An enum: named values of one primitive encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct EnumType {
    pub encoding: Primitive,
    pub presence: Presence,
    pub null_value: Value,
    pub values: Vec<ValidValue>,
}

/// One `validValue` of an enum.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidValue {
    pub name: String,
    pub value: i128,
    pub since_version: u16,
    pub description: String,
}

/// A bit set over an unsigned primitive.
#[derive(Debug, Clone, PartialEq)]
pub struct SetType {
    pub encoding: Primitive,
    pub choices: Vec<Choice>,
}

/// One `choice` of a set.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub name: String,
    pub bit: u32,
    pub since_version: u16,
    pub description: String,
}

/// What a type is.
#[derive(Debug, Clone, PartialEq)]
pub enum TypeKind {
    Encoded(Encoded),
    Composite(Composite),
    Enum(EnumType),
    Set(SetType),
}

/// A resolved type. `name` is the schema name (for anonymous primitive uses, the primitive name).
#[derive(Debug, Clone, PartialEq)]
pub struct Type {
    pub name: String,
    pub description: String,
    pub since_version: u16,
    pub kind: TypeKind,
    /// True for a type declared in `types` (or nested inside a composite there), false for a bare
    /// primitive name used directly as a field type.
    pub named: bool,
}

impl Type {
    /// Encoded size in bytes (0 for constants).
    pub fn size(&self) -> usize {
        match &self.kind {
            TypeKind::Encoded(e) => e.size(),
            TypeKind::Composite(c) => c.size,
            TypeKind::Enum(e) => {
                if e.presence == Presence::Constant {
                    0
                } else {
                    e.encoding.size()
                }
            }
            TypeKind::Set(s) => s.encoding.size(),
        }
    }
}

/// A field of a message or group block.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub id: u32,
    pub offset: usize,
    /// The field's type, with field-level `presence`/`valueRef` applied.
    pub ty: Type,
    pub presence: Presence,
    pub since_version: u16,
    pub deprecated: Option<u16>,
    /// For a constant enum field, the name of the referenced value.
    pub enum_constant: Option<String>,
    pub description: String,
}

impl Field {
    /// Encoded size in bytes (0 for constants).
    pub fn size(&self) -> usize {
        if self.presence == Presence::Constant {
            0
        } else {
            self.ty.size()
        }
    }
}

/// A repeating group.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    pub id: u32,
    pub description: String,
    pub since_version: u16,
    /// The dimension composite (has `blockLength` and `numInGroup`).
    pub dimension: Type,
    pub body: Body,
}

/// A var data field.
#[derive(Debug, Clone, PartialEq)]
pub struct Data {
    pub name: String,
    pub id: u32,
    pub description: String,
    pub since_version: u16,
    /// The var data composite (has `length` and `varData`).
    pub ty: Type,
}

impl Data {
    /// The length member's encoding.
    pub fn length_encoding(&self) -> (Primitive, usize, Option<i128>) {
        composite_int_member(&self.ty, "length").unwrap_or((Primitive::Uint32, 0, None))
    }
    /// Character encoding of the varData member, if any.
    pub fn character_encoding(&self) -> Option<&str> {
        if let TypeKind::Composite(c) = &self.ty.kind {
            if let Some(Member {
                ty:
                    Type {
                        kind: TypeKind::Encoded(e),
                        ..
                    },
                ..
            }) = c.member("varData")
            {
                return e.character_encoding.as_deref();
            }
        }
        None
    }
    /// Size of the length prefix in bytes.
    pub fn header_size(&self) -> usize {
        match &self.ty.kind {
            TypeKind::Composite(c) => c.member("varData").map(|m| m.offset).unwrap_or(c.size),
            _ => 0,
        }
    }
}

impl Group {
    /// The dimension's `blockLength` member: (primitive, offset, maxValue).
    pub fn block_length_encoding(&self) -> (Primitive, usize, Option<i128>) {
        composite_int_member(&self.dimension, "blockLength").unwrap_or((Primitive::Uint16, 0, None))
    }
    /// The dimension's `numInGroup` member: (primitive, offset, maxValue).
    pub fn num_in_group_encoding(&self) -> (Primitive, usize, Option<i128>) {
        composite_int_member(&self.dimension, "numInGroup").unwrap_or((Primitive::Uint16, 2, None))
    }
    /// The largest count the dimension can carry.
    pub fn max_count(&self) -> u64 {
        let (p, _, max) = self.num_in_group_encoding();
        let hi = p.bounds().1.min(u32::MAX as i128);
        max.map_or(hi, |m| m.min(hi)).max(0) as u64
    }
}

/// Finds an integer member of a composite: (primitive, offset, explicit maxValue).
pub fn composite_int_member(ty: &Type, name: &str) -> Option<(Primitive, usize, Option<i128>)> {
    let TypeKind::Composite(c) = &ty.kind else {
        return None;
    };
    let m = c.member(name)?;
    match &m.ty.kind {
        TypeKind::Encoded(e)
            if !e.primitive.is_float() && e.length == 1 && e.presence != Presence::Constant =>
        {
            let explicit_max = if e.max_value != e.primitive.default_max() {
                e.max_value.as_int()
            } else {
                None
            };
            Some((e.primitive, m.offset, explicit_max))
        }
        _ => None,
    }
}

/// The block, groups and var data of a message or group entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Body {
    pub block_length: usize,
    pub fields: Vec<Field>,
    pub groups: Vec<Group>,
    pub datas: Vec<Data>,
}

impl Body {
    /// True when entries have only a fixed block (no nested groups or var data).
    pub fn is_fixed(&self) -> bool {
        self.groups.is_empty() && self.datas.is_empty()
    }
}

/// A message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub name: String,
    pub id: u32,
    pub description: String,
    pub since_version: u16,
    pub semantic_type: Option<String>,
    pub body: Body,
}

/// A parsed and validated schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    pub package: String,
    pub id: u16,
    pub version: u16,
    pub semantic_version: String,
    pub description: String,
    pub byte_order: ByteOrder,
    /// The message header composite (`headerType`, default `messageHeader`).
    pub header: Type,
    /// Named types in declaration order (top level of every `types` element).
    pub types: Vec<Type>,
    pub messages: Vec<Message>,
}

impl Schema {
    /// Size of the message header in bytes.
    pub fn header_size(&self) -> usize {
        self.header.size()
    }
    /// The message with this template id.
    pub fn message_by_id(&self, id: u32) -> Option<&Message> {
        self.messages.iter().find(|m| m.id == id)
    }
    /// The message with this name.
    pub fn message_by_name(&self, name: &str) -> Option<&Message> {
        self.messages.iter().find(|m| m.name == name)
    }
}

/// Every problem found in a schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaErrors {
    /// One message per problem, in document order.
    pub errors: Vec<String>,
}

impl fmt::Display for SchemaErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.errors {
            writeln!(f, "error: {e}")?;
        }
        write!(f, "schema had {} errors", self.errors.len())
    }
}

impl std::error::Error for SchemaErrors {}

/// Parses and validates an SBE XML schema.
///
/// # Errors
/// Every problem found, collected (not just the first).
pub fn parse(xml: &str) -> Result<Schema, SchemaErrors> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| SchemaErrors {
        errors: vec![format!("XML is not well formed: {e}")],
    })?;
    let mut p = Parser::default();
    let schema = p.schema(doc.root_element());
    if p.errors.is_empty() {
        if let Some(s) = schema {
            return Ok(s);
        }
        p.errors.push("schema could not be read".into());
    }
    Err(SchemaErrors { errors: p.errors })
}

type Node<'a> = roxmltree::Node<'a, 'a>;

#[derive(Default)]
struct Parser<'a> {
    errors: Vec<String>,
    version: u16,
    raw: HashMap<String, Node<'a>>,
    resolved: HashMap<String, Type>,
    resolving: HashSet<String>,
    /// Declared types that failed to resolve (their errors are already reported).
    failed: HashSet<String>,
}

fn attr<'a>(n: Node<'a>, name: &str) -> Option<&'a str> {
    n.attribute(name)
}

fn line_of(n: Node<'_>) -> u32 {
    n.document().text_pos_at(n.range().start).row
}

impl<'a> Parser<'a> {
    fn err(&mut self, n: Node<'_>, msg: String) {
        self.errors.push(format!("line {}: {msg}", line_of(n)));
    }

    fn num<T: std::str::FromStr>(&mut self, n: Node<'a>, name: &str, default: T) -> T {
        match attr(n, name) {
            None => default,
            Some(s) => match s.trim().parse() {
                Ok(v) => v,
                Err(_) => {
                    self.err(n, format!("attribute {name}=\"{s}\" is not a valid number"));
                    default
                }
            },
        }
    }

    fn since(&mut self, n: Node<'a>, what: &str) -> u16 {
        let v: u16 = self.num(n, "sinceVersion", 0);
        if v > self.version {
            let name = attr(n, "name").unwrap_or("?");
            self.err(
                n,
                format!(
                    "{what} \"{name}\" has sinceVersion={v} greater than the schema version {}",
                    self.version
                ),
            );
        }
        v
    }

    fn schema(&mut self, root: Node<'a>) -> Option<Schema> {
        if root.tag_name().name() != "messageSchema" {
            self.err(
                root,
                format!(
                    "root element is <{}>, expected <messageSchema>",
                    root.tag_name().name()
                ),
            );
            return None;
        }
        let id: u16 = self.num(root, "id", 0);
        self.version = self.num(root, "version", 0);
        let byte_order = match attr(root, "byteOrder").unwrap_or("littleEndian") {
            "littleEndian" => ByteOrder::LittleEndian,
            "bigEndian" => ByteOrder::BigEndian,
            other => {
                self.err(
                    root,
                    format!("byteOrder \"{other}\" is neither littleEndian nor bigEndian"),
                );
                ByteOrder::LittleEndian
            }
        };
        // Collect named type nodes first so references may point forward.
        let mut order = Vec::new();
        for types in root.children().filter(|c| c.tag_name().name() == "types") {
            for t in types.children().filter(|c| c.is_element()) {
                let tag = t.tag_name().name();
                if !matches!(tag, "type" | "composite" | "enum" | "set") {
                    self.err(t, format!("unexpected <{tag}> in <types>"));
                    continue;
                }
                let Some(name) = attr(t, "name") else {
                    self.err(t, format!("<{tag}> has no name"));
                    continue;
                };
                if self.raw.insert(name.to_string(), t).is_some() {
                    self.err(t, format!("type \"{name}\" is declared more than once"));
                } else {
                    order.push(name.to_string());
                }
            }
        }
        let mut types = Vec::new();
        for name in &order {
            if let Some(t) = self.resolve(name, root) {
                types.push(t);
            }
        }
        let header_name = attr(root, "headerType").unwrap_or("messageHeader");
        let header = self.header(root, header_name);

        let mut messages: Vec<Message> = Vec::new();
        let mut ids = HashSet::new();
        let mut names = HashSet::new();
        for m in root
            .children()
            .filter(|c| c.is_element() && c.tag_name().name() == "message")
        {
            let Some(msg) = self.message(m) else { continue };
            if !ids.insert(msg.id) {
                self.err(
                    m,
                    format!("message \"{}\" reuses template id {}", msg.name, msg.id),
                );
            }
            if !names.insert(msg.name.clone()) {
                self.err(
                    m,
                    format!("message name \"{}\" is used more than once", msg.name),
                );
            }
            messages.push(msg);
        }
        let header = header?;
        Some(Schema {
            package: attr(root, "package").unwrap_or("").to_string(),
            id,
            version: self.version,
            semantic_version: attr(root, "semanticVersion").unwrap_or("").to_string(),
            description: attr(root, "description").unwrap_or("").to_string(),
            byte_order,
            header,
            types,
            messages,
        })
    }

    fn header(&mut self, root: Node<'a>, name: &str) -> Option<Type> {
        let t = match self.resolve(name, root) {
            Some(t) => t,
            None => {
                if !self.raw.contains_key(name) {
                    self.err(root, format!("header type \"{name}\" is not declared"));
                }
                return None;
            }
        };
        for member in ["blockLength", "templateId", "schemaId", "version"] {
            if composite_int_member(&t, member).is_none() {
                self.err(
                    root,
                    format!("header type \"{name}\" needs an integer member \"{member}\""),
                );
            }
        }
        Some(t)
    }

    /// Resolves a type name: a declared type or a primitive name.
    fn resolve(&mut self, name: &str, at: Node<'a>) -> Option<Type> {
        if let Some(t) = self.resolved.get(name) {
            return Some(t.clone());
        }
        if self.failed.contains(name) {
            return None;
        }
        if let Some(&node) = self.raw.get(name) {
            if !self.resolving.insert(name.to_string()) {
                self.err(node, format!("type \"{name}\" refers to itself"));
                return None;
            }
            let t = self.type_node(node);
            self.resolving.remove(name);
            match &t {
                Some(t) => {
                    self.resolved.insert(name.to_string(), t.clone());
                }
                None => {
                    self.failed.insert(name.to_string());
                }
            }
            return t;
        }
        if let Some(p) = Primitive::from_name(name) {
            return Some(Type {
                name: name.to_string(),
                description: String::new(),
                since_version: 0,
                kind: TypeKind::Encoded(Encoded {
                    primitive: p,
                    length: 1,
                    presence: Presence::Required,
                    null_value: p.default_null(),
                    min_value: p.default_min(),
                    max_value: p.default_max(),
                    constant: None,
                    character_encoding: None,
                }),
                named: false,
            });
        }
        let _ = at;
        None
    }

    fn type_node(&mut self, n: Node<'a>) -> Option<Type> {
        let name = attr(n, "name").unwrap_or("").to_string();
        let description = attr(n, "description").unwrap_or("").to_string();
        let since_version = self.since(n, "type");
        let kind = match n.tag_name().name() {
            "type" => TypeKind::Encoded(self.encoded(n, &name)?),
            "composite" => TypeKind::Composite(self.composite(n, &name)?),
            "enum" => TypeKind::Enum(self.enumeration(n, &name)?),
            "set" => TypeKind::Set(self.set(n, &name)?),
            other => {
                self.err(n, format!("unexpected <{other}>"));
                return None;
            }
        };
        Some(Type {
            name,
            description,
            since_version,
            kind,
            named: true,
        })
    }

    fn presence(&mut self, n: Node<'a>) -> Presence {
        match attr(n, "presence").unwrap_or("required") {
            "required" => Presence::Required,
            "optional" => Presence::Optional,
            "constant" => Presence::Constant,
            other => {
                self.err(
                    n,
                    format!("presence \"{other}\" is not required, optional or constant"),
                );
                Presence::Required
            }
        }
    }

    fn value_attr(&mut self, n: Node<'a>, p: Primitive, name: &str, what: &str) -> Option<Value> {
        let text = attr(n, name)?;
        match p.parse_value(text) {
            Some(v) => Some(v),
            None => {
                self.err(
                    n,
                    format!("{what}: {name}=\"{text}\" is not a valid {}", p.name()),
                );
                None
            }
        }
    }

    fn encoded(&mut self, n: Node<'a>, name: &str) -> Option<Encoded> {
        let Some(prim_name) = attr(n, "primitiveType") else {
            self.err(n, format!("type \"{name}\" has no primitiveType"));
            return None;
        };
        let Some(p) = Primitive::from_name(prim_name) else {
            self.err(
                n,
                format!("type \"{name}\" has unknown primitiveType \"{prim_name}\""),
            );
            return None;
        };
        let variable = attr(n, "variableLength") == Some("true");
        let length: usize = self.num(n, "length", if variable { 0 } else { 1 });
        let presence = self.presence(n);
        let what = format!("type \"{name}\"");
        let null_value = self
            .value_attr(n, p, "nullValue", &what)
            .unwrap_or_else(|| p.default_null());
        let min_value = self
            .value_attr(n, p, "minValue", &what)
            .unwrap_or_else(|| p.default_min());
        let max_value = self
            .value_attr(n, p, "maxValue", &what)
            .unwrap_or_else(|| p.default_max());
        let mut constant = None;
        if presence == Presence::Constant {
            constant = self.constant_value(n, p, length, name);
            constant.as_ref()?;
        }
        Some(Encoded {
            primitive: p,
            length,
            presence,
            null_value,
            min_value,
            max_value,
            constant,
            character_encoding: attr(n, "characterEncoding").map(str::to_string),
        })
    }

    /// The value of a constant: `valueRef="Enum.value"` or the element text.
    fn constant_value(
        &mut self,
        n: Node<'a>,
        p: Primitive,
        length: usize,
        name: &str,
    ) -> Option<Constant> {
        if let Some(r) = attr(n, "valueRef") {
            return self.value_ref(n, r, name);
        }
        let text = n.text().unwrap_or("");
        if text.trim().is_empty() && !(p == Primitive::Char && length > 1 && !text.is_empty()) {
            self.err(n, format!("constant \"{name}\" has no value"));
            return None;
        }
        if p == Primitive::Char && (length != 1 || text.trim().chars().count() > 1) {
            if !text.is_ascii() {
                self.err(n, format!("constant \"{name}\" is not ASCII"));
                return None;
            }
            return Some(Constant::Bytes(text.as_bytes().to_vec()));
        }
        match p.parse_value(text) {
            Some(v) => Some(Constant::Number(v)),
            None => {
                self.err(
                    n,
                    format!(
                        "constant \"{name}\" value \"{}\" is not a valid {}",
                        text.trim(),
                        p.name()
                    ),
                );
                None
            }
        }
    }

    fn value_ref(&mut self, n: Node<'a>, r: &str, name: &str) -> Option<Constant> {
        let Some((enum_name, value_name)) = r.split_once('.') else {
            self.err(
                n,
                format!("\"{name}\": valueRef \"{r}\" is not of the form Enum.value"),
            );
            return None;
        };
        match self.resolve(enum_name, n) {
            Some(Type {
                kind: TypeKind::Enum(e),
                ..
            }) => match e.values.iter().find(|v| v.name == value_name) {
                Some(v) => Some(Constant::EnumValue {
                    enum_name: enum_name.to_string(),
                    value_name: value_name.to_string(),
                    value: Value::Int(v.value),
                }),
                None => {
                    self.err(
                        n,
                        format!("\"{name}\": valueRef \"{r}\": enum has no value \"{value_name}\""),
                    );
                    None
                }
            },
            _ => {
                self.err(
                    n,
                    format!("\"{name}\": valueRef \"{r}\": \"{enum_name}\" is not an enum"),
                );
                None
            }
        }
    }

    fn composite(&mut self, n: Node<'a>, name: &str) -> Option<Composite> {
        let mut members = Vec::new();
        let mut pos = 0usize;
        let mut ok = true;
        let mut seen = HashSet::new();
        for c in n.children().filter(|c| c.is_element()) {
            let tag = c.tag_name().name();
            let member_name = attr(c, "name").unwrap_or("").to_string();
            let ty = match tag {
                "type" | "composite" | "enum" | "set" => self.type_node(c),
                "ref" => {
                    let since = self.since(c, "ref");
                    match attr(c, "type") {
                        Some(t) => match self.resolve(t, c) {
                            Some(mut ty) => {
                                ty.since_version = ty.since_version.max(since);
                                Some(ty)
                            }
                            None => {
                                self.err(c, format!("composite \"{name}\": ref \"{member_name}\" has unknown type \"{t}\""));
                                None
                            }
                        },
                        None => {
                            self.err(
                                c,
                                format!("composite \"{name}\": ref \"{member_name}\" has no type"),
                            );
                            None
                        }
                    }
                }
                other => {
                    self.err(c, format!("composite \"{name}\" contains <{other}>, which a composite may not hold"));
                    ok = false;
                    continue;
                }
            };
            let Some(ty) = ty else {
                ok = false;
                continue;
            };
            if !seen.insert(member_name.clone()) {
                self.err(
                    c,
                    format!("composite \"{name}\" has two members named \"{member_name}\""),
                );
                ok = false;
            }
            if let Some(off) = attr(c, "offset") {
                match off.trim().parse::<usize>() {
                    Ok(off) if off >= pos => pos = off,
                    Ok(off) => {
                        self.err(c, format!("composite \"{name}\": member \"{member_name}\" offset {off} overlaps the previous member, which ends at {pos}"));
                        ok = false;
                    }
                    Err(_) => {
                        self.err(c, format!("composite \"{name}\": member \"{member_name}\" offset \"{off}\" is not a number"));
                        ok = false;
                    }
                }
            }
            let size = ty.size();
            members.push(Member {
                name: member_name,
                offset: pos,
                ty,
            });
            pos += size;
        }
        ok.then_some(Composite { members, size: pos })
    }

    /// Resolves an `encodingType`: a primitive, or a named simple type.
    fn encoding(&mut self, n: Node<'a>, name: &str) -> Option<(Primitive, Option<Encoded>)> {
        let enc = attr(n, "encodingType").unwrap_or("");
        if let Some(p) = Primitive::from_name(enc) {
            return Some((p, None));
        }
        match self.resolve(enc, n) {
            Some(Type {
                kind: TypeKind::Encoded(e),
                ..
            }) if e.length == 1 => Some((e.primitive, Some(e))),
            _ => {
                self.err(
                    n,
                    format!(
                        "\"{name}\": encodingType \"{enc}\" is not a primitive or a scalar type"
                    ),
                );
                None
            }
        }
    }

    fn enumeration(&mut self, n: Node<'a>, name: &str) -> Option<EnumType> {
        let (p, enc) = self.encoding(n, name)?;
        if p.is_float() {
            self.err(n, format!("enum \"{name}\" has a floating point encoding"));
            return None;
        }
        let mut presence = enc.as_ref().map_or(Presence::Required, |e| e.presence);
        if attr(n, "presence").is_some() {
            presence = self.presence(n);
        }
        let what = format!("enum \"{name}\"");
        let null_value = self
            .value_attr(n, p, "nullValue", &what)
            .or(enc.as_ref().map(|e| e.null_value))
            .unwrap_or_else(|| p.default_null());
        let min = enc.as_ref().map_or(p.default_min(), |e| e.min_value);
        let max = enc.as_ref().map_or(p.default_max(), |e| e.max_value);
        let (min, max) = if p == Primitive::Char {
            (0, 255)
        } else {
            (min.as_int().unwrap_or(0), max.as_int().unwrap_or(0))
        };
        let null = null_value.as_int().unwrap_or(0);
        let mut values = Vec::new();
        let mut names = HashSet::new();
        let mut seen_values = HashSet::new();
        let mut ok = true;
        for v in n
            .children()
            .filter(|c| c.is_element() && c.tag_name().name() == "validValue")
        {
            let vname = attr(v, "name").unwrap_or("").to_string();
            let text = v.text().unwrap_or("");
            let Some(Value::Int(value)) = p.parse_value(text) else {
                self.err(
                    v,
                    format!(
                        "enum \"{name}\": value \"{vname}\" = \"{}\" is not a valid {}",
                        text.trim(),
                        p.name()
                    ),
                );
                ok = false;
                continue;
            };
            if value < min || value > max {
                self.err(v, format!("enum \"{name}\": value \"{vname}\" = {value} is outside the encoding's range {min}..={max}"));
                ok = false;
            }
            if value == null {
                self.err(
                    v,
                    format!("enum \"{name}\": value \"{vname}\" = {value} is the null value"),
                );
                ok = false;
            }
            if !names.insert(vname.clone()) {
                self.err(
                    v,
                    format!("enum \"{name}\": value name \"{vname}\" is used twice"),
                );
                ok = false;
            }
            if !seen_values.insert(value) {
                self.err(v, format!("enum \"{name}\": value {value} is used twice"));
                ok = false;
            }
            let since_version = self.since(v, "validValue");
            values.push(ValidValue {
                name: vname,
                value,
                since_version,
                description: attr(v, "description").unwrap_or("").to_string(),
            });
        }
        ok.then_some(EnumType {
            encoding: p,
            presence,
            null_value,
            values,
        })
    }

    fn set(&mut self, n: Node<'a>, name: &str) -> Option<SetType> {
        let (p, _) = self.encoding(n, name)?;
        if !matches!(
            p,
            Primitive::Uint8 | Primitive::Uint16 | Primitive::Uint32 | Primitive::Uint64
        ) {
            self.err(
                n,
                format!(
                    "set \"{name}\": encoding {} is not an unsigned integer",
                    p.name()
                ),
            );
            return None;
        }
        let mut choices = Vec::new();
        let mut ok = true;
        let mut bits = BTreeSet::new();
        for c in n
            .children()
            .filter(|c| c.is_element() && c.tag_name().name() == "choice")
        {
            let cname = attr(c, "name").unwrap_or("").to_string();
            let text = c.text().unwrap_or("").trim();
            match text.parse::<u32>() {
                Ok(bit) if (bit as usize) < p.size() * 8 => {
                    if !bits.insert(bit) {
                        self.err(c, format!("set \"{name}\": bit {bit} is used twice"));
                        ok = false;
                    }
                    let since_version = self.since(c, "choice");
                    choices.push(Choice {
                        name: cname,
                        bit,
                        since_version,
                        description: attr(c, "description").unwrap_or("").to_string(),
                    });
                }
                _ => {
                    self.err(
                        c,
                        format!(
                            "set \"{name}\": choice \"{cname}\" bit \"{text}\" is not in 0..{}",
                            p.size() * 8
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(SetType {
            encoding: p,
            choices,
        })
    }

    fn message(&mut self, m: Node<'a>) -> Option<Message> {
        let name = attr(m, "name").unwrap_or("").to_string();
        if name.is_empty() {
            self.err(m, "message has no name".into());
        }
        let id: u32 = self.num(m, "id", 0);
        let since_version = self.since(m, "message");
        let body = self.body(m, &name);
        Some(Message {
            name,
            id,
            description: attr(m, "description").unwrap_or("").to_string(),
            since_version,
            semantic_type: attr(m, "semanticType").map(str::to_string),
            body: body?,
        })
    }

    fn body(&mut self, n: Node<'a>, owner: &str) -> Option<Body> {
        let mut fields = Vec::new();
        let mut groups = Vec::new();
        let mut datas = Vec::new();
        let mut pos = 0usize;
        let mut ok = true;
        let mut names = HashSet::new();
        for c in n.children().filter(|c| c.is_element()) {
            let tag = c.tag_name().name();
            let cname = attr(c, "name").unwrap_or("").to_string();
            if matches!(tag, "field" | "group" | "data") && !names.insert(cname.clone()) {
                self.err(c, format!("\"{owner}\": name \"{cname}\" is used twice"));
                ok = false;
            }
            match tag {
                "field" => {
                    if !groups.is_empty() || !datas.is_empty() {
                        self.err(c, format!("\"{owner}\": field \"{cname}\" comes after a group or var data; fields must come first"));
                        ok = false;
                    }
                    match self.field(c, owner, &mut pos) {
                        Some(f) => fields.push(f),
                        None => ok = false,
                    }
                }
                "group" => {
                    if !datas.is_empty() {
                        self.err(c, format!("\"{owner}\": group \"{cname}\" comes after var data; groups must come before data"));
                        ok = false;
                    }
                    match self.group(c) {
                        Some(g) => groups.push(g),
                        None => ok = false,
                    }
                }
                "data" => match self.data(c) {
                    Some(d) => datas.push(d),
                    None => ok = false,
                },
                other => {
                    self.err(c, format!("\"{owner}\": unexpected <{other}>"));
                    ok = false;
                }
            }
        }
        let mut block_length = pos;
        if let Some(bl) = attr(n, "blockLength") {
            match bl.trim().parse::<usize>() {
                Ok(bl) if bl >= pos => block_length = bl,
                Ok(bl) => {
                    self.err(
                        n,
                        format!(
                            "\"{owner}\": blockLength {bl} is less than the fields' size {pos}"
                        ),
                    );
                    ok = false;
                }
                Err(_) => {
                    self.err(
                        n,
                        format!("\"{owner}\": blockLength \"{bl}\" is not a number"),
                    );
                    ok = false;
                }
            }
        }
        if block_length > u16::MAX as usize {
            self.err(
                n,
                format!("\"{owner}\": block length {block_length} exceeds 65535"),
            );
            ok = false;
        }
        ok.then_some(Body {
            block_length,
            fields,
            groups,
            datas,
        })
    }

    fn field(&mut self, c: Node<'a>, owner: &str, pos: &mut usize) -> Option<Field> {
        let name = attr(c, "name").unwrap_or("").to_string();
        let id: u32 = self.num(c, "id", 0);
        let since_version = self.since(c, "field");
        let Some(type_name) = attr(c, "type") else {
            self.err(c, format!("\"{owner}\": field \"{name}\" has no type"));
            return None;
        };
        let Some(mut ty) = self.resolve(type_name, c) else {
            if !self.raw.contains_key(type_name) {
                self.err(
                    c,
                    format!("\"{owner}\": field \"{name}\" has unknown type \"{type_name}\""),
                );
            }
            return None;
        };
        let mut enum_constant = None;
        let mut presence = match &ty.kind {
            TypeKind::Encoded(e) => e.presence,
            TypeKind::Enum(e) => e.presence,
            _ => Presence::Required,
        };
        if attr(c, "presence").is_some() {
            presence = self.presence(c);
        }
        match (&mut ty.kind, presence) {
            (TypeKind::Encoded(e), Presence::Constant) if e.constant.is_none() => {
                if attr(c, "valueRef").is_none() {
                    self.err(
                        c,
                        format!("\"{owner}\": constant field \"{name}\" has no valueRef"),
                    );
                    return None;
                }
                let p = e.primitive;
                let len = e.length;
                let k = self.constant_value(c, p, len, &name)?;
                if let TypeKind::Encoded(e) = &mut ty.kind {
                    e.constant = Some(k);
                    e.presence = Presence::Constant;
                }
            }
            (TypeKind::Encoded(e), p) => e.presence = p,
            (TypeKind::Enum(e), Presence::Constant) => {
                let Some(r) = attr(c, "valueRef") else {
                    self.err(
                        c,
                        format!("\"{owner}\": constant enum field \"{name}\" has no valueRef"),
                    );
                    return None;
                };
                let k = self.value_ref(c, r, &name)?;
                e.presence = Presence::Constant;
                match k {
                    Constant::EnumValue { value_name, .. }
                        if e.values.iter().any(|v| v.name == value_name) =>
                    {
                        enum_constant = Some(value_name);
                    }
                    _ => {
                        self.err(c, format!("\"{owner}\": valueRef \"{r}\" does not name a value of {type_name}"));
                        return None;
                    }
                }
            }
            (TypeKind::Enum(e), p) => e.presence = p,
            (_, Presence::Constant) => {
                self.err(c, format!("\"{owner}\": field \"{name}\" of a composite or set type cannot be constant"));
                return None;
            }
            _ => {}
        }
        let size = if presence == Presence::Constant {
            0
        } else {
            ty.size()
        };
        if size > 0 {
            if let Some(off) = attr(c, "offset") {
                match off.trim().parse::<usize>() {
                    Ok(off) if off >= *pos => *pos = off,
                    Ok(off) => {
                        self.err(c, format!("\"{owner}\": field \"{name}\" offset {off} overlaps the previous field, which ends at {pos}"));
                        return None;
                    }
                    Err(_) => {
                        self.err(
                            c,
                            format!(
                                "\"{owner}\": field \"{name}\" offset \"{off}\" is not a number"
                            ),
                        );
                        return None;
                    }
                }
            }
        }
        let offset = *pos;
        *pos += size;
        Some(Field {
            name,
            id,
            offset,
            ty,
            presence,
            since_version,
            deprecated: attr(c, "deprecated").and_then(|d| d.trim().parse().ok()),
            enum_constant,
            description: attr(c, "description").unwrap_or("").to_string(),
        })
    }

    fn group(&mut self, g: Node<'a>) -> Option<Group> {
        let name = attr(g, "name").unwrap_or("").to_string();
        let id: u32 = self.num(g, "id", 0);
        let since_version = self.since(g, "group");
        let dim_name = attr(g, "dimensionType").unwrap_or("groupSizeEncoding");
        let dimension = match self.resolve(dim_name, g) {
            Some(t) => {
                let mut good = matches!(t.kind, TypeKind::Composite(_));
                for member in ["blockLength", "numInGroup"] {
                    if composite_int_member(&t, member).is_none() {
                        good = false;
                        self.err(g, format!("group \"{name}\": dimension type \"{dim_name}\" needs an integer member \"{member}\""));
                    }
                }
                good.then_some(t)
            }
            None => {
                if !self.raw.contains_key(dim_name) {
                    self.err(
                        g,
                        format!("group \"{name}\": dimension type \"{dim_name}\" is not declared"),
                    );
                }
                None
            }
        };
        let body = self.body(g, &name);
        Some(Group {
            name,
            id,
            description: attr(g, "description").unwrap_or("").to_string(),
            since_version,
            dimension: dimension?,
            body: body?,
        })
    }

    fn data(&mut self, d: Node<'a>) -> Option<Data> {
        let name = attr(d, "name").unwrap_or("").to_string();
        let id: u32 = self.num(d, "id", 0);
        let since_version = self.since(d, "data");
        let type_name = attr(d, "type").unwrap_or("");
        let ty = match self.resolve(type_name, d) {
            Some(t) => {
                let has_len = composite_int_member(&t, "length").is_some();
                let var = match &t.kind {
                    TypeKind::Composite(c) => c.member("varData").map(
                        |m| matches!(&m.ty.kind, TypeKind::Encoded(e) if e.primitive.size() == 1),
                    ),
                    _ => None,
                };
                if !matches!(t.kind, TypeKind::Composite(_)) {
                    self.err(d, format!("data \"{name}\": type \"{type_name}\" is not a composite with length and varData"));
                    None
                } else if !has_len || var != Some(true) {
                    if !has_len {
                        self.err(d, format!("data \"{name}\": type \"{type_name}\" needs an integer member \"length\""));
                    }
                    if var != Some(true) {
                        self.err(d, format!("data \"{name}\": type \"{type_name}\" needs a single-byte member \"varData\""));
                    }
                    None
                } else {
                    Some(t)
                }
            }
            None => {
                if !self.raw.contains_key(type_name) {
                    self.err(
                        d,
                        format!("data \"{name}\": type \"{type_name}\" is not declared"),
                    );
                }
                None
            }
        };
        Some(Data {
            name,
            id,
            description: attr(d, "description").unwrap_or("").to_string(),
            since_version,
            ty: ty?,
        })
    }
}
