//! Building a whole store from K-line rows (`qdump all`), and appending new days to one (`qdump update`).
//!
//! Every source (CSV files, a MySQL table) implements [`Source`]: it streams the rows one symbol at a time, and
//! the [`SymbolWriter`] turns each symbol's rows into feature files, so every source produces byte-identical
//! stores from the same data, and memory holds only the symbols in flight, never the table. `qdump all` reads
//! the rows once: the calendar (the union of the imported symbols' dates) is learned while they stream
//! ([`learned`]), unless the source has a table of trading days. `qdump update` first lists the new rows'
//! dates ([`Source::dates`]) to check them against the store's calendar.

pub mod csv;
mod dates;
mod files;
mod group;
mod learned;
pub mod mysql;
#[cfg(feature = "parquet")]
pub mod parquet;
mod replace;
pub mod spec;
pub mod update;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;

use crate::error::{Error, NameKind, Result};
use crate::store::Store;
use crate::store::calendar::{Calendar, Timestamp};
use crate::store::freq::Freq;
use crate::store::fsio;
use crate::store::instruments::{Instruments, Span};
use crate::store::layout::validate_name;

pub use self::csv::CsvSource;
pub use self::dates::DateFormat;
pub use self::files::FileOptions;
pub use self::mysql::MysqlSource;
#[cfg(feature = "parquet")]
pub use self::parquet::ParquetSource;
pub use self::replace::{ReplaceOptions, publish_new_store};
pub use self::spec::{Origin, SourceSpec};
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
    /// How many symbols [`Source::stream`] will deliver (for progress); `None` when the source learns its
    /// symbols from the rows as they come.
    fn symbol_count(&self) -> Option<usize>;
    /// Every timestamp of the rows to import (any order, duplicates allowed): a pass of its own, which the
    /// default [`Source::stream_after_dates`] makes.
    fn dates(&self) -> Result<Vec<Timestamp>>;
    /// What `qdump update` calls: hands `dates` every timestamp of the rows to import (any order, duplicates
    /// allowed), then streams them as [`Source::stream`] does. The dates come first because the new days are
    /// checked and placed before any symbol is written. The default lists them in a pass of their own; a
    /// source for which that pass costs as much as the rows (a MySQL table without an index on its date
    /// column) reads the rows once, learns the dates from them and holds the rows until the scan ends.
    fn stream_after_dates(
        &self,
        dates: &mut dyn FnMut(Vec<Timestamp>) -> Result<()>,
        sink: &(dyn Fn(std::result::Result<SymbolRows, Failure>) + Sync),
    ) -> Result<()> {
        dates(self.dates()?)?;
        self.stream(sink)
    }
    /// The trading days to import against, when the source has them apart from the rows (a table of trading
    /// days); `None` when the calendar is the union of the rows' dates.
    fn trading_days(&self) -> Result<Option<Vec<Timestamp>>> {
        Ok(None)
    }
    /// Each symbol's rows, or why a symbol cannot be read. May call `sink` from several threads.
    fn stream(
        &self,
        sink: &(dyn Fn(std::result::Result<SymbolRows, Failure>) + Sync),
    ) -> Result<()>;
    /// The symbols the user asked for by name (`--symbols`), as given; `None` for all. A requested symbol
    /// the source never delivers is reported as failed.
    fn requested(&self) -> Option<&[String]> {
        None
    }
    /// Rows the source read but could not attribute or was told to leave out, with why (rows without a
    /// symbol, rows dated before an update's first day), after [`Source::stream`]: reported, never silent.
    fn left_out(&self) -> Vec<LeftOut> {
        Vec::new()
    }
    /// Numeric columns that were not made fields without being asked to (identifiers such as `id`), with
    /// why: reported, never silent.
    fn columns_left_out(&self) -> Vec<LeftOutColumn> {
        Vec::new()
    }
}

/// A source column that is not imported as a field by default, and why (see [`Source::columns_left_out`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeftOutColumn {
    pub column: String,
    pub reason: String,
}

/// Whether a column is named as a row identifier (`id`, `row_id`, `kline_id`...), which numbers rows and is
/// no value to compute on: left out of the default fields (`--fields` names it to import it anyway).
pub(crate) fn is_identifier(column: &str) -> bool {
    let c = column.to_ascii_lowercase();
    c == "id" || c.ends_with("_id")
}

