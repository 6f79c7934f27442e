//! Typed errors of the library.
//!
//! Every variant carries where the problem is (file, line, byte offset, name) and its `Display` text ends
//! with what the user can do about it, so the binaries can print the chain as it is.

use std::path::PathBuf;

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a feature `.bin` file was rejected.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CorruptReason {
    /// The file size is not a multiple of 4 bytes (a torn append, or not a feature file).
    SizeNotMultipleOf4 { size: u64 },
    /// The float32 start index at byte 0 is NaN or infinite.
    StartNotFinite { bits: u32 },
    /// The start index is negative.
    StartNegative { value: f32 },
    /// The start index has a fractional part.
    StartFractional { value: f32 },
    /// The start index is at or above 2^24, where float32 stops representing integers exactly.
    StartTooLarge { value: f32 },
    /// The data runs past the end of the calendar it belongs to (found by `verify`, not on reads).
    PastCalendar { end: usize, calendar_len: usize },
}

impl std::fmt::Display for CorruptReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CorruptReason::SizeNotMultipleOf4 { size } => write!(
                f,
                "size {size} bytes is not a multiple of 4 (the last {} bytes are a torn value)",
                size % 4
            ),
            CorruptReason::StartNotFinite { bits } => {
                write!(
                    f,
                    "start index at byte 0 is not a finite number (bits {bits:#010x})"
                )
            }
            CorruptReason::StartNegative { value } => {
                write!(f, "start index at byte 0 is negative ({value})")
            }
            CorruptReason::StartFractional { value } => {
                write!(f, "start index at byte 0 is not a whole number ({value})")
            }
            CorruptReason::StartTooLarge { value } => write!(
                f,
                "start index at byte 0 is {value}, at or above 2^24 where float32 loses integer precision"
            ),
            CorruptReason::PastCalendar { end, calendar_len } => write!(
                f,
                "data runs to calendar index {end} but the calendar has only {calendar_len} entries"
            ),
        }
    }
}

/// What kind of name was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    Instrument,
    Field,
    Market,
}

impl std::fmt::Display for NameKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NameKind::Instrument => "instrument",
            NameKind::Field => "field",
            NameKind::Market => "market",
        })
    }
}

