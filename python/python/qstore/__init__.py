"""qstore: a qlib-compatible market-data store, read from Python without copies.

>>> import qstore
>>> store = qstore.Store("path/to/store")
>>> close = store.read("SH600000", "close", start="2023-03-01", end="2023-03-31")   # a view of the file
>>> df = store.features(["Mean($close, 5)", "$volume"], start="2023-01-01")        # qlib's D.features frame
>>> x = store.features("alpha158", output="numpy").values                          # rows x 158 float32

Reads need no lock and never write; one ``Store`` may be shared by threads, and processes forked after it
was opened (PyTorch DataLoader workers) read correctly.
"""

import datetime as _dt
from typing import NamedTuple

import numpy as _np

from . import errors
import json as _json

from . import _qstore
from ._qstore import Store as _RustStore
from ._qstore import __version__
from ._qstore import feature_set as _feature_set
from .errors import (
    ConfigError,
    CorruptFile,
    Error,
    ExpressionError,
    InvalidArgument,
    LeftOutWarning,
    LockBusy,
    NotFound,
)

__all__ = [
    "Store",
    "CacheOptions",
    "FeatureArrays",
    "WindowSampler",
    "KlineLoader",
    "dump_all",
    "update",
    "warm",
    "update_caches",
    "feature_set",
    "errors",
    "Error",
    "NotFound",
    "CorruptFile",
    "ExpressionError",
    "LockBusy",
    "ConfigError",
    "InvalidArgument",
    "LeftOutWarning",
    "__version__",
]

_OUTPUTS = ("pandas", "numpy", "arrow", "polars")


def _date(value, what):
    """A date-like value (str, datetime.date/datetime, numpy.datetime64, pandas.Timestamp) as the text the
    library parses, or None."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, _np.datetime64):
        if _np.isnat(value):
            raise InvalidArgument(f"{what} is NaT; give a date such as '2023-01-31'")
        return str(value.astype("datetime64[s]")).replace("T", " ")
    if isinstance(value, _dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, _dt.date):
        return value.isoformat()
    raise InvalidArgument(
        f"{what} must be a date (str 'YYYY-MM-DD', datetime.date, datetime64, pandas.Timestamp), "
        f"not {type(value).__name__}"
    )


def _range(start, end):
    s, e = _date(start, "start"), _date(end, "end")
    # ISO dates compare as text ("2023-03-01" < "2023-03-01 09:30:00" < "2023-03-02"), which costs nothing;
    # anything else the library rejects with its own message.
    if s is not None and e is not None and s > e and e[:10] < s[:10]:
        raise InvalidArgument(f"start {s} is after end {e}; swap them")
    return s, e


class FeatureArrays(NamedTuple):
    """A features query as arrays (``output="numpy"``): row ``r`` is ``instruments[codes[r]]`` on
    ``datetime[r]``; ``values`` is a read-only ``rows x columns`` float32 view of the engine's result."""

    values: _np.ndarray
    codes: _np.ndarray
    instruments: list
    datetime: _np.ndarray
    columns: list

    def rows_of(self, instrument):
        """The slice of rows of one instrument (rows are grouped by instrument)."""
        k = self.instruments.index(instrument)
        lo = int(_np.searchsorted(self.codes, k, side="left"))
        hi = int(_np.searchsorted(self.codes, k, side="right"))
        return slice(lo, hi)


class CacheOptions(NamedTuple):
    """Cache settings that travel with a call (``cache=`` of :class:`Store`, :func:`warm`, :func:`update`,
    :func:`update_caches` and :mod:`qstore.dask`), above ``QSTORE_*`` and qstore.json as ``qcache``'s flags
    are. ``None`` leaves a setting to those.

    ``dir``: the expression cache's directory; ``redis_url``: Redis for the writer locks (``lock="redis"``);
    ``lock``: ``"redis"`` or ``"file"``; ``lease_s``: a Redis lock's lease in seconds (how soon the entry of a
    writer that died may be rebuilt); ``mode``: the read path's use of the cache, ``"off"``, ``"read"`` or
    ``"write"`` (qlib's read-through).
    """

    dir: object = None
    redis_url: object = None
    lock: object = None
    lease_s: object = None
    mode: object = None


