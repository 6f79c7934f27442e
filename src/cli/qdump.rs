//! `qdump`: build and inspect qstore stores.
//!
//! Exit codes: 0 success; 1 the command failed and nothing was changed (bad input, unreachable server, I/O);
//! 2 bad command-line usage; 3 `all` or `update` imported some symbols and skipped others (listed); 4 `all` could
//! import no symbol, so the target was left as it was. (`update` with nothing new exits 0.) 5 `check` found
//! problems (listed). 6 the data was written (the import or update is committed) but a later step failed:
//! `--warm`, `--update-caches`; the message says which and how to finish it.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::cache::expr::DiskExpressionCache;
use crate::dataset::DiskDatasetCache;
use crate::import::{self, ImportOptions, ImportSummary, OnDuplicate, Source, SymbolFormat};
use crate::query::Engine;
use crate::store::settings::{Overrides, Settings};
use crate::{Freq, Store, Timestamp, format_timestamp, parse_timestamp};
use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use parking_lot::Mutex;

#[derive(Parser)]
#[command(
    name = "qdump",
    version,
    about = "Build and inspect qlib-compatible qstore stores",
    after_help = concat!(
        "Examples:
  qdump all --csv fixtures/sample --to store                 # a store from CSV files (one per symbol)
  qdump all --mysql mysql://root@127.0.0.1/market --table stock_kline_data --to store
  qdump update --mysql mysql://root@127.0.0.1/market --to store   # after each close
  qdump check store --json
  qdump info store
  qdump show store --instruments SH600000 --fields close --start 2023-06-01

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
    /// Import K-lines from MySQL or CSV into a new store, switched in atomically at the end.
    All(AllArgs),
    /// Append the days after a store's last date from MySQL or CSV (crash-safe; run it after each close).
    Update(UpdateArgs),
    #[command(flatten)]
    Integration(super::Integration),
    /// Find bad data: unreadable files, files past the calendar or not starting at their span, missing fields,
    /// runs of missing days, price and volume steps, instruments without files and files without instruments.
    Check {
        /// The store directory.
        store: PathBuf,
        /// The frequency (calendar) to read: day, 1min, 5min, ...
        #[arg(long, default_value = "day")]
        freq: Freq,
        /// The market whose instruments are read (instruments/<market>.txt).
        #[arg(long, default_value = "all")]
        market: String,
        /// Fields every instrument must have.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "open,high,low,close,volume"
        )]
        required: Vec<String>,
        /// Report runs of at least this many missing bars inside a span [default: 5 for daily and longer bars,
        /// one trading day of intraday bars].
        #[arg(long)]
        nan_run: Option<usize>,
        /// Report bar-to-bar price changes above this fraction, on adjusted prices (see --prices) [default: 0.5
        /// for daily bars, scaled by 1/sqrt(bars a day): 0.032 for 1min].
        #[arg(long)]
        price_step: Option<f64>,
        /// Stored prices are `raw` (adjusted = price x factor), `adjusted` (qlib's convention: factor gives
        /// back the raw price), or `auto`: decided per instrument by which is continuous where factor changes.
        #[arg(long, value_enum, default_value_t = crate::store::check::Prices::Auto)]
        prices: crate::store::check::Prices,
        /// Report bar-to-bar volume changes above this fraction (3 = +300%) [default: 3 for daily bars, scaled
        /// by sqrt(bars a day) for intraday bars: 46 for 1min].
        #[arg(long)]
        volume_step: Option<f64>,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print values of a store as tab-separated text: date, instrument, then one column per field.
    Show {
        /// The store directory.
        store: PathBuf,
        /// Comma-separated instruments, or `all` for every instrument of --market.
        #[arg(long, default_value = "all")]
        instruments: String,
        /// Comma-separated fields.
        #[arg(long, default_value = "open,high,low,close,volume")]
        fields: String,
        /// First date (YYYY-MM-DD), inclusive.
        #[arg(long, value_parser = parse_timestamp, value_name = "DATE")]
        start: Option<Timestamp>,
        /// Last date (YYYY-MM-DD), inclusive.
        #[arg(long, value_parser = parse_timestamp, value_name = "DATE")]
        end: Option<Timestamp>,
        /// The frequency (calendar) to read: day, 1min, 5min, ...
        #[arg(long, default_value = "day")]
        freq: Freq,
        /// The market whose instruments are read (instruments/<market>.txt).
        #[arg(long, default_value = "all")]
        market: String,
    },
    /// What a store holds: its calendars (days, first, last), markets, instruments, fields, last update and
    /// size on disk, without reading values.
    Info {
        /// The store directory.
        store: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List a store's trading days, instruments or fields, one per line (qlib's D.calendar and
    /// D.list_instruments). Example: `qdump ls instruments STORE --market csi300 --start 2023-01-01`.
    Ls {
        /// What to list.
        what: LsWhat,
        /// The store directory.
        store: PathBuf,
        /// The frequency (calendar) to read: day, 1min, 5min, ...
        #[arg(long, default_value = "day")]
        freq: Freq,
        /// For `instruments`: the market (instruments/<market>.txt).
        #[arg(long, default_value = "all")]
        market: String,
        /// For `fields`: one instrument's fields (default: every field any instrument has).
        #[arg(long)]
        instrument: Option<String>,
        /// First date (YYYY-MM-DD), inclusive: days from it on, instruments trading from it on.
        #[arg(long, value_parser = parse_timestamp, value_name = "DATE")]
        start: Option<Timestamp>,
        /// Last date (YYYY-MM-DD), inclusive.
        #[arg(long, value_parser = parse_timestamp, value_name = "DATE")]
        end: Option<Timestamp>,
    },
}

