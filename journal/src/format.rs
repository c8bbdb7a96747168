//! The on-disk batch format: the 64-byte batch header, the 40-byte entry header, the CRC32C
//! checksum and the checks that decide whether bytes are a valid batch.
//!
//! Owns: byte layouts (little-endian, via `zerocopy`, no `unsafe`) and validation of untrusted
//! bytes. Does not own: files, positions of batches inside segments, the hash chain between
//! batches (that is [`crate::recovery`]'s and the reader's job, which know the previous batch).
//!
//! Invariants: parsing never panics on any input; a batch accepted by [`verify_batch`] has a valid
//! header, a matching checksum and entries that tile `[HEADER_SIZE, byte_length)` exactly, with
//! consecutive positions starting at `first_position`.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::{Position, BATCH_SIZE_MAX, BLOCK_SIZE, ENTRY_ALIGN, ENTRY_HEADER_SIZE, HEADER_SIZE};

/// `"TLLY"` read as a little-endian u32.
pub const MAGIC: u32 = 0x594C_4C54;
/// The only format version this crate reads and writes.
pub const FORMAT_VERSION: u16 = 1;
/// Byte offset of the `checksum` field inside the batch header (zeroed while checksumming).
pub const CHECKSUM_OFFSET: usize = 32;

/// The batch header (schema message `BatchHeader`), exactly as it lies on disk.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct BatchHeader {
    /// [`MAGIC`].
    pub magic: U32,
    /// [`FORMAT_VERSION`].
    pub format_version: U16,
    /// [`HEADER_SIZE`] (64).
    pub header_length: U16,
    /// Leader term that sealed the batch.
    pub term: U64,
    /// Position of the first entry; the batch covers `[first_position, first_position + entry_count)`.
    pub first_position: U64,
    /// Number of entries (at least one).
    pub entry_count: U32,
    /// Header plus entries, before padding to [`BLOCK_SIZE`].
    pub byte_length: U32,
    /// CRC32C of bytes `[0, byte_length)` with this field zeroed.
    pub checksum: U32,
    /// `checksum` of the previous batch of the journal (the hash chain); 0 for the first batch of
    /// a journal started at position 1.
    pub prev_checksum: U32,
    /// Leader time when the batch was sealed.
    pub timestamp_ns: U64,
    /// Must be zero.
    pub reserved1: U64,
    /// Must be zero.
    pub reserved2: U64,
}

const _: () = assert!(core::mem::size_of::<BatchHeader>() == HEADER_SIZE);
const _: () = assert!(core::mem::offset_of!(BatchHeader, checksum) == CHECKSUM_OFFSET);
const _: () = assert!(core::mem::offset_of!(BatchHeader, timestamp_ns) == 40);

/// The entry header (schema message `LogEntry`); `length` bytes of command follow, then zero
/// padding to [`ENTRY_ALIGN`].
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct EntryHeader {
    /// The entry's position (command index).
    pub position: U64,
    /// Leader time when the command was sequenced.
    pub timestamp_ns: U64,
    /// Client session that sent the command.
    pub session_id: U64,
    /// The session's sequence number for this command.
    pub client_seq: U64,
    /// Length of the command message that follows, in bytes.
    pub length: U32,
    /// Must be zero.
    pub reserved: U32,
}

const _: () = assert!(core::mem::size_of::<EntryHeader>() == ENTRY_HEADER_SIZE);
const _: () = assert!(core::mem::offset_of!(EntryHeader, length) == 32);

