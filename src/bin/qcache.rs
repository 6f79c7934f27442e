//! `qcache`: compute and inspect derived data of a qstore store.
//!
//! Exit codes: 0 success; 1 the command failed (bad expression, unknown field, missing store, unreachable
//! Redis, I/O); 2 bad command-line usage; 5 `verify` found problems (listed).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use qstore::cache::expr::DiskExpressionCache;
use qstore::dataset::DiskDatasetCache;
use qstore::expr::Expr;
use qstore::{FeatureSet, Frame, Freq, Store, Timestamp, Universe, parse_timestamp};

/// `eprintln!` for reports (counters) that must not panic when stderr is closed.
macro_rules! errln {
    ($($arg:tt)*) => {{
        // Counters on stderr are a report, not the command's output: a closed stderr is ignored.
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// `println!` that returns the write error instead of panicking, so a closed pipe (`| head`) ends the command
/// quietly (main turns `BrokenPipe` into exit 0).
macro_rules! outln {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)
    };
}

#[derive(Parser)]
#[command(
    name = "qcache",
    version,
    about = "Compute and inspect expressions and caches of a qstore store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, ValueEnum)]
enum Format {
    /// `instrument,datetime,<columns>`; NaN is an empty cell.
    Csv,
    /// One JSON object per row and line; NaN is null.
    Json,
    /// Per column: rows, NaN count, mean, min, max (a quick look at a large query).
    Stats,
}

#[derive(Copy, Clone, ValueEnum, PartialEq)]
enum ExprCacheArg {
    Off,
    Read,
    Write,
}

#[derive(Copy, Clone, ValueEnum, PartialEq)]
enum LockKind {
    /// Redis leases (`--redis` or QSTORE_REDIS_URL): every machine that shares the store.
    Redis,
    /// File locks next to the entries: one machine.
    File,
}

/// Where the expression cache is and how its writers lock.
#[derive(clap::Args, Clone)]
struct CacheArgs {
    /// The store directory.
    store: PathBuf,
    /// The cache directory [default: STORE/features_cache].
    #[arg(long, env = "QSTORE_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Writer locks: redis when a Redis URL is configured, else file.
    #[arg(long, value_enum)]
    lock: Option<LockKind>,
    /// Redis for the writer locks, e.g. redis://127.0.0.1:6379/0.
    #[arg(long, env = "QSTORE_REDIS_URL")]
    redis: Option<String>,
    /// Lease of a Redis lock in seconds (renewed while the writer works; a killed writer's runs out)
    /// [default: qstore.json expression_cache.lease_s, else 30].
    #[arg(long)]
    lease_s: Option<f64>,
    /// How long a writer waits for another writer of the same entry, in seconds.
    #[arg(long, default_value_t = 600.0)]
    wait_s: f64,
}

#[derive(Subcommand)]
enum Command {
    /// Compute expressions (or a feature set) for instruments into the disk cache, in parallel.
    Warm {
        #[command(flatten)]
        cache: CacheArgs,
        #[arg(long, default_value = "all")]
        instruments: String,
        #[arg(long, num_args = 1.., required_unless_present = "feature_set", conflicts_with = "feature_set")]
        fields: Vec<String>,
        #[arg(long)]
        feature_set: Option<String>,
        #[arg(long, default_value = "day")]
        freq: Freq,
        #[arg(long, default_value = "all")]
        market: String,
        /// Build the dataset (STORE/dataset_cache, HDF5) of these instruments and expressions instead of
        /// per-instrument expression entries: what `qcache query --disk-cache 1` then reads.
        #[arg(long)]
        dataset: bool,
    },
    /// Bring every cache entry and dataset forward to the store's calendar (new days, corrected sources).
    Update {
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Entries, instruments, expressions, size, stale entries, lock backend, in-memory cache settings.
    Info {
        #[command(flatten)]
        cache: CacheArgs,
        #[arg(long)]
        json: bool,
    },
    /// Remove entries: of one instrument, of one expression, or all.
    Clear {
        #[command(flatten)]
        cache: CacheArgs,
        #[arg(long)]
        instrument: Option<String>,
        #[arg(long)]
        expr: Option<String>,
        /// Every dataset (STORE/dataset_cache).
        #[arg(long)]
        datasets: bool,
        /// Every entry and every dataset.
        #[arg(long)]
        all: bool,
    },
    /// Check every entry (meta, data, checksum, lengths) and find orphans and temp files. Exit 5 on problems.
    Verify {
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// List this store's writer locks and delete those whose holder is gone (`--all --force`: every one).
    ResetLock {
        #[command(flatten)]
        cache: CacheArgs,
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        force: bool,
    },
    /// Evaluate expressions or a feature set and print the values (rows by instrument, then date).
    Query {
        /// The store directory.
        store: PathBuf,
        /// Comma-separated instruments, or `all` for every instrument of --market (rows restricted to their
        /// spans).
        #[arg(long, default_value = "all")]
        instruments: String,
        /// Expressions, one column each: --fields '$close' 'Mean($close, 5)'.
        #[arg(long, num_args = 1.., required_unless_present = "feature_set", conflicts_with = "feature_set")]
        fields: Vec<String>,
        /// A feature set: `alpha158`, `technical`, or the path of a JSON file of the same shape.
        #[arg(long)]
        feature_set: Option<String>,
        /// First date (YYYY-MM-DD), inclusive.
        #[arg(long, value_parser = parse_timestamp, value_name = "DATE")]
        start: Option<Timestamp>,
        /// Last date (YYYY-MM-DD), inclusive.
        #[arg(long, value_parser = parse_timestamp, value_name = "DATE")]
        end: Option<Timestamp>,
        #[arg(long, default_value = "day")]
        freq: Freq,
        #[arg(long, default_value = "all")]
        market: String,
        #[arg(long, value_enum, default_value = "csv")]
        format: Format,
        /// Write here (replaced atomically) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Evaluate the query this many times in one process (a training loop's repeated reads), then print the
        /// in-memory caches' counters (hits, misses, evictions, bytes) to standard error.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Print the caches' counters to standard error at the end: the disk expression cache's hits, partial
        /// hits (rows computed past an entry's end), misses and writes, and the in-memory caches'.
        #[arg(long)]
        cache_stats: bool,
        /// With --cache-stats: the counters as one JSON object.
        #[arg(long)]
        json: bool,
        /// How the store's expression cache is used: off (compute everything), read (current entries, and
        /// behind ones for the rows they have; the default when the cache exists), write (also store what is
        /// computed, under writer locks) [default: qstore.json expression_cache.mode, else read].
        #[arg(long, value_enum)]
        expr_cache: Option<ExprCacheArg>,
        /// qlib's `disk_cache`: 0 compute; 1 read the dataset cache (STORE/dataset_cache, HDF5), building the
        /// dataset first when it is missing or stale; 2 rebuild it, then read.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
        disk_cache: u8,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("qcache: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The caches named by the flags, else by the store's `qstore.json` (`expression_cache`), with their locks.
fn open_cache(a: &CacheArgs) -> Result<(Store, Arc<DiskExpressionCache>)> {
    let store = Store::open(&a.store)?;
    let dir = DiskExpressionCache::dir_for(&a.store, a.cache_dir.as_deref())?;
    let mut cache = DiskExpressionCache::new(&dir, lock_for(a, &dir)?);
    cache.wait = Duration::from_secs_f64(a.wait_s);
    Ok((store, Arc::new(cache)))
}

/// The store's dataset cache, locking as the expression cache does.
fn open_datasets(a: &CacheArgs) -> Result<DiskDatasetCache> {
    let dir = a.store.join(qstore::dataset::DATASET_DIR);
    let mut cache = DiskDatasetCache::new(&dir, lock_for(a, &dir)?);
    cache.wait = Duration::from_secs_f64(a.wait_s);
    Ok(cache)
}

fn lock_for(a: &CacheArgs, dir: &std::path::Path) -> Result<Box<dyn qstore::cache::lock::Lock>> {
    Ok(qstore::cache::lock::for_store(
        &a.store,
        dir,
        &lock_settings(a),
        false,
    )?)
}

/// The lock flags as the library's settings.
fn lock_settings(a: &CacheArgs) -> qstore::cache::lock::LockSettings {
    qstore::cache::lock::LockSettings {
        kind: a.lock.map(|k| match k {
            LockKind::Redis => "redis".to_string(),
            LockKind::File => "file".to_string(),
        }),
        redis_url: a
            .redis
            .clone()
            .map(|u| (u, "--redis / QSTORE_REDIS_URL".to_string())),
        lease_s: a.lease_s,
    }
}

/// `--instruments all` (every instrument of `market`, on its spans) or a comma-separated list (kept in `list`).
fn universe<'a>(
    instruments: &str,
    market: &'a str,
    list: &'a mut Vec<String>,
) -> Result<Universe<'a>> {
    if instruments == "all" {
        return Ok(Universe::Market(market));
    }
    *list = instruments
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if list.is_empty() {
        bail!("--instruments lists no instrument; give SH600000,SZ000001 or all");
    }
    Ok(Universe::List(list))
}

/// `Built: 3, Appended: 40` (unreadable entries as `Unreadable`).
fn outcomes(counts: &BTreeMap<Option<qstore::cache::expr::Outcome>, usize>) -> String {
    counts
        .iter()
        .map(|(o, n)| match o {
            Some(o) => format!("{o:?}: {n}"),
            None => format!("Unreadable (see qcache verify): {n}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn progress(n: u64) -> indicatif::ProgressBar {
    if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(n)
    } else {
        indicatif::ProgressBar::hidden()
    }
}

fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Warm {
            cache,
            instruments,
            fields,
            feature_set,
            freq,
            market,
            dataset,
        } => {
            let (store, exprcache) = open_cache(&cache)?;
            let set = feature_set
                .as_deref()
                .map(FeatureSet::resolve)
                .transpose()?;
            let exprs: Vec<String> = match &set {
                Some(set) => set.features.iter().map(|f| f.expr.clone()).collect(),
                None => fields,
            };
            if dataset {
                let mut list = Vec::new();
                let universe = universe(&instruments, &market, &mut list)?;
                // A feature set's optional features the store lacks are left out, as `query` does.
                let exprs: Vec<String> = match &set {
                    Some(set) => store
                        .feature_set_columns(universe, set, freq)?
                        .into_iter()
                        .map(|f| f.expr.clone())
                        .collect(),
                    None => exprs,
                };
                let t = std::time::Instant::now();
                let outcome = open_datasets(&cache)?.warm(&store, universe, &exprs, freq, false)?;
                outln!(
                    "qcache warm: dataset of {} expressions: {outcome:?} in {:.1} s",
                    exprs.len(),
                    t.elapsed().as_secs_f64()
                )?;
                return Ok(0);
            }
            let cache = exprcache;
            let parsed: Vec<Expr> = exprs
                .iter()
                .map(|e| qstore::expr::parse(e))
                .collect::<qstore::Result<_>>()?;
            let symbols: Vec<String> = if instruments == "all" {
                store
                    .instruments(&market)?
                    .symbols()
                    .map(String::from)
                    .collect()
            } else {
                instruments
                    .split(',')
                    .map(|s| s.trim().to_uppercase())
                    .filter(|s| !s.is_empty())
                    .collect()
            };
            let per = parsed
                .iter()
                .filter(|e| !matches!(e, Expr::Field(_)))
                .count();
            let bar = progress((per * symbols.len()) as u64);
            let counts = cache.warm_all(&store, &symbols, &parsed, freq, &|| bar.inc(1))?;
            bar.finish_and_clear();
            outln!(
                "qcache warm: {} entries ({} instruments x {per} expressions): {}",
                per * symbols.len(),
                symbols.len(),
                counts
                    .iter()
                    .map(|(o, n)| format!("{o:?}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
            Ok(0)
        }
        Command::Update { cache: args } => {
            let (store, cache) = open_cache(&args)?;
            let counts = cache.update_all(&store)?;
            let total: usize = counts.values().sum();
            outln!("qcache update: {total} entries: {}", outcomes(&counts))?;
            let datasets = open_datasets(&args)?;
            if datasets.dir().is_dir() {
                let counts = datasets.update_all(&store)?;
                let total: usize = counts.values().sum();
                outln!("qcache update: {total} datasets: {}", outcomes(&counts))?;
            }
            Ok(0)
        }
        Command::Info { cache: args, json } => {
            // The lease the locks use (flag, qstore.json, default), not the flag's default alone.
            let cache_lease =
                qstore::cache::lock::lease(&args.store, &lock_settings(&args))?.as_secs_f64();
            let (store, cache) = open_cache(&args)?;
            let datasets = open_datasets(&args)?;
            let sets = datasets.entries()?;
            let sets_unreadable = sets.iter().filter(|(_, m)| m.is_none()).count();
            let sets_behind = datasets.behind(&store)?;
            let sets_rows: usize = sets
                .iter()
                .filter_map(|(_, m)| m.as_ref())
                .map(|m| m.rows)
                .sum();
            let entries = cache.entries()?;
            let mut instruments = std::collections::BTreeSet::new();
            let mut exprs = std::collections::BTreeSet::new();
            for m in entries.iter().filter_map(|(_, m)| m.as_ref()) {
                instruments.insert(m.instrument.clone());
                exprs.insert(m.expr.clone());
            }
            // Stale as a read sees it: behind the calendar, or built from values corrected since.
            let staleness = cache.stale(&store)?;
            let (stale, unreadable) =
                (staleness.behind + staleness.corrected, staleness.unreadable);
            let size = qstore::store::fsio::dir_size(cache.dir());
            // When the oldest and newest entries were published (their metas' modification times).
            let times: Vec<std::time::SystemTime> = entries
                .iter()
                .filter_map(|(p, _)| std::fs::metadata(p).and_then(|m| m.modified()).ok())
                .collect();
            let stamp = |t: Option<&std::time::SystemTime>| {
                t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .and_then(|d| chrono::DateTime::from_timestamp(d.as_secs() as i64, 0))
                    .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            };
            let (oldest, newest) = (stamp(times.iter().min()), stamp(times.iter().max()));
            let opts = qstore::store::settings::load(store.root())?;
            let mem = |c: qstore::store::CacheConfig| serde_json::json!({"limit": format!("{:?}", c.limit), "expire_s": c.expiry.map(|d| d.as_secs())});
            let v = serde_json::json!({
                "cache_dir": cache.dir().display().to_string(),
                "entries": entries.len(),
                "instruments": instruments.len(),
                "expressions": exprs.len(),
                "size_mb": size as f64 / 1e6,
                "stale_entries": stale,
                "stale_by_reason": {"behind": staleness.behind, "corrected": staleness.corrected},
                "unreadable_entries": unreadable,
                "lock": cache.lock_backend().describe(),
                "lease_s": cache_lease,
                "oldest": oldest,
                "newest": newest,
                "datasets": {
                    "dir": datasets.dir().display().to_string(),
                    "count": sets.len(),
                    "rows": sets_rows,
                    "size_mb": qstore::store::fsio::dir_size(datasets.dir()) as f64 / 1e6,
                    "stale": sets_behind,
                    "unreadable": sets_unreadable,
                    "available": DiskDatasetCache::available(),
                    "list": sets.iter().filter_map(|(p, m)| m.as_ref().map(|m| serde_json::json!({
                        "meta": p.display().to_string(),
                        "universe": m.universe,
                        "fields": m.fields.len(),
                        "freq": m.freq,
                        "rows": m.rows,
                        "last_date": m.last_date,
                        "generation": m.generation,
                    }))).collect::<Vec<_>>(),
                },
                "memcache": {
                    "calendar": mem(opts.calendar_cache),
                    "instruments": mem(opts.instrument_cache),
                    "features": mem(opts.feature_cache),
                },
            });
            if json {
                outln!("{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                outln!("cache     {}", cache.dir().display())?;
                outln!(
                    "entries   {} ({} instruments, {} expressions), {:.1} MB, {stale} stale, {unreadable} unreadable",
                    entries.len(),
                    instruments.len(),
                    exprs.len(),
                    size as f64 / 1e6
                )?;
                outln!(
                    "lock      {} (lease {cache_lease} s)",
                    cache.lock_backend().describe()
                )?;
                outln!(
                    "published {} .. {}",
                    oldest.as_deref().unwrap_or("-"),
                    newest.as_deref().unwrap_or("-")
                )?;
                outln!(
                    "datasets  {} in {} ({sets_rows} rows), {:.1} MB, {sets_behind} stale, {sets_unreadable} unreadable{}",
                    sets.len(),
                    datasets.dir().display(),
                    v["datasets"]["size_mb"].as_f64().unwrap_or(0.0),
                    if DiskDatasetCache::available() {
                        ""
                    } else {
                        " (this build has no HDF5)"
                    }
                )?;
                for (p, m) in sets.iter().take(20) {
                    if let Some(m) = m {
                        let universe = match m.universe.as_slice() {
                            [one] => one.clone(),
                            list => format!("{} instruments", list.len()),
                        };
                        outln!(
                            "  {}  {universe}, {} expressions, {} rows to {} ({})",
                            p.file_stem().and_then(|s| s.to_str()).unwrap_or("?"),
                            m.fields.len(),
                            m.rows,
                            m.last_date.as_deref().unwrap_or("-"),
                            m.freq
                        )?;
                    }
                }
                outln!("memcache  {} (per process)", v["memcache"])?;
            }
            Ok(0)
        }
        Command::Clear {
            cache: args,
            instrument,
            expr,
            datasets,
            all,
        } => {
            if instrument.is_none() && expr.is_none() && !datasets && !all {
                bail!(
                    "say what to clear: --instrument SYMBOL, --expr EXPRESSION, --datasets, or --all"
                );
            }
            if datasets || all {
                let n = open_datasets(&args)?.clear(|_| true, true)?;
                outln!("qcache clear: {n} datasets removed")?;
                if !all && instrument.is_none() && expr.is_none() {
                    return Ok(0);
                }
            }
            let (_store, cache) = open_cache(&args)?;
            let canonical = expr
                .as_deref()
                .map(qstore::expr::parse)
                .transpose()?
                .map(|e| e.to_string());
            let inst = instrument.map(|i| i.to_uppercase());
            let n = cache.clear(|m| {
                inst.as_ref().is_none_or(|i| &m.instrument == i)
                    && canonical.as_ref().is_none_or(|c| &m.expr == c)
            })?;
            outln!("qcache clear: {n} entries removed")?;
            Ok(0)
        }
        Command::Verify { cache: args } => {
            let (_store, cache) = open_cache(&args)?;
            let mut problems = cache.verify()?;
            problems.extend(open_datasets(&args)?.verify()?);
            for p in &problems {
                outln!("{p}")?;
            }
            outln!("qcache verify: {} problems", problems.len())?;
            Ok(if problems.is_empty() { 0 } else { 5 })
        }
        Command::ResetLock {
            cache: cache_args,
            dry_run,
            all,
            force,
        } => {
            if all && !force {
                bail!("--all deletes locks that running writers may hold; add --force to mean it");
            }
            let (_store, cache) = open_cache(&cache_args)?;
            let datasets = open_datasets(&cache_args)?;
            // Redis lists every lock of the store once; file locks live next to each cache's files.
            let mut backends = vec![cache.lock_backend()];
            if datasets.lock_backend().describe() != cache.lock_backend().describe() {
                backends.push(datasets.lock_backend());
            }
            let mut held = Vec::new();
            for b in &backends {
                held.extend(b.list()?.into_iter().map(|h| (*b, h)));
            }
            let mut removed = 0;
            for (lock, h) in &held {
                let act = (h.holder_gone || all) && !dry_run;
                outln!(
                    "{}\t{}\t{}\t{}\t{}{}",
                    h.name,
                    h.owner,
                    h.age.map_or("-".to_string(), |a| format!(
                        "held {:.1} s",
                        a.as_secs_f64()
                    )),
                    h.remaining.map_or("-".to_string(), |r| format!(
                        "{:.1} s left",
                        r.as_secs_f64()
                    )),
                    if h.holder_gone {
                        "holder gone"
                    } else {
                        "holder may be running"
                    },
                    if act { " -> deleted" } else { "" }
                )?;
                if act && lock.remove(&h.name)? {
                    removed += 1;
                }
            }
            outln!(
                "qcache reset-lock: {} locks held, {removed} deleted ({})",
                held.len(),
                backends
                    .iter()
                    .map(|b| b.describe())
                    .collect::<Vec<_>>()
                    .join("; ")
            )?;
            Ok(0)
        }
        Command::Query {
            store,
            instruments,
            fields,
            feature_set,
            start,
            end,
            freq,
            market,
            format,
            out,
            repeat,
            cache_stats,
            json,
            expr_cache,
            disk_cache,
        } => {
            let mut store = Store::open(&store)?;
            if let Some(m) = expr_cache {
                store.use_expression_cache(match m {
                    ExprCacheArg::Off => qstore::cache::expr::Mode::Off,
                    ExprCacheArg::Read => qstore::cache::expr::Mode::Read,
                    ExprCacheArg::Write => qstore::cache::expr::Mode::Write,
                })?;
            }
            let store = store;
            let mut list = Vec::new();
            let universe = universe(&instruments, &market, &mut list)?;
            let set = feature_set
                .as_deref()
                .map(FeatureSet::resolve)
                .transpose()?;
            // The dataset cache and its mode, when one is asked for.
            let disk = match disk_cache {
                1 => Some(qstore::dataset::DiskCacheMode::Use),
                2 => Some(qstore::dataset::DiskCacheMode::Rebuild),
                _ => None,
            }
            .map(|mode| {
                Ok::<_, qstore::Error>((DiskDatasetCache::for_store(store.root(), false)?, mode))
            })
            .transpose()?;
            let run = || match (&set, &disk) {
                (Some(set), None) => store.feature_set(universe, set, start, end, freq),
                (None, None) => store.features(universe, &fields, start, end, freq),
                (Some(set), Some((datasets, mode))) => {
                    let chosen = store.feature_set_columns(universe, set, freq)?;
                    let exprs: Vec<&str> = chosen.iter().map(|f| f.expr.as_str()).collect();
                    let mut frame =
                        datasets.dataset(&store, universe, &exprs, start, end, freq, *mode)?;
                    frame.rename_columns(chosen.iter().map(|f| f.name.clone()).collect());
                    Ok(frame)
                }
                (None, Some((datasets, mode))) => {
                    datasets.dataset(&store, universe, &fields, start, end, freq, *mode)
                }
            };
            let frame = run()?;
            for _ in 1..repeat {
                run()?;
            }
            if (cache_stats || repeat > 1) && json {
                let s = store.cache_stats();
                let v = serde_json::json!({
                    "expression_cache": s.disk,
                    "memcache": {"calendar": s.calendar, "instruments": s.instruments, "features": s.features},
                });
                errln!("{v}");
            } else if cache_stats || repeat > 1 {
                let s = store.cache_stats();
                match s.disk {
                    Some(d) => errln!(
                        "expression cache: {} hits, {} partial, {} misses, {} writes",
                        d.hits,
                        d.partial,
                        d.misses,
                        d.writes
                    ),
                    None => errln!("expression cache: not used"),
                }
                for (name, st) in [
                    ("calendar", s.calendar),
                    ("instruments", s.instruments),
                    ("features", s.features),
                ] {
                    errln!(
                        "memcache {name}: {} hits, {} misses, {} evictions, {} expired, {} oversized, {} entries, {} bytes",
                        st.hits,
                        st.misses,
                        st.evictions,
                        st.expired,
                        st.oversized,
                        st.entries,
                        st.bytes
                    );
                }
            }
            match out {
                Some(path) => {
                    qstore::store::fsio::replace_atomic_with(&path, |w| write(&frame, format, w))
                        .with_context(|| format!("writing {}", path.display()))?
                }
                None => {
                    let mut w =
                        std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
                    write(&frame, format, &mut w)?;
                    w.flush()?;
                }
            }
            Ok(0)
        }
    }
}

fn write(frame: &Frame, format: Format, out: &mut impl Write) -> std::io::Result<()> {
    match format {
        // The I/O error itself (a closed pipe must stay recognisable as one).
        Format::Csv => frame.write_csv(out).map_err(|e| match e.into_kind() {
            csv::ErrorKind::Io(io) => io,
            other => std::io::Error::other(format!("{other:?}")),
        }),
        Format::Json => frame.write_json_lines(out),
        Format::Stats => frame.write_stats(out),
    }
}