/// What `qdump ls` lists.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LsWhat {
    /// The trading days of --freq.
    Calendar,
    /// The instruments of --market trading at some point in [--start, --end].
    Instruments,
    /// The fields of --instrument, or of any instrument.
    Fields,
}

#[derive(Args)]
struct UpdateArgs {
    #[command(flatten)]
    common: SourceArgs,
    /// Also read rows from this date on (YYYY-MM-DD): rows for days already stored are corrections, written
    /// where their values differ. Default: only the days after the store's last date.
    #[arg(long, value_parser = parse_timestamp, value_name = "DATE")]
    since: Option<Timestamp>,
    /// Then bring the store's expression cache (STORE/features_cache) forward too, as `qcache update` does
    /// (writer locks: Redis when QSTORE_REDIS_URL is set, else file locks).
    #[arg(long)]
    update_caches: bool,
}

/// `qdump all`: the shared flags, and what only a whole import has.
#[derive(Args)]
struct AllArgs {
    #[command(flatten)]
    common: SourceArgs,
    /// First date to import (YYYY-MM-DD), inclusive (`--start-date` is the old spelling).
    #[arg(long = "start", alias = "start-date", value_parser = parse_timestamp, value_name = "DATE")]
    start_date: Option<Timestamp>,
    /// Replace an existing store at --to (where a link points, when --to is a symbolic link). Only what
    /// qstore wrote is deleted; qstore.json is kept.
    #[arg(long)]
    overwrite: bool,
    /// With --overwrite: carry files and directories qstore did not write into the new store (without it, a
    /// store holding such files is refused).
    #[arg(long, requires = "overwrite")]
    keep_unknown: bool,
    /// Then compute this feature set (`alpha158`, `technical`, or a JSON file) for every
    /// instrument into the expression cache (writer locks: Redis when QSTORE_REDIS_URL is set, else files).
    #[arg(long)]
    warm: Option<String>,
}