def _cache(cache):
    """``cache=`` as the dict the library takes (None, a dict of the same keys, or :class:`CacheOptions`)."""
    if cache is None:
        return None
    if isinstance(cache, CacheOptions):
        cache = cache._asdict()
    if not isinstance(cache, dict):
        raise InvalidArgument(
            f"cache must be a qstore.CacheOptions or a dict, not {type(cache).__name__}"
        )
    return {k: (str(v) if k == "dir" and v is not None else v) for k, v in cache.items()}


def feature_set(name):
    """The ``(name, expression)`` pairs of a feature set: ``alpha158``, ``alpha360``, ``technical``, or a JSON
    file."""
    return _feature_set(name)


def _warn_left_out(s, set_name, universe, market, freq):
    """Warns (``qstore.LeftOutWarning``) of the optional features of a set that the query cannot give, once per
    set of missing fields, as ``qcache query`` says it: the frame simply lacks their columns."""
    import warnings

    _, left_out = s.feature_set_columns(set_name, universe, market, freq)
    for names, fields in _left_out_groups(left_out):
        warnings.warn(f"{names} left out: no instrument of the query has {fields}", LeftOutWarning, stacklevel=3)


def _left_out_groups(left_out):
    """``(names, fields)`` texts of left-out features grouped by the fields they miss (the rule of
    ``qstore::query::left_out_lines``)."""
    groups = {}
    for name, missing in left_out:
        groups.setdefault(tuple(missing), []).append(name)
    out = []
    for missing, names in groups.items():
        if len(names) > 4:
            text = f"{len(names)} features ({', '.join(names[:3])}, ..., {names[-1]})"
        else:
            text = ", ".join(names)
        out.append((text, ", ".join(f"${m}" for m in missing)))
    return out


def _is_feature_set(text):
    return not any(c in text for c in "$()") and (
        text in ("alpha158", "technical") or text.endswith(".json")
    )


def _query(exprs, instruments):
    """A query's ``(expressions, feature set name or None, instrument list or None for a market)``."""
    if isinstance(exprs, str):
        exprs, set_name = ([], exprs) if _is_feature_set(exprs) else ([exprs], None)
    else:
        exprs, set_name = list(exprs), None
        if not exprs:
            raise InvalidArgument("no expressions given; pass a list such as ['$close'] or 'alpha158'")
    return exprs, set_name, _instruments(instruments)


def _instruments(instruments):
    """``None`` for ``"all"``, else the list of names as ``--instruments`` takes them: a list, names separated by
    commas, or ``"@FILE"`` (read by the library, as the commands read it); glob patterns (``"SH6*"``) are matched
    against the market's instruments by the library."""
    if isinstance(instruments, str):
        return _qstore.instrument_names(instruments)
    return list(instruments)


