//! Recovery: the forward scan of a journal's segments and the decision table that tells a torn
//! tail (truncate it) from corruption (refuse to open).
//!
//! Owns: the scan logic, sans-IO. It reads segments through the [`SegmentSource`] trait, so the
//! tests run it over in-memory images (thousands of torn variants per second) and the journal
//! runs it over files. It decides; it does not write: the driver applies a truncation.
//!
//! The scan walks batches from the start of the first segment. Each batch must be valid on its
//! own (header, checksum, entry framing) and continue the one before it (positions consecutive,
//! `prev_checksum` equal to the previous checksum, term not decreasing). The first block that is
//! not such a batch is the *stop point*, and [`RECOVERY_CASES`] decides what it means from these
//! inputs (each a yes/no question about the stop point):
//!
//! | input | question |
//! |---|---|
//! | `zero` | is the 4 KiB block at the stop point all zeros (never written)? |
//! | `header_valid` | does it hold a structurally valid batch header that fits in the segment? |
//! | `checksum_valid` | does the batch's CRC32C match? |
//! | `continues` | are its entries well formed and does it continue the chain? |
//! | `next_segment_started` | is the stop point past the segment's start, the rest of the segment zero, and does the next segment's first block hold data? (the writer rolled because a batch did not fit) |
//! | `later_valid` | is there a batch valid on its own at any later 4 KiB boundary, in this or a later segment? |
//! | `later_nonzero` | is any later block non-zero? |
//!
//! Why this is sound: the writer issues one batch write at a time and waits for `fdatasync`
//! before the next, so a crash can tear only the last batch, and nothing valid can follow a torn
//! batch. Valid data after a bad block therefore means the bad block was once good: corruption.
//! A batch with a valid checksum that does not continue the chain was never torn either. The one
//! case the table cannot tell apart is corruption of the very last batch, which looks like a torn
//! write and is truncated (and reported); repairing it needs a peer.

use std::io;

use crate::format::{is_zero, padded_size, parse_header, verify_batch, BatchHeader, FormatError};
use crate::{Position, BATCH_SIZE_MAX, BLOCK_SIZE};

/// Read access to the segments of a journal, in order (the driver has checked that none is
/// missing). All segments have the same size, a multiple of [`BLOCK_SIZE`].
pub trait SegmentSource {
    /// Number of segments.
    fn segment_count(&self) -> usize;
    /// Size of each segment in bytes.
    fn segment_size(&self) -> u64;
    /// Fills `buf` from `offset` of segment `segment` (an ordinal, `< segment_count()`).
    ///
    /// # Errors
    /// Any I/O error; the scan stops and returns it.
    fn read_at(&mut self, segment: usize, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// A place in the journal: segment ordinal (0 = oldest present) and byte offset in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    /// Ordinal of the segment among those present.
    pub segment: usize,
    /// Byte offset inside the segment (a multiple of [`BLOCK_SIZE`]).
    pub offset: u64,
}

/// The inputs of the decision table, one per question (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inputs {
    /// The stop block is all zeros.
    pub zero: bool,
    /// It holds a structurally valid header that fits in the segment.
    pub header_valid: bool,
    /// The batch's checksum matches.
    pub checksum_valid: bool,
    /// Its entries are well formed and it continues the chain.
    pub continues: bool,
    /// Rest of segment zero and the next segment's first block is non-zero.
    pub next_segment_started: bool,
    /// A batch valid on its own exists at a later block.
    pub later_valid: bool,
    /// A later block is non-zero.
    pub later_nonzero: bool,
}

impl Inputs {
    fn as_array(self) -> [bool; 7] {
        [
            self.zero,
            self.header_valid,
            self.checksum_valid,
            self.continues,
            self.next_segment_started,
            self.later_valid,
            self.later_nonzero,
        ]
    }
}

/// What recovery does at a stop point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The batch did not fit in the rest of the segment; continue in the next segment.
    SkipPadding,
    /// Never-written space and nothing after it: the journal ends here.
    Clean,
    /// A torn write: zero it (and anything non-zero after it) and end the journal here.
    Truncate,
    /// Data is damaged and valid data follows, or a checksum-valid batch breaks the chain:
    /// refuse to open.
    Refuse(RefuseReason),
}

