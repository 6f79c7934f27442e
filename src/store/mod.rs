//! `Store`: the one API the rest of qstore (import, update, expressions, caches) uses to read and write a store.
//!
//! A `Store` reads through a snapshot: the calendar of each frequency is loaded once (kept in an in-memory
//! [`MemCache`], by default for an hour, as qlib does) and every read is clipped to it, so values appended past
//! the published calendar (an update in progress) stay invisible until [`Store::refresh`] or the expiry.
//! Instrument lists are cached the same way. Open feature files stay mapped in a bounded LRU of handles; writes made through this
//! `Store` drop the affected handles, writes by other processes are seen after `refresh` (or once a handle is
//! evicted and reopened).

pub mod bin;
pub mod calendar;
pub mod check;
pub mod freq;
pub mod fsio;
pub mod instruments;
pub mod layout;
pub mod panel;
pub mod settings;
pub mod writer;

use crate::cache::expr::Mode as ExprCacheMode;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::Duration;

use lru::LruCache;
use parking_lot::Mutex;
use rayon::prelude::*;

use self::bin::{FeatureFile, FeatureSlice};
use self::calendar::{Calendar, Timestamp};
use self::freq::Freq;
use self::instruments::Instruments;
use self::layout::{CALENDARS_DIR, FEATURES_DIR, INSTRUMENTS_DIR};
use crate::error::{CorruptReason, Error, Result};
use crate::util::memcache::{Limit, MemCache};
use panel::Panel;
use writer::WriteKind;

/// Key of the feature cache space: an expression's canonical text, for one instrument, over calendar rows
/// `rows` of `freq`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct FeatureKey {
    pub expr: String,
    /// Upper case, as instruments files write symbols.
    pub instrument: String,
    pub rows: (usize, usize),
    pub freq: Freq,
}

/// Counters of the store's in-memory caches.
#[derive(Debug, Clone, Copy)]
pub struct CacheStats {
    pub calendar: crate::util::memcache::Stats,
    pub instruments: crate::util::memcache::Stats,
    pub features: crate::util::memcache::Stats,
    /// The disk expression cache's reads, when `features()` uses one.
    pub disk: Option<crate::cache::expr::DiskStats>,
}

/// Bounds of one in-memory cache space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    pub limit: Limit,
    /// Entries older than this are reloaded; `None`: never.
    pub expiry: Option<Duration>,
}

impl Default for CacheConfig {
    /// qlib's defaults: 500 entries, expiring after an hour.
    fn default() -> Self {
        CacheConfig {
            limit: Limit::Entries(500),
            expiry: Some(Duration::from_secs(3600)),
        }
    }
}

/// Tuning of an open store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The in-memory cache of calendars (qlib's `H["c"]`).
    pub calendar_cache: CacheConfig,
    /// The in-memory cache of instrument lists (qlib's `H["i"]`).
    pub instrument_cache: CacheConfig,
    /// The in-memory cache of evaluated expressions per instrument and row range (qlib's `H["f"]`).
    pub feature_cache: CacheConfig,
    /// How many feature files stay mapped. Each costs one memory mapping (the kernel allows about 65,000 per
    /// process by default) and no file descriptor.
    pub handle_cache: NonZeroUsize,
    /// Files of at least this many bytes are memory-mapped; smaller ones are read into memory when opened
    /// (cheaper for daily-sized files). 0 maps every file.
    pub map_threshold: u64,
    /// Settings of the expression cache's directory and writer locks (read by the binaries).
    pub expression_cache: crate::store::settings::ExpressionCache,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            calendar_cache: CacheConfig::default(),
            instrument_cache: CacheConfig::default(),
            feature_cache: CacheConfig::default(),
            expression_cache: Default::default(),
            handle_cache: NonZeroUsize::new(16_384).expect("non-zero"),
            map_threshold: crate::store::bin::DEFAULT_MAP_THRESHOLD,
        }
    }
}

type Handle = Option<Arc<FeatureFile>>;

