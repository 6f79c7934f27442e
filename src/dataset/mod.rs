//! DiskDatasetCache: a whole dataset (instruments x expressions over the calendar, e.g. Alpha158 for a market)
//! computed once and kept in HDF5, read back by date range without recomputing (storage-layout.md §9).
//!
//! Files in `<store>/dataset_cache`: `<key>.<gen>.data` (HDF5: `values` rows x fields f32, chunked and
//! resizable, with an xxh3 `checksum` per chunk; `instrument` u32 codes into the meta's instrument list; `row`
//! u32 calendar rows),
//! `<key>.<gen>.index` (HDF5: `start`, `end` u64 row offsets per calendar row) and `<key>.meta` (JSON, the
//! commit point: it names the generation and how many rows are published). Rows are sorted by calendar row,
//! so a date range is one contiguous hyperslab. Readers take no lock; writers hold the dataset's lock.
//!
//! An update computes only the new days (and the look-ahead tail its expressions rewrite) and appends them to
//! a copy of the published file, which becomes the next generation: HDF5 rewrites its B-trees and dataspaces
//! in place when a dataset grows, so appending to the published file would let a reader or a crash see a torn
//! file. The copy is made in the kernel (`copy_file_range`, shared extents where the file system reflinks).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{Xxh3, xxh3_128};

pub use crate::cache::expr::Outcome;
use crate::cache::lock::Lock;
use crate::error::{Error, Result};
use crate::expr::StoreFields;
use crate::expr::{self, Expr, Fields};
use crate::query::frame::Frame;
use crate::query::{Engine, Universe};
use crate::store::Store;
use crate::store::calendar::Timestamp;
use crate::store::freq::Freq;
use crate::store::fsio;
use crate::store::settings::{CacheSettings, Compat};
use crate::util::memcache::{Limit, MemCache, Weigh};

/// qlib's `disk_cache` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum DiskCacheMode {
    /// 0: compute, leave the cache alone.
    #[cfg_attr(feature = "cli", value(alias = "0"))]
    Skip,
    /// 1: read the cached dataset, building or updating it first when it is missing or stale.
    #[cfg_attr(feature = "cli", value(alias = "1"))]
    Use,
    /// 2: rebuild it, then read.
    #[cfg_attr(feature = "cli", value(alias = "2"))]
    Rebuild,
}

const META_FORMAT: u32 = 4;

/// The `.meta` of a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetMeta {
    pub format: u32,
    /// `market:<name>`, or the sorted instrument list.
    pub universe: Vec<String>,
    /// Canonical expressions: the column order of `values` (the order of the request that built it).
    pub fields: Vec<String>,
    pub freq: String,
    /// The instruments the `.data`'s `instrument` codes index (first appearance order).
    pub instruments: Vec<String>,
    /// Calendar length the dataset was computed against (the `.index` has one entry per row), and its last date.
    pub calendar_len: usize,
    pub last_date: Option<String>,
    /// Published rows: readers read no further.
    pub rows: usize,
    /// Look-ahead rows of the expressions: the last `right` days change when days are added.
    pub right: u32,
    /// Each instrument's calendar rows in the dataset (`[start, end)` ranges): a market's spans, or where
    /// a listed instrument's fields have data. An update compares them to find the first row that changes
    /// (a suspended instrument that trades again gains rows before the old end).
    pub spans: BTreeMap<String, Vec<(usize, usize)>>,
    /// xxh3-128 of the calendar and every source value the dataset was computed from, up to
    /// `calendar_len` (trailing NaN excluded: missing and NaN read the same): a corrected source makes the
    /// dataset stale.
    pub fingerprint: String,
    /// Fencing token of the writer that published this generation.
    pub token: u64,
    /// Generation of the `.data` and `.index` files.
    pub generation: u64,
}

/// A request the DatasetURICache remembers: normalised universe, expressions as given, frequency.
type UriKey = (Vec<String>, Vec<String>, Freq);

/// What a remembered request resolved to.
#[derive(Clone)]
struct Resolved {
    key: String,
    meta: Arc<DatasetMeta>,
    columns: Vec<usize>,
}

impl Weigh for Resolved {
    fn weight(&self) -> usize {
        std::mem::size_of::<Self>() + self.columns.len() * 8 + self.meta.instruments.len() * 32
    }
}

/// Where datasets live and how their writers lock.
pub struct DiskDatasetCache {
    dir: PathBuf,
    lock: Box<dyn Lock>,
    /// How long a writer waits for another writer of the same dataset.
    pub wait: Duration,
    /// About how many bytes of computed rows a build or update holds at once (it computes that many days at a
    /// time). Blocks cost a little recomputation: each one evaluates its expressions' look-back again.
    pub build_bytes: usize,
    /// The DatasetURICache: request -> published files, so a repeated request skips parsing, hashing the
    /// sources and reading the `.meta`. An entry is used only while its generation's files still exist
    /// (a writer deletes them after publishing the next) and the calendar has not grown.
    uris: MemCache<UriKey, Arc<Resolved>>,
}

/// The default directory inside a store.
pub const DATASET_DIR: &str = crate::store::layout::DATASET_CACHE_DIR;

/// How long the DatasetURICache trusts a resolved request (a source corrected in place by another process
/// is noticed after at most this long).
pub const URI_EXPIRY: Duration = Duration::from_secs(60);

/// A request, parsed and normalised.
struct Request {
    universe: Vec<String>,
    /// Canonical expressions, sorted and de-duplicated: what the key covers.
    fields: Vec<String>,
    /// Canonical expressions in the request's order, de-duplicated: the column order of a new build, so
    /// that the same request later reads its rows without permuting columns.
    order: Vec<String>,
    /// The canonical text of each expression as given.
    canonical: Vec<String>,
    parsed: Vec<Expr>,
    key: String,
    freq: Freq,
}

impl Request {
    fn new<S: AsRef<str>>(universe: Universe<'_>, exprs: &[S], freq: Freq) -> Result<Request> {
        let mut parsed: Vec<Expr> = exprs
            .iter()
            .map(|e| expr::parse(e.as_ref()))
            .collect::<Result<_>>()?;
        let canonical: Vec<String> = parsed.iter().map(Expr::to_string).collect();
        let mut order = Vec::with_capacity(canonical.len());
        let mut seen = std::collections::HashSet::new();
        for c in &canonical {
            if seen.insert(c.as_str()) {
                order.push(c.clone());
            }
        }
        parsed.sort_by_cached_key(Expr::to_string);
        parsed.dedup_by_key(|e| e.to_string());
        let fields: Vec<String> = parsed.iter().map(Expr::to_string).collect();
        let universe = normalize(universe)?;
        let key = key(&universe, &fields, freq);
        Ok(Request {
            universe,
            fields,
            order,
            canonical,
            parsed,
            key,
            freq,
        })
    }

    fn from_meta(m: &DatasetMeta) -> Result<Request> {
        let freq: Freq = m.freq.parse()?;
        let u = universe_of(&m.universe);
        Request::new(u, &m.fields, freq)
    }

