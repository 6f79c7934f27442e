//! Where a query's rows go: CSV, JSON lines, per-column statistics, Parquet and Arrow IPC files.
//!
//! Every output takes the query in parts (groups of instruments, in the frame's row order, as
//! [`Engine::features_in_parts`](crate::query::Engine::features_in_parts) hands them out), so a whole-universe
//! query is written while it is computed and never held whole, in text or in values. [`write_parts`] runs the
//! writer on its own thread, so one part is encoded while the next is computed.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;

use crate::error::{Error, Result};
use crate::query::frame::ColumnFrame;
use crate::store::calendar::format_timestamp;
use crate::store::freq::Freq;

/// An output format of a query (`qcache query --format`).
#[derive(Debug, Copy, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Format {
    /// `instrument,datetime,<columns>`; NaN is an empty cell (as pandas writes it).
    Csv,
    /// One JSON object per row and line, keys in column order; NaN and infinities are `null`.
    Json,
    /// Per column: rows, NaN count, mean, min and max of the other values, tab-separated with a header.
    Stats,
    /// A Parquet file: `instrument` (dictionary-encoded string), `datetime` (timestamp in milliseconds, no
    /// time zone, as the calendar), one float32 column
    /// per feature (NaN stays NaN, as in qlib's frames); one row group per part.
    Parquet,
    /// An Arrow IPC file (Feather v2) with the Parquet output's schema; one record batch per part.
    Arrow,
}

impl Format {
    /// The format's name, as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Json => "json",
            Format::Stats => "stats",
            Format::Parquet => "parquet",
            Format::Arrow => "arrow",
        }
    }

    /// A binary format, which a terminal cannot show.
    pub fn is_binary(self) -> bool {
        matches!(self, Format::Parquet | Format::Arrow)
    }
}

/// What every part of one query shares.
#[derive(Debug, Clone)]
pub struct Header {
    /// The column names (a feature set's names or the expressions).
    pub columns: Vec<String>,
    /// Every instrument of the query in row order ([`Engine::instruments_of`](crate::query::Engine::instruments_of)):
    /// the dictionary of the Arrow and Parquet `instrument` column, one for all parts.
    pub instruments: Vec<String>,
    pub freq: Freq,
    /// Where the output goes, for messages (`-` for standard output).
    pub path: PathBuf,
}

/// A writer of one query's output, fed its parts in row order.
pub trait Sink: Send {
    /// Writes one part's rows.
    fn write(&mut self, part: &ColumnFrame) -> Result<()>;
    /// Ends the output (a Parquet or Arrow footer, the statistics table) and flushes it.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// The writer of `format` into `out`.
pub fn sink<'w, W: Write + Send + 'w>(
    format: Format,
    out: W,
    header: Header,
) -> Result<Box<dyn Sink + 'w>> {
    Ok(match format {
        Format::Csv => Box::new(Csv::new(out, header)?),
        Format::Json => Box::new(JsonLines::new(out, header)),
        Format::Stats => Box::new(Stats::new(out, header)),
        #[cfg(feature = "parquet")]
        Format::Parquet => Box::new(arrow::ParquetSink::new(out, header)?),
        #[cfg(feature = "parquet")]
        Format::Arrow => Box::new(arrow::ArrowSink::new(out, header)?),
        #[cfg(not(feature = "parquet"))]
        Format::Parquet | Format::Arrow => {
            return Err(Error::Config {
                source_name: format!("--format {}", format.name()),
                reason:
                    "this build of qstore has no Parquet or Arrow support (the `parquet` cargo \
                         feature); rebuild with default features, or use csv"
                        .into(),
            });
        }
    })
}

/// Runs `produce`, which hands its parts to the closure it is given, and writes each part with `sink` on a
/// second thread: part k is encoded while part k + 1 is computed, and at most one part waits in between.
/// The first error of either side is returned; a failed writer stops the producer at its next part.
pub fn write_parts<'w>(
    mut sink: Box<dyn Sink + 'w>,
    produce: impl FnOnce(&mut dyn FnMut(ColumnFrame) -> Result<()>) -> Result<()>,
) -> Result<()> {
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel::<ColumnFrame>(1);
        let writer = scope.spawn(move || -> Result<()> {
            for part in rx {
                sink.write(&part)?;
            }
            sink.finish()
        });
        let produced = produce(&mut |part| {
            // A closed channel means the writer failed: its error is the one to report.
            tx.send(part).map_err(|_| Error::Output {
                format: "output",
                reason: "the writer stopped".into(),
            })
        });
        drop(tx);
        let written = writer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        written.and(produced)
    })
}