/// What `all` and `update` share: the source, its column mapping, the target store and how to report.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["mysql", "csv", "parquet"])))]
struct SourceArgs {
    /// mysql://user[:password]@host[:port]/database (password also from QSTORE_MYSQL_PASSWORD or --ask-password).
    #[arg(long)]
    mysql: Option<String>,
    /// A directory of per-symbol CSV files (file stem = symbol), or one CSV file (with a symbol column, or of
    /// one symbol).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Parquet: a directory of per-symbol files (file stem = symbol), or files with a symbol column (one
    /// file, or a directory of them, e.g. one per day). Dates as date, timestamp or text; fields numeric.
    #[arg(long)]
    parquet: Option<PathBuf>,
    /// The store directory: created (or replaced, with --overwrite) by `all`, extended by `update`.
    #[arg(long)]
    to: PathBuf,
    /// The K-line table (MySQL).
    #[arg(long, default_value = "stock_kline_data")]
    table: String,
    /// The symbol column.
    #[arg(long, default_value = "symbol")]
    symbol_column: String,
    /// The date column [default: trade_date for MySQL, date for CSV and Parquet].
    #[arg(long)]
    date_column: Option<String>,
    /// How text dates are written, as a strftime pattern: `%Y%m%d`, `%Y/%m/%d`, `%Y-%m-%dT%H:%M:%S`, ...
    /// [default: YYYY-MM-DD or YYYY-MM-DD HH:MM:SS]. For CSV, Parquet text and MySQL CHAR/VARCHAR date
    /// columns; typed dates need none.
    #[arg(long, value_parser = date_format, value_name = "PATTERN")]
    date_format: Option<import::DateFormat>,
    /// Comma-separated field columns [default: every numeric column but symbol, date, auto-increment ids and
    /// columns named as identifiers: id, *_id].
    #[arg(long, value_delimiter = ',')]
    fields: Option<Vec<String>>,
    /// Comma-separated columns to leave out of the default fields (each must be one).
    #[arg(
        long,
        value_delimiter = ',',
        conflicts_with = "fields",
        value_name = "COLUMNS"
    )]
    exclude_fields: Option<Vec<String>>,
    /// `all`, a comma-separated list (600000.SH,000001.SZ), or @FILE with one symbol per line.
    #[arg(long, default_value = "all")]
    symbols: String,
    /// Last date to import (YYYY-MM-DD), inclusive (`--end-date` is the old spelling).
    #[arg(long = "end", alias = "end-date", value_parser = parse_timestamp, value_name = "DATE")]
    end_date: Option<Timestamp>,
    /// Import only the first N symbols (to try things out).
    #[arg(long)]
    limit: Option<usize>,
    /// Bar frequency: day, 1min, 5min ... (minute data needs a datetime column).
    #[arg(long, default_value = "day")]
    freq: Freq,
    /// Name of the instruments file written (instruments/<market>.txt).
    #[arg(long, default_value = "all")]
    market: String,
    /// qlib: 600000.SH -> SH600000; raw: keep the source's spelling.
    #[arg(long, value_enum, default_value_t = SymbolFormat::Qlib)]
    symbol_format: SymbolFormat,
    /// Two rows of one symbol on one date: fail the symbol, or keep the first or last row.
    #[arg(long, value_enum, default_value_t = OnDuplicate::Error)]
    on_duplicate: OnDuplicate,
    /// MySQL connections scanning in parallel: over ranges of the table's auto-increment primary key (a whole
    /// table; one scan when it has no such key), or over ranges of the selected symbols (--symbols, --limit).
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// A MySQL table of trading days to take the calendar from (instead of the dates of the rows).
    #[arg(long)]
    calendar_table: Option<String>,
    /// The date column of --calendar-table [default: --date-column].
    #[arg(long)]
    calendar_column: Option<String>,
    /// Prompt for the MySQL password.
    #[arg(long)]
    ask_password: bool,
    /// Rows dated after this day fail their symbol (a date in the future would end every later update)
    /// [default: today].
    #[arg(long, value_parser = parse_timestamp, value_name = "DATE")]
    max_date: Option<Timestamp>,
    /// Wait for another writer of the same store (qdump update, qdump all --overwrite) to finish instead of
    /// failing at once.
    #[arg(long)]
    wait: bool,
    /// Print the summary as JSON on stdout (for scripts).
    #[arg(long)]
    json: bool,
}

/// `qdump`'s entry point.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    super::finish("qdump", cli.global.apply().and_then(|()| run(cli)))
}

fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::All(args) => all(args),
        Command::Update(args) => update(args),
        Command::Integration(i) => i.print(<Cli as clap::CommandFactory>::command()),
        Command::Check {
            store,
            freq,
            market,
            required,
            nan_run,
            price_step,
            prices,
            volume_step,
            json,
        } => {
            let s = Store::open(&store)?;
            let scaled = crate::store::check::CheckOptions::for_store(&s, freq)
                .with_context(|| format!("checking {}", store.display()))?;
            let opts = crate::store::check::CheckOptions {
                freq,
                market,
                required,
                nan_run: nan_run.unwrap_or(scaled.nan_run),
                price_step: price_step.unwrap_or(scaled.price_step),
                prices,
                volume_step: volume_step.unwrap_or(scaled.volume_step),
            };
            let report = crate::store::check::check(&s, &opts)
                .with_context(|| format!("checking {}", store.display()))?;
            let code = if report.findings.is_empty() { 0 } else { 5 };
            if json {
                let mut v = serde_json::to_value(&report)?;
                v["exit_code"] = serde_json::Value::from(code);
                v["thresholds"] = serde_json::json!({
                    "nan_run": opts.nan_run, "price_step": opts.price_step,
                    "volume_step": opts.volume_step, "unit": opts.freq.bars_word(),
                });
                outln!("{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                for f in &report.findings {
                    outln!(
                        "{}\t{}\t{}\t{}",
                        f.instrument,
                        f.field.as_deref().unwrap_or("-"),
                        f.kind,
                        f.detail
                    )?;
                }
                outln!(
                    "qdump check: {} instruments, {} files, {} findings (runs of {} missing {}, price steps over \
                     {:.3}, volume steps over {:.1})",
                    report.instruments,
                    report.files,
                    report.findings.len(),
                    opts.nan_run,
                    opts.freq.bars_word(),
                    opts.price_step,
                    opts.volume_step
                )?;
            }
            Ok(code)
        }
        Command::Show {
            store,
            instruments,
            fields,
            start,
            end,
            freq,
            market,
        } => {
            let store = Store::open(&store)?;
            let calendar = store.calendar(freq)?;
            let of_market = || -> Result<Vec<String>> {
                Ok(store
                    .instruments(&market)?
                    .symbols()
                    .map(str::to_owned)
                    .collect())
            };
            let instruments = match super::name_list("--instruments", &instruments, of_market)? {
                Some(list) => list,
                None => of_market()?,
            };
            let fields: Vec<String> = fields.split(',').map(|s| s.trim().to_owned()).collect();
            if instruments.is_empty() || fields.iter().any(String::is_empty) {
                bail!(
                    "--instruments and --fields must name at least one item each, without empty entries"
                );
            }
            // A name that is not in the store is an error, as in `qcache query`, not an empty table.
            let mut have: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
            for inst in &instruments {
                let f = store.fields_of(inst, freq)?;
                if f.is_empty() {
                    bail!(
                        "unknown instrument {inst}: the store has no features/{}/*.{freq}.bin; \
                         `qdump ls instruments {}` lists its instruments",
                        inst.to_lowercase(),
                        store.root().display()
                    );
                }
                have.extend(f);
            }
            if let Some(missing) = fields.iter().find(|f| !have.contains(f.as_str())) {
                bail!(
                    "unknown field {missing}: no instrument shown has it at {freq} (they have: {}); \
                     `qdump ls fields {}` lists the store's fields",
                    have.iter().cloned().collect::<Vec<_>>().join(", "),
                    store.root().display()
                );
            }
            let range = calendar.locate(start, end);
            let panel = store.panel(&instruments, &fields, freq, range)?;
            let (t_len, n, m) = panel.shape();
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            writeln!(out, "date\tinstrument\t{}", fields.join("\t"))?;
            for (i, instrument) in instruments.iter().enumerate().take(n) {
                for t in 0..t_len {
                    let row: Vec<f32> = (0..m).map(|f| panel.get(t, i, f)).collect();
                    if row.iter().all(|v| v.is_nan()) {
                        continue;
                    }
                    let date = calendar
                        .get(panel.start() + t)
                        .expect("panel is within the calendar");
                    write!(
                        out,
                        "{}\t{}",
                        format_timestamp(date, freq.date_only()),
                        instrument
                    )?;
                    for v in row {
                        write!(out, "\t{v}")?;
                    }
                    writeln!(out)?;
                }
            }
            out.flush()?;
            Ok(0)
        }
        Command::Info { store, json } => info(&store, json),
        Command::Ls {
            what,
            store,
            freq,
            market,
            instrument,
            start,
            end,
        } => ls(
            what,
            &store,
            freq,
            &market,
            instrument.as_deref(),
            start,
            end,
        ),
    }
}