/// The default fields of a source: its value `columns` less `exclude` (each of which must be one of them; a
/// typo is an error, not a no-op) and identifiers, and the identifiers left out.
pub(crate) fn default_fields(
    columns: Vec<String>,
    exclude: Option<&[String]>,
) -> std::result::Result<(Vec<String>, Vec<LeftOutColumn>), String> {
    for x in exclude.unwrap_or_default() {
        if !columns.iter().any(|c| c.eq_ignore_ascii_case(x)) {
            return Err(format!(
                "--exclude-fields names {x:?}, which is not a field column (fields: {})",
                columns.join(", ")
            ));
        }
    }
    let mut kept = Vec::new();
    let mut left = Vec::new();
    for c in columns {
        if exclude
            .unwrap_or_default()
            .iter()
            .any(|x| x.eq_ignore_ascii_case(&c))
        {
            continue;
        }
        if is_identifier(&c) {
            left.push(LeftOutColumn {
                reason: "named as a row identifier, not a value; name it in --fields to import it"
                    .into(),
                column: c,
            });
        } else {
            kept.push(c);
        }
    }
    Ok((kept, left))
}

/// Rows a source left out, and why (see [`Source::left_out`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeftOut {
    pub rows: u64,
    pub reason: String,
}

/// The rules every row must meet to be stored, whatever its source; the reason names the row (its origin
/// and date) when one does not. One symbol fails; the others are imported.
pub(crate) fn check_rows(
    rows: &SymbolRows,
    fields: &[String],
    opts: &ImportOptions,
) -> std::result::Result<(), String> {
    let at =
        |k: usize| crate::store::calendar::format_timestamp(rows.dates[k], opts.freq.date_only());
    if let Some(k) = rows
        .dates
        .iter()
        .position(|&d| !crate::store::calendar::fits(opts.freq, d))
    {
        return Err(format!(
            "{}: the row dated {} has a time of day, which a {} calendar cannot hold; import it with a minute frequency (--freq 1min) or drop the time",
            rows.origin,
            crate::store::calendar::format_timestamp(rows.dates[k], false),
            opts.freq
        ));
    }
    if let Some(max) = opts.max_date
        && let Some(k) = rows.dates.iter().position(|&d| d > max)
    {
        return Err(format!(
            "{}: the row dated {} is after {} (--max-date; default today): a date in the future would end every later update; fix the row, or pass --max-date",
            rows.origin,
            at(k),
            crate::store::calendar::format_timestamp(max, true)
        ));
    }
    for (col, name) in rows.columns.iter().zip(fields) {
        if let Some(col) = col
            && let Some(k) = col.iter().position(|v| v.is_infinite())
        {
            return Err(format!(
                "{}: the row dated {} has {name} = {}, which is not a finite float32 (|x| > 3.4e38, or inf); fix the cell, or leave it empty for a missing value",
                rows.origin,
                at(k),
                col[k]
            ));
        }
    }
    Ok(())
}

/// What to do with two rows of one symbol on the same date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
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
    /// Rows dated after this fail their symbol (`None`: no limit). The command line's default is the end of
    /// today: a future date would be the store's last day, and every later update would skip the days before it.
    pub max_date: Option<Timestamp>,
}

impl ImportOptions {
    /// The end of `day` (`None`: today, local time): the latest row time a `max_date` of that day lets in.
    pub fn end_of(day: Option<Timestamp>) -> Timestamp {
        let day = match day {
            Some(d) => d.date(),
            None => chrono::Local::now().date_naive(),
        };
        day.and_time(chrono::NaiveTime::MIN) + chrono::Duration::seconds(86_399)
    }
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            freq: Freq::DAY,
            market: "all".into(),
            on_duplicate: OnDuplicate::Error,
            symbol_format: SymbolFormat::Qlib,
            max_date: None,
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
    /// Symbols whose files were written again because days they lacked turned up after them.
    pub placed_again: usize,
    /// Rows the source read but left out, and why.
    pub left_out: Vec<LeftOut>,
    /// Columns not imported as fields without being asked to, and why.
    pub columns_left_out: Vec<LeftOutColumn>,
    pub elapsed_s: f64,
}

