//! Reading a journal: batches and entries from any position, for replay, catch-up and
//! `tally log dump`, including on a live journal another process is writing.
//!
//! Owns: read-only, buffered file handles (no lock, no O_DIRECT: the kernel keeps the page
//! cache coherent with the writer's direct writes) and its own copy of the chain state.
//!
//! Invariants: every batch returned passed [`crate::format::verify_batch`] and continues the
//! batch before it (position, `prev_checksum`); the reader never moves past a block it could
//! not verify, so a partially written tail is read again on the next call, and it reports the
//! tail (`Ok(None)`) rather than guessing. Telling a torn tail from corruption is recovery's job
//! ([`crate::Journal::open`]), not the reader's.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{
    is_zero, padded_size, parse_header, verify_batch, BatchHeader, Entries, Entry,
};
use crate::recovery::{LastBatch, RefuseReason};
use crate::segment;
use crate::{Position, BATCH_SIZE_MAX, BLOCK_SIZE};

/// One verified batch, borrowed from the reader's buffer.
#[derive(Clone, Copy, Debug)]
pub struct BatchView<'a> {
    header: BatchHeader,
    bytes: &'a [u8],
    segment_index: u64,
    offset: u64,
}

impl<'a> BatchView<'a> {
    /// The header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// Position of the first entry.
    pub fn first_position(&self) -> Position {
        self.header.first_position.get()
    }

    /// Position of the last entry.
    pub fn last_position(&self) -> Position {
        self.first_position() + u64::from(self.header.entry_count.get()) - 1
    }

    /// The batch's checksum.
    pub fn checksum(&self) -> u32 {
        self.header.checksum.get()
    }

    /// Header plus entries (`[0, byte_length)`): exactly the bytes of the multicast log.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Index of the segment file holding it.
    pub fn segment_index(&self) -> u64 {
        self.segment_index
    }

    /// Byte offset in that segment.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// All entries, in position order.
    pub fn entries(&self) -> impl Iterator<Item = Entry<'a>> {
        // Verified by the reader: the framing is valid, so no entry is an error.
        Entries::new(&self.header, self.bytes).map_while(std::result::Result::ok)
    }

    /// Entries at or after `position`.
    pub fn entries_from(&self, position: Position) -> impl Iterator<Item = Entry<'a>> {
        self.entries().filter(move |e| e.position >= position)
    }
}

/// Reads batches in order from any position. Use one per thread; it holds a
/// [`BATCH_SIZE_MAX`] buffer.
#[derive(Debug)]
pub struct JournalReader {
    dir: PathBuf,
    segment_size: u64,
    segments: Vec<u64>,
    current: Option<(u64, File)>,
    offset: u64,
    last: Option<LastBatch>,
    target: Position,
    buf: Vec<u8>,
}

enum Read {
    Batch(BatchHeader),
    Zero,
    Unverified,
}

impl JournalReader {
    /// A reader of the journal in `dir`, positioned at its first batch. Takes no lock.
    ///
    /// # Errors
    /// I/O errors; [`Error::MissingSegment`].
    pub fn open(dir: impl AsRef<Path>) -> Result<JournalReader> {
        let mut reader = JournalReader {
            dir: dir.as_ref().to_path_buf(),
            segment_size: 0,
            segments: Vec::new(),
            current: None,
            offset: 0,
            last: None,
            target: 0,
            buf: vec![0u8; BATCH_SIZE_MAX],
        };
        reader.refresh()?;
        if let Some(&first) = reader.segments.first() {
            reader.open_segment(first)?;
        }
        Ok(reader)
    }

    fn refresh(&mut self) -> Result<()> {
        let listing = segment::list(&self.dir)?;
        segment::check_contiguous(&self.dir, &listing.segments)?;
        self.segments = listing.segments;
        Ok(())
    }

    fn open_segment(&mut self, index: u64) -> Result<()> {
        let path = segment::segment_path(&self.dir, index);
        let file = File::open(&path).map_err(|e| Error::io("open", &path, e))?;
        let length = file
            .metadata()
            .map_err(|e| Error::io("stat", &path, e))?
            .len();
        if self.segment_size == 0 {
            self.segment_size = length;
        }
        if length != self.segment_size || length % BLOCK_SIZE as u64 != 0 {
            return Err(Error::SegmentSizeMismatch {
                path,
                length,
                expected: self.segment_size,
            });
        }
        self.current = Some((index, file));
        self.offset = 0;
        Ok(())
    }

