//! `qstore._qstore`: the Rust side of `import qstore`.
//!
//! The Python package (`python/python/qstore`) wraps these functions in the API users call; this module keeps to
//! what must be Rust: opening a store once, handing its mapped values to numpy without a copy, and running
//! queries on qstore's engine with the GIL released.
//!
//! Zero-copy arrays keep what they view alive through numpy's `base` object: a [`Values`] owning the mapped
//! file (`read`) or the query's frame (`features`), so an array stays valid after its `Store` is gone.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use numpy::datetime::{Datetime, units};
use numpy::ndarray::{ArrayView1, ArrayView2};
use numpy::{IntoPyArray, PyArray1, PyArray2, PyArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use qstore::Store as RustStore;
use qstore::cache::expr::DiskExpressionCache;
use qstore::cache::lock::UpdateLock;
use qstore::import::{ImportOptions, Origin, ReplaceOptions, SourceSpec};
use qstore::loader::{CacheParts, KlineLoader};
use qstore::query::Engine;
use qstore::store::bin::FeatureSlice;
use qstore::store::settings::{Compat, Overrides, Settings};
use qstore::{ColumnFrame, FeatureSet, Frame, Freq, Timestamp, Universe};

/// Turns a library error into the Python exception of its kind (`qstore.errors`), with the library's message.
fn to_py(py: Python<'_>, e: qstore::Error) -> PyErr {
    use qstore::Error as E;
    let message = e.detail();
    let (kind, extra): (&str, Option<(String, usize)>) = match &e {
        E::MissingStore { .. } | E::NoCalendar { .. } | E::NoMarket { .. } => ("NotFound", None),
        E::CorruptFeature { .. }
        | E::CorruptCache { .. }
        | E::Calendar { .. }
        | E::Instruments { .. }
        | E::Hdf5 { .. } => ("CorruptFile", None),
        E::Expr { expr, pos, .. } => ("ExpressionError", Some((expr.clone(), *pos))),
        E::LockBusy { .. } | E::Fenced { .. } | E::LeaseLost { .. } => ("LockBusy", None),
        E::Config { .. } | E::Redis { .. } => ("ConfigError", None),
        E::InvalidName { .. } | E::InvalidDate { .. } | E::UnknownFreq { .. } => {
            ("InvalidArgument", None)
        }
        _ => ("Error", None),
    };
    let raised = || -> PyResult<PyErr> {
        let class = py.import("qstore.errors")?.getattr(kind)?;
        let value = match extra {
            Some((expr, pos)) => class.call1((message.clone(), expr, pos))?,
            None => class.call1((message.clone(),))?,
        };
        Ok(PyErr::from_value(value))
    };
    raised().unwrap_or_else(|err| err)
}

/// The thread pool queries run on in this process. A process forked from one that had started a pool (a
/// PyTorch DataLoader worker) has none of its threads, so each process builds its own.
fn pool() -> PyResult<Arc<rayon::ThreadPool>> {
    static POOL: Mutex<Option<(u32, Arc<rayon::ThreadPool>)>> = Mutex::new(None);
    let pid = std::process::id();
    let mut slot = POOL.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((owner, pool)) = slot.as_ref()
        && *owner == pid
    {
        return Ok(pool.clone());
    }
    if let Some(old) = slot.take() {
        // The parent's pool: its threads do not exist here, so dropping it would wait for them forever.
        std::mem::forget(old);
    }
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("qstore-{i}"))
            .build()
            .map_err(|e| PyValueError::new_err(format!("starting qstore's threads: {e}")))?,
    );
    *slot = Some((pid, pool.clone()));
    Ok(pool)
}

fn freq_of(py: Python<'_>, freq: &str) -> PyResult<Freq> {
    freq.parse().map_err(|e| to_py(py, e))
}

fn date_of(py: Python<'_>, text: Option<&str>) -> PyResult<Option<Timestamp>> {
    text.map(|t| qstore::parse_timestamp(t).map_err(|e| to_py(py, e)))
        .transpose()
}

/// Seconds since 1970 as numpy's `datetime64[s]`.
fn datetime64(t: Timestamp) -> Datetime<units::Seconds> {
    Datetime::from(t.and_utc().timestamp())
}

/// What a zero-copy array views: kept alive as the array's `base`.
#[pyclass(frozen, module = "qstore._qstore")]
struct Values {
    held: Held,
}

enum Held {
    File(FeatureSlice),
    Frame(Arc<Frame>),
    /// One column of a column-major frame.
    Column(Arc<ColumnFrame>, usize),
}

impl Values {
    fn as_slice(&self) -> &[f32] {
        match &self.held {
            Held::File(s) => s,
            Held::Frame(f) => f.values(),
            Held::Column(f, c) => f.column(*c),
        }
    }
}

