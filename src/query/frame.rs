//! The result of a features query: rows indexed by (instrument, datetime), one f32 column per expression.

use std::io::Write;
use std::ops::Range;
use std::sync::Arc;

use rayon::prelude::*;

use crate::store::calendar::{Calendar, Timestamp, format_timestamp};

/// Rows sorted by instrument then date (qlib's `D.features` order), values stored row-major so that a row,
/// the unit a training sample is built from, is one contiguous slice.
#[derive(Debug, Clone)]
pub struct Frame {
    columns: Vec<String>,
    instruments: Vec<String>,
    /// Per row: index into `instruments`, calendar row.
    index: Vec<(u32, u32)>,
    calendar: Arc<Calendar>,
    values: Values,
}

/// A frame's values. Large ones live in an anonymous mapping with transparent huge pages: a frame of
/// 200 MB is 50,000 page faults in 4 KB pages (a tenth of a query's CPU time, in the kernel) and about
/// 100 in 2 MB ones.
#[derive(Debug)]
pub(crate) enum Values {
    Heap(Vec<f32>),
    Mapped(memmap2::MmapMut),
}

/// Frames at least this large are mapped.
const MAP_BYTES: usize = 4 << 20;

impl Values {
    /// `len` NaNs, filled on every core.
    pub(crate) fn nan(len: usize) -> Values {
        let bytes = len * std::mem::size_of::<f32>();
        let mut v = if bytes >= MAP_BYTES
            && let Ok(map) = memmap2::MmapOptions::new().len(bytes).map_anon()
        {
            // Only a hint: without huge pages the mapping works the same.
            let _ = map.advise(memmap2::Advice::HugePage);
            Values::Mapped(map)
        } else {
            Values::Heap(vec![0.0; len])
        };
        v.as_mut_slice()
            .par_chunks_mut(1 << 16)
            .for_each(|c| c.fill(f32::NAN));
        v
    }

    pub(crate) fn as_slice(&self) -> &[f32] {
        match self {
            Values::Heap(v) => v,
            // A page-aligned mapping of whole f32s.
            Values::Mapped(m) => bytemuck::cast_slice(&m[..]),
        }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [f32] {
        match self {
            Values::Heap(v) => v,
            Values::Mapped(m) => bytemuck::cast_slice_mut(&mut m[..]),
        }
    }
}

impl From<Vec<f32>> for Values {
    fn from(v: Vec<f32>) -> Values {
        Values::Heap(v)
    }
}

impl Clone for Values {
    fn clone(&self) -> Values {
        Values::Heap(self.as_slice().to_vec())
    }
}

impl Frame {
    /// A frame of `values` (row-major) whose rows are, in order, each instrument's calendar rows.
    pub(crate) fn from_parts(
        columns: Vec<String>,
        rows: Vec<(String, Vec<usize>)>,
        calendar: Arc<Calendar>,
        values: impl Into<Values>,
    ) -> Frame {
        let values = values.into();
        let (instruments, index) = row_index(rows);
        assert_eq!(
            index.len() * columns.len(),
            values.as_slice().len(),
            "one value per row and column"
        );
        Frame {
            columns,
            instruments,
            index,
            calendar,
            values,
        }
    }

    /// Renames the columns (a feature set's names for its expressions). Panics unless there is one name per
    /// column.
    pub fn rename_columns(&mut self, names: Vec<String>) {
        assert_eq!(names.len(), self.columns.len(), "one name per column");
        self.columns = names;
    }

