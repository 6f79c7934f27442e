//! The feature file format (`.bin`) and its zero-copy reader.
//!
//! ```text
//! byte 0       float32 LE   start index: calendar index of the first value (a whole number below 2^24)
//! byte 4+4k    float32 LE   value at calendar index start + k; NaN = missing
//! ```
//! No count, no footer, no padding: the value count is `size / 4 - 1`. The same layout holds expression-cache
//! payloads. storage-layout.md is the full specification.

use std::fs::File;
use std::ops::{Deref, Range};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian};

use crate::error::{CorruptReason, Error, Result};

/// Size of the start-index header in bytes.
pub const HEADER_LEN: usize = 4;

/// Start indexes must be below this: float32 represents every integer only up to 2^24.
pub const MAX_START: u32 = 1 << 24;

/// Decodes and validates the start-index header.
pub fn decode_start(bytes: [u8; 4]) -> std::result::Result<u32, CorruptReason> {
    let value = f32::from_le_bytes(bytes);
    if !value.is_finite() {
        Err(CorruptReason::StartNotFinite {
            bits: value.to_bits(),
        })
    } else if value < 0.0 {
        Err(CorruptReason::StartNegative { value })
    } else if value.fract() != 0.0 {
        Err(CorruptReason::StartFractional { value })
    } else if value >= MAX_START as f32 {
        Err(CorruptReason::StartTooLarge { value })
    } else {
        // Exact: a whole, non-negative float below 2^24.
        Ok(value as u32)
    }
}

/// What the size and header of a feature file say, before any value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Calendar index of the first value; `None` for a 0-byte file (qlib's `clear()` leaves those).
    pub start: Option<u32>,
    /// Number of values after the header.
    pub len: usize,
}

/// Validates the bytes of a whole feature file and returns its shape.
pub fn parse_shape(bytes: &[u8]) -> std::result::Result<Shape, CorruptReason> {
    if bytes.is_empty() {
        return Ok(Shape {
            start: None,
            len: 0,
        });
    }
    if !bytes.len().is_multiple_of(4) {
        return Err(CorruptReason::SizeNotMultipleOf4 {
            size: bytes.len() as u64,
        });
    }
    let start = decode_start([bytes[0], bytes[1], bytes[2], bytes[3]])?;
    Ok(Shape {
        start: Some(start),
        len: bytes.len() / 4 - 1,
    })
}

/// Encodes a whole feature file: the header, then the values, all little-endian float32.
///
/// Byte-identical to qlib's `np.hstack([index, values]).astype("<f").tofile(fp)`.
pub fn encode(start: u32, values: &[f32]) -> Vec<u8> {
    debug_assert!(start < MAX_START);
    let mut out = vec![0u8; HEADER_LEN + 4 * values.len()];
    out[..HEADER_LEN].copy_from_slice(&(start as f32).to_le_bytes());
    LittleEndian::write_f32_into(values, &mut out[HEADER_LEN..]);
    out
}

/// Encodes values without a header (for appends).
pub fn encode_values(values: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; 4 * values.len()];
    LittleEndian::write_f32_into(values, &mut out);
    out
}

enum Backing {
    /// A 0-byte file: no header, no values.
    Empty,
    /// The mapped file, read in place as `&[f32]` (large files on little-endian hosts).
    Mapped(memmap2::Mmap),
    /// The whole file read into memory with one `read`, header included at `[0]` (small files, where mapping
    /// costs more than reading; and big-endian hosts, where casting would read the wrong byte order).
    Owned(Vec<f32>),
}

/// Files smaller than this are read into memory when opened rather than mapped. Mapping a small file costs an
/// `mmap`, a page fault and, when it is dropped, an `munmap` with a TLB shootdown across threads: about 18 us per
/// daily-sized file here against about 4 us for one `read` (benches/README.md). Large (intraday) files are mapped.
pub const DEFAULT_MAP_THRESHOLD: u64 = 64 * 1024;

/// An open, validated feature file. Values are borrowed straight from the mapping.
pub struct FeatureFile {
    path: PathBuf,
    start: usize,
    len: usize,
    backing: Backing,
}

impl std::fmt::Debug for FeatureFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureFile")
            .field("path", &self.path)
            .field("start", &self.start)
            .field("len", &self.len)
            .finish()
    }
}