/// A qlib-layout store on disk.
pub struct Store {
    root: PathBuf,
    calendars: MemCache<Freq, Arc<Calendar>>,
    instruments: MemCache<String, Arc<Instruments>>,
    pub(crate) features: MemCache<FeatureKey, Arc<Vec<f32>>>,
    handles: Mutex<LruCache<String, Handle>>,
    map_threshold: u64,
    /// Read by `features()` when set: computed expressions on disk, and how to use them.
    pub(crate) expr_cache: Option<(Arc<crate::cache::expr::DiskExpressionCache>, ExprCacheMode)>,
    /// The expression cache's settings as the store was opened with them.
    expr_settings: crate::store::settings::ExpressionCache,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

/// Key of the handle cache: the file's path below `features/`, which already folds case and reserved names.
fn handle_key(instrument: &str, field: &str, freq: Freq) -> String {
    format!(
        "{}/{}.{freq}",
        layout::code_to_fname(instrument).to_lowercase(),
        field.to_lowercase()
    )
}

impl Store {
    /// Opens an existing store (a directory with `calendars/`), configured by its `qstore.json` and the
    /// `QSTORE_*` environment variables (see [`crate::store::settings`]).
    ///
    /// The store's expression cache is on its read path: `features()` reads its current entries (mode `read`,
    /// the default when the cache directory exists), or also fills it (`expression_cache.mode = "write"`).
    pub fn open(root: impl AsRef<Path>) -> Result<Store> {
        let root = root.as_ref();
        let options = if root.is_dir() {
            crate::store::settings::load(root)?
        } else {
            StoreOptions::default()
        };
        let mode = match options.expression_cache.mode.as_deref() {
            Some(m) => m.parse()?,
            None => ExprCacheMode::Read,
        };
        let mut store = Store::open_with(root, options)?;
        store.use_expression_cache(mode)?;
        Ok(store)
    }

    /// Sets how `features()` uses the store's own expression cache (as configured: qstore.json, then
    /// `QSTORE_CACHE_DIR`, `QSTORE_REDIS_URL`): `Off` never, `Read` when its directory exists, `Write` always
    /// (taking writer locks, Redis when configured). Reading needs no lock and no more configuration: the
    /// settings the store was opened with name the directory.
    pub fn use_expression_cache(&mut self, mode: ExprCacheMode) -> Result<()> {
        use crate::cache::expr::DiskExpressionCache;
        self.expr_cache = match mode {
            ExprCacheMode::Off => None,
            ExprCacheMode::Read => {
                let dir = DiskExpressionCache::dir_in(&self.root, None, &self.expr_settings);
                dir.is_dir().then(|| {
                    let lock = Box::new(crate::cache::lock::FileLock::new(&dir));
                    (Arc::new(DiskExpressionCache::new(&dir, lock)), mode)
                })
            }
            ExprCacheMode::Write => Some((
                Arc::new(DiskExpressionCache::for_store(&self.root, false)?),
                mode,
            )),
        };
        Ok(())
    }

    /// Opens an existing store with these options (no configuration file or environment is read).
    pub fn open_with(root: impl AsRef<Path>, options: StoreOptions) -> Result<Store> {
        let root = root.as_ref().to_path_buf();
        if !root.is_dir() {
            return Err(Error::MissingStore {
                path: root,
                reason: "no such directory",
            });
        }
        if !root.join(CALENDARS_DIR).is_dir() {
            return Err(Error::MissingStore {
                path: root,
                reason: "it has no calendars/ directory",
            });
        }
        Ok(Store {
            root,
            calendars: MemCache::new(options.calendar_cache.limit, options.calendar_cache.expiry),
            instruments: MemCache::new(
                options.instrument_cache.limit,
                options.instrument_cache.expiry,
            ),
            features: MemCache::new(options.feature_cache.limit, options.feature_cache.expiry),
            handles: Mutex::new(LruCache::new(options.handle_cache)),
            map_threshold: options.map_threshold,
            expr_cache: None,
            expr_settings: options.expression_cache,
        })
    }

    /// Creates the directories of an empty store (if missing) and opens it.
    pub fn create(root: impl AsRef<Path>) -> Result<Store> {
        let root = root.as_ref();
        for dir in [CALENDARS_DIR, INSTRUMENTS_DIR, FEATURES_DIR] {
            fsio::create_dir_all_synced(&root.join(dir))?;
        }
        Store::open(root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Forgets loaded calendars and open files, so the next reads see what other processes published.
    pub fn refresh(&self) {
        self.calendars.clear();
        self.instruments.clear();
        self.features.clear();
        self.handles.lock().clear();
    }

    /// Makes `features()` use this disk cache in `mode` (`Read`: current entries, and behind ones for the
    /// rows they have; `Write`: also stores what it computes).
    pub fn set_expression_cache(
        &mut self,
        cache: Arc<crate::cache::expr::DiskExpressionCache>,
        mode: ExprCacheMode,
    ) {
        self.expr_cache = (mode != ExprCacheMode::Off).then_some((cache, mode));
    }

    /// The expression cache `features()` uses, if any.
    pub fn expression_cache(&self) -> Option<&crate::cache::expr::DiskExpressionCache> {
        self.expr_cache.as_ref().map(|(c, _)| c.as_ref())
    }

    /// How many feature files the handle cache holds open now (at most `handle_cache`).
    pub fn open_handles(&self) -> usize {
        self.handles.lock().len()
    }

    /// Counters of the three in-memory cache spaces.
    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            calendar: self.calendars.stats(),
            instruments: self.instruments.stats(),
            features: self.features.stats(),
            disk: self.expression_cache().map(|c| c.stats()),
        }
    }

