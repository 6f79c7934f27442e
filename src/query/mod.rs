//! The query layer: [`Engine`] evaluates expressions over many instruments into a [`Frame`] (qlib's
//! `D.features`), reading the store's expression cache for the columns it holds and keeping recent results
//! in memory (qlib's `H["f"]`).

pub mod featureset;
pub mod frame;
pub mod output;

use crate::cache::expr::{Lookup, Outcome};
use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use rayon::prelude::*;

use crate::cache::expr::{DiskExpressionCache, DiskStats, Mode};
use crate::error::{Error, NameKind, Result};
use crate::expr::StoreFields;
use crate::expr::{self, Expr, Query, Scratch};
use crate::query::featureset::FeatureSet;
use crate::query::frame::{ColumnFrame, Frame, Spares, Values};
use crate::store::calendar::Timestamp;
use crate::store::freq::Freq;
use crate::store::layout::validate_name;
use crate::store::settings::{CacheConfig, CacheSettings, Compat, Overrides, Settings};
use crate::store::{self, Store};
use crate::util::memcache::Limit;
use crate::util::memcache::{MemCache, Stats};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// An optional feature of a set that a query left out, and the fields (without `$`) no instrument of the
/// query has.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeftOutFeature {
    pub name: String,
    pub missing: Vec<String>,
}

/// What to say of the features a query left out: one line per set of missing fields (Alpha360 without `$vwap`
/// is one line for its 60 VWAP columns, not 60), naming up to four features.
pub fn left_out_lines(left: &[LeftOutFeature]) -> Vec<String> {
    let mut groups: Vec<(&[String], Vec<&str>)> = Vec::new();
    for l in left {
        match groups.iter_mut().find(|(m, _)| *m == l.missing.as_slice()) {
            Some((_, names)) => names.push(&l.name),
            None => groups.push((&l.missing, vec![&l.name])),
        }
    }
    groups
        .into_iter()
        .map(|(missing, names)| {
            let names = match names.as_slice() {
                [first, second, third, .., last] if names.len() > 4 => {
                    format!(
                        "{} features ({first}, {second}, {third}, ..., {last})",
                        names.len()
                    )
                }
                _ => names.join(", "),
            };
            let fields: Vec<String> = missing.iter().map(|m| format!("${m}")).collect();
            format!(
                "{names} left out: no instrument of the query has {}",
                fields.join(", ")
            )
        })
        .collect()
}

/// Values per part of a query evaluated part by part (128 MB of f32: Alpha158 over 750 days is 283 instruments a
/// part; smaller parts cost more per-part work, measured in benches/README.md).
const PART_VALUES: usize = 32 << 20;

/// Which instruments a query covers.
#[derive(Debug, Clone, Copy)]
pub enum Universe<'a> {
    /// The instruments of `instruments/<market>.txt`, each on the rows of its spans.
    Market(&'a str),
    /// These instruments, each on the rows where its fields have data.
    List(&'a [String]),
    /// One part of a query over `whole`: its instruments that are in the list (spelled as `whole` spells them),
    /// each on the rows `whole` gives it. Fields are checked, and a feature set's columns chosen, as for
    /// `whole`, so every part of a split query (a cluster's partition) has the same columns, and the parts
    /// together are the whole query.
    Part(&'a Universe<'a>, &'a [String]),
}

impl Universe<'_> {
    /// The instruments the universe names, upper case, in the market file's order or the list's.
    pub fn symbols(&self, store: &Store) -> Result<Vec<String>> {
        Ok(match *self {
            Universe::Market(m) => store.instruments(m)?.symbols().map(str::to_owned).collect(),
            Universe::List(l) => l.iter().map(|s| s.to_uppercase()).collect(),
            Universe::Part(whole, part) => {
                let part: HashSet<String> = part.iter().map(|s| s.to_uppercase()).collect();
                let mut v = whole.symbols(store)?;
                v.retain(|s| part.contains(s));
                v
            }
        })
    }

    /// The universe whose instruments a query's fields are checked against and a feature set's columns are
    /// chosen for: the whole one, for a part.
    fn whole(&self) -> &Self {
        match self {
            Universe::Part(whole, _) => whole.whole(),
            u => u,
        }
    }
}

/// Where an instrument's values go in its block of a row-major frame.
struct Placement<'a> {
    ncol: usize,
    /// Calendar row of the block's first row.
    first: usize,
    /// Output row of each calendar row from `first` (`usize::MAX`: not requested), when the rows have gaps.
    slot: Option<&'a [usize]>,
}

impl Placement<'_> {
    /// Writes `values` of calendar rows `from..` into column `c` of `out`.
    #[inline]
    fn put<T: Copy>(
        &self,
        out: &mut [f32],
        c: usize,
        from: usize,
        values: &[T],
        f32_of: impl Fn(T) -> f32,
    ) {
        let at = from - self.first;
        match self.slot {
            None => out[at * self.ncol + c..]
                .iter_mut()
                .step_by(self.ncol)
                .zip(values)
                .for_each(|(o, &v)| *o = f32_of(v)),
            Some(slot) => {
                for (&i, &v) in slot[at..].iter().zip(values) {
                    if i != usize::MAX {
                        out[i * self.ncol + c] = f32_of(v);
                    }
                }
            }
        }
    }
}