    /// The column of each requested expression in the `values` of a dataset whose columns are `stored`.
    fn columns(&self, stored: &[String]) -> Vec<usize> {
        let at: HashMap<&str, usize> = stored
            .iter()
            .enumerate()
            .map(|(i, f)| (f.as_str(), i))
            .collect();
        self.canonical.iter().map(|c| at[c.as_str()]).collect()
    }
}

impl DiskDatasetCache {
    pub fn new(dir: impl AsRef<Path>, lock: Box<dyn Lock>) -> DiskDatasetCache {
        DiskDatasetCache {
            dir: dir.as_ref().to_path_buf(),
            lock,
            wait: Duration::from_secs(600),
            build_bytes: 1 << 30,
            uris: MemCache::new(Limit::Entries(1024), Some(URI_EXPIRY)),
        }
    }

    /// The dataset cache of the store at `root`, locking as its settings say (the expression cache's locks).
    pub fn open(
        root: &Path,
        settings: &CacheSettings,
        read_only: bool,
    ) -> Result<DiskDatasetCache> {
        let dir = root.join(DATASET_DIR);
        let lock = crate::cache::lock::for_settings(root, &dir, settings, read_only)?;
        Ok(DiskDatasetCache::new(dir, lock))
    }

    /// [`open`](Self::open) with the store's own settings ([`Settings::resolve`](crate::store::settings::Settings::resolve)).
    pub fn for_store(root: &Path, read_only: bool) -> Result<DiskDatasetCache> {
        let settings = crate::store::settings::Settings::resolve(root, &Default::default())?;
        Self::open(root, &settings.cache, read_only)
    }

    pub fn available() -> bool {
        cfg!(feature = "hdf5")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn lock_backend(&self) -> &dyn Lock {
        self.lock.as_ref()
    }

    /// The DatasetURICache's counters.
    pub fn uri_stats(&self) -> crate::util::memcache::Stats {
        self.uris.stats()
    }

    /// Forgets the requests this process resolved.
    pub fn refresh(&self) {
        self.uris.clear();
    }

    fn meta_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.meta"))
    }

