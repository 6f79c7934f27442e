//! `qdump update`: append the days after a store's last date, crash-safe (storage-layout.md §7).
//!
//! Commit protocol. The calendar is the commit point: readers never look past it.
//! 1. Under the store's update lock, before the first write, write a `.qstore-update-pending` marker (synced);
//!    a run that fails before writing (bad input, an unreachable source) leaves none.
//! 2. Append every field of every symbol with new rows past its published end (NaN for the days it did not
//!    trade), without fsync; new files appear by rename. Corrections to stored days replace their file.
//! 3. `syncfs`, then publish the instruments (spans extended) and then the calendar (temp + fsync + rename +
//!    directory fsync each). The calendar rename commits the update.
//! 4. Remove the marker.
//!
//! A run that finds the marker knows an earlier run was killed and first puts the store back to what its
//! calendar and instruments publish: values past a symbol's published end are cut (by replacing the file),
//! files of symbols nobody published are removed, spans that start after the calendar are dropped, temp files
//! are deleted. Then it updates as usual, so a killed update followed by a rerun equals an update that was never
//! interrupted. A run that fails (rather than being killed) does the same clean-up itself before it returns,
//! and removes the marker. Recovery frees space before it needs any: temp files and unpublished files are
//! removed, and on a full disk unpublished tails are cut in place (`fsio::truncate_unpublished`).

pub use crate::cache::lock::UpdateLock;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;

use super::{Failure, ImportOptions, Source, SymbolRows, dedup};
use crate::error::{Error, NameKind, Result};
use crate::store::Store;
use crate::store::calendar::{Calendar, Timestamp, format_timestamp};
use crate::store::freq::Freq;
use crate::store::fsio;
use crate::store::instruments::{Instruments, Span};
use crate::store::layout::{self, FEATURES_DIR, validate_name};
use crate::store::writer;

/// The marker of an update in progress.
pub const PENDING_MARKER: &str = layout::PENDING_MARKER;
/// The lock file that serialises updates of one store.
/// When the store was last updated: seconds since the Unix epoch, written at the end of every update.
pub const STAMP_FILE: &str = layout::STAMP_FILE;

/// When the store at `root` was last updated (`None`: never by `qdump update`).
pub fn last_update(root: &Path) -> Result<Option<std::time::SystemTime>> {
    let path = root.join(STAMP_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) => {
            let secs: f64 = t.trim().parse().map_err(|_| Error::Target {
                path: path.clone(),
                reason: "is not a number of seconds; remove it and run qdump update",
            })?;
            Ok(Some(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(secs.max(0.0)),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("reading", &path, e)),
    }
}

/// What an update did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UpdateSummary {
    /// Calendar days added.
    pub days_added: usize,
    pub first_new_day: Option<String>,
    /// The store's last day after the update.
    pub last_day: Option<String>,
    /// Existing symbols that got new rows.
    pub symbols_appended: usize,
    /// Symbols seen for the first time (new files, new instruments span).
    pub new_listings: Vec<String>,
    /// Stored values changed by rows for days already in the store.
    pub corrections: u64,
    /// Rows for days already in the store whose values were already stored.
    pub unchanged_rows: u64,
    /// New rows appended.
    pub rows: u64,
    pub failed: Vec<Failure>,
    /// Whether leftovers of a killed earlier run were cleaned up first.
    pub recovered: bool,
    /// Rows the source read but left out, and why (older days without --since, rows without a symbol).
    pub left_out: Vec<super::LeftOut>,
    /// Columns not imported as fields without being asked to, and why.
    pub columns_left_out: Vec<super::LeftOutColumn>,
    pub elapsed_s: f64,
}

/// (field index, the file open and what it held when planned, calendar row to write at, values); the file is
/// closed once written.
type Append = (
    usize,
    Option<(std::fs::File, writer::Existing)>,
    usize,
    Vec<f32>,
);