/// Why bytes are not a valid batch. The text names the failed check, TigerBeetle-style.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatError {
    /// The 64-byte header fails a structural check.
    HeaderInvalid(&'static str),
    /// The header is well formed but the checksum over the batch bytes does not match.
    ChecksumMismatch {
        /// Checksum stored in the header.
        stored: u32,
        /// Checksum computed over the bytes.
        computed: u32,
    },
    /// Checksum matches but the entries do not tile the batch (a writer bug, not a torn write).
    EntriesInvalid(&'static str),
}

impl core::fmt::Display for FormatError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FormatError::HeaderInvalid(why) => write!(f, "batch header invalid: {why}"),
            FormatError::ChecksumMismatch { stored, computed } => write!(
                f,
                "batch checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ),
            FormatError::EntriesInvalid(why) => write!(f, "batch entries invalid: {why}"),
        }
    }
}

impl std::error::Error for FormatError {}

/// True when every byte is zero. Folds fixed-size chunks so the compiler vectorises it (recovery
/// checks whole segments of zeros).
pub fn is_zero(bytes: &[u8]) -> bool {
    bytes
        .chunks(512)
        .all(|chunk| chunk.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Rounds `size` up to a multiple of [`BLOCK_SIZE`].
pub const fn padded_size(size: usize) -> usize {
    size.div_ceil(BLOCK_SIZE) * BLOCK_SIZE
}

/// Size an entry with a `command_size`-byte command takes in a batch, padding included.
pub const fn entry_size(command_size: usize) -> usize {
    (ENTRY_HEADER_SIZE + command_size).div_ceil(ENTRY_ALIGN) * ENTRY_ALIGN
}

/// Reads the header at the start of `bytes` and checks its structure (not the checksum).
///
/// # Errors
/// [`FormatError::HeaderInvalid`] naming the first failed check.
pub fn parse_header(bytes: &[u8]) -> Result<BatchHeader, FormatError> {
    let Some(header_bytes) = bytes.get(..HEADER_SIZE) else {
        return Err(FormatError::HeaderInvalid(
            "bytes shorter than the 64-byte header",
        ));
    };
    let header = BatchHeader::read_from_bytes(header_bytes)
        .map_err(|_| FormatError::HeaderInvalid("header bytes unreadable"))?;
    header_invalid(&header).map_or(Ok(header), |why| Err(FormatError::HeaderInvalid(why)))
}

/// Returns the first structural check `header` fails, or `None`.
pub fn header_invalid(header: &BatchHeader) -> Option<&'static str> {
    let byte_length = header.byte_length.get() as usize;
    let entry_count = u64::from(header.entry_count.get());
    if header.magic.get() != MAGIC {
        return Some("magic != 0x594C4C54");
    }
    if header.format_version.get() != FORMAT_VERSION {
        return Some("format_version != 1");
    }
    if header.header_length.get() as usize != HEADER_SIZE {
        return Some("header_length != 64");
    }
    if header.reserved1.get() != 0 || header.reserved2.get() != 0 {
        return Some("reserved != 0");
    }
    if entry_count == 0 {
        return Some("entry_count == 0");
    }
    if header.first_position.get() == 0 {
        return Some("first_position == 0");
    }
    if header
        .first_position
        .get()
        .checked_add(entry_count)
        .is_none()
    {
        return Some("first_position + entry_count overflows");
    }
    if byte_length < HEADER_SIZE + ENTRY_HEADER_SIZE {
        return Some("byte_length < header + one entry header");
    }
    if byte_length > BATCH_SIZE_MAX {
        return Some("byte_length > BATCH_SIZE_MAX");
    }
    if entry_count > ((byte_length - HEADER_SIZE) / ENTRY_HEADER_SIZE) as u64 {
        return Some("entry_count > entries that fit in byte_length");
    }
    None
}

/// CRC32C of `batch` (`[0, byte_length)`) with the checksum field taken as zero.
///
/// `batch` must be at least [`HEADER_SIZE`] long (checked by the callers, which parse first).
pub fn compute_checksum(batch: &[u8]) -> u32 {
    assert!(batch.len() >= HEADER_SIZE);
    let crc = crc32c::crc32c(&batch[..CHECKSUM_OFFSET]);
    let crc = crc32c::crc32c_append(crc, &[0u8; 4]);
    crc32c::crc32c_append(crc, &batch[CHECKSUM_OFFSET + 4..])
}

/// Checks that `bytes` starts with a complete valid batch: header, checksum, entry framing.
/// Returns the header. `bytes` may extend past the batch (padding, following batches).
///
/// # Errors
/// The first failed check, as a [`FormatError`].
pub fn verify_batch(bytes: &[u8]) -> Result<BatchHeader, FormatError> {
    let header = parse_header(bytes)?;
    let byte_length = header.byte_length.get() as usize;
    let Some(batch) = bytes.get(..byte_length) else {
        return Err(FormatError::HeaderInvalid(
            "byte_length beyond the bytes available",
        ));
    };
    let computed = compute_checksum(batch);
    if computed != header.checksum.get() {
        return Err(FormatError::ChecksumMismatch {
            stored: header.checksum.get(),
            computed,
        });
    }
    let mut entries = Entries::new(&header, batch);
    let mut count = 0u32;
    for entry in &mut entries {
        let entry = entry.map_err(FormatError::EntriesInvalid)?;
        debug_assert_eq!(
            entry.position,
            header.first_position.get() + u64::from(count)
        );
        count += 1;
    }
    if count != header.entry_count.get() {
        return Err(FormatError::EntriesInvalid(
            "entries end before entry_count",
        ));
    }
    Ok(header)
}

/// One entry of a batch, borrowed from the batch bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The entry's position.
    pub position: Position,
    /// Leader time when the command was sequenced.
    pub timestamp_ns: u64,
    /// Client session that sent the command.
    pub session_id: u64,
    /// The session's sequence number for this command.
    pub client_seq: u64,
    /// The command message bytes (without padding).
    pub command: &'a [u8],
}

