//! `qgen`: deterministic, realistic A-share K-line data for tests, fixtures and benchmarks.
//!
//! The same seed and parameters always give the same bytes. The data has what real tables have: several boards
//! (Shanghai main, STAR, Shenzhen main, ChiNext, Beijing) with their price limits, late listings, suspensions
//! (days with no row), missing cells (empty in CSV), a delisting, and adjustment-factor steps.
//!
//! `qgen csv --out fixtures/sample --symbols 12 --days 250` writes one CSV per symbol in the layout qlib's
//! `dump_bin.py` reads: file stem = symbol, columns date,open,high,low,close,volume,amount,vwap,factor.
//! `qgen mysql --url mysql://root@127.0.0.1/test --table stock_kline_data ...` fills a table with the same rows
//! (symbols as `600000.SH`, DECIMAL prices, BIGINT volume, DOUBLE amount and factor, a text `name` column).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use chrono::{Datelike, NaiveDate, Weekday};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "qgen", about = "Generate deterministic K-line test data")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write one CSV file per symbol (the layout qlib's dump_bin.py reads).
    Csv {
        #[arg(long)]
        out: PathBuf,
        /// Name files by exchange-style symbol (`600000.SH.csv`) instead of qlib style (`SH600000.csv`).
        #[arg(long)]
        raw_symbols: bool,
        #[command(flatten)]
        spec: Spec,
    },
    /// Baseline for benchmarks: the users' current approach, one query per symbol collected into memory.
    QueryPerSymbol {
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "stock_kline_data")]
        table: String,
    },
    /// Create (or replace) a K-line table in MySQL/MariaDB and fill it.
    Mysql {
        /// mysql://user[:password]@host[:port]/db
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "stock_kline_data")]
        table: String,
        #[command(flatten)]
        spec: Spec,
        /// The table's primary key: an auto-increment `id` (with a unique key on symbol and date), or
        /// `(symbol, trade_date)` itself, the most common K-line schema.
        #[arg(long, value_enum, default_value_t = Key::Id)]
        key: Key,
        /// Add an index on `trade_date` (without one, rows of a date range are found by scanning the table).
        #[arg(long)]
        date_index: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Key {
    Id,
    SymbolDate,
}

/// What to generate.
#[derive(clap::Args)]
struct Spec {
    #[arg(long, default_value_t = 10)]
    symbols: usize,
    #[arg(long, default_value_t = 250)]
    days: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// First calendar day (weekends and listed holidays are skipped).
    #[arg(long, default_value = "2023-01-03")]
    start: NaiveDate,
    /// Add a symbol whose every value is missing.
    #[arg(long)]
    pathological: bool,
}

/// splitmix64: tiny, fast and stable forever, which a fixture generator needs more than statistical polish.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize
    }
}

/// Exchange holidays that fall on weekdays (2023-2024 mainland calendar), so the calendar has real gaps.
const HOLIDAYS: &[&str] = &[
    "2023-01-02",
    "2023-01-23",
    "2023-01-24",
    "2023-01-25",
    "2023-01-26",
    "2023-01-27",
    "2023-04-05",
    "2023-05-01",
    "2023-05-02",
    "2023-05-03",
    "2023-06-22",
    "2023-06-23",
    "2023-09-29",
    "2023-10-02",
    "2023-10-03",
    "2023-10-04",
    "2023-10-05",
    "2023-10-06",
    "2024-01-01",
    "2024-02-09",
    "2024-02-12",
    "2024-02-13",
    "2024-02-14",
    "2024-02-15",
    "2024-02-16",
    "2024-04-04",
    "2024-04-05",
    "2024-05-01",
    "2024-05-02",
    "2024-05-03",
    "2024-06-10",
    "2024-09-16",
    "2024-09-17",
    "2024-10-01",
    "2024-10-02",
    "2024-10-03",
    "2024-10-04",
    "2024-10-07",
];

fn trading_days(start: NaiveDate, n: usize) -> Vec<NaiveDate> {
    let holidays: Vec<NaiveDate> = HOLIDAYS
        .iter()
        .map(|h| h.parse().expect("valid literal"))
        .collect();
    let mut out = Vec::with_capacity(n);
    let mut d = start;
    while out.len() < n {
        if !matches!(d.weekday(), Weekday::Sat | Weekday::Sun) && !holidays.contains(&d) {
            out.push(d);
        }
        d = d.succ_opt().expect("date in range");
    }
    out
}

/// Board prefixes with their daily price limit.
const BOARDS: &[(&str, u32, f64)] = &[
    ("SH", 600000, 0.10), // Shanghai main board
    ("SZ", 1, 0.10),      // Shenzhen main board
    ("SZ", 300001, 0.20), // ChiNext
    ("SH", 688001, 0.20), // STAR market
    ("BJ", 830799, 0.30), // Beijing
];

/// What happens to one symbol over the period.
struct Plan {
    /// qlib style, `SH600000`.
    symbol: String,
    /// Exchange style, `600000.SH`, as K-line tables usually store it.
    raw: String,
    /// Every value missing: a symbol the importer must report and skip.
    all_null: bool,
    limit: f64,
    listed: usize,
    delisted: Option<usize>,
    suspended: Vec<std::ops::Range<usize>>,
}

