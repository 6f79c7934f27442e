//! The Parquet source (`qdump all|update --parquet`), through the Apache Arrow crates.
//!
//! The layouts the users' pipelines write: a directory of one file per symbol (file stem = symbol), or files
//! with a symbol column (one file, or a directory of them, say one per day: rows are grouped by symbol across
//! files, in memory, as for a combined CSV). Column mapping and options are the CSV source's
//! ([`FileOptions`]). The date column may be a date, a timestamp without a time zone, or text
//! (`YYYY-MM-DD[ HH:MM:SS]`); fields are the columns of integer, float or decimal type (as for MySQL, other
//! columns are fields only when named, which is an error); null is a missing value.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, Decimal128Type, Float32Type, Float64Type, Int8Type, Int16Type,
    Int32Type, Int64Type, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use parking_lot::Mutex;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rayon::prelude::*;

use super::DateFormat;
use super::files::{
    FileOptions, Input, choose_fields, file_fields, left_before_start, list_files, per_symbol,
    source_err, symbol_filter,
};
use super::{Failure, LeftOut, Source, SymbolRows};
use crate::error::Result;
use crate::store::calendar::Timestamp;

/// K-lines from Parquet files.
pub struct ParquetSource {
    inputs: Vec<Input>,
    fields: Vec<String>,
    opts: FileOptions,
    /// Rows dated before `start` that the full pass skipped (an update's input holding older days).
    before_start: std::sync::atomic::AtomicU64,
    /// Rows of files with a symbol column whose symbol is null.
    no_symbol: u64,
    columns_left_out: Vec<super::LeftOutColumn>,
}

/// A file's reader, its column names, and the error of a file that is not Parquet.
fn open_file(path: &Path) -> Result<(ParquetRecordBatchReaderBuilder<std::fs::File>, Vec<String>)> {
    let file = std::fs::File::open(path).map_err(|e| crate::Error::io("opening", path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
        source_err(
            path,
            format!("not a readable Parquet file ({e}); give Parquet files, or CSV with --csv"),
        )
    })?;
    let names = builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    Ok((builder, names))
}

/// The record batches of `columns` of a file (matched case-insensitively; absent ones left out). A file the
/// Parquet library cannot decode is an error of that file, even where the library panics on it.
fn read_columns(path: &Path, columns: &[&str]) -> Result<Vec<RecordBatch>> {
    std::panic::catch_unwind(|| decode_columns(path, columns)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        Err(source_err(
            path,
            format!("the Parquet reader failed on this file ({why}); is it damaged?"),
        ))
    })
}

fn decode_columns(path: &Path, columns: &[&str]) -> Result<Vec<RecordBatch>> {
    let (builder, names) = open_file(path)?;
    let roots: Vec<usize> = names
        .iter()
        .enumerate()
        .filter(|(_, n)| columns.iter().any(|c| c.eq_ignore_ascii_case(n)))
        .map(|(i, _)| i)
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| source_err(path, e.to_string()))?;
    reader
        .map(|b| b.map_err(|e| source_err(path, format!("reading: {e}"))))
        .collect()
}

/// A batch's column by name, case-insensitively.
fn column<'a>(batch: &'a RecordBatch, name: &str) -> Option<&'a ArrayRef> {
    let i = batch
        .schema()
        .fields()
        .iter()
        .position(|f| f.name().eq_ignore_ascii_case(name))?;
    Some(batch.column(i))
}