    fn files(&self, key: &str, generation: u64) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{key}.{generation}.data")),
            self.dir.join(format!("{key}.{generation}.index")),
        )
    }

    fn read_meta(path: &Path) -> Option<DatasetMeta> {
        let m: DatasetMeta = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        (m.format == META_FORMAT).then_some(m)
    }

    /// The dataset of `exprs` for `universe` between `start` and `end`: the frame `Store::features` returns,
    /// in the caller's column order, read from the cache according to `mode` (qlib's `D.features` arguments).
    #[allow(clippy::too_many_arguments)]
    pub fn dataset<S: AsRef<str>>(
        &self,
        engine: &Engine,
        universe: Universe<'_>,
        exprs: &[S],
        start: Option<Timestamp>,
        end: Option<Timestamp>,
        freq: Freq,
        mode: DiskCacheMode,
    ) -> Result<Frame> {
        if mode == DiskCacheMode::Skip {
            return engine.features(universe, exprs, start, end, freq);
        }
        if engine.compat() == Compat::Qlib {
            // A dataset holds start-independent values for every row; qlib's differ with the query's start.
            let mut differs = false;
            for e in exprs {
                differs |= expr::parse(e.as_ref())?.differs_in_qlib();
            }
            if differs {
                tracing::info!(
                    "the dataset cache is not used: in qlib's compatible mode some expressions depend on the \
                     query's start; computing them"
                );
                return engine.features(universe, exprs, start, end, freq);
            }
        }
        let cal = engine.store().calendar(freq)?;
        let range = cal.locate(start, end);
        let names: Vec<String> = exprs.iter().map(|e| e.as_ref().to_string()).collect();
        let uri: UriKey = (normalize(universe)?, names.clone(), freq);
        if mode == DiskCacheMode::Use
            && let Some(r) = self.uris.get(&uri)
        {
            if r.meta.calendar_len == cal.len()
                && let Ok(f) = self.read(&r, names.clone(), range.clone(), cal.clone())
            {
                return Ok(f);
            }
            self.uris.remove(&uri);
        }
        let req = Request::new(universe, exprs, freq)?;
        let mut broken = None;
        if mode == DiskCacheMode::Use {
            let now = State::of(engine.store(), &req)?;
            // A writer may publish (and delete the files this meta names) between reading the meta and
            // opening the files: then the meta is read again.
            for _ in 0..5 {
                let Some(m) = Self::read_meta(&self.meta_path(&req.key))
                    .filter(|m| is_current(m, &req, &now))
                else {
                    break;
                };
                let r = Resolved {
                    key: req.key.clone(),
                    columns: req.columns(&m.fields),
                    meta: Arc::new(m),
                };
                match self.read(&r, names.clone(), range.clone(), cal.clone()) {
                    Ok(f) => {
                        self.uris.insert(uri, Arc::new(r));
                        return Ok(f);
                    }
                    Err(_) if !self.files_exist(&r) => continue,
                    Err(_) => {
                        broken = Some(r.meta.generation);
                        break;
                    }
                }
            }
        }
        let (meta, _) = self.refresh_locked(
            engine,
            &req,
            match (mode, broken) {
                (DiskCacheMode::Rebuild, _) => Refresh::Rebuild,
                (_, Some(generation)) => Refresh::Repair(generation),
                _ => Refresh::Update,
            },
        )?;
        let r = Resolved {
            key: req.key.clone(),
            columns: req.columns(&meta.fields),
            meta: Arc::new(meta),
        };
        let frame = self.read(&r, names, range, cal)?;
        self.uris.insert(uri, Arc::new(r));
        Ok(frame)
    }

    fn files_exist(&self, r: &Resolved) -> bool {
        let (d, i) = self.files(&r.key, r.meta.generation);
        d.exists() && i.exists()
    }

    fn read(
        &self,
        r: &Resolved,
        names: Vec<String>,
        range: std::ops::Range<usize>,
        cal: Arc<crate::store::calendar::Calendar>,
    ) -> Result<Frame> {
        let (data, index) = self.files(&r.key, r.meta.generation);
        imp::read(&data, &index, &r.meta, &r.columns, names, range, cal)
    }

    /// Builds (or brings forward) the dataset of `exprs` for `universe` under its writer lock; `rebuild`
    /// computes it in full.
    pub fn warm<S: AsRef<str>>(
        &self,
        engine: &Engine,
        universe: Universe<'_>,
        exprs: &[S],
        freq: Freq,
        rebuild: bool,
    ) -> Result<Outcome> {
        fsio::create_dir_all_synced(&self.dir)?;
        fsio::remove_abandoned_temps(&self.dir)?;
        let req = Request::new(universe, exprs, freq)?;
        let how = if rebuild {
            Refresh::Rebuild
        } else {
            Refresh::Update
        };
        Ok(self.refresh_locked(engine, &req, how)?.1)
    }

    /// Brings every dataset forward to the store as it is now. Returns how many ended how; unreadable
    /// metas are counted under `None` (see [`verify`](Self::verify)).
    pub fn update_all(&self, engine: &Engine) -> Result<BTreeMap<Option<Outcome>, usize>> {
        fsio::remove_abandoned_temps(&self.dir)?;
        let mut out = BTreeMap::new();
        for (_, meta) in self.entries()? {
            let o = match meta {
                Some(m) => Some(
                    self.refresh_locked(engine, &Request::from_meta(&m)?, Refresh::Update)?
                        .1,
                ),
                None => None,
            };
            *out.entry(o).or_insert(0) += 1;
        }
        Ok(out)
    }

    /// How many datasets are behind the store (calendar grown or sources changed).
    pub fn behind(&self, store: &Store) -> Result<usize> {
        let mut n = 0;
        for (_, meta) in self.entries()? {
            let Some(m) = meta else { continue };
            let req = Request::from_meta(&m)?;
            if !is_current(&m, &req, &State::of(store, &req)?) {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Under the dataset's lock: nothing if another writer already brought it up to date, else an append of
    /// the new days when the published rows are still right, else a full build. Returns the published meta.
    fn refresh_locked(
        &self,
        engine: &Engine,
        req: &Request,
        how: Refresh,
    ) -> Result<(DatasetMeta, Outcome)> {
        if !Self::available() {
            return Err(unavailable());
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io("creating", &self.dir, e))?;
        let guard = self
            .lock
            .acquire(&format!("dataset-{}", req.key), self.wait)?;
        let token = guard.token();
        let meta_path = self.meta_path(&req.key);
        let now = State::of(engine.store(), req)?;
        let published = Self::read_meta(&meta_path);
        // Above every generation so far (published, or files left on disk) and at least the lock's fencing
        // token: never a name a reader may still hold.
        let generation = published
            .as_ref()
            .map_or(1, |m| m.generation + 1)
            .max(
                self.files_of(&req.key)
                    .into_iter()
                    .filter_map(|(_, g)| g)
                    .max()
                    .map_or(0, |g| g + 1),
            )
            .max(token);
        let old = published.filter(|m| {
            m.universe == req.universe
                && sorted(&m.fields) == req.fields
                && m.freq == req.freq.to_string()
        });
        // A generation a reader found damaged is neither current nor a base to append to; one published
        // since (by another writer) is.
        let old = old.filter(|m| how != Refresh::Repair(m.generation));
        if how != Refresh::Rebuild
            && let Some(m) = &old
            && is_current(m, req, &now)
        {
            let (d, i) = self.files(&req.key, m.generation);
            if i.exists() && imp::holds(&d, m) {
                return Ok((m.clone(), Outcome::DoneByOther));
            }
        }
        // A published generation whose file does not hold what its meta says is no base to append to.
        let old = old.filter(|m| imp::holds(&self.files(&req.key, m.generation).0, m));
        let right = req
            .parsed
            .iter()
            .map(|e| e.ext_window().right)
            .max()
            .unwrap_or(0);
        let base = old.as_ref().filter(|_| how != Refresh::Rebuild);
        // An append that fails (say, a damaged chunk in the rows it keeps) is done again as a full build.
        let written = match self.write_generation(engine, req, &now, base, right, generation) {
            Err(_) if base.is_some() => {
                self.write_generation(engine, req, &now, None, right, generation)?
            }
            r => r?,
        };
        let meta = DatasetMeta {
            format: META_FORMAT,
            universe: req.universe.clone(),
            fields: written.fields,
            freq: req.freq.to_string(),
            instruments: written.instruments,
            calendar_len: now.cal.len(),
            last_date: now
                .cal
                .last()
                .map(|d| crate::store::calendar::format_timestamp(d, req.freq.date_only())),
            rows: written.rows,
            right,
            spans: now.spans,
            fingerprint: now.fingerprint,
            token,
            generation,
        };
        crate::util::failpoint::hit("dataset:before-meta");
        // Fencing: a newer writer's generation stays.
        crate::cache::lock::may_publish(
            guard.as_ref(),
            Self::read_meta(&meta_path).map(|m| m.token),
            &format!("dataset {}", meta_path.display()),
        )?;
        let text = serde_json::to_vec_pretty(&meta).expect("meta serializes");
        fsio::replace_atomic(&meta_path, &text)?;
        self.remove_generations(&req.key, Some(generation));
        drop(guard);
        let outcome = if written.appended {
            Outcome::Appended
        } else {
            Outcome::Built
        };
        Ok((meta, outcome))
    }

    /// Writes the `.data` and `.index` of `generation`: from `base` (the published meta) when its rows are
    /// still right, computing only from the first row that changed, else everything.
    fn write_generation(
        &self,
        engine: &Engine,
        req: &Request,
        now: &State,
        base: Option<&DatasetMeta>,
        right: u32,
        generation: u64,
    ) -> Result<Written> {
        // Incremental when the published rows' sources are unchanged over the calendar they covered and the
        // files read back: only rows from the first one that changes are computed (the look-ahead tail, or
        // an instrument's rows that changed).
        let (cal, n_cal) = (&now.cal, now.cal.len());
        let base = base.filter(|m| {
            m.calendar_len <= n_cal
                && m.right == right
                && fingerprint(engine.store(), req, m.calendar_len)
                    .is_ok_and(|f| f == m.fingerprint)
        });
        let base = match base {
            Some(m) => {
                let (d, i) = self.files(&req.key, m.generation);
                let changed =
                    first_change(&m.spans, &rows_of(engine.store(), req, m.calendar_len)?);
                imp::read_index(&i)
                    .ok()
                    .filter(|(s, e)| s.len() == m.calendar_len && e.len() == m.calendar_len)
                    .filter(|_| d.exists())
                    .map(|ix| (m, d, ix, changed))
            }
            None => None,
        };
        let from = base.as_ref().map_or(0, |(m, _, _, changed)| {
            m.calendar_len
                .saturating_sub(m.right as usize)
                .min(changed.unwrap_or(usize::MAX))
        });
        // An append keeps the file's column order; a build takes the request's.
        let columns: &[String] = match &base {
            Some((m, ..)) => &m.fields,
            None => &req.order,
        };
        // Index: the kept rows' entries, then the new rows'.
        let (mut start, mut end) = (Vec::with_capacity(n_cal), Vec::with_capacity(n_cal));
        let mut instruments: Vec<String> = Vec::new();
        let keep = match &base {
            Some((m, _, (s, e), _)) => {
                start.extend_from_slice(&s[..from]);
                end.extend_from_slice(&e[..from]);
                instruments = m.instruments.clone();
                if from < m.calendar_len {
                    s[from] as usize
                } else {
                    m.rows
                }
            }
            None => 0,
        };
        let mut codes: HashMap<String, u32> = instruments
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();
        // The new rows, computed in blocks of days so that no more than about `build_bytes` of results are
        // held at once (a 5,000-instrument Alpha158 over ten years is 8 GB).
        let new_rows: usize = now
            .spans
            .values()
            .flatten()
            .map(|&(a, b)| b.min(n_cal).saturating_sub(a.max(from)))
            .sum();
        let per_day = (now.spans.len().max(1) * columns.len().max(1) * 4).max(1);
        let days = (self.build_bytes / per_day).max(1);
        let (data, index) = self.files(&req.key, generation);
        let mut writer = imp::DataWriter::open(
            &data,
            base.as_ref().map(|(_, d, _, _)| d.as_path()),
            keep,
            columns,
            keep + new_rows,
        )?;
        let mut t0 = from;
        while t0 < n_cal {
            let t1 = (t0 + days).min(n_cal);
            let frame = engine.features(
                universe_of(&req.universe),
                columns,
                cal.get(t0),
                cal.get(t1 - 1),
                req.freq,
            )?;
            let frame_codes: Vec<u32> = frame
                .instruments()
                .iter()
                .map(|s| {
                    *codes.entry(s.clone()).or_insert_with(|| {
                        instruments.push(s.clone());
                        (instruments.len() - 1) as u32
                    })
                })
                .collect();
            // New rows by calendar row, then instrument.
            let mut order: Vec<usize> = (0..frame.len()).collect();
            order.sort_by_key(|&r| (frame.calendar_row(r), r));
            let at = writer.rows();
            let mut i = 0;
            for c in t0..t1 {
                start.push((at + i) as u64);
                while i < order.len() && frame.calendar_row(order[i]) == c {
                    i += 1;
                }
                end.push((at + i) as u64);
            }
            writer.append(&frame, &order, &frame_codes)?;
            t0 = t1;
        }
        let rows = writer.rows();
        let dates: Vec<String> = cal.dates()[..n_cal]
            .iter()
            .map(|&d| crate::store::calendar::format_timestamp(d, req.freq.date_only()))
            .collect();
        writer.finish(&instruments, &dates, req.freq)?;
        crate::util::failpoint::hit("dataset:after-data");
        imp::write_index(&index, &start, &end)?;
        Ok(Written {
            fields: columns.to_vec(),
            instruments,
            rows,
            appended: base.is_some(),
        })
    }

    /// The files of `key` in the directory: each with its generation (`None`: a writer's temp file).
    fn files_of(&self, key: &str) -> Vec<(PathBuf, Option<u64>)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let prefix = format!("{key}.");
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                let generation = name
                    .strip_prefix(&prefix)
                    .and_then(|r| r.strip_suffix(".data").or_else(|| r.strip_suffix(".index")))
                    .and_then(|g| g.parse::<u64>().ok());
                let temp = name
                    .strip_prefix(fsio::TEMP_PREFIX)
                    .map(|r| r.rsplit_once('~').map_or(r, |(_, n)| n))
                    .is_some_and(|r| r.starts_with(&prefix));
                match (generation, temp) {
                    (Some(g), _) => Some((e.path(), Some(g))),
                    (None, true) => Some((e.path(), None)),
                    (None, false) => None,
                }
            })
            .collect()
    }

    /// Deletes the `.data`/`.index` files of `key` other than generation `keep`, and temp files an
    /// interrupted writer of `key` left (its lock is held by the caller).
    fn remove_generations(&self, key: &str, keep: Option<u64>) {
        for (path, generation) in self.files_of(key) {
            if generation.is_none() || (generation != keep) {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// Every dataset's meta path and meta (`None`: unreadable).
    pub fn entries(&self) -> Result<Vec<(PathBuf, Option<DatasetMeta>)>> {
        Ok(fsio::list_names(&self.dir, ".meta")?
            .into_iter()
            .filter(|n| crate::store::layout::is_cache_file(&format!("{n}.meta")))
            .map(|n| {
                let p = self.dir.join(format!("{n}.meta"));
                let m = Self::read_meta(&p);
                (p, m)
            })
            .collect())
    }

    /// Checks every dataset: meta, both files, shapes, every chunk's checksum, codes and calendar rows in
    /// range, rows sorted by date and matching the index; and finds orphaned files and temp files. One line
    /// per problem.
    pub fn verify(&self) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let mut named = std::collections::HashSet::new();
        for (path, meta) in self.entries()? {
            let Some(m) = meta else {
                problems.push(format!(
                    "{}: unreadable meta (not JSON of format {META_FORMAT}); `qcache clear --datasets` removes it",
                    path.display()
                ));
                continue;
            };
            let key = key_of(&path);
            let (data, index) = self.files(&key, m.generation);
            named.insert(data.clone());
            named.insert(index.clone());
            if let Err(e) = imp::check(&data, &index, &m) {
                problems.push(format!("{}: {e}", path.display()));
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let p = e.path();
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with(fsio::TEMP_PREFIX) {
                    if fsio::temp_is_abandoned(&p) {
                        problems.push(format!(
                            "{}: temp file of an interrupted writer (harmless; the next update or `qcache clear --datasets` removes it)",
                            p.display()
                        ));
                    }
                } else if (name.ends_with(".data") || name.ends_with(".index"))
                    && !named.contains(&p)
                {
                    problems.push(format!(
                        "{}: orphaned file that no meta names (a writer was interrupted, or a reader still needed it)",
                        p.display()
                    ));
                }
            }
        }
        Ok(problems)
    }

    /// Removes the datasets whose meta matches `pred` (unreadable ones too when `unreadable`), each under
    /// its lock, with their files; and temp files of interrupted writers. Returns how many datasets.
    pub fn clear(&self, pred: impl Fn(&DatasetMeta) -> bool, unreadable: bool) -> Result<usize> {
        let mut n = 0;
        for (path, meta) in self.entries()? {
            if !meta.as_ref().map_or(unreadable, &pred) {
                continue;
            }
            let key = key_of(&path);
            let _guard = self.lock.acquire(&format!("dataset-{key}"), self.wait)?;
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("removing", &path, e)),
            }
            fsio::fsync_dir(&self.dir)?;
            self.remove_generations(&key, None);
            n += 1;
        }
        fsio::remove_abandoned_temps(&self.dir)?;
        self.uris.clear();
        Ok(n)
    }
}

