//! Building a whole store from K-line rows (`qdump all`), and appending new days to one (`qdump update`).
//!
//! Every source (CSV files, a MySQL table) implements [`Source`]: pass 1 lists every timestamp (the calendar is
//! their union), pass 2 streams the rows one symbol at a time. The [`SymbolWriter`] turns each symbol's rows
//! into feature files, so every source produces byte-identical stores from the same data, and memory holds only
//! the symbols in flight, never the table.

pub mod csv;
pub mod mysql;
pub mod update;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;

use crate::calendar::{Calendar, Timestamp};
use crate::error::{Error, NameKind, Result};
use crate::freq::Freq;
use crate::fsio;
use crate::instruments::{Instruments, Span};
use crate::layout::validate_name;
use crate::store::Store;

pub use self::csv::CsvSource;
pub use self::mysql::MysqlSource;
pub use self::update::{UpdateSummary, update};

/// The rows of one symbol as a source delivers them (not necessarily sorted).
#[derive(Debug, Clone, PartialEq)]
pub struct SymbolRows {
    /// The symbol as the source spells it (`600000.SH`, or a file stem).
    pub raw_symbol: String,
    /// Where the rows came from, for messages (a file path, or `table.column = value`).
    pub origin: String,
    pub dates: Vec<Timestamp>,
    /// One column per field of the source; `None` when this symbol's input lacks that field.
    pub columns: Vec<Option<Vec<f32>>>,
}

/// A symbol that could not be imported, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub symbol: String,
    pub reason: String,
}

/// Where K-lines come from.
pub trait Source: Sync {
    /// Field names, lower-case, in output order.
    fn fields(&self) -> &[String];
    /// How many symbols pass 2 will deliver (for progress).
    fn symbol_count(&self) -> usize;
    /// Pass 1: every timestamp of the rows to import (any order, duplicates allowed).
    fn dates(&self) -> Result<Vec<Timestamp>>;
    /// Pass 2: each symbol's rows, or why a symbol cannot be read. May call `sink` from several threads.
    fn stream(
        &self,
        sink: &(dyn Fn(std::result::Result<SymbolRows, Failure>) + Sync),
    ) -> Result<()>;
    /// Whether pass 1 and pass 2 should run at the same time (a server does both queries while the client waits;
    /// local files would only compete for the same disk and cores).
    fn overlap_passes(&self) -> bool {
        false
    }
}

/// What to do with two rows of one symbol on the same date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnDuplicate {
    /// The symbol fails, naming the date.
    #[default]
    Error,
    /// Keep the first row delivered.
    First,
    /// Keep the last row delivered.
    Last,
}

/// How symbols are named in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SymbolFormat {
    /// qlib's convention: `600000.SH` -> `SH600000`, everything upper-case.
    #[default]
    Qlib,
    /// As the source spells it.
    Raw,
}

impl SymbolFormat {
    pub fn apply(self, raw: &str) -> String {
        match self {
            SymbolFormat::Qlib => qlib_symbol(raw),
            SymbolFormat::Raw => raw.to_owned(),
        }
    }
}

/// The spellings a source may use for a store symbol: itself, and for `SH600000` also `600000.SH` and
/// `600000.SS` (the inverse of [`qlib_symbol`]), so a loader can ask a table for a symbol by its store name.
pub fn source_spellings(symbol: &str) -> Vec<String> {
    let mut out = vec![symbol.to_string()];
    let (exch, code) = symbol.split_at(symbol.len().min(2));
    if matches!(exch, "SH" | "SZ" | "BJ")
        && !code.is_empty()
        && code.bytes().all(|b| b.is_ascii_digit())
    {
        out.push(format!("{code}.{exch}"));
        if exch == "SH" {
            out.push(format!("{code}.SS"));
        }
    }
    out
}