    /// The frequencies with a calendar file, sorted.
    pub fn freqs(&self) -> Result<Vec<Freq>> {
        let dir = self.root.join(CALENDARS_DIR);
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("listing", &dir, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("listing", &dir, e))?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".txt")) else {
                continue;
            };
            if stem.ends_with("_future") {
                continue;
            }
            if let Ok(freq) = stem.parse::<Freq>() {
                out.push(freq);
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The calendar of `freq`, loaded once per snapshot.
    pub fn calendar(&self, freq: Freq) -> Result<Arc<Calendar>> {
        if let Some(c) = self.calendars.get(&freq) {
            return Ok(c);
        }
        let path = layout::calendar_path(&self.root, freq, false);
        if !path.is_file() {
            let available = self
                .freqs()?
                .iter()
                .map(Freq::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Error::NoCalendar {
                freq: freq.to_string(),
                path,
                available: if available.is_empty() {
                    "none".into()
                } else {
                    available
                },
            });
        }
        let cal = Arc::new(Calendar::load(&path, freq)?);
        self.calendars.insert(freq, cal.clone());
        Ok(cal)
    }

    /// The calendar including future trading days (`<freq>_future.txt`), or the plain calendar when there is
    /// none (as qlib falls back).
    pub fn future_calendar(&self, freq: Freq) -> Result<Calendar> {
        let path = layout::calendar_path(&self.root, freq, true);
        if path.is_file() {
            Calendar::load(&path, freq)
        } else {
            Ok((*self.calendar(freq)?).clone())
        }
    }

    /// The instruments of `market`, from the instrument cache when possible.
    pub fn instruments(&self, market: &str) -> Result<Arc<Instruments>> {
        let key = market.to_lowercase();
        if let Some(i) = self.instruments.get(&key) {
            return Ok(i);
        }
        let path = layout::instruments_path(&self.root, market)?;
        if !path.is_file() {
            return Err(Error::NoMarket {
                market: market.to_owned(),
                path,
            });
        }
        let ins = Arc::new(Instruments::load(&path)?);
        self.instruments.insert(key, ins.clone());
        Ok(ins)
    }

    /// The markets with an instruments file, sorted.
    pub fn markets(&self) -> Result<Vec<String>> {
        let dir = self.root.join(INSTRUMENTS_DIR);
        fsio::list_names(&dir, ".txt")
    }

    /// The path of a feature file (it may not exist).
    pub fn feature_path(&self, instrument: &str, field: &str, freq: Freq) -> Result<PathBuf> {
        layout::feature_path(&self.root, instrument, field, freq)
    }

    /// The open feature file, from the handle cache when possible; `None` when it does not exist.
    pub fn feature(
        &self,
        instrument: &str,
        field: &str,
        freq: Freq,
    ) -> Result<Option<Arc<FeatureFile>>> {
        let key = handle_key(instrument, field, freq);
        if let Some(h) = self.handles.lock().get(&key) {
            return Ok(h.clone());
        }
        let path = self.feature_path(instrument, field, freq)?;
        let handle = FeatureFile::open_with(&path, self.map_threshold)?.map(Arc::new);
        self.handles.lock().put(key, handle.clone());
        Ok(handle)
    }

    /// The values of one field over calendar indexes `range`, clipped to the calendar and to the file's data.
    pub fn read(
        &self,
        instrument: &str,
        field: &str,
        freq: Freq,
        range: Range<usize>,
    ) -> Result<FeatureSlice> {
        let cal_len = self.calendar(freq)?.len();
        let range = range.start.min(cal_len)..range.end.min(cal_len);
        Ok(FeatureSlice::new(
            self.feature(instrument, field, freq)?,
            range,
        ))
    }

    /// The values of one field between two dates (inclusive, either optional).
    pub fn read_dates(
        &self,
        instrument: &str,
        field: &str,
        freq: Freq,
        start: Option<Timestamp>,
        end: Option<Timestamp>,
    ) -> Result<FeatureSlice> {
        let range = self.calendar(freq)?.locate(start, end);
        self.read(instrument, field, freq, range)
    }

    /// A `time x instrument x field` panel over calendar indexes `range` (clipped to the calendar), filled in
    /// parallel. Missing files and days without data are NaN.
    pub fn panel<S: AsRef<str> + Sync>(
        &self,
        instruments: &[S],
        fields: &[S],
        freq: Freq,
        range: Range<usize>,
    ) -> Result<Panel> {
        let cal_len = self.calendar(freq)?.len();
        let range = range.start.min(cal_len)..range.end.min(cal_len);
        let m = fields.len();
        let files = (0..instruments.len() * m)
            .into_par_iter()
            .map(|k| self.feature(instruments[k / m].as_ref(), fields[k % m].as_ref(), freq))
            .collect::<Result<Vec<_>>>()?;
        let own = |v: &[S]| v.iter().map(|s| s.as_ref().to_owned()).collect();
        Ok(panel::fill(&files, range, own(instruments), own(fields)))
    }

    /// Checks one feature file strictly, including that its data ends within the calendar.
    ///
    /// Reads tolerate data past the calendar (it is an update that has not published yet); a file in that state
    /// when no update runs is what `verify`/`check` report.
    pub fn verify_feature(&self, instrument: &str, field: &str, freq: Freq) -> Result<()> {
        let cal_len = self.calendar(freq)?.len();
        let path = self.feature_path(instrument, field, freq)?;
        if let Some(f) = FeatureFile::open(&path)?
            && f.end() > cal_len
        {
            return Err(Error::CorruptFeature {
                path,
                reason: CorruptReason::PastCalendar {
                    end: f.end(),
                    calendar_len: cal_len,
                },
            });
        }
        Ok(())
    }

    /// Publishes a calendar (atomic replace) and makes this store read with it.
    pub fn save_calendar(&self, calendar: &Calendar) -> Result<()> {
        let path = layout::calendar_path(&self.root, calendar.freq(), false);
        fsio::create_dir_all_synced(&self.root.join(CALENDARS_DIR))?;
        fsio::replace_atomic(&path, calendar.to_text().as_bytes())?;
        self.calendars
            .insert(calendar.freq(), Arc::new(calendar.clone()));
        // Cached results are keyed by calendar rows; a replaced calendar may renumber them.
        self.features.clear();
        self.handles.lock().clear();
        Ok(())
    }

    /// Publishes the instruments of `market` (atomic replace).
    pub fn save_instruments(&self, market: &str, instruments: &Instruments) -> Result<()> {
        let path = layout::instruments_path(&self.root, market)?;
        fsio::create_dir_all_synced(&self.root.join(INSTRUMENTS_DIR))?;
        fsio::replace_atomic(&path, instruments.to_text().as_bytes())?;
        self.instruments.remove(&market.to_lowercase());
        Ok(())
    }

    /// Writes values of one field at a calendar index (see [`writer::write`]).
    pub fn write_feature(
        &self,
        instrument: &str,
        field: &str,
        freq: Freq,
        index: Option<usize>,
        data: &[f32],
    ) -> Result<WriteKind> {
        let path = self.feature_path(instrument, field, freq)?;
        let kind = writer::write(&path, index, data)?;
        self.forget(instrument, field, freq);
        Ok(kind)
    }

    /// Replaces a whole feature file (see [`writer::rewrite`]).
    pub fn rewrite_feature(
        &self,
        instrument: &str,
        field: &str,
        freq: Freq,
        start: usize,
        data: &[f32],
    ) -> Result<()> {
        let path = self.feature_path(instrument, field, freq)?;
        writer::rewrite(&path, start, data)?;
        self.forget(instrument, field, freq);
        Ok(())
    }

    /// Writes a whole feature file without fsync, for a store being built that nobody reads yet (the staging
    /// store of `qdump all`); the instrument's directory must exist ([`Store::bulk_create_instrument`]). The
    /// builder syncs the file system once before publishing the store. Returns the bytes written.
    pub fn bulk_put_feature(
        &self,
        instrument: &str,
        field: &str,
        freq: Freq,
        start: usize,
        data: &[f32],
    ) -> Result<u64> {
        let path = self.feature_path(instrument, field, freq)?;
        writer::create_unsynced(&path, start, data)
    }

    /// Creates an instrument's feature directory in a store being built (no fsync; see `bulk_put_feature`).
    pub fn bulk_create_instrument(&self, instrument: &str) -> Result<()> {
        let dir = layout::instrument_dir(&self.root, instrument)?;
        match std::fs::create_dir(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(Error::io("creating directory", dir, e)),
        }
    }

    /// Moves a feature file's range to `[start, end)` (see [`writer::rebase`]).
    pub fn rebase_feature(
        &self,
        instrument: &str,
        field: &str,
        freq: Freq,
        range: Range<usize>,
    ) -> Result<WriteKind> {
        let path = self.feature_path(instrument, field, freq)?;
        let kind = writer::rebase(&path, range.start, range.end)?;
        self.forget(instrument, field, freq);
        Ok(kind)
    }

    /// Drops what this process has cached about a feature that was just written: its handle, and every
    /// evaluated expression of the instrument or naming it (`Mask(x,'SH600000')`).
    fn forget(&self, instrument: &str, field: &str, freq: Freq) {
        self.handles
            .lock()
            .pop(&handle_key(instrument, field, freq));
        let upper = instrument.to_uppercase();
        let quoted = format!("'{upper}'");
        self.features
            .remove_if(|k| k.instrument == upper || k.expr.contains(&quoted));
    }
}