/// The error of every dataset operation in a build without HDF5.
fn unavailable() -> Error {
    Error::Config {
        source_name: "the dataset cache".into(),
        reason: "this build has no HDF5 support (built without the `hdf5` feature); install libhdf5-dev and build with default features".into(),
    }
}

/// What [`DiskDatasetCache::refresh_locked`] is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refresh {
    /// Nothing if current, else an append if possible, else a build.
    Update,
    /// A build, whatever is published.
    Rebuild,
    /// As `Update`, but this generation (which a reader could not read) does not count.
    Repair(u64),
}

/// What [`DiskDatasetCache::write_generation`] wrote.
struct Written {
    /// The column order of `values`.
    fields: Vec<String>,
    instruments: Vec<String>,
    rows: usize,
    appended: bool,
}

/// What a dataset must match to be current: the calendar's length, the sources' fingerprint and each
/// instrument's rows (an instruments file can change without a new day or a changed value).
struct State {
    cal: Arc<crate::store::calendar::Calendar>,
    fingerprint: String,
    spans: BTreeMap<String, Vec<(usize, usize)>>,
}

impl State {
    fn of(store: &Store, req: &Request) -> Result<State> {
        let cal = store.calendar(req.freq)?;
        Ok(State {
            fingerprint: fingerprint(store, req, cal.len())?,
            spans: rows_of(store, req, cal.len())?,
            cal,
        })
    }
}

