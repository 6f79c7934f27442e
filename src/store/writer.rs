//! Writes to feature files, with qlib's `FeatureStorage.write` semantics done right.
//!
//! | state                        | what [`write`] does                                         | how it publishes |
//! |------------------------------|-------------------------------------------------------------|------------------|
//! | file missing or 0 bytes      | create with header = index (0 when none)                    | temp + rename    |
//! | `index` none or == end       | append after the last value                                 | append in place  |
//! | `index` > end                | fill the gap with NaN, then append                          | append in place  |
//! | `index` < end (overlap)      | overlay: new values win, NaN in the new data keeps the old  | temp + rename    |
//!
//! qlib crashes on the overlap row (TypeError) and would overwrite the header if it did not. Anything other
//! than a pure append publishes a new inode, so a reader that mapped the file never sees bytes change under it.
//! One writer per file at a time: callers serialise writers (the caches and `qdump update` hold locks).

use std::fs::File;
use std::path::Path;

use byteorder::ByteOrder;

use crate::error::{CorruptReason, Error, Result};
use crate::store::bin::{self, HEADER_LEN, MAX_START};
use crate::store::fsio;

/// What a write did to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// Nothing to write.
    Unchanged,
    /// A new file was published.
    Created,
    /// Values were appended past the old end in place.
    Appended,
    /// A new version of the file replaced the old one (rename).
    Replaced,
}

/// The header and size of an existing file, read without mapping it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Existing {
    /// Calendar index of the first value.
    pub start: usize,
    /// Whole values.
    pub len: usize,
    /// Bytes past the last whole value: the tail of an append that crashed half-way.
    pub torn: bool,
}

fn existing(path: &Path) -> Result<Option<Existing>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("opening", path, e)),
    };
    existing_in(path, &file)
}

/// [`existing`] of a file already open.
fn existing_in(path: &Path, file: &File) -> Result<Option<Existing>> {
    use std::os::unix::fs::FileExt;
    let size = file
        .metadata()
        .map_err(|e| Error::io("reading metadata of", path, e))?
        .len();
    if size == 0 {
        return Ok(None);
    }
    let corrupt = |reason| Error::CorruptFeature {
        path: path.to_path_buf(),
        reason,
    };
    if size < HEADER_LEN as u64 {
        return Err(corrupt(CorruptReason::SizeNotMultipleOf4 { size }));
    }
    let mut header = [0u8; 4];
    file.read_exact_at(&mut header, 0)
        .map_err(|e| Error::io("reading", path, e))?;
    let start = bin::decode_start(header).map_err(corrupt)? as usize;
    Ok(Some(Existing {
        start,
        len: (size as usize - HEADER_LEN) / 4,
        torn: !size.is_multiple_of(4),
    }))
}

/// The whole values of an existing file (a torn tail is dropped).
fn read_values(path: &Path, ex: &Existing) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
    let whole = (HEADER_LEN + 4 * ex.len).min(bytes.len() / 4 * 4);
    let mut values = vec![0f32; whole.saturating_sub(HEADER_LEN) / 4];
    byteorder::LittleEndian::read_f32_into(&bytes[HEADER_LEN..whole], &mut values);
    Ok(values)
}

fn check_range(path: &Path, start: usize, end: usize) -> Result<()> {
    let err = |index: usize, reason| Error::IndexOutOfRange {
        path: path.to_path_buf(),
        index: index as u64,
        reason,
    };
    if start >= MAX_START as usize {
        return Err(err(
            start,
            "the start index is stored as float32 and must be below 2^24 (16777216)",
        ));
    }
    if end > u32::MAX as usize {
        return Err(err(end, "the file would hold more than 2^32 values"));
    }
    Ok(())
}

fn publish_new(path: &Path, start: usize, values: &[f32]) -> Result<()> {
    check_range(path, start, start + values.len())?;
    if let Some(dir) = path.parent() {
        fsio::create_dir_all_synced(dir)?;
    }
    fsio::replace_atomic(path, &bin::encode(start as u32, values))
}