/// qlib's symbol convention: `600000.SH` -> `SH600000` (`SS` is Shanghai too); anything else is upper-cased.
pub fn qlib_symbol(raw: &str) -> String {
    let raw = raw.trim();
    if let Some((code, exch)) = raw.rsplit_once('.') {
        let exch = exch.to_ascii_uppercase();
        let exch = if exch == "SS" { "SH".to_owned() } else { exch };
        if !code.is_empty()
            && code.bytes().all(|b| b.is_ascii_digit())
            && matches!(exch.as_str(), "SH" | "SZ" | "BJ")
        {
            return format!("{exch}{code}");
        }
    }
    raw.to_ascii_uppercase()
}

/// Options of an import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub freq: Freq,
    pub market: String,
    pub on_duplicate: OnDuplicate,
    pub symbol_format: SymbolFormat,
    /// When a source overlaps its passes, rows streamed before the calendar is known are held up to about this
    /// many bytes; past it the stream waits for the calendar.
    pub pending_cap: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            freq: Freq::DAY,
            market: "all".into(),
            on_duplicate: OnDuplicate::Error,
            symbol_format: SymbolFormat::Qlib,
            pending_cap: 128 << 20,
        }
    }
}

/// What an import did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportSummary {
    /// Whether the new store was switched in (false when no symbol could be imported).
    pub published: bool,
    pub symbols_ok: usize,
    pub failed: Vec<Failure>,
    pub rows: u64,
    pub fields: Vec<String>,
    pub files: u64,
    pub calendar_len: usize,
    pub calendar_first: Option<String>,
    pub calendar_last: Option<String>,
    pub store_bytes: u64,
    pub elapsed_s: f64,
}

/// Symbols streamed before the calendar is known.
#[derive(Default)]
struct Pending {
    items: Vec<std::result::Result<SymbolRows, Failure>>,
    /// Estimated bytes held in `items`.
    bytes: usize,
    /// Pass 1 failed: nothing more will be written.
    abandoned: bool,
}

/// One imported symbol.
struct Written {
    symbol: String,
    span: Span,
    rows: u64,
    files: u64,
    bytes: u64,
}

/// Writes each symbol's files into a store that is not yet published.
pub struct SymbolWriter<'a> {
    store: &'a Store,
    calendar: &'a Calendar,
    fields: &'a [String],
    opts: &'a ImportOptions,
    /// Store symbol -> the raw symbol that produced it, to catch two spellings of one symbol.
    seen: &'a Mutex<HashMap<String, String>>,
}

impl SymbolWriter<'_> {
    fn write(&self, mut rows: SymbolRows) -> std::result::Result<Written, Failure> {
        let raw = rows.raw_symbol.clone();
        let fail = |reason: String| Failure {
            symbol: raw.clone(),
            reason,
        };
        let symbol = self.opts.symbol_format.apply(&rows.raw_symbol);
        validate_name(NameKind::Instrument, &symbol).map_err(|e| fail(e.to_string()))?;
        if rows.dates.is_empty() {
            return Err(fail(
                "no rows (none in the input, or none between --start-date and --end-date)".into(),
            ));
        }
        if let Some(prev) = self
            .seen
            .lock()
            .insert(symbol.clone(), rows.raw_symbol.clone())
        {
            return Err(fail(format!(
                "{} maps to {symbol}, which {prev:?} already produced; use --symbol-format raw to keep both",
                rows.raw_symbol
            )));
        }
        dedup(&mut rows, self.opts.on_duplicate).map_err(fail)?;
        let present: Vec<(usize, &Vec<f32>)> = rows
            .columns
            .iter()
            .enumerate()
            .filter_map(|(f, c)| c.as_ref().map(|c| (f, c)))
            .collect();
        if present.iter().all(|(_, c)| c.iter().all(|v| v.is_nan())) {
            return Err(fail(format!(
                "every value of every field is missing in {} rows ({})",
                rows.dates.len(),
                rows.origin
            )));
        }
        let mut index = Vec::with_capacity(rows.dates.len());
        for &d in &rows.dates {
            index.push(self.calendar.index_of(d).ok_or_else(|| {
                fail(format!(
                    "row dated {d} is not in the calendar (a day missing from the trading-day table, or the source changed during the import)"
                ))
            })?);
        }
        let first = index[0];
        let len = index[index.len() - 1] - first + 1;
        self.store
            .bulk_create_instrument(&symbol)
            .map_err(|e| fail(e.to_string()))?;
        let mut bytes = 0;
        for &(f, col) in &present {
            let mut values = vec![f32::NAN; len];
            for (&i, &v) in index.iter().zip(col) {
                values[i - first] = v;
            }
            bytes += self
                .store
                .bulk_put_feature(&symbol, &self.fields[f], self.opts.freq, first, &values)
                .map_err(|e| fail(e.to_string()))?;
        }
        Ok(Written {
            span: Span {
                start: rows.dates[0],
                end: rows.dates[rows.dates.len() - 1],
            },
            symbol,
            rows: rows.dates.len() as u64,
            files: present.len() as u64,
            bytes,
        })
    }
}

