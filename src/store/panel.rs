//! Panel reads for training loops: many instruments x many fields x a date range in one contiguous array.

use std::sync::Arc;

use rayon::prelude::*;

use crate::store::bin::FeatureFile;

/// Calendar steps per parallel work item. Small enough to spread 750 days over both cores, large enough that
/// each file contributes one contiguous run per item.
const TIME_BLOCK: usize = 64;

/// A dense `time x instrument x field` array of f32, aligned to the calendar, NaN where there is no data.
///
/// Element `(t, i, f)` is at `data[(t * n_instruments + i) * n_fields + f]`, so one time step (a cross-section
/// of the market) is contiguous: the order batch training consumes.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    start: usize,
    len: usize,
    instruments: Vec<String>,
    fields: Vec<String>,
    data: Vec<f32>,
}

impl Panel {
    /// Calendar index of time step 0.
    pub fn start(&self) -> usize {
        self.start
    }

    /// `(time steps, instruments, fields)`.
    pub fn shape(&self) -> (usize, usize, usize) {
        (self.len, self.instruments.len(), self.fields.len())
    }

    pub fn instruments(&self) -> &[String] {
        &self.instruments
    }

    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    /// The value at time step `t`, instrument `i`, field `f`.
    pub fn get(&self, t: usize, i: usize, f: usize) -> f32 {
        let (_, n, m) = self.shape();
        assert!(i < n && f < m, "panel index out of bounds");
        self.data[(t * n + i) * m + f]
    }

    /// The whole array in `time x instrument x field` order.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn into_data(self) -> Vec<f32> {
        self.data
    }
}

/// Fills a panel from open files; `files[i * n_fields + f]` is instrument `i`, field `f`.
pub(crate) fn fill(
    files: &[Option<Arc<FeatureFile>>],
    range: std::ops::Range<usize>,
    instruments: Vec<String>,
    fields: Vec<String>,
) -> Panel {
    let (n, m) = (instruments.len(), fields.len());
    debug_assert_eq!(files.len(), n * m);
    let row = n * m;
    let len = range.len();
    let mut data = vec![f32::NAN; len * row];
    if row > 0 {
        data.par_chunks_mut(TIME_BLOCK * row)
            .enumerate()
            .for_each(|(b, block)| {
                let t0 = range.start + b * TIME_BLOCK;
                let t1 = t0 + block.len() / row;
                for (k, file) in files.iter().enumerate() {
                    let Some(file) = file else { continue };
                    let (first, values) = file.slice(t0..t1);
                    let mut at = (first - t0) * row + k;
                    for &v in values {
                        block[at] = v;
                        at += row;
                    }
                }
            });
    }
    Panel {
        start: range.start,
        len,
        instruments,
        fields,
        data,
    }
}
