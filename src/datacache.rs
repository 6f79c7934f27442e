//! DiskDatasetCache: a whole dataset (instruments x expressions over the calendar, e.g. Alpha158 for a market)
//! computed once and kept in HDF5, read back by date range without recomputing (storage-layout.md §9).
//!
//! Files `<store>/dataset_cache/<key>.data` (HDF5: `values` rows x fields f32, chunked; `instrument` u32 codes
//! into the `instruments` attribute; `row` u32 calendar rows; attribute `fields`), `<key>.index` (HDF5:
//! `start`, `end` u64 row offsets per calendar row) and `<key>.meta` (JSON, written last: the commit point).
//! Rows are sorted by calendar row, then instrument, so a date range is one contiguous hyperslab. Files are
//! published by temp + fsync + rename; readers take no lock. Plain datasets: h5py or any HDF5 tool reads them.
//!
//! Not built yet (issue #7): incremental update (a changed store rebuilds the dataset), the DatasetURICache,
//! and `qcache info/clear/verify` over datasets.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{Xxh3, xxh3_128};

use crate::calendar::Timestamp;
use crate::error::{Error, Result};
use crate::expr::{self, Expr, Fields};
use crate::features::{StoreFields, Universe};
use crate::frame::Frame;
use crate::freq::Freq;
use crate::fsio;
use crate::store::Store;

/// qlib's `disk_cache` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskCacheMode {
    /// 0: compute, leave the cache alone.
    Skip,
    /// 1: read the cached dataset, building it first when it is missing or stale.
    Use,
    /// 2: rebuild it, then read.
    Rebuild,
}

/// The `.meta` of a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetMeta {
    pub format: u32,
    /// `market:<name>` or the sorted instrument list.
    pub universe: Vec<String>,
    /// Canonical expressions, sorted: the column order of `values`.
    pub fields: Vec<String>,
    pub freq: String,
    pub calendar_len: usize,
    pub last_date: Option<String>,
    /// Published rows: readers read no further.
    pub rows: usize,
    /// xxh3 of every source field's stored values the dataset was computed from.
    pub fingerprint: String,
}

/// Where datasets live.
pub struct DiskDatasetCache {
    dir: PathBuf,
}

/// The default directory inside a store.
pub const DATASET_DIR: &str = "dataset_cache";

impl DiskDatasetCache {
    pub fn new(dir: impl AsRef<Path>) -> DiskDatasetCache {
        DiskDatasetCache {
            dir: dir.as_ref().to_path_buf(),
        }
    }

    /// The store's dataset cache in `<store>/dataset_cache`.
    pub fn for_store(root: &Path) -> DiskDatasetCache {
        DiskDatasetCache::new(root.join(DATASET_DIR))
    }

    /// Whether this build can read and write datasets (the `hdf5` cargo feature).
    pub fn available() -> bool {
        cfg!(feature = "hdf5")
    }

