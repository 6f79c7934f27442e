//! Settings, resolved once: defaults, then `<store>/qstore.json` (optional), then `QSTORE_*` environment
//! variables, then command-line flags ([`Overrides`]). [`Settings::resolve`] is the one place that reads the
//! file and the environment; everything else is handed the result.
//!
//! ```json
//! {
//!   "mem_cache": {
//!     "calendar":    { "limit": 500, "limit_type": "length", "expire_s": 3600 },
//!     "instruments": { "limit": 64,  "limit_type": "length", "expire_s": 0 },
//!     "features":    { "limit": 268435456, "limit_type": "bytes", "expire_s": 3600 }
//!   },
//!   "handle_cache": 16384,
//!   "map_threshold": 65536,
//!   "expression_cache": { "dir": "features_cache", "redis_url": "redis://127.0.0.1:6379/0", "lock": "redis", "lease_s": 30 },
//!   "compat": "qlib"
//! }
//! ```
//!
//! `limit_type` is `length` (entries) or `bytes`; `expire_s` 0 means never. Every key is optional. The
//! environment overrides the file: `QSTORE_MEMCACHE_{CALENDAR,INSTRUMENTS,FEATURES}_{LIMIT,LIMIT_TYPE,EXPIRE_S}`,
//! `QSTORE_HANDLE_CACHE`, `QSTORE_MAP_THRESHOLD`, `QSTORE_CACHE_DIR`, `QSTORE_REDIS_URL`, `QSTORE_COMPAT`. Unknown keys and bad values are errors that name the file or
//! variable, so a typo cannot silently leave the defaults in force.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::util::memcache::Limit;

/// The name of the configuration file inside a store.
pub const CONFIG_FILE: &str = crate::store::layout::CONFIG_FILE;

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

/// Tuning of an open [`Store`](crate::store::Store).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The in-memory cache of calendars (qlib's `H["c"]`).
    pub calendar_cache: CacheConfig,
    /// The in-memory cache of instrument lists (qlib's `H["i"]`).
    pub instrument_cache: CacheConfig,
    /// How many feature files stay mapped. Each costs one memory mapping (the kernel allows about 65,000 per
    /// process by default) and no file descriptor.
    pub handle_cache: NonZeroUsize,
    /// Files of at least this many bytes are memory-mapped; smaller ones are read into memory when opened
    /// (cheaper for daily-sized files). 0 maps every file.
    pub map_threshold: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            calendar_cache: CacheConfig::default(),
            instrument_cache: CacheConfig::default(),
            handle_cache: NonZeroUsize::new(16_384).expect("non-zero"),
            map_threshold: crate::store::bin::DEFAULT_MAP_THRESHOLD,
        }
    }
}

/// How reads use the expression cache (qstore.json `expression_cache.mode`, `qcache query --expr-cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Compute everything.
    Off,
    /// Use current entries (and behind ones for the rows they have); compute the rest; write nothing.
    #[default]
    Read,
    /// qlib's read-through: a missing or stale entry is computed, stored under its writer lock, and used.
    Write,
}

impl std::str::FromStr for CacheMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<CacheMode> {
        match s {
            "off" => Ok(CacheMode::Off),
            "read" => Ok(CacheMode::Read),
            "write" => Ok(CacheMode::Write),
            other => Err(bad(
                "the expression cache mode",
                format!("{other:?} is not a mode: use off, read or write"),
            )),
        }
    }
}

/// Whose rules expressions are evaluated by (qstore.json `compat`, `QSTORE_COMPAT`, `--compat`): the rules
/// themselves are in `expr` and docs/expressions.md ("qlib-compatible mode").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Compat {
    /// qstore's: every value independent of where a query starts, qlib's bugs fixed.
    #[default]
    None,
    /// qlib 0.9.7's own values where qstore deliberately differs (WMA, IdxMax/IdxMin with NaN in the
    /// window, the start-dependent EMA, exponential, expanding, `Ref(x, 0)` and `Delta`, and Slope, Rsquare
    /// and Resi after an infinity): for models trained on qlib's features.
    Qlib,
}

impl std::str::FromStr for Compat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Compat> {
        match s.trim() {
            "none" => Ok(Compat::None),
            "qlib" => Ok(Compat::Qlib),
            other => Err(bad(
                "the compatibility mode",
                format!("{other:?} is not a mode: use \"none\" or \"qlib\""),
            )),
        }
    }
}

/// The kind of writer lock of the caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum LockKind {
    /// Redis leases (`SET NX PX`), for writers on many machines.
    Redis,
    /// `flock` on a file beside the entry, for writers on one machine.
    File,
}

impl std::str::FromStr for LockKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<LockKind> {
        match s {
            "redis" => Ok(LockKind::Redis),
            "file" => Ok(LockKind::File),
            other => Err(bad(
                "the lock kind",
                format!("{other:?}: use \"redis\" or \"file\""),
            )),
        }
    }
}

