//! The one place for file I/O policy: how qstore publishes bytes so that readers never see a torn state.
//!
//! Two ways to change a file, and only two (storage-layout.md, "Publish protocol"):
//! - [`replace_atomic`]: write a temp file in the same directory, fsync it, rename it over the target,
//!   fsync the directory. Readers that mapped the old file keep the old inode; new readers see the new one.
//! - [`append_synced`]: add bytes past the end of an existing file and fsync. Bytes a reader already
//!   mapped never change; the new bytes become visible only when something else publishes them
//!   (a longer calendar).
//!
//! Nothing here rewrites a file in place. The one truncation is [`truncate_unpublished`]: recovery on a full
//! disk cutting bytes that were never published (past the calendar), which no reader reads.
//!
//! In the whole crate, exactly two other places write inside an existing file, each safe for the reason given:
//! - `store::writer::put_unpublished` (and `write`'s in-place tail) write only past the calendar's end, bytes no
//!   reader reads until a longer calendar publishes them (an update's data before its commit).
//! - `cache::lock` rewrites its own lock files (a fencing token and owner, synced before use, under `flock`).
//!   Lock files hold no data and readers never open them; only the lock module creates, rewrites or deletes
//!   them (`qcache clear` and store replaces leave them alone).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Prefix of every temp file qstore creates; `verify`/`check` treat leftovers with it as orphans of a crash.
pub const TEMP_PREFIX: &str = ".qstore-tmp-";

/// How long a temp file of another machine's writer (whose process this machine cannot ask about) must be
/// untouched before it counts as abandoned.
const FOREIGN_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// The name of this machine, as lock owners and temp files record it.
pub fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// The start of this process's temp file names: `.qstore-tmp-<pid>@<host>~` (then random characters), so a
/// later writer can tell that the process that made one is gone.
fn temp_prefix() -> String {
    format!("{TEMP_PREFIX}{}@{}~", std::process::id(), this_host())
}

/// A temp file name for a writer that names its own temp files (a library that wants a path, such as HDF5):
/// `path`'s name after this process's temp prefix, in the same directory.
// Used by the dataset cache only.
#[cfg_attr(not(feature = "hdf5"), allow(dead_code))]
pub fn temp_path(path: &Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{}{name}", temp_prefix()))
}

/// Whether the temp file at `path` was left by a writer that is gone: a process of this machine that no longer
/// runs, or (another machine's, or a name without its writer) one untouched for an hour.
pub fn temp_is_abandoned(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let Some(rest) = name.strip_prefix(TEMP_PREFIX) else {
        return false;
    };
    let writer = rest
        .split_once('@')
        .and_then(|(pid, r)| Some((pid.parse::<u32>().ok()?, r.rsplit_once('~')?.0)));
    match writer {
        Some((pid, host)) if host == this_host() => !Path::new(&format!("/proc/{pid}")).exists(),
        _ => std::fs::symlink_metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > FOREIGN_TEMP_AGE)),
    }
}

/// Removes the abandoned temp files ([`temp_is_abandoned`]) directly in `dir`; returns how many.
pub fn remove_abandoned_temps(dir: &Path) -> Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("listing", dir, e)),
    };
    let mut n = 0;
    for e in entries.flatten() {
        let path = e.path();
        if e.file_type().is_ok_and(|t| t.is_file()) && temp_is_abandoned(&path) {
            match std::fs::remove_file(&path) {
                Ok(()) => n += 1,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(Error::io("removing", &path, err)),
            }
        }
    }
    Ok(n)
}

/// A temp file in `dir` that will be renamed over `target`, with the mode `target` should have: the mode of
/// the file it replaces, or `0666 & !umask` for a new one, as any file a program creates. (A temp file's own
/// default, 0600, survives the rename and would make a store unreadable by every other account.)
fn temp_beside(dir: &Path, target: &Path) -> Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    let replaced = std::fs::metadata(target)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777);
    let tmp = tempfile::Builder::new()
        .prefix(&temp_prefix())
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(|e| Error::io("creating a temp file in", dir, e))?;
    if let Some(mode) = replaced {
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("setting the mode of", tmp.path().to_path_buf(), e))?;
    }
    Ok(tmp)
}

/// Writes `bytes` to `path` atomically and durably (temp file + fsync + rename + directory fsync).
pub fn replace_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_atomic_with(path, |w| {
        w.write_all(bytes)
            .map_err(|e| Error::io("writing", path, e))
    })
}

/// [`replace_atomic`] for content streamed by `fill` (large outputs need not be held in memory). If `fill`
/// fails, the temp file is removed and `path` is untouched.
pub fn replace_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<&mut std::fs::File>) -> Result<()>,
) -> Result<()> {
    let dir = parent(path);
    let mut tmp = temp_beside(dir, path)?;
    let tmp_path = tmp.path().to_path_buf();
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        fill(&mut w)?;
        w.flush()
            .map_err(|e| Error::io("writing", tmp_path.clone(), e))?;
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io("syncing", tmp.path().to_path_buf(), e))?;
    tmp.persist(path)
        .map_err(|e| Error::io("renaming a temp file over", path, e.error))?;
    fsync_dir(dir)
}