/// Iterator over the entries of a batch whose header was parsed. Yields an error (and then
/// stops) when the framing is wrong; never panics.
#[derive(Clone, Debug)]
pub struct Entries<'a> {
    batch: &'a [u8],
    offset: usize,
    next_position: Position,
    remaining: u32,
    failed: bool,
}

impl<'a> Entries<'a> {
    /// Entries of `batch` (`[0, byte_length)` of a batch with `header`).
    pub fn new(header: &BatchHeader, batch: &'a [u8]) -> Self {
        Entries {
            batch,
            offset: HEADER_SIZE,
            next_position: header.first_position.get(),
            remaining: header.entry_count.get(),
            failed: false,
        }
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>, &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.remaining == 0 {
            if self.offset != self.batch.len() {
                self.failed = true;
                return Some(Err("bytes left after the last entry"));
            }
            return None;
        }
        let result = self.parse_next();
        if result.is_err() {
            self.failed = true;
        }
        Some(result)
    }
}

impl<'a> Entries<'a> {
    fn parse_next(&mut self) -> Result<Entry<'a>, &'static str> {
        let rest = &self.batch[self.offset..];
        let (header, _) =
            EntryHeader::read_from_prefix(rest).map_err(|_| "entry header beyond byte_length")?;
        if header.position.get() != self.next_position {
            return Err("entry position not consecutive");
        }
        if header.reserved.get() != 0 {
            return Err("entry reserved != 0");
        }
        let length = header.length.get() as usize;
        let size = entry_size(length);
        if size > rest.len() {
            return Err("entry length beyond byte_length");
        }
        if rest[ENTRY_HEADER_SIZE + length..size]
            .iter()
            .any(|&b| b != 0)
        {
            return Err("entry padding != 0");
        }
        self.offset += size;
        self.next_position += 1;
        self.remaining -= 1;
        Ok(Entry {
            position: header.position.get(),
            timestamp_ns: header.timestamp_ns.get(),
            session_id: header.session_id.get(),
            client_seq: header.client_seq.get(),
            command: &rest[ENTRY_HEADER_SIZE..ENTRY_HEADER_SIZE + length],
        })
    }
}