/// `qdump info`.
fn info(store: &std::path::Path, json: bool) -> Result<u8> {
    let store = Store::open(store)?;
    let i = crate::store::info::info(&store)?;
    if json {
        outln!("{}", serde_json::to_string(&i)?)?;
        return Ok(0);
    }
    outln!("store       {}", i.path)?;
    for c in &i.calendars {
        let unit = c.freq.parse::<Freq>().map_or("bars", Freq::bars_word);
        outln!(
            "calendar    {}: {} {unit}, {} to {}",
            c.freq,
            c.days,
            c.first.as_deref().unwrap_or("-"),
            c.last.as_deref().unwrap_or("-")
        )?;
    }
    for (m, n) in &i.markets {
        outln!("market      {m}: {n} instruments")?;
    }
    outln!("instruments {} with data", i.instruments_with_data)?;
    for (freq, f) in &i.fields {
        outln!("fields      {freq}: {}", f.join(", "))?;
    }
    outln!(
        "last update {}",
        i.last_update.as_deref().unwrap_or("never (no calendar)")
    )?;
    outln!(
        "size        {:.1} MB of data, {:.1} MB of caches",
        i.data_bytes as f64 / 1e6,
        i.cache_bytes as f64 / 1e6
    )?;
    Ok(0)
}

/// `qdump ls`.
fn ls(
    what: LsWhat,
    store: &std::path::Path,
    freq: Freq,
    market: &str,
    instrument: Option<&str>,
    start: Option<Timestamp>,
    end: Option<Timestamp>,
) -> Result<u8> {
    let store = Store::open(store)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match what {
        LsWhat::Calendar => {
            let cal = store.calendar(freq)?;
            for d in &cal.dates()[cal.locate(start, end)] {
                writeln!(out, "{}", format_timestamp(*d, freq.date_only()))?;
            }
        }
        LsWhat::Instruments => {
            for sym in store.instruments(market)?.trading_between(start, end) {
                writeln!(out, "{sym}")?;
            }
        }
        LsWhat::Fields => {
            let fields = match instrument {
                Some(inst) => {
                    let f = store.fields_of(inst, freq)?;
                    if f.is_empty() {
                        bail!(
                            "unknown instrument {inst}: the store has no features/{}/*.{freq}.bin",
                            inst.to_lowercase()
                        );
                    }
                    f
                }
                None => crate::store::info::fields_by_freq(store.root())?
                    .1
                    .remove(&freq.to_string())
                    .unwrap_or_default(),
            };
            for f in fields {
                writeln!(out, "{f}")?;
            }
        }
    }
    out.flush()?;
    Ok(0)
}

fn symbols_arg(s: &str) -> Result<Option<Vec<String>>> {
    // The source's symbols are not known before it is read: names and @FILE, not patterns.
    super::name_list("--symbols", s, || {
        bail!(
            "--symbols takes names or @FILE, not patterns (the source's symbols are not listed before reading)"
        )
    })
}

