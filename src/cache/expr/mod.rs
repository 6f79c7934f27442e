//! DiskExpressionCache: computed expressions stored once per (expression, instrument, freq) as a feature file
//! plus a `.meta` JSON, read back by every process without a lock (storage-layout.md §8).
//!
//! Entry files, under the cache directory (`<store>/features_cache` unless configured):
//! `<instrument lower>/<key>.meta` and `<instrument lower>/<key>.<generation>.bin`. The key is the xxh3-128 of
//! the canonical expression, the instrument and the frequency (see [`key`]), so every spelling of one tree
//! shares an entry. The `.bin` is the feature-file format (start index, then f32 values over the expression's
//! whole series); its generation number changes whenever a file is replaced, so a writer never renames over the
//! file a reader has open. The `.meta` is the commit point: written last, by temp + fsync + rename.
//!
//! A read checks the meta against the store as it is now (calendar length, and a hash of every source field's
//! stored values over what the entry covered: a corrected file is noticed, an appended one is not stale until
//! the calendar moves) and the data's checksum, then serves the range. Anything that does not match is a miss;
//! nothing on the read path writes or locks.
//!
//! An instrument's current entries are also copied into one pack ([`pack`]) by `warm` and `update`, so a read
//! of many columns opens two files per instrument rather than two per column.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lru::LruCache;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::cache::lock::Lock;
use crate::error::{Error, Result};
use crate::expr::StoreFields;
use crate::expr::{self, Expr, Fields};
use crate::store::Store;
use crate::store::bin::{self, FeatureFile};
use crate::store::freq::Freq;
use crate::store::fsio;
use crate::store::layout;
use crate::store::settings::CacheSettings;
use crate::store::writer;

mod pack;
pub use pack::{PACK_FORMAT, PACK_MAX_VALUES, PackEntry, PackIndex, pack_key};

/// The version of the `.meta` format.
pub const META_FORMAT: u32 = 1;
/// The default cache directory inside a store.
pub const CACHE_DIR: &str = layout::EXPR_CACHE_DIR;

/// The entry key: 32 hex digits of xxh3-128 over `v1\0<canonical expression>\0<INSTRUMENT>\0<freq>`.
pub fn key(expr: &Expr, instrument: &str, freq: Freq) -> String {
    format!("{:032x}", key128(&expr.to_string(), instrument, freq))
}

/// [`key`] as a number, from the canonical text (which a query computes once for all instruments).
fn key128(canonical: &str, instrument: &str, freq: Freq) -> u128 {
    // The hash of `v1\0<canonical>\0<INSTRUMENT>\0<freq>`, streamed: this runs on every cache hit.
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(b"v1\0");
    h.update(canonical.as_bytes());
    h.update(b"\0");
    for chunk in instrument.as_bytes().chunks(64) {
        let mut up = [0u8; 64];
        for (u, b) in up.iter_mut().zip(chunk) {
            *u = b.to_ascii_uppercase();
        }
        h.update(&up[..chunk.len()]);
    }
    h.update(b"\0");
    h.update(freq.to_string().as_bytes());
    h.digest128()
}

/// One source field an entry was computed from, and what its stored values were.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFingerprint {
    pub instrument: String,
    pub field: String,
    pub start: usize,
    /// Values covered (up to the calendar's end at computation time).
    pub len: usize,
    /// xxh3-64 of those values' bytes, hex.
    pub hash: String,
}

/// How many entries are current, and why the others are not (see [`DiskExpressionCache::stale`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Staleness {
    pub current: usize,
    /// Built before days were appended.
    pub behind: usize,
    /// Built from values that have since been corrected.
    pub corrected: usize,
    pub unreadable: usize,
}

/// The `.meta` of an entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub format: u32,
    pub instrument: String,
    pub expr: String,
    pub freq: String,
    /// Calendar row of the first value.
    pub start: usize,
    /// Published values (the `.bin` may hold more: an append not yet published).
    pub len: usize,
    /// Calendar length the entry was computed against, and its last date.
    pub calendar_len: usize,
    pub last_date: Option<String>,
    /// Look-ahead rows of the expression: the last `right` values change when days are added.
    pub right: u32,
    pub sources: Vec<SourceFingerprint>,
    /// Fencing token of the writer that published this generation.
    pub token: u64,
    /// Generation of the `.bin` file this meta describes.
    pub generation: u64,
    /// xxh3-64 of the published values' bytes, hex.
    pub checksum: String,
}

/// What a reader needs of a validated entry's meta: where its values lie and what calendar they were built on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    /// Calendar row of the first value.
    start: usize,
    /// Published values.
    len: usize,
    calendar_len: usize,
    right: u32,
}

impl Span {
    fn of(m: &Meta) -> Span {
        Span {
            start: m.start,
            len: m.len,
            calendar_len: m.calendar_len,
            right: m.right,
        }
    }
}

/// Where a validated entry's values are: its own data file, or its place in its instrument's pack.
#[derive(Clone)]
enum Data {
    File(Arc<FeatureFile>),
    Pack(Arc<pack::Pack>, usize),
}

impl Data {
    /// The entry's `len` published values (checked when it was validated).
    fn values(&self, len: usize) -> &[f32] {
        match self {
            Data::File(f) => &f.values()[..len],
            Data::Pack(p, offset) => &p.values()[*offset..*offset + len],
        }
    }
}

/// A pack as validated for a calendar length: `None` when the instrument has no usable pack.
type ValidatedPack = (usize, Option<Arc<pack::Pack>>);

/// A validated entry: where its values lie and its open data file.
type Entry = (Span, Arc<FeatureFile>);

/// How many validated entries a cache keeps (as many as the store keeps feature files open by default).
const VALIDATED_ENTRIES: std::num::NonZeroUsize =
    std::num::NonZeroUsize::new(16_384).expect("non-zero");