/// An I/O error of the output, with its path.
fn io_error(header: &Header, e: std::io::Error) -> Error {
    Error::io("writing", header.path.clone(), e)
}

/// How a text format spells a row: its instrument and date cells, a value, a missing value.
trait RowText: Sync {
    /// A row's start, up to its first value: `SH600000,2023-01-03` or `{"instrument":...,"datetime":...`.
    fn start(&self, out: &mut Vec<u8>, instrument: &[u8], date: &str);
    /// Before value `c` of a row.
    fn before(&self, out: &mut Vec<u8>, c: usize);
    /// A value that is not shown as a number.
    fn missing(&self, v: f32) -> bool;
    fn none(&self) -> &'static [u8];
    fn end(&self) -> &'static [u8];
}

/// Rows formatted at a time: blocks of `BLOCK_ROWS` are formatted on every core, then written in order, so
/// the text held is bounded whatever the part's size.
const WINDOW_ROWS: usize = 1 << 14;
const BLOCK_ROWS: usize = 2048;

/// A text writer's state: the output, its header, and each calendar row's date text (formatted once per
/// query, not per row).
struct Text<W: Write, F: RowText> {
    out: W,
    header: Header,
    format: F,
    dates: Vec<Option<String>>,
}

impl<W: Write + Send, F: RowText> Text<W, F> {
    fn write_part(&mut self, part: &ColumnFrame, names: &[Vec<u8>]) -> Result<()> {
        use rayon::prelude::*;
        use std::io::Write as _;
        let date_only = self.header.freq.date_only();
        let calendar = part.calendar().dates();
        if self.dates.len() < calendar.len() {
            self.dates.resize(calendar.len(), None);
        }
        for &(_, r) in part.index() {
            self.dates[r as usize]
                .get_or_insert_with(|| format_timestamp(calendar[r as usize], date_only));
        }
        let columns: Vec<&[f32]> = (0..part.columns().len()).map(|c| part.column(c)).collect();
        let (format, dates, index) = (&self.format, &self.dates, part.index());
        for window in (0..part.len()).step_by(WINDOW_ROWS) {
            let end = (window + WINDOW_ROWS).min(part.len());
            let blocks: Vec<Vec<u8>> = (window..end)
                .step_by(BLOCK_ROWS)
                .collect::<Vec<_>>()
                .into_par_iter()
                .map(|r0| {
                    let mut buf = Vec::with_capacity(BLOCK_ROWS * (16 + 10 * columns.len()));
                    for r in r0..(r0 + BLOCK_ROWS).min(end) {
                        let (code, row) = index[r];
                        let date = dates[row as usize].as_deref().unwrap_or_default();
                        format.start(&mut buf, &names[code as usize], date);
                        for (c, col) in columns.iter().enumerate() {
                            format.before(&mut buf, c);
                            let v = col[r];
                            if format.missing(v) {
                                buf.extend_from_slice(format.none());
                            } else {
                                // Display: the shortest text that reads back to the same f32.
                                write!(buf, "{v}").expect("writing to memory");
                            }
                        }
                        buf.extend_from_slice(format.end());
                    }
                    buf
                })
                .collect();
            for b in blocks {
                self.out
                    .write_all(&b)
                    .map_err(|e| io_error(&self.header, e))?;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| io_error(&self.header, e))
    }
}

/// CSV: `instrument,datetime,<columns>`, NaN an empty cell (as pandas writes it), fields quoted where the
/// csv crate quotes them (the header's expressions).
struct Csv<W: Write>(Text<W, CsvRow>);

struct CsvRow;

impl RowText for CsvRow {
    fn start(&self, out: &mut Vec<u8>, instrument: &[u8], date: &str) {
        out.extend_from_slice(instrument);
        out.push(b',');
        out.extend_from_slice(date.as_bytes());
    }
    fn before(&self, out: &mut Vec<u8>, _: usize) {
        out.push(b',');
    }
    fn missing(&self, v: f32) -> bool {
        v.is_nan()
    }
    fn none(&self) -> &'static [u8] {
        b""
    }
    fn end(&self) -> &'static [u8] {
        b"\n"
    }
}

