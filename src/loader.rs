//! `KlineLoader`: the read-through cache with a TTL that training code asks for K-lines.
//!
//! `load(symbol, start, end)` serves from the store when the store was brought up to date less than `ttl` ago
//! and covers the range; otherwise it first runs an incremental update from its source (`qdump update`'s code),
//! under the store's update lock, so that a hundred training processes started together update once: each
//! re-reads the update time after it gets the lock, and the ones that waited find the store fresh. A symbol the
//! store does not have is backfilled from the source (all its rows). Without a source it serves what the store
//! has. After an update it brings the store's expression cache forward too.

use crate::cache::expr::DiskExpressionCache;
use crate::query::Engine;
use crate::store::settings::{Overrides, Settings};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::{Error, NameKind, Result};
use crate::import::update::{self, UpdateLock, UpdateSummary};
use crate::import::{ImportOptions, Source};
use crate::query::Universe;
use crate::query::frame::Frame;
use crate::store::Store;
use crate::store::calendar::Timestamp;
use crate::store::layout::{self, validate_name};

pub use crate::import::spec::SourceFactory;

/// What the loader holds.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheInfo {
    pub symbols: usize,
    pub size_mb: f64,
    pub ttl: Duration,
    pub last_update: Option<SystemTime>,
    pub last_day: Option<Timestamp>,
}

/// A store plus an optional source and a TTL; see the module docs.
pub struct KlineLoader {
    root: PathBuf,
    source: Option<Arc<SourceFactory>>,
    ttl: Duration,
    opts: ImportOptions,
    now: Arc<dyn Fn() -> SystemTime + Send + Sync>,
}

impl KlineLoader {
    /// A loader over the store at `root` (which `qdump all` built), refreshed from `source` every `ttl`
    /// (24 h is the usual choice: one update per trading day).
    pub fn new(
        root: impl AsRef<Path>,
        source: Option<Arc<SourceFactory>>,
        ttl: Duration,
    ) -> KlineLoader {
        KlineLoader {
            root: root.as_ref().to_path_buf(),
            source,
            ttl,
            opts: ImportOptions::default(),
            now: Arc::new(SystemTime::now),
        }
    }

    /// The import options (frequency, market, symbol format) updates use.
    pub fn with_options(mut self, opts: ImportOptions) -> Self {
        self.opts = opts;
        self
    }

    /// A clock for tests.
    pub fn with_clock(mut self, now: Arc<dyn Fn() -> SystemTime + Send + Sync>) -> Self {
        self.now = now;
        self
    }

    fn fresh(&self) -> Result<bool> {
        Ok(match update::last_update(&self.root)? {
            Some(t) => (self.now)()
                .duration_since(t)
                .map_or(true, |age| age < self.ttl),
            None => false,
        })
    }

    /// Every field of `symbol` between `start` and `end` (inclusive), refreshing the store first when it is
    /// older than the TTL or does not reach `end`, and backfilling a symbol the store lacks.
    pub fn load(
        &self,
        symbol: &str,
        start: Option<Timestamp>,
        end: Option<Timestamp>,
    ) -> Result<Frame> {
        validate_name(NameKind::Instrument, symbol)?;
        let symbol = symbol.to_uppercase();
        if self.source.is_some() {
            // Checked again under the update lock: a loader that waited finds the work done.
            let stale = || -> Result<bool> {
                let last = Store::open(&self.root)?.calendar(self.opts.freq)?.last();
                let covers = match (end, last) {
                    (Some(e), Some(l)) => e <= l,
                    (None, _) => true,
                    (Some(_), None) => false,
                };
                Ok(!covers || !self.fresh()?)
            };
            if stale()? {
                self.update_if(&stale)?;
            }
            let store = Store::open(&self.root)?;
            if store.fields_of(&symbol, self.opts.freq)?.is_empty() {
                self.backfill(&symbol)?;
            }
        }
        let engine = Engine::open(&self.root)?;
        let fields: Vec<String> = engine
            .store()
            .fields_of(&symbol, self.opts.freq)?
            .into_iter()
            .map(|f| format!("${f}"))
            .collect();
        if fields.is_empty() {
            return Err(Error::Target {
                path: layout::instrument_dir(&self.root, &symbol)?,
                reason: "has no feature files: the store does not have this symbol (and the loader has no source that does)",
            });
        }
        let mut frame = engine.features(
            Universe::List(std::slice::from_ref(&symbol)),
            &fields,
            start,
            end,
            self.opts.freq,
        )?;
        frame.rename_columns(fields.iter().map(|f| f[1..].to_string()).collect());
        Ok(frame)
    }

    /// Brings the store up to date now, whatever the TTL says (`force`), or only if no other process did while
    /// this one waited for the update lock. Returns the update's summary, or `None` when it was not needed.
    pub fn refresh(&self, force: bool) -> Result<Option<UpdateSummary>> {
        self.update_if(&|| Ok(force || !self.fresh()?))
    }

    /// Updates when `needed()` holds under the update lock.
    fn update_if(&self, needed: &dyn Fn() -> Result<bool>) -> Result<Option<UpdateSummary>> {
        let Some(source) = &self.source else {
            return Ok(None);
        };
        let lock = UpdateLock::acquire(&self.root, true)?;
        if !needed()? {
            return Ok(None);
        }
        let start = update::first_new_row(&Store::open(&self.root)?, self.opts.freq, None, &lock)?;
        let src = source(start, None)?;
        let s = update::update_locked(src.as_ref(), &self.root, &self.opts, &lock, &|_| {})?;
        drop(lock);
        // Computed expressions follow the data (as `qdump update --update-caches`).
        update_caches(
            &self.root,
            Settings::resolve(&self.root, &Overrides::default())?,
            CacheParts::All,
        )?;
        Ok(Some(s))
    }

