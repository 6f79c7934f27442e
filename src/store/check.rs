//! `qdump check`: finds bad data in a store (qlib's `check_data_health.py`, with its crashes and silent
//! summary fixed).

use std::collections::BTreeSet;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::store::Store;
use crate::store::bin::FeatureFile;
use crate::store::freq::Freq;
use crate::store::layout::{self, FEATURES_DIR};

/// What to look for.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub freq: Freq,
    pub market: String,
    /// Fields every instrument must have.
    pub required: Vec<String>,
    /// Report runs of at least this many missing values inside a span.
    pub nan_run: usize,
    /// Report day-to-day price changes above this fraction (0.5: 50%), on adjusted prices, so that splits
    /// and dividends are not steps (see `prices`).
    pub price_step: f64,
    /// Whether stored prices are raw (adjusted = price x `factor`) or already adjusted (qlib's convention:
    /// `factor` only gives back the raw price), or decided per instrument.
    pub prices: Prices,
    /// Report volume changes above this fraction (3: +300%, qlib's default).
    pub volume_step: f64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            freq: Freq::DAY,
            market: "all".into(),
            required: ["open", "high", "low", "close", "volume"]
                .map(String::from)
                .to_vec(),
            nan_run: 5,
            price_step: 0.5,
            prices: Prices::Auto,
            volume_step: 3.0,
        }
    }
}

impl CheckOptions {
    /// The default thresholds scaled to `freq`, given its bars per trading day (from the store's calendar for
    /// minute bars; 1/5 for weeks, 1/21 for months): the day's defaults are for daily bars. Missing runs are
    /// counted in bars: 5 for daily and longer bars, one trading day of intraday bars (a few quiet minutes
    /// are no finding). Step limits follow a random walk: a bar's typical move grows with the square root of
    /// its length, so the price limit is 0.5 / sqrt(bars a day) (3.2% for 240 one-minute bars, 110% for
    /// weeks), and volume, which is far spikier within a day, 3 x sqrt(bars a day) (46x for one-minute
    /// bars).
    pub fn scaled(freq: Freq, bars_per_day: f64) -> CheckOptions {
        let day = CheckOptions::default();
        let k = bars_per_day.max(f64::MIN_POSITIVE);
        CheckOptions {
            freq,
            nan_run: if k > 1.0 {
                k.round() as usize
            } else {
                day.nan_run
            },
            price_step: day.price_step / k.sqrt(),
            volume_step: if k > 1.0 {
                day.volume_step * k.sqrt()
            } else {
                day.volume_step
            },
            ..day
        }
    }

    /// [`CheckOptions::scaled`] for a store: bars per trading day of `freq` from its calendar (the bars over
    /// the distinct dates they fall on).
    pub fn for_store(store: &Store, freq: Freq) -> Result<CheckOptions> {
        let per_day = match freq.base() {
            crate::store::freq::FreqBase::Minute => {
                let cal = store.calendar(freq)?;
                let days: BTreeSet<chrono::NaiveDate> =
                    cal.dates().iter().map(|t| t.date()).collect();
                cal.len() as f64 / days.len().max(1) as f64
            }
            crate::store::freq::FreqBase::Day => 1.0 / f64::from(freq.count()),
            crate::store::freq::FreqBase::Week => 1.0 / (5.0 * f64::from(freq.count())),
            crate::store::freq::FreqBase::Month => 1.0 / (21.0 * f64::from(freq.count())),
        };
        Ok(CheckOptions::scaled(freq, per_day))
    }
}

/// How a store's prices relate to its `factor` column.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Prices {
    /// Per instrument: whichever of the stored prices and the prices times `factor` is continuous where
    /// `factor` changes (a split moves one of them, never both).
    Auto,
    /// Stored prices are the exchange's; prices times `factor` are adjusted (what most K-line tables hold).
    Raw,
    /// Stored prices are adjusted already; `factor` only gives back the raw ones (qlib's convention, as its
    /// data collectors write them).
    Adjusted,
}

