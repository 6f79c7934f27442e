//! Store configuration: `<store>/qstore.json` (optional), then environment variables, then defaults.
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
//!   "expression_cache": { "dir": "features_cache", "redis_url": "redis://127.0.0.1:6379/0", "lock": "redis", "lease_s": 30 }
//! }
//! ```
//!
//! `limit_type` is `length` (entries) or `bytes`; `expire_s` 0 means never. Every key is optional. The
//! environment overrides the file: `QSTORE_MEMCACHE_{CALENDAR,INSTRUMENTS,FEATURES}_{LIMIT,LIMIT_TYPE,EXPIRE_S}`,
//! `QSTORE_HANDLE_CACHE`, `QSTORE_MAP_THRESHOLD`. Unknown keys and bad values are errors that name the file or
//! variable, so a typo cannot silently leave the defaults in force.

use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::store::{CacheConfig, StoreOptions};
use crate::util::memcache::Limit;

/// The name of the configuration file inside a store.
pub const CONFIG_FILE: &str = crate::store::layout::CONFIG_FILE;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    mem_cache: MemCaches,
    handle_cache: Option<usize>,
    map_threshold: Option<u64>,
    #[serde(default)]
    expression_cache: ExpressionCache,
}

/// Where the expression cache lives and how its writers lock (`qcache`, `qdump --warm/--update-caches`);
/// command-line flags and `QSTORE_CACHE_DIR` / `QSTORE_REDIS_URL` override these.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpressionCache {
    /// The cache directory (relative paths are relative to the store).
    pub dir: Option<std::path::PathBuf>,
    /// Redis for the writer locks, e.g. `redis://127.0.0.1:6379/0`.
    pub redis_url: Option<String>,
    /// `redis` or `file`.
    pub lock: Option<String>,
    /// Lease of a Redis lock, seconds.
    pub lease_s: Option<f64>,
    /// How reads use the cache: `off`, `read` (the default when the directory exists) or `write`.
    pub mode: Option<String>,
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

/// The options of the store at `root`: defaults, then `qstore.json`, then the environment.
pub fn load(root: &Path) -> Result<StoreOptions> {
    load_with(root, &|k| std::env::var(k).ok())
}

/// [`load`] with an environment of the caller's (tests).
pub fn load_with(root: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<StoreOptions> {
    let path = root.join(CONFIG_FILE);
    let file: File = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| {
            bad(
                &path.display().to_string(),
                format!("line {} column {}: {e}", e.line(), e.column()),
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
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
    if let Some(l) = file.expression_cache.lock.as_deref()
        && l != "redis"
        && l != "file"
    {
        return Err(bad(
            &shown,
            format!("expression_cache.lock {l:?}: use \"redis\" or \"file\""),
        ));
    }
    if let Some(m) = file.expression_cache.mode.as_deref()
        && m.parse::<crate::cache::expr::Mode>().is_err()
    {
        return Err(bad(
            &shown,
            format!("expression_cache.mode {m:?}: use \"off\", \"read\" or \"write\""),
        ));
    }
    Ok(StoreOptions {
        expression_cache: file.expression_cache.clone(),
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
        feature_cache: unit(
            d.feature_cache,
            file.mem_cache.features.as_ref(),
            "QSTORE_MEMCACHE_FEATURES",
            &shown,
            env,
        )?,
        handle_cache: NonZeroUsize::new(handle_cache as usize)
            .ok_or_else(|| bad("handle_cache", "must be at least 1".into()))?,
        map_threshold: num("QSTORE_MAP_THRESHOLD", file.map_threshold, d.map_threshold)?,
    })
}