class Store:
    """A store opened for reading: ``Store(path)``. Raises :class:`qstore.NotFound` when ``path`` is not a
    store. Configured by the store's ``qstore.json`` and ``QSTORE_*`` variables, as the commands are, and by
    ``cache=`` (:class:`CacheOptions`) above them.

    ``compat="qlib"`` gives qlib 0.9.7's own values where qstore deliberately differs (WMA, IdxMax/IdxMin with
    NaN in the window, EMA and expanding windows measured from the query's ``start``, ...; docs/expressions.md),
    for models trained on qlib's features; ``"none"`` qstore's. Default: ``QSTORE_COMPAT``, else the store's
    ``qstore.json`` ``compat``, else ``"none"``."""

    def __init__(self, path, cache=None, compat=None):
        if compat is not None and not isinstance(compat, str):
            raise InvalidArgument(f"compat must be \"none\" or \"qlib\", not {type(compat).__name__}")
        self._s = _RustStore(str(path), _cache(cache), compat)

    @property
    def path(self):
        return self._s.path

    @property
    def compat(self):
        """Whose values :meth:`features` gives: ``"none"`` (qstore's) or ``"qlib"``."""
        return self._s.compat

    def __repr__(self):
        return repr(self._s)

    def calendar(self, freq="day"):
        """The trading days of ``freq`` as a ``datetime64[s]`` array."""
        return self._s.calendar(freq)

    def instruments(self, market="all", start=None, end=None):
        """Symbols of ``market`` trading at some point in ``[start, end]`` (either optional), sorted."""
        s, e = _range(start, end)
        return self._s.instruments(market, s, e)

    def fields(self, instrument, freq="day"):
        """The fields stored for ``instrument``, sorted."""
        return self._s.fields(instrument, freq)

    def read(self, instrument, field, start=None, end=None, freq="day", with_dates=False):
        """One field between two dates (inclusive, either optional) as a read-only float32 array that is a view
        of the mapped file: no copy, valid for as long as the array lives (even after the ``Store`` is gone).

        The array covers the days in range that the file has data for. ``with_dates=True`` returns
        ``(dates, values)`` with the ``datetime64[s]`` day of each value.
        """
        # Text goes to the library as it is (it checks the order too): a per-call saving for training loops.
        if start.__class__ is not str:
            start = _date(start, "start")
        if end.__class__ is not str:
            end = _date(end, "end")
        first, values = self._s.read(instrument, field, start, end, freq)
        if not with_dates:
            return values
        return self.calendar(freq)[first : first + len(values)], values

    def read_rows(self, instrument, field, start, end, freq="day"):
        """One field over calendar rows ``start:end`` (indexes into :meth:`calendar`): :meth:`read` for loops that
        index by row, without parsing dates. The values the file has in that range, as a read-only view."""
        return self._s.read_rows(instrument, field, start, end, freq)

    def panel(self, fields, instruments="all", start=None, end=None, freq="day", market="all"):
        """A ``time x instrument x field`` float32 array (NaN where there is no data) and its axes:
        ``(array, dates, instruments, fields)``. ``instruments="all"`` means every instrument of ``market``."""
        s, e = _range(start, end)
        fields = [fields] if isinstance(fields, str) else list(fields)
        names = _instruments(instruments)
        instruments = (
            self._s.instruments(market, s, e) if names is None else self._s.select_instruments(names, market)
        )
        first, array = self._s.panel(fields, instruments, s, e, freq)
        dates = self.calendar(freq)[first : first + array.shape[0]]
        return array, dates, instruments, fields

    def features(
        self,
        exprs,
        instruments="all",
        start=None,
        end=None,
        freq="day",
        market="all",
        output="pandas",
    ):
        """Evaluates qlib expressions, or a feature set (``"alpha158"``, ``"technical"``, a JSON file), for the
        instruments of ``market`` (``instruments="all"``, each on its listed spans) or a list of instruments,
        between ``start`` and ``end`` (inclusive, either optional). Computed on qstore's engine with the GIL
        released; the store's expression cache serves the columns it holds.

        ``output``:
        ``"pandas"``: qlib's ``D.features`` frame (MultiIndex ``instrument``, ``datetime``; one float32 column
        per expression, named as given, or by feature name); ``"numpy"``: :class:`FeatureArrays` (a view, no
        copy); ``"arrow"``: a ``pyarrow.Table``; ``"polars"``: a ``polars.DataFrame`` (both with
        ``instrument`` and ``datetime`` columns, each value column over the engine's own buffer: the engine
        evaluates column by column for them, no copy is made).
        """
        if output not in _OUTPUTS:
            raise InvalidArgument(f"output must be one of {', '.join(_OUTPUTS)}, not {output!r}")
        s, e = _range(start, end)
        exprs, set_name, universe = _query(exprs, instruments)
        if set_name is not None:
            _warn_left_out(self._s, set_name, universe, market, freq)
        if output in ("arrow", "polars"):
            # Column by column from the engine: each column is handed over whole.
            cols, codes, names, dates, columns = self._s.features(
                exprs, set_name, universe, market, s, e, freq, True
            )
            table = _to_arrow(cols, codes, names, dates, columns)
            if output == "arrow":
                return table
            import polars as pl

            return pl.from_arrow(table)
        values, codes, names, dates, columns = self._s.features(
            exprs, set_name, universe, market, s, e, freq
        )
        arrays = FeatureArrays(values, codes, names, dates, columns)
        return arrays if output == "numpy" else _to_pandas(arrays)

    def cache_stats(self):
        """The caches' counters since this Store was opened: ``expression_cache`` (disk entries read whole,
        partially, missed, written; None when the store has no expression cache) and ``memcache``."""
        return _json.loads(self._s.cache_stats())

    def refresh(self):
        """Forgets loaded calendars, open files and cached results, so the next reads see what other processes
        published since."""
        self._s.refresh()