fn all(all: AllArgs) -> Result<u8> {
    let a = &all.common;
    let (start, end) = (all.start_date, a.end_date);
    // Everything --warm needs is checked before the first write: the set, its expressions, the lock backend.
    let warm = all.warm.as_deref().map(prepare_warm).transpose()?;
    let settings = Settings::resolve(&a.to, &Overrides::default())?;
    if warm.is_some() {
        crate::cache::lock::check(&settings.cache).context("checking --warm's writer lock")?;
    }
    let source = open_source(a, start, end)?;
    let opts = import_options(a)?;
    let progress = Progress::new(source.symbol_count(), a.json);
    let replace = import::ReplaceOptions {
        overwrite: all.overwrite,
        keep_unknown: all.keep_unknown,
        wait: a.wait,
    };
    let summary = import::import(source.as_ref(), &a.to, &replace, &opts, &|rows| {
        progress.tick(rows)
    })
    .with_context(|| format!("importing into {}", a.to.display()))?;
    progress.finish();
    let code = if !summary.published {
        4
    } else if summary.failed.is_empty() {
        0
    } else {
        3
    };
    if a.json {
        let mut v = serde_json::to_value(&summary)?;
        v["store"] = serde_json::Value::from(a.to.display().to_string());
        v["exit_code"] = serde_json::Value::from(code);
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        print_summary(&summary, &a.to)?;
    }
    if let Some((set, exprs)) = &warm
        && summary.published
    {
        let warmed = (|| -> Result<_> {
            // Resolved again: the new store carries the old one's qstore.json, or none.
            let settings = Settings::resolve(&a.to, &Overrides::default())?;
            let store = Store::open_with(&a.to, settings.store)?;
            let cache = DiskExpressionCache::open(&a.to, &settings.cache, false)?;
            let symbols: Vec<String> = store
                .instruments(&a.market)?
                .symbols()
                .map(String::from)
                .collect();
            Ok(cache.warm_all(&store, &symbols, exprs, a.freq, &|| {})?)
        })();
        let counts = match warmed {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "qdump: error: warming the expression cache: {e:#}\nqdump: the store at {} was imported and published; run `qcache warm {} --feature-set {}` to fill the cache",
                    a.to.display(),
                    a.to.display(),
                    all.warm.as_deref().unwrap_or_default()
                );
                return Ok(AFTER_COMMIT);
            }
        };
        if !a.json {
            outln!(
                "expression cache: {} entries of {} ({})",
                counts.values().sum::<usize>(),
                set.name,
                counts
                    .iter()
                    .map(|(o, n)| format!("{o:?}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
        }
    }
    Ok(code)
}

/// Exit code: the data was written and published, a later step (cache warm or update) failed.
const AFTER_COMMIT: u8 = 6;

/// The feature set `--warm` names and its parsed expressions.
fn prepare_warm(name: &str) -> Result<(crate::FeatureSet, Vec<crate::expr::Expr>)> {
    let set = crate::FeatureSet::resolve(name).context("--warm")?;
    let exprs = set
        .features
        .iter()
        .map(|f| crate::expr::parse(&f.expr))
        .collect::<crate::Result<_>>()
        .with_context(|| format!("--warm {name}"))?;
    Ok((set, exprs))
}

fn update(u: UpdateArgs) -> Result<u8> {
    let a = &u.common;
    // Opened before the lock, so a directory that is not a store gets no lock file; nothing is read from it
    // until the lock is held (a Store loads its calendar when first asked).
    let settings = Settings::resolve(&a.to, &Overrides::default())?;
    let store = Store::open_with(&a.to, settings.store.clone())
        .with_context(|| format!("opening the store {}", a.to.display()))?;
    if u.update_caches {
        crate::cache::lock::check(&settings.cache).context(
            "checking the caches' writer lock for --update-caches (nothing was changed)",
        )?;
    }
    // The lock first: the days to read depend on the store as the lock holder sees it.
    let lock = import::update::UpdateLock::acquire(&a.to, a.wait)
        .with_context(|| format!("updating {}", a.to.display()))?;
    let start =
        import::update::first_new_row(&store, a.freq, u.since, &lock).with_context(|| {
            format!(
                "reading the calendar of {} (build the store with qdump all first)",
                a.to.display()
            )
        })?;
    drop(store);
    let end = a.end_date;
    let source = open_source(a, start, end)?;
    let opts = import_options(a)?;
    let progress = Progress::new(source.symbol_count(), a.json);
    let summary = import::update::update_locked(source.as_ref(), &a.to, &opts, &lock, &|rows| {
        progress.tick(rows)
    })
    .with_context(|| format!("updating {}", a.to.display()))?;
    drop(lock);
    progress.finish();
    let mut code = if summary.failed.is_empty() { 0 } else { 3 };
    // The caches: bring them forward, or say how far behind they now are. The update is committed: a failure
    // here is exit 6, with what to run.
    let caches = report_after_commit(&mut code, &a.to, "expression cache", || {
        let cache = DiskExpressionCache::open(&a.to, &settings.cache, !u.update_caches)?;
        if !cache.dir().is_dir() {
            return Ok(serde_json::Value::Null);
        }
        let store = Store::open_with(&a.to, settings.store.clone())?;
        Ok(if u.update_caches {
            let counts = cache
                .update_all(&store)
                .context("updating the expression cache")?;
            serde_json::json!({"updated": counts.values().sum::<usize>(), "behind": cache.behind(&store)?})
        } else {
            serde_json::json!({"behind": cache.behind(&store)?})
        })
    });
    let datasets = report_after_commit(&mut code, &a.to, "dataset cache", || {
        if !a.to.join(crate::dataset::DATASET_DIR).is_dir() {
            return Ok(serde_json::Value::Null);
        }
        let engine = Engine::open_with(&a.to, settings.clone())?;
        let sets = DiskDatasetCache::open(&a.to, &settings.cache, !u.update_caches)?;
        Ok(if u.update_caches {
            let counts = sets
                .update_all(&engine)
                .context("updating the dataset cache")?;
            serde_json::json!({"updated": counts.values().sum::<usize>(), "behind": sets.behind(engine.store())?})
        } else {
            serde_json::json!({"behind": sets.behind(engine.store())?})
        })
    });
    if a.json {
        let mut v = serde_json::to_value(&summary)?;
        v["expression_cache"] = caches;
        v["dataset_cache"] = datasets;
        v["store"] = serde_json::Value::from(a.to.display().to_string());
        v["exit_code"] = serde_json::Value::from(code);
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        outln!(
            "qdump update: {} {} added ({} .. {}), {} symbols appended, {} new listings, {} corrections, {} rows, {} failed{}",
            summary.days_added,
            a.freq.bars_word(),
            summary.first_new_day.as_deref().unwrap_or("-"),
            summary.last_day.as_deref().unwrap_or("-"),
            summary.symbols_appended,
            summary.new_listings.len(),
            summary.corrections,
            summary.rows,
            summary.failed.len(),
            if summary.recovered {
                "; cleaned up after a killed earlier run"
            } else {
                ""
            }
        )?;
        for f in &summary.failed {
            outln!("  failed {}: {}", f.symbol, f.reason)?;
        }
        for l in &summary.left_out {
            outln!("  {} rows left out: {}", l.rows, l.reason)?;
        }
        for c in &summary.columns_left_out {
            outln!("  column {} left out: {}", c.column, c.reason)?;
        }
        report_cache("expression cache", "entries", &caches)?;
        report_cache("dataset cache", "datasets", &datasets)?;
        outln!("elapsed {:.2} s", summary.elapsed_s)?;
    }
    Ok(code)
}

/// Runs a step after the update's commit; on failure prints what failed and what to run, sets exit code 6 and
/// reports `{"error": ...}`.
fn report_after_commit(
    code: &mut u8,
    store: &std::path::Path,
    name: &str,
    step: impl FnOnce() -> Result<serde_json::Value>,
) -> serde_json::Value {
    match step() {
        Ok(v) => v,
        Err(e) => {
            eprintln!(
                "qdump: error: {name}: {e:#}\nqdump: the update itself was committed; run `qcache update {}` to bring the caches forward",
                store.display()
            );
            *code = AFTER_COMMIT;
            serde_json::json!({ "error": format!("{e:#}") })
        }
    }
}

/// One line on what `update` did to a cache (`{"updated": n}`) or how far behind it left it.
fn report_cache(name: &str, unit: &str, v: &serde_json::Value) -> Result<()> {
    if let Some(n) = v.get("updated") {
        outln!("{name}: {n} {unit} brought forward")?;
    } else if let Some(n) = v.get("behind").and_then(|n| n.as_u64()).filter(|&n| n > 0) {
        outln!("{name}: {n} {unit} are now behind; run qcache update (or pass --update-caches)")?;
    }
    Ok(())
}

/// How rows become files, from the flags `all` and `update` share.
fn import_options(a: &SourceArgs) -> Result<ImportOptions> {
    Ok(ImportOptions {
        freq: a.freq,
        market: a.market.clone(),
        on_duplicate: a.on_duplicate,
        symbol_format: a.symbol_format,
        // Any time on that day.
        max_date: Some(ImportOptions::end_of(a.max_date)),
    })
}

/// The source the flags describe, for rows from `start` to `end`.
fn open_source(
    a: &SourceArgs,
    start: Option<Timestamp>,
    end: Option<Timestamp>,
) -> Result<Box<dyn Source>> {
    let origin = if let Some(url) = &a.mysql {
        let password = match std::env::var("QSTORE_MYSQL_PASSWORD") {
            Ok(p) => Some(p),
            Err(_) if a.ask_password => Some(
                rpassword::prompt_password("MySQL password: ").context("reading the password")?,
            ),
            Err(_) => None,
        };
        import::Origin::Mysql {
            url: url.clone(),
            password,
        }
    } else if let Some(path) = &a.parquet {
        import::Origin::Parquet(path.clone())
    } else {
        import::Origin::Csv(
            a.csv
                .clone()
                .expect("clap requires --mysql, --csv or --parquet"),
        )
    };
    let spec = import::SourceSpec {
        table: a.table.clone(),
        symbol_column: a.symbol_column.clone(),
        date_column: a.date_column.clone(),
        date_format: a.date_format.clone().unwrap_or_default(),
        fields: a.fields.clone(),
        exclude_fields: a.exclude_fields.clone(),
        symbols: symbols_arg(&a.symbols)?,
        limit: a.limit,
        connections: a.connections,
        calendar_table: a.calendar_table.clone(),
        calendar_column: a.calendar_column.clone(),
        ..import::SourceSpec::new(origin)
    };
    let source = spec.open(start, end);
    Ok(match (&spec.origin, source) {
        (import::Origin::Csv(path), Err(e)) => {
            return Err(e).with_context(|| format!("reading CSV input {}", path.display()));
        }
        (import::Origin::Parquet(path), Err(e)) => {
            return Err(e).with_context(|| format!("reading Parquet input {}", path.display()));
        }
        (_, s) => s?,
    })
}

/// `--date-format`, checked as clap parses it.
fn date_format(pattern: &str) -> std::result::Result<import::DateFormat, String> {
    import::DateFormat::new(pattern).map_err(|e| match e {
        crate::Error::Config { reason, .. } => reason,
        other => other.to_string(),
    })
}

fn print_summary(s: &ImportSummary, to: &std::path::Path) -> Result<()> {
    let total = s.symbols_ok + s.failed.len();
    outln!(
        "qdump all: {} of {total} symbols imported, {} failed; {} rows, {} fields, {} files",
        s.symbols_ok,
        s.failed.len(),
        s.rows,
        s.fields.len(),
        s.files
    )?;
    if let (Some(a), Some(b)) = (&s.calendar_first, &s.calendar_last) {
        outln!("calendar: {} bars, {a} .. {b}", s.calendar_len)?;
    }
    for f in &s.failed {
        outln!("  failed {}: {}", f.symbol, f.reason)?;
    }
    for l in &s.left_out {
        outln!("  {} rows left out: {}", l.rows, l.reason)?;
    }
    for c in &s.columns_left_out {
        outln!("  column {} left out: {}", c.column, c.reason)?;
    }
    if s.published {
        outln!(
            "store: {} ({:.1} MB), {:.2} s, {:.0} rows/s",
            to.display(),
            s.store_bytes as f64 / 1e6,
            s.elapsed_s,
            s.rows as f64 / s.elapsed_s.max(1e-9)
        )?;
    } else {
        if total == 0 {
            outln!("no rows matched the selection (symbols, dates)")?;
        }
        outln!("nothing was imported; {} was left as it was", to.display())?;
    }
    Ok(())
}

/// Progress on stderr: a bar on a terminal, a line every 5 s otherwise, nothing with --json.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    rows: AtomicU64,
    done: AtomicU64,
    total: Option<usize>,
    t0: Instant,
    last_line: Mutex<Instant>,
    quiet: bool,
}

