//! Names and paths inside a store: the qlib directory layout, reserved Windows names, and the checks that keep
//! every path inside the store directory.
//!
//! ```text
//! <root>/calendars/<freq>.txt            <root>/calendars/<freq>_future.txt
//! <root>/instruments/<market>.txt
//! <root>/features/<instrument lower>/<field lower>.<freq>.bin
//! ```

use std::path::{Path, PathBuf};

use crate::error::{Error, NameKind, Result};
use crate::store::freq::Freq;

/// Directory of calendar files.
pub const CALENDARS_DIR: &str = "calendars";
/// Directory of instrument (market) files.
pub const INSTRUMENTS_DIR: &str = "instruments";
/// Directory of per-instrument feature directories.
pub const FEATURES_DIR: &str = "features";

/// The store's settings, which a replace (`qdump all --overwrite`) carries into the new store.
pub const CONFIG_FILE: &str = "qstore.json";
/// The default directory of the expression cache.
pub const EXPR_CACHE_DIR: &str = "features_cache";
/// The directory of the dataset cache.
pub const DATASET_CACHE_DIR: &str = "dataset_cache";
/// The lock file every writer of a store holds (`qdump all --overwrite`, `qdump update`, the loader).
pub const UPDATE_LOCK_FILE: &str = ".qstore-update.lock";
/// The marker of an update that has started writing.
pub const PENDING_MARKER: &str = ".qstore-update-pending";
/// When the store was last updated.
pub const STAMP_FILE: &str = ".qstore-updated";
/// The store's id for lock names.
pub const STORE_ID_FILE: &str = ".qstore-id";

/// Prefix qlib puts before file names Windows reserves.
pub const RESERVED_PREFIX: &str = "_qlib_";

/// Names Windows reserves for devices; qlib stores such instruments under `_qlib_<name>`.
const RESERVED: [&str; 24] = [
    "CON", "PRN", "AUX", "NUL", "COM0", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7",
    "COM8", "COM9", "LPT0", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

fn is_reserved(name: &str) -> bool {
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name))
}

/// The file-system name of an instrument code, before lower-casing (qlib's `code_to_fname`).
pub fn code_to_fname(code: &str) -> String {
    if is_reserved(code) {
        format!("{RESERVED_PREFIX}{code}")
    } else {
        code.to_owned()
    }
}

/// The instrument code of a file-system name (qlib's `fname_to_code`, fixed).
///
/// qlib uses `lstrip("_qlib_")`, which strips a character set and turns `_qlib_lpt1` into `pt1`. We remove the
/// prefix only, and only when what remains is a reserved name, so a code that itself starts with `_qlib_`
/// maps to itself.
pub fn fname_to_code(fname: &str) -> &str {
    match fname.strip_prefix(RESERVED_PREFIX) {
        Some(rest) if is_reserved(rest) => rest,
        _ => fname,
    }
}

