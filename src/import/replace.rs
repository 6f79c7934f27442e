//! Putting a whole new store at a path (`qdump all --to`, `--overwrite`): built beside it, switched in with
//! one atomic rename, and the old store deleted entry by entry, only what qstore wrote.
//!
//! Rules, each the answer to a way a replace once lost data:
//! - A `--to` that is a symbolic link is resolved once; the store is replaced where the link points and the
//!   link is left as it was. Deleting never follows a link.
//! - The old store's writer lock ([`UpdateLock`]) is held from before the build to after the switch, so a
//!   `qdump update` (or a loader refresh) never runs on the old store meanwhile: the store is always one
//!   writer's result.
//! - Only entries that [`layout::owner`] calls qstore's are deleted. `qstore.json` is carried into the new
//!   store. Any other file makes the replace refuse, unless the caller asks to carry those files over
//!   (`keep_unknown`: hard links, or copies across file systems, made before the switch).

use std::path::{Path, PathBuf};

use super::update::UpdateLock;
use crate::error::{Error, Result};
use crate::store::Store;
use crate::store::fsio;
use crate::store::layout::{self, Owner};

/// How [`publish_new_store`] treats a `target` that already holds something.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplaceOptions {
    /// Replace an existing store (else a non-empty target is refused).
    pub overwrite: bool,
    /// Carry files qstore did not write into the new store instead of refusing.
    pub keep_unknown: bool,
    /// Wait for the store's other writer (an update) instead of failing at once.
    pub wait: bool,
}

impl ReplaceOptions {
    /// Replace an existing store, refusing one with files that are not qstore's.
    pub fn overwrite() -> ReplaceOptions {
        ReplaceOptions {
            overwrite: true,
            ..Default::default()
        }
    }
}

/// Builds a new store next to `target` with `build` and switches it in atomically.
///
/// The store is built in a hidden sibling directory (`.<name>.qstore-staging-<pid>`), and then renamed onto
/// `target`, or, when `target` already holds a store and `overwrite` is set, exchanged with it in one
/// `renameat2(RENAME_EXCHANGE)` before the old store's own entries are deleted. A failure or a kill at any
/// point leaves `target` exactly as it was; a staging directory left by a kill is not a store anyone opens.
pub fn publish_new_store<T>(
    target: &Path,
    opts: &ReplaceOptions,
    build: impl FnOnce(&Store) -> Result<T>,
) -> Result<T> {
    let target = &resolve_link(target)?;
    let refuse = |reason| Error::Target {
        path: target.to_path_buf(),
        reason,
    };
    let non_empty = match std::fs::read_dir(target) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(_) if target.exists() => return Err(refuse("it exists and is not a directory")),
        Err(e) => return Err(Error::io("listing", target, e)),
    };
    if non_empty && !opts.overwrite {
        return Err(refuse(
            "it is not empty; pass --overwrite to replace the store in it",
        ));
    }
    let is_store =
        std::fs::symlink_metadata(target.join(layout::CALENDARS_DIR)).is_ok_and(|m| m.is_dir());
    if non_empty && !is_store {
        return Err(refuse(
            "it is not empty and not a store (no calendars/), so --overwrite will not replace it",
        ));
    }
    // Held until the old store is gone: no other writer of this store runs meanwhile.
    let _lock = non_empty
        .then(|| UpdateLock::acquire(target, opts.wait))
        .transpose()?;
    let old = if non_empty {
        let old = Tree::scan(target)?;
        if !old.foreign.is_empty() && !opts.keep_unknown {
            return Err(Error::ForeignFiles {
                path: target.to_path_buf(),
                files: old.foreign.clone(),
            });
        }
        Some(old)
    } else {
        None
    };
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| refuse("it has no final path component"))?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fsio::create_dir_all_synced(parent)?;
    remove_stale_staging(parent, name)?;
    let staging = parent.join(format!(".{name}.qstore-staging-{}", std::process::id()));
    if std::fs::symlink_metadata(&staging).is_ok() {
        remove_owned(&staging, &[])?;
    }
    let built = Store::create(&staging).and_then(|store| {
        let out = build(&store)?;
        if let Some(old) = &old
            && old.carry(target, &staging)?
        {
            fsio::sync_filesystem(&staging)?;
        }
        Ok(out)
    });
    let out = match built {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    crate::util::failpoint::hit("import:before-publish");
    if let Some(old) = old {
        if let Err(e) = fsio::exchange(&staging, target) {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        crate::util::failpoint::hit("import:after-exchange");
        // The old store now sits at the staging name; what it held that was not qstore's was carried over.
        remove_owned(&staging, &old.foreign)?;
    } else {
        // rename(2) replaces an empty directory atomically; it fails if another import filled it meanwhile.
        if let Err(e) = std::fs::rename(&staging, target) {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(Error::io("renaming the new store to", target, e));
        }
        fsio::fsync_dir(parent)?;
    }
    Ok(out)
}

/// `target`, or where it points when it is a symbolic link (resolved once, to the end of any chain).
fn resolve_link(target: &Path) -> Result<PathBuf> {
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(target).map_err(|e| {
            Error::io(
                "resolving the symbolic link (it must point at a store or an empty directory)",
                target,
                e,
            )
        }),
        _ => Ok(target.to_path_buf()),
    }
}

/// A store directory's entries, classified by [`layout::owner`].
struct Tree {
    /// Entries that are not qstore's (relative to the root; a foreign directory is one entry).
    foreign: Vec<PathBuf>,
    /// Whether the store has its settings file.
    config: bool,
}