/// Where a cache lives and how its writers lock.
pub struct DiskExpressionCache {
    dir: PathBuf,
    lock: Box<dyn Lock>,
    /// How long a writer waits for another writer of the same entry.
    pub wait: Duration,
    /// Entries validated in this process: key -> (meta, data file), the most recently used ones. Bounded: a
    /// whole-universe read would otherwise keep every entry's values in memory (3 GB for Alpha158 over 5,000
    /// daily series) and get slower as the map grew.
    valid: Mutex<LruCache<u128, Entry>>,
    /// Source fingerprints readers computed: (instrument, field, freq, calendar length) -> fingerprint.
    seen_sources: Mutex<HashMap<(String, String, Freq, usize), SourceFingerprint>>,
    /// Packs validated in this process: (INSTRUMENT, freq) -> (the calendar length they were validated
    /// against, the pack if there is a usable one). Bounded like `valid`.
    packs: Mutex<LruCache<(String, Freq), ValidatedPack>>,
    /// Instruments whose entries write-mode reads built since the last `repack_written`.
    written: Mutex<std::collections::BTreeSet<(String, Freq)>>,
    counters: Counters,
}

pub use crate::store::settings::CacheMode as Mode;

/// What reads found in the disk cache (this process, since the cache was opened).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DiskStats {
    /// Columns read whole from a current entry.
    pub hits: u64,
    /// Columns read from an entry behind the calendar, with only the rows past it computed.
    pub partial: u64,
    /// Columns computed (no usable entry).
    pub misses: u64,
    /// Entries written by write-mode reads.
    pub writes: u64,
}

#[derive(Default)]
struct Counters {
    hits: std::sync::atomic::AtomicU64,
    partial: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
    writes: std::sync::atomic::AtomicU64,
}

/// An entry as [`DiskExpressionCache::find`] found it.
enum Found {
    Current(Span, Data),
    Behind(Span, Data),
    Missing,
}

/// An entry's values over `rows`, NaN outside `[span.start, end)`.
fn values_over(span: &Span, data: &Data, end: usize, rows: Range<usize>) -> Vec<f32> {
    let mut out = vec![f32::NAN; rows.len()];
    let (from, to) = (rows.start.max(span.start), rows.end.min(end));
    if from < to {
        out[from - rows.start..to - rows.start]
            .copy_from_slice(&data.values(span.len)[from - span.start..to - span.start]);
    }
    out
}

/// What [`DiskExpressionCache::lookup`] found for an (expression, instrument) over some rows.
pub(crate) enum Lookup {
    /// Every row, from a current entry.
    Hit(Vec<f32>),
    /// The rows before `from` from an entry behind the calendar; rows from `from` on are to be computed.
    Partial {
        values: Vec<f32>,
        from: usize,
    },
    Miss,
}

/// An entry whose data is written and whose meta waits to be published, with its lock.
struct Pending {
    guard: Box<dyn crate::cache::lock::Guard>,
    meta: Meta,
    meta_path: PathBuf,
    dir: PathBuf,
    key: String,
    id: u128,
    outcome: Outcome,
}

enum Prepared {
    Done(Outcome),
    Pending(Box<Pending>),
    /// Another writer holds the lock (batches only).
    Busy,
}

/// Entries prepared before one `syncfs` and their metas' publication in [`DiskExpressionCache::warm_all`]:
/// each holds its lock (a file descriptor, or a Redis lease and its renewal thread) until then.
const BATCH: usize = 128;

/// What [`DiskExpressionCache::warm`] or `update` did to one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Outcome {
    /// Already current.
    Fresh,
    /// Computed in full (new, corrected source, unreadable entry, or look-ahead rows to redo).
    Built,
    /// New rows appended.
    Appended,
    /// Another process brought it up to date while this one waited for the lock.
    DoneByOther,
}

/// How many validated packs a cache keeps (one per instrument and frequency): each keeps its values file mapped
/// (Alpha158 over 750 days: 474 KB, so about 240 MB of page cache in this process's resident set at most).
const VALIDATED_PACKS: std::num::NonZeroUsize = std::num::NonZeroUsize::new(512).expect("non-zero");

fn hex64(bytes: &[u8]) -> String {
    format!("{:016x}", xxh3_64(bytes))
}