/// Writes `data` at calendar index `index` (`None`: right after the last value). See the module table.
pub fn write(path: &Path, index: Option<usize>, data: &[f32]) -> Result<WriteKind> {
    if data.is_empty() {
        return Ok(WriteKind::Unchanged);
    }
    let Some(ex) = existing(path)? else {
        publish_new(path, index.unwrap_or(0), data)?;
        return Ok(WriteKind::Created);
    };
    let end = ex.start + ex.len;
    let at = index.unwrap_or(end);
    check_range(path, ex.start.min(at), at.max(end) + data.len())?;
    if at >= end && !ex.torn {
        let mut tail = vec![f32::NAN; at - end];
        tail.extend_from_slice(data);
        fsio::append_synced(path, &bin::encode_values(&tail))?;
        return Ok(WriteKind::Appended);
    }
    // Overlap (or a torn tail to heal): build the merged series and publish it as a new file.
    let old = read_values(path, &ex)?;
    let old_end = ex.start + old.len();
    let new_start = ex.start.min(at);
    let new_end = old_end.max(at + data.len());
    let mut merged = vec![f32::NAN; new_end - new_start];
    merged[ex.start - new_start..old_end - new_start].copy_from_slice(&old);
    for (k, &v) in data.iter().enumerate() {
        if !v.is_nan() {
            merged[at + k - new_start] = v;
        }
    }
    publish_new(path, new_start, &merged)?;
    Ok(WriteKind::Replaced)
}

/// Creates a whole file without fsync, for a store that nobody reads yet (a staging store that will be synced
/// as a whole before it is published). The parent directory must exist. Returns the bytes written.
pub fn create_unsynced(path: &Path, start: usize, data: &[f32]) -> Result<u64> {
    check_range(path, start, start + data.len())?;
    let bytes = bin::encode(start as u32, data);
    fsio::write_unsynced(path, &bytes)?;
    Ok(bytes.len() as u64)
}

/// The stored range of a feature file: (start index, whole values), `None` when it does not exist or is
/// empty. A torn tail (a partial value) is not counted.
pub fn stored_range(path: &Path) -> Result<Option<(usize, usize)>> {
    Ok(existing(path)?.map(|e| (e.start, e.len)))
}

/// A feature file open for an update, with its header and size (`None`: no file, or an empty one), for a
/// writer that then calls [`put_unpublished_known`] without opening or reading it again.
pub(crate) fn stored(path: &Path) -> Result<Option<(File, Existing)>> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("opening for update", path, e)),
    };
    Ok(existing_in(path, &file)?.map(|ex| (file, ex)))
}

/// The whole values of a feature file and its start (for corrections, which rewrite it).
pub fn read_all(path: &Path) -> Result<Option<(usize, Vec<f32>)>> {
    match existing(path)? {
        Some(ex) => Ok(Some((ex.start, read_values(path, &ex)?))),
        None => Ok(None),
    }
}

/// Writes `data` at calendar index `at` of an existing file whose values from `at` on are not published (an
/// update's append past the published end), without fsync: the caller syncs the file system once before it
/// publishes the new calendar. A gap between the file's end and `at` is filled with NaN; bytes past `at` left by
/// a killed run (or a torn value) are overwritten in place, which no reader sees because they lie past the
/// published end. Only when such leftovers reach past the new end is the file replaced (temp + rename) instead,
/// so that it never ends in stale values.
pub(crate) fn put_unpublished(path: &Path, at: usize, data: &[f32]) -> Result<WriteKind> {
    let known = stored(path)?;
    put_unpublished_known(path, known.as_ref().map(|(f, ex)| (f, *ex)), at, data)
}

