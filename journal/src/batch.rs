//! Building batches in place in aligned buffers, and sealed batches ready to be written.
//!
//! Owns: [`BatchBuilder`] (appends entries into a [`BATCH_SIZE_MAX`] aligned buffer) and
//! [`SealedBatch`] (the same buffer with a header whose checksum and chain link are set). The
//! builder → sealed → builder cycle reuses one allocation, so a caller that keeps two of them
//! can fill the next batch while the previous one is being written (group commit with two
//! buffers): no allocation per batch.
//!
//! Invariants: bytes `[byte_length, padded_size(byte_length))` of a buffer are zero; a
//! [`SealedBatch`] always holds bytes that [`crate::format::verify_batch`] accepts.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::IntoBytes;

use crate::buffer::AlignedBuf;
use crate::format::{
    compute_checksum, entry_size, padded_size, verify_batch, BatchHeader, Entries, EntryHeader,
    FormatError, FORMAT_VERSION, MAGIC,
};
use crate::{Position, BATCH_SIZE_MAX, COMMAND_SIZE_MAX, ENTRY_HEADER_SIZE, HEADER_SIZE};

/// The per-entry fields the caller supplies; the position is assigned by the builder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryMeta {
    /// Leader time when the command was sequenced.
    pub timestamp_ns: u64,
    /// Client session that sent the command.
    pub session_id: u64,
    /// The session's sequence number for this command.
    pub client_seq: u64,
}

/// Why [`BatchBuilder::try_append`] refused an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendRefusal {
    /// The entry does not fit in what is left of this batch: seal it and start the next one.
    Full,
    /// The command is longer than [`COMMAND_SIZE_MAX`] and fits in no batch.
    CommandTooLarge,
}

impl core::fmt::Display for AppendRefusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AppendRefusal::Full => write!(f, "batch full: seal it and start the next one"),
            AppendRefusal::CommandTooLarge => {
                write!(
                    f,
                    "command longer than COMMAND_SIZE_MAX ({COMMAND_SIZE_MAX} bytes)"
                )
            }
        }
    }
}

impl std::error::Error for AppendRefusal {}

/// A batch being filled: entries are written in place into an aligned buffer of
/// [`BATCH_SIZE_MAX`] bytes, after room for the header.
#[derive(Debug)]
pub struct BatchBuilder {
    buf: AlignedBuf,
    first_position: Position,
    entry_count: u32,
    byte_length: usize,
}

impl BatchBuilder {
    /// An empty batch whose first entry will get `first_position`. Allocates once.
    ///
    /// # Panics
    /// If `first_position` is 0 (positions start at 1; a caller bug).
    pub fn new(first_position: Position) -> Self {
        let mut builder = BatchBuilder {
            buf: AlignedBuf::zeroed(BATCH_SIZE_MAX),
            first_position: 1,
            entry_count: 0,
            byte_length: HEADER_SIZE,
        };
        builder.reset(first_position);
        builder
    }

    /// Empties the batch and restarts it at `first_position`, keeping the buffer.
    ///
    /// # Panics
    /// If `first_position` is 0.
    pub fn reset(&mut self, first_position: Position) {
        assert!(first_position >= 1, "positions start at 1");
        let used = padded_size(self.byte_length);
        self.buf.as_mut_slice()[..used].fill(0);
        self.first_position = first_position;
        self.entry_count = 0;
        self.byte_length = HEADER_SIZE;
    }

    /// Position the first entry gets.
    pub fn first_position(&self) -> Position {
        self.first_position
    }

    /// Position the next appended entry will get.
    pub fn next_position(&self) -> Position {
        self.first_position + u64::from(self.entry_count)
    }

    /// Entries appended so far.
    pub fn entry_count(&self) -> u32 {
        self.entry_count
    }

    /// True when no entry has been appended.
    pub fn is_empty(&self) -> bool {
        self.entry_count == 0
    }

    /// Header plus entries so far, in bytes.
    pub fn byte_length(&self) -> usize {
        self.byte_length
    }