/// A date column's values. `row0`: the first row's number in the file, for messages.
fn dates(
    a: &dyn Array,
    name: &str,
    format: &DateFormat,
    row0: usize,
) -> std::result::Result<Vec<Timestamp>, String> {
    let epoch = chrono::DateTime::UNIX_EPOCH.naive_utc();
    let out_of_range =
        |r: usize| format!("row {}: column {name:?}: date out of range", row0 + r + 1);
    if let Some(r) = (0..a.len()).find(|&r| a.is_null(r)) {
        return Err(format!(
            "row {}: column {name:?} is null; every row needs a date",
            row0 + r + 1
        ));
    }
    let from = |v: Vec<Option<Timestamp>>| -> std::result::Result<Vec<Timestamp>, String> {
        v.into_iter()
            .enumerate()
            .map(|(r, d)| d.ok_or_else(|| out_of_range(r)))
            .collect()
    };
    Ok(match a.data_type() {
        DataType::Date32 => from(
            a.as_primitive::<Date32Type>()
                .values()
                .iter()
                .map(|&d| epoch.checked_add_signed(chrono::TimeDelta::try_days(d.into())?))
                .collect(),
        )?,
        DataType::Date64 => from(
            a.as_primitive::<Date64Type>()
                .values()
                .iter()
                .map(|&ms| epoch.checked_add_signed(chrono::TimeDelta::try_milliseconds(ms)?))
                .collect(),
        )?,
        DataType::Timestamp(unit, None) => {
            let (values, per_second): (&[i64], i64) = match unit {
                TimeUnit::Second => (a.as_primitive::<TimestampSecondType>().values(), 1),
                TimeUnit::Millisecond => {
                    (a.as_primitive::<TimestampMillisecondType>().values(), 1_000)
                }
                TimeUnit::Microsecond => (
                    a.as_primitive::<TimestampMicrosecondType>().values(),
                    1_000_000,
                ),
                TimeUnit::Nanosecond => (
                    a.as_primitive::<TimestampNanosecondType>().values(),
                    1_000_000_000,
                ),
            };
            from(
                values
                    .iter()
                    .map(|&v| {
                        let (s, sub) = (v.div_euclid(per_second), v.rem_euclid(per_second));
                        let nanos = (sub * (1_000_000_000 / per_second)) as u32;
                        chrono::DateTime::from_timestamp(s, nanos).map(|d| d.naive_utc())
                    })
                    .collect(),
            )?
        }
        DataType::Timestamp(_, Some(tz)) => {
            return Err(format!(
                "column {name:?} is a timestamp with time zone {tz}; store the exchange's local time \
                 without a zone (pandas: .dt.tz_localize(None))"
            ));
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(..) => {
            let texts = strings(a, name, row0)?;
            texts
                .iter()
                .enumerate()
                .map(|(r, t)| {
                    format
                        .parse(t)
                        .map_err(|e| format!("row {}: column {name:?}: {e}", row0 + r + 1))
                })
                .collect::<std::result::Result<_, _>>()?
        }
        other => {
            return Err(format!(
                "column {name:?} is {other}, not a date; use a date, a timestamp or YYYY-MM-DD text"
            ));
        }
    })
}

/// A text column's values (null: empty).
fn strings(a: &dyn Array, name: &str, row0: usize) -> std::result::Result<Vec<String>, String> {
    let text = |i: usize, v: &dyn Array| -> std::result::Result<String, String> {
        if v.is_null(i) {
            return Ok(String::new());
        }
        Ok(match v.data_type() {
            DataType::Utf8 => v.as_string::<i32>().value(i).to_string(),
            DataType::LargeUtf8 => v.as_string::<i64>().value(i).to_string(),
            DataType::Utf8View => v.as_string_view().value(i).to_string(),
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
                numbers(v, name, row0)?[i].to_string()
            }
            other => return Err(format!("column {name:?} is {other}, not text")),
        })
    };
    match a.as_any_dictionary_opt() {
        Some(d) => {
            let keys = d.normalized_keys();
            (0..a.len())
                .map(|r| {
                    if a.is_null(r) {
                        Ok(String::new())
                    } else {
                        text(keys[r], d.values().as_ref())
                    }
                })
                .collect()
        }
        None => (0..a.len()).map(|r| text(r, a)).collect(),
    }
}