def _to_pandas(a, categories=None, codes=None):
    """qlib's frame over the arrays; ``categories``/``codes``: the instrument level's categories and each row's
    code in them, when they are a larger query's (a partition of :func:`qstore.dask.features`)."""
    import pandas as pd

    index = pd.MultiIndex.from_arrays(
        [
            pd.Categorical.from_codes(
                (a.codes if codes is None else codes).astype(_np.int64),
                categories=a.instruments if categories is None else categories,
            ),
            pd.DatetimeIndex(a.datetime.astype("datetime64[ns]")),
        ],
        names=["instrument", "datetime"],
    )
    return pd.DataFrame(a.values, index=index, columns=a.columns, copy=False)


def _to_arrow(cols, codes, instruments, dates, names):
    import pyarrow as pa

    instrument = pa.DictionaryArray.from_arrays(
        pa.array(codes.astype(_np.int32), type=pa.int32()), pa.array(instruments, type=pa.string())
    )
    table = {"instrument": instrument, "datetime": pa.array(dates)}
    for name, col in zip(names, cols):
        # A contiguous float32 array without a mask becomes an Arrow array over the same buffer (NaN stays
        # NaN, not null, as in qlib's frames).
        table[name] = pa.array(col)
    return pa.table(table)


def _sampler_query(features, label, window):
    """A sampler's ``(number of features, expressions to query: the features then the label, window)``."""
    if int(window) < 1:
        raise InvalidArgument(f"window must be at least 1, not {window}")
    if isinstance(features, str) and _is_feature_set(features):
        exprs = [e for _, e in feature_set(features)]
    else:
        exprs = [features] if isinstance(features, str) else list(features)
    return len(exprs), exprs + ([label] if label is not None else []), int(window)


class WindowSampler:
    """Training windows over a features query, as qlib's ``TSDataSampler`` hands them to time-series models.

    Sample ``i`` is one (instrument, day) of the query; ``sampler[i]`` is the ``window x n_features`` float32
    array of that instrument's last ``window`` rows up to the day (rows before its first day are NaN), and with
    a ``label`` expression ``(x, y)``. Random access costs O(window); the sampler holds the query's values once,
    never the windows. A map-style dataset: ``torch.utils.data.DataLoader(sampler, ...)`` works as it is.
    """

    def __init__(
        self,
        store,
        features,
        label=None,
        window=60,
        instruments="all",
        start=None,
        end=None,
        freq="day",
        market="all",
    ):
        n_features, query, window = _sampler_query(features, label, window)
        arrays = store.features(
            query, instruments=instruments, start=start, end=end, freq=freq, market=market,
            output="numpy",
        )
        self._init(arrays, n_features, window, label is not None)

    @classmethod
    def _over(cls, arrays, n_features, window, has_label):
        """A sampler over a query already made (:mod:`qstore.dask` builds one per partition)."""
        sampler = cls.__new__(cls)
        sampler._init(arrays, n_features, window, has_label)
        return sampler

    def _init(self, arrays, n_features, window, has_label):
        self.window = window
        self.n_features = n_features
        self._values = arrays.values
        self._has_label = has_label
        self.instruments = arrays.instruments
        self.codes = arrays.codes
        self.datetime = arrays.datetime
        # The first row of each sample's instrument, so a window never reaches into the previous instrument.
        starts = _np.flatnonzero(_np.r_[True, arrays.codes[1:] != arrays.codes[:-1]])
        lengths = _np.diff(_np.r_[starts, len(arrays.codes)])
        self._first = _np.repeat(starts, lengths)

    def __len__(self):
        return len(self._values)

    def index(self, i):
        """The (instrument, datetime64) of sample ``i``."""
        return self.instruments[self.codes[i]], self.datetime[i]

    def __getitem__(self, i):
        n = len(self._values)
        if not -n <= i < n:
            raise IndexError(f"sample {i} of {n}")
        i %= n
        lo = max(int(self._first[i]), i + 1 - self.window)
        rows = self._values[lo : i + 1, : self.n_features]
        if len(rows) < self.window:
            x = _np.full((self.window, self.n_features), _np.nan, dtype=_np.float32)
            x[self.window - len(rows) :] = rows
        else:
            x = rows
        if self._has_label:
            return x, self._values[i, self.n_features]
        return x