/// A read-only 1-D view of `values`' data.
fn view_1d<'py>(py: Python<'py>, values: Values) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let owner = Bound::new(py, values)?;
    let data = owner.get().as_slice();
    let view = ArrayView1::from(data);
    // SAFETY: `data` lives in `owner` (a mapped or loaded file, or a frame that is never mutated), which the
    // array keeps alive as its base object; the array is made read-only below, so numpy never writes to it.
    let array = unsafe { PyArray1::borrow_from_array(&view, owner.clone().into_any()) };
    array.call_method1("setflags", (false,))?;
    Ok(array)
}

/// A read-only `rows x cols` view of a frame's row-major values.
fn view_2d<'py>(py: Python<'py>, frame: Arc<Frame>) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let (rows, cols) = (frame.len(), frame.columns().len());
    let owner = Bound::new(
        py,
        Values {
            held: Held::Frame(frame),
        },
    )?;
    let data = owner.get().as_slice();
    let view = ArrayView2::from_shape((rows, cols), data)
        .map_err(|e| PyValueError::new_err(format!("frame shape: {e}")))?;
    // SAFETY: as in `view_1d`: the frame's values live in `owner`, the array's base, and are never written.
    let array = unsafe { PyArray2::borrow_from_array(&view, owner.clone().into_any()) };
    array.call_method1("setflags", (false,))?;
    Ok(array)
}

/// A query's result in either layout.
enum Evaluated {
    Rows(Frame),
    Columns(ColumnFrame),
}

/// Each row's instrument code and date, from a frame's index.
#[allow(clippy::type_complexity)]
fn row_axes<'py>(
    py: Python<'py>,
    index: &[(u32, u32)],
    calendar: &qstore::Calendar,
) -> (
    Bound<'py, PyArray1<u32>>,
    Bound<'py, PyArray1<Datetime<units::Seconds>>>,
) {
    let codes: Vec<u32> = index.iter().map(|&(c, _)| c).collect();
    let dates = calendar.dates();
    let times: Vec<_> = index
        .iter()
        .map(|&(_, r)| datetime64(dates[r as usize]))
        .collect();
    (codes.into_pyarray(py), times.into_pyarray(py))
}