/// [`put_unpublished`] given what [`stored`] read of the file, by a writer that holds the store's update lock
/// (nothing changed the file since): an update writes each of its tens of thousands of files with one open.
pub(crate) fn put_unpublished_known(
    path: &Path,
    known: Option<(&File, Existing)>,
    at: usize,
    data: &[f32],
) -> Result<WriteKind> {
    use std::os::unix::fs::FileExt;
    let Some((file, ex)) = known else {
        check_range(path, at, at + data.len())?;
        fsio::replace_unsynced(path, &bin::encode(at as u32, data))?;
        return Ok(WriteKind::Created);
    };
    if at < ex.start {
        return Err(Error::IndexOutOfRange {
            path: path.to_path_buf(),
            index: at as u64,
            reason: "an update cannot write before the file's first value",
        });
    }
    let end = ex.start + ex.len;
    let new_end = at + data.len();
    check_range(path, ex.start, new_end.max(end))?;
    if data.is_empty() {
        return Ok(WriteKind::Unchanged);
    }
    // A torn value sits right after the last whole one: a write reaching past `end` covers it.
    if end > new_end || (ex.torn && end >= new_end) {
        // Leftovers past the new end: publish a trimmed copy.
        let old = read_values(path, &ex)?;
        let mut values = old[..at.min(end) - ex.start].to_vec();
        values.resize(at - ex.start, f32::NAN);
        values.extend_from_slice(data);
        fsio::replace_unsynced(path, &bin::encode(ex.start as u32, &values))?;
        return Ok(WriteKind::Replaced);
    }
    // Write from min(end, at): NaN for the gap, then the data; overwrite leftovers in place.
    let from = end.min(at);
    let mut tail = vec![f32::NAN; at - from];
    tail.extend_from_slice(data);
    file.write_all_at(
        &bin::encode_values(&tail),
        (HEADER_LEN + 4 * (from - ex.start)) as u64,
    )
    .map_err(|e| Error::io("writing", path, e))?;
    Ok(WriteKind::Appended)
}

/// Cuts a file to the values before calendar index `end` (a killed update's unpublished tail), publishing the
/// trimmed copy by temp + fsync + rename; a file with nothing before `end` is removed. On a full disk the
/// unpublished tail is cut in place instead ([`fsio::truncate_unpublished`]), so recovery needs no free space.
/// Returns whether it changed.
pub fn trim_to(path: &Path, end: usize) -> Result<bool> {
    let Some(ex) = existing(path)? else {
        return Ok(false);
    };
    let size = std::fs::metadata(path)
        .map_err(|e| Error::io("reading metadata of", path, e))?
        .len();
    let whole = (HEADER_LEN + 4 * ex.len) as u64;
    if ex.start + ex.len <= end && size == whole {
        return Ok(false);
    }
    if end <= ex.start {
        remove(path)?;
        return Ok(true);
    }
    let old = read_values(path, &ex)?;
    let keep = (end - ex.start).min(old.len());
    match publish_new(path, ex.start, &old[..keep]) {
        Err(e) if fsio::is_no_space(&e) => {
            fsio::truncate_unpublished(path, (HEADER_LEN + 4 * keep) as u64)?;
        }
        r => r?,
    }
    Ok(true)
}

/// Replaces the whole file with `data` starting at calendar index `start` (qlib's `rewrite`, without its
/// truncate-then-fail data loss).
pub fn rewrite(path: &Path, start: usize, data: &[f32]) -> Result<()> {
    publish_new(path, start, data)
}

/// Moves the file's range to `[start, end)`: values outside are cut, new positions are NaN (qlib's `rebase`).
///
/// Extending the end alone is an in-place append; anything else publishes a new file.
pub fn rebase(path: &Path, start: usize, end: usize) -> Result<WriteKind> {
    if start > end {
        return Err(Error::IndexOutOfRange {
            path: path.to_path_buf(),
            index: start as u64,
            reason: "rebase start is after its end",
        });
    }
    let Some(ex) = existing(path)? else {
        return Err(Error::io(
            "rebasing",
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such feature file"),
        ));
    };
    check_range(path, start, end)?;
    let old_end = ex.start + ex.len;
    if start == ex.start && end == old_end && !ex.torn {
        return Ok(WriteKind::Unchanged);
    }
    if start == ex.start && end > old_end && !ex.torn {
        fsio::append_synced(path, &bin::encode_values(&vec![f32::NAN; end - old_end]))?;
        return Ok(WriteKind::Appended);
    }
    let old = read_values(path, &ex)?;
    let values: Vec<f32> = (start..end)
        .map(|i| {
            i.checked_sub(ex.start)
                .and_then(|k| old.get(k).copied())
                .unwrap_or(f32::NAN)
        })
        .collect();
    publish_new(path, start, &values)?;
    Ok(WriteKind::Replaced)
}

/// Deletes the file (a no-op when it is missing). Readers that mapped it keep their mapping.
pub fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => path.parent().map_or(Ok(()), fsio::fsync_dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("removing", path, e)),
    }
}