/// Whether an instrument's stored prices are raw, decided from `close` where `factor` changes: the adjusted
/// series is the one without the jump (a 2:1 split halves the raw close and doubles the factor).
fn prices_are_raw(close: Option<&FeatureFile>, factor: Option<&FeatureFile>) -> bool {
    let (Some(close), Some(factor)) = (close, factor) else {
        return false;
    };
    let (mut as_raw, mut as_adjusted) = (0.0f64, 0.0f64);
    let mut prev: Option<(f64, f64)> = None;
    for r in close.start().max(factor.start())..close.end().min(factor.end()) {
        let (Some(c), Some(f)) = (close.get(r), factor.get(r)) else {
            continue;
        };
        let (c, f) = (c as f64, f as f64);
        if !(c > 0.0 && f > 0.0 && c.is_finite() && f.is_finite()) {
            continue;
        }
        if let Some((pc, pf)) = prev
            && (f / pf - 1.0).abs() > 1e-6
        {
            as_raw += ((c * f) / (pc * pf)).ln().abs();
            as_adjusted += (c / pc).ln().abs();
        }
        prev = Some((c, f));
    }
    as_raw < as_adjusted
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub instrument: String,
    /// The field, when the problem is in one.
    pub field: Option<String>,
    /// A short stable name: `unreadable`, `past-calendar`, `start-mismatch`, `missing-field`, `non-finite`,
    /// `nan-run`, `price-step`, `volume-step`, `no-files`, `not-listed`.
    pub kind: &'static str,
    pub detail: String,
}

/// Everything `check` found, by instrument then field.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub instruments: usize,
    pub files: usize,
    pub findings: Vec<Finding>,
}

const PRICES: [&str; 4] = ["open", "high", "low", "close"];