/// Where the caches live and how their writers lock, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    /// The expression cache's directory.
    pub dir: PathBuf,
    /// Redis for the writer locks, and where the URL came from (for errors).
    pub redis_url: Option<(String, String)>,
    /// The lock kind asked for; `None`: Redis when a URL is set, else file locks.
    pub lock: Option<LockKind>,
    /// Lease of a Redis lock (checked to be from 1 s to a day).
    pub lease: Duration,
    /// How reads use the expression cache.
    pub mode: CacheMode,
}

/// Everything that configures a store, resolved once.
#[derive(Debug, Clone)]
pub struct Settings {
    pub store: StoreOptions,
    /// The in-memory cache of evaluated expressions per instrument and row range (qlib's `H["f"]`).
    pub feature_cache: CacheConfig,
    pub cache: CacheSettings,
    /// Whose rules expressions follow.
    pub compat: Compat,
}

/// Command-line values that override the file and the environment (`None`: not given).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub cache_dir: Option<PathBuf>,
    pub redis_url: Option<String>,
    pub lock: Option<LockKind>,
    pub lease_s: Option<f64>,
    pub mode: Option<CacheMode>,
    pub compat: Option<Compat>,
}

/// The expression cache's directory inside a store when nothing names another.
pub const DEFAULT_CACHE_DIR: &str = crate::store::layout::EXPR_CACHE_DIR;
/// The lease of a Redis writer lock when nothing sets one, and the range a lease may have, in seconds.
const DEFAULT_LEASE_S: f64 = 30.0;
const MIN_LEASE_S: f64 = 1.0;
const MAX_LEASE_S: f64 = 86_400.0;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    mem_cache: MemCaches,
    handle_cache: Option<usize>,
    map_threshold: Option<u64>,
    #[serde(default)]
    expression_cache: ExpressionCacheFile,
    compat: Option<String>,
}