impl Tree {
    fn scan(root: &Path) -> Result<Tree> {
        let mut tree = Tree {
            foreign: Vec::new(),
            config: false,
        };
        walk(root, Path::new(""), &mut |rel, owner| {
            match owner {
                Owner::Foreign => tree.foreign.push(rel.to_path_buf()),
                Owner::Config => tree.config = true,
                Owner::File | Owner::Dir => {}
            }
            Ok(())
        })?;
        tree.foreign.sort();
        Ok(tree)
    }

    /// Puts the settings file and the foreign entries of the store at `from` into the new store at `to`;
    /// whether anything was carried.
    fn carry(&self, from: &Path, to: &Path) -> Result<bool> {
        if self.config {
            let src = from.join(layout::CONFIG_FILE);
            let bytes = std::fs::read(&src).map_err(|e| Error::io("reading", &src, e))?;
            fsio::write_unsynced(&to.join(layout::CONFIG_FILE), &bytes)?;
        }
        for rel in &self.foreign {
            let dst = to.join(rel);
            if let Some(p) = dst.parent() {
                std::fs::create_dir_all(p).map_err(|e| Error::io("creating directory", p, e))?;
            }
            carry_entry(&from.join(rel), &dst)?;
        }
        Ok(self.config || !self.foreign.is_empty())
    }
}

/// Calls `f` with every entry below `root` (relative path, owner), parents before children, descending only
/// into qstore's directories (never through a link).
fn walk(root: &Path, rel: &Path, f: &mut dyn FnMut(&Path, Owner) -> Result<()>) -> Result<()> {
    let dir = root.join(rel);
    let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("listing", &dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing", &dir, e))?;
        let rel = rel.join(entry.file_name());
        let kind = entry
            .file_type()
            .map_err(|e| Error::io("inspecting", root.join(&rel), e))?;
        let owner = layout::owner(&rel, kind);
        f(&rel, owner)?;
        if owner == Owner::Dir {
            walk(root, &rel, f)?;
        }
    }
    Ok(())
}

/// Recreates `src` at `dst`: files as hard links (copies across file systems), directories entry by entry,
/// links as links.
fn carry_entry(src: &Path, dst: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(src).map_err(|e| Error::io("inspecting", src, e))?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        let to = std::fs::read_link(src).map_err(|e| Error::io("reading the link", src, e))?;
        std::os::unix::fs::symlink(to, dst).map_err(|e| Error::io("creating the link", dst, e))
    } else if kind.is_dir() {
        std::fs::create_dir(dst).map_err(|e| Error::io("creating directory", dst, e))?;
        for entry in std::fs::read_dir(src).map_err(|e| Error::io("listing", src, e))? {
            let entry = entry.map_err(|e| Error::io("listing", src, e))?;
            carry_entry(&entry.path(), &dst.join(entry.file_name()))?;
        }
        Ok(())
    } else if kind.is_file() {
        match std::fs::hard_link(src, dst) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => std::fs::copy(src, dst)
                .map(drop)
                .map_err(|e| Error::io("copying", src, e)),
            Err(e) => Err(Error::io("linking", src, e)),
        }
    } else {
        Err(Error::io(
            "carrying over",
            src,
            std::io::Error::other(
                "it is neither a file, a directory nor a link; move it out of the store",
            ),
        ))
    }
}

/// Deletes the store at `dir` (never following a link): qstore's own entries and the `carried` ones (already
/// in the new store), files in parallel. Whatever else is there (a file added during the import) is kept:
/// the directory is then renamed to a visible `<name>.qstore-leftover-<pid>` beside it.
fn remove_owned(dir: &Path, carried: &[PathBuf]) -> Result<()> {
    use rayon::prelude::*;
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    walk(dir, Path::new(""), &mut |rel, owner| {
        match owner {
            Owner::Dir => dirs.push(rel.to_path_buf()),
            Owner::File | Owner::Config => files.push(rel.to_path_buf()),
            Owner::Foreign if carried.iter().any(|c| c == rel) => {
                // Carried: the new store has it. A directory goes with everything in it.
                let path = dir.join(rel);
                let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
                if is_dir {
                    std::fs::remove_dir_all(&path).map_err(|e| Error::io("removing", &path, e))?;
                } else {
                    files.push(rel.to_path_buf());
                }
            }
            Owner::Foreign => {}
        }
        Ok(())
    })?;
    files.par_iter().try_for_each(|rel| {
        let path = dir.join(rel);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing", &path, e)),
        }
    })?;
    // Deepest first; a directory still holding something foreign stays.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let _ = std::fs::remove_dir(dir.join(d));
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
            let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("store");
            let name = name
                .trim_start_matches('.')
                .split(".qstore-staging-")
                .next()
                .unwrap_or(name);
            let leftover =
                dir.with_file_name(format!("{name}.qstore-leftover-{}", std::process::id()));
            std::fs::rename(dir, &leftover)
                .map_err(|e| Error::io("renaming what was left of the old store to", &leftover, e))
        }
        Err(e) => Err(Error::io("removing the old store at", dir, e)),
    }
}

/// Removes staging directories for `name` left by processes that no longer run (killed imports, or an old
/// store left behind by a kill between the exchange and its removal): only qstore's entries.
fn remove_stale_staging(parent: &Path, name: &str) -> Result<()> {
    let prefix = format!(".{name}.qstore-staging-");
    let entries = std::fs::read_dir(parent).map_err(|e| Error::io("listing", parent, e))?;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        // SAFETY: kill with signal 0 sends nothing; it only asks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !alive && is_dir {
            remove_owned(&entry.path(), &[])?;
        }
    }
    Ok(())
}