/// `(values, codes, instruments, datetimes, columns)` of a row-major frame: a read-only view of its values.
fn frame_tuple(py: Python<'_>, frame: Frame) -> PyResult<Bound<'_, PyTuple>> {
    let frame = Arc::new(frame);
    let (codes, times) = row_axes(py, frame.index(), frame.calendar());
    let names = frame.instruments().to_vec();
    let columns = frame.columns().to_vec();
    let values = view_2d(py, frame)?;
    (values, codes, names, times, columns).into_pyobject(py)
}

/// The same of a column-major frame, `values` a list of read-only views, one per column.
fn column_tuple(py: Python<'_>, frame: ColumnFrame) -> PyResult<Bound<'_, PyTuple>> {
    let frame = Arc::new(frame);
    let (codes, times) = row_axes(py, frame.index(), frame.calendar());
    let values = (0..frame.columns().len())
        .map(|c| {
            view_1d(
                py,
                Values {
                    held: Held::Column(frame.clone(), c),
                },
            )
        })
        .collect::<PyResult<Vec<_>>>()?;
    (
        values,
        codes,
        frame.instruments().to_vec(),
        times,
        frame.columns().to_vec(),
    )
        .into_pyobject(py)
}

/// A store opened for reading, with its caches (the library's `Engine`). Safe to share between threads.
#[pyclass(frozen, module = "qstore._qstore")]
struct Store {
    engine: Arc<Engine>,
    path: PathBuf,
}

#[pymethods]
impl Store {
    #[new]
    #[pyo3(signature = (path, cache = None, compat = None))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        cache: Option<&Bound<'_, PyDict>>,
        compat: Option<&str>,
    ) -> PyResult<Store> {
        let mut settings = settings_of(py, &path, cache)?;
        if let Some(c) = compat {
            settings.compat = c.parse::<Compat>().map_err(|_| {
                invalid(
                    py,
                    &format!(
                        "compat={c:?}: use \"none\" (qstore's values) or \"qlib\" (qlib 0.9.7's)"
                    ),
                )
            })?;
        }
        let engine = py
            .detach(|| Engine::open_with(&path, settings))
            .map_err(|e| to_py(py, e))?;
        Ok(Store {
            engine: Arc::new(engine),
            path,
        })
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// The trading days of `freq` as `datetime64[s]`.
    #[pyo3(signature = (freq = "day"))]
    fn calendar<'py>(
        &self,
        py: Python<'py>,
        freq: &str,
    ) -> PyResult<Bound<'py, PyArray1<Datetime<units::Seconds>>>> {
        let freq = freq_of(py, freq)?;
        let cal = self
            .engine
            .store()
            .calendar(freq)
            .map_err(|e| to_py(py, e))?;
        let days: Vec<_> = cal.dates().iter().map(|&t| datetime64(t)).collect();
        Ok(days.into_pyarray(py))
    }

    /// Symbols of `market` with a span overlapping `[start, end]` (either optional), sorted.
    #[pyo3(signature = (market = "all", start = None, end = None))]
    fn instruments(
        &self,
        py: Python<'_>,
        market: &str,
        start: Option<&str>,
        end: Option<&str>,
    ) -> PyResult<Vec<String>> {
        let (start, end) = (date_of(py, start)?, date_of(py, end)?);
        let list = self
            .engine
            .store()
            .instruments(market)
            .map_err(|e| to_py(py, e))?;
        Ok(list.trading_between(start, end).map(String::from).collect())
    }

    /// The fields stored for `instrument` at `freq`, sorted.
    #[pyo3(signature = (instrument, freq = "day"))]
    fn fields(&self, py: Python<'_>, instrument: &str, freq: &str) -> PyResult<Vec<String>> {
        let freq = freq_of(py, freq)?;
        self.engine
            .store()
            .fields_of(instrument, freq)
            .map_err(|e| to_py(py, e))
    }

    /// `(first calendar index, values)` of one field between two dates: the values are a read-only float32
    /// view of the file (no copy), cut to the days the file has data for. An end whose day is before the
    /// start's is an error (a start later the same day is an empty range, as qlib's).
    ///
    /// Like `read_rows`, it keeps the GIL: the read is a cached handle and a slice, or one open and map of a
    /// small file, shorter than releasing and retaking the GIL, which made a call about 10% slower
    /// (benches/README.md, "`Store.read` by dates").
    #[pyo3(signature = (instrument, field, start = None, end = None, freq = "day"))]
    fn read<'py>(
        &self,
        py: Python<'py>,
        instrument: &str,
        field: &str,
        start: Option<&str>,
        end: Option<&str>,
        freq: &str,
    ) -> PyResult<(usize, Bound<'py, PyArray1<f32>>)> {
        let freq = freq_of(py, freq)?;
        let (s, e) = (date_of(py, start)?, date_of(py, end)?);
        if let (Some(s), Some(e)) = (s, e)
            && e.date() < s.date()
        {
            let (start, end) = (start.unwrap_or_default(), end.unwrap_or_default());
            return Err(invalid(
                py,
                &format!("start {start} is after end {end}; swap them"),
            ));
        }
        let slice = self
            .engine
            .store()
            .read_dates(instrument, field, freq, s, e)
            .map_err(|e| to_py(py, e))?;
        let first = slice.start();
        Ok((
            first,
            view_1d(
                py,
                Values {
                    held: Held::File(slice),
                },
            )?,
        ))
    }

    /// One field over calendar rows `start..end` (clipped to the calendar and the file's data): the fast path
    /// of `read` for training loops that index by row. A read-only view of the file.
    #[pyo3(signature = (instrument, field, start, end, freq = "day"))]
    fn read_rows<'py>(
        &self,
        py: Python<'py>,
        instrument: &str,
        field: &str,
        start: usize,
        end: usize,
        freq: &str,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let freq = freq_of(py, freq)?;
        if start > end {
            return Err(invalid(py, &format!("rows {start}..{end} are reversed")));
        }
        let slice = self
            .engine
            .store()
            .read(instrument, field, freq, start..end)
            .map_err(|e| to_py(py, e))?;
        view_1d(
            py,
            Values {
                held: Held::File(slice),
            },
        )
    }

    /// A `time x instrument x field` float32 array over `[start, end]` (NaN where there is no data), and the
    /// calendar index of its first row. The array owns its memory (moved from Rust, not copied).
    #[pyo3(signature = (fields, instruments, start = None, end = None, freq = "day"))]
    fn panel<'py>(
        &self,
        py: Python<'py>,
        fields: Vec<String>,
        instruments: Vec<String>,
        start: Option<&str>,
        end: Option<&str>,
        freq: &str,
    ) -> PyResult<(usize, Bound<'py, PyAny>)> {
        let freq = freq_of(py, freq)?;
        let (start, end) = (date_of(py, start)?, date_of(py, end)?);
        let pool = pool()?;
        let panel = py
            .detach(|| {
                pool.install(|| {
                    let store = self.engine.store();
                    let range = store.calendar(freq)?.locate(start, end);
                    store.panel(&instruments, &fields, freq, range)
                })
            })
            .map_err(|e| to_py(py, e))?;
        let first = panel.start();
        let (t, n, f) = panel.shape();
        let flat = panel.into_data().into_pyarray(py);
        Ok((first, flat.reshape([t, n, f])?.into_any()))
    }

    /// Evaluates expressions (or the feature set `feature_set`, whose names become the columns) for a market or
    /// a list of instruments. Returns `(values, codes, instruments, datetimes, columns)`: the result (no copy),
    /// each row's instrument as an index into `instruments`, each row's date, and the column names. Rows are
    /// by instrument, then date (qlib's order). `values` is a read-only `rows x columns` float32 view, or with
    /// `by_column` a list of read-only float32 views, one contiguous array per column (what Arrow and polars
    /// take whole; the engine writes that layout directly).
    /// With `part`, only those instruments of the query (one partition of a query split over a cluster, with
    /// the whole query's columns and rows).
    #[pyo3(signature = (exprs, feature_set = None, instruments = None, market = "all", start = None, end = None, freq = "day", by_column = false, part = None))]
    #[allow(clippy::too_many_arguments)]
    fn features<'py>(
        &self,
        py: Python<'py>,
        exprs: Vec<String>,
        feature_set: Option<&str>,
        instruments: Option<Vec<String>>,
        market: &str,
        start: Option<&str>,
        end: Option<&str>,
        freq: &str,
        by_column: bool,
        part: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let freq = freq_of(py, freq)?;
        let (start, end) = (date_of(py, start)?, date_of(py, end)?);
        let set = feature_set
            .map(FeatureSet::resolve)
            .transpose()
            .map_err(|e| to_py(py, e))?;
        let pool = pool()?;
        let engine = &self.engine;
        let out = py
            .detach(|| {
                pool.install(|| -> qstore::Result<Evaluated> {
                    let instruments = select(engine.store(), market, instruments)?;
                    let whole = match &instruments {
                        Some(list) => Universe::List(list),
                        None => Universe::Market(market),
                    };
                    let universe = match &part {
                        Some(part) => Universe::Part(&whole, part),
                        None => whole,
                    };
                    Ok(match (&set, by_column) {
                        (Some(set), false) => {
                            Evaluated::Rows(engine.feature_set(universe, set, start, end, freq)?)
                        }
                        (None, false) => {
                            Evaluated::Rows(engine.features(universe, &exprs, start, end, freq)?)
                        }
                        (Some(set), true) => Evaluated::Columns(
                            engine.feature_set_by_column(universe, set, start, end, freq)?,
                        ),
                        (None, true) => Evaluated::Columns(
                            engine.features_by_column(universe, &exprs, start, end, freq)?,
                        ),
                    })
                })
            })
            .map_err(|e| to_py(py, e))?;
        match out {
            Evaluated::Rows(frame) => frame_tuple(py, frame),
            Evaluated::Columns(frame) => column_tuple(py, frame),
        }
    }

    /// The instruments `names` gives, glob patterns (`"SH6*"`) replaced by those of `market` they match.
    fn select_instruments(
        &self,
        py: Python<'_>,
        names: Vec<String>,
        market: &str,
    ) -> PyResult<Vec<String>> {
        let store = self.engine.store();
        select(store, market, Some(names))
            .map(Option::unwrap_or_default)
            .map_err(|e| to_py(py, e))
    }

    /// The `(name, expression)` pairs of a feature set that a query over `instruments` (or `market`) computes:
    /// all but the optional ones whose fields no instrument has; and those left out, as `(name, [field])`
    /// pairs of the fields no instrument has.
    #[pyo3(signature = (feature_set, instruments = None, market = "all", freq = "day"))]
    #[allow(clippy::type_complexity)]
    fn feature_set_columns(
        &self,
        py: Python<'_>,
        feature_set: &str,
        instruments: Option<Vec<String>>,
        market: &str,
        freq: &str,
    ) -> PyResult<(Vec<(String, String)>, Vec<(String, Vec<String>)>)> {
        let freq = freq_of(py, freq)?;
        let set = FeatureSet::resolve(feature_set).map_err(|e| to_py(py, e))?;
        py.detach(|| {
            let instruments = select(self.engine.store(), market, instruments)?;
            let universe = match &instruments {
                Some(list) => Universe::List(list),
                None => Universe::Market(market),
            };
            let (chosen, left_out) = self.engine.feature_set_plan(universe, &set, freq)?;
            Ok((
                chosen
                    .into_iter()
                    .map(|f| (f.name.clone(), f.expr.clone()))
                    .collect(),
                left_out.into_iter().map(|l| (l.name, l.missing)).collect(),
            ))
        })
        .map_err(|e| to_py(py, e))
    }

    /// The caches' counters since the Store was opened, as JSON text (`qcache query --cache-stats --json`).
    fn cache_stats(&self) -> String {
        self.engine.cache_stats().to_json().to_string()
    }

    /// Forgets loaded calendars, open files and cached results, so the next reads see what other processes
    /// published.
    fn refresh(&self) {
        self.engine.refresh();
    }

    /// Whose values `features` gives: "none" (qstore's) or "qlib" (qlib 0.9.7's own, docs/expressions.md).
    #[getter]
    fn compat(&self) -> &'static str {
        match self.engine.compat() {
            Compat::None => "none",
            Compat::Qlib => "qlib",
        }
    }

    fn __repr__(&self) -> String {
        match self.engine.compat() {
            Compat::None => format!("qstore.Store({:?})", self.path.display().to_string()),
            Compat::Qlib => format!(
                "qstore.Store({:?}, compat=\"qlib\")",
                self.path.display().to_string()
            ),
        }
    }
}