    /// Positions the reader so that the next batch returned is the one holding `position`
    /// (or, if `position` is not written yet, the batch that will hold it).
    ///
    /// # Errors
    /// [`Error::PositionRetained`] if `position` is before the first batch still present;
    /// I/O errors.
    pub fn seek(&mut self, position: Position) -> Result<()> {
        self.refresh()?;
        let mut chosen = None;
        let mut first_available = None;
        for &index in &self.segments {
            let path = segment::segment_path(&self.dir, index);
            let file = File::open(&path).map_err(|e| Error::io("open", &path, e))?;
            let mut block = [0u8; crate::HEADER_SIZE];
            file.read_exact_at(&mut block, 0)
                .map_err(|e| Error::io("read", &path, e))?;
            let Ok(header) = parse_header(&block) else {
                break;
            };
            let first = header.first_position.get();
            first_available.get_or_insert(first);
            if first > position {
                break;
            }
            chosen = Some(index);
        }
        match (chosen, first_available) {
            (Some(index), _) => self.open_segment(index)?,
            (None, Some(first)) => {
                return Err(Error::PositionRetained {
                    position,
                    first_available: Some(first),
                })
            }
            (None, None) => match self.segments.first() {
                Some(&first) => self.open_segment(first)?,
                None => self.current = None,
            },
        }
        self.last = None;
        self.target = position;
        Ok(())
    }

    /// The next batch (at or after the position given to [`JournalReader::seek`]), or
    /// `Ok(None)` at the tail: unwritten space, or a batch not (yet) completely written. Call
    /// again later to continue from the same place.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when a verified batch does not continue the previous one; I/O errors.
    pub fn next_batch(&mut self) -> Result<Option<BatchView<'_>>> {
        loop {
            if self.current.is_none() {
                self.refresh()?;
                match self.segments.first() {
                    Some(&first) => self.open_segment(first)?,
                    None => return Ok(None),
                }
            }
            let Some((index, _)) = &self.current else {
                return Ok(None);
            };
            let index = *index;
            let read = if self.offset < self.segment_size {
                self.read_at_offset()?
            } else {
                Read::Zero
            };
            let header = match read {
                Read::Batch(header) => header,
                Read::Unverified => return Ok(None),
                Read::Zero => {
                    // Rest of this segment unused if the next segment continues the chain.
                    if !self.segments.contains(&(index + 1)) {
                        self.refresh()?;
                    }
                    if !self.segments.contains(&(index + 1))
                        || !self.next_segment_continues(index + 1)?
                    {
                        return Ok(None);
                    }
                    self.open_segment(index + 1)?;
                    continue;
                }
            };
            let offset = self.offset;
            if let Some(last) = self.last {
                if header.first_position.get() != last.last_position + 1
                    || header.prev_checksum.get() != last.checksum
                {
                    return Err(Error::Corrupt {
                        segment: segment::segment_path(&self.dir, index),
                        offset,
                        reason: RefuseReason::ChainBroken,
                        detail: format!(
                            "batch at position {} does not continue position {} (checksum chain)",
                            header.first_position.get(),
                            last.last_position
                        ),
                        valid_at: None,
                    });
                }
            }
            let last_position =
                header.first_position.get() + u64::from(header.entry_count.get()) - 1;
            self.last = Some(LastBatch {
                last_position,
                checksum: header.checksum.get(),
                term: header.term.get(),
            });
            let length = header.byte_length.get() as usize;
            self.offset += padded_size(length) as u64;
            if last_position < self.target {
                continue;
            }
            return Ok(Some(BatchView {
                header,
                bytes: &self.buf[..length],
                segment_index: index,
                offset,
            }));
        }
    }

    fn read_at_offset(&mut self) -> Result<Read> {
        let Some((index, file)) = &self.current else {
            return Ok(Read::Zero);
        };
        let path = || segment::segment_path(&self.dir, *index);
        file.read_exact_at(&mut self.buf[..BLOCK_SIZE], self.offset)
            .map_err(|e| Error::io("read", path(), e))?;
        if is_zero(&self.buf[..BLOCK_SIZE]) {
            return Ok(Read::Zero);
        }
        let Ok(header) = parse_header(&self.buf[..BLOCK_SIZE]) else {
            return Ok(Read::Unverified);
        };
        let padded = padded_size(header.byte_length.get() as usize);
        if self.offset + padded as u64 > self.segment_size {
            return Ok(Read::Unverified);
        }
        if padded > BLOCK_SIZE {
            file.read_exact_at(
                &mut self.buf[BLOCK_SIZE..padded],
                self.offset + BLOCK_SIZE as u64,
            )
            .map_err(|e| Error::io("read", path(), e))?;
        }
        Ok(match verify_batch(&self.buf[..padded]) {
            Ok(header) => Read::Batch(header),
            Err(_) => Read::Unverified,
        })
    }

    fn next_segment_continues(&mut self, index: u64) -> Result<bool> {
        let path = segment::segment_path(&self.dir, index);
        let file = File::open(&path).map_err(|e| Error::io("open", &path, e))?;
        let mut block = [0u8; crate::HEADER_SIZE];
        file.read_exact_at(&mut block, 0)
            .map_err(|e| Error::io("read", &path, e))?;
        let Ok(header) = parse_header(&block) else {
            return Ok(false);
        };
        Ok(self.last.is_none_or(|last| {
            header.first_position.get() == last.last_position + 1
                && header.prev_checksum.get() == last.checksum
        }))
    }
}