/// The key of a `.meta` path.
fn key_of(meta_path: &Path) -> String {
    meta_path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string()
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

fn is_current(m: &DatasetMeta, req: &Request, now: &State) -> bool {
    m.format == META_FORMAT
        && m.calendar_len == now.cal.len()
        && m.fingerprint == now.fingerprint
        && m.spans == now.spans
        && sorted(&m.fields) == req.fields
        && m.universe == req.universe
        && m.freq == req.freq.to_string()
}

/// The normalised universe: `market:<name>`, or the sorted, de-duplicated, upper-case instrument list. A
/// dataset covers a whole universe: a part of one is refused.
fn normalize(universe: Universe<'_>) -> Result<Vec<String>> {
    Ok(match universe {
        Universe::Market(m) => vec![format!("market:{m}")],
        Universe::List(l) => {
            let mut v: Vec<String> = l.iter().map(|s| s.to_uppercase()).collect();
            v.sort();
            v.dedup();
            v
        }
        Universe::Part(..) => return Err(part_refused()),
    })
}

fn part_refused() -> Error {
    Error::Config {
        source_name: "the dataset cache".into(),
        reason:
            "a dataset covers a market or a list, not a part of a query; ask for the whole universe"
                .into(),
    }
}

/// The universe a normalised one names.
fn universe_of(norm: &[String]) -> Universe<'_> {
    match norm {
        [one] if one.starts_with("market:") => Universe::Market(&one["market:".len()..]),
        list => Universe::List(list),
    }
}

/// 32 hex digits of xxh3-128 over the universe, the sorted canonical expressions and the frequency, each
/// item followed by a zero byte and each list by a 0x01 byte.
pub fn key(universe: &[String], fields: &[String], freq: Freq) -> String {
    let mut text = Vec::new();
    for list in [universe, fields] {
        for item in list {
            text.extend_from_slice(item.as_bytes());
            text.push(0);
        }
        text.push(1);
    }
    text.extend_from_slice(freq.to_string().as_bytes());
    format!("{:032x}", xxh3_128(&text))
}

/// A hash of the values the dataset's first `len` calendar rows are computed from: those dates and the
/// stored values of every source the expressions read, up to `len` and without trailing NaN (an update
/// that fills a suspension with NaN and appends after it leaves it unchanged). Sources with nothing before
/// `len` contribute nothing, so a listing after `len` does not change it.
fn fingerprint(store: &Store, req: &Request, len: usize) -> Result<String> {
    let cal = store.calendar(req.freq)?;
    let len = len.min(cal.len());
    let mut h = Xxh3::new();
    for d in &cal.dates()[..len] {
        h.update(&d.and_utc().timestamp().to_le_bytes());
    }
    let symbols = universe_of(&req.universe).symbols(store)?;
    let mut sources = Vec::new();
    for sym in &symbols {
        for e in &req.parsed {
            crate::cache::expr::collect_sources(e, sym, &mut sources);
        }
    }
    sources.sort();
    sources.dedup();
    let fields = StoreFields {
        store,
        freq: req.freq,
    };
    for (inst, field) in &sources {
        let Some(c) = fields.column(inst, field)? else {
            continue;
        };
        let v = c.values();
        let mut n = v.len().min(len.saturating_sub(c.start()));
        while n > 0 && v[n - 1].is_nan() {
            n -= 1;
        }
        if n > 0 {
            h.update(inst.as_bytes());
            h.update(&[0]);
            h.update(field.as_bytes());
            h.update(&[0]);
            h.update(&(c.start() as u64).to_le_bytes());
            h.update(bytemuck::cast_slice(&v[..n]));
        }
    }
    Ok(format!("{:032x}", h.digest128()))
}

/// Each instrument's rows in the dataset over the first `len` calendar rows, as `Store::features` chooses
/// them: a market's spans, or a listed instrument's data domain. Instruments without rows are left out.
fn rows_of(
    store: &Store,
    req: &Request,
    len: usize,
) -> Result<BTreeMap<String, Vec<(usize, usize)>>> {
    let cal = store.calendar(req.freq)?;
    let fields = StoreFields {
        store,
        freq: req.freq,
    };
    let mut out = BTreeMap::new();
    let mut put = |sym: &str, rows: Vec<(usize, usize)>| {
        let rows: Vec<_> = rows
            .into_iter()
            .map(|(a, b)| (a, b.min(len)))
            .filter(|(a, b)| a < b)
            .collect();
        if !rows.is_empty() {
            out.insert(sym.to_string(), rows);
        }
    };
    match universe_of(&req.universe) {
        Universe::Market(m) => {
            for (sym, spans) in store.instruments(m)?.iter() {
                let rows = spans
                    .iter()
                    .map(|sp| {
                        let r = cal.locate(Some(sp.start), Some(sp.end));
                        (r.start, r.end)
                    })
                    .collect();
                put(sym, rows);
            }
        }
        Universe::List(list) => {
            for sym in list {
                if let Some(d) = expr::domain(&fields, sym, &req.parsed)? {
                    put(sym, vec![(d.start, d.end)]);
                }
            }
        }
        Universe::Part(..) => return Err(part_refused()),
    }
    Ok(out)
}

/// The first row at which two instruments -> row ranges maps differ (`None`: equal). Membership changes only
/// at range boundaries, so the first difference is a boundary.
fn first_change(
    a: &BTreeMap<String, Vec<(usize, usize)>>,
    b: &BTreeMap<String, Vec<(usize, usize)>>,
) -> Option<usize> {
    let within = |v: &[(usize, usize)], r: usize| v.iter().any(|&(s, e)| s <= r && r < e);
    let empty = Vec::new();
    a.keys()
        .chain(b.keys())
        .filter_map(|k| {
            let (x, y) = (a.get(k).unwrap_or(&empty), b.get(k).unwrap_or(&empty));
            let mut points: Vec<usize> = x.iter().chain(y).flat_map(|&(s, e)| [s, e]).collect();
            points.sort_unstable();
            points.into_iter().find(|&p| within(x, p) != within(y, p))
        })
        .min()
}

#[cfg(feature = "hdf5")]
mod imp {
    use std::ops::Range;
    use std::path::Path;
    use std::sync::Arc;

    use hdf5::types::VarLenUnicode;
    use ndarray::ArrayView2;
    use xxhash_rust::xxh3::xxh3_64;

    use super::DatasetMeta;
    use crate::error::{Error, Result};
    use crate::store::freq::Freq;

    /// The `description` attribute: how to read a file without its meta (h5py, HDF5 tools).
    const DESCRIPTION: &str = "qstore dataset cache. values[i, j]: row i, column j (attribute `fields`: \
        the expressions, one per line). instrument[i]: index into `instruments`; row[i]: index into \
        `calendar` (the row's date). checksum[k]: xxh3-64 of chunk k of values. Rows are sorted by date; \
        the meta (<key>.meta, JSON) says how many rows are published (`rows`): read no further.";
    use crate::query::frame::Frame;
    use crate::store::calendar::Calendar;
    use crate::store::fsio;

    /// Every open: no HDF5 file locks (our files are immutable once published and writers hold the
    /// dataset's lock; HDF5's flock would also fail on NFS), and a strong close, so dropping the file
    /// closes every object and the descriptor at once.
    fn options() -> hdf5::FileBuilder {
        let mut b = hdf5::File::with_options();
        b.with_fapl(|p| {
            p.file_locking(false)
                .fclose_degree(hdf5::file::FileCloseDegree::Strong)
        });
        b
    }

