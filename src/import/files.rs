//! What the file sources (CSV, Parquet) share: their options, how a path becomes a list of files, and how
//! columns become fields.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::{Failure, LeftOut, SymbolRows, qlib_symbol};
use crate::error::{Error, NameKind, Result};
use crate::store::calendar::Timestamp;
use crate::store::layout::validate_name;

/// Which rows and columns of files to import.
#[derive(Debug, Clone)]
pub struct FileOptions {
    pub date_column: String,
    /// How the date column's text is written (typed Parquet dates need none).
    pub date_format: super::DateFormat,
    pub symbol_column: String,
    /// Only these fields (default: every column but the date and symbol columns and identifiers).
    pub fields: Option<Vec<String>>,
    /// Columns not to import when `fields` is not given.
    pub exclude_fields: Option<Vec<String>>,
    /// Only these symbols, in either spelling (`600000.SH` or `SH600000`).
    pub symbols: Option<Vec<String>>,
    pub start: Option<Timestamp>,
    pub end: Option<Timestamp>,
    /// Only the first N symbols (by file name, or by symbol for a combined file).
    pub limit: Option<usize>,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            date_column: "date".into(),
            date_format: Default::default(),
            symbol_column: "symbol".into(),
            fields: None,
            exclude_fields: None,
            symbols: None,
            start: None,
            end: None,
            limit: None,
        }
    }
}

impl FileOptions {
    /// Whether a row's date is in `start..=end`.
    pub(super) fn in_range(&self, d: Timestamp) -> bool {
        self.start.is_none_or(|s| d >= s) && self.end.is_none_or(|e| d <= e)
    }
}

pub(super) fn source_err(path: &Path, reason: String) -> Error {
    Error::Source {
        source_name: path.display().to_string(),
        reason,
    }
}

/// Whether a symbol, as a file spells it, is one of `opts.symbols` (in either spelling).
pub(super) fn symbol_filter(opts: &FileOptions) -> impl Fn(&str) -> bool + use<> {
    let wanted: Option<HashSet<String>> = opts
        .symbols
        .as_ref()
        .map(|s| s.iter().map(|x| qlib_symbol(x)).collect());
    move |raw: &str| {
        wanted
            .as_ref()
            .is_none_or(|w| w.contains(&qlib_symbol(raw)))
    }
}

/// The files of an input: the `.<ext>` files of a directory (sorted), or the one file given.
pub(super) fn list_files(path: &Path, ext: &str, kind: &str) -> Result<Vec<PathBuf>> {
    if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io("listing", path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case(ext)))
            .collect();
        v.sort();
        if v.is_empty() {
            return Err(source_err(
                path,
                format!("no .{ext} files in this directory"),
            ));
        }
        Ok(v)
    } else if path.is_file() {
        Ok(vec![path.to_path_buf()])
    } else if path.exists() {
        Err(source_err(
            path,
            format!(
                "is neither a regular file nor a directory (a device or a pipe?); give a {kind} file or a \
                 directory of them"
            ),
        ))
    } else {
        Err(Error::io(
            "reading",
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ))
    }
}

/// The field names of a file's columns (lower-case), checked: a date column, valid and distinct names.
/// `at` says where the names are in messages (`line 1: ` for a CSV header).
pub(super) fn file_fields(
    f: &Path,
    cols: &[String],
    opts: &FileOptions,
    at: &str,
) -> Result<Vec<String>> {
    if !cols
        .iter()
        .any(|c| c.eq_ignore_ascii_case(&opts.date_column))
    {
        return Err(source_err(
            f,
            format!(
                "{at}no date column {:?} (columns: {}); name it with --date-column",
                opts.date_column,
                cols.join(", ")
            ),
        ));
    }
    let mut here = Vec::new();
    for c in cols {
        if c.eq_ignore_ascii_case(&opts.date_column) || c.eq_ignore_ascii_case(&opts.symbol_column)
        {
            continue;
        }
        let name = c.to_lowercase();
        validate_name(NameKind::Field, &name)
            .map_err(|e| source_err(f, format!("{at}column {c:?}: {e}")))?;
        if here.contains(&name) {
            return Err(source_err(
                f,
                format!(
                    "{at}two columns are named {name:?} (field names are case-insensitive); rename one"
                ),
            ));
        }
        here.push(name);
    }
    Ok(here)
}

/// The fields to import: `opts.fields` (each must be a column of the input), else every field column of
/// every file, in first-seen order.
pub(super) fn choose_fields(
    path: &Path,
    all_fields: Vec<String>,
    opts: &FileOptions,
) -> Result<(Vec<String>, Vec<super::LeftOutColumn>)> {
    let Some(list) = &opts.fields else {
        return super::default_fields(all_fields, opts.exclude_fields.as_deref())
            .map_err(|reason| source_err(path, reason));
    };
    let mut out = Vec::new();
    for f in list {
        let f = f.to_lowercase();
        if !all_fields.contains(&f) {
            return Err(source_err(
                path,
                format!(
                    "no column {f:?} in the input (columns: {})",
                    all_fields.join(", ")
                ),
            ));
        }
        out.push(f);
    }
    Ok((out, Vec::new()))
}

/// One symbol's input to a file source.
pub(super) enum Input {
    /// One symbol's file, read when needed.
    File { path: PathBuf, raw_symbol: String },
    /// One symbol's file that cannot be used (no date column, not the format ...), in a directory whose
    /// other files can: that symbol fails, the rest are imported.
    Failed(Failure),
    /// One symbol's rows from files with a symbol column, already read (or why they could not be).
    Loaded(std::result::Result<SymbolRows, Failure>),
}

/// The inputs of a directory of one file per symbol (file stem = symbol): those `keep` accepts, failed where
/// `bad` has the file's error, the first `limit`.
pub(super) fn per_symbol(
    files: Vec<PathBuf>,
    mut bad: HashMap<PathBuf, Error>,
    keep: &dyn Fn(&str) -> bool,
    limit: Option<usize>,
) -> Vec<Input> {
    let mut v: Vec<Input> = files
        .into_iter()
        .filter_map(|path| {
            let raw_symbol = path.file_stem()?.to_string_lossy().into_owned();
            if !keep(&raw_symbol) {
                return None;
            }
            Some(match bad.remove(&path) {
                Some(e) => Input::Failed(Failure {
                    symbol: raw_symbol,
                    reason: e.detail(),
                }),
                None => Input::File { path, raw_symbol },
            })
        })
        .collect();
    v.truncate(limit.unwrap_or(usize::MAX));
    v
}

/// The rows an update's input held before its first day (`n` of them), skipped and reported.
pub(super) fn left_before_start(n: u64, start: Option<Timestamp>) -> Option<LeftOut> {
    let start = start.map(|s| crate::store::calendar::format_timestamp(s, false));
    (n > 0).then(|| LeftOut {
        rows: n,
        reason: format!(
            "dated before {} (days the store already has); pass --since DATE to read them as corrections",
            start.unwrap_or_default()
        ),
    })
}
