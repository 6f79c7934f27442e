//! The CSV source, the embedded default that needs no server.
//!
//! Two layouts: a directory of one file per symbol (file stem = symbol, the layout qlib's `dump_bin.py` reads), or
//! one file with a symbol column. Either way there is a date column and one numeric column per field; a cell that
//! is empty, `nan`, `null` or `none` is missing. Per-symbol files are read once by an import (twice by an
//! update: dates first) and never held together in memory; a single combined file is grouped by symbol in memory, so use per-symbol files for data
//! larger than memory.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use rayon::prelude::*;

use super::files::{
    FileOptions, Input, choose_fields, file_fields, left_before_start, list_files, per_symbol,
    source_err, symbol_filter,
};
use super::{Failure, Source, SymbolRows};
use crate::error::{Error, Result};
use crate::store::calendar::Timestamp;

/// A CSV input that is a Parquet file (it starts with `PAR1`) is an error that says so, not a garbled header.
fn sniff_parquet(file: &Path) -> Result<()> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(file).and_then(|mut f| f.read_exact(&mut magic));
    if read.is_ok() && &magic == b"PAR1" {
        return Err(source_err(
            file,
            "is a Parquet file, not CSV; import it with --parquet".into(),
        ));
    }
    Ok(())
}

/// K-lines from CSV files.
pub struct CsvSource {
    inputs: Vec<Input>,
    fields: Vec<String>,
    opts: FileOptions,
    /// Files whose dates could not be read in pass 1, reported again in pass 2.
    pass1_failures: Mutex<HashMap<usize, String>>,
    /// Rows dated before `start` that the full pass skipped (an update's input holding older days).
    before_start: std::sync::atomic::AtomicU64,
    columns_left_out: Vec<super::LeftOutColumn>,
}

/// The column names of a CSV file.
fn headers(path: &Path) -> Result<Vec<String>> {
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| source_err(path, e.to_string()))?;
    Ok(rdr
        .headers()
        .map_err(|e| source_err(path, format!("line 1: {e}")))?
        .iter()
        .map(str::to_owned)
        .collect())
}

/// Parses one cell: empty, `nan`, `null` and `none` (any case) are missing values.
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

impl CsvSource {
    /// Opens a directory of per-symbol files, one per-symbol file, or one file with a symbol column.
    pub fn open(path: &Path, opts: FileOptions) -> Result<CsvSource> {
        let keep = symbol_filter(&opts);
        let files = list_files(path, "csv", "CSV")?;
        if path.is_file() {
            sniff_parquet(path)?;
        }

        // Fields: the union of the columns of every file, in first-seen order. A file whose header cannot be
        // used fails its symbol when other files can be; when none can, the layout (or a flag) is wrong.
        let mut all_fields: Vec<String> = Vec::new();
        let mut combined = false;
        let mut bad_files: HashMap<PathBuf, Error> = HashMap::new();
        for f in &files {
            let columns = headers(f)
                .and_then(|cols| file_fields(f, &cols, &opts, "line 1: ").map(|n| (cols, n)));
            let (cols, names) = match columns {
                Ok(c) => c,
                Err(e) => {
                    bad_files.insert(f.clone(), e);
                    continue;
                }
            };
            combined |= files.len() == 1
                && cols
                    .iter()
                    .any(|c| c.eq_ignore_ascii_case(&opts.symbol_column));
            for name in names {
                if !all_fields.contains(&name) {
                    all_fields.push(name);
                }
            }
        }
        if bad_files.len() == files.len() {
            return Err(bad_files.remove(&files[0]).expect("every file failed"));
        }
        let (fields, columns_left_out) = choose_fields(path, all_fields, &opts)?;

        let inputs = if combined {
            load_combined(&files[0], &fields, &opts, &keep)?
        } else {
            per_symbol(files, bad_files, &keep, opts.limit)
        };
        Ok(CsvSource {
            inputs,
            fields,
            opts,
            pass1_failures: Mutex::new(HashMap::new()),
            before_start: Default::default(),
            columns_left_out,
        })
    }

