//! Building a store from K-line rows: the CSV source and the writer of a whole store.
//!
//! CSV input is the layout qlib's `dump_bin.py` reads: one file per symbol (file stem = symbol), a date column,
//! one column per field. A `symbol` column, when present, is not a field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::calendar::{Calendar, Timestamp, parse_timestamp};
use crate::error::{Error, NameKind, Result};
use crate::freq::Freq;
use crate::instruments::{Instruments, Span};
use crate::layout::validate_name;
use crate::store::Store;

/// The rows of one symbol, sorted by date; `columns[f][k]` is field `f` on `dates[k]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SymbolRows {
    pub symbol: String,
    pub dates: Vec<Timestamp>,
    /// One column per field of the [`KlineSet`]; `None` when this symbol's input lacks that field.
    pub columns: Vec<Option<Vec<f32>>>,
}

/// K-lines of many symbols sharing one list of fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KlineSet {
    pub fields: Vec<String>,
    pub symbols: Vec<SymbolRows>,
}

impl KlineSet {
    /// Total number of rows.
    pub fn rows(&self) -> usize {
        self.symbols.iter().map(|s| s.dates.len()).sum()
    }
}

/// qlib's symbol convention: `600000.SH` -> `SH600000` (`SS` is Shanghai too); anything else is upper-cased.
pub fn qlib_symbol(raw: &str) -> String {
    let raw = raw.trim();
    if let Some((code, exch)) = raw.rsplit_once('.') {
        let exch = exch.to_ascii_uppercase();
        let exch = if exch == "SS" { "SH".to_owned() } else { exch };
        if !code.is_empty()
            && code.bytes().all(|b| b.is_ascii_digit())
            && matches!(exch.as_str(), "SH" | "SZ" | "BJ")
        {
            return format!("{exch}{code}");
        }
    }
    raw.to_ascii_uppercase()
}

/// Parses one CSV cell: empty, `nan`, `null` and `none` (any case) are missing values.
fn parse_cell(cell: &str) -> Option<f32> {
    let c = cell.trim();
    if c.is_empty()
        || ["nan", "null", "none", "\\n"]
            .iter()
            .any(|m| c.eq_ignore_ascii_case(m))
    {
        return Some(f32::NAN);
    }
    c.parse::<f64>().ok().map(|v| v as f32)
}