/// How a query's values are laid out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Row-major (a [`Frame`]): a row, the unit of a training sample, is one slice.
    Rows,
    /// Column-major (a [`ColumnFrame`]): a column is one slice.
    Columns,
}

/// Where one instrument's values go.
enum Dest<'a> {
    /// Its block of a row-major frame.
    Rows(&'a mut [f32]),
    /// Its rows, from this one on, in every column of a column-major frame.
    Columns(usize),
}

/// A column-major buffer that many threads write at once, each a disjoint range of rows.
struct ColumnSink {
    ptr: *mut f32,
    rows: usize,
    ncol: usize,
}

// SAFETY: the sink is only a pointer to a buffer that outlives the parallel loop using it; writes through it
// go to disjoint row ranges (see `put_column`), so sharing it between threads races on nothing.
unsafe impl Send for ColumnSink {}
// SAFETY: as for Send.
unsafe impl Sync for ColumnSink {}

impl ColumnSink {
    fn new(values: &mut [f32], rows: usize, ncol: usize) -> ColumnSink {
        assert_eq!(values.len(), rows * ncol, "a rows x ncol buffer");
        ColumnSink {
            ptr: values.as_mut_ptr(),
            rows,
            ncol,
        }
    }

    /// Writes `values` into column `c` from row `r0` on.
    ///
    /// # Safety
    /// No other thread writes or reads those rows of that column meanwhile, and the buffer is alive.
    unsafe fn put_column(&self, c: usize, r0: usize, values: &[f32]) {
        assert!(
            c < self.ncol && r0 + values.len() <= self.rows,
            "inside the buffer"
        );
        // SAFETY: in bounds (asserted); exclusive per the caller's contract.
        unsafe {
            std::ptr::copy_nonoverlapping(
                values.as_ptr(),
                self.ptr.add(c * self.rows + r0),
                values.len(),
            )
        };
    }

    /// [`put_column`](Self::put_column) of the engine's f64 values, rounded to f32 as they are written.
    ///
    /// # Safety
    /// As for [`put_column`](Self::put_column).
    unsafe fn put_column_f64(&self, c: usize, r0: usize, values: &[f64]) {
        assert!(
            c < self.ncol && r0 + values.len() <= self.rows,
            "inside the buffer"
        );
        // SAFETY: in bounds (asserted); exclusive per the caller's contract.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(self.ptr.add(c * self.rows + r0), values.len())
        };
        for (o, &x) in dst.iter_mut().zip(values) {
            *o = x as f32;
        }
    }

    /// Writes a row-major block of `ncol` columns into rows `r0..` of every column.
    ///
    /// # Safety
    /// As for [`put_column`](Self::put_column), for every column.
    unsafe fn put_rows(&self, r0: usize, block: &[f32]) {
        let n = block.len() / self.ncol.max(1);
        assert!(r0 + n <= self.rows, "inside the buffer");
        for c in 0..self.ncol {
            // SAFETY: column c's rows r0..r0 + n are in bounds (asserted) and exclusive per the contract.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(self.ptr.add(c * self.rows + r0), n) };
            for (o, row) in dst.iter_mut().zip(block.chunks_exact(self.ncol)) {
                *o = row[c];
            }
        }
    }
}

/// Writes `columns` (column-major, `rows` values per column) into `out` (row-major), a tile of rows at a
/// time: a tile's rows stay in the L1 cache while every column writes into them, where writing one column
/// down all rows touches a new cache line per value.
fn transpose(columns: &[f32], rows: usize, out: &mut [f32]) {
    const TILE: usize = 16;
    let ncol = columns.len() / rows.max(1);
    for r0 in (0..rows).step_by(TILE) {
        let r1 = (r0 + TILE).min(rows);
        for (row, r) in out[r0 * ncol..r1 * ncol].chunks_exact_mut(ncol).zip(r0..r1) {
            for (o, col) in row.iter_mut().zip(columns.chunks_exact(rows)) {
                *o = col[r];
            }
        }
    }
}

/// Key of the feature cache space: an expression's canonical text, for one instrument, over calendar rows
/// `rows` of `freq`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FeatureKey {
    expr: String,
    /// Upper case, as instruments files write symbols.
    instrument: String,
    rows: (usize, usize),
    freq: Freq,
}

/// Counters of an engine's caches.
#[derive(Debug, Clone, Copy)]
pub struct CacheStats {
    pub calendar: Stats,
    pub instruments: Stats,
    pub features: Stats,
    /// The disk expression cache's reads, when the engine uses one.
    pub disk: Option<DiskStats>,
}

impl CacheStats {
    /// The counters as `qcache query --cache-stats --json` prints them: `expression_cache` (null when no disk
    /// cache is read) and `memcache` (`calendar`, `instruments`, `features`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "expression_cache": self.disk,
            "memcache": {
                "calendar": self.calendar,
                "instruments": self.instruments,
                "features": self.features,
            },
        })
    }
}

/// A store with its caches, answering feature queries: the type training code and the commands read through.
pub struct Engine {
    store: Store,
    /// Evaluated columns of this process (qlib's `H["f"]`).
    features: MemCache<FeatureKey, Arc<Vec<f32>>>,
    /// The store's write count when `features` was last known good.
    seen_writes: AtomicU64,
    /// Computed expressions on disk, and how to use them.
    disk: Option<(Arc<DiskExpressionCache>, Mode)>,
    /// The cache settings the engine was opened with.
    cache_settings: CacheSettings,
    /// Whose rules expressions follow.
    compat: Compat,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("root", &self.store.root())
            .finish()
    }
}