/// Checks the store against its calendar and the instruments of `opts.market`.
pub fn check(store: &Store, opts: &CheckOptions) -> Result<CheckReport> {
    let cal = store.calendar(opts.freq)?;
    let ins = store.instruments(&opts.market)?;
    let dates = cal.dates();
    let day = |r: usize| {
        dates
            .get(r)
            .map(|d| crate::store::calendar::format_timestamp(*d, opts.freq.date_only()))
            .unwrap_or_else(|| format!("row {r}"))
    };
    let mut report = CheckReport {
        instruments: ins.len(),
        ..Default::default()
    };
    let mut out = Vec::new();
    let mut listed_dirs = BTreeSet::new();
    for (sym, spans) in ins.iter() {
        listed_dirs.insert(layout::code_to_fname(sym).to_lowercase());
        let finding = |field: Option<&str>, kind, detail: String| Finding {
            instrument: sym.to_string(),
            field: field.map(String::from),
            kind,
            detail,
        };
        let fields = store.fields_of(sym, opts.freq)?;
        if fields.is_empty() {
            out.push(finding(
                None,
                "no-files",
                format!(
                    "listed in instruments/{}.txt but has no feature files",
                    opts.market
                ),
            ));
            continue;
        }
        for r in &opts.required {
            if !fields.contains(r) {
                out.push(finding(
                    Some(r),
                    "missing-field",
                    format!("no {r}.{}.bin", opts.freq),
                ));
            }
        }
        let first_row = spans.first().map(|s| cal.locate(Some(s.start), None).start);
        let factor = store.feature(sym, "factor", opts.freq).ok().flatten();
        let raw = match opts.prices {
            Prices::Raw => true,
            Prices::Adjusted => false,
            Prices::Auto => prices_are_raw(
                store
                    .feature(sym, "close", opts.freq)
                    .ok()
                    .flatten()
                    .as_deref(),
                factor.as_deref(),
            ),
        };
        // Missing runs per field; a run every field has (a suspension) is reported once for the instrument.
        let mut runs: Vec<(String, Vec<(usize, usize)>)> = Vec::new();
        for field in &fields {
            report.files += 1;
            let f = match store.feature(sym, field, opts.freq) {
                Ok(Some(f)) => f,
                Ok(None) => continue,
                Err(e) => {
                    out.push(finding(Some(field), "unreadable", e.detail()));
                    continue;
                }
            };
            if f.end() > cal.len() {
                out.push(finding(
                    Some(field),
                    "past-calendar",
                    format!(
                        "data runs to calendar row {} but the calendar has {} {}",
                        f.end(),
                        cal.len(),
                        opts.freq.bars_word()
                    ),
                ));
            }
            if let Some(fr) = first_row
                && f.start() != fr
                && !f.is_empty()
            {
                out.push(finding(
                    Some(field),
                    "start-mismatch",
                    format!(
                        "starts on {} (row {}) but the instrument's span starts on {} (row {fr})",
                        day(f.start()),
                        f.start(),
                        day(fr)
                    ),
                ));
            }
            // Infinities: qstore refuses them on import, but a qlib store or a hand-written file may hold them.
            let published = f.start()..f.end().min(cal.len());
            let infinite: Vec<usize> = published
                .filter(|&r| f.get(r).is_some_and(f32::is_infinite))
                .collect();
            if let Some(&first) = infinite.first() {
                out.push(finding(
                    Some(field),
                    "non-finite",
                    format!(
                        "{} infinite value(s), the first on {} (row {first}); re-import the rows, or overwrite them with a correction",
                        infinite.len(),
                        day(first)
                    ),
                ));
            }
            // NaN runs inside the spans.
            let mut field_runs = Vec::new();
            for s in spans.iter() {
                let rows = cal.locate(Some(s.start), Some(s.end));
                let mut run_start = None;
                for r in rows.start..rows.end + 1 {
                    let missing = r < rows.end && f.get(r).is_none_or(f32::is_nan);
                    match (missing, run_start) {
                        (true, None) => run_start = Some(r),
                        (false, Some(st)) => {
                            if r - st >= opts.nan_run {
                                field_runs.push((st, r));
                            }
                            run_start = None;
                        }
                        _ => {}
                    }
                }
            }
            runs.push((field.clone(), field_runs));
            let step = if PRICES.contains(&field.as_str()) {
                Some(("price-step", opts.price_step))
            } else if field == "volume" {
                Some(("volume-step", opts.volume_step))
            } else {
                None
            };
            if let Some((kind, limit)) = step {
                let adj = |r: usize| -> Option<f64> {
                    let v = f.get(r)? as f64;
                    let k = if kind == "price-step" && raw {
                        factor
                            .as_ref()
                            .and_then(|x| x.get(r))
                            .map_or(1.0, |x| x as f64)
                    } else {
                        1.0
                    };
                    let v = v * k;
                    (!v.is_nan()).then_some(v)
                };
                let mut prev: Option<(usize, f64)> = None;
                for r in f.start()..f.end().min(cal.len()) {
                    let Some(v) = adj(r) else { continue };
                    if let Some((pr, p)) = prev
                        && p != 0.0
                        && ((v - p) / p).abs() > limit
                    {
                        out.push(finding(
                            Some(field),
                            kind,
                            format!(
                                "{:+.0}% from {} ({p}) to {} ({v}){}",
                                (v / p - 1.0) * 100.0,
                                day(pr),
                                day(r),
                                match (kind, raw && factor.is_some()) {
                                    ("price-step", true) => ", prices x factor",
                                    ("price-step", false) => ", prices as stored",
                                    _ => "",
                                }
                            ),
                        ));
                    }
                    prev = Some((r, v));
                }
            }
        }
        let everywhere: Vec<(usize, usize)> = runs
            .first()
            .map(|(_, first)| {
                first
                    .iter()
                    .copied()
                    .filter(|run| runs.iter().all(|(_, rs)| rs.contains(run)))
                    .collect()
            })
            .unwrap_or_default();
        for &(st, r) in &everywhere {
            out.push(finding(
                None,
                "nan-run",
                format!(
                    "{} {} without any value, {} .. {} (a suspension?)",
                    r - st,
                    opts.freq.bars_word(),
                    day(st),
                    day(r - 1)
                ),
            ));
        }
        for (field, rs) in &runs {
            for &(st, r) in rs.iter().filter(|run| !everywhere.contains(run)) {
                out.push(finding(
                    Some(field),
                    "nan-run",
                    format!(
                        "{} missing {}, {} .. {}",
                        r - st,
                        opts.freq.bars_word(),
                        day(st),
                        day(r - 1)
                    ),
                ));
            }
        }
    }
    // Feature directories with no instrument in the market.
    out.sort_by(|a, b| (&a.instrument, &a.field, a.kind).cmp(&(&b.instrument, &b.field, b.kind)));
    let dir = store.root().join(FEATURES_DIR);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut unlisted: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .filter(|n| !listed_dirs.contains(n))
            .collect();
        unlisted.sort();
        for n in unlisted {
            out.push(Finding {
                instrument: layout::fname_to_code(&n).to_uppercase(),
                field: None,
                kind: "not-listed",
                detail: format!(
                    "features/{n}/ exists but instruments/{}.txt does not list it",
                    opts.market
                ),
            });
        }
    } else if !dir.exists() {
        return Err(Error::MissingStore {
            path: store.root().to_path_buf(),
            reason: "it has no features/ directory",
        });
    }
    report.findings = out;
    Ok(report)
}