/// The source a Python call describes: a dict of `qdump`'s source flags (`mysql` or `csv`, `password`, `table`,
/// `symbol_column`, `date_column`, `date_format`, `fields`, `exclude_fields`, `symbols`, `limit`, `connections`,
/// `calendar_table`, `calendar_column`). An unknown key is an error, so a typo cannot fall back to a default.
fn spec_of(py: Python<'_>, d: &Bound<'_, PyDict>) -> PyResult<SourceSpec> {
    let get = |k: &str| -> PyResult<Option<Bound<'_, PyAny>>> {
        Ok(d.get_item(k)?.filter(|v| !v.is_none()))
    };
    let origin = match (get("mysql")?, get("csv")?) {
        (Some(url), None) => Origin::Mysql {
            url: url.extract()?,
            password: get("password")?.map(|p| p.extract()).transpose()?,
        },
        (None, Some(path)) => Origin::Csv(path.extract()?),
        _ => {
            return Err(invalid(
                py,
                "give exactly one source: mysql='mysql://user@host/db' or csv='DIR_OR_FILE'",
            ));
        }
    };
    let mut spec = SourceSpec::new(origin);
    for (k, v) in d.iter() {
        let k: String = k.extract()?;
        if v.is_none() {
            continue;
        }
        match k.as_str() {
            "mysql" | "csv" | "password" => {}
            "table" => spec.table = v.extract()?,
            "symbol_column" => spec.symbol_column = v.extract()?,
            "date_column" => spec.date_column = Some(v.extract()?),
            "date_format" => {
                spec.date_format = qstore::import::DateFormat::new(&v.extract::<String>()?)
                    .map_err(|e| to_py(py, e))?
            }
            "fields" => spec.fields = Some(v.extract()?),
            "exclude_fields" => spec.exclude_fields = Some(v.extract()?),
            "symbols" => spec.symbols = Some(v.extract()?),
            "limit" => spec.limit = Some(v.extract()?),
            "connections" => spec.connections = v.extract()?,
            "calendar_table" => spec.calendar_table = Some(v.extract()?),
            "calendar_column" => spec.calendar_column = Some(v.extract()?),
            other => return Err(invalid(py, &format!("unknown source option {other:?}"))),
        }
    }
    Ok(spec)
}