impl Engine {
    /// Opens the store at `root` with its settings ([`Settings::resolve`]: qstore.json, `QSTORE_*`). Its
    /// expression cache is on the read path: `features()` reads current entries (mode `read`, the default,
    /// when the cache directory exists), or also fills it (`expression_cache.mode = "write"`).
    pub fn open(root: impl AsRef<Path>) -> Result<Engine> {
        let root = root.as_ref();
        Engine::open_with(root, Settings::resolve(root, &Overrides::default())?)
    }

    /// Opens the store at `root` with these settings (nothing else is read).
    pub fn open_with(root: impl AsRef<Path>, settings: Settings) -> Result<Engine> {
        let store = Store::open_with(root, settings.store.clone())?;
        let mut engine = Engine::new(store, settings.feature_cache, settings.cache)?;
        engine.set_compat(settings.compat);
        Ok(engine)
    }

    /// An engine over an open store, with a feature cache of these bounds, using the expression cache as
    /// `cache` says.
    pub fn new(store: Store, feature_cache: CacheConfig, cache: CacheSettings) -> Result<Engine> {
        let mut engine = Engine {
            features: MemCache::new(feature_cache.limit, feature_cache.expiry),
            seen_writes: AtomicU64::new(store.writes()),
            store,
            disk: None,
            cache_settings: cache,
            compat: Compat::None,
        };
        engine.use_expression_cache(engine.cache_settings.mode)?;
        Ok(engine)
    }

    /// The store the engine reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Sets whose rules `features()` follows: [`Compat::Qlib`] gives qlib 0.9.7's own values where qstore
    /// deliberately differs (docs/expressions.md), measured from each query's start as qlib does; the columns
    /// concerned ([`Expr::differs_in_qlib`]) are then computed on every query, never read from or written to
    /// the expression cache, whose entries hold qstore's start-independent values.
    pub fn set_compat(&mut self, compat: Compat) {
        self.compat = compat;
    }

    /// Whose rules `features()` follows.
    pub fn compat(&self) -> Compat {
        self.compat
    }

    /// Sets how `features()` uses the store's own expression cache (as the settings name it): `Off` never,
    /// `Read` when its directory exists, `Write` always (taking writer locks, Redis when configured). Reading
    /// needs no lock.
    pub fn use_expression_cache(&mut self, mode: Mode) -> Result<()> {
        let settings = &self.cache_settings;
        self.disk = match mode {
            Mode::Off => None,
            Mode::Read => settings.dir.is_dir().then(|| {
                let lock = Box::new(crate::cache::lock::FileLock::new(&settings.dir));
                (
                    Arc::new(DiskExpressionCache::new(&settings.dir, lock)),
                    mode,
                )
            }),
            Mode::Write => Some((
                Arc::new(DiskExpressionCache::open(
                    self.store.root(),
                    settings,
                    false,
                )?),
                mode,
            )),
        };
        Ok(())
    }

    /// Makes `features()` use this disk cache in `mode` (`Read`: current entries, and behind ones for the
    /// rows they have; `Write`: also stores what it computes).
    pub fn set_expression_cache(&mut self, cache: Arc<DiskExpressionCache>, mode: Mode) {
        self.disk = (mode != Mode::Off).then_some((cache, mode));
    }

    /// The expression cache `features()` uses, if any.
    pub fn expression_cache(&self) -> Option<&DiskExpressionCache> {
        self.disk.as_ref().map(|(c, _)| c.as_ref())
    }

    /// Forgets what this process loaded and computed, so the next reads see what other processes published.
    pub fn refresh(&self) {
        self.store.refresh();
        self.features.clear();
        if let Some((c, _)) = &self.disk {
            c.refresh();
        }
    }

    /// Counters of the in-memory cache spaces and of the disk cache's reads.
    pub fn cache_stats(&self) -> CacheStats {
        let store::CacheStats {
            calendar,
            instruments,
        } = self.store.cache_stats();
        CacheStats {
            calendar,
            instruments,
            features: self.features.stats(),
            disk: self.expression_cache().map(|c| c.stats()),
        }
    }

    /// Drops what the feature cache holds of instruments written through the store since it was filled: every
    /// evaluated expression of the instrument or naming it (`Mask(x,'SH600000')`).
    fn sync_with_writes(&self) {
        let (now, changes) = self
            .store
            .changes_since(self.seen_writes.load(Ordering::Acquire));
        match changes {
            store::Changes::None => return,
            store::Changes::All => self.features.clear(),
            store::Changes::Instruments(list) => {
                let quoted: Vec<String> = list.iter().map(|i| format!("'{i}'")).collect();
                self.features.remove_if(|k| {
                    list.binary_search(&k.instrument).is_ok()
                        || quoted.iter().any(|q| k.expr.contains(q))
                });
            }
        }
        self.seen_writes.store(now, Ordering::Release);
    }
    /// Evaluates `exprs` (qlib expressions, one column each, named as given) for every instrument of
    /// `universe` between `start` and `end` (inclusive; `None`: the calendar's ends). Instruments are evaluated
    /// in parallel; results of an (expression, instrument, rows) already computed by this process come from
    /// the in-memory feature cache. A field that no instrument of the query has is an error (a typo would
    /// otherwise be a column of NaN).
    pub fn features<S: AsRef<str>>(
        &self,
        universe: Universe<'_>,
        exprs: &[S],
        start: Option<Timestamp>,
        end: Option<Timestamp>,
        freq: Freq,
    ) -> Result<Frame> {
        let (columns, index, calendar, values) =
            self.evaluate(universe, exprs, start, end, freq, Layout::Rows, None)?;
        Ok(Frame::from_parts(columns, index, calendar, values))
    }