    /// The dataset of `exprs` for `universe` between `start` and `end`: the frame `Store::features` returns,
    /// in the caller's column order, read from the cache according to `mode` (qlib's `D.features` arguments).
    #[allow(clippy::too_many_arguments)]
    pub fn dataset<S: AsRef<str>>(
        &self,
        store: &Store,
        universe: Universe<'_>,
        exprs: &[S],
        start: Option<Timestamp>,
        end: Option<Timestamp>,
        freq: Freq,
        mode: DiskCacheMode,
    ) -> Result<Frame> {
        if mode == DiskCacheMode::Skip {
            return store.features(universe, exprs, start, end, freq);
        }
        let parsed: Vec<Expr> = exprs
            .iter()
            .map(|e| expr::parse(e.as_ref()))
            .collect::<Result<_>>()?;
        let mut fields: Vec<String> = parsed.iter().map(Expr::to_string).collect();
        fields.sort();
        fields.dedup();
        let norm = normalize(universe);
        let key = key(&norm, &fields, freq);
        let meta_path = self.dir.join(format!("{key}.meta"));
        let fingerprint = fingerprint(store, universe, &parsed, freq)?;
        let cal = store.calendar(freq)?;
        let current = std::fs::read(&meta_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<DatasetMeta>(&b).ok())
            .filter(|m| {
                m.calendar_len == cal.len() && m.fingerprint == fingerprint && m.fields == fields
            });
        let meta = match (mode, current) {
            (DiskCacheMode::Use, Some(m)) => m,
            _ => self.build(store, universe, &norm, &fields, freq, &key, fingerprint)?,
        };
        let columns: Vec<usize> = parsed
            .iter()
            .map(|e| {
                let c = e.to_string();
                fields
                    .iter()
                    .position(|f| *f == c)
                    .expect("every expression is a field")
            })
            .collect();
        let range = cal.locate(start, end);
        let names: Vec<String> = exprs.iter().map(|e| e.as_ref().to_string()).collect();
        imp::read(&self.dir, &key, &meta, &columns, names, range, cal)
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        store: &Store,
        universe: Universe<'_>,
        norm: &[String],
        fields: &[String],
        freq: Freq,
        key: &str,
        fingerprint: String,
    ) -> Result<DatasetMeta> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io("creating", &self.dir, e))?;
        let frame = store.features(universe, fields, None, None, freq)?;
        let cal = store.calendar(freq)?;
        // Rows by calendar row, then instrument.
        let mut order: Vec<usize> = (0..frame.len()).collect();
        order.sort_by_key(|&r| (frame.calendar_row(r), r));
        let meta = DatasetMeta {
            format: 1,
            universe: norm.to_vec(),
            fields: fields.to_vec(),
            freq: freq.to_string(),
            calendar_len: cal.len(),
            last_date: cal
                .last()
                .map(|d| crate::calendar::format_timestamp(d, freq.date_only())),
            rows: frame.len(),
            fingerprint,
        };
        imp::write(&self.dir, key, &frame, &order, cal.len())?;
        let text = serde_json::to_vec_pretty(&meta).expect("meta serializes");
        fsio::replace_atomic(&self.dir.join(format!("{key}.meta")), &text)?;
        Ok(meta)
    }
}

/// The normalised universe: `market:<name>`, or the sorted, de-duplicated, upper-case instrument list.
fn normalize(universe: Universe<'_>) -> Vec<String> {
    match universe {
        Universe::Market(m) => vec![format!("market:{}", m.to_lowercase())],
        Universe::List(l) => {
            let mut v: Vec<String> = l.iter().map(|s| s.to_uppercase()).collect();
            v.sort();
            v.dedup();
            v
        }
    }
}

/// 32 hex digits of xxh3-128 over the universe, the sorted canonical expressions and the frequency, each
/// item followed by a zero byte and each list by a 0x01 byte.
pub fn key(universe: &[String], fields: &[String], freq: Freq) -> String {
    let mut text = Vec::new();
    for list in [universe, fields] {
        for item in list {
            text.extend_from_slice(item.as_bytes());
            text.push(0);
        }
        text.push(1);
    }
    text.extend_from_slice(freq.to_string().as_bytes());
    format!("{:032x}", xxh3_128(&text))
}

/// A hash of every stored value the dataset reads (its instruments' fields, up to the calendar's end), so a
/// corrected or appended source makes the dataset stale.
fn fingerprint(
    store: &Store,
    universe: Universe<'_>,
    exprs: &[Expr],
    freq: Freq,
) -> Result<String> {
    let symbols: Vec<String> = match universe {
        Universe::Market(m) => store.instruments(m)?.symbols().map(String::from).collect(),
        Universe::List(l) => l.iter().map(|s| s.to_uppercase()).collect(),
    };
    let mut names: Vec<&str> = exprs.iter().flat_map(|e| e.fields()).collect();
    names.sort_unstable();
    names.dedup();
    let cal_len = store.calendar(freq)?.len();
    let fields = StoreFields { store, freq };
    let mut h = Xxh3::new();
    for s in &symbols {
        for f in &names {
            if let Some(c) = fields.column(s, f)? {
                let v = c.values();
                let n = v.len().min(cal_len.saturating_sub(c.start()));
                h.update(&(c.start() as u64).to_le_bytes());
                h.update(bytemuck::cast_slice(&v[..n]));
            }
            h.update(&[0]);
        }
    }
    Ok(format!("{:032x}", h.digest128()))
}

#[cfg(feature = "hdf5")]
mod imp {
    use std::ops::Range;
    use std::path::Path;
    use std::sync::Arc;