fn plan(i: usize, days: usize, rng: &mut Rng) -> Plan {
    let (prefix, base, limit) = BOARDS[i % BOARDS.len()];
    let code = base + (i / BOARDS.len()) as u32 * 7 + i as u32 % 3;
    let symbol = format!("{prefix}{code:06}");
    let raw = format!("{code:06}.{prefix}");
    // Every fourth symbol lists late, one in seven is delisted, most have a suspension.
    let listed = if i % 4 == 3 {
        days / 5 + rng.below(days / 5 + 1)
    } else {
        0
    };
    let delisted = (i % 7 == 5).then(|| days - days / 4 - rng.below(days / 8 + 1));
    let mut suspended = Vec::new();
    if i % 3 != 2 && days > 40 {
        let at = listed + 10 + rng.below(days.saturating_sub(listed + 30).max(1));
        suspended.push(at..at + 1 + rng.below(8));
    }
    Plan {
        symbol,
        raw,
        all_null: false,
        limit,
        listed,
        delisted,
        suspended,
    }
}

/// Column names of the generated data, after the symbol.
const COLUMNS: [&str; 9] = [
    "date", "open", "high", "low", "close", "volume", "amount", "vwap", "factor",
];

/// One symbol's rows as text cells in [`COLUMNS`] order; an empty cell is a missing value (NULL in SQL).
/// Both outputs print exactly these strings, so a CSV import and a MySQL import see the same numbers.
fn bars(plan: &Plan, days: &[NaiveDate], rng: &mut Rng) -> Vec<[String; 9]> {
    let mut out = Vec::new();
    let mut close = 5.0 + rng.unit() * 60.0;
    let mut factor = 1.0;
    let end = plan.delisted.unwrap_or(days.len());
    for (k, day) in days.iter().enumerate().take(end).skip(plan.listed) {
        if plan.suspended.iter().any(|s| s.contains(&k)) {
            continue;
        }
        // Price limits bound the daily move; listing days are free of limits on these boards.
        let ret = (rng.normal() * 0.022).clamp(-plan.limit, plan.limit);
        let prev = close;
        close = (prev * (1.0 + ret)).max(0.5);
        let open = prev * (1.0 + rng.normal() * 0.006);
        let high = open.max(close) * (1.0 + rng.unit() * 0.015);
        let low = open.min(close) * (1.0 - rng.unit() * 0.015);
        let volume = (2.0e6 * (1.0 + rng.normal().abs() * 1.5)).round();
        let amount = volume * (open + high + low + close) / 4.0;
        if rng.unit() < 0.004 {
            factor *= 1.0 + rng.unit() * 0.05; // dividend or split adjustment
        }
        let cell = |v: f64, decimals: usize| -> String {
            // About one cell in 150 is missing, as NULLs are in real tables.
            if plan.all_null || rng_missing(k, v) {
                String::new()
            } else {
                format!("{v:.decimals$}")
            }
        };
        let fixed = |v: String| if plan.all_null { String::new() } else { v };
        out.push([
            day.to_string(),
            cell(open, 2),
            cell(high, 2),
            cell(low, 2),
            fixed(format!("{close:.2}")),
            cell(volume, 0),
            cell(amount, 2),
            cell(amount / volume, 4),
            fixed(format!("{factor:.6}")),
        ]);
    }
    out
}

fn csv_text(rows: &[[String; 9]]) -> String {
    let mut out = COLUMNS.join(",");
    out.push('\n');
    for r in rows {
        let _ = writeln!(out, "{}", r.join(","));
    }
    out
}