    /// [`features`](Self::features) laid out column by column: each column one contiguous slice, written in
    /// place by the evaluation (no transposition of a finished frame), for consumers that take columns whole
    /// (Arrow, Parquet, the Python package's arrow and polars outputs).
    pub fn features_by_column<S: AsRef<str>>(
        &self,
        universe: Universe<'_>,
        exprs: &[S],
        start: Option<Timestamp>,
        end: Option<Timestamp>,
        freq: Freq,
    ) -> Result<ColumnFrame> {
        let (columns, index, calendar, values) =
            self.evaluate(universe, exprs, start, end, freq, Layout::Columns, None)?;
        Ok(ColumnFrame::from_parts(columns, index, calendar, values))
    }

    /// [`features_by_column`](Self::features_by_column) part by part: at most `part_size` instruments at a
    /// time, in the frame's row order, each part handed to `each` before the next is computed. The parts'
    /// rows together are the whole frame's, but only one part is held at a time: what a writer of a
    /// whole-universe query needs (the whole Alpha158 frame of 5000 instruments x 750 days is 2.4 GB). A
    /// query of more than one part bypasses the in-memory feature cache, like any scan too large for it.
    #[allow(clippy::too_many_arguments)]
    pub fn features_in_parts<S: AsRef<str>>(
        &self,
        universe: Universe<'_>,
        exprs: &[S],
        start: Option<Timestamp>,
        end: Option<Timestamp>,
        freq: Freq,
        part_size: usize,
        mut each: impl FnMut(ColumnFrame) -> Result<()>,
    ) -> Result<()> {
        let names = self.instruments_of(universe, start, end, freq)?;
        if names.len() <= part_size.max(1) {
            return each(self.features_by_column(universe, exprs, start, end, freq)?);
        }
        // Parts the consumer has dropped lend their memory to the next ones.
        let spares = Arc::new(Spares::default());
        for part in names.chunks(part_size.max(1)) {
            let part = Universe::Part(&universe, part);
            let (columns, index, calendar, values) = self.evaluate(
                part,
                exprs,
                start,
                end,
                freq,
                Layout::Columns,
                Some(&spares),
            )?;
            each(ColumnFrame::from_parts(columns, index, calendar, values))?;
        }
        Ok(())
    }

    /// The instruments of a query in the frame's row order, spelled as [`Universe::Part`] takes them; those
    /// without rows in the range included.
    pub fn instruments_of(
        &self,
        universe: Universe<'_>,
        start: Option<Timestamp>,
        end: Option<Timestamp>,
        freq: Freq,
    ) -> Result<Vec<String>> {
        let calendar = self.store.calendar(freq)?;
        let range = calendar.locate(start, end);
        Ok(self
            .targets(universe, &calendar, &range)?
            .into_iter()
            .map(|t| t.0)
            .collect())
    }

    /// How many instruments a part of [`features_in_parts`](Self::features_in_parts) should hold so that
    /// it stays near 128 MB of values: `columns` columns over the calendar rows from `start` to `end`.
    pub fn part_size(
        &self,
        columns: usize,
        start: Option<Timestamp>,
        end: Option<Timestamp>,
        freq: Freq,
    ) -> Result<usize> {
        let rows = self.store.calendar(freq)?.locate(start, end).len();
        Ok((PART_VALUES / (columns.max(1) * rows.max(1))).max(1))
    }

