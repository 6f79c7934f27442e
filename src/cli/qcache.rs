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
use clap::{Args, Parser, Subcommand};

use super::{CacheArgs, progress_bar};
use crate::cache::expr::{DiskExpressionCache, Outcome};
use crate::dataset::{DiskCacheMode, DiskDatasetCache};
use crate::expr::Expr;
use crate::query::{Engine, output};
use crate::store::settings::{CacheMode, Compat, Settings};
use crate::{FeatureSet, Freq, Store, Timestamp, Universe, parse_timestamp};

#[derive(Parser)]
#[command(
    name = "qcache",
    version,
    about = "Compute and inspect expressions and caches of a qstore store",
    after_help = concat!(
        "Examples:
  qcache query store --fields '$close' 'Mean($close, 5)' --instruments SH600000
  qcache query store --feature-set alpha158 --format parquet --out alpha158.parquet
  qcache warm store --feature-set alpha158        # fill the expression cache
  qcache query store --feature-set alpha158 --cache-stats   # read it back
  qcache info store --json
  qcache verify store

",
        exit_codes!()
    )
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    global: super::Global,
}

#[derive(Subcommand)]
enum Command {
    /// Compute expressions (or a feature set) for instruments into the disk cache, in parallel.
    Warm(WarmArgs),
    /// Bring every cache entry and dataset forward to the store's calendar (new days, corrected sources).
    Update {
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Entries, instruments, expressions, size, stale entries, lock backend, in-memory cache settings.
    Info {
        #[command(flatten)]
        cache: CacheArgs,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Remove entries: of one instrument, of one expression, or all.
    Clear(ClearArgs),
    /// Check every entry (meta, data, checksum, lengths) and find orphans and temp files. Exit 5 on problems.
    Verify {
        #[command(flatten)]
        cache: CacheArgs,
    },
    #[command(flatten)]
    Integration(super::Integration),
    /// List this store's writer locks and delete those whose holder is gone (`--all --force`: every one).
    ResetLock(ResetLockArgs),
    /// Evaluate expressions or a feature set and print the values (rows by instrument, then date).
    Query(QueryArgs),
}

/// What to compute: expressions, or a feature set, for instruments of a market.
#[derive(Args)]
struct Selection {
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
    /// The frequency (calendar) to read: day, 1min, 5min, ...
    #[arg(long, default_value = "day")]
    freq: Freq,
    /// The market whose instruments `--instruments all` means (instruments/<market>.txt).
    #[arg(long, default_value = "all")]
    market: String,
}

#[derive(Args)]
struct WarmArgs {
    #[command(flatten)]
    cache: CacheArgs,
    #[command(flatten)]
    what: Selection,
    /// Build the dataset (STORE/dataset_cache, HDF5) of these instruments and expressions instead of
    /// per-instrument expression entries: what `qcache query --disk-cache use` then reads.
    #[arg(long)]
    dataset: bool,
}

#[derive(Args)]
struct ClearArgs {
    #[command(flatten)]
    cache: CacheArgs,
    /// Every entry of this instrument.
    #[arg(long)]
    instrument: Option<String>,
    /// Every entry of this expression (any spelling of it).
    #[arg(long)]
    expr: Option<String>,
    /// Every dataset (STORE/dataset_cache).
    #[arg(long)]
    datasets: bool,
    /// Every entry and every dataset.
    #[arg(long)]
    all: bool,
}

#[derive(Args)]
struct ResetLockArgs {
    #[command(flatten)]
    cache: CacheArgs,
    /// List what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Every lock, held or not (needs --force).
    #[arg(long)]
    all: bool,
    /// Confirms --all.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct QueryArgs {
    /// The store directory.
    store: PathBuf,
    #[command(flatten)]
    what: Selection,
    /// First date (YYYY-MM-DD), inclusive.
    #[arg(long, value_parser = parse_timestamp, value_name = "DATE")]
    start: Option<Timestamp>,
    /// Last date (YYYY-MM-DD), inclusive.
    #[arg(long, value_parser = parse_timestamp, value_name = "DATE")]
    end: Option<Timestamp>,
    /// The output format.
    #[arg(long, value_enum, default_value = "csv")]
    format: output::Format,
    /// Write here (replaced atomically) instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Instruments computed (and then written) at a time: memory against per-part overhead [default: as
    /// many as fit in about 128 MB of values].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    part_size: Option<u64>,
    /// Evaluate the query this many times in one process (a training loop's repeated reads), then print the
    /// in-memory caches' counters (hits, misses, evictions, bytes) to standard error.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Print the caches' counters to standard error at the end: the disk expression cache's hits, partial
    /// hits (rows computed past an entry's end), misses and writes, and the in-memory caches'.
    #[arg(long)]
    cache_stats: bool,
    /// Report on standard error as one JSON object: `left_out` (a feature set's optional features the store
    /// cannot give, each with the fields it lacks) and, with --cache-stats, the counters.
    #[arg(long)]
    json: bool,
    /// How the store's expression cache is used [default: qstore.json expression_cache.mode, else read].
    #[arg(long, value_enum)]
    expr_cache: Option<CacheMode>,
    /// Whose values: `qlib` reproduces qlib 0.9.7's own where qstore deliberately differs (WMA,
    /// IdxMax/IdxMin with NaN in the window, EMA, exponential and expanding windows, Ref(x, 0) and Delta
    /// measured from --start as qlib does, Slope/Rsquare/Resi after an infinity), for models trained on
    /// qlib's features; those columns are computed, never read from the caches [default: QSTORE_COMPAT,
    /// else qstore.json compat, else none].
    #[arg(long, value_enum)]
    compat: Option<Compat>,
    /// qlib's `disk_cache`: whether to read the dataset cache (STORE/dataset_cache, HDF5); 0, 1 and 2 are
    /// accepted for skip, use and rebuild.
    #[arg(long, value_enum, default_value = "skip")]
    disk_cache: DiskCacheMode,
}

/// `qcache`'s entry point.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    super::finish("qcache", cli.global.apply().and_then(|()| run(cli)))
}

fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Warm(a) => warm(a),
        Command::Update { cache } => update(&cache),
        Command::Info { cache, json } => info(&cache, json),
        Command::Clear(a) => clear(a),
        Command::Verify { cache } => verify(&cache),
        Command::ResetLock(a) => reset_lock(a),
        Command::Query(a) => query(a),
        Command::Integration(i) => i.print(<Cli as clap::CommandFactory>::command()),
    }
}