/// A numeric column's values as f64 (null: NaN).
fn numbers(a: &dyn Array, name: &str, _row0: usize) -> std::result::Result<Vec<f64>, String> {
    fn prim<T: arrow_array::ArrowPrimitiveType>(
        a: &dyn Array,
        f: impl Fn(T::Native) -> f64,
    ) -> Vec<f64> {
        let p = a.as_primitive::<T>();
        (0..p.len())
            .map(|r| {
                if p.is_null(r) {
                    f64::NAN
                } else {
                    f(p.value(r))
                }
            })
            .collect()
    }
    Ok(match a.data_type() {
        DataType::Float32 => prim::<Float32Type>(a, f64::from),
        DataType::Float64 => prim::<Float64Type>(a, |v| v),
        DataType::Int8 => prim::<Int8Type>(a, f64::from),
        DataType::Int16 => prim::<Int16Type>(a, f64::from),
        DataType::Int32 => prim::<Int32Type>(a, f64::from),
        DataType::Int64 => prim::<Int64Type>(a, |v| v as f64),
        DataType::UInt8 => prim::<UInt8Type>(a, f64::from),
        DataType::UInt16 => prim::<UInt16Type>(a, f64::from),
        DataType::UInt32 => prim::<UInt32Type>(a, f64::from),
        DataType::UInt64 => prim::<UInt64Type>(a, |v| v as f64),
        DataType::Decimal128(_, scale) => {
            let div = 10f64.powi(i32::from(*scale));
            prim::<Decimal128Type>(a, |v| v as f64 / div)
        }
        DataType::Null => vec![f64::NAN; a.len()],
        other => {
            return Err(format!(
                "column {name:?} is {other}, not numbers; leave it out with --fields"
            ));
        }
    })
}

/// A batch's rows in range: their dates, and one column of f32 per field (`None`: the batch lacks it).
type Rows = (Vec<Timestamp>, Vec<Option<Vec<f32>>>);

/// The rows of a batch that are in range.
fn batch_rows(
    b: &RecordBatch,
    opts: &FileOptions,
    fields: &[String],
    row0: usize,
) -> std::result::Result<Rows, String> {
    let date_col = column(b, &opts.date_column)
        .ok_or_else(|| format!("no date column {:?}", opts.date_column))?;
    let dates = dates(
        date_col.as_ref(),
        &opts.date_column,
        &opts.date_format,
        row0,
    )?;
    let cols = fields
        .iter()
        .map(|f| {
            column(b, f)
                .map(|a| numbers(a.as_ref(), f, row0))
                .transpose()
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    let keep: Vec<bool> = dates.iter().map(|&d| opts.in_range(d)).collect();
    let pick = |v: &[f64]| -> Vec<f32> {
        v.iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(&x, _)| x as f32)
            .collect()
    };
    Ok((
        dates
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(&d, _)| d)
            .collect(),
        cols.iter().map(|c| c.as_deref().map(pick)).collect(),
    ))
}