    use hdf5::types::VarLenUnicode;

    use super::DatasetMeta;
    use crate::calendar::Calendar;
    use crate::error::{Error, Result};
    use crate::frame::Frame;
    use crate::fsio;

    fn h5(path: &Path, e: hdf5::Error) -> Error {
        Error::io("writing HDF5", path, std::io::Error::other(e.to_string()))
    }

    fn unicode(s: &str) -> VarLenUnicode {
        s.parse().expect("no NUL in names")
    }

    /// Writes `.data` and `.index` by temp + fsync + rename.
    pub fn write(
        dir: &Path,
        key: &str,
        frame: &Frame,
        order: &[usize],
        cal_len: usize,
    ) -> Result<()> {
        let ncol = frame.columns().len();
        let n = order.len();
        let data_path = dir.join(format!("{key}.data"));
        let tmp = dir.join(format!("{}{key}.data", fsio::TEMP_PREFIX));
        {
            let f = hdf5::File::create(&tmp).map_err(|e| h5(&tmp, e))?;
            let mut values = Vec::with_capacity(n * ncol);
            let (mut inst, mut rows) = (Vec::with_capacity(n), Vec::with_capacity(n));
            let codes: std::collections::HashMap<&str, u32> = frame
                .instruments()
                .iter()
                .enumerate()
                .map(|(i, s)| (s.as_str(), i as u32))
                .collect();
            for &r in order {
                values.extend_from_slice(frame.row(r));
                inst.push(codes[frame.instrument(r)]);
                rows.push(frame.calendar_row(r) as u32);
            }
            let chunk = n.clamp(1, 4096);
            let ds = f
                .new_dataset::<f32>()
                .chunk((chunk, ncol.max(1)))
                .shape((n.., ncol))
                .create("values")
                .map_err(|e| h5(&tmp, e))?;
            ds.write_raw(&values).map_err(|e| h5(&tmp, e))?;
            let names = frame.columns().join("\n");
            ds.new_attr::<VarLenUnicode>()
                .shape(())
                .create("fields")
                .and_then(|a| a.write_scalar(&unicode(&names)))
                .map_err(|e| h5(&tmp, e))?;
            for (name, v) in [("instrument", &inst), ("row", &rows)] {
                f.new_dataset::<u32>()
                    .chunk((chunk,))
                    .shape((n..,))
                    .create(name)
                    .and_then(|d| d.write_raw(v))
                    .map_err(|e| h5(&tmp, e))?;
            }
            f.new_attr::<VarLenUnicode>()
                .shape(())
                .create("instruments")
                .and_then(|a| a.write_scalar(&unicode(&frame.instruments().join("\n"))))
                .map_err(|e| h5(&tmp, e))?;
        }
        sync_rename(&tmp, &data_path)?;
        // The index: [start, end) rows of each calendar row.
        let (mut start, mut end) = (vec![0u64; cal_len], vec![0u64; cal_len]);
        let mut i = 0;
        for (c, (s, e)) in start.iter_mut().zip(end.iter_mut()).enumerate() {
            *s = i as u64;
            while i < n && frame.calendar_row(order[i]) == c {
                i += 1;
            }
            *e = i as u64;
        }
        let index_path = dir.join(format!("{key}.index"));
        let tmp = dir.join(format!("{}{key}.index", fsio::TEMP_PREFIX));
        {
            let f = hdf5::File::create(&tmp).map_err(|e| h5(&tmp, e))?;
            for (name, v) in [("start", &start), ("end", &end)] {
                f.new_dataset::<u64>()
                    .chunk((cal_len.clamp(1, 4096),))
                    .shape((cal_len..,))
                    .create(name)
                    .and_then(|d| d.write_raw(v))
                    .map_err(|e| h5(&tmp, e))?;
            }
        }
        sync_rename(&tmp, &index_path)
    }

    fn sync_rename(tmp: &Path, to: &Path) -> Result<()> {
        let f = std::fs::File::open(tmp).map_err(|e| Error::io("opening", tmp, e))?;
        f.sync_all().map_err(|e| Error::io("syncing", tmp, e))?;
        std::fs::rename(tmp, to).map_err(|e| Error::io("renaming", to, e))?;
        fsio::fsync_dir(to.parent().expect("in a directory"))
    }