/// Why recovery refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefuseReason {
    /// Zeros where a batch should be, with valid batches later: a batch was lost.
    HoleBeforeValidData,
    /// A bad batch (header or checksum) with valid batches later.
    CorruptionBeforeValidData,
    /// A batch with a valid checksum that does not continue the journal (wrong position,
    /// chain link, decreasing term or malformed entries): a foreign or misplaced segment, or a
    /// writer bug. Never a torn write.
    ChainBroken,
}

/// One row of the table: a pattern (`None` = either) over [`Inputs`] and its outcome.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// `[zero, header_valid, checksum_valid, continues, next_segment_started, later_valid,
    /// later_nonzero]`.
    pub pattern: [Option<bool>; 7],
    /// `None` marks a combination the scan can never produce (a bug if seen).
    pub decision: Option<Decision>,
    /// Why.
    pub label: &'static str,
}

const T: Option<bool> = Some(true);
const F: Option<bool> = Some(false);
const X: Option<bool> = None;

const fn case(pattern: [Option<bool>; 7], decision: Option<Decision>, label: &'static str) -> Case {
    Case {
        pattern,
        decision,
        label,
    }
}

/// The recovery decision table. Impossible rows come first and may overlap; every combination
/// that no impossible row matches is matched by exactly one decision row (checked by the test
/// `every_combination_of_inputs_has_exactly_one_decision`).
pub const RECOVERY_CASES: &[Case] = &[
    // Combinations the scan cannot produce: the checks run in order, each only if the one
    // before passed.
    case(
        [T, T, X, X, X, X, X],
        None,
        "a zero block cannot hold a valid header",
    ),
    case(
        [X, F, T, X, X, X, X],
        None,
        "checksum is only checked after a valid header",
    ),
    case(
        [X, X, F, T, X, X, X],
        None,
        "chain is only checked after a valid checksum",
    ),
    case(
        [X, T, T, T, X, X, X],
        None,
        "a continuing batch is accepted, not a stop point",
    ),
    case(
        [F, X, X, X, T, X, X],
        None,
        "padding is only considered at a zero block",
    ),
    case(
        [X, X, X, X, T, X, F],
        None,
        "a started next segment is later non-zero data",
    ),
    case(
        [X, X, X, X, X, T, F],
        None,
        "later valid data is later non-zero data",
    ),
    // Zero block.
    case(
        [T, F, F, F, T, X, T],
        Some(Decision::SkipPadding),
        "batch did not fit: the next segment's first block is the next batch",
    ),
    case(
        [T, F, F, F, F, T, T],
        Some(Decision::Refuse(RefuseReason::HoleBeforeValidData)),
        "zeros, then valid batches: a batch was lost",
    ),
    case(
        [T, F, F, F, F, F, T],
        Some(Decision::Truncate),
        "zeros then garbage: torn write",
    ),
    case(
        [T, F, F, F, F, F, F],
        Some(Decision::Clean),
        "never written: end of journal",
    ),
    // Bad header or bad checksum.
    case(
        [F, F, F, F, F, F, X],
        Some(Decision::Truncate),
        "bad header, nothing valid after: torn",
    ),
    case(
        [F, F, F, F, F, T, T],
        Some(Decision::Refuse(RefuseReason::CorruptionBeforeValidData)),
        "bad header, then valid batches: corruption",
    ),
    case(
        [F, T, F, F, F, F, X],
        Some(Decision::Truncate),
        "bad checksum, nothing valid after: torn",
    ),
    case(
        [F, T, F, F, F, T, T],
        Some(Decision::Refuse(RefuseReason::CorruptionBeforeValidData)),
        "bad checksum, then valid batches: corruption",
    ),
    // Checksum valid but not continuing.
    case(
        [F, T, T, F, F, X, X],
        Some(Decision::Refuse(RefuseReason::ChainBroken)),
        "checksum-valid batch breaks the chain",
    ),
];

fn matches(pattern: &[Option<bool>; 7], inputs: [bool; 7]) -> bool {
    pattern
        .iter()
        .zip(inputs)
        .all(|(p, i)| p.is_none_or(|p| p == i))
}

/// Looks `inputs` up in [`RECOVERY_CASES`]: `None` for an impossible combination.
pub fn decide(inputs: Inputs) -> Option<Decision> {
    let inputs = inputs.as_array();
    let mut cases = RECOVERY_CASES
        .iter()
        .filter(|c| matches(&c.pattern, inputs));
    if cases.clone().any(|c| c.decision.is_none()) {
        return None;
    }
    cases.next().and_then(|c| c.decision)
}