def _source(mysql, csv, password, table, symbol_column, date_column, fields, symbols, limit, connections,
            calendar_table=None, calendar_column=None, date_format=None, exclude_fields=None):
    if (mysql is None) == (csv is None):
        raise InvalidArgument("give exactly one source: mysql='mysql://user@host/db' or csv='DIR_OR_FILE'")
    if isinstance(symbols, str):
        symbols = [s.strip() for s in symbols.split(",") if s.strip()]
    if isinstance(fields, str):
        fields = [f.strip() for f in fields.split(",") if f.strip()]
    return {
        "mysql": mysql,
        "csv": None if csv is None else str(csv),
        "password": password,
        "table": table,
        "symbol_column": symbol_column,
        "date_column": date_column,
        "date_format": date_format,
        "exclude_fields": None if exclude_fields is None else list(
            [f.strip() for f in exclude_fields.split(",")] if isinstance(exclude_fields, str) else exclude_fields
        ),
        "fields": None if fields is None else list(fields),
        "symbols": None if symbols is None else list(symbols),
        "limit": limit,
        "connections": connections,
        "calendar_table": calendar_table,
        "calendar_column": calendar_column,
    }


def dump_all(
    path, *, mysql=None, csv=None, password=None, table=None, symbol_column=None, date_column=None,
    fields=None, symbols=None, limit=None, connections=None, calendar_table=None, calendar_column=None,
    start=None, end=None, freq="day", market="all", max_date=None, overwrite=False, keep_unknown=False,
    wait=False, date_format=None, exclude_fields=None,
):
    """``qdump all``: imports K-lines from MySQL (``mysql=URL``, ``table=``) or CSV (``csv=DIR_OR_FILE``) into a
    new store at ``path``, switched in atomically when complete (``overwrite=True`` replaces a store there,
    deleting only what qstore wrote). Returns the summary (symbols, rows, failed symbols with reasons, ...)
    as a dict. Options mean what the ``qdump all`` flags of the same names do."""
    s, e = _range(start, end)
    source = _source(mysql, csv, password, table, symbol_column, date_column, fields, symbols, limit,
                     connections, calendar_table, calendar_column, date_format, exclude_fields)
    options = {"freq": freq, "market": market, "max_date": _date(max_date, "max_date")}
    return _json.loads(_qstore.dump_all(str(path), source, options, s, e, overwrite, keep_unknown, wait))


def update(
    path, *, mysql=None, csv=None, password=None, table=None, symbol_column=None, date_column=None,
    fields=None, symbols=None, limit=None, connections=None, since=None, end=None, freq="day",
    market="all", max_date=None, update_caches=False, wait=False, cache=None, date_format=None,
    exclude_fields=None,
):
    """``qdump update``: appends the days after the store's last day (or, with ``since``, corrects the days
    from then on), crash-safe and under the store's writer lock (``wait=True`` waits for another writer);
    ``update_caches=True`` brings the store's expression and dataset caches forward too (counts in
    ``expression_cache_updated``, ``dataset_cache_updated``). Returns the summary as a dict."""
    s, e = _range(since, end)
    source = _source(mysql, csv, password, table, symbol_column, date_column, fields, symbols, limit,
                     connections, date_format=date_format, exclude_fields=exclude_fields)
    options = {"freq": freq, "market": market, "max_date": _date(max_date, "max_date")}
    return _json.loads(
        _qstore.update(str(path), source, options, s, e, update_caches, wait, _cache(cache))
    )