    fn h5(what: &'static str, path: &Path, e: hdf5::Error) -> Error {
        Error::Hdf5 {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    }

    /// Rows per chunk of `values` (the unit of its checksums).
    fn chunk_step(values: &hdf5::Dataset) -> usize {
        values.chunk().map_or(1, |c| c[0].max(1))
    }

    /// Rows per chunk of `values`: about 1 MiB, or the rows of the first build when it has fewer (a chunk
    /// without a filter takes its full size on disk), but at least 64.
    fn chunk_rows(ncol: usize, rows: usize) -> usize {
        ((1 << 20) / (4 * ncol.max(1))).min(rows.max(64)).max(1)
    }

    /// The `.data` of a new generation being written in its temp file: opened on a copy of the published
    /// file cut to its first `keep` rows (or a new file), appended to block by block, then checksummed and
    /// published by fsync + rename.
    pub struct DataWriter {
        file: hdf5::File,
        tmp: std::path::PathBuf,
        path: std::path::PathBuf,
        ncol: usize,
        /// Rows written so far.
        rows: usize,
        /// The first row whose chunk's checksum must be (re)computed.
        first_new: usize,
    }

    impl DataWriter {
        /// `rows_hint`: about how many rows a new file will get (sizes its chunks).
        pub fn open(
            path: &Path,
            base: Option<&Path>,
            keep: usize,
            fields: &[String],
            rows_hint: usize,
        ) -> Result<DataWriter> {
            let ncol = fields.len();
            let tmp = fsio::temp_path(path);
            let w = |e| h5("writing HDF5", &tmp, e);
            let file = match base {
                Some(b) => {
                    std::fs::copy(b, &tmp).map_err(|e| Error::io("copying", b, e))?;
                    options().open_rw(&tmp).map_err(w)?
                }
                None => {
                    let f = options().create(&tmp).map_err(w)?;
                    let rows = chunk_rows(ncol, rows_hint);
                    f.new_dataset::<f32>()
                        .chunk((rows, ncol.max(1)))
                        .shape((0.., ncol))
                        .create("values")
                        .map_err(w)?;
                    f.new_dataset::<u64>()
                        .chunk((1024,))
                        .fletcher32()
                        .shape((0..,))
                        .create("checksum")
                        .map_err(w)?;
                    for name in ["instrument", "row"] {
                        f.new_dataset::<u32>()
                            .chunk((rows.max(4096),))
                            .fletcher32()
                            .shape((0..,))
                            .create(name)
                            .map_err(w)?;
                    }
                    let names: VarLenUnicode = fields.join("\n").parse().expect("no NUL");
                    f.new_attr::<VarLenUnicode>()
                        .shape(())
                        .create("fields")
                        .and_then(|a| a.write_scalar(&names))
                        .map_err(w)?;
                    f
                }
            };
            if base.is_some() {
                // The chunk holding row `keep` gets a new checksum at the end: its kept rows must be sound
                // first, or damage there would be laundered into a valid-looking file.
                let values = file.dataset("values").map_err(w)?;
                let step = chunk_step(&values);
                let old_total = values.shape().first().copied().unwrap_or(0);
                let c = keep / step;
                if c * step < old_total {
                    let block = values
                        .read_slice_2d::<f32, _>((c * step..((c + 1) * step).min(old_total), ..))
                        .map_err(w)?;
                    let sum = file
                        .dataset("checksum")
                        .and_then(|d| d.read_slice_1d::<u64, _>(c..c + 1))
                        .map_err(w)?[0];
                    if xxh3_64(bytemuck::cast_slice(
                        block.as_slice().expect("standard layout"),
                    )) != sum
                    {
                        return Err(Error::CorruptCache {
                            path: tmp.to_path_buf(),
                            reason: "the rows an append keeps do not match their checksum".into(),
                        });
                    }
                }
                values.resize((keep, ncol)).map_err(w)?;
                for name in ["instrument", "row"] {
                    file.dataset(name).and_then(|d| d.resize(keep)).map_err(w)?;
                }
            }
            Ok(DataWriter {
                file,
                tmp,
                path: path.to_path_buf(),
                ncol,
                rows: keep,
                first_new: keep,
            })
        }

        /// Appends `frame`'s rows in `order`; `codes` maps the frame's instruments to the file's codes.
        pub fn append(&mut self, frame: &Frame, order: &[usize], codes: &[u32]) -> Result<()> {
            let w = |e| h5("writing HDF5", &self.tmp, e);
            let ncol = self.ncol;
            let total = self.rows + order.len();
            let values = self.file.dataset("values").map_err(w)?;
            let inst = self.file.dataset("instrument").map_err(w)?;
            let rows = self.file.dataset("row").map_err(w)?;
            values.resize((total, ncol)).map_err(w)?;
            inst.resize(total).map_err(w)?;
            rows.resize(total).map_err(w)?;
            // In blocks, so the reordered copy never holds more than one block.
            let block = chunk_step(&values) * 4;
            let mut buf = Vec::with_capacity(block * ncol);
            for (b, part) in order.chunks(block).enumerate() {
                let at = self.rows + b * block;
                buf.clear();
                for &r in part {
                    buf.extend_from_slice(frame.row(r));
                }
                let view = ArrayView2::from_shape((part.len(), ncol), &buf).expect("shape");
                values
                    .write_slice(view, (at..at + part.len(), ..))
                    .map_err(w)?;
                let c: Vec<u32> = part
                    .iter()
                    .map(|&r| codes[frame.instrument_code(r)])
                    .collect();
                inst.write_slice(&c, at..at + part.len()).map_err(w)?;
                let c: Vec<u32> = part.iter().map(|&r| frame.calendar_row(r) as u32).collect();
                rows.write_slice(&c, at..at + part.len()).map_err(w)?;
            }
            self.rows = total;
            Ok(())
        }

        /// Rows written so far (kept and appended).
        pub fn rows(&self) -> usize {
            self.rows
        }

        /// The checksums of the chunks that changed and what makes the file describe itself (the names
        /// `instrument` and `row` index: `instruments`, `calendar`; the `freq` attribute), then fsync +
        /// rename to the generation's name.
        pub fn finish(self, instruments: &[String], calendar: &[String], freq: Freq) -> Result<()> {
            let w = |e| h5("writing HDF5", &self.tmp, e);
            for (name, texts) in [("instruments", instruments), ("calendar", calendar)] {
                // Small and rewritten whole: a copied file's old list is replaced, not resized.
                if self.file.link_exists(name) {
                    self.file.unlink(name).map_err(w)?;
                }
                let texts: Vec<VarLenUnicode> = texts
                    .iter()
                    .map(|t| t.parse().expect("names and dates hold no NUL"))
                    .collect();
                self.file
                    .new_dataset_builder()
                    .with_data(&texts)
                    .create(name)
                    .map_err(w)?;
            }
            for (name, text) in [
                ("freq", freq.to_string()),
                ("description", DESCRIPTION.into()),
            ] {
                let text: VarLenUnicode = text.parse().expect("no NUL");
                let attr = match self.file.attr(name) {
                    Ok(a) => a,
                    Err(_) => self
                        .file
                        .new_attr::<VarLenUnicode>()
                        .shape(())
                        .create(name)
                        .map_err(w)?,
                };
                attr.write_scalar(&text).map_err(w)?;
            }
            {
                let values = self.file.dataset("values").map_err(w)?;
                let step = chunk_step(&values);
                let sums = self.file.dataset("checksum").map_err(w)?;
                let (first, n) = (self.first_new / step, self.rows.div_ceil(step));
                let mut new = Vec::with_capacity(n.saturating_sub(first));
                for c in first..n {
                    let block = values
                        .read_slice_2d::<f32, _>((c * step..((c + 1) * step).min(self.rows), ..))
                        .map_err(w)?;
                    new.push(xxh3_64(bytemuck::cast_slice(
                        block.as_slice().expect("a standard-layout array"),
                    )));
                }
                sums.resize(n).map_err(w)?;
                sums.write_slice(&new, first..n).map_err(w)?;
            }
            let DataWriter {
                file, tmp, path, ..
            } = self;
            drop(file);
            fsio::publish_file(&tmp, &path)
        }
    }

    /// Writes a `.index` (`start`, `end` per calendar row) by temp + fsync + rename.
    pub fn write_index(path: &Path, start: &[u64], end: &[u64]) -> Result<()> {
        let tmp = fsio::temp_path(path);
        {
            let f = options()
                .create(&tmp)
                .map_err(|e| h5("writing HDF5", &tmp, e))?;
            for (name, v) in [("start", start), ("end", end)] {
                f.new_dataset::<u64>()
                    .chunk((v.len().clamp(1, 8192),))
                    .fletcher32()
                    .shape((v.len()..,))
                    .create(name)
                    .and_then(|d| d.write_raw(v))
                    .map_err(|e| h5("writing HDF5", &tmp, e))?;
            }
        }
        fsio::publish_file(&tmp, path)
    }

    /// Whether the data file holds the rows and fields its meta publishes (a look at the shape only): a meta
    /// that claims more is damaged, so the dataset is rebuilt rather than served or called current.
    pub fn holds(data: &Path, m: &DatasetMeta) -> bool {
        // The file stays open while its dataset is used: closing it (degree Strong) closes the dataset too.
        let Ok(f) = options().open(data) else {
            return false;
        };
        f.dataset("values").is_ok_and(|v| {
            let shape = v.shape();
            shape.len() == 2 && shape[0] >= m.rows && shape[1] == m.fields.len()
        })
    }

    pub fn read_index(path: &Path) -> Result<(Vec<u64>, Vec<u64>)> {
        let r = |e| h5("reading HDF5", path, e);
        let f = options().open(path).map_err(r)?;
        let s = f.dataset("start").and_then(|d| d.read_raw()).map_err(r)?;
        let e = f.dataset("end").and_then(|d| d.read_raw()).map_err(r)?;
        Ok((s, e))
    }

    /// One hyperslab of the rows of calendar `range`, as a frame ordered like `Store::features`.
    pub fn read(
        data: &Path,
        index: &Path,
        meta: &DatasetMeta,
        columns: &[usize],
        names: Vec<String>,
        range: Range<usize>,
        cal: Arc<Calendar>,
    ) -> Result<Frame> {
        let r = |p: &Path, e| h5("reading HDF5", p, e);
        let range = range.start..range.end.min(meta.calendar_len);
        let (a, b) = if range.is_empty() {
            (0, 0)
        } else {
            let f = options().open(index).map_err(|e| r(index, e))?;
            let s = f
                .dataset("start")
                .and_then(|d| d.read_slice_1d::<u64, _>(range.start..range.start + 1))
                .map_err(|e| r(index, e))?[0];
            let e = f
                .dataset("end")
                .and_then(|d| d.read_slice_1d::<u64, _>(range.end - 1..range.end))
                .map_err(|e| r(index, e))?[0];
            (s as usize, (e as usize).min(meta.rows))
        };
        if !holds(data, meta) {
            return Err(Error::CorruptCache {
                path: data.to_path_buf(),
                reason: format!(
                    "the meta publishes {} rows x {} fields, more than the file holds; the dataset is rebuilt",
                    meta.rows,
                    meta.fields.len()
                ),
            });
        }
        let f = options().open(data).map_err(|e| r(data, e))?;
        let ncol = meta.fields.len();
        let (inst, rows): (Vec<u32>, Vec<u32>) = if a < b {
            let i = f
                .dataset("instrument")
                .and_then(|d| d.read_slice_1d::<u32, _>(a..b))
                .map_err(|e| r(data, e))?;
            let rw = f
                .dataset("row")
                .and_then(|d| d.read_slice_1d::<u32, _>(a..b))
                .map_err(|e| r(data, e))?;
            (i.to_vec(), rw.to_vec())
        } else {
            (Vec::new(), Vec::new())
        };
        if inst.len() != b - a
            || rows.len() != b - a
            || inst.iter().any(|&c| c as usize >= meta.instruments.len())
        {
            return Err(Error::CorruptCache {
                path: data.to_path_buf(),
                reason: "instrument codes and the meta disagree".into(),
            });
        }
        // The frame's order is by instrument name, then date. One instrument's rows are already by date (the
        // file is sorted by calendar row), so a counting sort by instrument gives each file row its place.
        let n_inst = meta.instruments.len();
        let mut by_name: Vec<usize> = (0..n_inst).collect();
        by_name.sort_unstable_by(|&x, &y| meta.instruments[x].cmp(&meta.instruments[y]));
        let mut rank = vec![0usize; n_inst];
        for (k, &c) in by_name.iter().enumerate() {
            rank[c] = k;
        }
        let mut offsets = vec![0usize; n_inst + 1];
        for &c in &inst {
            offsets[rank[c as usize] + 1] += 1;
        }
        for k in 0..n_inst {
            offsets[k + 1] += offsets[k];
        }
        let mut next = offsets.clone();
        let mut place = vec![0usize; inst.len()];
        let mut groups: Vec<(String, Vec<usize>)> = by_name
            .iter()
            .enumerate()
            .map(|(k, &c)| {
                (
                    meta.instruments[c].clone(),
                    Vec::with_capacity(offsets[k + 1] - offsets[k]),
                )
            })
            .collect();
        for (k, &c) in inst.iter().enumerate() {
            let g = rank[c as usize];
            place[k] = next[g];
            next[g] += 1;
            groups[g].1.push(rows[k] as usize);
        }
        // Values chunk by chunk (each is read, checked and copied once, while in cache), each row straight to
        // its place in the frame, in the caller's column order.
        let width = columns.len();
        let identity = width == ncol && columns.iter().enumerate().all(|(k, &c)| k == c);
        let mut out = vec![0f32; inst.len() * width];
        if a < b && width > 0 {
            let ds = f.dataset("values").map_err(|e| r(data, e))?;
            let step = chunk_step(&ds);
            let total = ds.shape().first().copied().unwrap_or(0);
            if ds.shape() != [total, ncol] || total < b {
                return Err(Error::CorruptCache {
                    path: data.to_path_buf(),
                    reason: format!(
                        "values has shape {:?}; the meta publishes {} rows x {ncol} fields",
                        ds.shape(),
                        meta.rows
                    ),
                });
            }
            let sums: Vec<u64> = f
                .dataset("checksum")
                .and_then(|d| d.read_slice_1d::<u64, _>(a / step..(b - 1) / step + 1))
                .map_err(|e| r(data, e))?
                .to_vec();
            let mut s0 = a;
            while s0 < b {
                // Whole chunks, so that each one's checksum can be checked.
                let c = s0 / step;
                let (c0, c1) = (c * step, ((c + 1) * step).min(total));
                let e0 = c1.min(b);
                let block = ds
                    .read_slice_2d::<f32, _>((c0..c1, ..))
                    .map_err(|e| r(data, e))?;
                let block = block.as_slice().expect("a standard-layout array");
                if block.len() != (c1 - c0) * ncol
                    || xxh3_64(bytemuck::cast_slice(block)) != sums[c - a / step]
                {
                    return Err(Error::CorruptCache {
                        path: data.to_path_buf(),
                        reason: format!(
                            "rows {c0}..{c1} of values do not match their checksum: the file is damaged"
                        ),
                    });
                }
                let block = &block[(s0 - c0) * ncol..(e0 - c0) * ncol];
                for (k, src) in (s0 - a..e0 - a).zip(block.chunks_exact(ncol)) {
                    let dst = &mut out[place[k] * width..(place[k] + 1) * width];
                    if identity {
                        dst.copy_from_slice(src);
                    } else {
                        for (d, &c) in dst.iter_mut().zip(columns) {
                            *d = src[c];
                        }
                    }
                }
                s0 = e0;
            }
        }
        Ok(Frame::from_parts(names, groups, cal, out))
    }

    /// Reads everything (every chunk's checksum is checked) and cross-checks files and meta.
    pub fn check(data: &Path, index: &Path, m: &DatasetMeta) -> std::result::Result<(), String> {
        let (start, end) = read_index(index).map_err(|e| e.detail())?;
        if start.len() != m.calendar_len || end.len() != m.calendar_len {
            return Err(format!(
                "index has {} entries for a calendar of {}",
                start.len(),
                m.calendar_len
            ));
        }
        let f = options()
            .open(data)
            .map_err(|e| format!("{}: {e}", data.display()))?;
        let e = |e: hdf5::Error| format!("{}: {e}", data.display());
        let fields: VarLenUnicode = f.attr("fields").and_then(|a| a.read_scalar()).map_err(e)?;
        if fields.as_str() != m.fields.join("\n") {
            return Err("the data's fields differ from the meta's".into());
        }
        let names: Vec<VarLenUnicode> = f
            .dataset("instruments")
            .and_then(|d| d.read_raw())
            .map_err(e)?;
        if !names
            .iter()
            .map(VarLenUnicode::as_str)
            .eq(m.instruments.iter().map(String::as_str))
        {
            return Err("the data's instruments differ from the meta's".into());
        }
        let calendar = f.dataset("calendar").map_err(e)?;
        if calendar.size() != m.calendar_len {
            return Err(format!(
                "the data's calendar has {} dates, the meta's {}",
                calendar.size(),
                m.calendar_len
            ));
        }
        let values = f.dataset("values").map_err(e)?;
        let total = values.shape().first().copied().unwrap_or(0);
        if values.shape() != [total, m.fields.len()] || total < m.rows {
            return Err(format!(
                "values has shape {:?}; the meta publishes {} rows x {} fields",
                values.shape(),
                m.rows,
                m.fields.len()
            ));
        }
        let inst: Vec<u32> = f
            .dataset("instrument")
            .and_then(|d| d.read_raw())
            .map_err(e)?;
        let rows: Vec<u32> = f.dataset("row").and_then(|d| d.read_raw()).map_err(e)?;
        if inst.len() < m.rows || rows.len() < m.rows {
            return Err("instrument or row is shorter than the published rows".into());
        }
        let step = chunk_step(&values);
        let sums: Vec<u64> = f
            .dataset("checksum")
            .and_then(|d| d.read_raw())
            .map_err(e)?;
        if sums.len() != total.div_ceil(step) {
            return Err(format!(
                "{} checksums for {} chunks of values",
                sums.len(),
                total.div_ceil(step)
            ));
        }
        for (c, &sum) in sums.iter().enumerate() {
            let (at, to) = (c * step, ((c + 1) * step).min(total));
            let block = values
                .read_slice_2d::<f32, _>((at..to, ..))
                .map_err(|err| format!("{}: rows {at}..{to}: {err}", data.display()))?;
            if xxh3_64(bytemuck::cast_slice(
                block.as_slice().expect("standard layout"),
            )) != sum
            {
                return Err(format!(
                    "{}: rows {at}..{to} of values do not match their checksum (damaged)",
                    data.display()
                ));
            }
        }
        if let Some(k) = inst[..m.rows]
            .iter()
            .position(|&c| c as usize >= m.instruments.len())
        {
            return Err(format!("row {k}: instrument code out of range"));
        }
        for c in 0..m.calendar_len {
            let (s, t) = (start[c] as usize, end[c] as usize);
            if s > t || t > m.rows || (c > 0 && s != end[c - 1] as usize) {
                return Err(format!("index entry {c} ({s}..{t}) is inconsistent"));
            }
            if let Some(k) = (s..t).find(|&k| rows[k] as usize != c) {
                return Err(format!(
                    "row {k} is for calendar row {} but the index puts it at {c}",
                    rows[k]
                ));
            }
        }
        if end.last().map_or(0, |&e| e as usize) != m.rows {
            return Err("the index does not cover the published rows".into());
        }
        Ok(())
    }
}

#[cfg(not(feature = "hdf5"))]
mod imp {
    use std::ops::Range;
    use std::path::Path;
    use std::sync::Arc;