/// One CSV record, quoted as the csv crate quotes it, without its line end.
fn csv_record<S: AsRef<[u8]>>(fields: &[S]) -> Vec<u8> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    w.write_record(fields).expect("writing to memory");
    let mut v = w.into_inner().expect("writing to memory");
    v.pop();
    v
}

impl<W: Write> Csv<W> {
    fn new(mut out: W, header: Header) -> Result<Self> {
        let mut names = vec!["instrument".to_string(), "datetime".to_string()];
        names.extend(header.columns.iter().cloned());
        let mut line = csv_record(&names);
        line.push(b'\n');
        out.write_all(&line).map_err(|e| io_error(&header, e))?;
        Ok(Csv(Text {
            out,
            header,
            format: CsvRow,
            dates: Vec::new(),
        }))
    }
}

impl<W: Write + Send> Sink for Csv<W> {
    fn write(&mut self, part: &ColumnFrame) -> Result<()> {
        let names: Vec<Vec<u8>> = part
            .instruments()
            .iter()
            .map(|i| csv_record(&[i]))
            .collect();
        self.0.write_part(part, &names)
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.0.finish()
    }
}

/// JSON lines: one object per row, keys in column order, NaN and infinities `null`.
struct JsonLines<W: Write>(Text<W, JsonRow>);

struct JsonRow {
    /// `,"<column>":` per column.
    keys: Vec<Vec<u8>>,
}

impl RowText for JsonRow {
    fn start(&self, out: &mut Vec<u8>, instrument: &[u8], date: &str) {
        out.extend_from_slice(b"{\"instrument\":");
        out.extend_from_slice(instrument);
        out.extend_from_slice(b",\"datetime\":\"");
        out.extend_from_slice(date.as_bytes());
        out.push(b'"');
    }
    fn before(&self, out: &mut Vec<u8>, c: usize) {
        out.extend_from_slice(&self.keys[c]);
    }
    fn missing(&self, v: f32) -> bool {
        !v.is_finite()
    }
    fn none(&self) -> &'static [u8] {
        b"null"
    }
    fn end(&self) -> &'static [u8] {
        b"}\n"
    }
}