/// One symbol's planned writes, checked before anything is written.
struct Plan {
    symbol: String,
    new_listing: bool,
    appends: Vec<Append>,
    /// (field index, start, whole corrected file)
    rewrites: Vec<(usize, usize, Vec<f32>)>,
    corrections: u64,
    unchanged: u64,
    rows: u64,
    span: Option<Span>,
}

/// Appends what `source` has after the store's last date (the source must already be restricted to those
/// dates, plus any older days to correct) to the store at `root`. Holds the update lock while it runs.
pub fn update(
    source: &dyn Source,
    root: &Path,
    opts: &ImportOptions,
    wait: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<UpdateSummary> {
    let lock = UpdateLock::acquire(root, wait)?;
    update_locked(source, root, opts, &lock, progress)
}

/// The first row time an update reads: `since` when given (a correction from then on), else the moment after
/// the store's last bar of `freq` (`None`: an empty calendar, read everything). Read under the update lock:
/// the answer depends on the store as its writer sees it.
pub fn first_new_row(
    store: &Store,
    freq: Freq,
    since: Option<Timestamp>,
    _lock: &UpdateLock,
) -> Result<Option<Timestamp>> {
    // Read even with `since`: a store without this calendar is an error either way.
    let last = store.calendar(freq)?.last();
    Ok(since.or(last.map(|l| l + chrono::Duration::seconds(1))))
}

/// [`update`] for a caller that already holds the store's update lock (a loader that checks, under the lock,
/// whether someone else just updated).
pub fn update_locked(
    source: &dyn Source,
    root: &Path,
    opts: &ImportOptions,
    _lock: &UpdateLock,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<UpdateSummary> {
    let store = Store::open(root)?;
    let marker = Marker {
        path: root.join(PENDING_MARKER),
        set: Mutex::new(root.join(PENDING_MARKER).exists()),
    };
    let out = apply(source, &store, opts, &marker, progress);
    if out.is_err() && *marker.set.lock() {
        // This run wrote (or found a killed run's writes): put the store back to what it publishes now, so a
        // failed update (a full disk, a source error mid-stream) leaves neither its files nor the marker. If
        // that fails too, the marker stays and the next run finishes the job.
        let _ = undo(&store, opts).and_then(|()| marker.clear());
    }
    out
}

/// The `.qstore-update-pending` marker, written before this run's first write (a run that fails before
/// writing anything leaves none).
struct Marker {
    path: PathBuf,
    set: Mutex<bool>,
}

impl Marker {
    fn set(&self) -> Result<()> {
        let mut set = self.set.lock();
        if !*set {
            fsio::replace_atomic(&self.path, b"")?;
            *set = true;
        }
        Ok(())
    }

    fn clear(&self) -> Result<()> {
        let mut set = self.set.lock();
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("removing", &self.path, e)),
        }
        *set = false;
        fsio::fsync_dir(self.path.parent().unwrap_or(Path::new(".")))
    }
}

/// Puts the store back to what its calendar publishes after this run failed: the same recovery a rerun does.
fn undo(store: &Store, opts: &ImportOptions) -> Result<()> {
    store.refresh();
    let calendar = store.calendar(opts.freq)?;
    let published = match store.instruments(&opts.market) {
        Ok(i) => (*i).clone(),
        Err(Error::NoMarket { .. }) => Instruments::new(),
        Err(e) => return Err(e),
    };
    let mut instruments = published.clone();
    recover(store, &calendar, &mut instruments, opts)?;
    if instruments != published {
        store.save_instruments(&opts.market, &instruments)?;
    }
    Ok(())
}