    /// One hyperslab of the rows of calendar `range`, as a frame ordered like `Store::features`.
    pub fn read(
        dir: &Path,
        key: &str,
        meta: &DatasetMeta,
        columns: &[usize],
        names: Vec<String>,
        range: Range<usize>,
        cal: Arc<Calendar>,
    ) -> Result<Frame> {
        let rd = |p: &Path, e: hdf5::Error| {
            Error::io("reading HDF5", p, std::io::Error::other(e.to_string()))
        };
        let index_path = dir.join(format!("{key}.index"));
        let data_path = dir.join(format!("{key}.data"));
        let (a, b) = if range.is_empty() {
            (0, 0)
        } else {
            let f = hdf5::File::open(&index_path).map_err(|e| rd(&index_path, e))?;
            let s = f
                .dataset("start")
                .and_then(|d| d.read_slice_1d::<u64, _>(range.start..range.start + 1))
                .map_err(|e| rd(&index_path, e))?[0];
            let e = f
                .dataset("end")
                .and_then(|d| d.read_slice_1d::<u64, _>(range.end - 1..range.end))
                .map_err(|e| rd(&index_path, e))?[0];
            (s as usize, (e as usize).min(meta.rows))
        };
        let f = hdf5::File::open(&data_path).map_err(|e| rd(&data_path, e))?;
        let instruments: VarLenUnicode = f
            .attr("instruments")
            .and_then(|a| a.read_scalar())
            .map_err(|e| rd(&data_path, e))?;
        let instruments: Vec<String> = if instruments.is_empty() {
            Vec::new()
        } else {
            instruments.as_str().split('\n').map(String::from).collect()
        };
        let ncol = meta.fields.len();
        let (values, inst, rows): (Vec<f32>, Vec<u32>, Vec<u32>) = if a < b {
            let v = f
                .dataset("values")
                .and_then(|d| d.read_slice_2d::<f32, _>((a..b, ..)))
                .map_err(|e| rd(&data_path, e))?;
            let i = f
                .dataset("instrument")
                .and_then(|d| d.read_slice_1d::<u32, _>(a..b))
                .map_err(|e| rd(&data_path, e))?;
            let r = f
                .dataset("row")
                .and_then(|d| d.read_slice_1d::<u32, _>(a..b))
                .map_err(|e| rd(&data_path, e))?;
            (v.iter().copied().collect(), i.to_vec(), r.to_vec())
        } else {
            (Vec::new(), Vec::new(), Vec::new())
        };
        // Back to (instrument, date) order, the user's columns.
        let mut order: Vec<usize> = (0..inst.len()).collect();
        order.sort_by_key(|&k| (&instruments[inst[k] as usize], rows[k]));
        let mut out = Vec::with_capacity(order.len() * columns.len());
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for &k in &order {
            let name = &instruments[inst[k] as usize];
            if groups.last().is_none_or(|(g, _)| g != name) {
                groups.push((name.clone(), Vec::new()));
            }
            groups.last_mut().expect("pushed").1.push(rows[k] as usize);
            out.extend(columns.iter().map(|&c| values[k * ncol + c]));
        }
        Ok(Frame::from_parts(names, groups, cal, out))
    }
}

#[cfg(not(feature = "hdf5"))]
mod imp {
    use std::ops::Range;
    use std::path::Path;
    use std::sync::Arc;

    use super::DatasetMeta;
    use crate::calendar::Calendar;
    use crate::error::{Error, Result};
    use crate::frame::Frame;

    fn unavailable() -> Error {
        Error::Config {
            source_name: "the dataset cache".into(),
            reason: "this build has no HDF5 support (built without the `hdf5` feature); install libhdf5-dev and build with default features".into(),
        }
    }

    pub fn write(_: &Path, _: &str, _: &Frame, _: &[usize], _: usize) -> Result<()> {
        Err(unavailable())
    }

    pub fn read(
        _: &Path,
        _: &str,
        _: &DatasetMeta,
        _: &[usize],
        _: Vec<String>,
        _: Range<usize>,
        _: Arc<Calendar>,
    ) -> Result<Frame> {
        Err(unavailable())
    }
}
