//! `qgen`: deterministic, realistic A-share K-line data for tests, fixtures and benchmarks.
//!
//! The same seed and parameters always give the same bytes. The data has what real tables have: several boards
//! (Shanghai main, STAR, Shenzhen main, ChiNext, Beijing) with their price limits, late listings, suspensions
//! (days with no row), missing cells (empty in CSV), a delisting, and adjustment-factor steps.
//!
//! `qgen csv --out fixtures/sample --symbols 10 --days 250` writes one CSV per symbol in the layout qlib's
//! `dump_bin.py` reads: file stem = symbol, columns date,open,high,low,close,volume,amount,factor.

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
    /// Write one CSV file per symbol.
    Csv {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 10)]
        symbols: usize,
        #[arg(long, default_value_t = 250)]
        days: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// First calendar day (weekends and listed holidays are skipped).
        #[arg(long, default_value = "2023-01-03")]
        start: NaiveDate,
    },
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
    symbol: String,
    limit: f64,
    listed: usize,
    delisted: Option<usize>,
    suspended: Vec<std::ops::Range<usize>>,
}

fn plan(i: usize, days: usize, rng: &mut Rng) -> Plan {
    let (prefix, base, limit) = BOARDS[i % BOARDS.len()];
    let symbol = format!(
        "{prefix}{:06}",
        base + (i / BOARDS.len()) as u32 * 7 + i as u32 % 3
    );
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
        limit,
        listed,
        delisted,
        suspended,
    }
}

fn write_symbol(plan: &Plan, days: &[NaiveDate], rng: &mut Rng) -> String {
    let mut out = String::from("date,open,high,low,close,volume,amount,factor\n");
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
            if rng_missing(k, v) {
                String::new()
            } else {
                format!("{v:.decimals$}")
            }
        };
        let _ = writeln!(
            out,
            "{day},{},{},{},{close:.2},{},{},{factor:.6}",
            cell(open, 2),
            cell(high, 2),
            cell(low, 2),
            cell(volume, 0),
            cell(amount, 2),
        );
    }
    out
}

/// A deterministic "missing" mark derived from the value itself, so it does not disturb the random stream.
fn rng_missing(k: usize, v: f64) -> bool {
    let h = (v.to_bits() ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h >> 56 < 2 && !k.is_multiple_of(5)
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Csv {
            out,
            symbols,
            days,
            seed,
            start,
        } => {
            let days = trading_days(start, days);
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let mut rng = Rng(seed);
            for i in 0..symbols {
                let p = plan(i, days.len(), &mut rng);
                let text = write_symbol(&p, &days, &mut rng);
                let path = out.join(format!("{}.csv", p.symbol));
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            eprintln!(
                "qgen: wrote {symbols} symbols x {} days to {}",
                days.len(),
                out.display()
            );
            Ok(())
        }
    }
}