    fn in_range(&self, d: Timestamp) -> bool {
        self.opts.in_range(d)
    }
}

/// Reads a per-symbol file: its dates only (`fields` empty) or everything.
fn read_file(
    path: &Path,
    raw_symbol: &str,
    fields: &[String],
    opts: &FileOptions,
    in_range: &dyn Fn(Timestamp) -> bool,
) -> std::result::Result<SymbolRows, Failure> {
    let fail = |line: u64, reason: String| Failure {
        symbol: raw_symbol.to_owned(),
        reason: format!("{}:{line}: {reason}", path.display()),
    };
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| fail(0, e.to_string()))?;
    let cols: Vec<String> = rdr
        .headers()
        .map_err(|e| fail(1, e.to_string()))?
        .iter()
        .map(str::to_owned)
        .collect();
    let date_at = cols
        .iter()
        .position(|c| c.eq_ignore_ascii_case(&opts.date_column))
        .ok_or_else(|| fail(1, format!("no date column {:?}", opts.date_column)))?;
    let at: Vec<Option<usize>> = fields
        .iter()
        .map(|f| cols.iter().position(|c| c.to_lowercase() == *f))
        .collect();
    let mut dates = Vec::new();
    let mut columns: Vec<Option<Vec<f32>>> = at.iter().map(|a| a.map(|_| Vec::new())).collect();
    for record in rdr.records() {
        let record =
            record.map_err(|e| fail(e.position().map_or(0, |p| p.line()), e.to_string()))?;
        let line = record.position().map_or(0, |p| p.line());
        let d = opts
            .date_format
            .parse(record.get(date_at).unwrap_or(""))
            .map_err(|e| fail(line, e))?;
        if !in_range(d) {
            continue;
        }
        dates.push(d);
        for ((a, col), name) in at.iter().zip(&mut columns).zip(fields) {
            if let (Some(a), Some(col)) = (a, col) {
                let cell = record.get(*a).unwrap_or("");
                col.push(parse_cell(cell).ok_or_else(|| {
                    fail(
                        line,
                        format!("column {name:?} holds {cell:?}, which is not a number; fix the cell or leave it empty"),
                    )
                })?);
            }
        }
    }
    Ok(SymbolRows {
        raw_symbol: raw_symbol.to_owned(),
        origin: path.display().to_string(),
        dates,
        columns,
    })
}

/// Reads a combined file (with a symbol column) into per-symbol rows.
fn load_combined(
    path: &Path,
    fields: &[String],
    opts: &FileOptions,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Vec<Input>> {
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| source_err(path, e.to_string()))?;
    let cols: Vec<String> = rdr
        .headers()
        .map_err(|e| source_err(path, e.to_string()))?
        .iter()
        .map(str::to_owned)
        .collect();
    let pos = |name: &str| cols.iter().position(|c| c.eq_ignore_ascii_case(name));
    let (sym_at, date_at) = (pos(&opts.symbol_column), pos(&opts.date_column));
    let (Some(sym_at), Some(date_at)) = (sym_at, date_at) else {
        return Err(source_err(path, "no symbol or date column".into()));
    };
    // Field names are the headers lower-cased (Unicode), so match them the same way.
    let Some(at) = fields
        .iter()
        .map(|f| cols.iter().position(|c| c.to_lowercase() == *f))
        .collect::<Option<Vec<usize>>>()
    else {
        return Err(source_err(
            path,
            "a field column disappeared from the header".into(),
        ));
    };
    let mut groups: BTreeMap<String, std::result::Result<SymbolRows, Failure>> = BTreeMap::new();
    for record in rdr.records() {
        let record = record.map_err(|e| source_err(path, e.to_string()))?;
        let line = record.position().map_or(0, |p| p.line());
        let raw = record.get(sym_at).unwrap_or("").to_owned();
        if !keep(&raw) {
            continue;
        }
        let entry = groups.entry(raw.clone()).or_insert_with(|| {
            Ok(SymbolRows {
                raw_symbol: raw.clone(),
                origin: path.display().to_string(),
                dates: Vec::new(),
                columns: vec![Some(Vec::new()); fields.len()],
            })
        });
        let Ok(rows) = entry else { continue };
        let fail = |reason: String| Failure {
            symbol: raw.clone(),
            reason: format!("{}:{line}: {reason}", path.display()),
        };
        let parsed = (|| {
            let d = opts
                .date_format
                .parse(record.get(date_at).unwrap_or(""))
                .map_err(fail)?;
            let mut vals = Vec::with_capacity(at.len());
            for (&a, name) in at.iter().zip(fields) {
                let cell = record.get(a).unwrap_or("");
                vals.push(parse_cell(cell).ok_or_else(|| {
                    fail(format!(
                        "column {name:?} holds {cell:?}, which is not a number"
                    ))
                })?);
            }
            Ok((d, vals))
        })();
        match parsed {
            Ok((d, vals)) => {
                if opts.in_range(d) {
                    rows.dates.push(d);
                    for (c, v) in rows.columns.iter_mut().zip(vals) {
                        c.as_mut().expect("combined files have every field").push(v);
                    }
                }
            }
            Err(f) => *entry = Err(f),
        }
    }
    let mut out: Vec<Input> = groups.into_values().map(Input::Loaded).collect();
    out.truncate(opts.limit.unwrap_or(usize::MAX));
    Ok(out)
}