/// A deterministic "missing" mark derived from the value itself, so it does not disturb the random stream.
fn rng_missing(k: usize, v: f64) -> bool {
    let h = (v.to_bits() ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h >> 56 < 2 && !k.is_multiple_of(5)
}

/// Every symbol's plan and rows, in order; `pathological` adds a symbol whose every value is missing.
fn generate(
    spec: &Spec,
    mut emit: impl FnMut(&Plan, Vec<[String; 9]>) -> Result<()>,
) -> Result<usize> {
    let days = trading_days(spec.start, spec.days);
    let mut rng = Rng(spec.seed);
    for i in 0..spec.symbols {
        let p = plan(i, days.len(), &mut rng);
        let rows = bars(&p, &days, &mut rng);
        emit(&p, rows)?;
    }
    if spec.pathological {
        let p = Plan {
            symbol: "SZ009999".into(),
            raw: "009999.SZ".into(),
            all_null: true,
            limit: 0.1,
            listed: 0,
            delisted: Some(days.len().min(20)),
            suspended: Vec::new(),
        };
        let rows = bars(&p, &days, &mut rng);
        emit(&p, rows)?;
    }
    Ok(days.len())
}

fn write_mysql(url: &str, table: &str, spec: &Spec, key: Key, date_index: bool) -> Result<()> {
    use mysql::prelude::Queryable;
    anyhow::ensure!(
        !table.is_empty()
            && table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "--table must be a plain identifier"
    );
    let pool = mysql::Pool::new(mysql::Opts::from_url(url).context("parsing --url")?)?;
    let mut conn = pool.get_conn().context("connecting to MySQL")?;
    // Filled under another name and renamed at the end, so a killed run never leaves a partial `table`.
    let final_name = table;
    let partial = format!("{table}__partial");
    let table = partial.as_str();
    conn.query_drop(format!("DROP TABLE IF EXISTS `{table}`"))?;
    let (id, keys) = match key {
        Key::Id => (
            "id BIGINT AUTO_INCREMENT PRIMARY KEY,",
            "UNIQUE KEY uk_symbol_date (symbol, trade_date)",
        ),
        Key::SymbolDate => ("", "PRIMARY KEY (symbol, trade_date)"),
    };
    let date_key = if date_index {
        ", KEY idx_trade_date (trade_date)"
    } else {
        ""
    };
    conn.query_drop(format!(
        "CREATE TABLE `{table}` (
           {id}
           symbol VARCHAR(16) NOT NULL,
           trade_date DATE NOT NULL,
           open DECIMAL(12,2), high DECIMAL(12,2), low DECIMAL(12,2), close DECIMAL(12,2),
           volume BIGINT, amount DOUBLE, vwap DOUBLE, factor DOUBLE,
           name VARCHAR(32),
           {keys}{date_key}
         ) ENGINE=InnoDB"
    ))?;
    let mut batch: Vec<String> = Vec::with_capacity(2000);
    let flush = |conn: &mut mysql::PooledConn, batch: &mut Vec<String>| -> Result<()> {
        if !batch.is_empty() {
            conn.query_drop(format!(
                "INSERT INTO `{table}` (symbol, trade_date, open, high, low, close, volume, amount, vwap, factor, name) VALUES {}",
                batch.join(",")
            ))?;
            batch.clear();
        }
        Ok(())
    };
    conn.query_drop("SET autocommit=0")?;
    generate(spec, |p, rows| {
        for r in rows {
            let v = |c: &String| {
                if c.is_empty() {
                    "NULL".to_string()
                } else {
                    c.clone()
                }
            };
            batch.push(format!(
                "('{}','{}',{},{},{},{},{},{},{},{},'{} Co.')",
                p.raw,
                r[0],
                v(&r[1]),
                v(&r[2]),
                v(&r[3]),
                v(&r[4]),
                v(&r[5]),
                v(&r[6]),
                v(&r[7]),
                v(&r[8]),
                p.symbol
            ));
            if batch.len() >= 2000 {
                flush(&mut conn, &mut batch)?;
            }
        }
        Ok(())
    })?;
    flush(&mut conn, &mut batch)?;
    conn.query_drop("COMMIT")?;
    conn.query_drop(format!("DROP TABLE IF EXISTS `{final_name}`"))?;
    conn.query_drop(format!("RENAME TABLE `{table}` TO `{final_name}`"))?;
    Ok(())
}

fn query_per_symbol(url: &str, table: &str) -> Result<()> {
    use mysql::prelude::Queryable;
    anyhow::ensure!(
        table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "--table must be a plain identifier"
    );
    let t0 = std::time::Instant::now();
    let mut conn = mysql::Conn::new(mysql::Opts::from_url(url).context("parsing --url")?)?;
    let symbols: Vec<String> = conn.query(format!(
        "SELECT DISTINCT symbol FROM `{table}` ORDER BY symbol"
    ))?;
    let stmt = conn.prep(format!(
        "SELECT trade_date, open, high, low, close, volume, amount, vwap, factor FROM `{table}` WHERE symbol = ? ORDER BY trade_date"
    ))?;
    let mut rows = 0usize;
    let mut kept = Vec::new();
    for s in &symbols {
        let frame: Vec<mysql::Row> = conn.exec(&stmt, (s,))?;
        rows += frame.len();
        kept.push(frame);
    }
    eprintln!(
        "qgen: {} queries, {rows} rows in {:.2} s",
        symbols.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Csv {
            out,
            raw_symbols,
            spec,
        } => {
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let days = generate(&spec, |p, rows| {
                let name = if raw_symbols { &p.raw } else { &p.symbol };
                let path = out.join(format!("{name}.csv"));
                std::fs::write(&path, csv_text(&rows))
                    .with_context(|| format!("writing {}", path.display()))
            })?;
            eprintln!(
                "qgen: wrote {} symbols x {days} days to {}",
                spec.symbols,
                out.display()
            );
            Ok(())
        }
        Command::QueryPerSymbol { url, table } => query_per_symbol(&url, &table),
        Command::Mysql {
            url,
            table,
            spec,
            key,
            date_index,
        } => {
            write_mysql(&url, &table, &spec, key, date_index)?;
            eprintln!(
                "qgen: filled table {table} with {} symbols x {} days",
                spec.symbols, spec.days
            );
            Ok(())
        }
    }
}