/// The `expression_cache` section of qstore.json as written.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpressionCacheFile {
    dir: Option<PathBuf>,
    redis_url: Option<String>,
    lock: Option<String>,
    lease_s: Option<f64>,
    mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemCaches {
    calendar: Option<Unit>,
    instruments: Option<Unit>,
    features: Option<Unit>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Unit {
    limit: Option<usize>,
    limit_type: Option<String>,
    expire_s: Option<u64>,
}

fn bad(source: &str, reason: String) -> Error {
    Error::Config {
        source_name: source.to_owned(),
        reason,
    }
}

/// Applies one cache unit's settings (from the file, then the environment) over `base`.
fn unit(
    base: CacheConfig,
    file: Option<&Unit>,
    env_prefix: &str,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<CacheConfig> {
    let mut u = file.cloned().unwrap_or_default();
    let var = |name: &str| {
        let key = format!("{env_prefix}_{name}");
        env(&key).map(|v| (key, v))
    };
    if let Some((k, v)) = var("LIMIT") {
        u.limit = Some(
            v.trim()
                .parse()
                .map_err(|_| bad(&k, format!("{v:?} is not a whole number")))?,
        );
    }
    if let Some((_, v)) = var("LIMIT_TYPE") {
        u.limit_type = Some(v);
    }
    if let Some((k, v)) = var("EXPIRE_S") {
        u.expire_s = Some(
            v.trim()
                .parse()
                .map_err(|_| bad(&k, format!("{v:?} is not a number of seconds")))?,
        );
    }
    let current = match base.limit {
        Limit::Entries(n) | Limit::Bytes(n) => n,
    };
    let n = u.limit.unwrap_or(current);
    let limit = match u.limit_type.as_deref().map(str::trim) {
        None => match base.limit {
            Limit::Entries(_) => Limit::Entries(n),
            Limit::Bytes(_) => Limit::Bytes(n),
        },
        Some("length") => Limit::Entries(n),
        Some("bytes") => Limit::Bytes(n),
        Some(other) => {
            return Err(bad(
                path,
                format!("limit_type {other:?} of {env_prefix}: use \"length\" or \"bytes\""),
            ));
        }
    };
    let expiry = match u.expire_s {
        None => base.expiry,
        Some(0) => None,
        Some(s) => Some(Duration::from_secs(s)),
    };
    Ok(CacheConfig { limit, expiry })
}

impl Settings {
    /// The settings of the store at `root` (which need not exist yet): defaults, then its `qstore.json`, then
    /// the process's `QSTORE_*` variables, then `flags`.
    pub fn resolve(root: &Path, flags: &Overrides) -> Result<Settings> {
        Self::resolve_with(root, flags, &|k| std::env::var(k).ok())
    }

    /// [`resolve`](Self::resolve) with an environment of the caller's (tests).
    pub fn resolve_with(
        root: &Path,
        flags: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings> {
        let path = root.join(CONFIG_FILE);
        let file: File = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                bad(
                    &path.display().to_string(),
                    format!("line {} column {}: {e}", e.line(), e.column()),
                )
            })?,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                File::default()
            }
            Err(e) => return Err(Error::io("reading", &path, e)),
        };
        let shown = path.display().to_string();
        let d = StoreOptions::default();
        let num = |key: &str, from_file: Option<u64>, default: u64| -> Result<u64> {
            match env(key) {
                Some(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| bad(key, format!("{v:?} is not a whole number"))),
                None => Ok(from_file.unwrap_or(default)),
            }
        };
        let handle_cache = num(
            "QSTORE_HANDLE_CACHE",
            file.handle_cache.map(|n| n as u64),
            d.handle_cache.get() as u64,
        )?;
        let store = StoreOptions {
            calendar_cache: unit(
                d.calendar_cache,
                file.mem_cache.calendar.as_ref(),
                "QSTORE_MEMCACHE_CALENDAR",
                &shown,
                env,
            )?,
            instrument_cache: unit(
                d.instrument_cache,
                file.mem_cache.instruments.as_ref(),
                "QSTORE_MEMCACHE_INSTRUMENTS",
                &shown,
                env,
            )?,
            handle_cache: NonZeroUsize::new(handle_cache as usize)
                .ok_or_else(|| bad("handle_cache", "must be at least 1".into()))?,
            map_threshold: num("QSTORE_MAP_THRESHOLD", file.map_threshold, d.map_threshold)?,
        };
        let feature_cache = unit(
            CacheConfig::default(),
            file.mem_cache.features.as_ref(),
            "QSTORE_MEMCACHE_FEATURES",
            &shown,
            env,
        )?;
        let cache = Self::cache_section(root, &file.expression_cache, &shown, flags, env)?;
        let compat = match (flags.compat, env("QSTORE_COMPAT"), file.compat.as_deref()) {
            (Some(c), _, _) => c,
            (None, Some(c), _) => c.parse().map_err(|_| {
                bad(
                    "QSTORE_COMPAT",
                    format!("{c:?} is not a mode: use \"none\" or \"qlib\""),
                )
            })?,
            (None, None, Some(c)) => c
                .parse()
                .map_err(|_| bad(&shown, format!("compat {c:?}: use \"none\" or \"qlib\"")))?,
            (None, None, None) => Compat::default(),
        };
        Ok(Settings {
            store,
            feature_cache,
            cache,
            compat,
        })
    }

    /// The `expression_cache` section, each value from the flag, else the variable, else the file.
    fn cache_section(
        root: &Path,
        file: &ExpressionCacheFile,
        shown: &str,
        flags: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<CacheSettings> {
        let dir = match (&flags.cache_dir, env("QSTORE_CACHE_DIR"), &file.dir) {
            (Some(d), _, _) => d.clone(),
            (None, Some(d), _) => PathBuf::from(d),
            (None, None, Some(d)) => root.join(d),
            (None, None, None) => root.join(DEFAULT_CACHE_DIR),
        };
        let redis_url = match (&flags.redis_url, env("QSTORE_REDIS_URL"), &file.redis_url) {
            (Some(u), _, _) => Some((u.clone(), "--redis".to_string())),
            (None, Some(u), _) => Some((u, "QSTORE_REDIS_URL".to_string())),
            (None, None, Some(u)) => {
                Some((u.clone(), format!("{shown} expression_cache.redis_url")))
            }
            (None, None, None) => None,
        };
        let lock = match (flags.lock, file.lock.as_deref()) {
            (Some(k), _) => Some(k),
            (None, Some(k)) => Some(k.parse().map_err(|_| {
                bad(
                    shown,
                    format!("expression_cache.lock {k:?}: use \"redis\" or \"file\""),
                )
            })?),
            (None, None) => None,
        };
        let mode = match (flags.mode, file.mode.as_deref()) {
            (Some(m), _) => m,
            (None, Some(m)) => m.parse().map_err(|_| {
                bad(
                    shown,
                    format!("expression_cache.mode {m:?}: use \"off\", \"read\" or \"write\""),
                )
            })?,
            (None, None) => CacheMode::default(),
        };
        let (lease_s, from) = match (flags.lease_s, file.lease_s) {
            (Some(s), _) => (s, "--lease-s".to_string()),
            (None, Some(s)) => (s, format!("{shown} expression_cache.lease_s")),
            (None, None) => (DEFAULT_LEASE_S, String::new()),
        };
        // A writer renews its lease every third of it; below a second that is no margin at all, and Redis
        // refuses an expiry of 0.
        if !(lease_s.is_finite() && (MIN_LEASE_S..=MAX_LEASE_S).contains(&lease_s)) {
            return Err(bad(
                &format!("the lock lease ({from})"),
                format!(
                    "{lease_s} s is out of range; give a number of seconds from {MIN_LEASE_S} to {MAX_LEASE_S} (30 is usual)"
                ),
            ));
        }
        Ok(CacheSettings {
            dir,
            redis_url,
            lock,
            lease: Duration::from_secs_f64(lease_s),
            mode,
        })
    }
}