impl ParquetSource {
    /// Opens a directory of Parquet files (per-symbol, or with a symbol column), or one file.
    pub fn open(path: &Path, opts: FileOptions) -> Result<ParquetSource> {
        let keep = symbol_filter(&opts);
        let files = list_files(path, "parquet", "Parquet")?;
        // Columns of every file; a file that cannot be opened fails its symbol when others can be read.
        let mut all_fields: Vec<String> = Vec::new();
        let mut bad: HashMap<PathBuf, crate::Error> = HashMap::new();
        let mut with_symbol = Vec::new();
        // Columns that are not numbers (text, booleans ...), by field name and type: not fields unless named.
        let mut not_numbers: BTreeMap<String, String> = BTreeMap::new();
        for f in &files {
            let named = open_file(f).and_then(|(b, cols)| {
                let fields = file_fields(f, &cols, &opts, "")?;
                for field in b.schema().fields() {
                    let t = field.data_type();
                    if !(t.is_numeric() || *t == DataType::Null) {
                        not_numbers.insert(field.name().to_lowercase(), t.to_string());
                    }
                }
                Ok((cols, fields))
            });
            match named {
                Ok((cols, fields)) => {
                    with_symbol.push(
                        cols.iter()
                            .any(|c| c.eq_ignore_ascii_case(&opts.symbol_column)),
                    );
                    for name in fields {
                        if !all_fields.contains(&name) {
                            all_fields.push(name);
                        }
                    }
                }
                Err(e) => {
                    bad.insert(f.clone(), e);
                }
            }
        }
        if bad.len() == files.len() {
            return Err(bad.remove(&files[0]).expect("every file failed"));
        }
        let combined = with_symbol.iter().any(|&s| s);
        if combined && !with_symbol.iter().all(|&s| s) {
            return Err(source_err(
                path,
                format!(
                    "some files have a symbol column {:?} and some do not; give one layout: one file per \
                     symbol, or files that all have the symbol column",
                    opts.symbol_column
                ),
            ));
        }
        if let Some(list) = &opts.fields {
            for f in list {
                if let Some(t) = not_numbers.get(&f.to_lowercase()) {
                    return Err(source_err(
                        path,
                        format!("column {f:?} is {t}, not numbers; leave it out of --fields"),
                    ));
                }
            }
        }
        all_fields.retain(|f| !not_numbers.contains_key(f));
        let (fields, columns_left_out) = choose_fields(path, all_fields, &opts)?;
        let mut no_symbol = 0;
        let inputs = if combined {
            if let Some((_, e)) = bad.into_iter().next() {
                return Err(e);
            }
            let (inputs, nulls) = load_combined(&files, &fields, &opts, &keep)?;
            no_symbol = nulls;
            inputs
        } else {
            per_symbol(files, bad, &keep, opts.limit)
        };
        Ok(ParquetSource {
            inputs,
            fields,
            opts,
            before_start: Default::default(),
            no_symbol,
            columns_left_out,
        })
    }
}

/// Reads one symbol's file: its dates only (`fields` empty) or everything in range.
fn read_file(
    path: &Path,
    raw_symbol: &str,
    fields: &[String],
    opts: &FileOptions,
    before_start: Option<&std::sync::atomic::AtomicU64>,
) -> std::result::Result<SymbolRows, Failure> {
    let fail = |reason: String| Failure {
        symbol: raw_symbol.to_owned(),
        reason: format!("{}: {reason}", path.display()),
    };
    let mut wanted: Vec<&str> = vec![&opts.date_column];
    wanted.extend(fields.iter().map(String::as_str));
    let batches = read_columns(path, &wanted).map_err(|e| Failure {
        symbol: raw_symbol.to_owned(),
        reason: e.detail(),
    })?;
    let mut rows = SymbolRows {
        raw_symbol: raw_symbol.to_owned(),
        origin: path.display().to_string(),
        dates: Vec::new(),
        columns: fields.iter().map(|_| None).collect(),
    };
    let mut row0 = 0;
    for b in &batches {
        if let (Some(counter), Some(start), Some(col)) =
            (before_start, opts.start, column(b, &opts.date_column))
        {
            let early = dates(col.as_ref(), &opts.date_column, &opts.date_format, row0)
                .map_err(fail)?
                .iter()
                .filter(|&&d| d < start)
                .count();
            counter.fetch_add(early as u64, std::sync::atomic::Ordering::Relaxed);
        }
        let (d, cols) = batch_rows(b, opts, fields, row0).map_err(fail)?;
        let n = d.len();
        let before = rows.dates.len();
        rows.dates.extend(d);
        for (out, col) in rows.columns.iter_mut().zip(cols) {
            if let Some(col) = col {
                out.get_or_insert_with(|| vec![f32::NAN; before])
                    .extend(col);
            } else if let Some(out) = out {
                out.resize(before + n, f32::NAN);
            }
        }
        row0 += b.num_rows();
    }
    Ok(rows)
}