    /// The column names: the expressions (or feature names) as the caller gave them.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The instruments that have rows, in row order.
    pub fn instruments(&self) -> &[String] {
        &self.instruments
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The instrument of row `r`.
    pub fn instrument(&self, r: usize) -> &str {
        &self.instruments[self.index[r].0 as usize]
    }

    /// Row `r`'s instrument as an index into [`instruments`](Self::instruments).
    pub fn instrument_code(&self, r: usize) -> usize {
        self.index[r].0 as usize
    }

    /// Every row's (instrument code, calendar row): the frame's index without a copy, for bindings that
    /// build their own (pandas' MultiIndex).
    pub fn index(&self) -> &[(u32, u32)] {
        &self.index
    }

    /// The calendar the rows' dates come from.
    pub fn calendar(&self) -> &Calendar {
        &self.calendar
    }

    /// The calendar row of row `r`.
    pub fn calendar_row(&self, r: usize) -> usize {
        self.index[r].1 as usize
    }

    /// The timestamp of row `r`.
    pub fn datetime(&self, r: usize) -> Timestamp {
        self.calendar.dates()[self.calendar_row(r)]
    }

    /// The values of row `r`, one per column.
    pub fn row(&self, r: usize) -> &[f32] {
        let n = self.columns.len();
        &self.values.as_slice()[r * n..(r + 1) * n]
    }

    pub fn value(&self, r: usize, c: usize) -> f32 {
        self.values.as_slice()[r * self.columns.len() + c]
    }

    /// Column `c` as a vector.
    pub fn column(&self, c: usize) -> Vec<f32> {
        (0..self.len()).map(|r| self.value(r, c)).collect()
    }

    /// The rows of one instrument.
    pub fn rows_of(&self, instrument: &str) -> Range<usize> {
        let Some(code) = self.instruments.iter().position(|i| i == instrument) else {
            return 0..0;
        };
        let start = self.index.partition_point(|&(c, _)| c < code as u32);
        let end = self.index.partition_point(|&(c, _)| c <= code as u32);
        start..end
    }

    /// All values, row-major (`len() x columns().len()`).
    pub fn values(&self) -> &[f32] {
        self.values.as_slice()
    }

    /// Writes `instrument,datetime,<columns...>` CSV; NaN is an empty cell (as pandas writes it).
    pub fn write_csv(&self, out: impl Write) -> csv::Result<()> {
        let mut w = csv::Writer::from_writer(out);
        let date_only = self.calendar.freq().date_only();
        let mut header = vec!["instrument".to_string(), "datetime".to_string()];
        header.extend(self.columns.iter().cloned());
        w.write_record(&header)?;
        let mut rec = Vec::with_capacity(header.len());
        for r in 0..self.len() {
            rec.clear();
            rec.push(self.instrument(r).to_string());
            rec.push(format_timestamp(self.datetime(r), date_only));
            rec.extend(self.row(r).iter().map(|v| {
                if v.is_nan() {
                    String::new()
                } else {
                    // Shortest text that reads back to the same f32.
                    v.to_string()
                }
            }));
            w.write_record(&rec)?;
        }
        w.flush()?;
        Ok(())
    }

    /// One JSON object per row and line, keys in column order: `{"instrument": .., "datetime": ..,
    /// "<column>": value}`; NaN and infinities are `null`.
    pub fn write_json_lines(&self, mut out: impl Write) -> std::io::Result<()> {
        let date_only = self.calendar.freq().date_only();
        let keys: Vec<String> = self
            .columns
            .iter()
            .map(|c| serde_json::to_string(c).expect("strings serialize"))
            .collect();
        let mut line = String::new();
        for r in 0..self.len() {
            line.clear();
            line.push_str("{\"instrument\":");
            line.push_str(&serde_json::to_string(self.instrument(r)).expect("strings serialize"));
            line.push_str(",\"datetime\":\"");
            line.push_str(&format_timestamp(self.datetime(r), date_only));
            line.push('"');
            for (k, v) in keys.iter().zip(self.row(r)) {
                line.push(',');
                line.push_str(k);
                line.push(':');
                if v.is_finite() {
                    line.push_str(&v.to_string());
                } else {
                    line.push_str("null");
                }
            }
            line.push_str("}\n");
            out.write_all(line.as_bytes())?;
        }
        Ok(())
    }

    /// Per column: rows, NaN count, mean, min and max of the other values, tab-separated with a header.
    pub fn write_stats(&self, mut out: impl Write) -> std::io::Result<()> {
        let n = self.columns.len();
        // Blocks of rows summarised in parallel and merged in block order: the sums do not depend on the
        // number of threads.
        let parts: Vec<ColumnStats> = self
            .values
            .as_slice()
            .par_chunks(STATS_BLOCK_ROWS * n.max(1))
            .map(|block| {
                let mut s = ColumnStats::new(n);
                for row in block.chunks_exact(n.max(1)) {
                    s.add_row(row);
                }
                s
            })
            .collect();
        let mut all = ColumnStats::new(n);
        for p in &parts {
            all.merge(p);
        }
        let ColumnStats { nan, sum, lo, hi } = all;
        writeln!(out, "column\trows\tnan\tmean\tmin\tmax")?;
        for (c, name) in self.columns.iter().enumerate() {
            let valid = self.len() - nan[c] as usize;
            let mean = if valid == 0 {
                f64::NAN
            } else {
                sum[c] / valid as f64
            };
            writeln!(
                out,
                "{name}\t{}\t{}\t{mean}\t{}\t{}",
                self.len(),
                nan[c],
                lo[c],
                hi[c]
            )?;
        }
        Ok(())
    }
}

/// Rows per block of [`Frame::write_stats`].
const STATS_BLOCK_ROWS: usize = 4096;

/// Per column: NaN count, sum, min and max of the other values.
struct ColumnStats {
    nan: Vec<u64>,
    sum: Vec<f64>,
    /// The extremes in f32: exact, with no conversion per value.
    lo: Vec<f32>,
    hi: Vec<f32>,
}

impl ColumnStats {
    fn new(n: usize) -> Self {
        ColumnStats {
            nan: vec![0; n],
            sum: vec![0.0; n],
            lo: vec![f32::INFINITY; n],
            hi: vec![f32::NEG_INFINITY; n],
        }
    }