/// Sorts a symbol's rows by date and resolves duplicate dates by `policy`.
fn dedup(rows: &mut SymbolRows, policy: OnDuplicate) -> std::result::Result<(), String> {
    let n = rows.dates.len();
    let sorted = rows.dates.windows(2).all(|w| w[0] < w[1]);
    if sorted {
        return Ok(());
    }
    // Stable order by date keeps the delivery order among duplicates, which First/Last rely on.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&k| rows.dates[k]);
    let mut keep: Vec<usize> = Vec::with_capacity(n);
    for k in order {
        match keep.last() {
            Some(&prev) if rows.dates[prev] == rows.dates[k] => match policy {
                OnDuplicate::Error => {
                    return Err(format!(
                        "two rows dated {} ({}); pass --on-duplicate first|last to keep one",
                        rows.dates[k], rows.origin
                    ));
                }
                OnDuplicate::First => {}
                OnDuplicate::Last => *keep.last_mut().expect("non-empty") = k,
            },
            _ => keep.push(k),
        }
    }
    rows.dates = keep.iter().map(|&k| rows.dates[k]).collect();
    for col in rows.columns.iter_mut().flatten() {
        *col = keep.iter().map(|&k| col[k]).collect();
    }
    Ok(())
}

/// Imports everything `source` delivers into a new store at `target` (see [`publish_new_store`]).
///
/// Symbols that fail are reported in the summary and skipped. When none succeeds, nothing is published and
/// `target` is left as it was. `progress` is called after each symbol with the rows it had.
pub fn import(
    source: &dyn Source,
    target: &Path,
    overwrite: bool,
    opts: &ImportOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ImportSummary> {
    let t0 = Instant::now();
    let mut summary = None;
    let built = publish_new_store(target, overwrite, |store| {
        let seen = Mutex::new(HashMap::new());
        let ok: Mutex<Vec<Written>> = Mutex::new(Vec::new());
        let failed: Mutex<Vec<Failure>> = Mutex::new(Vec::new());
        let rows = AtomicU64::new(0);
        let process = |item: std::result::Result<SymbolRows, Failure>, calendar: &Calendar| {
            let writer = SymbolWriter {
                store,
                calendar,
                fields: source.fields(),
                opts,
                seen: &seen,
            };
            let n = item.as_ref().map_or(0, |r| r.dates.len() as u64);
            match item.and_then(|r| writer.write(r)) {
                Ok(w) => {
                    rows.fetch_add(w.rows, Ordering::Relaxed);
                    ok.lock().push(w);
                    crate::failpoint::hit("import:symbol");
                }
                Err(f) => failed.lock().push(f),
            }
            progress(n);
        };
        let build_calendar = || -> Result<Calendar> {
            let mut dates = source.dates()?;
            dates.sort_unstable();
            dates.dedup();
            let calendar = Calendar::new(opts.freq, dates)?;
            store.save_calendar(&calendar)?;
            crate::failpoint::hit("import:after-calendar");
            Ok(calendar)
        };

        let calendar: Calendar = if source.overlap_passes() {
            // Pass 2 starts at once; symbols that arrive before the calendar wait in `pending` (bounded: a full
            // buffer makes the stream wait), and are written as soon as the calendar is published.
            let cell: std::sync::OnceLock<Calendar> = std::sync::OnceLock::new();
            let pending: Mutex<Pending> = Mutex::new(Pending::default());
            let wake = parking_lot::Condvar::new();
            let sink = |item: std::result::Result<SymbolRows, Failure>| {
                if cell.get().is_none() {
                    let mut p = pending.lock();
                    loop {
                        if p.abandoned {
                            return; // pass 1 failed: the import is over, drop what arrives
                        }
                        if cell.get().is_some() {
                            break;
                        }
                        if p.bytes < opts.pending_cap {
                            p.bytes += item
                                .as_ref()
                                .map_or(0, |r| r.dates.len() * (8 + 4 * r.columns.len()));
                            p.items.push(item);
                            return;
                        }
                        wake.wait(&mut p);
                    }
                }
                process(item, cell.get().expect("checked above"));
            };
            let (cal, streamed) = std::thread::scope(|scope| {
                let stream = scope.spawn(|| source.stream(&sink));
                let cal = build_calendar();
                let held = {
                    let mut p = pending.lock();
                    match &cal {
                        Ok(c) => {
                            let _ = cell.set(c.clone());
                        }
                        Err(_) => p.abandoned = true,
                    }
                    wake.notify_all();
                    std::mem::take(&mut p.items)
                };
                if let Some(c) = cell.get() {
                    for item in held {
                        process(item, c);
                    }
                }
                (cal, stream.join().expect("the streaming thread panicked"))
            });
            let cal = cal?;
            streamed?;
            cal
        } else {
            let cal = build_calendar()?;
            source.stream(&|item| process(item, &cal))?;
            cal
        };
        let ok = ok.into_inner();
        let mut failed = failed.into_inner();
        failed.sort_by(|a, b| a.symbol.cmp(&b.symbol));
        let fmt = |t: Option<Timestamp>| {
            t.map(|t| crate::calendar::format_timestamp(t, opts.freq.date_only()))
        };
        let s = ImportSummary {
            published: !ok.is_empty(),
            symbols_ok: ok.len(),
            failed,
            rows: rows.into_inner(),
            fields: source.fields().to_vec(),
            files: ok.iter().map(|w| w.files).sum(),
            calendar_len: calendar.len(),
            calendar_first: fmt(calendar.first()),
            calendar_last: fmt(calendar.last()),
            store_bytes: 0,
            elapsed_s: 0.0,
        };
        if ok.is_empty() {
            summary = Some(s);
            return Err(Error::NothingImported);
        }
        // A trading-day table may run past the data (future days): the calendar ends at the last imported row.
        // Only trailing days go, so no file's start index moves.
        let last = ok.iter().map(|w| w.span.end).max().expect("non-empty");
        let keep = calendar.dates().partition_point(|&d| d <= last);
        let calendar = if keep < calendar.len() {
            let cut = Calendar::new(opts.freq, calendar.dates()[..keep].to_vec())?;
            store.save_calendar(&cut)?;
            cut
        } else {
            calendar
        };
        let s = ImportSummary {
            calendar_len: calendar.len(),
            calendar_last: fmt(calendar.last()),
            ..s
        };
        let mut instruments = Instruments::new();
        for w in &ok {
            instruments.push(&w.symbol, w.span)?;
        }
        store.save_instruments(&opts.market, &instruments)?;
        // The feature files were written without fsync; one syncfs makes the whole staging store durable
        // before it is renamed into place.
        fsio::sync_filesystem(store.root())?;
        // Feature bytes as written, plus the calendar and instruments text.
        let text_bytes = calendar.to_text().len() + instruments.to_text().len();
        summary = Some(ImportSummary {
            store_bytes: ok.iter().map(|w| w.bytes).sum::<u64>() + text_bytes as u64,
            ..s
        });
        Ok(())
    });
    let mut summary = match built {
        Ok(()) | Err(Error::NothingImported) => summary.expect("set before the build returns"),
        Err(e) => return Err(e),
    };
    summary.elapsed_s = t0.elapsed().as_secs_f64();
    Ok(summary)
}

/// Builds a new store next to `target` with `build` and switches it in atomically.
///
/// The store is built in a hidden sibling directory (`.<name>.qstore-staging-<pid>`), and then renamed onto
/// `target`, or, when `target` already holds a store and `overwrite` is set, exchanged with it in one
/// `renameat2(RENAME_EXCHANGE)` before the old store is deleted. A failure or a kill at any point leaves
/// `target` exactly as it was; a staging directory left by a kill is not a store anyone opens.
pub fn publish_new_store<T>(
    target: &Path,
    overwrite: bool,
    build: impl FnOnce(&Store) -> Result<T>,
) -> Result<T> {
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
    if non_empty && !overwrite {
        return Err(refuse(
            "it is not empty; pass --overwrite to replace the store in it",
        ));
    }
    if non_empty && !target.join(crate::layout::CALENDARS_DIR).is_dir() {
        return Err(refuse(
            "it is not empty and not a store (no calendars/), so --overwrite will not replace it",
        ));
    }
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
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| Error::io("removing", &staging, e))?;
    }
    let built = Store::create(&staging).and_then(|store| build(&store));
    let out = match built {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    crate::failpoint::hit("import:before-publish");
    if non_empty {
        if let Err(e) = fsio::exchange(&staging, target) {
            let _ = remove_tree_parallel(&staging);
            return Err(e);
        }
        crate::failpoint::hit("import:after-exchange");
        remove_tree_parallel(&staging)?;
    } else {
        // rename(2) replaces an empty directory atomically; it fails if another import filled it meanwhile.
        if let Err(e) = std::fs::rename(&staging, target) {
            let _ = remove_tree_parallel(&staging);
            return Err(Error::io("renaming the new store to", target, e));
        }
        fsio::fsync_dir(parent)?;
    }
    Ok(out)
}