/// The symbols `--symbols` named that the source never delivered (neither imported nor failed), as failures.
pub(crate) fn missing_requested(
    source: &dyn Source,
    delivered: &[&str],
    failed: &[Failure],
) -> Vec<Failure> {
    let Some(requested) = source.requested() else {
        return Vec::new();
    };
    let seen: std::collections::HashSet<String> = delivered
        .iter()
        .copied()
        .chain(failed.iter().map(|f| f.symbol.as_str()))
        .map(qlib_symbol)
        .collect();
    requested
        .iter()
        .filter(|r| !seen.contains(&qlib_symbol(r)))
        .map(|r| Failure {
            symbol: r.clone(),
            reason: "not in the source (no file, or no rows with this symbol); check the spelling in --symbols"
                .into(),
        })
        .collect()
}

/// One imported symbol.
struct Written {
    symbol: String,
    span: Span,
    rows: u64,
    /// The fields it has files for (indices into the source's fields).
    present: Vec<usize>,
    bytes: u64,
    /// The epoch of the learned calendar its files were placed in.
    epoch: Option<u64>,
}

/// The calendar symbols are placed in.
enum Placing<'a> {
    /// Known before the rows (a table of trading days).
    Known(&'a Calendar),
    /// Learned from the rows as they come.
    Learned(&'a learned::LearnedCalendar),
}

/// Writes each symbol's files into a store that is not yet published.
struct SymbolWriter<'a> {
    store: &'a Store,
    calendar: Placing<'a>,
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
        validate_name(NameKind::Instrument, &symbol).map_err(|e| fail(e.detail()))?;
        if rows.dates.is_empty() {
            return Err(fail(
                "no rows (none in the input, or none between --start-date and --end-date)".into(),
            ));
        }
        check_rows(&rows, self.fields, self.opts).map_err(fail)?;
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
        let (index, epoch) = match self.calendar {
            Placing::Known(calendar) => {
                let mut index = Vec::with_capacity(rows.dates.len());
                for &d in &rows.dates {
                    index.push(calendar.index_of(d).ok_or_else(|| {
                        fail(format!(
                            "row dated {d} is not in the trading-day table; add the day to it, or import without --calendar-table"
                        ))
                    })?);
                }
                (index, None)
            }
            // Only a symbol that is written adds its dates to the calendar.
            Placing::Learned(learned) => {
                let p = learned.place(&rows.dates);
                (p.index, Some(p.epoch))
            }
        };
        let first = index[0];
        let len = index[index.len() - 1] - first + 1;
        self.store
            .bulk_create_instrument(&symbol)
            .map_err(|e| fail(e.detail()))?;
        let mut bytes = 0;
        for &(f, col) in &present {
            let mut values = vec![f32::NAN; len];
            for (&i, &v) in index.iter().zip(col) {
                values[i - first] = v;
            }
            bytes += self
                .store
                .bulk_put_feature(&symbol, &self.fields[f], self.opts.freq, first, &values)
                .map_err(|e| fail(e.detail()))?;
        }
        Ok(Written {
            span: Span {
                start: rows.dates[0],
                end: rows.dates[rows.dates.len() - 1],
            },
            symbol,
            rows: rows.dates.len() as u64,
            present: present.iter().map(|&(f, _)| f).collect(),
            bytes,
            epoch,
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
    replace: &ReplaceOptions,
    opts: &ImportOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ImportSummary> {
    let t0 = Instant::now();
    let mut summary = None;
    tracing::info!(
        "importing {} fields of {} symbols into {}",
        source.fields().len(),
        source
            .symbol_count()
            .map_or_else(|| "the source's".to_string(), |n| n.to_string()),
        target.display()
    );
    let built = publish_new_store(target, replace, |store| {
        let known = match source.trading_days()? {
            Some(mut days) => {
                days.sort_unstable();
                days.dedup();
                Some(Calendar::new(opts.freq, days)?)
            }
            None => None,
        };
        let learned = learned::LearnedCalendar::default();
        let seen = Mutex::new(HashMap::new());
        let ok: Mutex<Vec<Written>> = Mutex::new(Vec::new());
        let failed: Mutex<Vec<Failure>> = Mutex::new(Vec::new());
        let rows = AtomicU64::new(0);
        source.stream(&|item| {
            let writer = SymbolWriter {
                store,
                calendar: match &known {
                    Some(c) => Placing::Known(c),
                    None => Placing::Learned(&learned),
                },
                fields: source.fields(),
                opts,
                seen: &seen,
            };
            let n = item.as_ref().map_or(0, |r| r.dates.len() as u64);
            match item.and_then(|r| writer.write(r)) {
                Ok(w) => {
                    rows.fetch_add(w.rows, Ordering::Relaxed);
                    ok.lock().push(w);
                    crate::util::failpoint::hit("import:symbol");
                }
                Err(f) => failed.lock().push(f),
            }
            progress(n);
        })?;
        let mut ok = ok.into_inner();
        let mut failed = failed.into_inner();
        let delivered: Vec<&str> = ok.iter().map(|w| w.symbol.as_str()).collect();
        failed.extend(missing_requested(source, &delivered, &failed));
        failed.sort_by(|a, b| a.symbol.cmp(&b.symbol));
        let mut placed_again = 0;
        let calendar = match known {
            // A trading-day table may run past the data (future days): the calendar ends at the last imported
            // row. Only trailing days go, so no file's start index moves.
            Some(days) => {
                let last = ok.iter().map(|w| w.span.end).max();
                let keep = days
                    .dates()
                    .partition_point(|&d| last.is_some_and(|l| d <= l));
                Calendar::new(opts.freq, days.dates()[..keep].to_vec())?
            }
            None => {
                let learned = learned.finish();
                placed_again = place_again(store, &learned, source.fields(), opts.freq, &mut ok)?;
                Calendar::new(opts.freq, learned.dates())?
            }
        };
        let fmt = |t: Option<Timestamp>| {
            t.map(|t| crate::store::calendar::format_timestamp(t, opts.freq.date_only()))
        };
        let s = ImportSummary {
            published: !ok.is_empty(),
            symbols_ok: ok.len(),
            failed,
            rows: rows.into_inner(),
            fields: source.fields().to_vec(),
            files: ok.iter().map(|w| w.present.len() as u64).sum(),
            calendar_len: calendar.len(),
            calendar_first: fmt(calendar.first()),
            calendar_last: fmt(calendar.last()),
            store_bytes: 0,
            placed_again,
            left_out: source.left_out(),
            columns_left_out: source.columns_left_out(),
            elapsed_s: 0.0,
        };
        if ok.is_empty() {
            summary = Some(s);
            return Err(Error::NothingImported);
        }
        store.save_calendar(&calendar)?;
        crate::util::failpoint::hit("import:after-calendar");
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

/// Rewrites the files of the symbols placed before the learned calendar had all the days of (or before) their
/// span, now that it is complete; returns how many. The store is unpublished, so its files are rewritten
/// directly.
fn place_again(
    store: &Store,
    learned: &learned::Final,
    fields: &[String],
    freq: Freq,
    written: &mut [Written],
) -> Result<usize> {
    use rayon::prelude::*;
    written
        .par_iter_mut()
        .try_fold(
            || 0,
            |n, w| {
                let Some(r) = w
                    .epoch
                    .and_then(|e| learned.replacement(e, w.span.start, w.span.end))
                else {
                    return Ok(n);
                };
                let mut bytes = 0;
                for &f in &w.present {
                    let path = store.feature_path(&w.symbol, &fields[f], freq)?;
                    let old = crate::store::writer::read_all(&path)?.map(|(_, v)| v);
                    let values = old.as_deref().and_then(|v| r.spread(v)).ok_or_else(|| {
                        let why =
                            "the staging file's length changed during the import; run it again";
                        Error::io("placing again", &path, std::io::Error::other(why))
                    })?;
                    bytes += crate::store::writer::create_unsynced(&path, r.start, &values)?;
                }
                w.bytes = bytes;
                Ok(n + 1)
            },
        )
        .try_reduce(|| 0, |a, b| Ok(a + b))
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
                .map(|d| crate::store::calendar::parse_timestamp(d).unwrap())
                .collect(),
            columns: vec![Some(values.to_vec())],
        }
    }

    /// Symbols with chosen dates, delivered in a chosen order from two threads, with or without a trading-day
    /// table.
    struct Listed {
        fields: Vec<String>,
        symbols: Vec<SymbolRows>,
        days: Option<Result<Vec<Timestamp>>>,
    }

    impl Source for Listed {
        fn fields(&self) -> &[String] {
            &self.fields
        }
        fn symbol_count(&self) -> Option<usize> {
            Some(self.symbols.len())
        }
        fn dates(&self) -> Result<Vec<Timestamp>> {
            Ok(self.symbols.iter().flat_map(|s| s.dates.clone()).collect())
        }
        fn trading_days(&self) -> Result<Option<Vec<Timestamp>>> {
            match &self.days {
                None => Ok(None),
                Some(Ok(d)) => Ok(Some(d.clone())),
                Some(Err(_)) => Err(Error::Source {
                    source_name: "days".into(),
                    reason: "the trading-day table failed".into(),
                }),
            }
        }
        fn stream(
            &self,
            sink: &(dyn Fn(std::result::Result<SymbolRows, Failure>) + Sync),
        ) -> Result<()> {
            let half = self.symbols.len() / 2;
            std::thread::scope(|s| {
                for part in [&self.symbols[..half], &self.symbols[half..]] {
                    s.spawn(move || part.iter().for_each(|r| sink(Ok(r.clone()))));
                }
            });
            Ok(())
        }
    }

    /// Every file of a store, by path.
    fn tree(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
        let mut out = std::collections::BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(root).unwrap().display().to_string();
                    out.insert(rel, std::fs::read(&p).unwrap());
                }
            }
        }
        out
    }

    #[test]
    fn a_learned_calendar_builds_the_same_store_in_any_order() {
        let day = |n: u64| {
            crate::store::calendar::parse_timestamp("2020-01-01").unwrap()
                + chrono::Duration::days(n as i64)
        };
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut placed_again = 0;
        for round in 0..12 {
            // 12 symbols over 60 days: random listing, delisting and suspensions (so late symbols bring days
            // that earlier ones lack), one with every value missing (it fails and brings no day).
            let mut symbols: Vec<SymbolRows> = (0..12)
                .map(|k| {
                    let first = next(40);
                    let last = first + next(60 - first);
                    let dates: Vec<Timestamp> =
                        (first..=last).filter(|_| next(4) != 0).map(day).collect();
                    let dates = if dates.is_empty() {
                        vec![day(first)]
                    } else {
                        dates
                    };
                    let v = |d: &Timestamp| {
                        if k == 5 {
                            f32::NAN
                        } else {
                            d.and_utc().timestamp() as f32 + k as f32
                        }
                    };
                    SymbolRows {
                        raw_symbol: format!("S{k:02}"),
                        origin: "test".into(),
                        columns: vec![Some(dates.iter().map(v).collect()), None],
                        dates,
                    }
                })
                .collect();
            let mut union: Vec<Timestamp> = symbols
                .iter()
                .filter(|s| s.raw_symbol != "S05")
                .flat_map(|s| s.dates.clone())
                .collect();
            union.sort_unstable();
            union.dedup();
            let dir = tempfile::tempdir().unwrap();
            let build = |name: &str, symbols: Vec<SymbolRows>, days| {
                let src = Listed {
                    fields: vec!["close".into(), "volume".into()],
                    symbols,
                    days,
                };
                let s = import(
                    &src,
                    &dir.path().join(name),
                    &Default::default(),
                    &Default::default(),
                    &|_| {},
                )
                .unwrap();
                assert_eq!((s.symbols_ok, s.failed.len()), (11, 1), "round {round}");
                (tree(&dir.path().join(name)), s.placed_again)
            };
            let (want, _) = build("known", symbols.clone(), Some(Ok(union.clone())));
            for order in 0..4 {
                for i in (1..symbols.len()).rev() {
                    symbols.swap(i, next(i as u64 + 1) as usize);
                }
                let (got, again) = build(&format!("learned-{order}"), symbols.clone(), None);
                assert!(
                    got == want,
                    "round {round}, order {order}: the stores differ"
                );
                placed_again += again;
            }
        }
        assert!(
            placed_again > 0,
            "no order made a symbol move: the test tests nothing"
        );
    }

    #[test]
    fn a_failing_trading_day_table_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src = Listed {
            fields: vec!["close".into()],
            symbols: vec![rows(&["2020-01-02"], &[1.0])],
            days: Some(Err(Error::NothingImported)),
        };
        let err = import(
            &src,
            &dir.path().join("s"),
            &Default::default(),
            &Default::default(),
            &|_| {},
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("trading-day table failed"),
            "{err}"
        );
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
