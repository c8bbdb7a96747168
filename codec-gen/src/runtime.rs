//! The small runtime that generated codecs use: error types, the message header value, the
//! encoder's write cursor and bounds-checked integer and var data helpers.
//!
//! Owns: nothing stateful. Every function here checks lengths and returns an error value; none
//! of them panics on any input. Generated code refers to these items by full path
//! (`codec_gen::runtime::...`) so that schema type names can never collide with them.

use core::fmt;

/// The standard message header's values (`blockLength`, `templateId`, `schemaId`, `version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Header {
    pub block_length: u16,
    pub template_id: u16,
    pub schema_id: u16,
    pub version: u16,
}

/// Why bytes could not be decoded. Every variant names the byte offset (from the start of the
/// buffer that was wrapped) where the problem was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The buffer ends before `needed` bytes starting at `offset`; only `available` remain.
    Truncated {
        offset: usize,
        needed: usize,
        available: usize,
    },
    /// The header's template id is not the one of the decoder that was asked for.
    WrongTemplateId {
        offset: usize,
        expected: u16,
        actual: u16,
    },
    /// The header names a template id this schema does not have.
    UnknownTemplateId { offset: usize, template_id: u16 },
    /// The header's schema id is not this schema's.
    WrongSchemaId {
        offset: usize,
        expected: u16,
        actual: u16,
    },
    /// A block length (header or group dimension) is shorter than the fields every version has.
    BlockLengthTooShort {
        offset: usize,
        block_length: usize,
        minimum: usize,
    },
    /// A header field does not fit the type this runtime uses for it.
    HeaderValueTooLarge { offset: usize, value: u64 },
}

impl DecodeError {
    /// The byte offset where the problem was found.
    pub fn offset(&self) -> usize {
        match *self {
            DecodeError::Truncated { offset, .. }
            | DecodeError::WrongTemplateId { offset, .. }
            | DecodeError::UnknownTemplateId { offset, .. }
            | DecodeError::WrongSchemaId { offset, .. }
            | DecodeError::BlockLengthTooShort { offset, .. }
            | DecodeError::HeaderValueTooLarge { offset, .. } => offset,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DecodeError::Truncated {
                offset,
                needed,
                available,
            } => write!(
                f,
                "at byte {offset}: truncated: needs {needed} bytes, only {available} remain"
            ),
            DecodeError::WrongTemplateId {
                offset,
                expected,
                actual,
            } => write!(
                f,
                "at byte {offset}: template id {actual}, expected {expected}"
            ),
            DecodeError::UnknownTemplateId {
                offset,
                template_id,
            } => write!(f, "at byte {offset}: unknown template id {template_id}"),
            DecodeError::WrongSchemaId {
                offset,
                expected,
                actual,
            } => write!(f, "at byte {offset}: schema id {actual}, expected {expected}"),
            DecodeError::BlockLengthTooShort {
                offset,
                block_length,
                minimum,
            } => write!(
                f,
                "at byte {offset}: block length {block_length} is shorter than the minimum {minimum}"
            ),
            DecodeError::HeaderValueTooLarge { offset, value } => {
                write!(f, "at byte {offset}: header value {value} is out of range")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The buffer is too short: writing needed `needed` bytes in total, it has `available`.
    BufferTooShort { needed: usize, available: usize },
    /// A group or var data was written after a part that comes later in the message.
    OutOfOrder { part: &'static str },
    /// A group already holds as many entries as its dimension can count.
    TooManyEntries { group: &'static str, max: u64 },
    /// Var data longer than its length field allows.
    TooLong {
        field: &'static str,
        length: usize,
        max: u64,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EncodeError::BufferTooShort { needed, available } => {
                write!(f, "buffer too short: needs {needed} bytes, has {available}")
            }
            EncodeError::OutOfOrder { part } => write!(
                f,
                "\"{part}\" written after a later group or var data (SBE order is fixed)"
            ),
            EncodeError::TooManyEntries { group, max } => {
                write!(
                    f,
                    "group \"{group}\" already has the maximum of {max} entries"
                )
            }
            EncodeError::TooLong { field, length, max } => {
                write!(
                    f,
                    "var data \"{field}\" has {length} bytes, the maximum is {max}"
                )
            }
        }
    }
}

impl std::error::Error for EncodeError {}

/// A raw value that names no enum value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownValue(pub i128);

impl fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is not a value of this enum", self.0)
    }
}

impl std::error::Error for UnknownValue {}

/// `len` bytes of `buf` at `offset`, or [`DecodeError::Truncated`].
#[inline]
pub fn slice(buf: &[u8], offset: usize, len: usize) -> Result<&[u8], DecodeError> {
    match offset.checked_add(len).and_then(|end| buf.get(offset..end)) {
        Some(s) => Ok(s),
        None => Err(DecodeError::Truncated {
            offset,
            needed: len,
            available: buf.len().saturating_sub(offset),
        }),
    }
}

/// Reads an unsigned integer of `width` bytes (1, 2, 4 or 8) at `offset`.
#[inline]
pub fn read_uint(
    buf: &[u8],
    offset: usize,
    width: usize,
    big_endian: bool,
) -> Result<u64, DecodeError> {
    let bytes = slice(buf, offset, width)?;
    let mut v: u64 = 0;
    if big_endian {
        for &b in bytes {
            v = (v << 8) | u64::from(b);
        }
    } else {
        for &b in bytes.iter().rev() {
            v = (v << 8) | u64::from(b);
        }
    }
    Ok(v)
}

/// Writes the low `width` bytes of `v` at `offset`; does nothing if they do not fit (callers
/// only write into regions they sized themselves).
#[inline]
pub fn write_uint(buf: &mut [u8], offset: usize, width: usize, big_endian: bool, v: u64) {
    let Some(dst) = offset
        .checked_add(width)
        .and_then(|end| buf.get_mut(offset..end))
    else {
        return;
    };
    for (i, b) in dst.iter_mut().enumerate() {
        let shift = if big_endian {
            (width - 1 - i) * 8
        } else {
            i * 8
        };
        *b = (v >> shift) as u8;
    }
}

/// Reads var data at `offset`: a `length_width`-byte length at `offset + length_offset`, the
/// bytes at `offset + header_size`. Returns the bytes and the offset just after them.
#[inline]
pub fn read_var_data(
    buf: &[u8],
    offset: usize,
    length_offset: usize,
    length_width: usize,
    header_size: usize,
    big_endian: bool,
) -> Result<(&[u8], usize), DecodeError> {
    let len = read_uint(buf, offset + length_offset, length_width, big_endian)?;
    let start = offset + header_size;
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    let data = slice(buf, start, len)?;
    Ok((data, start + len))
}

/// A typed view of `T` at `offset` in `block`, if the block is long enough.
#[inline]
pub fn view_at<T>(block: &[u8], offset: usize) -> Option<&T>
where
    T: zerocopy::FromBytes + zerocopy::KnownLayout + zerocopy::Immutable,
{
    let tail = block.get(offset..)?;
    T::ref_from_prefix(tail).ok().map(|(t, _)| t)
}

/// A typed view of the start of `block`, or [`DecodeError::Truncated`] at `offset`.
#[inline]
pub fn view_prefix<T>(block: &[u8], offset: usize) -> Result<&T, DecodeError>
where
    T: zerocopy::FromBytes + zerocopy::KnownLayout + zerocopy::Immutable,
{
    match T::ref_from_prefix(block) {
        Ok((t, _)) => Ok(t),
        Err(_) => Err(DecodeError::Truncated {
            offset,
            needed: core::mem::size_of::<T>(),
            available: block.len(),
        }),
    }
}

/// A typed mutable view of exactly `bytes`, or [`EncodeError::BufferTooShort`].
#[inline]
pub fn view_mut<T>(bytes: &mut [u8]) -> Result<&mut T, EncodeError>
where
    T: zerocopy::FromBytes + zerocopy::IntoBytes + zerocopy::KnownLayout,
{
    let available = bytes.len();
    match T::mut_from_prefix(bytes) {
        Ok((t, _)) => Ok(t),
        Err(_) => Err(EncodeError::BufferTooShort {
            needed: core::mem::size_of::<T>(),
            available,
        }),
    }
}

/// The encoder's cursor over the caller's buffer: hands out consecutive regions, remembers how
/// many bytes were written, and keeps the first error seen by an encoder that could not return
/// it (an entry encoder completing its empty groups when dropped).
#[derive(Debug)]
pub struct WriteBuf<'a> {
    rest: &'a mut [u8],
    written: usize,
    error: Option<EncodeError>,
}

impl<'a> WriteBuf<'a> {
    /// A cursor at the start of `buf`.
    #[inline]
    pub fn new(buf: &'a mut [u8]) -> Self {
        WriteBuf {
            rest: buf,
            written: 0,
            error: None,
        }
    }