/// Publishes a finished temp file written by someone else (a library that wants a path, such as HDF5):
/// fsync, rename over `path`, directory fsync.
// Used by the dataset cache only.
#[cfg_attr(not(feature = "hdf5"), allow(dead_code))]
pub fn publish_file(tmp: &Path, path: &Path) -> Result<()> {
    let f = std::fs::File::open(tmp).map_err(|e| Error::io("opening", tmp, e))?;
    f.sync_all().map_err(|e| Error::io("syncing", tmp, e))?;
    std::fs::rename(tmp, path).map_err(|e| Error::io("renaming a temp file over", path, e))?;
    fsync_dir(parent(path))
}

/// Appends `bytes` to the existing file at `path` and fsyncs it.
pub fn append_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| Error::io("opening for append", path, e))?;
    file.write_all(bytes)
        .map_err(|e| Error::io("appending to", path, e))?;
    file.sync_data().map_err(|e| Error::io("syncing", path, e))
}

/// Creates `dir` and any missing parents, fsyncing each parent whose entries changed.
pub fn create_dir_all_synced(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(p) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all_synced(p)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => fsync_dir(parent(dir)),
        // Another writer created it between our check and our call: that is the outcome we wanted.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(Error::io("creating directory", dir, e)),
    }
}

/// Makes a rename or file creation inside `dir` durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("syncing directory", dir, e))
}

/// Swaps two directory entries in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`), then fsyncs the parent.
///
/// Used to switch a freshly built store in for an old one, so that the target path never is missing or half
/// built, even if the process dies between any two instructions.
pub fn exchange(a: &Path, b: &Path) -> Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes()).map_err(|_| {
            Error::io(
                "exchanging",
                p,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains a NUL byte"),
            )
        })
    };
    let (ca, cb) = (c(a)?, c(b)?);
    // SAFETY: both pointers come from live CStrings (NUL-terminated, no interior NUL) that outlive the call;
    // renameat2 only reads them.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc != 0 {
        return Err(Error::io("exchanging", a, std::io::Error::last_os_error()));
    }
    fsync_dir(parent(a))?;
    if parent(a) != parent(b) {
        fsync_dir(parent(b))?;
    }
    Ok(())
}

/// Cuts the file at `path` to `len` bytes in place and fsyncs it: only for bytes past what the store publishes
/// (an interrupted update's values past the calendar), and only when the disk has no room for the trimmed copy
/// that [`replace_atomic`] would write. Readers never read past the published end, and every published byte
/// keeps its place and page, so a reader that mapped the file sees no change in what it reads.
pub fn truncate_unpublished(path: &Path, len: u64) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io("opening to cut unpublished bytes", path, e))?;
    file.set_len(len)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("cutting unpublished bytes of", path, e))
}

/// Whether `e` says the file system is full (or the user's quota is).
pub fn is_no_space(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. }
        if matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)))
}

/// Writes a new file without fsync, for stores that are not published yet: the caller makes the whole tree
/// durable with [`sync_filesystem`] before publishing it.
pub fn write_unsynced(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::io("writing", path, e))
}

/// Publishes `bytes` at `path` by temp file + rename, without fsync: the file appears whole or not at all, and
/// the caller makes it durable later (one `syncfs` before a commit point).
pub fn replace_unsynced(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent(path);
    let mut tmp = temp_beside(dir, path)?;
    tmp.write_all(bytes)
        .map_err(|e| Error::io("writing", tmp.path().to_path_buf(), e))?;
    tmp.persist(path)
        .map_err(|e| Error::io("renaming a temp file over", path, e.error))?;
    Ok(())
}

/// Flushes every dirty page and inode of the file system holding `path` (`syncfs(2)`): one call instead of an
/// fsync per file when a whole staging store was written.
pub fn sync_filesystem(path: &Path) -> Result<()> {
    let dir = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    // SAFETY: syncfs only reads the descriptor, which `dir` keeps open for the duration of the call.
    let rc = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) };
    if rc != 0 {
        return Err(Error::io(
            "syncing the file system of",
            path,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The text of a file that must be UTF-8 (calendars, instruments), naming the line and byte where it is not.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let at = e.utf8_error().valid_up_to();
        let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() as u64 + 1;
        let col = at
            - bytes[..at]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1);
        Error::Input {
            path: path.to_path_buf(),
            line,
            reason: format!(
                "byte {} of the line ({:#04x}) is not UTF-8 text; fix or remove that line",
                col + 1,
                bytes[at]
            ),
        }
    })
}

/// The names of the entries of `dir` that end in `suffix`, with the suffix cut, sorted; none when `dir` does
/// not exist.
pub fn list_names(dir: &Path, suffix: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(suffix))
                    .map(str::to_owned)
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io("listing", dir, e)),
    };
    out.sort();
    Ok(out)
}

/// Bytes of the files below `dir` (0 when it does not exist; unreadable entries count 0).
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_gives_new_inode_and_leaves_no_temp() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        replace_atomic(&path, b"first").unwrap();
        let ino1 = std::fs::metadata(&path).unwrap().ino();
        replace_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_ne!(std::fs::metadata(&path).unwrap().ino(), ino1);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "a temp file was left behind");
    }

    #[test]
    fn append_keeps_inode() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        replace_atomic(&path, b"ab").unwrap();
        let ino = std::fs::metadata(&path).unwrap().ino();
        append_synced(&path, b"cd").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abcd");
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino);
    }

    #[test]
    fn errors_name_the_file() {
        let err = append_synced(Path::new("/nonexistent-qstore/x.bin"), b"x").unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent-qstore/x.bin"),
            "{err}"
        );
    }
}
