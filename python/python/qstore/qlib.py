"""A drop-in qlib data provider: existing qlib code (``D.features``, the ``Alpha158`` / ``Alpha360`` handlers and
their processors) gets its features from qstore's engine.

>>> import qstore.qlib
>>> qstore.qlib.init(provider_uri="STORE", region="cn")     # instead of qlib.init(...)
>>> from qlib.data import D
>>> D.features(D.instruments("all"), ["$close", "Mean($close, 5)"], "2023-01-01", "2023-06-30")

or, in an existing ``qlib.init``: ``dataset_provider={"class": "QstoreDatasetProvider", "module_path":
"qstore.qlib"}`` (and ``expression_provider`` likewise). qlib itself still reads the calendar and the instrument
lists (the formats are the same); every feature is computed by qstore, with qlib's numbers except the
documented fixes of qlib's bugs (docs/expressions.md), or with those too: ``init(..., compat="qlib")`` (or
``"compat": "qlib"`` in the store's qstore.json) for models trained on qlib's own features. pyqlib is needed
only by this module.

``init`` also swaps qlib's processors that run a Python function once per trading day (``CSZScoreNorm``, both
methods, and ``CSZFillna``) for the same arithmetic done for every day at once: the handlers' configs name them
as before and get qlib's numbers within float32 rounding (a day's mean is summed in float64 here, in float32 by
qlib), except that a day whose values are all equal gets NaN z-scores where qlib's float32 mean can be an ulp off
and give +-inf. ``init(..., fast_processors=False)`` keeps qlib's own.
"""

import numpy as np
import pandas as pd
from qlib.config import C
from qlib.data.data import Cal, DatasetProvider, ExpressionProvider
from qlib.data.dataset import processor as _processors

from . import Store

__all__ = ["init", "QstoreDatasetProvider", "QstoreExpressionProvider", "CSZScoreNorm", "CSZFillna"]

_PROVIDERS = {
    "dataset_provider": {"class": "QstoreDatasetProvider", "module_path": "qstore.qlib"},
    "expression_provider": {"class": "QstoreExpressionProvider", "module_path": "qstore.qlib"},
    # qlib's own caches would sit in front of ours and cache the same values again.
    "expression_cache": None,
    "dataset_cache": None,
}


def init(provider_uri, region="cn", compat=None, fast_processors=True, **kwargs):
    """``qlib.init`` with qstore's providers (other keyword arguments go to ``qlib.init`` unchanged).
    ``compat="qlib"``: qlib's own values where qstore fixes them (:class:`qstore.Store`'s ``compat``).
    ``fast_processors``: handlers that name ``CSZScoreNorm`` or ``CSZFillna`` get this module's column-wise
    versions (the same numbers); False restores qlib's."""
    import qlib

    global _compat
    for k, v in _PROVIDERS.items():
        kwargs.setdefault(k, v)
    _compat = compat
    _stores.clear()
    for name, fast in _FAST.items():
        setattr(_processors, name, fast if fast_processors else _STOCK[name])
    qlib.init(provider_uri=str(provider_uri), region=region, **kwargs)


_stores = {}
# ``compat`` of the last ``init`` (None: the store's own setting).
_compat = None


def _store(freq):
    """The qstore Store of qlib's provider_uri for ``freq`` (one per process and path)."""
    uri = str(C.dpm.get_data_uri(freq))
    s = _stores.get(uri)
    if s is None:
        s = _stores[uri] = Store(uri, compat=_compat)
    return s


def _day(t):
    return None if t is None else str(pd.Timestamp(t))