    use super::DatasetMeta;
    use crate::error::Result;
    use crate::query::frame::Frame;
    use crate::store::calendar::Calendar;

    use super::unavailable;

    pub struct DataWriter;

    impl DataWriter {
        pub fn open(
            _: &Path,
            _: Option<&Path>,
            _: usize,
            _: &[String],
            _: usize,
        ) -> Result<DataWriter> {
            Err(unavailable())
        }

        pub fn append(&mut self, _: &Frame, _: &[usize], _: &[u32]) -> Result<()> {
            Err(unavailable())
        }

        pub fn rows(&self) -> usize {
            0
        }

        pub fn finish(self, _: &[String], _: &[String], _: crate::store::freq::Freq) -> Result<()> {
            Err(unavailable())
        }
    }

    pub fn write_index(_: &Path, _: &[u64], _: &[u64]) -> Result<()> {
        Err(unavailable())
    }

    pub fn holds(_: &Path, _: &DatasetMeta) -> bool {
        false
    }

    pub fn read_index(_: &Path) -> Result<(Vec<u64>, Vec<u64>)> {
        Err(unavailable())
    }

    pub fn read(
        _: &Path,
        _: &Path,
        _: &DatasetMeta,
        _: &[usize],
        _: Vec<String>,
        _: Range<usize>,
        _: Arc<Calendar>,
    ) -> Result<Frame> {
        Err(unavailable())
    }

    pub fn check(_: &Path, _: &Path, _: &DatasetMeta) -> std::result::Result<(), String> {
        Err(unavailable().to_string())
    }
}