/// The instruments a call names, with glob patterns (`"SH6*"`) replaced by the market's instruments they
/// match (`None`: the whole market); a pattern that matches nothing is an error.
fn select(
    store: &RustStore,
    market: &str,
    instruments: Option<Vec<String>>,
) -> qstore::Result<Option<Vec<String>>> {
    instruments
        .map(|list| {
            qstore::store::instruments::select("instruments", &list, || {
                Ok(store
                    .instruments(market)?
                    .symbols()
                    .map(String::from)
                    .collect())
            })
        })
        .transpose()
}

/// `qstore.InvalidArgument(message)`.
fn invalid(py: Python<'_>, message: &str) -> PyErr {
    match py
        .import("qstore.errors")
        .and_then(|m| m.getattr("InvalidArgument"))
        .and_then(|c| c.call1((message,)))
    {
        Ok(v) => PyErr::from_value(v),
        Err(e) => e,
    }
}

/// Import options from a dict (`freq`, `market`, `max_date`): `qdump`'s defaults otherwise (rows dated after
/// today fail their symbol).
fn import_options(py: Python<'_>, d: &Bound<'_, PyDict>) -> PyResult<ImportOptions> {
    let mut o = ImportOptions::default();
    if let Some(f) = d.get_item("freq")?.filter(|v| !v.is_none()) {
        o.freq = freq_of(py, &f.extract::<String>()?)?;
    }
    if let Some(m) = d.get_item("market")?.filter(|v| !v.is_none()) {
        o.market = m.extract()?;
    }
    let max = match d.get_item("max_date")?.filter(|v| !v.is_none()) {
        Some(t) => date_of(py, Some(&t.extract::<String>()?))?,
        None => None,
    };
    o.max_date = Some(ImportOptions::end_of(max));
    Ok(o)
}