impl<W: Write> JsonLines<W> {
    fn new(out: W, header: Header) -> Self {
        let keys = header
            .columns
            .iter()
            .map(|c| format!(",{}:", json_string(c)).into_bytes())
            .collect();
        JsonLines(Text {
            out,
            header,
            format: JsonRow { keys },
            dates: Vec::new(),
        })
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

impl<W: Write + Send> Sink for JsonLines<W> {
    fn write(&mut self, part: &ColumnFrame) -> Result<()> {
        let names: Vec<Vec<u8>> = part
            .instruments()
            .iter()
            .map(|i| json_string(i).into_bytes())
            .collect();
        self.0.write_part(part, &names)
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.0.finish()
    }
}

/// Summation lanes of a column's statistics: row `r` of the query adds into lane `r % LANES`, and the lanes
/// are added in order at the end, so the sums do not depend on where the parts begin or on the threads, and
/// the inner loop runs in vector registers.
const LANES: usize = 8;

struct Stats<W: Write> {
    out: W,
    header: Header,
    rows: usize,
    columns: Vec<Lanes>,
}

/// One column's statistics so far, lane by lane.
#[derive(Clone, Copy)]
struct Lanes {
    nan: [u64; LANES],
    sum: [f64; LANES],
    /// The extremes in f32: exact, with no conversion per value.
    lo: [f32; LANES],
    hi: [f32; LANES],
}

impl Lanes {
    const EMPTY: Lanes = Lanes {
        nan: [0; LANES],
        sum: [0.0; LANES],
        lo: [f32::INFINITY; LANES],
        hi: [f32::NEG_INFINITY; LANES],
    };

    /// Adds `v` into lane `l`.
    #[inline(always)]
    fn add(&mut self, l: usize, v: f32) {
        let valid = !v.is_nan();
        self.nan[l] += u64::from(!valid);
        self.sum[l] += if valid { f64::from(v) } else { 0.0 };
        // `min`/`max` skip NaN.
        self.lo[l] = self.lo[l].min(v);
        self.hi[l] = self.hi[l].max(v);
    }

    /// Adds `values`, the first of which is query row `first`: one lane per row modulo [`LANES`], whole
    /// groups of lanes at a time in registers (a copy of `self`) once the rows are aligned.
    fn add_all(&mut self, first: usize, values: &[f32]) {
        let head = ((LANES - first % LANES) % LANES).min(values.len());
        for (k, &v) in values[..head].iter().enumerate() {
            self.add((first + k) % LANES, v);
        }
        let mut acc = *self;
        let mut groups = values[head..].chunks_exact(LANES);
        for g in &mut groups {
            for (l, &v) in g.iter().enumerate() {
                acc.add(l, v);
            }
        }
        for (l, &v) in groups.remainder().iter().enumerate() {
            acc.add(l, v);
        }
        *self = acc;
    }

    fn nan(&self) -> u64 {
        self.nan.iter().sum()
    }

    fn sum(&self) -> f64 {
        self.sum.iter().sum()
    }

    fn lo(&self) -> f32 {
        self.lo.iter().fold(f32::INFINITY, |a, &b| a.min(b))
    }

    fn hi(&self) -> f32 {
        self.hi.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
    }
}

impl<W: Write> Stats<W> {
    fn new(out: W, header: Header) -> Self {
        let n = header.columns.len();
        Stats {
            out,
            header,
            rows: 0,
            columns: vec![Lanes::EMPTY; n],
        }
    }
}

impl<W: Write + Send> Sink for Stats<W> {
    fn write(&mut self, part: &ColumnFrame) -> Result<()> {
        use rayon::prelude::*;
        let first = self.rows;
        self.columns
            .par_iter_mut()
            .enumerate()
            .for_each(|(c, lanes)| lanes.add_all(first, part.column(c)));
        self.rows += part.len();
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        let mut text = String::from("column\trows\tnan\tmean\tmin\tmax\n");
        for (c, name) in self.header.columns.iter().enumerate() {
            let lanes = &self.columns[c];
            let valid = self.rows - lanes.nan() as usize;
            let sum = lanes.sum();
            let mean = if valid == 0 {
                f64::NAN
            } else {
                sum / valid as f64
            };
            text.push_str(&format!(
                "{name}\t{}\t{}\t{mean}\t{}\t{}\n",
                self.rows,
                lanes.nan(),
                lanes.lo(),
                lanes.hi()
            ));
        }
        self.out
            .write_all(text.as_bytes())
            .and_then(|()| self.out.flush())
            .map_err(|e| io_error(&self.header, e))
    }
}

#[cfg(feature = "parquet")]
mod arrow {
    //! The Arrow and Parquet writers, through the Apache Arrow crates.

    use std::io::Write;
    use std::sync::Arc;

    use arrow_array::types::Int32Type;
    use arrow_array::{
        ArrayRef, DictionaryArray, Float32Array, Int32Array, RecordBatch, StringArray,
        TimestampMillisecondArray,
    };
    use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
    use parquet::arrow::ArrowWriter;
    use parquet::basic::Compression;
    use parquet::errors::ParquetError;
    use parquet::file::properties::WriterProperties;

    use super::{Header, Sink};
    use crate::error::{Error, Result};
    use crate::query::frame::ColumnFrame;

    /// The schema of both files: `instrument`, `datetime`, then one float32 column per feature. The time is
    /// in milliseconds: Parquet has no timestamp of seconds (arrow-rs would write a bare integer), and
    /// milliseconds are polars' own unit.
    fn schema(header: &Header) -> SchemaRef {
        let mut fields = vec![
            Field::new_dictionary("instrument", DataType::Int32, DataType::Utf8, false),
            Field::new(
                "datetime",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ];
        fields.extend(
            header
                .columns
                .iter()
                .map(|c| Field::new(c, DataType::Float32, false)),
        );
        Arc::new(Schema::new(fields))
    }

    /// Builds a part's record batch: the instrument column keys into the header's dictionary (one
    /// dictionary for every batch, which the Arrow file format requires), the values copied once from the
    /// part's columns.
    struct Batches {
        schema: SchemaRef,
        dictionary: ArrayRef,
        codes: std::collections::HashMap<String, i32>,
    }

    impl Batches {
        fn new(header: &Header) -> Batches {
            Batches {
                schema: schema(header),
                dictionary: Arc::new(StringArray::from_iter_values(&header.instruments)),
                codes: header
                    .instruments
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s.clone(), i as i32))
                    .collect(),
            }
        }

        fn batch(&self, part: &ColumnFrame) -> Result<RecordBatch> {
            // The part's instrument codes in the query's dictionary.
            let global: Vec<i32> = part
                .instruments()
                .iter()
                .map(|i| {
                    self.codes.get(i).copied().ok_or_else(|| Error::Output {
                        format: "arrow",
                        reason: format!("instrument {i:?} is not in the query's list"),
                    })
                })
                .collect::<Result<_>>()?;
            let keys =
                Int32Array::from_iter_values(part.index().iter().map(|&(c, _)| global[c as usize]));
            let instrument = DictionaryArray::<Int32Type>::try_new(keys, self.dictionary.clone())
                .map_err(arrow_error)?;
            let dates = part.calendar().dates();
            let datetime = TimestampMillisecondArray::from_iter_values(
                part.index()
                    .iter()
                    .map(|&(_, r)| dates[r as usize].and_utc().timestamp_millis()),
            );
            let mut columns: Vec<ArrayRef> = vec![Arc::new(instrument), Arc::new(datetime)];
            columns.extend(
                (0..part.columns().len())
                    .map(|c| Arc::new(Float32Array::from(part.column(c).to_vec())) as ArrayRef),
            );
            RecordBatch::try_new(self.schema.clone(), columns).map_err(arrow_error)
        }
    }

    fn arrow_error(e: ArrowError) -> Error {
        Error::Output {
            format: "arrow",
            reason: e.to_string(),
        }
    }

    /// A Parquet error; the I/O error itself where there is one.
    fn parquet_error(header: &Header, e: ParquetError) -> Error {
        match e {
            ParquetError::External(inner) => match inner.downcast::<std::io::Error>() {
                Ok(io) => super::io_error(header, *io),
                Err(other) => Error::Output {
                    format: "parquet",
                    reason: other.to_string(),
                },
            },
            other => Error::Output {
                format: "parquet",
                reason: other.to_string(),
            },
        }
    }

    pub(super) struct ParquetSink<W: Write + Send> {
        writer: ArrowWriter<W>,
        batches: Batches,
        header: Header,
    }

    impl<W: Write + Send> ParquetSink<W> {
        pub(super) fn new(out: W, header: Header) -> Result<Self> {
            let batches = Batches::new(&header);
            // Snappy: what pandas and pyarrow write by default, fast both ways. Dictionary encoding only
            // where it pays (the instrument column); float features rarely repeat.
            let props = WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .set_dictionary_enabled(false)
                .set_column_dictionary_enabled("instrument".into(), true)
                .set_created_by(format!("qstore {}", env!("CARGO_PKG_VERSION")))
                .build();
            let writer = ArrowWriter::try_new(out, batches.schema.clone(), Some(props))
                .map_err(|e| parquet_error(&header, e))?;
            Ok(ParquetSink {
                writer,
                batches,
                header,
            })
        }
    }

    impl<W: Write + Send> Sink for ParquetSink<W> {
        fn write(&mut self, part: &ColumnFrame) -> Result<()> {
            if part.is_empty() {
                return Ok(());
            }
            let batch = self.batches.batch(part)?;
            self.writer
                .write(&batch)
                .map_err(|e| parquet_error(&self.header, e))?;
            // One row group per part: the writer holds one part's encoded pages, not the query's.
            self.writer
                .flush()
                .map_err(|e| parquet_error(&self.header, e))
        }

        fn finish(self: Box<Self>) -> Result<()> {
            let ParquetSink { writer, header, .. } = *self;
            let mut out = writer.into_inner().map_err(|e| parquet_error(&header, e))?;
            out.flush().map_err(|e| super::io_error(&header, e))
        }
    }

    pub(super) struct ArrowSink<W: Write> {
        writer: arrow_ipc::writer::FileWriter<W>,
        batches: Batches,
        header: Header,
    }

    impl<W: Write> ArrowSink<W> {
        pub(super) fn new(out: W, header: Header) -> Result<Self> {
            let batches = Batches::new(&header);
            let writer = arrow_ipc::writer::FileWriter::try_new(out, &batches.schema)
                .map_err(|e| ipc_error(&header, e))?;
            Ok(ArrowSink {
                writer,
                batches,
                header,
            })
        }
    }

    /// An Arrow IPC error; the I/O error itself where there is one.
    fn ipc_error(header: &Header, e: ArrowError) -> Error {
        match e {
            ArrowError::IoError(_, io) => super::io_error(header, io),
            other => arrow_error(other),
        }
    }

    impl<W: Write + Send> Sink for ArrowSink<W> {
        fn write(&mut self, part: &ColumnFrame) -> Result<()> {
            if part.is_empty() {
                return Ok(());
            }
            let batch = self.batches.batch(part)?;
            self.writer
                .write(&batch)
                .map_err(|e| ipc_error(&self.header, e))
        }

        fn finish(self: Box<Self>) -> Result<()> {
            let ArrowSink {
                mut writer, header, ..
            } = *self;
            writer.finish().map_err(|e| ipc_error(&header, e))?;
            let mut out = writer.into_inner().map_err(|e| ipc_error(&header, e))?;
            out.flush().map_err(|e| super::io_error(&header, e))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::query::frame::Values;
    use crate::store::calendar::{Calendar, Timestamp, parse_timestamp};

    /// `rows` rows of instrument X with three columns: all NaN; NaN every 7th row, else `r - 100`; `r % 1000`
    /// (integers: exact sums), cut into parts of the given sizes.
    fn parts(rows: usize, sizes: &[usize]) -> Vec<ColumnFrame> {
        let dates: Vec<Timestamp> = (0..rows as u64)
            .map(|d| parse_timestamp("2000-01-01").unwrap() + chrono::Days::new(d))
            .collect();
        let calendar = Arc::new(Calendar::new(Freq::DAY, dates).unwrap());
        let mut out = Vec::new();
        let mut r0 = 0;
        for &n in sizes {
            let rs: Vec<usize> = (r0..r0 + n).collect();
            let mut values: Vec<f32> = rs.iter().map(|_| f32::NAN).collect();
            values.extend(rs.iter().map(|&r| {
                if r % 7 == 0 {
                    f32::NAN
                } else {
                    r as f32 - 100.0
                }
            }));
            values.extend(rs.iter().map(|&r| (r % 1000) as f32));
            out.push(ColumnFrame::from_parts(
                vec!["a".into(), "b".into(), "c".into()],
                vec![("X".into(), rs)],
                calendar.clone(),
                Values::from(values),
            ));
            r0 += n;
        }
        out
    }

    fn written(format: Format, parts: Vec<ColumnFrame>) -> String {
        let mut out = Vec::new();
        let header = Header {
            columns: vec!["a".into(), "b".into(), "c".into()],
            instruments: vec!["X".into()],
            freq: Freq::DAY,
            path: "-".into(),
        };
        write_parts(sink(format, &mut out, header).unwrap(), |each| {
            parts.into_iter().try_for_each(each)
        })
        .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn stats_match_a_direct_count_wherever_the_parts_begin() {
        let rows = 3 * 4096 + 77;
        let text = written(Format::Stats, parts(rows, &[rows]));
        for sizes in [
            &[1, rows - 1][..],
            &[4096, 4096, 4096, 77],
            &[13, 5000, rows - 5013],
        ] {
            assert_eq!(
                written(Format::Stats, parts(rows, sizes)),
                text,
                "{sizes:?}"
            );
        }
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
        assert_eq!(lines[0], ["column", "rows", "nan", "mean", "min", "max"]);
        assert_eq!(
            lines[1][1..],
            [&*rows.to_string(), &*rows.to_string(), "NaN", "inf", "-inf"]
        );
        let valid_b: Vec<f64> = (0..rows)
            .filter(|r| r % 7 != 0)
            .map(|r| r as f64 - 100.0)
            .collect();
        let mean_b = valid_b.iter().sum::<f64>() / valid_b.len() as f64;
        assert_eq!(lines[2][2], (rows - valid_b.len()).to_string());
        assert_eq!(lines[2][3].parse::<f64>().unwrap(), mean_b);
        assert_eq!(lines[2][4..], ["-99", &*(rows as f64 - 101.0).to_string()]);
        let mean_c = (0..rows).map(|r| (r % 1000) as f64).sum::<f64>() / rows as f64;
        assert_eq!(lines[3][2..], ["0", &*mean_c.to_string(), "0", "999"]);
    }

    #[test]
    fn text_outputs_do_not_depend_on_the_parts() {
        for format in [Format::Csv, Format::Json] {
            let whole = written(format, parts(50, &[50]));
            assert_eq!(written(format, parts(50, &[1, 20, 29])), whole);
            assert_eq!(
                whole.lines().count(),
                50 + usize::from(format == Format::Csv)
            );
        }
        let csv = written(Format::Csv, parts(8, &[8]));
        assert_eq!(csv.lines().nth(1), Some("X,2000-01-01,,,0"));
        assert_eq!(csv.lines().nth(2), Some("X,2000-01-02,,-99,1"));
        let json = written(Format::Json, parts(8, &[8]));
        assert_eq!(
            json.lines().nth(1),
            Some(r#"{"instrument":"X","datetime":"2000-01-02","a":null,"b":-99,"c":1}"#)
        );
    }

    /// The fast text writers give what the csv crate and serde_json give for every kind of f32 (NaN,
    /// infinities, -0, subnormals, extremes), across block and window boundaries, with names that need quoting.
    #[test]
    fn text_rows_equal_the_csv_crate_and_serde_json() {
        let rows = WINDOW_ROWS + BLOCK_ROWS + 7;
        let dates: Vec<Timestamp> = (0..rows as u64 / 2 + 1)
            .map(|d| parse_timestamp("1990-01-01").unwrap() + chrono::Days::new(d))
            .collect();
        let calendar = Arc::new(Calendar::new(Freq::DAY, dates).unwrap());
        let special = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            f32::MIN_POSITIVE / 8.0,
            f32::MAX,
            f32::MIN,
            1e-30,
            0.1,
            123456.79,
        ];
        let mut x = 0x9e37_79b9_u32;
        let mut values = Vec::new();
        for c in 0..2 {
            for r in 0..rows {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                values.push(if (r + c) % 3 == 0 {
                    special[(r / 3) % special.len()]
                } else {
                    f32::from_bits(x)
                });
            }
        }
        let half = rows / 2 + 1;
        let frame = ColumnFrame::from_parts(
            vec!["a,b".into(), "say \"c\"".into()],
            vec![
                ("X,Y".into(), (0..half).collect()),
                ("Q\"Z".into(), (0..rows - half).collect()),
            ],
            calendar,
            Values::from(values),
        );
        let write = |format| {
            let mut out = Vec::new();
            let header = Header {
                columns: frame.columns().to_vec(),
                instruments: frame.instruments().to_vec(),
                freq: Freq::DAY,
                path: "-".into(),
            };
            let mut s = sink(format, &mut out, header).unwrap();
            s.write(&frame).unwrap();
            s.finish().unwrap();
            out
        };
        let mut want = csv::Writer::from_writer(Vec::new());
        want.write_record(["instrument", "datetime", "a,b", "say \"c\""])
            .unwrap();
        for r in 0..frame.len() {
            let (code, row) = frame.index()[r];
            let mut rec = vec![
                frame.instruments()[code as usize].clone(),
                frame.calendar().dates()[row as usize].date().to_string(),
            ];
            rec.extend((0..2).map(|c| {
                let v = frame.column(c)[r];
                if v.is_nan() {
                    String::new()
                } else {
                    v.to_string()
                }
            }));
            want.write_record(&rec).unwrap();
        }
        assert!(write(Format::Csv) == want.into_inner().unwrap(), "CSV");
        let json = String::from_utf8(write(Format::Json)).unwrap();
        let mut n = 0;
        for (r, line) in json.lines().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let (code, _) = frame.index()[r];
            assert_eq!(v["instrument"], frame.instruments()[code as usize].as_str());
            for (c, key) in ["a,b", "say \"c\""].iter().enumerate() {
                let x = frame.column(c)[r];
                if x.is_finite() {
                    assert_eq!(v[key].as_f64().unwrap() as f32, x, "row {r}");
                } else {
                    assert!(v[key].is_null());
                }
            }
            n += 1;
        }
        assert_eq!(n, rows);
    }

    #[test]
    fn a_failed_writer_stops_the_producer_with_its_own_error() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from(std::io::ErrorKind::StorageFull))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let header = Header {
            columns: vec!["a".into(), "b".into(), "c".into()],
            instruments: vec!["X".into()],
            freq: Freq::DAY,
            path: "out.csv".into(),
        };
        let mut produced = 0;
        let err = write_parts(sink(Format::Json, Full, header).unwrap(), |each| {
            for p in parts(100, &[10; 10]) {
                produced += 1;
                each(p)?;
            }
            Ok(())
        })
        .unwrap_err();
        assert!(
            matches!(&err, Error::Io { path, source, .. }
                if path.as_os_str() == "out.csv" && source.kind() == std::io::ErrorKind::StorageFull),
            "{err:?}"
        );
        assert!(
            produced < 10,
            "the producer stopped early ({produced} parts)"
        );
    }
}