    /// Branch-free over the columns (`min`/`max` skip NaN), so the loop runs in vector registers.
    fn add_row(&mut self, row: &[f32]) {
        let cols = self.nan.iter_mut().zip(self.sum.iter_mut());
        let ends = self.lo.iter_mut().zip(self.hi.iter_mut());
        for ((&v, (nan, sum)), (lo, hi)) in row.iter().zip(cols).zip(ends) {
            let valid = !v.is_nan();
            *nan += u64::from(!valid);
            *sum += if valid { f64::from(v) } else { 0.0 };
            *lo = lo.min(v);
            *hi = hi.max(v);
        }
    }

    fn merge(&mut self, o: &ColumnStats) {
        for c in 0..self.nan.len() {
            self.nan[c] += o.nan[c];
            self.sum[c] += o.sum[c];
            self.lo[c] = self.lo[c].min(o.lo[c]);
            self.hi[c] = self.hi[c].max(o.hi[c]);
        }
    }
}

/// The instruments that have rows, and each row's (instrument code, calendar row), from each instrument's rows.
fn row_index(rows: Vec<(String, Vec<usize>)>) -> (Vec<String>, Vec<(u32, u32)>) {
    let mut instruments = Vec::new();
    let mut index = Vec::new();
    for (inst, rs) in rows {
        if rs.is_empty() {
            continue;
        }
        let code = instruments.len() as u32;
        instruments.push(inst);
        index.extend(rs.into_iter().map(|r| (code, r as u32)));
    }
    (instruments, index)
}

/// A features query column by column ([`Engine::features_by_column`](crate::query::Engine::features_by_column)):
/// the rows of a [`Frame`], in its order, with each column one contiguous slice (what Arrow, Parquet and
/// column stores take whole).
#[derive(Debug)]
pub struct ColumnFrame {
    columns: Vec<String>,
    instruments: Vec<String>,
    index: Vec<(u32, u32)>,
    calendar: Arc<Calendar>,
    values: Values,
}

impl ColumnFrame {
    /// A frame of `values` (column-major) whose rows are, in order, each instrument's calendar rows.
    pub(crate) fn from_parts(
        columns: Vec<String>,
        rows: Vec<(String, Vec<usize>)>,
        calendar: Arc<Calendar>,
        values: Values,
    ) -> ColumnFrame {
        let (instruments, index) = row_index(rows);
        assert_eq!(
            index.len() * columns.len(),
            values.as_slice().len(),
            "one value per row and column"
        );
        ColumnFrame {
            columns,
            instruments,
            index,
            calendar,
            values,
        }
    }

    /// Renames the columns (a feature set's names). Panics unless there is one name per column.
    pub fn rename_columns(&mut self, names: Vec<String>) {
        assert_eq!(names.len(), self.columns.len(), "one name per column");
        self.columns = names;
    }

    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The instruments that have rows, in row order.
    pub fn instruments(&self) -> &[String] {
        &self.instruments
    }

    /// Every row's (instrument code, calendar row).
    pub fn index(&self) -> &[(u32, u32)] {
        &self.index
    }

    pub fn calendar(&self) -> &Calendar {
        &self.calendar
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Column `c`, one value per row.
    pub fn column(&self, c: usize) -> &[f32] {
        let n = self.len();
        &self.values.as_slice()[c * n..(c + 1) * n]
    }

    /// All values, column-major (`columns().len() x len()`).
    pub fn values(&self) -> &[f32] {
        self.values.as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::freq::Freq;

    #[test]
    fn large_values_are_mapped_small_ones_on_the_heap_both_nan_and_writable() {
        let big = MAP_BYTES / 4 + 3;
        for (len, mapped) in [(big, true), (1000, false)] {
            let mut v = Values::nan(len);
            assert_eq!(matches!(v, Values::Mapped(_)), mapped, "{len}");
            assert_eq!(v.as_slice().len(), len);
            assert!(v.as_slice().iter().all(|x| x.is_nan()));
            v.as_mut_slice()[len - 1] = 7.0;
            let copy = v.clone();
            assert!(matches!(copy, Values::Heap(_)));
            assert_eq!(copy.as_slice()[len - 1], 7.0);
            assert!(copy.as_slice()[len - 2].is_nan());
        }
    }

    #[test]
    fn stats_over_many_blocks_match_a_direct_count() {
        let dates: Vec<Timestamp> = (0..10_000)
            .map(|d| {
                crate::store::calendar::parse_timestamp("2000-01-01").unwrap()
                    + chrono::Days::new(d)
            })
            .collect();
        let calendar = Arc::new(Calendar::new(Freq::DAY, dates).unwrap());
        let rows = 2 * STATS_BLOCK_ROWS + 77;
        // Column 0 all NaN, column 1 NaN every 7th row, column 2 integers (exact sums).
        let values: Vec<f32> = (0..rows)
            .flat_map(|r| {
                let b = if r % 7 == 0 {
                    f32::NAN
                } else {
                    r as f32 - 100.0
                };
                [f32::NAN, b, (r % 1000) as f32]
            })
            .collect();
        let frame = Frame::from_parts(
            vec!["a".into(), "b".into(), "c".into()],
            vec![("X".into(), (0..rows).collect())],
            calendar,
            values,
        );
        let mut out = Vec::new();
        frame.write_stats(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
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
}