/// Cache settings from a dict (`dir`, `redis_url`, `lock` = "redis"|"file", `lease_s`, `mode` =
/// "off"|"read"|"write"): the flags of `qcache`, which win over `QSTORE_*` and qstore.json. They travel with
/// a call (a cluster's task) instead of living in a worker's environment. An unknown key is an error.
fn overrides_of(py: Python<'_>, d: Option<&Bound<'_, PyDict>>) -> PyResult<Overrides> {
    let mut o = Overrides::default();
    let Some(d) = d else { return Ok(o) };
    for (k, v) in d.iter() {
        let k: String = k.extract()?;
        if v.is_none() {
            continue;
        }
        match k.as_str() {
            "dir" => o.cache_dir = Some(v.extract()?),
            "redis_url" => o.redis_url = Some(v.extract()?),
            "lock" => o.lock = Some(v.extract::<String>()?.parse().map_err(|e| to_py(py, e))?),
            "lease_s" => o.lease_s = Some(v.extract()?),
            "mode" => o.mode = Some(v.extract::<String>()?.parse().map_err(|e| to_py(py, e))?),
            other => {
                return Err(invalid(
                    py,
                    &format!(
                        "unknown cache setting {other:?}; the settings are dir, redis_url, lock, lease_s, mode"
                    ),
                ));
            }
        }
    }
    Ok(o)
}

/// The store's settings with `cache` applied over them.
fn settings_of(
    py: Python<'_>,
    path: &Path,
    cache: Option<&Bound<'_, PyDict>>,
) -> PyResult<Settings> {
    let o = overrides_of(py, cache)?;
    py.detach(|| Settings::resolve(path, &o))
        .map_err(|e| to_py(py, e))
}