/// The error type of every fallible operation in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O error on a named file. The OS's text is the source (printed after this by
    /// an error chain, `{:#}` with anyhow), not repeated here.
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The store directory does not exist or lacks `calendars/`.
    #[error(
        "{} is not a qstore/qlib store ({reason}); create one with `qdump all` or point at a directory \
         holding calendars/, instruments/ and features/",
        path.display()
    )]
    MissingStore { path: PathBuf, reason: &'static str },

    /// A frequency string that qlib's rules do not accept.
    #[error("unknown frequency {freq:?}: use day (or 1d), Nmin (1min, 5min ...), week or month")]
    UnknownFreq { freq: String },

    /// Timestamps given to build or extend a calendar in memory (an import, an update) that no calendar file
    /// could hold. `index` is the 0-based position among them.
    #[error("calendar timestamp #{index}: {reason}")]
    CalendarDates { index: usize, reason: String },

    /// The store has no calendar file for the requested frequency.
    #[error(
        "the store has no calendar for frequency {freq} ({} is missing); available: {available}",
        path.display()
    )]
    NoCalendar {
        freq: String,
        path: PathBuf,
        available: String,
    },

    /// A calendar file line that is not a timestamp, or is out of order.
    #[error("{}:{line}: {reason}; fix or remove that line", path.display())]
    Calendar {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    /// A line of an instruments file that does not parse.
    #[error("{}:{line}: {reason}; each line must be SYMBOL<TAB>START<TAB>END", path.display())]
    Instruments {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    /// The market has no instruments file.
    #[error("market {market:?} has no instruments file ({} is missing)", path.display())]
    NoMarket { market: String, path: PathBuf },

    /// A feature file that breaks the format.
    #[error("{}: corrupt feature file: {reason}; rebuild it (`qdump all`) or remove it", path.display())]
    CorruptFeature {
        path: PathBuf,
        reason: CorruptReason,
    },

    /// An instrument, field or market name that is empty or could escape the store directory.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        kind: NameKind,
        name: String,
        reason: &'static str,
    },

    /// A write whose calendar index does not fit the format.
    #[error(
        "{}: cannot write at calendar index {index}: {reason}",
        path.display()
    )]
    IndexOutOfRange {
        path: PathBuf,
        index: u64,
        reason: &'static str,
    },

    /// A timestamp string that is neither `YYYY-MM-DD` nor `YYYY-MM-DD HH:MM:SS`.
    #[error("invalid date {text:?}: expected YYYY-MM-DD or YYYY-MM-DD HH:MM:SS")]
    InvalidDate { text: String },

    /// A destination that a whole-store write refuses to touch.
    #[error("refusing to write the store to {}: {reason}", path.display())]
    Target { path: PathBuf, reason: &'static str },

    /// A store to replace that holds files qstore did not write; nothing was changed.
    #[error(
        "refusing to replace the store at {}: it holds {} entr{} qstore did not write ({}); move {} out, or \
         pass --keep-unknown to carry {} into the new store",
        path.display(),
        files.len(),
        if files.len() == 1 { "y" } else { "ies" },
        list_some(files),
        if files.len() == 1 { "it" } else { "them" },
        if files.len() == 1 { "it" } else { "them" },
    )]
    ForeignFiles { path: PathBuf, files: Vec<PathBuf> },

    /// An import in which every symbol failed; nothing was published.
    #[error("no symbol could be imported; the target was not changed")]
    NothingImported,

    /// A configuration or connection problem with a data source (MySQL, CSV layout).
    #[error("{source_name}: {reason}")]
    Source { source_name: String, reason: String },

    /// An expression that does not parse or whose arguments do not fit its operators.
    #[error("{reason}\n  {expr}\n  {caret}^ at byte {pos}", caret = " ".repeat(expr[..(*pos).min(expr.len())].chars().count()))]
    Expr {
        expr: String,
        pos: usize,
        reason: String,
    },

    /// A bad setting in a store's `qstore.json` or a `QSTORE_*` environment variable.
    #[error("configuration {source_name}: {reason}; see the qstore.json section of README.md")]
    Config { source_name: String, reason: String },

    /// A line of an input file (CSV, text) that cannot be read or imported.
    #[error("{}:{line}: {reason}", path.display())]
    Input {
        path: PathBuf,
        line: u64,
        reason: String,
    },

    /// A writer lock that another process still held when the wait ran out.
    #[error(
        "{what} is still held by {holder} after waiting {waited:?}; if that process is gone, \
         `qcache reset-lock` clears it"
    )]
    LockBusy {
        what: String,
        holder: String,
        waited: std::time::Duration,
    },

    /// A newer writer published while this one's lease had run out: this writer's result was discarded.
    #[error(
        "{what}: a newer writer (token {newer}) published while this one (token {token}) held an expired \
         lease; its result was discarded (nothing is wrong on disk; run the command again if needed)"
    )]
    Fenced {
        what: String,
        token: u64,
        newer: u64,
    },

    /// The writer's lease ran out while it worked; nothing was published.
    #[error(
        "{what}: the lock's lease was lost while computing; nothing was published; check that Redis is \
         reachable, or raise the lease (--lease-s, expression_cache.lease_s) for longer work"
    )]
    LeaseLost { what: String },

    /// Redis, which holds the writer locks, cannot be reached or refused a command.
    #[error(
        "Redis at {url} (from {from}): {reason}; start it, fix the URL (--redis, QSTORE_REDIS_URL or \
         qstore.json expression_cache.redis_url), or use file locks (--lock file) on a single machine"
    )]
    Redis {
        url: String,
        from: String,
        reason: String,
    },

    /// A cache file that is damaged or disagrees with its meta.
    #[error(
        "{}: damaged cache file: {reason}; `qcache verify` lists such entries and `qcache clear` removes \
         them (a warm rebuilds them)",
        path.display()
    )]
    CorruptCache { path: PathBuf, reason: String },

    /// Arrow or Parquet could not encode (or decode) a query's output or an input file.
    #[error("{format}: {reason}")]
    Output {
        format: &'static str,
        reason: String,
    },

    /// The HDF5 library failed on a dataset cache file.
    #[error(
        "{what} {}: HDF5: {reason}; `qcache verify` checks the dataset cache and `qcache clear --datasets` \
         removes it",
        path.display()
    )]
    Hdf5 {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// The first few paths of a list, for a message.
fn list_some(files: &[PathBuf]) -> String {
    let mut s: Vec<String> = files
        .iter()
        .take(5)
        .map(|f| f.display().to_string())
        .collect();
    if files.len() > 5 {
        s.push(format!("and {} more", files.len() - 5));
    }
    s.join(", ")
}

impl Error {
    /// The message with every cause after it (`reading x.bin: No space left on device`), for text that is
    /// stored or listed rather than printed as a chain (a failed symbol's reason, a `check` finding).
    pub fn detail(&self) -> String {
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            out.push_str(": ");
            out.push_str(&c.to_string());
            cause = c.source();
        }
        out
    }

    /// Wraps an I/O error with the operation and file it concerns.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