/// The store (through an engine, with the settings the flags give) and its expression cache, with its locks.
fn open_cache(a: &CacheArgs) -> Result<(Engine, Arc<DiskExpressionCache>, Settings)> {
    let settings = a.settings(None)?;
    let engine = Engine::open_with(&a.store, settings.clone())?;
    let cache = cache_of(a, &settings)?;
    Ok((engine, cache, settings))
}

/// The expression cache the settings name, with its locks and the flags' wait.
fn cache_of(a: &CacheArgs, settings: &Settings) -> Result<Arc<DiskExpressionCache>> {
    let mut cache = DiskExpressionCache::open(&a.store, &settings.cache, false)?;
    cache.wait = Duration::from_secs_f64(a.wait_s);
    Ok(Arc::new(cache))
}

/// The store's dataset cache, locking as the expression cache does.
fn open_datasets(a: &CacheArgs, settings: &Settings) -> Result<DiskDatasetCache> {
    let mut cache = DiskDatasetCache::open(&a.store, &settings.cache, false)?;
    cache.wait = Duration::from_secs_f64(a.wait_s);
    Ok(cache)
}

/// `--instruments all` (every instrument of `market`, on its spans) or a list ([`super::name_list`]: names,
/// `@FILE`, patterns matched against `market`'s instruments), kept in `list`.
fn universe<'a>(
    store: &Store,
    instruments: &str,
    market: &'a str,
    list: &'a mut Vec<String>,
) -> Result<Universe<'a>> {
    match super::name_list("--instruments", instruments, || {
        Ok(store
            .instruments(market)?
            .symbols()
            .map(String::from)
            .collect())
    })? {
        None => Ok(Universe::Market(market)),
        Some(names) => {
            *list = names;
            Ok(Universe::List(list))
        }
    }
}

