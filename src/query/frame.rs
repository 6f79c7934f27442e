//! The result of a features query: rows indexed by (instrument, datetime), one f32 column per expression.

use std::ops::Range;
use std::sync::{Arc, Mutex, Weak};

use rayon::prelude::*;

use crate::store::calendar::{Calendar, Timestamp};

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
    Mapped(Mapping),
}

/// A frame's anonymous mapping, given back to the [`Spares`] of the query that made it (if that query is
/// still running) when the frame is dropped.
#[derive(Debug)]
pub(crate) struct Mapping {
    /// Present until dropped.
    map: Option<memmap2::MmapMut>,
    /// The values are its first `len` f32s (a reused mapping may be longer).
    len: usize,
    home: Weak<Spares>,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if let (Some(map), Some(home)) = (self.map.take(), self.home.upgrade()) {
            home.put(map);
        }
    }
}

/// Mappings of a query's parts that its consumer has finished with, for its next parts
/// (`Engine::features_in_parts`): a fresh 128 MB part is 128 MB of pages the kernel zeroes on first touch, 18%
/// of the CPU time of a whole-universe Alpha158 query (perf), where a reused one is only refilled with NaN.
/// Dropped with the query, so nothing is kept after it.
#[derive(Debug, Default)]
pub(crate) struct Spares {
    maps: Mutex<Vec<memmap2::MmapMut>>,
}

impl Spares {
    /// At most this many are kept: the writer holds one part while the next is computed.
    const KEEP: usize = 2;

    fn put(&self, map: memmap2::MmapMut) {
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        if maps.len() < Self::KEEP {
            maps.push(map);
        }
    }

    /// The smallest kept mapping of at least `bytes` (parts differ by a few instruments' rows).
    fn take(&self, bytes: usize) -> Option<memmap2::MmapMut> {
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        let at = (0..maps.len())
            .filter(|&i| maps[i].len() >= bytes)
            .min_by_key(|&i| maps[i].len())?;
        Some(maps.swap_remove(at))
    }
}

/// Frames at least this large are mapped.
const MAP_BYTES: usize = 4 << 20;

impl Values {
    /// `len` NaNs, filled on every core.
    pub(crate) fn nan(len: usize) -> Values {
        Values::nan_reusing(len, None)
    }

    /// [`nan`](Self::nan), in a mapping from `spares` when it holds one large enough; the mapping goes back to
    /// `spares` when the values are dropped while it lives.
    pub(crate) fn nan_reusing(len: usize, spares: Option<&Arc<Spares>>) -> Values {
        let bytes = len * std::mem::size_of::<f32>();
        let kept = spares.and_then(|s| s.take(bytes));
        let mapped = kept.or_else(|| {
            // Room for a slightly larger part later: parts differ by a few instruments' rows, and one a few
            // kilobytes larger than every spare took a fresh mapping (three of Alpha158's 18 parts over 5,000
            // instruments instead of two). Pages past `len` are never touched, so the room costs no memory.
            let room = (bytes + bytes / 16).next_multiple_of(4096);
            (bytes >= MAP_BYTES)
                .then(|| memmap2::MmapOptions::new().len(room).map_anon().ok())
                .flatten()
                .inspect(|map| {
                    // Only a hint: without huge pages the mapping works the same.
                    let _ = map.advise(memmap2::Advice::HugePage);
                })
        });
        let mut v = match mapped {
            Some(map) => Values::Mapped(Mapping {
                map: Some(map),
                len,
                home: spares.map_or_else(Weak::new, Arc::downgrade),
            }),
            None => Values::Heap(vec![0.0; len]),
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
            Values::Mapped(m) => {
                let map = m.map.as_ref().expect("present until dropped");
                &bytemuck::cast_slice(&map[..])[..m.len]
            }
        }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [f32] {
        match self {
            Values::Heap(v) => v,
            Values::Mapped(m) => {
                let map = m.map.as_mut().expect("present until dropped");
                &mut bytemuck::cast_slice_mut(&mut map[..])[..m.len]
            }
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

    /// The same frame laid out column by column (transposed on every core), for the writers, which take
    /// columns.
    pub fn to_columns(&self) -> ColumnFrame {
        let n = self.len();
        let ncol = self.columns.len();
        let mut values = Values::nan(n * ncol);
        if n > 0 {
            let rows = self.values.as_slice();
            values
                .as_mut_slice()
                .par_chunks_mut(n)
                .enumerate()
                .for_each(|(c, col)| {
                    for (r, v) in col.iter_mut().enumerate() {
                        *v = rows[r * ncol + c];
                    }
                });
        }
        ColumnFrame {
            columns: self.columns.clone(),
            instruments: self.instruments.clone(),
            index: self.index.clone(),
            calendar: self.calendar.clone(),
            values,
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
    fn a_dropped_mapping_is_reused_while_its_spares_live() {
        let len = MAP_BYTES / 4 * 2;
        let spares = Arc::new(Spares::default());
        let mut a = Values::nan_reusing(len, Some(&spares));
        a.as_mut_slice()[5] = 1.0;
        let at = a.as_slice().as_ptr();
        drop(a);
        // The same pages, all NaN again.
        let b = Values::nan_reusing(len, Some(&spares));
        assert_eq!(b.as_slice().as_ptr(), at);
        assert!(b.as_slice().iter().all(|x| x.is_nan()));
        // A larger size is a mapping of its own; a smaller one reuses a larger mapping; at most two are kept.
        let c = Values::nan_reusing(len + 1024, Some(&spares));
        assert_ne!(c.as_slice().as_ptr(), at);
        let d = Values::nan_reusing(len, Some(&spares));
        drop((b, c, d));
        assert_eq!(spares.maps.lock().unwrap().len(), Spares::KEEP);
        let small = Values::nan_reusing(len - 4096, Some(&spares));
        assert_eq!(small.as_slice().len(), len - 4096);
        assert_eq!(small.as_slice().as_ptr(), at, "the smallest that fits");
        assert!(small.as_slice().iter().all(|x| x.is_nan()));
        drop(small);
        // Once the query's spares are gone, a frame that outlives it unmaps as usual.
        let e = Values::nan_reusing(len, Some(&spares));
        drop(spares);
        drop(e);
    }
}