/// Checks that a user-supplied name is safe to use as one path component.
pub fn validate_name(kind: NameKind, name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name == "." || name == ".." {
        Some("it would name a directory, not a file")
    } else if name.contains(['/', '\\']) {
        Some("it contains a path separator")
    } else if name.contains('\0') {
        Some("it contains a NUL byte")
    } else if name.chars().any(char::is_control) {
        Some("it contains a control character (tab, newline ...)")
    } else if name.trim() != name {
        Some("it starts or ends with white space")
    } else if name.len() > 200 {
        Some("it is longer than 200 bytes")
    } else if kind == NameKind::Field && !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
        // qlib's expression syntax reads a field as `$` followed by word characters, so anything else
        // could never be referenced; a dot would also make `<field>.<freq>.bin` ambiguous.
        Some("a field name may contain only letters, digits and _")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            kind,
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// `calendars/<freq>.txt`, or `calendars/<freq>_future.txt`.
pub fn calendar_path(root: &Path, freq: Freq, future: bool) -> PathBuf {
    let suffix = if future { "_future" } else { "" };
    root.join(CALENDARS_DIR).join(format!("{freq}{suffix}.txt"))
}

/// `instruments/<market lower>.txt`.
pub fn instruments_path(root: &Path, market: &str) -> Result<PathBuf> {
    validate_name(NameKind::Market, market)?;
    Ok(root
        .join(INSTRUMENTS_DIR)
        .join(format!("{}.txt", market.to_lowercase())))
}

/// `features/<instrument>` with the reserved-name prefix and lower-casing applied.
pub fn instrument_dir(root: &Path, instrument: &str) -> Result<PathBuf> {
    validate_name(NameKind::Instrument, instrument)?;
    Ok(root
        .join(FEATURES_DIR)
        .join(code_to_fname(instrument).to_lowercase()))
}

/// `features/<instrument>/<field lower>.<freq>.bin`.
pub fn feature_path(root: &Path, instrument: &str, field: &str, freq: Freq) -> Result<PathBuf> {
    validate_name(NameKind::Field, field)?;
    Ok(instrument_dir(root, instrument)?.join(format!("{}.{freq}.bin", field.to_lowercase())))
}

/// What an entry inside a store directory is to qstore: what a replace may delete and what it must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A file qstore writes (store data, cache entries, locks, markers, temp files).
    File,
    /// A directory qstore makes; its entries are classified one by one.
    Dir,
    /// The user's settings (`qstore.json`): kept.
    Config,
    /// Anything else, and every symbolic link: not qstore's to delete.
    Foreign,
}

/// Classifies the entry at `rel` (relative to a store's root) of type `kind` (from `symlink_metadata`, so a
/// link is never taken for what it points at).
pub fn owner(rel: &Path, kind: std::fs::FileType) -> Owner {
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    let Some(parts) = parts else {
        return Owner::Foreign;
    };
    let (dir, file) = (kind.is_dir(), kind.is_file());
    let temp = |n: &str| file && n.starts_with(crate::store::fsio::TEMP_PREFIX);
    let known = match parts.as_slice() {
        [CONFIG_FILE] if file => return Owner::Config,
        [n] if dir => [
            CALENDARS_DIR,
            INSTRUMENTS_DIR,
            FEATURES_DIR,
            EXPR_CACHE_DIR,
            DATASET_CACHE_DIR,
        ]
        .contains(n),
        [n] => {
            temp(n)
                || (file
                    && [UPDATE_LOCK_FILE, PENDING_MARKER, STAMP_FILE, STORE_ID_FILE].contains(n))
        }
        [CALENDARS_DIR | INSTRUMENTS_DIR, n] => temp(n) || (file && n.ends_with(".txt")),
        [FEATURES_DIR, _] => dir,
        [FEATURES_DIR, _, n] => temp(n) || (file && n.ends_with(".bin")),
        [EXPR_CACHE_DIR, n] => dir || temp(n) || (file && n.ends_with(".lock")),
        [EXPR_CACHE_DIR, _, n] | [DATASET_CACHE_DIR, n] => temp(n) || (file && is_cache_file(n)),
        _ => false,
    };
    match (known, dir) {
        (true, true) => Owner::Dir,
        (true, false) => Owner::File,
        (false, _) => Owner::Foreign,
    }
}

