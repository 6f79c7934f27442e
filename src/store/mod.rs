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
pub(crate) mod fsio;
pub mod info;
pub mod instruments;
pub mod layout;
pub mod panel;
pub mod settings;
pub mod writer;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;
use rayon::prelude::*;

use self::bin::{FeatureFile, FeatureSlice};
use self::calendar::{Calendar, Timestamp};
use self::freq::Freq;
use self::instruments::Instruments;
use self::layout::{CALENDARS_DIR, FEATURES_DIR, INSTRUMENTS_DIR};
pub use self::settings::{CacheConfig, StoreOptions};
use self::settings::{Overrides, Settings};
use crate::error::{CorruptReason, Error, Result};
use crate::util::memcache::MemCache;
use panel::Panel;
use writer::WriteKind;

/// Counters of the store's in-memory caches.
#[derive(Debug, Clone, Copy)]
pub struct CacheStats {
    pub calendar: crate::util::memcache::Stats,
    pub instruments: crate::util::memcache::Stats,
}

type Handle = Option<Arc<FeatureFile>>;

/// A qlib-layout store on disk.
pub struct Store {
    root: PathBuf,
    calendars: MemCache<Freq, Arc<Calendar>>,
    instruments: MemCache<String, Arc<Instruments>>,
    handles: Mutex<LruCache<String, Handle>>,
    map_threshold: u64,
    /// The writes made through this `Store`, so that the query layer can forget what it derived from them.
    writes: Mutex<WriteLog>,
}

/// The last writes through a `Store`: a sequence number, and the instruments of the most recent ones (`None`:
/// everything changed, as when a calendar is replaced).
#[derive(Default)]
struct WriteLog {
    seq: u64,
    recent: std::collections::VecDeque<(u64, Option<String>)>,
}

/// How many writes the log remembers; a reader further behind forgets everything it derived.
const WRITE_LOG_LEN: usize = 4096;

impl WriteLog {
    fn push(&mut self, instrument: Option<String>) {
        self.seq += 1;
        if self.recent.len() == WRITE_LOG_LEN {
            self.recent.pop_front();
        }
        self.recent.push_back((self.seq, instrument));
    }
}

/// What changed in a store since a reader last looked ([`Store::changes_since`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Changes {
    None,
    /// These instruments (upper case) were written.
    Instruments(Vec<String>),
    /// Anything may have changed.
    All,
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
    /// `QSTORE_*` environment variables ([`Settings::resolve`]).
    pub fn open(root: impl AsRef<Path>) -> Result<Store> {
        let root = root.as_ref();
        Store::open_with(root, Settings::resolve(root, &Overrides::default())?.store)
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
            handles: Mutex::new(LruCache::new(options.handle_cache)),
            map_threshold: options.map_threshold,
            writes: Mutex::new(WriteLog::default()),
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
        self.handles.lock().clear();
    }

    /// The sequence number of the last write through this `Store`.
    pub fn writes(&self) -> u64 {
        self.writes.lock().seq
    }

    /// What was written through this `Store` after write number `seen`, and the number now.
    pub fn changes_since(&self, seen: u64) -> (u64, Changes) {
        let log = self.writes.lock();
        if log.seq == seen {
            return (seen, Changes::None);
        }
        let first = log.recent.front().map_or(u64::MAX, |(n, _)| *n);
        if first > seen + 1 {
            return (log.seq, Changes::All);
        }
        let mut out = Vec::new();
        for (_, inst) in log.recent.iter().filter(|(n, _)| *n > seen) {
            match inst {
                Some(i) => out.push(i.clone()),
                None => return (log.seq, Changes::All),
            }
        }
        out.sort();
        out.dedup();
        (log.seq, Changes::Instruments(out))
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
        self.writes.lock().push(None);
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

    /// The fields stored for an instrument at `freq`, sorted.
    pub fn fields_of(&self, instrument: &str, freq: Freq) -> Result<Vec<String>> {
        let dir = layout::instrument_dir(&self.root, instrument)?;
        fsio::list_names(&dir, &format!(".{freq}.bin"))
    }

    /// Drops what this process has cached about a feature that was just written: its handle here, and (through
    /// the write count) what the query layer derived from the store.
    fn forget(&self, instrument: &str, field: &str, freq: Freq) {
        self.handles
            .lock()
            .pop(&handle_key(instrument, field, freq));
        self.writes.lock().push(Some(instrument.to_uppercase()));
    }
}