impl Source for CsvSource {
    fn fields(&self) -> &[String] {
        &self.fields
    }

    fn symbol_count(&self) -> Option<usize> {
        Some(self.inputs.len())
    }

    fn dates(&self) -> Result<Vec<Timestamp>> {
        let per_input: Vec<Vec<Timestamp>> = self
            .inputs
            .par_iter()
            .enumerate()
            .map(|(k, input)| match input {
                Input::File { path, raw_symbol } => {
                    match read_file(path, raw_symbol, &[], &self.opts, &|d| self.in_range(d)) {
                        Ok(rows) => rows.dates,
                        Err(f) => {
                            self.pass1_failures.lock().insert(k, f.reason);
                            Vec::new()
                        }
                    }
                }
                Input::Loaded(Ok(rows)) => rows.dates.clone(),
                Input::Loaded(Err(_)) | Input::Failed(_) => Vec::new(),
            })
            .collect();
        Ok(per_input.into_iter().flatten().collect())
    }

    fn stream(
        &self,
        sink: &(dyn Fn(std::result::Result<SymbolRows, Failure>) + Sync),
    ) -> Result<()> {
        self.inputs
            .par_iter()
            .enumerate()
            .for_each(|(k, input)| match input {
                Input::File { path, raw_symbol } => {
                    if let Some(reason) = self.pass1_failures.lock().get(&k).cloned() {
                        return sink(Err(Failure {
                            symbol: raw_symbol.clone(),
                            reason,
                        }));
                    }
                    let before = |d: Timestamp| {
                        let early = self.opts.start.is_some_and(|s| d < s);
                        if early {
                            self.before_start
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        !early && self.in_range(d)
                    };
                    sink(read_file(
                        path,
                        raw_symbol,
                        &self.fields,
                        &self.opts,
                        &before,
                    ))
                }
                Input::Loaded(item) => sink(item.clone()),
                Input::Failed(f) => sink(Err(f.clone())),
            });
        Ok(())
    }

    fn requested(&self) -> Option<&[String]> {
        self.opts.symbols.as_deref()
    }

    fn left_out(&self) -> Vec<super::LeftOut> {
        let n = self.before_start.load(std::sync::atomic::Ordering::Relaxed);
        left_before_start(n, self.opts.start).into_iter().collect()
    }

    fn columns_left_out(&self) -> Vec<super::LeftOutColumn> {
        self.columns_left_out.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells() {
        assert_eq!(parse_cell("1.5"), Some(1.5));
        assert!(parse_cell("").unwrap().is_nan());
        assert!(parse_cell("NULL").unwrap().is_nan());
        assert!(parse_cell("NaN").unwrap().is_nan());
        assert_eq!(parse_cell("abc"), None);
    }
}