fn value_bytes(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

impl DiskExpressionCache {
    pub fn new(dir: impl AsRef<Path>, lock: Box<dyn Lock>) -> DiskExpressionCache {
        DiskExpressionCache {
            dir: dir.as_ref().to_path_buf(),
            lock,
            wait: Duration::from_secs(600),
            valid: Mutex::new(LruCache::new(VALIDATED_ENTRIES)),
            seen_sources: Mutex::new(HashMap::new()),
            packs: Mutex::new(LruCache::new(VALIDATED_PACKS)),
            written: Mutex::new(std::collections::BTreeSet::new()),
            counters: Counters::default(),
        }
    }

    /// The read counters of this process.
    pub fn stats(&self) -> DiskStats {
        use std::sync::atomic::Ordering::Relaxed;
        DiskStats {
            hits: self.counters.hits.load(Relaxed),
            partial: self.counters.partial.load(Relaxed),
            misses: self.counters.misses.load(Relaxed),
            writes: self.counters.writes.load(Relaxed),
        }
    }

    /// Whether the cache has a directory for `instrument` (so any entry of it).
    pub(crate) fn has_instrument(&self, instrument: &str) -> bool {
        self.dir
            .join(layout::code_to_fname(&instrument.to_uppercase()).to_lowercase())
            .is_dir()
    }

    /// Counts columns computed without looking (see [`has_instrument`](Self::has_instrument)).
    pub(crate) fn count_misses(&self, n: usize) {
        self.counters
            .misses
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts an entry of `instrument` written by a write-mode read, and remembers the instrument for
    /// [`repack_written`](Self::repack_written).
    pub(crate) fn count_write(&self, instrument: &str, freq: Freq) {
        self.counters
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.written
            .lock()
            .insert((instrument.to_uppercase(), freq));
    }

    /// Packs the instruments whose entries write-mode reads built since the last call (qlib's read-through
    /// builds entries one by one; a query in write mode calls this once it has its values). Returns how many
    /// packs were written.
    pub(crate) fn repack_written(&self, store: &Store) -> Result<usize> {
        let written = std::mem::take(&mut *self.written.lock());
        let targets: Vec<pack::Target> = written
            .into_iter()
            .map(|(instrument, freq)| pack::Target {
                instrument,
                freq,
                keys: Vec::new(),
                changed: true,
            })
            .collect();
        self.repack(store, &targets)
    }

    /// The values of `e` for `instrument` over `rows` as far as the cache has them: a current entry gives
    /// all of them; an entry behind the calendar (days appended since) whose sources are unchanged over the
    /// rows it covers gives those rows, except the last `right` ones a look-ahead expression must redo. A
    /// corrected source, a damaged entry or none at all is a miss. No lock, no write; one meta read.
    pub(crate) fn lookup(
        &self,
        store: &Store,
        canonical: &str,
        e: &Expr,
        instrument: &str,
        freq: Freq,
        rows: Range<usize>,
    ) -> Result<Lookup> {
        use std::sync::atomic::Ordering::Relaxed;
        let id = key128(canonical, instrument, freq);
        let (counter, found) = match self.find(store, id, canonical, e, instrument, freq, true)? {
            Found::Current(meta, file) => {
                let end = meta.start + meta.len;
                (
                    &self.counters.hits,
                    Lookup::Hit(values_over(&meta, &file, end, rows)),
                )
            }
            Found::Behind(meta, file) => {
                // Rows the entry answers for: up to its calendar's end, less the look-ahead rows.
                let valid_end = meta.calendar_len.saturating_sub(meta.right as usize);
                let from = valid_end.clamp(rows.start, rows.end);
                if from == rows.start {
                    (&self.counters.misses, Lookup::Miss)
                } else {
                    let end = (meta.start + meta.len).min(from);
                    let values = values_over(&meta, &file, end, rows.start..from);
                    (&self.counters.partial, Lookup::Partial { values, from })
                }
            }
            Found::Missing => (&self.counters.misses, Lookup::Miss),
        };
        counter.fetch_add(1, Relaxed);
        Ok(found)
    }

    /// The expression cache of the store at `root` as its settings name it, locking as they say (Redis leases
    /// when a URL is configured, unless the caller only reads: `read_only`).
    pub fn open(
        root: &Path,
        settings: &CacheSettings,
        read_only: bool,
    ) -> Result<DiskExpressionCache> {
        let lock = crate::cache::lock::for_settings(root, &settings.dir, settings, read_only)?;
        Ok(DiskExpressionCache::new(&settings.dir, lock))
    }

    /// [`open`](Self::open) with the store's own settings ([`Settings::resolve`](crate::store::settings::Settings::resolve)).
    pub fn for_store(root: &Path, read_only: bool) -> Result<DiskExpressionCache> {
        let settings = crate::store::settings::Settings::resolve(root, &Default::default())?;
        Self::open(root, &settings.cache, read_only)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn lock_backend(&self) -> &dyn Lock {
        self.lock.as_ref()
    }

    /// Forgets what this process validated (after other processes may have changed the cache or the store).
    pub fn refresh(&self) {
        self.valid.lock().clear();
        self.seen_sources.lock().clear();
        self.packs.lock().clear();
    }

    fn paths(&self, instrument: &str, key: &str) -> Result<(PathBuf, PathBuf)> {
        let dir = self
            .dir
            .join(layout::code_to_fname(&instrument.to_uppercase()).to_lowercase());
        layout::validate_name(crate::error::NameKind::Instrument, instrument)?;
        Ok((dir.join(format!("{key}.meta")), dir))
    }

    fn bin_path(dir: &Path, key: &str, generation: u64) -> PathBuf {
        dir.join(format!("{key}.{generation}.bin"))
    }

    fn read_meta(path: &Path) -> Option<Meta> {
        let text = std::fs::read(path).ok()?;
        let m: Meta = serde_json::from_slice(&text).ok()?;
        (m.format == META_FORMAT).then_some(m)
    }

    /// The data file `meta` names, if it holds the published values with their checksum.
    fn open_checked(dir: &Path, key: &str, meta: &Meta) -> Option<FeatureFile> {
        let file = FeatureFile::open(&Self::bin_path(dir, key, meta.generation)).ok()??;
        let fits = meta.len == 0
            || (file.start() == meta.start
                && file.len() >= meta.len
                && hex64(value_bytes(&file.values()[..meta.len])) == meta.checksum);
        fits.then_some(file)
    }

    /// The fingerprints of the fields `e` reads for `instrument`, over calendar rows `..calendar_len`.
    fn fingerprints(
        fields: &StoreFields<'_>,
        e: &Expr,
        instrument: &str,
        calendar_len: usize,
    ) -> Result<Vec<SourceFingerprint>> {
        Self::sources_of(e, instrument)
            .into_iter()
            .map(|(inst, field)| Self::fingerprint(fields, inst, field, calendar_len))
            .collect()
    }

    /// The (instrument, field) pairs `e` reads for `instrument`, sorted, once each.
    fn sources_of(e: &Expr, instrument: &str) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        collect_sources(e, &instrument.to_uppercase(), &mut pairs);
        pairs.sort();
        pairs.dedup();
        pairs
    }

    /// One source's fingerprint over calendar rows `..calendar_len`.
    fn fingerprint(
        fields: &StoreFields<'_>,
        instrument: String,
        field: String,
        calendar_len: usize,
    ) -> Result<SourceFingerprint> {
        let (start, len, hash) = match fields.column(&instrument, &field)? {
            Some(c) => {
                let v = c.values();
                let n = v.len().min(calendar_len.saturating_sub(c.start()));
                (c.start(), n, hex64(value_bytes(&v[..n])))
            }
            None => (0, 0, hex64(&[])),
        };
        Ok(SourceFingerprint {
            instrument,
            field,
            start,
            len,
            hash,
        })
    }

    /// [`fingerprints`](Self::fingerprints) for readers: each source is hashed once per process (per
    /// calendar length and frequency) however many entries read it, as the store itself reads a snapshot
    /// until `refresh()` (which forgets these too).
    fn read_fingerprints(
        &self,
        fields: &StoreFields<'_>,
        e: &Expr,
        instrument: &str,
        calendar_len: usize,
    ) -> Result<Vec<SourceFingerprint>> {
        Self::sources_of(e, instrument)
            .into_iter()
            .map(|(inst, field)| self.seen_fingerprint(fields, inst, field, calendar_len))
            .collect()
    }

    /// Whether the store's values of recorded source `s` are still the ones it was fingerprinted from, over
    /// calendar rows `..calendar_len` (the check of entries, packs and `stale`).
    fn source_unchanged(
        &self,
        fields: &StoreFields<'_>,
        s: &SourceFingerprint,
        calendar_len: usize,
    ) -> Result<bool> {
        let now =
            self.seen_fingerprint(fields, s.instrument.clone(), s.field.clone(), calendar_len)?;
        Ok(now == *s)
    }

    /// One source's fingerprint, hashed once per process (see [`read_fingerprints`](Self::read_fingerprints)).
    fn seen_fingerprint(
        &self,
        fields: &StoreFields<'_>,
        instrument: String,
        field: String,
        calendar_len: usize,
    ) -> Result<SourceFingerprint> {
        let key = (instrument, field, fields.freq, calendar_len);
        if let Some(f) = self.seen_sources.lock().get(&key) {
            return Ok(f.clone());
        }
        let f = Self::fingerprint(fields, key.0.clone(), key.1.clone(), calendar_len)?;
        self.seen_sources.lock().insert(key, f.clone());
        Ok(f)
    }

    /// The entry of `e` for `instrument` if it is current for the store as it is now: its data over `rows`
    /// (NaN outside the expression's series). `None` is a miss. No lock, no write.
    pub fn read(
        &self,
        store: &Store,
        e: &Expr,
        instrument: &str,
        freq: Freq,
        rows: Range<usize>,
    ) -> Result<Option<Vec<f32>>> {
        self.read_canonical(store, &e.to_string(), e, instrument, freq, rows)
    }

    /// [`read`](Self::read) with the expression's canonical text already at hand (a query over many
    /// instruments builds it once).
    pub fn read_canonical(
        &self,
        store: &Store,
        canonical: &str,
        e: &Expr,
        instrument: &str,
        freq: Freq,
        rows: Range<usize>,
    ) -> Result<Option<Vec<f32>>> {
        let id = key128(canonical, instrument, freq);
        Ok(
            match self.find(store, id, canonical, e, instrument, freq, true)? {
                Found::Current(span, data) => {
                    Some(values_over(&span, &data, span.start + span.len, rows))
                }
                Found::Behind(..) | Found::Missing => None,
            },
        )
    }

    /// Whether the entry of `e` itself (not a pack's copy: writers keep the entries whole) is current.
    fn is_current(&self, store: &Store, e: &Expr, instrument: &str, freq: Freq) -> Result<bool> {
        let canonical = e.to_string();
        let id = key128(&canonical, instrument, freq);
        Ok(matches!(
            self.find(store, id, &canonical, e, instrument, freq, false)?,
            Found::Current(..)
        ))
    }

    /// The entry `id` as readers may use it: current for the calendar now, behind it (built over a shorter
    /// calendar, its sources unchanged over the rows it covers, so its values there are still exact), or
    /// nothing usable (absent, another expression, a corrected source, damaged data). Its meta is read once.
    /// With `packs`, the instrument's pack is looked at first: a current copy there is as good as the entry
    /// (the same checks passed), and a behind one serves only when the entry has nothing better.
    #[allow(clippy::too_many_arguments)]
    fn find(
        &self,
        store: &Store,
        id: u128,
        canonical: &str,
        e: &Expr,
        instrument: &str,
        freq: Freq,
        packs: bool,
    ) -> Result<Found> {
        let cal_len = store.calendar(freq)?.len();
        if let Some((m, f)) = self.valid.lock().get(&id)
            && m.calendar_len == cal_len
        {
            return Ok(Found::Current(*m, Data::File(f.clone())));
        }
        let packed = if packs {
            self.find_packed(store, id, canonical, instrument, freq, cal_len)
        } else {
            None
        };
        if let Some(found @ Found::Current(..)) = packed {
            return Ok(found);
        }
        Ok(
            match self.find_entry(store, id, canonical, e, instrument, freq, cal_len)? {
                Found::Missing => packed.unwrap_or(Found::Missing),
                found => found,
            },
        )
    }

    /// [`find`](Self::find) in the entry's own files.
    #[allow(clippy::too_many_arguments)]
    fn find_entry(
        &self,
        store: &Store,
        id: u128,
        canonical: &str,
        e: &Expr,
        instrument: &str,
        freq: Freq,
        cal_len: usize,
    ) -> Result<Found> {
        let k = format!("{id:032x}");
        let (meta_path, dir) = self.paths(instrument, &k)?;
        let Some(meta) = Self::read_meta(&meta_path) else {
            return Ok(Found::Missing);
        };
        if meta.calendar_len > cal_len || meta.expr != canonical {
            return Ok(Found::Missing);
        }
        let fields = StoreFields { store, freq };
        if self.read_fingerprints(&fields, e, instrument, meta.calendar_len)? != meta.sources {
            return Ok(Found::Missing);
        }
        let Some(file) = Self::open_checked(&dir, &k, &meta) else {
            return Ok(Found::Missing);
        };
        let (span, file) = (Span::of(&meta), Arc::new(file));
        if meta.calendar_len < cal_len {
            return Ok(Found::Behind(span, Data::File(file)));
        }
        self.valid.lock().put(id, (span, file.clone()));
        Ok(Found::Current(span, Data::File(file)))
    }

    /// Computes (or brings forward) the entry of `e` for `instrument` under its writer lock.
    pub fn warm(&self, store: &Store, e: &Expr, instrument: &str, freq: Freq) -> Result<Outcome> {
        match self.prepare(store, e, instrument, freq, true)? {
            Prepared::Done(o) => Ok(o),
            Prepared::Pending(p) => self.publish(*p, true),
            Prepared::Busy => unreachable!("a durable prepare waits for the lock"),
        }
    }

    /// Computes and writes an entry's data under its lock, leaving the meta to [`publish`](Self::publish).
    /// `durable`: fsync the data now (else the caller syncs the file system before publishing).
    fn prepare(
        &self,
        store: &Store,
        e: &Expr,
        instrument: &str,
        freq: Freq,
        durable: bool,
    ) -> Result<Prepared> {
        if self.is_current(store, e, instrument, freq)? {
            return Ok(Prepared::Done(Outcome::Fresh));
        }
        let k = key(e, instrument, freq);
        let (meta_path, dir) = self.paths(instrument, &k)?;
        std::fs::create_dir_all(&dir).map_err(|err| Error::io("creating", &dir, err))?;
        let lock_name = format!(
            "{}/{k}",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("_")
        );
        // A batch holds locks until it publishes: it takes only free ones (the busy ones wait their turn after
        // it), so two batches can never wait for each other.
        let guard = if durable {
            self.lock.acquire(&lock_name, self.wait)?
        } else {
            match self.lock.try_acquire(&lock_name)? {
                Some(g) => g,
                None => return Ok(Prepared::Busy),
            }
        };
        // Someone may have built it while this process waited.
        let id = key128(&e.to_string(), instrument, freq);
        self.valid.lock().pop(&id);
        if self.is_current(store, e, instrument, freq)? {
            return Ok(Prepared::Done(Outcome::DoneByOther));
        }
        let cal = store.calendar(freq)?;
        let cal_len = cal.len();
        let fields = StoreFields { store, freq };
        let sources = Self::fingerprints(&fields, e, instrument, cal_len)?;
        let old = Self::read_meta(&meta_path);
        let domain = expr::domain(&fields, &instrument.to_uppercase(), std::slice::from_ref(e))?
            .map(|d| d.start..d.end.min(cal_len))
            .filter(|d| !d.is_empty());
        let right = e.ext_window().right;
        // Incremental when the old entry's sources are unchanged over what it covered and it starts where the
        // series starts: only rows past it (and its look-ahead tail) are computed.
        let reusable = old.as_ref().filter(|m| {
            domain.as_ref().is_some_and(|d| d.start == m.start)
                && m.sources.len() == sources.len()
                && Self::fingerprints(&fields, e, instrument, m.calendar_len)
                    .is_ok_and(|fp| fp == m.sources)
                && FeatureFile::open(&Self::bin_path(&dir, &k, m.generation))
                    .ok()
                    .flatten()
                    .is_some_and(|f| {
                        f.start() == m.start
                            && f.len() >= m.len
                            && hex64(value_bytes(&f.values()[..m.len])) == m.checksum
                    })
        });
        let (start, values_from, new_values) = match &domain {
            None => (0, 0, Vec::new()),
            Some(d) => {
                let from = match reusable {
                    Some(m) => (m.start + m.len)
                        .saturating_sub(right as usize)
                        .max(d.start),
                    None => d.start,
                };
                let from = from.min(d.end);
                let v = expr::evaluate(
                    &fields,
                    &instrument.to_uppercase(),
                    std::slice::from_ref(e),
                    from..d.end,
                )?
                .remove(0);
                (d.start, from, v)
            }
        };
        let len = domain.as_ref().map_or(0, |d| d.end - d.start);
        let token = guard.token();
        let empty_again = domain.is_none()
            && old
                .as_ref()
                .is_some_and(|m| m.len == 0 && Self::bin_path(&dir, &k, m.generation).exists());
        let (generation, outcome) = match reusable {
            // Still no data (a field this instrument lacks): only the meta moves forward.
            _ if empty_again => (old.as_ref().map_or(0, |m| m.generation), Outcome::Appended),
            Some(m) if right == 0 && values_from == m.start + m.len => {
                // A pure append past the published length of the current generation.
                let path = Self::bin_path(&dir, &k, m.generation);
                if !new_values.is_empty() {
                    writer::put_unpublished(&path, values_from, &new_values)?;
                }
                if durable {
                    let f = std::fs::File::open(&path)
                        .map_err(|err| Error::io("opening", &path, err))?;
                    f.sync_all()
                        .map_err(|err| Error::io("syncing", &path, err))?;
                }
                (m.generation, Outcome::Appended)
            }
            _ => {
                // A new generation: the old values it keeps, then the new ones, published by rename.
                let mut values = Vec::with_capacity(len);
                if let (Some(m), Some(_)) = (reusable, &domain)
                    && let Ok(Some(old_file)) =
                        FeatureFile::open(&Self::bin_path(&dir, &k, m.generation))
                {
                    values.extend_from_slice(&old_file.values()[..values_from - start]);
                }
                values.extend_from_slice(&new_values);
                let generation = old.as_ref().map_or(1, |m| m.generation + 1).max(token);
                let path = Self::bin_path(&dir, &k, generation);
                let bytes = bin::encode(start as u32, &values);
                if durable {
                    fsio::replace_atomic(&path, &bytes)?;
                } else {
                    fsio::replace_unsynced(&path, &bytes)?;
                }
                (generation, Outcome::Built)
            }
        };
        let file = FeatureFile::open(&Self::bin_path(&dir, &k, generation))?;
        let published = file
            .as_ref()
            .map_or(&[][..], |f| &f.values()[..len.min(f.len())]);
        let meta = Meta {
            format: META_FORMAT,
            instrument: instrument.to_uppercase(),
            expr: e.to_string(),
            freq: freq.to_string(),
            start,
            len,
            calendar_len: cal_len,
            last_date: cal
                .last()
                .map(|d| crate::store::calendar::format_timestamp(d, freq.date_only())),
            right,
            sources,
            token,
            generation,
            checksum: hex64(value_bytes(published)),
        };
        Ok(Prepared::Pending(Box::new(Pending {
            guard,
            meta,
            meta_path,
            dir,
            key: k,
            id,
            outcome,
        })))
    }

    /// Publishes a prepared entry's meta (the commit point), if its writer may: its lease is still held and no
    /// newer writer published. Then deletes older generations and releases the lock.
    fn publish(&self, p: Pending, durable: bool) -> Result<Outcome> {
        let Pending {
            guard,
            meta,
            meta_path,
            dir,
            key: k,
            id,
            outcome,
        } = p;
        let generation = meta.generation;
        crate::util::failpoint::hit("cache:before-meta");
        // Fencing: a newer writer's generation stays.
        crate::cache::lock::may_publish(
            guard.as_ref(),
            Self::read_meta(&meta_path).map(|m| m.token),
            &format!("cache entry {}", meta_path.display()),
        )?;
        let text = serde_json::to_vec_pretty(&meta).expect("meta serializes");
        if durable {
            fsio::replace_atomic(&meta_path, &text)?;
        } else {
            fsio::replace_unsynced(&meta_path, &text)?;
        }
        // Older generations are garbage once the meta no longer names them.
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let prefix = format!("{k}.");
            for e in entries.flatten() {
                let name = e.file_name();
                let Some(name) = name.to_str() else { continue };
                if let Some(g) = name
                    .strip_prefix(&prefix)
                    .and_then(|r| r.strip_suffix(".bin"))
                    .and_then(|g| g.parse::<u64>().ok())
                    && g != generation
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        self.valid.lock().pop(&id);
        drop(guard);
        Ok(outcome)
    }

    /// Brings every entry forward to the store as it is now (new days appended, corrected sources rebuilt), in
    /// parallel. Returns how many entries ended how; unreadable metas are counted under `None`.
    pub fn update_all(&self, store: &Store) -> Result<BTreeMap<Option<Outcome>, usize>> {
        self.update(store, None)
    }

    /// [`update_all`](Self::update_all) for the entries of some instruments only (`None`: all): one part of an
    /// update that a cluster spreads over its workers by instrument.
    pub fn update(
        &self,
        store: &Store,
        instruments: Option<&[String]>,
    ) -> Result<BTreeMap<Option<Outcome>, usize>> {
        self.remove_abandoned_temps()?;
        let entries = self.entries_of(instruments)?;
        let mut parsed = Vec::new();
        let mut unreadable = 0;
        for (path, meta) in &entries {
            let Some(m) = meta else {
                unreadable += 1;
                continue;
            };
            let e = expr::parse(&m.expr).map_err(|err| Error::Config {
                source_name: path.display().to_string(),
                reason: format!("its expression does not parse: {err}"),
            })?;
            parsed.push((m.instrument.clone(), e, m.freq.parse::<Freq>()?));
        }
        let pairs: Vec<(&str, &Expr, Freq)> =
            parsed.iter().map(|(i, e, f)| (i.as_str(), e, *f)).collect();
        let mut out: BTreeMap<Option<Outcome>, usize> = self
            .warm_pairs(store, &pairs, &|| {})?
            .into_iter()
            .map(|(o, n)| (Some(o), n))
            .collect();
        if unreadable > 0 {
            out.insert(None, unreadable);
        }
        Ok(out)
    }

    /// Computes (or brings forward) every (instrument, expression) pair in parallel; plain fields are skipped
    /// (they are files already). `progress` is called after each entry.
    pub fn warm_all(
        &self,
        store: &Store,
        instruments: &[String],
        exprs: &[Expr],
        freq: Freq,
        progress: &(dyn Fn() + Sync),
    ) -> Result<BTreeMap<Outcome, usize>> {
        self.remove_abandoned_temps()?;
        // One entry per distinct canonical text (MA20 and BOLL_MID are one entry): a batch must not wait for
        // a lock it holds itself.
        let mut seen = HashSet::new();
        let distinct: Vec<&Expr> = exprs
            .iter()
            .filter(|e| !matches!(e, Expr::Field(_)) && seen.insert(e.to_string()))
            .collect();
        let duplicates = exprs
            .iter()
            .filter(|e| !matches!(e, Expr::Field(_)))
            .count()
            - distinct.len();
        let work: Vec<(&String, &Expr)> = instruments
            .iter()
            .flat_map(|s| distinct.iter().map(move |e| (s, *e)))
            .collect();
        let pairs: Vec<(&str, &Expr, Freq)> =
            work.iter().map(|(s, e)| (s.as_str(), *e, freq)).collect();
        let mut counts = self.warm_pairs(store, &pairs, progress)?;
        if duplicates > 0 {
            // The repeated spellings are current by construction.
            *counts.entry(Outcome::Fresh).or_insert(0) += duplicates * instruments.len();
        }
        Ok(counts)
    }

    /// Brings (instrument, expression, freq) entries current in batches: data written without fsync, one
    /// `syncfs`, the metas, one more `syncfs`; rather than three fsyncs per entry (about a millisecond each
    /// here). The pairs must be distinct entries: a batch must not wait for a lock it holds itself.
    fn warm_pairs(
        &self,
        store: &Store,
        pairs: &[(&str, &Expr, Freq)],
        progress: &(dyn Fn() + Sync),
    ) -> Result<BTreeMap<Outcome, usize>> {
        use rayon::prelude::*;
        let counts = Mutex::new(BTreeMap::new());
        let busy = Mutex::new(Vec::new());
        // The instruments whose entries this call changed (their packs are rebuilt from the entries).
        let changed: Mutex<HashSet<(String, Freq)>> = Mutex::new(HashSet::new());
        let note = |s: &str, freq: Freq, o: Outcome| {
            if o != Outcome::Fresh {
                changed.lock().insert((s.to_uppercase(), freq));
            }
        };
        for batch in pairs.chunks(BATCH) {
            let pending = Mutex::new(Vec::new());
            batch.par_iter().try_for_each(|pair| -> Result<()> {
                let (s, e, freq) = *pair;
                match self.prepare(store, e, s, freq, false)? {
                    Prepared::Done(o) => {
                        note(s, freq, o);
                        *counts.lock().entry(o).or_insert(0) += 1;
                        progress();
                    }
                    Prepared::Pending(p) => {
                        note(s, freq, Outcome::Built);
                        pending.lock().push(*p)
                    }
                    Prepared::Busy => busy.lock().push(*pair),
                }
                Ok(())
            })?;
            let pending = pending.into_inner();
            if pending.is_empty() {
                continue;
            }
            fsio::sync_filesystem(&self.dir)?;
            let mut first_err = None;
            for p in pending {
                match self.publish(p, false) {
                    Ok(o) => {
                        *counts.lock().entry(o).or_insert(0) += 1;
                        progress();
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            fsio::sync_filesystem(&self.dir)?;
            if let Some(e) = first_err {
                return Err(e);
            }
        }
        // Entries another writer held: now that this one holds nothing, wait for each in turn.
        busy.into_inner()
            .par_iter()
            .try_for_each(|(s, e, freq)| -> Result<()> {
                let o = self.warm(store, e, s, *freq)?;
                note(s, *freq, o);
                *counts.lock().entry(o).or_insert(0) += 1;
                progress();
                Ok(())
            })?;
        // Every entry of these instruments is current now: copy them into their packs.
        let changed = changed.into_inner();
        let mut canonical: HashMap<*const Expr, String> = HashMap::new();
        let mut targets: BTreeMap<(String, Freq), Vec<u128>> = BTreeMap::new();
        for (s, e, freq) in pairs {
            let text = canonical
                .entry(*e as *const Expr)
                .or_insert_with(|| e.to_string());
            targets
                .entry((s.to_uppercase(), *freq))
                .or_default()
                .push(key128(text, s, *freq));
        }
        let targets: Vec<pack::Target> = targets
            .into_iter()
            .map(|((instrument, freq), keys)| pack::Target {
                changed: changed.contains(&(instrument.clone(), freq)),
                instrument,
                freq,
                keys,
            })
            .collect();
        self.repack(store, &targets)?;
        Ok(counts.into_inner())
    }

    /// How many entries a read would not use (behind the calendar or built from corrected values: they need
    /// `update_all`).
    pub fn behind(&self, store: &Store) -> Result<usize> {
        let s = self.stale(store)?;
        Ok(s.behind + s.corrected)
    }

    /// Entries that a read would not use, by why: the one definition of "stale" (the read path's). An entry
    /// is behind when the calendar has grown since it was built, corrected when the values it was built from
    /// have changed since (a `--since` correction); an unreadable meta is counted apart. Source fingerprints
    /// are computed once per (instrument, field), as reads compute them.
    pub fn stale(&self, store: &Store) -> Result<Staleness> {
        let mut out = Staleness::default();
        let mut calendars: HashMap<String, Option<usize>> = HashMap::new();
        for (_, m) in self.entries()? {
            let Some(m) = m else {
                out.unreadable += 1;
                continue;
            };
            let Ok(freq) = m.freq.parse::<Freq>() else {
                out.unreadable += 1;
                continue;
            };
            let cal_len = *calendars
                .entry(m.freq.clone())
                .or_insert_with(|| store.calendar(freq).ok().map(|c| c.len()));
            if cal_len != Some(m.calendar_len) {
                out.behind += 1;
                continue;
            }
            let fields = StoreFields { store, freq };
            let mut corrected = false;
            for s in &m.sources {
                if !self.source_unchanged(&fields, s, m.calendar_len)? {
                    corrected = true;
                    break;
                }
            }
            if corrected {
                out.corrected += 1;
            } else {
                out.current += 1;
            }
        }
        Ok(out)
    }

    /// Every entry's meta path and parsed meta (`None` when unreadable).
    pub fn entries(&self) -> Result<Vec<(PathBuf, Option<Meta>)>> {
        self.entries_of(None)
    }

    /// The instruments that have entries (one directory each), sorted.
    pub fn instruments(&self) -> Result<Vec<String>> {
        let Ok(dirs) = std::fs::read_dir(&self.dir) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<String> = dirs
            .flatten()
            .filter(|d| d.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|d| {
                let name = d.file_name().into_string().ok()?;
                Some(layout::fname_to_code(&name).to_uppercase())
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// The entries of some instruments (`None`: all), as [`entries`](Self::entries).
    fn entries_of(&self, instruments: Option<&[String]>) -> Result<Vec<(PathBuf, Option<Meta>)>> {
        let mut out = Vec::new();
        let Ok(dirs) = std::fs::read_dir(&self.dir) else {
            return Ok(out);
        };
        let wanted: Option<HashSet<String>> = instruments
            .map(|l| {
                l.iter()
                    .map(|s| {
                        layout::validate_name(crate::error::NameKind::Instrument, s)?;
                        Ok(layout::code_to_fname(&s.to_uppercase()).to_lowercase())
                    })
                    .collect::<Result<_>>()
            })
            .transpose()?;
        // Only qstore's names, and never through a link: a user's `notes.meta` is not an entry.
        for d in dirs.flatten() {
            if !d.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if let Some(w) = &wanted
                && !d.file_name().to_str().is_some_and(|n| w.contains(n))
            {
                continue;
            }
            let files =
                std::fs::read_dir(d.path()).map_err(|e| Error::io("listing", d.path(), e))?;
            for f in files.flatten() {
                let name = f.file_name();
                let is_meta = name
                    .to_str()
                    .is_some_and(|n| n.ends_with(".meta") && layout::is_cache_file(n));
                if is_meta && f.file_type().is_ok_and(|t| t.is_file()) {
                    let p = f.path();
                    out.push((p.clone(), Self::read_meta(&p)));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Checks every entry: a readable meta, its `.bin` generation present with the published length and
    /// checksum; every pack: a readable index, its values file holding each entry with its checksum; and no
    /// orphan `.bin` or `.values` files or temp files. Returns one line per problem.
    pub fn verify(&self) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let Ok(dirs) = std::fs::read_dir(&self.dir) else {
            return Ok(problems);
        };
        for d in dirs.flatten() {
            let dir = d.path();
            if !dir.is_dir() {
                continue;
            }
            let mut metas: HashMap<String, Option<Meta>> = HashMap::new();
            let mut bins: Vec<(String, u64, PathBuf)> = Vec::new();
            let mut packs: Vec<String> = Vec::new();
            let mut values: Vec<(String, u64, PathBuf)> = Vec::new();
            for f in std::fs::read_dir(&dir)
                .map_err(|e| Error::io("listing", &dir, e))?
                .flatten()
            {
                let p = f.path();
                let name = f.file_name().to_string_lossy().into_owned();
                if name.starts_with(fsio::TEMP_PREFIX) {
                    // A live writer's temp file is not a problem; an abandoned one is (until the next writer).
                    if fsio::temp_is_abandoned(&p) {
                        problems.push(format!(
                            "{}: a temp file left by a killed writer (the next warm, update or clear removes it)",
                            p.display()
                        ));
                    }
                } else if !layout::is_cache_file(&name) {
                    // Not the cache's: neither checked nor removed.
                } else if let Some(k) = name.strip_suffix(".meta") {
                    metas.insert(k.to_string(), Self::read_meta(&p));
                } else if let Some(k) = name.strip_suffix(".pack") {
                    packs.push(k.to_string());
                } else if let Some((k, g)) = name
                    .strip_suffix(".values")
                    .and_then(|r| r.rsplit_once('.'))
                    .and_then(|(k, g)| g.parse::<u64>().ok().map(|g| (k.to_string(), g)))
                {
                    values.push((k, g, p));
                } else if let Some((k, g)) = name
                    .strip_suffix(".bin")
                    .and_then(|r| r.rsplit_once('.'))
                    .and_then(|(k, g)| g.parse::<u64>().ok().map(|g| (k.to_string(), g)))
                {
                    bins.push((k, g, p));
                }
            }
            for (k, m) in &metas {
                let meta_path = dir.join(format!("{k}.meta"));
                let Some(m) = m else {
                    problems.push(format!("{}: unreadable meta", meta_path.display()));
                    continue;
                };
                let bin = Self::bin_path(&dir, k, m.generation);
                match FeatureFile::open(&bin) {
                    Ok(Some(f)) => {
                        if f.len() < m.len || (m.len > 0 && f.start() != m.start) {
                            problems.push(format!(
                                "{}: holds {} values from row {}, the meta publishes {} from row {}",
                                bin.display(),
                                f.len(),
                                f.start(),
                                m.len,
                                m.start
                            ));
                        } else if hex64(value_bytes(&f.values()[..m.len])) != m.checksum {
                            problems.push(format!("{}: checksum mismatch", bin.display()));
                        }
                    }
                    Ok(None) if m.len == 0 => {}
                    Ok(None) => problems.push(format!(
                        "{}: missing (named by {})",
                        bin.display(),
                        meta_path.display()
                    )),
                    Err(e) => problems.push(format!("{}: {}", bin.display(), e.detail())),
                }
            }
            for (k, g, p) in bins {
                match metas.get(&k) {
                    Some(Some(m)) if m.generation == g => {}
                    Some(Some(_)) => {
                        problems.push(format!("{}: an old generation nothing names", p.display()))
                    }
                    _ => problems.push(format!("{}: no meta (an orphan)", p.display())),
                }
            }
            let mut named: HashMap<String, Option<u64>> = HashMap::new();
            for pk in packs {
                let (generation, problem) = Self::verify_pack(&dir, &pk);
                problems.extend(problem);
                named.insert(pk, generation);
            }
            for (pk, g, p) in values {
                match named.get(&pk) {
                    Some(Some(n)) if *n == g => {}
                    Some(Some(_)) => {
                        problems.push(format!("{}: an old generation nothing names", p.display()))
                    }
                    Some(None) => {}
                    None => problems.push(format!("{}: no pack index (an orphan)", p.display())),
                }
            }
        }
        problems.sort();
        Ok(problems)
    }

    /// Removes temp files whose writers are gone (killed mid-write), in the cache directory and each
    /// instrument's; every writer and `clear` start with it, so `verify` does not report them forever.
    pub fn remove_abandoned_temps(&self) -> Result<usize> {
        let mut n = fsio::remove_abandoned_temps(&self.dir)?;
        if let Ok(dirs) = std::fs::read_dir(&self.dir) {
            for d in dirs.flatten() {
                if d.file_type().is_ok_and(|t| t.is_dir()) {
                    n += fsio::remove_abandoned_temps(&d.path())?;
                }
            }
        }
        Ok(n)
    }

    /// Removes the entries whose meta matches `pred` (under each entry's lock), with their data files, and the
    /// packs of the instruments it removed entries of (the next `warm` or `update` repacks what is left).
    pub fn clear(&self, pred: impl Fn(&Meta) -> bool) -> Result<usize> {
        self.remove_abandoned_temps()?;
        let mut n = 0;
        let mut touched: Vec<PathBuf> = Vec::new();
        for (meta_path, meta) in self.entries()? {
            let remove = meta.as_ref().is_none_or(&pred);
            if !remove {
                continue;
            }
            let dir = meta_path.parent().expect("in a directory").to_path_buf();
            let k = meta_path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            let _guard = self.lock.acquire(
                &format!(
                    "{}/{k}",
                    dir.file_name().and_then(|n| n.to_str()).unwrap_or("_")
                ),
                self.wait,
            )?;
            // The meta goes first: without it the data files are orphans no reader looks at. The entry's lock
            // file stays: it belongs to the lock, which this process holds.
            std::fs::remove_file(&meta_path).map_err(|e| Error::io("removing", &meta_path, e))?;
            let data = format!("{k}.");
            for f in std::fs::read_dir(&dir)
                .map_err(|e| Error::io("listing", &dir, e))?
                .flatten()
            {
                let name = f.file_name();
                let name = name.to_str().unwrap_or_default();
                if name.starts_with(&data) && name.ends_with(".bin") && layout::is_cache_file(name)
                {
                    let _ = std::fs::remove_file(f.path());
                }
            }
            fsio::fsync_dir(&dir)?;
            if touched.last() != Some(&dir) {
                touched.push(dir);
            }
            n += 1;
        }
        for dir in touched {
            self.remove_packs(&dir)?;
        }
        self.refresh();
        Ok(n)
    }
}

/// The (instrument, field) pairs an expression reads.
pub(crate) fn collect_sources(e: &Expr, inst: &str, out: &mut Vec<(String, String)>) {
    match e {
        Expr::Field(f) => out.push((inst.to_string(), f.clone())),
        Expr::Instrument(x, other) => collect_sources(x, other, out),
        _ => e.children().for_each(|c| collect_sources(c, inst, out)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::calendar::{Calendar, parse_timestamp};

    /// Reads keep at most the bound of validated entries, and an entry pushed out is read again correctly.
    #[test]
    fn validated_entries_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let first = parse_timestamp("2024-01-01").unwrap();
        let days = (0..30).map(|k| first + chrono::Days::new(k)).collect();
        store
            .save_calendar(&Calendar::new(Freq::DAY, days).unwrap())
            .unwrap();
        let values: Vec<f32> = (0..30).map(|k| k as f32).collect();
        store
            .write_feature("SH600000", "close", Freq::DAY, Some(0), &values)
            .unwrap();
        let cache_dir = dir.path().join(CACHE_DIR);
        let cache = DiskExpressionCache::new(
            &cache_dir,
            Box::new(crate::cache::lock::FileLock::new(&cache_dir)),
        );
        *cache.valid.lock() = LruCache::new(std::num::NonZeroUsize::new(2).unwrap());
        let exprs: Vec<Expr> = ["Mean($close, 2)", "Mean($close, 3)", "Mean($close, 4)"]
            .iter()
            .map(|e| expr::parse(e).unwrap())
            .collect();
        for e in &exprs {
            cache.warm(&store, e, "SH600000", Freq::DAY).unwrap();
        }
        for round in 0..2 {
            for e in &exprs {
                let got = cache
                    .read(&store, e, "SH600000", Freq::DAY, 0..30)
                    .unwrap()
                    .expect("a current entry");
                let want = expr::evaluate(
                    &StoreFields {
                        store: &store,
                        freq: Freq::DAY,
                    },
                    "SH600000",
                    std::slice::from_ref(e),
                    0..30,
                )
                .unwrap()
                .remove(0);
                assert_eq!(got, want, "round {round}, {e}");
                assert!(cache.valid.lock().len() <= 2);
            }
        }
    }
}