/// Deletes a store directory, its instrument directories in parallel (tens of thousands of unlinks).
fn remove_tree_parallel(dir: &Path) -> Result<()> {
    use rayon::prelude::*;
    let features = dir.join(crate::layout::FEATURES_DIR);
    if let Ok(entries) = std::fs::read_dir(&features) {
        let subdirs: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        subdirs.par_iter().try_for_each(|d| {
            std::fs::remove_dir_all(d).map_err(|e| Error::io("removing", d, e))
        })?;
    }
    std::fs::remove_dir_all(dir).map_err(|e| Error::io("removing the old store at", dir, e))
}

/// Removes staging directories for `name` left by processes that no longer run (killed imports, or an old
/// store left behind by a kill between the exchange and its removal).
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
        if !alive {
            let path = entry.path();
            std::fs::remove_dir_all(&path)
                .map_err(|e| Error::io("removing the stale staging directory", &path, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbol_convention() {
        assert_eq!(qlib_symbol("600000.SH"), "SH600000");
        assert_eq!(qlib_symbol("600000.ss"), "SH600000");
        assert_eq!(qlib_symbol("000001.SZ"), "SZ000001");
        assert_eq!(qlib_symbol("830799.BJ"), "BJ830799");
        assert_eq!(qlib_symbol("sh600000"), "SH600000");
        assert_eq!(qlib_symbol("AAPL.O"), "AAPL.O");
    }

    fn rows(dates: &[&str], values: &[f32]) -> SymbolRows {
        SymbolRows {
            raw_symbol: "X".into(),
            origin: "test".into(),
            dates: dates
                .iter()
                .map(|d| crate::parse_timestamp(d).unwrap())
                .collect(),
            columns: vec![Some(values.to_vec())],
        }
    }

    /// A server-like source: pass 1 is slow (it waits until the stream has delivered `wait_for` symbols, or the
    /// stream is blocked), so pass 2's first symbols must be held, and with a tiny cap the stream must wait.
    struct Slow {
        fields: Vec<String>,
        n: usize,
        delivered: std::sync::atomic::AtomicUsize,
        fail_pass1: bool,
    }

    impl Source for Slow {
        fn fields(&self) -> &[String] {
            &self.fields
        }
        fn symbol_count(&self) -> usize {
            self.n
        }
        fn dates(&self) -> Result<Vec<Timestamp>> {
            let t0 = Instant::now();
            while self.delivered.load(Ordering::SeqCst) < 1
                && t0.elapsed() < std::time::Duration::from_secs(5)
            {
                std::thread::yield_now();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            if self.fail_pass1 {
                return Err(Error::Source {
                    source_name: "slow".into(),
                    reason: "pass 1 failed".into(),
                });
            }
            Ok((0..10)
                .map(|d| crate::parse_timestamp(&format!("2020-01-{:02}", d + 1)).unwrap())
                .collect())
        }
        fn stream(
            &self,
            sink: &(dyn Fn(std::result::Result<SymbolRows, Failure>) + Sync),
        ) -> Result<()> {
            for i in 0..self.n {
                let dates = (0..10)
                    .map(|d| crate::parse_timestamp(&format!("2020-01-{:02}", d + 1)).unwrap())
                    .collect();
                self.delivered.fetch_add(1, Ordering::SeqCst);
                sink(Ok(SymbolRows {
                    raw_symbol: format!("S{i:03}"),
                    origin: "slow".into(),
                    dates,
                    columns: vec![Some(vec![i as f32; 10])],
                }));
            }
            Ok(())
        }
        fn overlap_passes(&self) -> bool {
            true
        }
    }

    #[test]
    fn overlapped_passes_hold_and_then_write_every_symbol() {
        for cap in [1, 1 << 20] {
            let dir = tempfile::tempdir().unwrap();
            let src = Slow {
                fields: vec!["close".into()],
                n: 40,
                delivered: Default::default(),
                fail_pass1: false,
            };
            let opts = ImportOptions {
                pending_cap: cap,
                ..Default::default()
            };
            let s = import(&src, &dir.path().join("s"), false, &opts, &|_| {}).unwrap();
            assert_eq!(
                (s.symbols_ok, s.rows, s.failed.len()),
                (40, 400, 0),
                "cap {cap}"
            );
            let store = Store::open(dir.path().join("s")).unwrap();
            assert_eq!(
                &store.read("S039", "close", Freq::DAY, 0..10).unwrap()[..],
                &[39.0; 10]
            );
        }
    }

    #[test]
    fn overlapped_pass1_failure_ends_the_import_without_deadlock() {
        let dir = tempfile::tempdir().unwrap();
        let src = Slow {
            fields: vec!["close".into()],
            n: 40,
            delivered: Default::default(),
            fail_pass1: true,
        };
        let opts = ImportOptions {
            pending_cap: 1,
            ..Default::default()
        };
        let err = import(&src, &dir.path().join("s"), false, &opts, &|_| {}).unwrap_err();
        assert!(err.to_string().contains("pass 1 failed"), "{err}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing may be left behind"
        );
    }

    #[test]
    fn duplicates_follow_the_policy() {
        let d = ["2020-01-03", "2020-01-02", "2020-01-03"];
        let err = dedup(&mut rows(&d, &[1., 2., 3.]), OnDuplicate::Error).unwrap_err();
        assert!(err.starts_with("two rows dated 2020-01-03"), "{err}");
        let mut r = rows(&d, &[1., 2., 3.]);
        dedup(&mut r, OnDuplicate::First).unwrap();
        assert_eq!(r.columns[0].as_deref(), Some(&[2., 1.][..]));
        let mut r = rows(&d, &[1., 2., 3.]);
        dedup(&mut r, OnDuplicate::Last).unwrap();
        assert_eq!(r.columns[0].as_deref(), Some(&[2., 3.][..]));
        assert_eq!(r.dates.len(), 2);
    }
}