/// Whether `name` is one of a cache's own files (so `qcache clear` and a replace may delete it): a 32-digit
/// key (dataset locks: `dataset-<key>`), then `.meta`, `.lock`, `.pack` (an expression-cache pack's index), or
/// a generation with `.bin`, `.data`, `.index` or `.values` (a pack's values).
pub fn is_cache_file(name: &str) -> bool {
    let name = name.strip_prefix("dataset-").unwrap_or(name);
    let Some((key, rest)) = name.split_at_checked(32) else {
        return false;
    };
    if !key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return false;
    }
    match rest {
        ".meta" | ".lock" | ".pack" => true,
        _ => rest
            .strip_prefix('.')
            .and_then(|r| r.split_once('.'))
            .is_some_and(|(generation, ext)| {
                !generation.is_empty()
                    && generation.bytes().all(|b| b.is_ascii_digit())
                    && matches!(ext, "bin" | "data" | "index" | "values")
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_qstores_entries_are_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::write(dir.path().join("f"), b"")
            .and_then(|()| std::fs::symlink_metadata(dir.path().join("f")))
            .unwrap()
            .file_type();
        let folder = std::fs::symlink_metadata(dir.path()).unwrap().file_type();
        std::os::unix::fs::symlink("f", dir.path().join("l")).unwrap();
        let link = std::fs::symlink_metadata(dir.path().join("l"))
            .unwrap()
            .file_type();
        let key = "0123456789abcdef0123456789abcdef";
        for (rel, kind, want) in [
            ("calendars", folder, Owner::Dir),
            ("calendars/day.txt", file, Owner::File),
            ("features/sh600000/close.day.bin", file, Owner::File),
            ("features/sh600000/.qstore-tmp-x1", file, Owner::File),
            ("qstore.json", file, Owner::Config),
            (".qstore-update.lock", file, Owner::File),
            (
                &format!("features_cache/sh600000/{key}.meta"),
                file,
                Owner::File,
            ),
            (
                &format!("features_cache/sh600000/{key}.3.bin"),
                file,
                Owner::File,
            ),
            (&format!("dataset_cache/{key}.2.index"), file, Owner::File),
            (
                &format!("dataset_cache/dataset-{key}.lock"),
                file,
                Owner::File,
            ),
            ("precious.txt", file, Owner::Foreign),
            ("sub", folder, Owner::Foreign),
            ("features/sh600000/notes.txt", file, Owner::Foreign),
            ("features_cache/sh600000/notes.meta", file, Owner::Foreign),
            (
                &format!("features_cache/sh600000/{key}.x.bin"),
                file,
                Owner::Foreign,
            ),
            ("features", link, Owner::Foreign),
            ("calendars/day.txt", link, Owner::Foreign),
            ("calendars/day.txt/x", file, Owner::Foreign),
        ] {
            assert_eq!(owner(Path::new(rel), kind), want, "{rel}");
        }
    }

    #[test]
    fn reserved_names_round_trip() {
        for code in [
            "CON", "con", "PRN", "AUX", "NUL", "COM0", "COM9", "LPT1", "lpt9",
        ] {
            let f = code_to_fname(code);
            assert_eq!(f, format!("_qlib_{code}"));
            assert_eq!(fname_to_code(&f.to_lowercase()), code.to_lowercase());
        }
        // qlib's lstrip bug: `_qlib_lpt1` -> `pt1`, `_qlib_bil` -> ``. We keep both right.
        assert_eq!(fname_to_code("_qlib_lpt1"), "lpt1");
        assert_eq!(fname_to_code("_qlib_bil"), "_qlib_bil");
        assert_eq!(code_to_fname("SH600000"), "SH600000");
        assert_eq!(code_to_fname("CONX"), "CONX");
    }

    #[test]
    fn paths_follow_qlib_layout() {
        let root = Path::new("/s");
        assert_eq!(
            feature_path(root, "SH600000", "Close", Freq::DAY).unwrap(),
            Path::new("/s/features/sh600000/close.day.bin")
        );
        assert_eq!(
            feature_path(root, "CON", "close", Freq::MINUTE).unwrap(),
            Path::new("/s/features/_qlib_con/close.1min.bin")
        );
        assert_eq!(
            calendar_path(root, Freq::DAY, true),
            Path::new("/s/calendars/day_future.txt")
        );
        assert_eq!(
            instruments_path(root, "CSI300").unwrap(),
            Path::new("/s/instruments/csi300.txt")
        );
    }

    #[test]
    fn escaping_names_are_rejected() {
        for bad in [
            "", "..", ".", "../x", "a/b", "a\\b", "a\0b", "a\tb", "a\nb", " a",
        ] {
            assert!(instrument_dir(Path::new("/s"), bad).is_err(), "{bad:?}");
        }
        for bad in ["close.day", "$close", "a-b", ""] {
            assert!(
                feature_path(Path::new("/s"), "X", bad, Freq::DAY).is_err(),
                "{bad:?}"
            );
        }
        // Symbols such as NA or NULL are ordinary names.
        assert!(instrument_dir(Path::new("/s"), "NA").is_ok());
        assert!(instrument_dir(Path::new("/s"), "600000.SH").is_ok());
    }
}