    /// Forces an update now (the `force_refresh` of the users' loaders).
    pub fn force_refresh(&self) -> Result<Option<UpdateSummary>> {
        self.refresh(true)
    }

    fn backfill(&self, symbol: &str) -> Result<()> {
        let Some(source) = &self.source else {
            return Ok(());
        };
        let lock = UpdateLock::acquire(&self.root, true)?;
        let store = Store::open(&self.root)?;
        if !store.fields_of(symbol, self.opts.freq)?.is_empty() {
            return Ok(()); // another loader backfilled it while this one waited
        }
        let src = source(None, Some(vec![symbol.to_string()]))?;
        update::update_locked(src.as_ref(), &self.root, &self.opts, &lock, &|_| {})?;
        Ok(())
    }

    /// Symbols, size on disk, TTL and the last update.
    pub fn cache_info(&self) -> Result<CacheInfo> {
        let store = Store::open(&self.root)?;
        let symbols = match store.instruments(&self.opts.market) {
            Ok(i) => i.len(),
            Err(Error::NoMarket { .. }) => 0,
            Err(e) => return Err(e),
        };
        Ok(CacheInfo {
            symbols,
            size_mb: crate::store::fsio::dir_size(&self.root.join(layout::FEATURES_DIR)) as f64
                / 1e6,
            ttl: self.ttl,
            last_update: update::last_update(&self.root)?,
            last_day: store.calendar(self.opts.freq)?.last(),
        })
    }

    /// Drops one symbol from the store (files and instruments span), so the next `load` backfills it.
    pub fn clear(&self, symbol: &str) -> Result<()> {
        let _lock = UpdateLock::acquire(&self.root, true)?;
        let store = Store::open(&self.root)?;
        let symbol = symbol.to_uppercase();
        let mut ins = (*store.instruments(&self.opts.market)?).clone();
        let kept: Vec<(String, Vec<crate::store::instruments::Span>)> = ins
            .iter()
            .filter(|(s, _)| *s != symbol)
            .map(|(s, sp)| (s.to_string(), sp.to_vec()))
            .collect();
        ins = crate::store::instruments::Instruments::new();
        for (s, sp) in kept {
            ins.set(&s, sp)?;
        }
        // Unlist first: a crash between the two leaves files nobody lists, which `qdump check` reports.
        store.save_instruments(&self.opts.market, &ins)?;
        let dir = layout::instrument_dir(&self.root, &symbol)?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => crate::store::fsio::fsync_dir(&self.root.join(layout::FEATURES_DIR)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing", &dir, e)),
        }
    }

    /// Drops every symbol (the calendar stays, so a backfill lands on the same days).
    pub fn clear_all(&self) -> Result<()> {
        let store = Store::open(&self.root)?;
        let symbols: Vec<String> = match store.instruments(&self.opts.market) {
            Ok(i) => i.symbols().map(String::from).collect(),
            Err(Error::NoMarket { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        for s in symbols {
            self.clear(&s)?;
        }
        Ok(())
    }
}

/// Which of a store's caches [`update_caches`] brings forward.
#[derive(Debug, Clone, Copy)]
pub enum CacheParts<'a> {
    /// Every expression-cache entry and every dataset.
    All,
    /// The expression-cache entries of these instruments: one part of an update spread over a cluster.
    Entries(&'a [String]),
    /// The datasets only (each covers many instruments, so it is one task's work).
    Datasets,
}

/// Brings a store's caches forward after its data changed, each one the store has: the expression cache's
/// entries and the dataset cache's datasets (what `qdump update --update-caches` runs), or the `parts` asked
/// for. Returns how many entries and datasets were brought forward.
pub fn update_caches(
    root: &Path,
    settings: Settings,
    parts: CacheParts<'_>,
) -> Result<(usize, usize)> {
    let mut counts = (0, 0);
    let entries = match parts {
        CacheParts::All => Some(None),
        CacheParts::Entries(list) => Some(Some(list)),
        CacheParts::Datasets => None,
    };
    if let Some(only) = entries
        && settings.cache.dir.is_dir()
    {
        counts.0 = DiskExpressionCache::open(root, &settings.cache, false)?
            .update(&Store::open_with(root, settings.store.clone())?, only)?
            .values()
            .sum();
    }
    let datasets = matches!(parts, CacheParts::All | CacheParts::Datasets);
    if datasets && root.join(crate::dataset::DATASET_DIR).is_dir() {
        counts.1 = crate::dataset::DiskDatasetCache::open(root, &settings.cache, false)?
            .update_all(&Engine::open_with(root, settings)?)?
            .values()
            .sum();
    }
    Ok(counts)
}

/// A loader source over a MySQL K-line table: `base` with its start date and symbol list set per request.
pub fn mysql_source(
    conn: crate::import::mysql::Connection,
    base: crate::import::mysql::MysqlOptions,
) -> Arc<SourceFactory> {
    Arc::new(move |start, symbols| {
        let mut opts = base.clone();
        opts.start = start;
        if let Some(symbols) = symbols {
            // Tables spell symbols their own way (`600000.SH`); ask for every spelling of the store name.
            opts.symbols = Some(
                symbols
                    .iter()
                    .flat_map(|s| crate::import::source_spellings(s))
                    .collect(),
            );
        }
        Ok(Box::new(crate::import::MysqlSource::open(conn.clone(), opts)?) as Box<dyn Source>)
    })
}