/// `Built: 3, Appended: 40` (unreadable entries as `Unreadable`).
fn outcomes(counts: &BTreeMap<Option<Outcome>, usize>) -> String {
    counts
        .iter()
        .map(|(o, n)| match o {
            Some(o) => format!("{o:?}: {n}"),
            None => format!("Unreadable (see qcache verify): {n}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn warm(a: WarmArgs) -> Result<u8> {
    let WarmArgs {
        cache,
        what:
            Selection {
                instruments,
                fields,
                feature_set,
                freq,
                market,
            },
        dataset,
    } = a;
    let (engine, exprcache, settings) = open_cache(&cache)?;
    let set = feature_set
        .as_deref()
        .map(FeatureSet::resolve)
        .transpose()?;
    let mut list = Vec::new();
    let universe = universe(engine.store(), &instruments, &market, &mut list)?;
    // A feature set's optional features the store lacks are left out (and said), as `query` does.
    let exprs: Vec<String> = match &set {
        Some(set) => {
            let (chosen, left_out) = engine.feature_set_plan(universe, set, freq)?;
            for line in crate::query::left_out_lines(&left_out) {
                errln!("qcache warm: {line}");
            }
            chosen.into_iter().map(|f| f.expr.clone()).collect()
        }
        None => fields,
    };
    if dataset {
        let t = std::time::Instant::now();
        let outcome =
            open_datasets(&cache, &settings)?.warm(&engine, universe, &exprs, freq, false)?;
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
        .map(|e| crate::expr::parse(e))
        .collect::<crate::Result<_>>()?;
    let symbols = universe.symbols(engine.store())?;
    let per = parsed
        .iter()
        .filter(|e| !matches!(e, Expr::Field(_)))
        .count();
    let bar = progress_bar((per * symbols.len()) as u64);
    let counts = cache.warm_all(engine.store(), &symbols, &parsed, freq, &|| bar.inc(1))?;
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

fn update(args: &CacheArgs) -> Result<u8> {
    let (engine, cache, settings) = open_cache(args)?;
    let counts = cache.update_all(engine.store())?;
    let total: usize = counts.values().sum();
    outln!("qcache update: {total} entries: {}", outcomes(&counts))?;
    let datasets = open_datasets(args, &settings)?;
    if datasets.dir().is_dir() {
        let counts = datasets.update_all(&engine)?;
        let total: usize = counts.values().sum();
        outln!("qcache update: {total} datasets: {}", outcomes(&counts))?;
    }
    Ok(0)
}

fn info(args: &CacheArgs, json: bool) -> Result<u8> {
    let (engine, cache, settings) = open_cache(args)?;
    let store = engine.store();
    // The lease the locks use (flag, qstore.json, default), not the flag's default alone.
    let cache_lease = settings.cache.lease.as_secs_f64();
    let datasets = open_datasets(args, &settings)?;
    let sets = datasets.entries()?;
    let sets_unreadable = sets.iter().filter(|(_, m)| m.is_none()).count();
    let sets_behind = datasets.behind(store)?;
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
    let staleness = cache.stale(store)?;
    let (stale, unreadable) = (staleness.behind + staleness.corrected, staleness.unreadable);
    let size = crate::store::fsio::dir_size(cache.dir());
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
    // The shape of qstore.json's `mem_cache` entries, not Rust's debug text.
    let mem = |c: crate::store::CacheConfig| {
        let (limit, limit_type) = match c.limit {
            crate::util::memcache::Limit::Entries(n) => (n, "length"),
            crate::util::memcache::Limit::Bytes(n) => (n, "bytes"),
        };
        serde_json::json!({"limit": limit, "limit_type": limit_type, "expire_s": c.expiry.map(|d| d.as_secs())})
    };
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
        "threads": rayon::current_num_threads(),
        "oldest": oldest,
        "newest": newest,
        "datasets": {
            "dir": datasets.dir().display().to_string(),
            "count": sets.len(),
            "rows": sets_rows,
            "size_mb": crate::store::fsio::dir_size(datasets.dir()) as f64 / 1e6,
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
            "calendar": mem(settings.store.calendar_cache),
            "instruments": mem(settings.store.instrument_cache),
            "features": mem(settings.feature_cache),
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
        outln!("threads   {}", rayon::current_num_threads())?;
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

fn clear(a: ClearArgs) -> Result<u8> {
    let ClearArgs {
        cache: args,
        instrument,
        expr,
        datasets,
        all,
    } = a;
    if instrument.is_none() && expr.is_none() && !datasets && !all {
        bail!("say what to clear: --instrument SYMBOL, --expr EXPRESSION, --datasets, or --all");
    }
    let settings = args.settings(None)?;
    if datasets || all {
        let n = open_datasets(&args, &settings)?.clear(|_| true, true)?;
        outln!("qcache clear: {n} datasets removed")?;
        if !all && instrument.is_none() && expr.is_none() {
            return Ok(0);
        }
    }
    let cache = cache_of(&args, &settings)?;
    let canonical = expr
        .as_deref()
        .map(crate::expr::parse)
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

fn verify(args: &CacheArgs) -> Result<u8> {
    let (_engine, cache, settings) = open_cache(args)?;
    let mut problems = cache.verify()?;
    problems.extend(open_datasets(args, &settings)?.verify()?);
    for p in &problems {
        outln!("{p}")?;
    }
    outln!("qcache verify: {} problems", problems.len())?;
    Ok(if problems.is_empty() { 0 } else { 5 })
}

fn reset_lock(a: ResetLockArgs) -> Result<u8> {
    let ResetLockArgs {
        cache: cache_args,
        dry_run,
        all,
        force,
    } = a;
    if all && !force {
        bail!("--all deletes locks that running writers may hold; add --force to mean it");
    }
    let (_engine, cache, settings) = open_cache(&cache_args)?;
    let datasets = open_datasets(&cache_args, &settings)?;
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

fn query(a: QueryArgs) -> Result<u8> {
    let QueryArgs {
        store,
        what:
            Selection {
                instruments,
                fields,
                feature_set,
                freq,
                market,
            },
        start,
        end,
        format,
        out,
        part_size,
        repeat,
        cache_stats,
        json,
        expr_cache,
        compat,
        disk_cache,
    } = a;
    let settings = Settings::resolve(
        &store,
        &crate::store::settings::Overrides {
            mode: expr_cache,
            compat,
            ..Default::default()
        },
    )?;
    let engine = Engine::open_with(&store, settings.clone())?;
    let mut list = Vec::new();
    let universe = universe(engine.store(), &instruments, &market, &mut list)?;
    let set = feature_set
        .as_deref()
        .map(FeatureSet::resolve)
        .transpose()?;
    // The dataset cache, when one is asked for.
    let disk = match disk_cache {
        DiskCacheMode::Skip => None,
        mode => Some((
            DiskDatasetCache::open(&store, &settings.cache, false)?,
            mode,
        )),
    };
    if out.is_none() && format.is_binary() && std::io::stdout().is_terminal() {
        bail!(
            "--format {} is binary: write it to a file (--out FILE) or a pipe",
            format.name()
        );
    }
    let path = out.clone().unwrap_or_else(|| PathBuf::from("-"));
    // What to compute and how the columns are named: a feature set's features this store can give (the
    // optional ones it cannot are said before the work starts), or the expressions as given.
    let (exprs, columns, left_out) = match &set {
        Some(set) => {
            let (chosen, left_out) = engine.feature_set_plan(universe, set, freq)?;
            let exprs: Vec<String> = chosen.iter().map(|f| f.expr.clone()).collect();
            let names: Vec<String> = chosen.iter().map(|f| f.name.clone()).collect();
            (exprs, names, left_out)
        }
        None => (fields.clone(), fields, Vec::new()),
    };
    if !json {
        for line in crate::query::left_out_lines(&left_out) {
            errln!("qcache query: {line}");
        }
    }
    match disk {
        // The dataset cache gives the whole frame at once.
        Some((datasets, mode)) => {
            let run = || datasets.dataset(&engine, universe, &exprs, start, end, freq, mode);
            for _ in 1..repeat {
                run()?;
            }
            let mut frame = run()?;
            frame.rename_columns(columns.clone());
            let frame = frame.to_columns();
            let header = output::Header {
                columns,
                instruments: frame.instruments().to_vec(),
                freq,
                path,
            };
            emit(out.as_deref(), format, header, |each| each(frame))?;
        }
        // Everything else is computed and written part by part: one part is held at a time.
        None => {
            // The query's checks (expressions, fields) before anything is written: an empty part of it.
            engine.features_by_column(Universe::Part(&universe, &[]), &exprs, start, end, freq)?;
            let part_size = match part_size {
                Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
                None => engine.part_size(columns.len(), start, end, freq)?,
            };
            let run = |each: &mut dyn FnMut(crate::ColumnFrame) -> crate::Result<()>| {
                engine.features_in_parts(
                    universe,
                    &exprs,
                    start,
                    end,
                    freq,
                    part_size,
                    |mut part| {
                        part.rename_columns(columns.clone());
                        each(part)
                    },
                )
            };
            for _ in 1..repeat {
                run(&mut |_| Ok(()))?;
            }
            let header = output::Header {
                columns: columns.clone(),
                instruments: engine.instruments_of(universe, start, end, freq)?,
                freq,
                path,
            };
            emit(out.as_deref(), format, header, run)?;
        }
    }
    if json {
        let mut report = if cache_stats || repeat > 1 {
            engine.cache_stats().to_json()
        } else {
            serde_json::json!({})
        };
        report["left_out"] = serde_json::to_value(&left_out)?;
        errln!("{report}");
    } else if cache_stats || repeat > 1 {
        let s = engine.cache_stats();
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
    Ok(0)
}

/// Writes a query's parts, as `produce` hands them out, in `format` to `out` (replaced atomically: a failed
/// query leaves no file) or to standard output.
fn emit(
    out: Option<&std::path::Path>,
    format: output::Format,
    header: output::Header,
    produce: impl FnOnce(&mut dyn FnMut(crate::ColumnFrame) -> crate::Result<()>) -> crate::Result<()>,
) -> Result<()> {
    match out {
        Some(path) => crate::store::fsio::replace_atomic_with(path, |w| {
            output::write_parts(output::sink(format, w, header)?, produce)
        })
        .with_context(|| format!("writing {}", path.display())),
        None => {
            let w = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
            Ok(output::write_parts(
                output::sink(format, w, header)?,
                produce,
            )?)
        }
    }
}