    /// Appends one entry and returns its position.
    ///
    /// # Errors
    /// [`AppendRefusal::Full`] when it does not fit (the batch is unchanged),
    /// [`AppendRefusal::CommandTooLarge`] when it would not fit even in an empty batch.
    pub fn try_append(
        &mut self,
        meta: EntryMeta,
        command: &[u8],
    ) -> Result<Position, AppendRefusal> {
        if command.len() > COMMAND_SIZE_MAX {
            return Err(AppendRefusal::CommandTooLarge);
        }
        let size = entry_size(command.len());
        if self.byte_length + size > BATCH_SIZE_MAX || self.entry_count == u32::MAX {
            return Err(AppendRefusal::Full);
        }
        let position = self.next_position();
        let header = EntryHeader {
            position: U64::new(position),
            timestamp_ns: U64::new(meta.timestamp_ns),
            session_id: U64::new(meta.session_id),
            client_seq: U64::new(meta.client_seq),
            length: U32::new(command.len() as u32),
            reserved: U32::new(0),
        };
        let at = self.byte_length;
        let bytes = self.buf.as_mut_slice();
        bytes[at..at + ENTRY_HEADER_SIZE].copy_from_slice(header.as_bytes());
        bytes[at + ENTRY_HEADER_SIZE..at + ENTRY_HEADER_SIZE + command.len()]
            .copy_from_slice(command);
        // Padding is already zero: the buffer is zeroed on reset and only grows.
        self.byte_length += size;
        self.entry_count += 1;
        Ok(position)
    }

    /// Writes the header, computes the checksum, and returns the batch ready for
    /// [`crate::Journal::append`]. `prev_checksum` is the checksum of the batch before it in the
    /// journal ([`crate::Journal::last_checksum`], or the previous [`SealedBatch::checksum`]).
    ///
    /// # Panics
    /// If the batch is empty (sealing nothing is a caller bug).
    pub fn seal(mut self, term: u64, timestamp_ns: u64, prev_checksum: u32) -> SealedBatch {
        assert!(self.entry_count > 0, "sealing an empty batch");
        let mut header = BatchHeader {
            magic: U32::new(MAGIC),
            format_version: U16::new(FORMAT_VERSION),
            header_length: U16::new(HEADER_SIZE as u16),
            term: U64::new(term),
            first_position: U64::new(self.first_position),
            entry_count: U32::new(self.entry_count),
            byte_length: U32::new(self.byte_length as u32),
            checksum: U32::new(0),
            prev_checksum: U32::new(prev_checksum),
            timestamp_ns: U64::new(timestamp_ns),
            reserved1: U64::new(0),
            reserved2: U64::new(0),
        };
        let bytes = self.buf.as_mut_slice();
        bytes[..HEADER_SIZE].copy_from_slice(header.as_bytes());
        let checksum = compute_checksum(&bytes[..self.byte_length]);
        header.checksum = U32::new(checksum);
        bytes[..HEADER_SIZE].copy_from_slice(header.as_bytes());
        SealedBatch {
            buf: self.buf,
            header,
        }
    }
}

/// A complete batch with its checksum and chain link set, in an aligned buffer.
#[derive(Debug)]
pub struct SealedBatch {
    buf: AlignedBuf,
    header: BatchHeader,
}

impl SealedBatch {
    /// Copies a batch received as bytes (e.g. from the multicast log) into an aligned buffer,
    /// after checking it. `bytes` may carry padding after `byte_length`.
    ///
    /// # Errors
    /// The [`FormatError`] of the first failed check.
    pub fn from_bytes(bytes: &[u8]) -> Result<SealedBatch, FormatError> {
        let header = verify_batch(bytes)?;
        let mut buf = AlignedBuf::zeroed(BATCH_SIZE_MAX);
        let length = header.byte_length.get() as usize;
        buf.as_mut_slice()[..length].copy_from_slice(&bytes[..length]);
        Ok(SealedBatch { buf, header })
    }

    /// Like [`SealedBatch::from_bytes`] but reusing this batch's buffer. On error `self` is
    /// unchanged.
    ///
    /// # Errors
    /// The [`FormatError`] of the first failed check.
    pub fn copy_from(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        let header = verify_batch(bytes)?;
        let old_used = padded_size(self.byte_length());
        let length = header.byte_length.get() as usize;
        let slice = self.buf.as_mut_slice();
        slice[..old_used].fill(0);
        slice[..length].copy_from_slice(&bytes[..length]);
        self.header = header;
        Ok(())
    }

    /// Turns the buffer back into an empty builder starting at `first_position`.
    pub fn into_builder(self, first_position: Position) -> BatchBuilder {
        let mut builder = BatchBuilder {
            buf: self.buf,
            first_position: 1,
            entry_count: 0,
            byte_length: self.header.byte_length.get() as usize,
        };
        builder.reset(first_position);
        builder
    }

    /// The header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// This batch's checksum (the next batch's `prev_checksum`).
    pub fn checksum(&self) -> u32 {
        self.header.checksum.get()
    }