/// The last accepted batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastBatch {
    /// Position of its last entry.
    pub last_position: Position,
    /// Its checksum.
    pub checksum: u32,
    /// Its term.
    pub term: u64,
}

/// Per-segment summary of the accepted batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentSummary {
    /// First position in the segment, if it holds a batch.
    pub first_position: Option<Position>,
    /// Last position in the segment, if it holds a batch.
    pub last_position: Option<Position>,
}

/// How the scan ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// Unwritten space (or the end of the last segment) after the last batch.
    Clean,
    /// A torn write at the tail: zero `[drop_start, drop_end)` (across segments) to truncate
    /// it. `tail <= drop_start`: blocks between them are already zero.
    Truncate {
        /// First non-zero block to zero.
        drop_start: Location,
        /// End of the last non-zero block to zero (exclusive).
        drop_end: Location,
        /// Bytes from `drop_start` to `drop_end`.
        bytes_dropped: u64,
        /// What was wrong at the tail.
        reason: String,
    },
    /// Refuse to open.
    Refuse {
        /// Where the bad block is.
        at: Location,
        /// Which case.
        reason: RefuseReason,
        /// The check that failed, in words.
        detail: String,
        /// The valid batch found later, if any.
        valid_at: Option<Location>,
    },
}

/// Result of [`scan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanOutcome {
    /// One summary per segment.
    pub segments: Vec<SegmentSummary>,
    /// The last accepted batch.
    pub last: Option<LastBatch>,
    /// Number of accepted batches.
    pub batch_count: u64,
    /// Where the next batch goes (after truncation, if any).
    pub tail: Location,
    /// How the scan ended.
    pub end: ScanEnd,
}

/// What lies after a stop point.
#[derive(Default)]
struct After {
    /// First self-valid batch.
    valid_at: Option<Location>,
    /// First non-zero block.
    first_nonzero: Option<Location>,
    /// End of the last non-zero block (when no valid batch was found).
    nonzero_end: Option<Location>,
}

/// What one block at a location turned out to be.
enum Block {
    Zero,
    HeaderInvalid(&'static str),
    ChecksumInvalid(FormatError),
    /// Valid on its own (header + checksum), with or without well-formed entries.
    Valid {
        header: BatchHeader,
        malformed: Option<FormatError>,
    },
}

struct Scanner<'a, S: SegmentSource> {
    source: &'a mut S,
    segment_size: u64,
    buf: Vec<u8>,
}

impl<S: SegmentSource> Scanner<'_, S> {
    fn read_block(&mut self, at: Location) -> io::Result<Block> {
        let (segment, offset) = (at.segment, at.offset);
        self.source
            .read_at(segment, offset, &mut self.buf[..BLOCK_SIZE])?;
        if is_zero(&self.buf[..BLOCK_SIZE]) {
            return Ok(Block::Zero);
        }
        let header = match parse_header(&self.buf[..BLOCK_SIZE]) {
            Ok(header) => header,
            Err(FormatError::HeaderInvalid(why)) => return Ok(Block::HeaderInvalid(why)),
            Err(_) => return Ok(Block::HeaderInvalid("header unreadable")),
        };
        let padded = padded_size(header.byte_length.get() as usize);
        if offset + padded as u64 > self.segment_size {
            return Ok(Block::HeaderInvalid(
                "batch extends past the end of the segment",
            ));
        }
        if padded > BLOCK_SIZE {
            self.source.read_at(
                segment,
                offset + BLOCK_SIZE as u64,
                &mut self.buf[BLOCK_SIZE..padded],
            )?;
        }
        Ok(match verify_batch(&self.buf[..padded]) {
            Ok(header) => Block::Valid {
                header,
                malformed: None,
            },
            Err(error @ FormatError::EntriesInvalid(_)) => Block::Valid {
                header,
                malformed: Some(error),
            },
            Err(error) => Block::ChecksumInvalid(error),
        })
    }

    fn next_block(&self, at: Location) -> Option<Location> {
        let next = Location {
            segment: at.segment,
            offset: at.offset + BLOCK_SIZE as u64,
        };
        if next.offset < self.segment_size {
            Some(next)
        } else if at.segment + 1 < self.source.segment_count() {
            Some(Location {
                segment: at.segment + 1,
                offset: 0,
            })
        } else {
            None
        }
    }

    /// Scans every block after `at` for the first self-valid batch and the non-zero extent
    /// (stops early at a valid batch: the extent then does not matter).
    fn scan_after(&mut self, at: Location) -> io::Result<After> {
        let mut cursor = self.next_block(at);
        let mut after = After::default();
        while let Some(location) = cursor {
            match self.read_block(location)? {
                Block::Zero => {}
                Block::Valid { .. } => {
                    after.valid_at = Some(location);
                    after.first_nonzero.get_or_insert(location);
                    return Ok(after);
                }
                Block::HeaderInvalid(_) | Block::ChecksumInvalid(_) => {
                    after.first_nonzero.get_or_insert(location);
                    after.nonzero_end = Some(Location {
                        segment: location.segment,
                        offset: location.offset + BLOCK_SIZE as u64,
                    });
                }
            }
            cursor = self.next_block(location);
        }
        Ok(after)
    }

    fn rest_of_segment_zero(&mut self, at: Location) -> io::Result<bool> {
        let mut offset = at.offset;
        while offset < self.segment_size {
            self.source
                .read_at(at.segment, offset, &mut self.buf[..BLOCK_SIZE])?;
            if !is_zero(&self.buf[..BLOCK_SIZE]) {
                return Ok(false);
            }
            offset += BLOCK_SIZE as u64;
        }
        Ok(true)
    }
}