/// Reads one per-symbol CSV file.
fn read_csv_file(path: &Path, date_column: &str) -> Result<(String, Vec<String>, SymbolRows)> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| input_err(path, 0, "the file name is not valid UTF-8".into()))?;
    let symbol = qlib_symbol(stem);
    validate_name(NameKind::Instrument, &symbol).map_err(|e| input_err(path, 0, e.to_string()))?;
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| csv_err(path, e))?;
    let headers = rdr.headers().map_err(|e| csv_err(path, e))?.clone();
    let date_at = headers
        .iter()
        .position(|h| h.eq_ignore_ascii_case(date_column))
        .ok_or_else(|| {
            input_err(
                path,
                1,
                format!(
                    "no date column {date_column:?} (columns: {}); name it with --date-column",
                    headers.iter().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
    let mut fields = Vec::new();
    let mut field_at = Vec::new();
    for (i, h) in headers.iter().enumerate() {
        if i == date_at || h.eq_ignore_ascii_case("symbol") {
            continue;
        }
        let name = h.to_lowercase();
        validate_name(NameKind::Field, &name).map_err(|e| input_err(path, 1, e.to_string()))?;
        if fields.contains(&name) {
            return Err(input_err(
                path,
                1,
                format!(
                    "two columns are named {name:?} (field names are case-insensitive); rename one"
                ),
            ));
        }
        fields.push(name);
        field_at.push(i);
    }
    let mut rows: Vec<(Timestamp, u64, Vec<f32>)> = Vec::new();
    for record in rdr.records() {
        let record = record.map_err(|e| csv_err(path, e))?;
        let line = record.position().map_or(0, |p| p.line());
        let date_text = record.get(date_at).unwrap_or("");
        let date = parse_timestamp(date_text).map_err(|e| input_err(path, line, e.to_string()))?;
        let mut values = Vec::with_capacity(field_at.len());
        for (&i, name) in field_at.iter().zip(&fields) {
            let cell = record.get(i).unwrap_or("");
            values.push(parse_cell(cell).ok_or_else(|| {
                input_err(
                    path,
                    line,
                    format!("column {name:?} holds {cell:?}, which is not a number; fix the cell or leave it empty for a missing value"),
                )
            })?);
        }
        rows.push((date, line, values));
    }
    rows.sort_by_key(|r| r.0);
    if let Some(w) = rows.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(input_err(
            path,
            w[1].1,
            format!(
                "duplicate row for {symbol} on {} (also on line {})",
                w[1].0, w[0].1
            ),
        ));
    }
    let mut columns = vec![Vec::with_capacity(rows.len()); fields.len()];
    let mut dates = Vec::with_capacity(rows.len());
    for (date, _, values) in rows {
        dates.push(date);
        for (col, v) in columns.iter_mut().zip(values) {
            col.push(v);
        }
    }
    let columns = columns.into_iter().map(Some).collect();
    Ok((
        symbol.clone(),
        fields,
        SymbolRows {
            symbol,
            dates,
            columns,
        },
    ))
}

/// Reads a directory of per-symbol CSV files (sorted by name), or one such file.
pub fn read_csv(path: &Path, date_column: &str) -> Result<KlineSet> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io("listing", path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("csv")))
            .collect();
        v.sort();
        v
    } else if path.is_file() {
        vec![path.to_path_buf()]
    } else {
        return Err(Error::io(
            "reading",
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    };
    if files.is_empty() {
        return Err(input_err(path, 0, "no .csv files found".into()));
    }
    let parsed = files
        .par_iter()
        .map(|f| read_csv_file(f, date_column))
        .collect::<Result<Vec<_>>>()?;
    let mut set = KlineSet::default();
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    for ((symbol, fields, _), file) in parsed.iter().zip(&files) {
        if let Some(prev) = seen.insert(symbol.clone(), file.clone()) {
            return Err(input_err(
                file,
                0,
                format!("symbol {symbol} also comes from {}", prev.display()),
            ));
        }
        for f in fields {
            if !set.fields.contains(f) {
                set.fields.push(f.clone());
            }
        }
    }
    for (_, fields, mut rows) in parsed {
        let mut columns = vec![None; set.fields.len()];
        for (f, col) in fields.iter().zip(rows.columns.drain(..)) {
            let at = set
                .fields
                .iter()
                .position(|g| g == f)
                .expect("field was collected above");
            columns[at] = col;
        }
        rows.columns = columns;
        set.symbols.push(rows);
    }
    Ok(set)
}

/// What [`write_store`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteSummary {
    pub symbols: usize,
    pub rows: usize,
    pub files: usize,
    pub calendar_len: usize,
}

/// Writes a whole store: calendar = union of all dates, one span per symbol (first to last date), and per symbol
/// and field one file starting at its first date with NaN on the calendar days it lacks (suspensions).
pub fn write_store(
    store: &Store,
    set: &KlineSet,
    freq: Freq,
    market: &str,
) -> Result<WriteSummary> {
    let mut all: Vec<Timestamp> = set
        .symbols
        .iter()
        .flat_map(|s| s.dates.iter().copied())
        .collect();
    all.sort_unstable();
    all.dedup();
    let calendar = Calendar::new(freq, all)?;
    store.save_calendar(&calendar)?;
    let mut instruments = Instruments::new();
    for s in set.symbols.iter().filter(|s| !s.dates.is_empty()) {
        let span = Span {
            start: s.dates[0],
            end: *s.dates.last().expect("non-empty"),
        };
        instruments.push(&s.symbol, span)?;
    }
    let files = set
        .symbols
        .par_iter()
        .filter(|s| !s.dates.is_empty())
        .map(|s| {
            let index: Vec<usize> = s
                .dates
                .iter()
                .map(|&d| {
                    calendar
                        .index_of(d)
                        .expect("calendar is the union of all dates")
                })
                .collect();
            let first = index[0];
            let len = index[index.len() - 1] - first + 1;
            let mut n = 0;
            for (field, col) in set.fields.iter().zip(&s.columns) {
                let Some(col) = col else { continue };
                let mut values = vec![f32::NAN; len];
                for (&i, &v) in index.iter().zip(col) {
                    values[i - first] = v;
                }
                store.rewrite_feature(&s.symbol, field, freq, first, &values)?;
                n += 1;
            }
            Ok(n)
        })
        .collect::<Result<Vec<usize>>>()?;
    store.save_instruments(market, &instruments)?;
    Ok(WriteSummary {
        symbols: files.len(),
        rows: set.rows(),
        files: files.iter().sum(),
        calendar_len: calendar.len(),
    })
}