fn apply(
    source: &dyn Source,
    store: &Store,
    opts: &ImportOptions,
    marker: &Marker,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<UpdateSummary> {
    let t0 = Instant::now();
    let root = store.root();
    let mut summary = UpdateSummary::default();
    let mut instruments = match store.instruments(&opts.market) {
        Ok(i) => (*i).clone(),
        Err(Error::NoMarket { .. }) => Instruments::new(),
        Err(e) => return Err(e),
    };
    let calendar = store.calendar(opts.freq)?;
    if *marker.set.lock() {
        recover(store, &calendar, &mut instruments, opts)?;
        summary.recovered = true;
    }

    // The new days, checked and placed before any symbol is written: set from the rows' dates, which the
    // source hands over before it streams the rows.
    let placed: std::sync::OnceLock<(Calendar, Vec<Timestamp>)> = std::sync::OnceLock::new();
    let seen: Mutex<HashMap<String, String>> = Mutex::new(HashMap::new());
    let plans: Mutex<Vec<Plan>> = Mutex::new(Vec::new());
    let failed: Mutex<Vec<Failure>> = Mutex::new(Vec::new());
    let fields = source.fields();
    let write_error: Mutex<Option<Error>> = Mutex::new(None);
    let delivered: Mutex<Vec<String>> = Mutex::new(Vec::new());
    source.stream_after_dates(
        &mut |dates| {
            let _ = placed.set(new_days(&calendar, dates)?);
            Ok(())
        },
        &|item| {
            let n = item.as_ref().map_or(0, |r| r.dates.len() as u64);
            delivered.lock().push(match &item {
                Ok(r) => r.raw_symbol.clone(),
                Err(f) => f.symbol.clone(),
            });
            let (new_cal, _) = placed.get().expect("a source hands over the dates first");
            let planned = item.and_then(|rows| {
                plan_symbol(
                    store,
                    &calendar,
                    new_cal,
                    &instruments,
                    fields,
                    opts,
                    &seen,
                    rows,
                )
            });
            match planned {
                Ok(Some(mut p)) => {
                    tracing::debug!(symbol = %p.symbol, rows = p.rows, "appending");
                    // Write as symbols arrive (memory holds one symbol per connection); an I/O error stops
                    // the update before its commit.
                    if write_error.lock().is_none()
                        && let Err(e) = marker
                            .set()
                            .and_then(|()| write_plan(store, fields, opts, &p))
                    {
                        *write_error.lock() = Some(e);
                    }
                    // The plan is kept, its files are closed (written or not, after an error).
                    for append in &mut p.appends {
                        append.1 = None;
                    }
                    plans.lock().push(p);
                }
                Ok(None) => {}
                Err(f) => failed.lock().push(f),
            }
            progress(n);
        },
    )?;
    let new_days = match placed.into_inner() {
        Some((_, days)) => days,
        None => Vec::new(),
    };
    tracing::info!(
        "{} new {} in the source, {} symbols with rows",
        new_days.len(),
        opts.freq.bars_word(),
        plans.lock().len()
    );
    if let Some(e) = write_error.into_inner() {
        return Err(e);
    }
    let plans = plans.into_inner();
    let mut failed = failed.into_inner();
    // A requested symbol the store already has is not missing: it may simply have no new rows.
    let delivered: Vec<String> = delivered
        .into_inner()
        .into_iter()
        .chain(instruments.symbols().map(String::from))
        .collect();
    let delivered: Vec<&str> = delivered.iter().map(String::as_str).collect();
    failed.extend(super::missing_requested(source, &delivered, &failed));
    failed.sort_by(|a, b| a.symbol.cmp(&b.symbol));
    summary.left_out = source.left_out();
    summary.columns_left_out = source.columns_left_out();
    summary.failed = failed;

    // Spans: extend the last span of each symbol that got rows, or add a new one.
    for p in &plans {
        summary.corrections += p.corrections;
        summary.unchanged_rows += p.unchanged;
        summary.rows += p.rows;
        if let Some(span) = p.span {
            if p.new_listing {
                summary.new_listings.push(p.symbol.clone());
                instruments.push(&p.symbol, span)?;
            } else {
                let mut spans = instruments
                    .spans(&p.symbol)
                    .map(<[Span]>::to_vec)
                    .unwrap_or_default();
                match spans.last_mut() {
                    Some(s) => s.end = s.end.max(span.end),
                    None => spans.push(span),
                }
                instruments.set(&p.symbol, spans)?;
                summary.symbols_appended += 1;
            }
        }
    }
    summary.new_listings.sort();
    // Only days some imported symbol has rows on become calendar days (as qdump all over the whole period).
    let last_row_day = plans.iter().filter_map(|p| p.span.map(|s| s.end)).max();
    let keep = match last_row_day {
        Some(l) => new_days.partition_point(|&d| d <= l),
        None => 0,
    };
    let mut new_cal = (*calendar).clone();
    new_cal.extend(new_days[..keep].iter().copied())?;
    summary.days_added = keep;
    let date_only = opts.freq.date_only();
    summary.first_new_day = new_days[..keep]
        .first()
        .map(|&d| format_timestamp(d, date_only));
    summary.last_day = new_cal.last().map(|d| format_timestamp(d, date_only));

    fsio::sync_filesystem(root)?;
    crate::util::failpoint::hit("update:before-instruments");
    let spans_changed = summary.symbols_appended > 0 || !summary.new_listings.is_empty();
    if spans_changed || summary.recovered {
        marker.set()?;
        store.save_instruments(&opts.market, &instruments)?;
    }
    crate::util::failpoint::hit("update:before-calendar");
    if summary.days_added > 0 {
        store.save_calendar(&new_cal)?;
    }
    crate::util::failpoint::hit("update:after-calendar");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    fsio::replace_atomic(&root.join(STAMP_FILE), format!("{now:.3}\n").as_bytes())?;
    marker.clear()?;
    summary.elapsed_s = t0.elapsed().as_secs_f64();
    Ok(summary)
}

/// The calendar with the new days of `dates` (those after its last day) appended, and those days; a date
/// before the last day must already be a calendar day (an update corrects it), else the update is refused.
fn new_days(calendar: &Calendar, mut dates: Vec<Timestamp>) -> Result<(Calendar, Vec<Timestamp>)> {
    dates.sort_unstable();
    dates.dedup();
    let last = calendar.last();
    let mut new_days = Vec::new();
    for d in dates {
        if last.is_some_and(|l| d <= l) {
            if calendar.index_of(d).is_none() {
                return Err(Error::Source {
                    source_name: "the input".into(),
                    reason: format!(
                        "it has rows dated {d}, before the store's last day ({}) but not in its calendar; an update only adds days after the last one (rebuild with qdump all)",
                        last.map(|l| l.to_string()).unwrap_or_default()
                    ),
                });
            }
        } else {
            new_days.push(d);
        }
    }
    let mut new_cal = calendar.clone();
    new_cal.extend(new_days.iter().copied())?;
    Ok((new_cal, new_days))
}

/// The calendar row after a symbol's published data: the end of its last span, cut at the calendar's end.
fn published_end(calendar: &Calendar, instruments: &Instruments, symbol: &str) -> Option<usize> {
    let spans = instruments.spans(symbol)?;
    let end = spans.iter().map(|s| s.end).max()?;
    Some(calendar.locate(None, Some(end)).end)
}

#[allow(clippy::too_many_arguments)]
fn plan_symbol(
    store: &Store,
    calendar: &Calendar,
    new_cal: &Calendar,
    instruments: &Instruments,
    fields: &[String],
    opts: &ImportOptions,
    seen: &Mutex<HashMap<String, String>>,
    mut rows: SymbolRows,
) -> std::result::Result<Option<Plan>, Failure> {
    let raw = rows.raw_symbol.clone();
    let fail = |reason: String| Failure {
        symbol: raw.clone(),
        reason,
    };
    let symbol = opts.symbol_format.apply(&rows.raw_symbol);
    validate_name(NameKind::Instrument, &symbol).map_err(|e| fail(e.detail()))?;
    if rows.dates.is_empty() {
        return Ok(None);
    }
    if let Some(prev) = seen.lock().insert(symbol.clone(), raw.clone()) {
        return Err(fail(format!(
            "{raw} maps to {symbol}, which {prev:?} already produced; use --symbol-format raw to keep both"
        )));
    }
    super::check_rows(&rows, fields, opts).map_err(fail)?;
    dedup(&mut rows, opts.on_duplicate).map_err(fail)?;
    let old_len = calendar.len();
    let pub_end = published_end(calendar, instruments, &symbol);
    let new_listing = pub_end.is_none();
    let mut plan = Plan {
        symbol: symbol.clone(),
        new_listing,
        appends: Vec::new(),
        rewrites: Vec::new(),
        corrections: 0,
        unchanged: 0,
        rows: 0,
        span: None,
    };
    let index: Vec<usize> = rows
        .dates
        .iter()
        .map(|&d| {
            new_cal
                .index_of(d)
                .ok_or_else(|| fail(format!("row dated {d} is not in the calendar")))
        })
        .collect::<std::result::Result<_, _>>()?;
    // A symbol the store does not list yet takes all its rows, stored days included (a backfill).
    let split = if new_listing {
        0
    } else {
        index.partition_point(|&i| i < old_len)
    };
    let (old_rows, new_rows) = index.split_at(split);
    if !new_rows.is_empty() {
        let present_new = rows
            .columns
            .iter()
            .flatten()
            .any(|c| c[split..].iter().any(|v| !v.is_nan()));
        if new_listing && !present_new {
            return Err(fail(format!(
                "every value of every field is missing in its {} new rows ({})",
                new_rows.len(),
                rows.origin
            )));
        }
        let first_new = new_rows[0];
        let last_new = new_rows[new_rows.len() - 1];
        for (f, col) in rows.columns.iter().enumerate() {
            let Some(col) = col else { continue };
            let path = store
                .feature_path(&symbol, &fields[f], opts.freq)
                .map_err(|e| fail(e.detail()))?;
            let stored = writer::stored(&path).map_err(|e| fail(e.detail()))?;
            // Write from the published end of this file (a field may end before the symbol's span).
            let at = match (&stored, pub_end) {
                (Some((_, ex)), Some(end)) if ex.start < end => (ex.start + ex.len).min(end),
                _ => first_new,
            };
            let mut values = vec![f32::NAN; last_new + 1 - at];
            for (&i, &v) in new_rows.iter().zip(&col[split..]) {
                values[i - at] = v;
            }
            plan.appends.push((f, stored, at, values));
        }
        plan.rows = new_rows.len() as u64;
        plan.span = Some(Span {
            start: rows.dates[split],
            end: rows.dates[rows.dates.len() - 1],
        });
    }
    if !old_rows.is_empty() {
        let mut changed_rows = vec![false; old_rows.len()];
        for (f, col) in rows.columns.iter().enumerate() {
            let Some(col) = col else { continue };
            let path = store
                .feature_path(&symbol, &fields[f], opts.freq)
                .map_err(|e| fail(e.detail()))?;
            let Some((start, mut values)) =
                writer::read_all(&path).map_err(|e| fail(e.detail()))?
            else {
                return Err(fail(format!(
                    "rows for stored days ({}) but no {} file to correct; rebuild with qdump all",
                    rows.dates[0], fields[f]
                )));
            };
            let mut changed = 0;
            for (k, (&i, &v)) in old_rows.iter().zip(&col[..split]).enumerate() {
                if i < start || i >= start + values.len() {
                    return Err(fail(format!(
                        "row dated {} is outside the stored days of {symbol} {} (calendar rows {start}..{}); an update corrects stored days only (rebuild with qdump all)",
                        rows.dates[k],
                        fields[f],
                        start + values.len()
                    )));
                }
                let old = &mut values[i - start];
                if old.to_bits() != v.to_bits() && !(old.is_nan() && v.is_nan()) {
                    *old = v;
                    changed += 1;
                    changed_rows[k] = true;
                }
            }
            if changed > 0 {
                plan.corrections += changed;
                plan.rewrites.push((f, start, values));
            }
        }
        plan.unchanged = changed_rows.iter().filter(|c| !**c).count() as u64;
    }
    Ok(Some(plan))
}

fn write_plan(store: &Store, fields: &[String], opts: &ImportOptions, p: &Plan) -> Result<()> {
    if !p.appends.is_empty() {
        let dir = layout::instrument_dir(store.root(), &p.symbol)?;
        fsio::create_dir_all_synced(&dir)?;
    }
    for (f, start, values) in &p.rewrites {
        store.rewrite_feature(&p.symbol, &fields[*f], opts.freq, *start, values)?;
    }
    for (f, stored, at, values) in &p.appends {
        let path = store.feature_path(&p.symbol, &fields[*f], opts.freq)?;
        // Planned under the update lock a moment ago: the file is as `stored` says.
        writer::put_unpublished_known(&path, stored.as_ref().map(|(f, ex)| (f, *ex)), *at, values)?;
        crate::util::failpoint::hit("update:file");
    }
    Ok(())
}

/// Puts the store back to what its calendar and instruments publish after a killed update.
fn recover(
    store: &Store,
    calendar: &Calendar,
    instruments: &mut Instruments,
    opts: &ImportOptions,
) -> Result<()> {
    // Spans a killed run published ahead of the calendar's commit.
    let last = calendar.last();
    let mut cleaned = Instruments::new();
    for (sym, spans) in instruments.iter() {
        let kept: Vec<Span> = spans
            .iter()
            .filter(|s| last.is_some_and(|l| s.start <= l))
            .map(|s| Span {
                start: s.start,
                end: last.map_or(s.end, |l| s.end.min(l)),
            })
            .collect();
        if !kept.is_empty() {
            cleaned.set(sym, kept)?;
        }
    }
    *instruments = cleaned;
    remove_root_temps(store.root())?;
    let features = store.root().join(FEATURES_DIR);
    let suffix = format!(".{}.bin", opts.freq);
    let mut by_dir: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    let entries = match std::fs::read_dir(&features) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("listing", &features, e)),
    };
    for dir in entries {
        let dir = dir.map_err(|e| Error::io("listing", &features, e))?.path();
        if !dir.is_dir() {
            continue;
        }
        let files = std::fs::read_dir(&dir).map_err(|e| Error::io("listing", &dir, e))?;
        for f in files {
            let f = f.map_err(|e| Error::io("listing", &dir, e))?.path();
            by_dir.entry(dir.clone()).or_default().push(f);
        }
    }
    let symbols: HashMap<String, String> = instruments
        .symbols()
        .map(|s| (layout::code_to_fname(s).to_lowercase(), s.to_string()))
        .collect();
    for (dir, files) in by_dir {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let end = symbols
            .get(&name)
            .and_then(|s| published_end(calendar, instruments, s));
        for f in files {
            let fname = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if fname.starts_with(fsio::TEMP_PREFIX) {
                std::fs::remove_file(&f).map_err(|e| Error::io("removing", &f, e))?;
                continue;
            }
            if !fname.ends_with(&suffix) {
                continue;
            }
            match end {
                Some(end) => {
                    writer::trim_to(&f, end)?;
                }
                None => {
                    // Not published in this market: remove only what lies wholly past the calendar (made by
                    // the killed run); other markets' symbols stay.
                    if let Some((start, _)) = writer::stored_range(&f)?
                        && start >= calendar.len()
                    {
                        writer::remove(&f)?;
                    }
                }
            }
        }
        if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_none()) {
            std::fs::remove_dir(&dir).map_err(|e| Error::io("removing", &dir, e))?;
            fsio::fsync_dir(&features)?;
        }
    }
    store.refresh();
    Ok(())
}

/// Removes temp files a killed run left next to the calendars and instruments.
fn remove_root_temps(root: &Path) -> Result<()> {
    for sub in [
        root.to_path_buf(),
        root.join("calendars"),
        root.join("instruments"),
    ] {
        let Ok(entries) = std::fs::read_dir(&sub) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(fsio::TEMP_PREFIX))
            {
                let p = e.path();
                std::fs::remove_file(&p).map_err(|err| Error::io("removing", &p, err))?;
            }
        }
    }
    Ok(())
}