def update_caches(path, cache=None):
    """``qcache update``: brings the store's expression-cache entries and datasets forward to the store as it
    is now (after an update made without ``update_caches=True``). Returns
    ``{"expression_cache_updated": n, "dataset_cache_updated": m}``."""
    entries, datasets = _qstore.update_caches(str(path), "all", None, _cache(cache))
    return {"expression_cache_updated": entries, "dataset_cache_updated": datasets}


def warm(path, exprs, instruments="all", market="all", freq="day", cache=None):
    """``qcache warm``: computes expressions, or a feature set (``"alpha158"``, ``"alpha360"``, ``"technical"``, a
    JSON file), for
    the instruments into the store's expression cache (each entry built once across processes, under its
    writer lock). Returns how many entries ended how, e.g. ``{"built": 1580, "fresh": 0}``."""
    exprs, set_name, instruments = _query(exprs, instruments)
    return _json.loads(
        _qstore.warm(str(path), exprs, set_name, instruments, market, freq, _cache(cache))
    )


class KlineLoader:
    """The loader training code calls: K-lines of a symbol from the store, which is brought up to date from its
    source (MySQL or CSV) when older than ``ttl`` seconds, once for all the processes that ask at the same time
    (under the store's update lock); a symbol the store lacks is backfilled.

    >>> loader = qstore.KlineLoader("STORE", mysql="mysql://root@127.0.0.1/market", table="stock_kline_data")
    >>> df = loader.load_kline_data("600000.SH", "2023-01-01", "2023-06-30")
    """

    def __init__(
        self, store, *, mysql=None, csv=None, password=None, table=None, symbol_column=None,
        date_column=None, fields=None, ttl=86400, freq="day", market="all", max_date=None, date_format=None,
    ):
        self.path = str(getattr(store, "path", store))
        source = (
            None
            if mysql is None and csv is None
            else _source(mysql, csv, password, table, symbol_column, date_column, fields, None, None, None,
                         date_format=date_format)
        )
        options = {"freq": freq, "market": market, "max_date": _date(max_date, "max_date")}
        self.ttl = float(ttl)
        self._l = _qstore.Loader(self.path, source, options, self.ttl)

    @staticmethod
    def _symbol(symbol):
        # The users' spelling (600000.SH) or the store's (SH600000).
        if "." in symbol:
            code, exchange = symbol.split(".", 1)
            return exchange.upper() + code
        return symbol.upper()

    def load_kline_data(self, symbol, start=None, end=None, use_cache=True, force_refresh=False):
        """Every field of ``symbol`` between two dates as a pandas frame indexed by (instrument, datetime).
        ``force_refresh=True`` (or ``use_cache=False``) updates from the source first whatever the TTL says."""
        s, e = _range(start, end)
        if force_refresh or not use_cache:
            self._l.refresh(True)
        return _to_pandas(FeatureArrays(*self._l.load(self._symbol(symbol), s, e)))

    def get_features(self, symbol, start=None, end=None, feature_set="technical"):
        """A feature set (or a list of expressions) for ``symbol``, after the same freshness check as
        :meth:`load_kline_data`."""
        s, e = _range(start, end)
        symbol = self._symbol(symbol)
        self._l.load(symbol, s, e)
        return Store(self.path).features(feature_set, instruments=[symbol], start=s, end=e)

    def get_cache_info(self):
        """``cached_stocks``, ``total_size_mb``, ``cache_ttl_hours``, ``last_update`` (a datetime or None) and
        ``last_day`` (the store's last trading day)."""
        symbols, size_mb, ttl_s, last_update, last_day = self._l.cache_info()
        return {
            "cached_stocks": symbols,
            "total_size_mb": size_mb,
            "cache_ttl_hours": ttl_s / 3600,
            "last_update": None if last_update is None else _dt.datetime.fromtimestamp(last_update),
            "last_day": last_day,
        }

    def clear_cache(self, symbol=None):
        """Drops one symbol (or every symbol) from the store; the next load backfills it from the source."""
        self._l.clear(None if symbol is None else self._symbol(symbol))

    def refresh(self, force=False):
        """Updates now (``force``) or when older than the TTL; the update's summary, or None."""
        out = self._l.refresh(bool(force))
        return None if out is None else _json.loads(out)