    /// The previous batch's checksum, as sealed.
    pub fn prev_checksum(&self) -> u32 {
        self.header.prev_checksum.get()
    }

    /// Position of the first entry.
    pub fn first_position(&self) -> Position {
        self.header.first_position.get()
    }

    /// Position of the last entry.
    pub fn last_position(&self) -> Position {
        self.first_position() + u64::from(self.header.entry_count.get()) - 1
    }

    /// Leader term that sealed the batch.
    pub fn term(&self) -> u64 {
        self.header.term.get()
    }

    /// Header plus entries (`[0, byte_length)`): the bytes sent on the multicast log.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf.as_slice()[..self.byte_length()]
    }

    /// Header plus entries (`[0, byte_length)`) in bytes.
    pub fn byte_length(&self) -> usize {
        self.header.byte_length.get() as usize
    }

    /// The bytes written to disk: the batch padded with zeros to whole blocks; aligned.
    pub(crate) fn padded_bytes(&self) -> &[u8] {
        &self.buf.as_slice()[..padded_size(self.byte_length())]
    }

    /// The entries, in position order.
    pub fn entries(&self) -> impl Iterator<Item = crate::Entry<'_>> {
        // A sealed batch passed verify_batch or was built by the builder: framing is valid.
        Entries::new(&self.header, self.as_bytes()).map_while(Result::ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(n: u64) -> EntryMeta {
        EntryMeta {
            timestamp_ns: 1000 + n,
            session_id: 7,
            client_seq: n,
        }
    }

    #[test]
    fn a_sealed_batch_verifies_and_yields_its_entries_in_order() {
        let mut builder = BatchBuilder::new(5);
        assert_eq!(builder.try_append(meta(1), b"hello"), Ok(5));
        assert_eq!(builder.try_append(meta(2), b""), Ok(6));
        assert_eq!(builder.try_append(meta(3), &[9u8; 17]), Ok(7));
        let sealed = builder.seal(3, 99, 0xABCD);
        let header = verify_batch(sealed.padded_bytes()).expect("valid");
        assert_eq!(header.entry_count.get(), 3);
        assert_eq!(sealed.last_position(), 7);
        assert_eq!(sealed.byte_length(), HEADER_SIZE + 48 + 40 + 64);
        let entries: Vec<_> = sealed.entries().collect();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].command, b"hello");
        assert_eq!(entries[1].command, b"");
        assert_eq!(entries[2].position, 7);
        assert_eq!(entries[2].client_seq, 3);
    }

    #[test]
    fn a_full_batch_refuses_the_entry_and_stays_unchanged() {
        let mut builder = BatchBuilder::new(1);
        let command = vec![1u8; 1000];
        let mut appended = 0;
        while builder.try_append(meta(appended), &command).is_ok() {
            appended += 1;
        }
        let length = builder.byte_length();
        assert_eq!(
            builder.try_append(meta(0), &command),
            Err(AppendRefusal::Full)
        );
        assert_eq!(builder.byte_length(), length);
        assert!(length + entry_size(1000) > BATCH_SIZE_MAX);
        let too_large = vec![0u8; COMMAND_SIZE_MAX + 1];
        assert_eq!(
            builder.try_append(meta(0), &too_large),
            Err(AppendRefusal::CommandTooLarge)
        );
    }

    #[test]
    fn a_reused_buffer_carries_no_bytes_from_the_previous_batch() {
        let mut builder = BatchBuilder::new(1);
        builder.try_append(meta(1), &[0xFF; 300]).expect("fits");
        let sealed = builder.seal(1, 1, 0);
        let mut builder = sealed.into_builder(2);
        builder.try_append(meta(2), &[0xEE; 3]).expect("fits");
        let sealed = builder.seal(1, 2, 1);
        let padded = sealed.padded_bytes();
        assert!(padded[sealed.byte_length()..].iter().all(|&b| b == 0));
        assert!(verify_batch(padded).is_ok());
    }

    #[test]
    fn bytes_from_the_wire_are_checked_before_they_are_accepted() {
        let mut builder = BatchBuilder::new(1);
        builder.try_append(meta(1), b"abc").expect("fits");
        let sealed = builder.seal(1, 1, 0);
        let mut bytes = sealed.as_bytes().to_vec();
        assert_eq!(
            SealedBatch::from_bytes(&bytes).expect("valid").checksum(),
            sealed.checksum()
        );
        bytes[HEADER_SIZE + 41] ^= 1;
        assert!(matches!(
            SealedBatch::from_bytes(&bytes),
            Err(FormatError::ChecksumMismatch { .. })
        ));
    }
}