fn json<T: serde::Serialize>(value: &T) -> PyResult<String> {
    serde_json::to_string(value).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// `qdump all`: imports the source into a new store at `path`, switched in atomically (`overwrite` replaces
/// a store there). Returns the summary as JSON text.
#[pyfunction]
#[pyo3(signature = (path, source, options, start = None, end = None, overwrite = false, keep_unknown = false, wait = false))]
#[allow(clippy::too_many_arguments)]
fn dump_all(
    py: Python<'_>,
    path: PathBuf,
    source: &Bound<'_, PyDict>,
    options: &Bound<'_, PyDict>,
    start: Option<&str>,
    end: Option<&str>,
    overwrite: bool,
    keep_unknown: bool,
    wait: bool,
) -> PyResult<String> {
    let spec = spec_of(py, source)?;
    let opts = import_options(py, options)?;
    let (start, end) = (date_of(py, start)?, date_of(py, end)?);
    let replace = ReplaceOptions {
        overwrite,
        keep_unknown,
        wait,
    };
    let pool = pool()?;
    let summary = py
        .detach(|| {
            pool.install(|| {
                let src = spec.open(start, end)?;
                qstore::import::import(src.as_ref(), &path, &replace, &opts, &|_| {})
            })
        })
        .map_err(|e| to_py(py, e))?;
    json(&summary)
}

/// `qdump update`: appends the days after the store's last one (or corrects from `since` on), crash-safe,
/// under the store's writer lock; `update_caches` brings the store's caches forward too. Returns the summary
/// as JSON text.
#[pyfunction]
#[pyo3(signature = (path, source, options, since = None, end = None, update_caches = false, wait = false, cache = None))]
#[allow(clippy::too_many_arguments)]
fn update(
    py: Python<'_>,
    path: PathBuf,
    source: &Bound<'_, PyDict>,
    options: &Bound<'_, PyDict>,
    since: Option<&str>,
    end: Option<&str>,
    update_caches: bool,
    wait: bool,
    cache: Option<&Bound<'_, PyDict>>,
) -> PyResult<String> {
    let spec = spec_of(py, source)?;
    let opts = import_options(py, options)?;
    let (since, end) = (date_of(py, since)?, date_of(py, end)?);
    let settings = settings_of(py, &path, cache)?;
    let pool = pool()?;
    let out = py
        .detach(|| {
            pool.install(|| -> qstore::Result<serde_json::Value> {
                if update_caches {
                    qstore::cache::lock::check(&settings.cache)?;
                }
                let lock = UpdateLock::acquire(&path, wait)?;
                let store = RustStore::open_with(&path, settings.store.clone())?;
                let start = qstore::import::update::first_new_row(&store, opts.freq, since, &lock)?;
                let src = spec.open(start, end)?;
                let summary = qstore::import::update::update_locked(
                    src.as_ref(),
                    &path,
                    &opts,
                    &lock,
                    &|_| {},
                )?;
                drop(lock);
                let mut v = serde_json::to_value(&summary).unwrap_or_default();
                if update_caches {
                    let (entries, datasets) =
                        qstore::loader::update_caches(&path, settings, CacheParts::All)?;
                    v["expression_cache_updated"] = entries.into();
                    v["dataset_cache_updated"] = datasets.into();
                }
                Ok(v)
            })
        })
        .map_err(|e| to_py(py, e))?;
    json(&out)
}

/// `qcache warm`: computes expressions (or a feature set) for instruments into the store's expression cache,
/// under its writer locks. Returns `{outcome: count}` as JSON text.
#[pyfunction]
#[pyo3(signature = (path, exprs, feature_set = None, instruments = None, market = "all", freq = "day", cache = None))]
#[allow(clippy::too_many_arguments)]
fn warm(
    py: Python<'_>,
    path: PathBuf,
    exprs: Vec<String>,
    feature_set: Option<&str>,
    instruments: Option<Vec<String>>,
    market: &str,
    freq: &str,
    cache: Option<&Bound<'_, PyDict>>,
) -> PyResult<String> {
    let settings = settings_of(py, &path, cache)?;
    let freq = freq_of(py, freq)?;
    let exprs = match feature_set {
        Some(name) => FeatureSet::resolve(name)
            .map_err(|e| to_py(py, e))?
            .features
            .into_iter()
            .map(|f| f.expr)
            .collect(),
        None => exprs,
    };
    let parsed = exprs
        .iter()
        .map(|e| qstore::expr::parse(e))
        .collect::<qstore::Result<Vec<_>>>()
        .map_err(|e| to_py(py, e))?;
    let pool = pool()?;
    let counts = py
        .detach(|| {
            pool.install(|| {
                let store = RustStore::open_with(&path, settings.store.clone())?;
                let cache = DiskExpressionCache::open(&path, &settings.cache, false)?;
                let symbols = match select(&store, market, instruments)? {
                    Some(list) => list.iter().map(|s| s.to_uppercase()).collect(),
                    None => store
                        .instruments(market)?
                        .symbols()
                        .map(String::from)
                        .collect::<Vec<_>>(),
                };
                cache.warm_all(&store, &symbols, &parsed, freq, &|| {})
            })
        })
        .map_err(|e| to_py(py, e))?;
    let counts: std::collections::BTreeMap<String, usize> = counts
        .into_iter()
        .map(|(o, n)| (format!("{o:?}").to_lowercase(), n))
        .collect();
    json(&counts)
}

/// `qcache update`, or one part of it: brings the expression cache's entries (of `instruments` only, when
/// given) and the datasets forward to the store as it is now. `part` is "all", "entries" or "datasets".
/// The names an `instruments=` string gives, as `--instruments` reads it (`None` for "all"; commas, `@FILE`);
/// patterns among them are matched later, against the store (`select`).
#[pyfunction]
fn instrument_names(py: Python<'_>, arg: &str) -> PyResult<Option<Vec<String>>> {
    qstore::store::instruments::names("instruments", arg).map_err(|e| to_py(py, e))
}

/// Returns `(entries, datasets)` brought forward.
#[pyfunction]
#[pyo3(signature = (path, part = "all", instruments = None, cache = None))]
fn update_caches(
    py: Python<'_>,
    path: PathBuf,
    part: &str,
    instruments: Option<Vec<String>>,
    cache: Option<&Bound<'_, PyDict>>,
) -> PyResult<(usize, usize)> {
    let settings = settings_of(py, &path, cache)?;
    let parts = match (part, &instruments) {
        ("all", None) => CacheParts::All,
        ("entries", Some(list)) => CacheParts::Entries(list),
        ("datasets", None) => CacheParts::Datasets,
        _ => {
            return Err(invalid(
                py,
                "part is 'all' or 'datasets' (without instruments) or 'entries' (with instruments)",
            ));
        }
    };
    let pool = pool()?;
    py.detach(|| pool.install(|| qstore::loader::update_caches(&path, settings, parts)))
        .map_err(|e| to_py(py, e))
}

/// The instruments that have expression-cache entries, sorted.
#[pyfunction]
#[pyo3(signature = (path, cache = None))]
fn cached_instruments(
    py: Python<'_>,
    path: PathBuf,
    cache: Option<&Bound<'_, PyDict>>,
) -> PyResult<Vec<String>> {
    let settings = settings_of(py, &path, cache)?;
    py.detach(|| {
        RustStore::open_with(&path, settings.store.clone())?;
        DiskExpressionCache::open(&path, &settings.cache, true)?.instruments()
    })
    .map_err(|e| to_py(py, e))
}

/// `(symbols, size_mb, ttl_s, last_update_unix_s, last_day)`.
type CacheInfoTuple = (usize, f64, f64, Option<f64>, Option<String>);

/// The read-through loader (`qstore::loader::KlineLoader`): a store refreshed from its source when older than
/// the TTL, under the store's update lock.
#[pyclass(frozen, module = "qstore._qstore")]
struct Loader {
    inner: KlineLoader,
}

#[pymethods]
impl Loader {
    #[new]
    #[pyo3(signature = (path, source, options, ttl_s))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        source: Option<&Bound<'_, PyDict>>,
        options: &Bound<'_, PyDict>,
        ttl_s: f64,
    ) -> PyResult<Loader> {
        if !(ttl_s.is_finite() && ttl_s >= 0.0) {
            return Err(invalid(
                py,
                &format!("ttl must be a number of seconds >= 0, not {ttl_s}"),
            ));
        }
        let factory = source
            .map(|d| spec_of(py, d))
            .transpose()?
            .map(SourceSpec::factory);
        let opts = import_options(py, options)?;
        Ok(Loader {
            inner: KlineLoader::new(path, factory, std::time::Duration::from_secs_f64(ttl_s))
                .with_options(opts),
        })
    }

    /// Every field of `symbol` between two dates, refreshing or backfilling the store first when needed.
    #[pyo3(signature = (symbol, start = None, end = None))]
    fn load<'py>(
        &self,
        py: Python<'py>,
        symbol: &str,
        start: Option<&str>,
        end: Option<&str>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let (start, end) = (date_of(py, start)?, date_of(py, end)?);
        let pool = pool()?;
        let frame = py
            .detach(|| pool.install(|| self.inner.load(symbol, start, end)))
            .map_err(|e| to_py(py, e))?;
        frame_tuple(py, frame)
    }

    /// Updates now when `force`, else only when the store is older than the TTL. Returns the update's summary
    /// (JSON text) or None when nothing ran.
    fn refresh(&self, py: Python<'_>, force: bool) -> PyResult<Option<String>> {
        let pool = pool()?;
        let s = py
            .detach(|| pool.install(|| self.inner.refresh(force)))
            .map_err(|e| to_py(py, e))?;
        s.map(|s| json(&s)).transpose()
    }

    /// `(symbols, size_mb, ttl_s, last_update_unix_s, last_day)`.
    fn cache_info(&self, py: Python<'_>) -> PyResult<CacheInfoTuple> {
        let i = self.inner.cache_info().map_err(|e| to_py(py, e))?;
        Ok((
            i.symbols,
            i.size_mb,
            i.ttl.as_secs_f64(),
            i.last_update
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs_f64()),
            i.last_day.map(|d| qstore::format_timestamp(d, true)),
        ))
    }

    /// Drops one symbol (or, with None, every symbol) from the store, so the next load backfills it.
    #[pyo3(signature = (symbol = None))]
    fn clear(&self, py: Python<'_>, symbol: Option<&str>) -> PyResult<()> {
        py.detach(|| match symbol {
            Some(s) => self.inner.clear(s),
            None => self.inner.clear_all(),
        })
        .map_err(|e| to_py(py, e))
    }
}

/// The names of the shipped feature sets and the (name, expression) pairs of one set (`alpha158`,
/// `technical`, or a JSON file of the same shape).
#[pyfunction]
fn feature_set(py: Python<'_>, name: &str) -> PyResult<Vec<(String, String)>> {
    let set = FeatureSet::resolve(name).map_err(|e| to_py(py, e))?;
    Ok(set
        .features
        .iter()
        .map(|f| (f.name.clone(), f.expr.clone()))
        .collect())
}

#[pymodule]
fn _qstore(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Store>()?;
    m.add_class::<Values>()?;
    m.add_class::<Loader>()?;
    m.add_function(wrap_pyfunction!(feature_set, m)?)?;
    m.add_function(wrap_pyfunction!(dump_all, m)?)?;
    m.add_function(wrap_pyfunction!(update, m)?)?;
    m.add_function(wrap_pyfunction!(warm, m)?)?;
    m.add_function(wrap_pyfunction!(update_caches, m)?)?;
    m.add_function(wrap_pyfunction!(instrument_names, m)?)?;
    m.add_function(wrap_pyfunction!(cached_instruments, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