/// Maps a whole file read-only.
///
/// This is the crate's only `unsafe` file access, and the reason the publish protocol exists.
fn map_file(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: a mapping is only sound while no one truncates the file or changes bytes inside the mapped
    // length. qstore's writers never do either (fsio.rs): they append past the end, which leaves mapped bytes
    // alone, or publish a new inode by rename, which leaves this mapping on the old inode. A process outside
    // qstore that truncates or rewrites a store file in place breaks this contract (SIGBUS or torn values);
    // storage-layout.md says so to users.
    unsafe { memmap2::Mmap::map(file) }
}

impl FeatureFile {
    /// Opens and validates `path`; `Ok(None)` when the file does not exist.
    pub fn open(path: &Path) -> Result<Option<FeatureFile>> {
        FeatureFile::open_with(path, DEFAULT_MAP_THRESHOLD)
    }

    /// Opens `path`, mapping it when it has at least `map_threshold` bytes and reading it otherwise.
    ///
    /// Either way the file's content is fixed at its size when opened: bytes appended later are not seen.
    pub fn open_with(path: &Path, map_threshold: u64) -> Result<Option<FeatureFile>> {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("opening", path, e)),
        };
        let corrupt = |reason| Error::CorruptFeature {
            path: path.to_path_buf(),
            reason,
        };
        let size = file
            .metadata()
            .map_err(|e| Error::io("reading metadata of", path, e))?
            .len();
        let empty = || FeatureFile {
            path: path.to_path_buf(),
            start: 0,
            len: 0,
            backing: Backing::Empty,
        };
        if size == 0 {
            return Ok(Some(empty()));
        }
        if size < map_threshold || cfg!(target_endian = "big") {
            if !size.is_multiple_of(4) {
                return Err(corrupt(CorruptReason::SizeNotMultipleOf4 { size }));
            }
            let mut buf = vec![0f32; (size / 4) as usize];
            std::io::Read::read_exact(&mut file, bytemuck::cast_slice_mut(&mut buf))
                .map_err(|e| Error::io("reading", path, e))?;
            // The bytes are little-endian; on a big-endian host this converts them in place (a no-op on LE).
            LittleEndian::from_slice_f32(&mut buf);
            let start = decode_start(buf[0].to_le_bytes()).map_err(corrupt)?;
            return Ok(Some(FeatureFile {
                path: path.to_path_buf(),
                start: start as usize,
                len: buf.len() - 1,
                backing: Backing::Owned(buf),
            }));
        }
        let map = map_file(&file).map_err(|e| Error::io("mapping", path, e))?;
        let shape = parse_shape(&map).map_err(corrupt)?;
        let Some(start) = shape.start else {
            return Ok(Some(empty()));
        };
        // The mapping is page-aligned, so the body at byte 4 is 4-aligned and the cast succeeds; if it ever did
        // not, we copy instead of failing.
        let backing = if bytemuck::try_cast_slice::<u8, f32>(&map[HEADER_LEN..]).is_ok() {
            Backing::Mapped(map)
        } else {
            let mut buf = vec![0f32; shape.len + 1];
            LittleEndian::read_f32_into(&map, &mut buf);
            Backing::Owned(buf)
        };
        Ok(Some(FeatureFile {
            path: path.to_path_buf(),
            start: start as usize,
            len: shape.len,
            backing,
        }))
    }

    /// Whether the values are read in place from a memory mapping (rather than from memory read at open).
    pub fn is_mapped(&self) -> bool {
        matches!(self.backing, Backing::Mapped(_))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Calendar index of the first value (0 for a 0-byte file).
    pub fn start(&self) -> usize {
        self.start
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One past the calendar index of the last value.
    pub fn end(&self) -> usize {
        self.start + self.len
    }

    /// Whether the file has a header (a 0-byte file has none).
    pub fn has_header(&self) -> bool {
        !matches!(self.backing, Backing::Empty)
    }

    /// Every value, indexed from [`start`](Self::start).
    pub fn values(&self) -> &[f32] {
        match &self.backing {
            Backing::Empty => &[],
            Backing::Mapped(map) => {
                bytemuck::cast_slice(&map[HEADER_LEN..HEADER_LEN + 4 * self.len])
            }
            Backing::Owned(buf) => &buf[1..],
        }
    }

    /// The values whose calendar indexes fall in `range`, with the calendar index of the first.
    ///
    /// qlib's slicing rules: the start is clamped to the file's start, the end is cut at the end of data, and a
    /// range that misses the data is empty.
    pub fn slice(&self, range: Range<usize>) -> (usize, &[f32]) {
        let lo = range.start.max(self.start);
        let hi = range.end.min(self.end());
        if lo >= hi {
            return (lo, &[]);
        }
        (lo, &self.values()[lo - self.start..hi - self.start])
    }

    /// The value at calendar index `i`, or `None` outside the file's range (qlib raises IndexError before the
    /// start and `struct.error` past the end).
    pub fn get(&self, i: usize) -> Option<f32> {
        i.checked_sub(self.start)
            .and_then(|k| self.values().get(k).copied())
    }
}

/// A zero-copy range of one feature file: derefs to the values, knows the calendar index of the first one.
///
/// Holds the mapping alive, so it can outlive the store's handle cache entry.
#[derive(Debug, Clone)]
pub struct FeatureSlice {
    file: Option<Arc<FeatureFile>>,
    start: usize,
    offset: Range<usize>,
}

impl FeatureSlice {
    /// A slice of `file` over `range` of calendar indexes (see [`FeatureFile::slice`]).
    pub fn new(file: Option<Arc<FeatureFile>>, range: Range<usize>) -> FeatureSlice {
        match file {
            Some(f) => {
                let (start, values) = f.slice(range);
                let k = start.saturating_sub(f.start());
                let offset = if values.is_empty() {
                    0..0
                } else {
                    k..k + values.len()
                };
                FeatureSlice {
                    file: Some(f),
                    start,
                    offset,
                }
            }
            None => FeatureSlice {
                file: None,
                start: range.start,
                offset: 0..0,
            },
        }
    }

    /// Calendar index of the first value.
    pub fn start(&self) -> usize {
        self.start
    }

    /// The file the values live in, when it exists.
    pub fn file(&self) -> Option<&Arc<FeatureFile>> {
        self.file.as_ref()
    }
}

impl Deref for FeatureSlice {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match &self.file {
            Some(f) => &f.values()[self.offset.clone()],
            None => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_validation() {
        assert_eq!(decode_start(3f32.to_le_bytes()), Ok(3));
        assert_eq!(decode_start(16_777_215f32.to_le_bytes()), Ok(16_777_215));
        assert!(matches!(
            decode_start(f32::NAN.to_le_bytes()),
            Err(CorruptReason::StartNotFinite { .. })
        ));
        assert!(matches!(
            decode_start(f32::INFINITY.to_le_bytes()),
            Err(CorruptReason::StartNotFinite { .. })
        ));
        assert!(matches!(
            decode_start((-1f32).to_le_bytes()),
            Err(CorruptReason::StartNegative { .. })
        ));
        assert!(matches!(
            decode_start(2.5f32.to_le_bytes()),
            Err(CorruptReason::StartFractional { .. })
        ));
        assert!(matches!(
            decode_start(16_777_216f32.to_le_bytes()),
            Err(CorruptReason::StartTooLarge { .. })
        ));
        // -0.0 is a valid zero.
        assert_eq!(decode_start((-0f32).to_le_bytes()), Ok(0));
    }

    #[test]
    fn encode_matches_hand_built_bytes() {
        let bytes = encode(3, &[1.5, f32::NAN]);
        let mut want = Vec::new();
        want.extend_from_slice(&[0x00, 0x00, 0x40, 0x40]); // 3.0f32 LE
        want.extend_from_slice(&[0x00, 0x00, 0xC0, 0x3F]); // 1.5f32 LE
        want.extend_from_slice(&f32::NAN.to_le_bytes());
        assert_eq!(bytes, want);
        assert_eq!(
            parse_shape(&bytes),
            Ok(Shape {
                start: Some(3),
                len: 2
            })
        );
        assert!(matches!(
            parse_shape(&bytes[..7]),
            Err(CorruptReason::SizeNotMultipleOf4 { size: 7 })
        ));
    }
}