/// Why a self-valid batch does not continue `last`, or `None` if it does.
fn chain_break(header: &BatchHeader, last: Option<LastBatch>) -> Option<String> {
    let last = last?;
    let expected = last.last_position + 1;
    if header.first_position.get() != expected {
        return Some(format!(
            "first_position {} != expected {expected}",
            header.first_position.get()
        ));
    }
    if header.prev_checksum.get() != last.checksum {
        return Some(format!(
            "prev_checksum {:#010x} != previous batch checksum {:#010x}",
            header.prev_checksum.get(),
            last.checksum
        ));
    }
    if header.term.get() < last.term {
        return Some(format!(
            "term {} < previous term {}",
            header.term.get(),
            last.term
        ));
    }
    None
}

/// Scans all segments of `source` and decides how the journal ends (see the module docs).
///
/// # Errors
/// I/O errors from the source.
///
/// # Panics
/// If the scan produces a combination the decision table marks impossible (a bug).
pub fn scan<S: SegmentSource>(source: &mut S) -> io::Result<ScanOutcome> {
    let segment_size = source.segment_size();
    assert!(
        segment_size.is_multiple_of(BLOCK_SIZE as u64) && segment_size >= BATCH_SIZE_MAX as u64
    );
    let segment_count = source.segment_count();
    let mut outcome = ScanOutcome {
        segments: vec![SegmentSummary::default(); segment_count],
        last: None,
        batch_count: 0,
        tail: Location::default(),
        end: ScanEnd::Clean,
    };
    let mut scanner = Scanner {
        source,
        segment_size,
        buf: vec![0u8; BATCH_SIZE_MAX],
    };
    let mut at = Location::default();
    while at.segment < segment_count {
        if at.offset >= segment_size {
            at = Location {
                segment: at.segment + 1,
                offset: 0,
            };
            continue;
        }
        let block = scanner.read_block(at)?;
        let mut inputs = Inputs {
            zero: false,
            header_valid: false,
            checksum_valid: false,
            continues: false,
            next_segment_started: false,
            later_valid: false,
            later_nonzero: false,
        };
        let detail: String;
        match block {
            Block::Valid { header, malformed } => {
                let broken = match malformed {
                    Some(error) => Some(error.to_string()),
                    None => chain_break(&header, outcome.last),
                };
                match broken {
                    None => {
                        accept(&mut outcome, at, &header);
                        at.offset += padded_size(header.byte_length.get() as usize) as u64;
                        continue;
                    }
                    Some(why) => {
                        inputs.header_valid = true;
                        inputs.checksum_valid = true;
                        detail = why;
                    }
                }
            }
            Block::Zero => {
                inputs.zero = true;
                detail = "unwritten (zero) block".to_string();
                let next = Location {
                    segment: at.segment + 1,
                    offset: 0,
                };
                // The stop point then moves to the next segment's first block, so damage there
                // is reported where it is, not at this segment's padding. The writer only rolls
                // out of a segment holding a batch: a segment zero from its start is a hole.
                if at.offset > 0
                    && next.segment < segment_count
                    && scanner.rest_of_segment_zero(at)?
                {
                    inputs.next_segment_started = !matches!(scanner.read_block(next)?, Block::Zero);
                }
            }
            Block::HeaderInvalid(why) => detail = format!("batch header invalid: {why}"),
            Block::ChecksumInvalid(error) => {
                inputs.header_valid = true;
                detail = error.to_string();
            }
        }
        let after = scanner.scan_after(at)?;
        inputs.later_valid = after.valid_at.is_some();
        inputs.later_nonzero = after.first_nonzero.is_some();
        let decision = decide(inputs);
        assert!(
            decision.is_some(),
            "recovery: impossible inputs {inputs:?} at {at:?}"
        );
        match decision {
            Some(Decision::SkipPadding) => {
                at = Location {
                    segment: at.segment + 1,
                    offset: 0,
                };
                continue;
            }
            Some(Decision::Clean) | None => {}
            Some(Decision::Truncate) => {
                // A zero stop block needs no zeroing: start at the first non-zero block.
                let drop_start = match inputs.zero {
                    true => after.first_nonzero.unwrap_or(at),
                    false => at,
                };
                let drop_end = after.nonzero_end.unwrap_or(Location {
                    segment: at.segment,
                    offset: at.offset + BLOCK_SIZE as u64,
                });
                let bytes_dropped = distance(drop_start, drop_end, segment_size);
                outcome.end = ScanEnd::Truncate {
                    drop_start,
                    drop_end,
                    bytes_dropped,
                    reason: detail,
                };
            }
            Some(Decision::Refuse(reason)) => {
                outcome.end = ScanEnd::Refuse {
                    at,
                    reason,
                    detail,
                    valid_at: after.valid_at,
                };
            }
        }
        outcome.tail = at;
        return Ok(outcome);
    }
    // Every segment full of batches (or no segment at all).
    outcome.tail = match segment_count {
        0 => Location::default(),
        n => Location {
            segment: n - 1,
            offset: segment_size,
        },
    };
    Ok(outcome)
}