impl Progress {
    /// `total`: the symbols to come, when the source knows them before it reads the rows.
    fn new(total: Option<usize>, quiet: bool) -> Progress {
        let quiet = quiet || super::quiet();
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let (bar, template) = match total {
                Some(n) => (
                    indicatif::ProgressBar::new(n as u64),
                    "{bar:40} {pos}/{len} symbols  {msg}  ETA {eta}",
                ),
                None => (
                    indicatif::ProgressBar::no_length(),
                    "{spinner} {pos} symbols  {msg}",
                ),
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(template).expect("valid template"),
            );
            bar
        });
        Progress {
            bar,
            rows: AtomicU64::new(0),
            done: AtomicU64::new(0),
            total,
            t0: Instant::now(),
            last_line: Mutex::new(Instant::now()),
            quiet,
        }
    }

    fn tick(&self, rows: u64) {
        let rows = self.rows.fetch_add(rows, Ordering::Relaxed) + rows;
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        let rate = rows as f64 / self.t0.elapsed().as_secs_f64().max(1e-9);
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.set_message(format!("{rows} rows, {rate:.0} rows/s"));
        } else if !self.quiet {
            let mut last = self.last_line.lock();
            if last.elapsed() >= Duration::from_secs(5) {
                *last = Instant::now();
                let of = self.total.map(|t| format!("/{t}")).unwrap_or_default();
                eprintln!("qdump: {done}{of} symbols, {rows} rows, {rate:.0} rows/s");
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