class QstoreDatasetProvider(DatasetProvider):
    """qlib's ``DatasetProvider`` on qstore: one engine query for every instrument and field."""

    def __init__(self, align_time=True):
        super().__init__()
        self.align_time = align_time

    def dataset(self, instruments, fields, start_time=None, end_time=None, freq="day", inst_processors=[]):
        instruments_d = self.get_instruments_d(instruments, freq)
        column_names = self.get_column_names(fields)
        empty = pd.DataFrame(
            index=pd.MultiIndex.from_arrays([[], []], names=("instrument", "datetime")),
            columns=column_names,
            dtype=np.float32,
        )
        if self.align_time:
            cal = Cal.calendar(start_time, end_time, freq)
            if len(cal) == 0:
                return empty
            start_time, end_time = cal[0], cal[-1]
        names = sorted(instruments_d)
        if not names:
            return empty
        arrays = _store(freq).features(
            column_names, instruments=names, start=_day(start_time), end=_day(end_time), freq=freq,
            output="numpy",
        )
        keep = None
        if isinstance(instruments_d, dict):
            # Rows inside each instrument's listed spans, as qlib's inst_calculator keeps them.
            keep = np.zeros(len(arrays.codes), dtype=bool)
            # Rows are grouped by instrument code: every instrument's first row in one search.
            bounds = np.searchsorted(arrays.codes, np.arange(len(arrays.instruments) + 1))
            for k, inst in enumerate(arrays.instruments):
                first = int(bounds[k])
                days = arrays.datetime[first : int(bounds[k + 1])]
                for begin, end in instruments_d[inst]:
                    lo = np.searchsorted(days, np.datetime64(pd.Timestamp(begin), "s"), side="left")
                    hi = np.searchsorted(days, np.datetime64(pd.Timestamp(end), "s"), side="right")
                    keep[first + lo : first + hi] = True
        codes, dates = arrays.codes, arrays.datetime
        # Owned, writable values: qlib's processors may change them in place. One copy either way: a plain
        # one when every row is kept (the usual case: spans cover the data), else the kept rows.
        if keep is None or keep.all():
            values = arrays.values.copy()
        else:
            values = arrays.values[keep]
            codes, dates = codes[keep], dates[keep]
        days, day_codes = np.unique(dates, return_inverse=True)
        index = pd.MultiIndex(
            levels=[pd.Index(arrays.instruments), pd.DatetimeIndex(days.astype("datetime64[ns]"))],
            codes=[codes.astype(np.int32), day_codes.astype(np.int32)],
            names=["instrument", "datetime"],
            verify_integrity=False,
        )
        data = pd.DataFrame(values, index=index, columns=column_names, copy=False)
        if not inst_processors:
            return data
        from qlib.data.inst_processor import InstProcessor
        from qlib.utils import init_instance_by_config

        parts = {}
        for inst, part in data.groupby(level="instrument", sort=True):
            part = part.droplevel("instrument")
            for p in inst_processors:
                if p:
                    part = init_instance_by_config(p, accept_types=InstProcessor)(part, instrument=inst)
            parts[inst] = part
        return pd.concat(parts, names=["instrument"], sort=False) if parts else empty


class QstoreExpressionProvider(ExpressionProvider):
    """qlib's ``ExpressionProvider`` on qstore: one expression for one instrument, indexed by calendar position
    (as qlib's ``LocalExpressionProvider`` returns it)."""

    def expression(self, instrument, field, start_time=None, end_time=None, freq="day"):
        cal = Cal.calendar(freq=freq)
        _, _, start_index, end_index = Cal.locate_index(start_time, end_time, freq=freq, future=False)
        arrays = _store(freq).features(
            [str(field)], instruments=[instrument], start=_day(cal[start_index]), end=_day(cal[end_index]),
            freq=freq, output="numpy",
        )
        positions = np.searchsorted(cal.values.astype("datetime64[s]"), arrays.datetime)
        return pd.Series(arrays.values[:, 0], index=positions, dtype=np.float32)


def _by_day(frame):
    return frame.groupby(level="datetime", sort=False, group_keys=False)


class CSZScoreNorm(_processors.CSZScoreNorm):
    """qlib's cross-sectional z-score (``method="zscore"``: mean and sample standard deviation of each day;
    ``"robust"``: median and 1.4826 x the median absolute deviation, clipped to [-3, 3]) computed for all days
    at once by grouped transforms, where qlib applies a Python function to each day's rows. Same arithmetic in
    the same order, so the same values up to the rounding of pandas' grouped reductions."""

    def __call__(self, df):
        if not isinstance(self.fields_group, list):
            self.fields_group = [self.fields_group]
        robust = self.zscore_func is not _processors.zscore
        for g in self.fields_group:
            cols = _processors.get_group_columns(df, g)
            x = df[cols]
            # pandas' grouped std and median come back as float64 even for float32 columns; qlib's per-day
            # statistics keep the column's type, and so the arithmetic after them.
            dtypes = x.dtypes
            if robust:
                x = x - _by_day(x).transform("median").astype(dtypes)
                mad = _by_day(x.abs()).transform("median").astype(dtypes)
                x = (x / mad / 1.4826).clip(-3, 3)
            else:
                days = _by_day(x)
                x = (x - days.transform("mean").astype(dtypes)).div(days.transform("std").astype(dtypes))
            df[cols] = x
        return df


class CSZFillna(_processors.CSZFillna):
    """qlib's cross-sectional fill: each missing value becomes the mean of its day's values of that column,
    for all days at once (qlib applies ``fillna(mean)`` to each day)."""

    def __call__(self, df):
        cols = _processors.get_group_columns(df, self.fields_group)
        x = df[cols]
        df[cols] = x.fillna(_by_day(x).transform("mean"))
        return df


# qlib resolves a handler's processors by name in its processor module, so replacing the names there is what
# makes existing configs use these.
_STOCK = {name: getattr(_processors, name) for name in ("CSZScoreNorm", "CSZFillna")}
_FAST = {"CSZScoreNorm": CSZScoreNorm, "CSZFillna": CSZFillna}