    /// Takes the next `len` bytes, zeroed.
    #[inline]
    pub fn take(&mut self, len: usize) -> Result<&'a mut [u8], EncodeError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.rest.len() < len {
            return Err(EncodeError::BufferTooShort {
                needed: self.written + len,
                available: self.written + self.rest.len(),
            });
        }
        let rest = core::mem::take(&mut self.rest);
        let (head, tail) = rest.split_at_mut(len);
        self.rest = tail;
        self.written += len;
        head.fill(0);
        Ok(head)
    }

    /// Bytes written so far.
    #[inline]
    pub fn written(&self) -> usize {
        self.written
    }

    /// Records an error for [`WriteBuf::check`] (the first one wins).
    #[inline]
    pub fn fail(&mut self, e: EncodeError) {
        self.error.get_or_insert(e);
    }

    /// The first recorded error, if any.
    #[inline]
    pub fn check(&self) -> Result<(), EncodeError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Writes var data: a length prefix of `header_size` bytes (length at `length_offset`,
    /// `length_width` bytes wide) and the bytes.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn put_var_data(
        &mut self,
        data: &[u8],
        length_offset: usize,
        length_width: usize,
        header_size: usize,
        max: u64,
        big_endian: bool,
        field: &'static str,
    ) -> Result<(), EncodeError> {
        if data.len() as u64 > max {
            return Err(EncodeError::TooLong {
                field,
                length: data.len(),
                max,
            });
        }
        let head = self.take(header_size)?;
        write_uint(
            head,
            length_offset,
            length_width,
            big_endian,
            data.len() as u64,
        );
        let body = self.take(data.len())?;
        body.copy_from_slice(data);
        Ok(())
    }
}