/// Builds a new store next to `target` with `build` and switches it in atomically.
///
/// The store is built in a hidden sibling directory (`.<name>.qstore-staging-<pid>`), synced, and then renamed
/// onto `target`, or, when `target` already holds a store and `overwrite` is set, exchanged with it in one
/// `renameat2(RENAME_EXCHANGE)` before the old store is deleted. A failure or a kill at any point leaves
/// `target` exactly as it was; a staging directory left by a kill is not a store anyone opens.
pub fn publish_new_store<T>(
    target: &Path,
    overwrite: bool,
    build: impl FnOnce(&Store) -> Result<T>,
) -> Result<T> {
    let refuse = |reason| Error::Target {
        path: target.to_path_buf(),
        reason,
    };
    let non_empty = match std::fs::read_dir(target) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(_) if target.exists() => return Err(refuse("it exists and is not a directory")),
        Err(e) => return Err(Error::io("listing", target, e)),
    };
    if non_empty && !overwrite {
        return Err(refuse(
            "it is not empty; pass --overwrite to replace the store in it",
        ));
    }
    if non_empty && !target.join(crate::layout::CALENDARS_DIR).is_dir() {
        return Err(refuse(
            "it is not empty and not a store (no calendars/), so --overwrite will not replace it",
        ));
    }
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| refuse("it has no final path component"))?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    crate::fsio::create_dir_all_synced(parent)?;
    let staging = parent.join(format!(".{name}.qstore-staging-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| Error::io("removing", &staging, e))?;
    }
    let built = Store::create(&staging).and_then(|store| build(&store));
    let out = match built {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if non_empty {
        crate::fsio::exchange(&staging, target)?;
        std::fs::remove_dir_all(&staging)
            .map_err(|e| Error::io("removing the old store at", &staging, e))?;
    } else {
        // rename(2) replaces an empty directory atomically.
        std::fs::rename(&staging, target)
            .map_err(|e| Error::io("renaming the new store to", target, e))?;
        crate::fsio::fsync_dir(parent)?;
    }
    Ok(out)
}

fn input_err(path: &Path, line: u64, reason: String) -> Error {
    Error::Input {
        path: path.to_path_buf(),
        line,
        reason,
    }
}

fn csv_err(path: &Path, e: csv::Error) -> Error {
    let line = e.position().map_or(0, |p| p.line());
    input_err(path, line, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbol_convention() {
        assert_eq!(qlib_symbol("600000.SH"), "SH600000");
        assert_eq!(qlib_symbol("600000.ss"), "SH600000");
        assert_eq!(qlib_symbol("000001.SZ"), "SZ000001");
        assert_eq!(qlib_symbol("830799.BJ"), "BJ830799");
        assert_eq!(qlib_symbol("sh600000"), "SH600000");
        assert_eq!(qlib_symbol("AAPL.O"), "AAPL.O");
    }

    #[test]
    fn cells() {
        assert_eq!(parse_cell("1.5"), Some(1.5));
        assert!(parse_cell("").unwrap().is_nan());
        assert!(parse_cell("NULL").unwrap().is_nan());
        assert!(parse_cell("NaN").unwrap().is_nan());
        assert_eq!(parse_cell("abc"), None);
    }
}