/// Reads files with a symbol column into per-symbol rows, and counts the rows whose symbol is null.
fn load_combined(
    files: &[PathBuf],
    fields: &[String],
    opts: &FileOptions,
    keep: &(dyn Fn(&str) -> bool + Sync),
) -> Result<(Vec<Input>, u64)> {
    let groups: Mutex<BTreeMap<String, std::result::Result<SymbolRows, Failure>>> =
        Mutex::new(BTreeMap::new());
    let nulls = std::sync::atomic::AtomicU64::new(0);
    files.par_iter().try_for_each(|path| -> Result<()> {
        let mut wanted: Vec<&str> = vec![&opts.date_column, &opts.symbol_column];
        wanted.extend(fields.iter().map(String::as_str));
        let mut row0 = 0;
        for b in read_columns(path, &wanted)? {
            let err = |reason: String| source_err(path, reason);
            let sym_col = column(&b, &opts.symbol_column)
                .ok_or_else(|| err(format!("no symbol column {:?}", opts.symbol_column)))?;
            let syms = strings(sym_col.as_ref(), &opts.symbol_column, row0).map_err(err)?;
            let date_col = column(&b, &opts.date_column)
                .ok_or_else(|| err(format!("no date column {:?}", opts.date_column)))?;
            let ds = dates(
                date_col.as_ref(),
                &opts.date_column,
                &opts.date_format,
                row0,
            )
            .map_err(err)?;
            let cols: Vec<Vec<f64>> = fields
                .iter()
                .map(|f| match column(&b, f) {
                    Some(a) => numbers(a.as_ref(), f, row0),
                    None => Ok(vec![f64::NAN; b.num_rows()]),
                })
                .collect::<std::result::Result<_, String>>()
                .map_err(err)?;
            let mut g = groups.lock();
            for (r, sym) in syms.iter().enumerate() {
                if sym.is_empty() {
                    nulls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                if !keep(sym) || !opts.in_range(ds[r]) {
                    continue;
                }
                let entry = g.entry(sym.clone()).or_insert_with(|| {
                    Ok(SymbolRows {
                        raw_symbol: sym.clone(),
                        origin: path.display().to_string(),
                        dates: Vec::new(),
                        columns: vec![Some(Vec::new()); fields.len()],
                    })
                });
                if let Ok(rows) = entry {
                    rows.dates.push(ds[r]);
                    for (out, col) in rows.columns.iter_mut().zip(&cols) {
                        out.as_mut().expect("every field").push(col[r] as f32);
                    }
                }
            }
            row0 += b.num_rows();
        }
        Ok(())
    })?;
    let mut out: Vec<Input> = groups
        .into_inner()
        .into_values()
        .map(Input::Loaded)
        .collect();
    out.truncate(opts.limit.unwrap_or(usize::MAX));
    Ok((out, nulls.into_inner()))
}

impl Source for ParquetSource {
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
            .map(|input| match input {
                // A file that fails here fails again, with its reason, in the full pass.
                Input::File { path, raw_symbol } => {
                    read_file(path, raw_symbol, &[], &self.opts, None)
                        .map(|r| r.dates)
                        .unwrap_or_default()
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
        self.inputs.par_iter().for_each(|input| match input {
            Input::File { path, raw_symbol } => sink(read_file(
                path,
                raw_symbol,
                &self.fields,
                &self.opts,
                Some(&self.before_start),
            )),
            Input::Loaded(item) => sink(item.clone()),
            Input::Failed(f) => sink(Err(f.clone())),
        });
        Ok(())
    }

    fn requested(&self) -> Option<&[String]> {
        self.opts.symbols.as_deref()
    }

    fn left_out(&self) -> Vec<LeftOut> {
        let n = self.before_start.load(std::sync::atomic::Ordering::Relaxed);
        let mut out: Vec<LeftOut> = left_before_start(n, self.opts.start).into_iter().collect();
        if self.no_symbol > 0 {
            out.push(LeftOut {
                rows: self.no_symbol,
                reason: format!(
                    "with a null or empty symbol ({:?})",
                    self.opts.symbol_column
                ),
            });
        }
        out
    }

    fn columns_left_out(&self) -> Vec<super::LeftOutColumn> {
        self.columns_left_out.clone()
    }
}