fn accept(outcome: &mut ScanOutcome, at: Location, header: &BatchHeader) {
    let last_position = header.first_position.get() + u64::from(header.entry_count.get()) - 1;
    let summary = &mut outcome.segments[at.segment];
    summary
        .first_position
        .get_or_insert(header.first_position.get());
    summary.last_position = Some(last_position);
    outcome.last = Some(LastBatch {
        last_position,
        checksum: header.checksum.get(),
        term: header.term.get(),
    });
    outcome.batch_count += 1;
}

/// Bytes from `from` to `to` in a journal of `segment_size`-byte segments.
pub fn distance(from: Location, to: Location, segment_size: u64) -> u64 {
    let absolute = |l: Location| l.segment as u64 * segment_size + l.offset;
    absolute(to).saturating_sub(absolute(from))
}

/// In-memory segments, for tests of the scan.
#[cfg(test)]
pub(crate) struct MemorySegments {
    pub segments: Vec<Vec<u8>>,
    pub segment_size: u64,
}

#[cfg(test)]
impl SegmentSource for MemorySegments {
    fn segment_count(&self) -> usize {
        self.segments.len()
    }
    fn segment_size(&self) -> u64 {
        self.segment_size
    }
    fn read_at(&mut self, segment: usize, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = offset as usize;
        buf.copy_from_slice(&self.segments[segment][start..start + buf.len()]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchBuilder, EntryMeta};
    use crate::HEADER_SIZE;

    const SEGMENT_SIZE: u64 = BATCH_SIZE_MAX as u64;

    #[test]
    fn every_combination_of_inputs_has_exactly_one_decision() {
        let mut possible = 0;
        for bits in 0u32..128 {
            let inputs: [bool; 7] = core::array::from_fn(|i| bits & (1 << i) != 0);
            let impossible = RECOVERY_CASES
                .iter()
                .any(|c| c.decision.is_none() && matches(&c.pattern, inputs));
            let decisions: Vec<_> = RECOVERY_CASES
                .iter()
                .filter(|c| c.decision.is_some() && matches(&c.pattern, inputs))
                .map(|c| c.label)
                .collect();
            if impossible {
                continue;
            }
            possible += 1;
            assert_eq!(decisions.len(), 1, "inputs {inputs:?} match {decisions:?}");
        }
        // Zero block: 5 outcomes; bad header: 3; bad checksum: 3; chain broken: 3.
        assert_eq!(possible, 14);
    }

    /// A journal image: `batches` batches of `entries_per_batch` entries, written like the
    /// journal does (a batch that does not fit goes to the next segment).
    struct Image {
        source: MemorySegments,
        /// (segment, offset, byte_length) of each batch.
        batches: Vec<(usize, usize, usize)>,
    }

    fn image(
        batches: usize,
        entries_per_batch: usize,
        command_size: usize,
        segments: usize,
    ) -> Image {
        let mut source = MemorySegments {
            segments: vec![vec![0u8; SEGMENT_SIZE as usize]; segments],
            segment_size: SEGMENT_SIZE,
        };
        let mut placed = Vec::new();
        let (mut segment, mut offset, mut position, mut prev) = (0usize, 0usize, 1u64, 0u32);
        for b in 0..batches {
            let mut builder = BatchBuilder::new(position);
            for e in 0..entries_per_batch {
                let command = vec![(b * 31 + e) as u8 | 1; command_size];
                builder
                    .try_append(EntryMeta::default(), &command)
                    .expect("fits");
            }
            let sealed = builder.seal(1, b as u64, prev);
            let padded = padded_size(sealed.byte_length());
            if offset + padded > SEGMENT_SIZE as usize {
                segment += 1;
                offset = 0;
            }
            source.segments[segment][offset..offset + padded]
                .copy_from_slice(sealed.padded_bytes());
            placed.push((segment, offset, sealed.byte_length()));
            offset += padded;
            position = sealed.last_position() + 1;
            prev = sealed.checksum();
        }
        Image {
            source,
            batches: placed,
        }
    }

    #[test]
    fn a_clean_journal_ends_after_its_last_batch() {
        let mut img = image(5, 3, 100, 2);
        let outcome = scan(&mut img.source).expect("scan");
        assert_eq!(outcome.end, ScanEnd::Clean);
        assert_eq!(outcome.batch_count, 5);
        assert_eq!(outcome.last.map(|l| l.last_position), Some(15));
        assert_eq!(
            outcome.tail,
            Location {
                segment: 0,
                offset: 5 * BLOCK_SIZE as u64
            }
        );
    }

    #[test]
    fn a_batch_that_did_not_fit_continues_in_the_next_segment() {
        // Batches of ~400 KiB: two fit in a 1 MiB segment, the third goes to the next one.
        let mut img = image(4, 1, 400 * 1024, 3);
        assert_eq!(img.batches[2].0, 1);
        let outcome = scan(&mut img.source).expect("scan");
        assert_eq!(outcome.end, ScanEnd::Clean);
        assert_eq!(outcome.batch_count, 4);
        assert_eq!(outcome.segments[1].first_position, Some(3));
        assert_eq!(outcome.segments[2], SegmentSummary::default());
    }

    #[test]
    fn a_torn_last_batch_is_truncated_at_every_byte_offset() {
        // The last batch spans three blocks, so tears land in the header, the body and padding.
        let mut img = image(3, 5, 2000, 1);
        let (segment, offset, length) = img.batches[2];
        let pristine = img.source.segments[segment][offset..offset + length].to_vec();
        for cut in 0..length {
            for garble in [false, true] {
                let region = &mut img.source.segments[segment][offset..offset + length];
                region.copy_from_slice(&pristine);
                let bytes = &mut region[cut..];
                if garble {
                    bytes.iter_mut().for_each(|b| *b = !*b);
                } else {
                    bytes.fill(0);
                }
                let outcome = scan(&mut img.source).expect("scan");
                let expect_tail = Location {
                    segment,
                    offset: offset as u64,
                };
                assert_eq!(outcome.tail, expect_tail, "cut {cut} garble {garble}");
                assert_eq!(outcome.batch_count, 2, "cut {cut} garble {garble}");
                if cut == 0 && !garble {
                    assert_eq!(outcome.end, ScanEnd::Clean);
                } else {
                    assert!(
                        matches!(outcome.end, ScanEnd::Truncate { bytes_dropped, .. } if bytes_dropped > 0),
                        "cut {cut} garble {garble}: {:?}",
                        outcome.end
                    );
                }
            }
        }
    }

    #[test]
    fn a_bit_flip_in_a_middle_batch_is_refused_at_its_offset() {
        let base = image(5, 3, 700, 1);
        let (segment, offset, length) = base.batches[2];
        for bit in (0..length * 8).step_by(37) {
            let mut img = image(5, 3, 700, 1);
            img.source.segments[segment][offset + bit / 8] ^= 1 << (bit % 8);
            let outcome = scan(&mut img.source).expect("scan");
            match outcome.end {
                ScanEnd::Refuse {
                    at,
                    reason,
                    valid_at,
                    ..
                } => {
                    assert_eq!(
                        at,
                        Location {
                            segment,
                            offset: offset as u64
                        },
                        "bit {bit}"
                    );
                    assert_eq!(reason, RefuseReason::CorruptionBeforeValidData, "bit {bit}");
                    assert_eq!(valid_at.map(|l| l.offset), Some(base.batches[3].1 as u64));
                }
                other => panic!("bit {bit}: expected refusal, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_zeroed_middle_batch_is_a_hole_and_is_refused() {
        let mut img = image(4, 2, 50, 1);
        let (segment, offset, length) = img.batches[1];
        img.source.segments[segment][offset..offset + length].fill(0);
        let outcome = scan(&mut img.source).expect("scan");
        assert!(matches!(
            outcome.end,
            ScanEnd::Refuse { reason: RefuseReason::HoleBeforeValidData, at, .. } if at.offset == offset as u64
        ));
    }

    #[test]
    fn a_valid_batch_from_elsewhere_breaks_the_chain_and_is_refused() {
        let mut img = image(3, 2, 50, 1);
        let other = image(3, 2, 60, 1);
        let (segment, offset, length) = img.batches[2];
        let (_, other_offset, other_length) = other.batches[2];
        let region = &mut img.source.segments[segment]
            [offset..offset + padded_size(length.max(other_length))];
        region
            .copy_from_slice(&other.source.segments[0][other_offset..other_offset + region.len()]);
        let outcome = scan(&mut img.source).expect("scan");
        assert!(matches!(
            outcome.end,
            ScanEnd::Refuse {
                reason: RefuseReason::ChainBroken,
                ..
            }
        ));
    }

    #[test]
    fn garbage_in_the_next_segment_after_a_full_one_is_truncated() {
        let mut img = image(2, 1, 100 * 1024, 2);
        img.source.segments[1][..HEADER_SIZE].fill(0x5A);
        let outcome = scan(&mut img.source).expect("scan");
        assert_eq!(outcome.batch_count, 2);
        assert!(matches!(outcome.end, ScanEnd::Truncate { .. }));
        // The writer had rolled: the torn batch is the next segment's first.
        assert_eq!(
            outcome.tail,
            Location {
                segment: 1,
                offset: 0
            }
        );
    }

    #[test]
    fn random_single_byte_damage_is_truncated_at_the_tail_and_refused_elsewhere() {
        // Batches of varied sizes over three segments; one byte damaged per trial.
        let seed: u64 = 0x5EED_1234;
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut img = image(30, 4, 5000, 3);
        let pristine = img.source.segments.clone();
        let last = img.batches.len() - 1;
        for trial in 0..300 {
            img.source.segments.clone_from(&pristine);
            let k = (next() % img.batches.len() as u64) as usize;
            let (segment, offset, length) = img.batches[k];
            let at = offset + (next() % length as u64) as usize;
            img.source.segments[segment][at] ^= (next() % 255 + 1) as u8;
            let outcome = scan(&mut img.source).expect("scan");
            let context = format!("seed {seed:#x} trial {trial}: batch {k} byte {at}");
            let location = Location {
                segment,
                offset: offset as u64,
            };
            assert_eq!(outcome.tail, location, "{context}");
            assert_eq!(outcome.batch_count, k as u64, "{context}");
            if k == last {
                assert!(matches!(outcome.end, ScanEnd::Truncate { .. }), "{context}");
            } else {
                assert!(
                    matches!(
                        outcome.end,
                        ScanEnd::Refuse { at, reason: RefuseReason::CorruptionBeforeValidData, .. }
                            if at == location
                    ),
                    "{context}: {:?}",
                    outcome.end
                );
            }
        }
    }
}