    /// The rows, column names and values of a query, in `layout`. `part`: one part of a larger query, which
    /// bypasses the in-memory feature cache and takes its values' memory from the query's spares.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn evaluate<S: AsRef<str>>(
        &self,
        universe: Universe<'_>,
        exprs: &[S],
        start: Option<Timestamp>,
        end: Option<Timestamp>,
        freq: Freq,
        layout: Layout,
        part: Option<&Arc<Spares>>,
    ) -> Result<(
        Vec<String>,
        Vec<(String, Vec<usize>)>,
        Arc<crate::store::calendar::Calendar>,
        Values,
    )> {
        self.sync_with_writes();
        let parsed: Vec<Expr> = exprs
            .iter()
            .map(|e| expr::parse(e.as_ref()))
            .collect::<Result<_>>()?;
        let calendar = self.store.calendar(freq)?;
        let range = calendar.locate(start, end);
        let query = match self.compat {
            Compat::None => Query::new(parsed.clone()),
            Compat::Qlib => Query::new(parsed.clone()).qlib_compatible(range.start),
        };
        // The feature cache's key of each column: qlib's start-dependent values are those of this start.
        let canonical: Vec<String> = parsed
            .iter()
            .map(|e| match self.compat {
                Compat::Qlib if e.differs_in_qlib() => format!("qlib@{}:{e}", range.start),
                _ => e.to_string(),
            })
            .collect();
        let columns: Vec<String> = exprs.iter().map(|e| e.as_ref().to_string()).collect();
        let targets = self.targets(universe, &calendar, &range)?;
        match universe {
            Universe::Part(..) => {
                let whole = self.targets(*universe.whole(), &calendar, &range)?;
                self.check_fields(&parsed, exprs, whole.iter().map(|t| t.0.as_str()), freq)?
            }
            _ => self.check_fields(&parsed, exprs, targets.iter().map(|t| t.0.as_str()), freq)?,
        }
        let fields = StoreFields {
            store: &self.store,
            freq,
        };
        // Rows of each instrument first, so the frame is allocated once and filled in place in parallel.
        let spans: Vec<Vec<Range<usize>>> = targets
            .par_iter()
            .map(|(inst, spans)| {
                let spans = match spans {
                    Some(s) => s.clone(),
                    None => match expr::domain(&fields, inst, &parsed)? {
                        Some(d) => std::iter::once(d.start.max(range.start)..d.end.min(range.end))
                            .collect(),
                        None => Vec::new(),
                    },
                };
                Ok(spans.into_iter().filter(|r| !r.is_empty()).collect())
            })
            .collect::<Result<_>>()?;
        let ncol = parsed.len();
        let counts: Vec<usize> = spans
            .iter()
            .map(|s| s.iter().map(|r| r.len()).sum())
            .collect();
        let total: usize = counts.iter().sum();
        let mut values = Values::nan_reusing(total * ncol, part);
        // Where each instrument's rows go: its own block of a row-major frame, or a range of rows of every
        // column of a column-major one (written through `sink`; the ranges are disjoint).
        let (dests, sink): (Vec<Dest<'_>>, Option<ColumnSink>) = match layout {
            Layout::Rows => {
                let mut dests = Vec::with_capacity(counts.len());
                let mut rest = values.as_mut_slice();
                for &c in &counts {
                    let (head, tail) = rest.split_at_mut(c * ncol);
                    dests.push(Dest::Rows(head));
                    rest = tail;
                }
                (dests, None)
            }
            Layout::Columns => {
                let mut r0 = 0;
                let dests = counts
                    .iter()
                    .map(|&c| {
                        let d = Dest::Columns(r0);
                        r0 += c;
                        d
                    })
                    .collect();
                (
                    dests,
                    Some(ColumnSink::new(values.as_mut_slice(), total, ncol)),
                )
            }
        };
        let sink = sink.as_ref();
        // A query whose results cannot all fit in the feature cache would only evict everything, itself
        // included, before anyone asks again: such scans bypass it (as in scan-resistant buffer pools).
        let cells = counts.iter().filter(|&&c| c > 0).count() * ncol;
        let use_cache = part.is_none()
            && match self.features.limit() {
                Limit::Entries(n) => cells <= n,
                Limit::Bytes(b) => {
                    let rows: usize = spans
                        .iter()
                        .map(|s| s.first().zip(s.last()).map_or(0, |(a, z)| z.end - a.start))
                        .sum();
                    rows * ncol * 4 <= b
                }
            };
        type Scratches = (Scratch, Vec<f32>, Vec<f32>);
        // One instrument into its destination.
        let one = |(scratch, columns, block): &mut Scratches,
                   inst: &str,
                   spans: &[Range<usize>],
                   dest: Dest<'_>|
         -> Result<()> {
            let (Some(first), Some(last)) = (spans.first(), spans.last()) else {
                return Ok(());
            };
            let n: usize = spans.iter().map(|r| r.len()).sum();
            // A column-major destination gets the instrument's rows as a row-major block first.
            let (out, col_r0): (&mut [f32], Option<usize>) = match dest {
                Dest::Rows(out) => (out, None),
                Dest::Columns(r0) => {
                    block.clear();
                    // Needed only where columns cannot go straight into place (gaps, or the
                    // memory cache's path): elsewhere it would be 4 bytes per value set for nothing.
                    if spans.len() > 1 || use_cache {
                        block.resize(n * ncol, f32::NAN);
                    }
                    (&mut block[..], Some(r0))
                }
            };
            let hull = first.start..last.end;
            // Output row of each calendar row of the hull, when spans leave gaps in it.
            let slot = (spans.len() > 1).then(|| {
                let mut slot = vec![usize::MAX; hull.len()];
                for (i, r) in spans.iter().flat_map(|r| r.clone()).enumerate() {
                    slot[r - hull.start] = i;
                }
                slot
            });
            let at = Placement {
                ncol,
                first: hull.start,
                slot: slot.as_deref(),
            };
            if use_cache {
                let cols = self.evaluate_cached(&fields, inst, &query, &canonical, hull.clone())?;
                for (c, col) in cols.iter().enumerate() {
                    at.put(out, c, hull.start, col, |v| v);
                }
            } else if self.disk.is_some() {
                let all: Vec<usize> = (0..ncol).collect();
                let cols = self.columns(&fields, inst, &query, &canonical, hull.clone(), &all)?;
                if let (Some(r0), Some(sink), None) = (col_r0, sink, at.slot) {
                    // Column by column straight into place, as computed columns go below.
                    for (c, col) in cols.iter().enumerate() {
                        // SAFETY: rows r0..r0 + n of every column belong to this instrument
                        // alone (the destinations are disjoint row ranges), and each column
                        // holds the hull's n rows (one span: no gaps).
                        unsafe { sink.put_column(c, r0, col) };
                    }
                    return Ok(());
                }
                for (c, col) in cols.iter().enumerate() {
                    at.put(out, c, hull.start, col, |v| v);
                }
            } else if let (None, Some(r0), Some(sink)) = (at.slot, col_r0, sink) {
                // Computed columns straight into place, rounded as they are written: no block of
                // this instrument's columns to fill with NaN and copy again (the part is NaN already).
                let n = hull.len();
                query.evaluate_into(&fields, inst, hull.clone(), scratch, |c, from, v| {
                    let off = from - hull.start;
                    assert!(off + v.len() <= n, "inside the instrument's rows");
                    // SAFETY: rows r0..r0 + n of every column belong to this instrument
                    // alone (the destinations are disjoint row ranges), and the values stay
                    // inside them (asserted).
                    unsafe { sink.put_column_f64(c, r0 + off, v) };
                })?;
                return Ok(());
            } else if at.slot.is_none() {
                // A row-major destination: columns first (contiguous writes), then one pass into
                // the frame's rows.
                let len = hull.len();
                columns.clear();
                columns.resize(ncol * len, f32::NAN);
                query.evaluate_into(&fields, inst, hull.clone(), scratch, |c, from, v| {
                    let at = c * len + from - hull.start;
                    columns[at..at + v.len()]
                        .iter_mut()
                        .zip(v)
                        .for_each(|(o, &x)| *o = x as f32);
                })?;
                transpose(columns, len, out);
            } else {
                query.evaluate_into(&fields, inst, hull.clone(), scratch, |c, from, v| {
                    at.put(out, c, from, v, |x| x as f32)
                })?;
            }
            if let (Some(r0), Some(sink)) = (col_r0, sink) {
                // SAFETY: as above, rows r0..r0 + n of every column are this instrument's alone.
                unsafe { sink.put_rows(r0, block) };
            }
            Ok(())
        };
        // Groups of `Query::LANES` instruments with the same rows go through the engine together, where they can
        // share its lanes (the computed columns of a column-major frame, each instrument one span); the engine
        // says when their fields do not line up, and then they go one at a time, as the rest do.
        let lanes = sink.is_some() && !use_cache && self.disk.is_none();
        let mut by_rows: BTreeMap<Option<(usize, usize)>, Vec<_>> = BTreeMap::new();
        for ((target, spans), dest) in targets.iter().zip(&spans).zip(dests) {
            let key = match spans.as_slice() {
                [one] if lanes => Some((one.start, one.end)),
                _ => None,
            };
            by_rows.entry(key).or_default().push((target, spans, dest));
        }
        let mut groups = Vec::new();
        for (hull, items) in by_rows {
            let size = if hull.is_some() { Query::LANES } else { 1 };
            let mut items = items.into_iter();
            loop {
                let group: Vec<_> = items.by_ref().take(size).collect();
                if group.is_empty() {
                    break;
                }
                groups.push((hull.map(|(start, end)| start..end), group));
            }
        }
        groups.into_par_iter().try_for_each_init(
            || (Scratch::default(), Vec::new(), Vec::new()),
            |scratches, (hull, group)| -> Result<()> {
                if let (Some(hull), Some(sink)) = (hull, sink)
                    && group.len() == Query::LANES
                {
                    let names: Vec<&str> = group.iter().map(|(t, _, _)| t.0.as_str()).collect();
                    let r0s: Vec<usize> = group
                        .iter()
                        .map(|(_, _, dest)| match dest {
                            Dest::Columns(r0) => *r0,
                            Dest::Rows(_) => unreachable!("lanes fill a column-major frame"),
                        })
                        .collect();
                    let n = hull.len();
                    let done = query.evaluate_lanes_into(
                        &fields,
                        &names,
                        hull.clone(),
                        &mut scratches.0,
                        |lane, c, from, v| {
                            let off = from - hull.start;
                            assert!(off + v.len() <= n, "inside the instrument's rows");
                            // SAFETY: rows r0..r0 + n of every column belong to this lane's instrument
                            // alone (the destinations are disjoint row ranges), and the values stay
                            // inside them (asserted).
                            unsafe { sink.put_column_f64(c, r0s[lane] + off, v) };
                        },
                    )?;
                    if done {
                        return Ok(());
                    }
                }
                for ((inst, _), spans, dest) in group {
                    one(scratches, inst, spans, dest)?;
                }
                Ok(())
            },
        )?;
        if let Some((disk, Mode::Write)) = &self.disk {
            // The entries this query built go into their instruments' packs, as `warm` would put them.
            disk.repack_written(&self.store)?;
        }
        let index = targets
            .into_iter()
            .zip(spans)
            .map(|((inst, _), spans)| (inst, spans.into_iter().flatten().collect()))
            .collect();
        Ok((columns, index, calendar, values))
    }

    /// Each instrument of a query and its requested rows: span rows for a market, everything (`None`, cut to
    /// data later) for a list, in the order of the frame.
    #[allow(clippy::type_complexity)]
    fn targets(
        &self,
        universe: Universe<'_>,
        calendar: &crate::store::calendar::Calendar,
        range: &Range<usize>,
    ) -> Result<Vec<(String, Option<Vec<Range<usize>>>)>> {
        Ok(match universe {
            Universe::Market(m) => self
                .store
                .instruments(m)?
                .iter()
                .map(|(sym, spans)| {
                    let rows = spans
                        .iter()
                        .map(|s| {
                            let r = calendar.locate(Some(s.start), Some(s.end));
                            r.start.max(range.start)..r.end.min(range.end)
                        })
                        .filter(|r| !r.is_empty())
                        .collect();
                    (sym.to_string(), Some(rows))
                })
                .collect(),
            Universe::List(list) => {
                let mut v = list
                    .iter()
                    .map(|s| {
                        validate_name(NameKind::Instrument, s)?;
                        Ok((s.clone(), None))
                    })
                    .collect::<Result<Vec<_>>>()?;
                v.sort_by(|a, b| a.0.cmp(&b.0));
                v.dedup_by(|a, b| a.0 == b.0);
                v
            }
            Universe::Part(whole, part) => {
                let part: HashSet<&str> = part.iter().map(String::as_str).collect();
                let mut v = self.targets(*whole, calendar, range)?;
                v.retain(|t| part.contains(t.0.as_str()));
                v
            }
        })
    }

    /// The features of `set` this query computes: all but the optional ones whose fields no instrument of
    /// `universe` (the whole one, for a part) has.
    pub fn feature_set_columns<'s>(
        &self,
        universe: Universe<'_>,
        set: &'s FeatureSet,
        freq: Freq,
    ) -> Result<Vec<&'s crate::query::featureset::Feature>> {
        Ok(self.feature_set_plan(universe, set, freq)?.0)
    }

    /// [`feature_set_columns`](Self::feature_set_columns), and the optional features left out, each with
    /// the fields no instrument of the query has: what a caller reports so that a missing column is never a
    /// silent surprise.
    pub fn feature_set_plan<'s>(
        &self,
        universe: Universe<'_>,
        set: &'s FeatureSet,
        freq: Freq,
    ) -> Result<(
        Vec<&'s crate::query::featureset::Feature>,
        Vec<LeftOutFeature>,
    )> {
        let symbols = universe.whole().symbols(&self.store)?;
        let mut chosen = Vec::new();
        let mut left_out = Vec::new();
        for f in &set.features {
            if f.optional {
                let e = expr::parse(&f.expr)?;
                let mut missing = Vec::new();
                for field in e.fields() {
                    let mut any = false;
                    for s in &symbols {
                        if self.store.feature(s, field, freq)?.is_some() {
                            any = true;
                            break;
                        }
                    }
                    if !any && !missing.iter().any(|m: &String| m == field) {
                        missing.push(field.to_string());
                    }
                }
                if !missing.is_empty() {
                    left_out.push(LeftOutFeature {
                        name: f.name.clone(),
                        missing,
                    });
                    continue;
                }
            }
            chosen.push(f);
        }
        Ok((chosen, left_out))
    }

    /// Evaluates a feature set ([`Store::features`] with the set's expressions, columns named by feature).
    /// Optional features whose fields no instrument of the query has are left out.
    pub fn feature_set(
        &self,
        universe: Universe<'_>,
        set: &FeatureSet,
        start: Option<Timestamp>,
        end: Option<Timestamp>,
        freq: Freq,
    ) -> Result<Frame> {
        self.with_set(universe, set, freq, Frame::rename_columns, |exprs| {
            self.features(universe, exprs, start, end, freq)
        })
    }

    /// [`feature_set`](Self::feature_set) laid out column by column (see
    /// [`features_by_column`](Self::features_by_column)).
    pub fn feature_set_by_column(
        &self,
        universe: Universe<'_>,
        set: &FeatureSet,
        start: Option<Timestamp>,
        end: Option<Timestamp>,
        freq: Freq,
    ) -> Result<ColumnFrame> {
        self.with_set(universe, set, freq, ColumnFrame::rename_columns, |exprs| {
            self.features_by_column(universe, exprs, start, end, freq)
        })
    }

    /// Runs `query` on the expressions of `set` this universe computes, then names the columns by feature.
    fn with_set<F>(
        &self,
        universe: Universe<'_>,
        set: &FeatureSet,
        freq: Freq,
        rename: impl FnOnce(&mut F, Vec<String>),
        query: impl FnOnce(&[&str]) -> Result<F>,
    ) -> Result<F> {
        let chosen = self.feature_set_columns(universe, set, freq)?;
        let exprs: Vec<&str> = chosen.iter().map(|f| f.expr.as_str()).collect();
        let mut frame = query(&exprs)?;
        rename(&mut frame, chosen.iter().map(|f| f.name.clone()).collect());
        Ok(frame)
    }

    /// Evaluates through the feature cache space: cached columns are reused, the rest evaluated together.
    fn evaluate_cached(
        &self,
        fields: &StoreFields<'_>,
        instrument: &str,
        query: &Query,
        canonical: &[String],
        rows: Range<usize>,
    ) -> Result<Vec<Arc<Vec<f32>>>> {
        let key = |c: &str| FeatureKey {
            expr: c.to_string(),
            instrument: instrument.to_uppercase(),
            rows: (rows.start, rows.end),
            freq: fields.freq,
        };
        let mut out: Vec<Option<Arc<Vec<f32>>>> = canonical
            .iter()
            .map(|c| self.features.get(&key(c)))
            .collect();
        let missing: Vec<usize> = (0..out.len()).filter(|&i| out[i].is_none()).collect();
        if !missing.is_empty() {
            let values =
                self.columns(fields, instrument, query, canonical, rows.clone(), &missing)?;
            for (&i, v) in missing.iter().zip(values) {
                let v = Arc::new(v);
                self.features.insert(key(&canonical[i]), v.clone());
                out[i] = Some(v);
            }
        }
        Ok(out.into_iter().map(|v| v.expect("filled above")).collect())
    }

    /// The values of the query's expressions `which` for `instrument` over `rows`: from the disk expression
    /// cache when the store uses one (current entries whole, behind ones for the rows they have, and in write
    /// mode building what is missing first), the rest evaluated, grouped by the first row to compute.
    fn columns(
        &self,
        fields: &StoreFields<'_>,
        instrument: &str,
        query: &Query,
        canonical: &[String],
        rows: Range<usize>,
        which: &[usize],
    ) -> Result<Vec<Vec<f32>>> {
        let evaluate_all = || {
            if which.len() == query.exprs().len() {
                query.evaluate(fields, instrument, rows.clone())
            } else {
                let exprs: Vec<Expr> = which.iter().map(|&i| query.exprs()[i].clone()).collect();
                query
                    .others(exprs)
                    .evaluate(fields, instrument, rows.clone())
            }
        };
        let Some((disk, mode)) = &self.disk else {
            return evaluate_all();
        };
        if *mode == Mode::Read && !disk.has_instrument(instrument) {
            // Nothing cached for this instrument: one look at its directory, not one per expression.
            let computed = which
                .iter()
                .filter(|&&c| !matches!(query.exprs()[c], Expr::Field(_)))
                .count();
            disk.count_misses(computed);
            return evaluate_all();
        }
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); which.len()];
        let mut compute: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (k, &c) in which.iter().enumerate() {
            let e = &query.exprs()[c];
            if matches!(e, Expr::Field(_)) {
                compute.entry(rows.start).or_default().push(k);
                continue;
            }
            if query.is_qlib_compatible() && e.differs_in_qlib() {
                // The entries hold qstore's values; qlib's depend on the query's start.
                disk.count_misses(1);
                compute.entry(rows.start).or_default().push(k);
                continue;
            }
            let look = || {
                disk.lookup(
                    &self.store,
                    &canonical[c],
                    e,
                    instrument,
                    fields.freq,
                    rows.clone(),
                )
            };
            let mut found = look()?;
            if *mode == Mode::Write && !matches!(found, Lookup::Hit(_)) {
                // qlib's read-through: build or bring the entry forward under its lock, then read it.
                let outcome = disk.warm(&self.store, e, instrument, fields.freq)?;
                if matches!(outcome, Outcome::Built | Outcome::Appended) {
                    disk.count_write(instrument, fields.freq);
                }
                found = look()?;
            }
            match found {
                Lookup::Hit(col) => out[k] = col,
                Lookup::Partial { values, from } => {
                    out[k] = values;
                    compute.entry(from).or_default().push(k);
                }
                Lookup::Miss => compute.entry(rows.start).or_default().push(k),
            }
        }
        if compute.len() == 1
            && compute
                .get(&rows.start)
                .is_some_and(|ks| ks.len() == which.len())
        {
            // Nothing came from the disk: the whole query's plan (shared sub-expressions) computes it.
            return evaluate_all();
        }
        for (from, ks) in compute {
            let exprs: Vec<Expr> = ks
                .iter()
                .map(|&k| query.exprs()[which[k]].clone())
                .collect();
            let cols = query
                .others(exprs)
                .evaluate(fields, instrument, from..rows.end)?;
            for (&k, col) in ks.iter().zip(cols) {
                let head = &mut out[k];
                head.resize(from - rows.start, f32::NAN);
                head.extend_from_slice(&col);
            }
        }
        Ok(out)
    }

    /// Fails on a field that none of `instruments` has a file for.
    fn check_fields<'a, S: AsRef<str>>(
        &self,
        parsed: &[Expr],
        texts: &[S],
        instruments: impl Iterator<Item = &'a str> + Clone,
        freq: Freq,
    ) -> Result<()> {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, e) in parsed.iter().enumerate() {
            for f in e.fields() {
                seen.entry(f).or_insert(i);
            }
        }
        for (field, i) in seen {
            let mut any = false;
            let mut example = None;
            for inst in instruments.clone() {
                if self.store.feature(inst, field, freq)?.is_some() {
                    any = true;
                    break;
                }
                example.get_or_insert(inst);
            }
            if any {
                continue;
            }
            let text = texts[i].as_ref();
            let pos = text.to_lowercase().find(&format!("${field}")).unwrap_or(0);
            let available = match example {
                Some(inst) => {
                    let fields = self.store.fields_of(inst, freq)?;
                    if fields.is_empty() {
                        format!("{inst} has no fields at {freq}")
                    } else {
                        format!("fields of {inst}: {}", fields.join(", "))
                    }
                }
                None => "the query has no instruments".to_string(),
            };
            return Err(Error::Expr {
                expr: text.to_string(),
                pos,
                reason: format!(
                    "unknown field ${field}: no instrument of the query has features/<instrument>/{field}.{freq}.bin ({available})"
                ),
            });
        }
        Ok(())
    }
}
