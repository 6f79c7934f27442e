"""qstore on a Dask cluster: features, cache warming and training windows computed by workers over a store
that every worker mounts (a shared file system; the same directory on one machine).

>>> from dask.distributed import Client
>>> client = Client("tcp://scheduler:8786")            # or Client(LocalCluster(n_workers=2))
>>> import qstore.dask as qd
>>> df = qd.features("/shared/store", "alpha158", start="2020-01-01")   # a dask.dataframe, lazily
>>> df.loc["SH600000"].compute()                          # reads one partition
>>> qd.warm("/shared/store", "alpha158", cache=qstore.CacheOptions(redis_url="redis://redis:6379/"))

Partitions are groups of instruments, in qlib's order (sorted), and the frame's divisions are instruments, so
``.loc[instrument]`` and joins on the instrument level read only the partitions they need. Every task carries
its settings (the store path, ``cache=`` :class:`qstore.CacheOptions`): a worker keeps no qstore state between
tasks and opens the store in each, so a worker started before an update sees the update. Errors are the
library's (:mod:`qstore.errors`), raised on a worker and re-raised where the call is: by ``features`` itself
when planning finds them (a store no worker can open, a bad expression), else by ``.compute()``.

Installed with the ``dask`` extra: ``pip install 'qstore[dask]'``.
"""

import dask
import dask.dataframe as _dd
import numpy as _np

from . import (
    FeatureArrays,
    InvalidArgument,
    Store,
    WindowSampler,
    _cache,
    _query,
    _qstore,
    _range,
    _sampler_query,
    _to_pandas,
)

__all__ = ["features", "warm", "update", "samples", "Samples", "PARTITION_SIZE"]

#: Instruments per partition unless ``partition_size`` says otherwise: Alpha158 over 750 days takes 0.1-0.3 s
#: per partition, large against the scheduler's ~4 ms per task (benches/README.md, Dask).
PARTITION_SIZE = 100


def _groups(names, partition_size):
    size = int(partition_size)
    if size < 1:
        raise InvalidArgument(f"partition_size must be at least 1 instrument, not {partition_size}")
    return [names[i : i + size] for i in range(0, len(names), size)]


def _on_cluster(fn, *args):
    """Runs ``fn(*args)`` as one task on the current scheduler (a worker of the active distributed client), so
    a client that does not mount the store can still plan a query."""
    return dask.compute(dask.delayed(fn, pure=False)(*args))[0]


def _plan(path, cache, exprs, set_name, universe, market, start, end, freq, compat):
    """The query checked where the store is (an unknown field or expression fails here), its instruments in
    the frame's order and its column names."""
    store = Store(path, cache=cache, compat=compat)
    # An empty part: the whole query's checks and columns, no rows.
    columns = store._s.features(exprs, set_name, universe, market, start, end, freq, False, [])[4]
    if universe is None:
        names = store._s.instruments(market, start, end)
    else:
        names = sorted(set(universe))
    return names, list(columns)


def _part_arrays(path, cache, exprs, set_name, universe, market, start, end, freq, compat, part):
    """One partition of a query as :class:`qstore.FeatureArrays`: the rows of the ``part`` instruments, as the
    whole query gives them."""
    store = Store(path, cache=cache, compat=compat)
    return FeatureArrays(
        *store._s.features(exprs, set_name, universe, market, start, end, freq, False, list(part))
    )


def _features_part(part, **query):
    return _to_pandas(_part_arrays(part=part, **query))


def features(
    store_path,
    exprs,
    instruments="all",
    start=None,
    end=None,
    freq="day",
    market="all",
    partition_size=PARTITION_SIZE,
    cache=None,
    compat=None,
):
    """:meth:`qstore.Store.features` as a ``dask.dataframe``: the same frame (MultiIndex ``instrument``,
    ``datetime``; one float32 column per expression or feature name), computed ``partition_size`` instruments
    per partition by the workers. ``.compute()`` equals ``qstore.Store(store_path, compat=compat).features(...)``
    (``compat="qlib"``: qlib's own values, see :class:`qstore.Store`).

    The query is checked and its instruments listed now, by one task on the cluster (the client need not
    mount the store); values are computed when the frame is.
    """
    path, cache = str(store_path), _cache(cache)
    s, e = _range(start, end)
    exprs, set_name, universe = _query(exprs, instruments)
    query = dict(
        path=path, cache=cache, exprs=exprs, set_name=set_name, universe=universe, market=market,
        start=s, end=e, freq=freq, compat=compat,
    )
    names, columns = _on_cluster(_plan, *query.values())
    parts = _groups(names, partition_size) or [[]]
    meta = _to_pandas(
        FeatureArrays(
            _np.empty((0, len(columns)), dtype=_np.float32),
            _np.empty(0, dtype=_np.uint32),
            [],
            _np.empty(0, dtype="datetime64[s]"),
            columns,
        )
    )
    divisions = (
        tuple(p[0] for p in parts) + (parts[-1][-1],) if names else (None, None)
    )
    # The frame has no text columns (the instrument level is categorical), so Dask's conversion of text to
    # Arrow strings would be a pass over every partition that changes nothing.
    with dask.config.set({"dataframe.convert-string": False}):
        return _dd.from_map(
            _features_part, parts, meta=meta, divisions=divisions, label="qstore-features", **query
        )


def _instruments(path, cache, market):
    return Store(path, cache=cache).instruments(market)


def _warm_part(path, cache, exprs, set_name, part, freq):
    import qstore

    return qstore.warm(path, exprs if set_name is None else set_name, instruments=part, freq=freq,
                       cache=cache)


def _sum(counts):
    out = {}
    for c in counts:
        for k, v in c.items():
            out[k] = out.get(k, 0) + v
    return out


def warm(
    store_path, exprs, instruments="all", market="all", freq="day", partition_size=PARTITION_SIZE,
    cache=None,
):
    """:func:`qstore.warm` spread over the workers, ``partition_size`` instruments per task: fills the expression
    cache from every worker at once. Each entry is built once across all workers and machines (its writer
    lock: Redis with ``cache=CacheOptions(redis_url=...)`` or ``QSTORE_REDIS_URL``, else file locks, which
    hold only on one machine or a file system with working ``flock``). A task whose worker dies is rerun by
    Dask; the entries it was building were never published, and its locks lapse (a Redis lease after
    ``lease_s``; a file lock with the process). Returns the summed outcomes, e.g. ``{"built": 1580}``.
    """
    path, cache = str(store_path), _cache(cache)
    exprs, set_name, universe = _query(exprs, instruments)
    names = _on_cluster(_instruments, path, cache, market) if universe is None else universe
    tasks = [
        dask.delayed(_warm_part, pure=False)(path, cache, exprs, set_name, part, freq)
        for part in _groups(names, partition_size)
    ]
    return _sum(dask.compute(*tasks))


def _cached_instruments(path, cache):
    return _qstore.cached_instruments(path, cache)


def _update_part(path, cache, part):
    return _qstore.update_caches(path, "entries", list(part), cache)[0]


def _update_datasets(path, cache, _after):
    return _qstore.update_caches(path, "datasets", None, cache)[1]


def update(store_path, partition_size=PARTITION_SIZE, cache=None):
    """:func:`qstore.update_caches` spread over the workers: after ``qdump update`` (or
    :func:`qstore.update`), brings every expression-cache entry forward, ``partition_size`` instruments' entries
    per task, then the dataset cache (each dataset is one file: one task). Returns
    ``{"expression_cache_updated": n, "dataset_cache_updated": m}``."""
    path, cache = str(store_path), _cache(cache)
    names = _on_cluster(_cached_instruments, path, cache)
    entries = [
        dask.delayed(_update_part, pure=False)(path, cache, part)
        for part in _groups(names, partition_size)
    ]
    # The datasets after the entries: a dataset rebuilt from current entries reads them instead of computing.
    datasets = dask.delayed(_update_datasets, pure=False)(path, cache, entries)
    counts, n_datasets = dask.compute(entries, datasets)
    return {"expression_cache_updated": sum(counts), "dataset_cache_updated": n_datasets}


def _sampler_part(part, n_features, has_label, window, query):
    arrays = _part_arrays(part=part, **query)
    return WindowSampler._over(arrays, n_features, window, has_label)


class Samples:
    """Training windows over a features query, one :class:`qstore.WindowSampler` per group of instruments,
    each built on the worker that uses it: training code and hyperparameter sweeps read the store where they
    run, and only their results travel.

    >>> s = qd.samples(path, "alpha158", label="Ref($close, -2) / $close - 1", window=60)
    >>> losses = dask.compute(*s.map(train_one_epoch, lr=1e-3))    # train_one_epoch(sampler, lr=...)
    """

    def __init__(self, parts, n_features, has_label, window, query):
        self.parts = parts
        self._args = (n_features, has_label, window, query)

    @property
    def npartitions(self):
        return len(self.parts)

    def to_delayed(self):
        """One ``dask.delayed`` :class:`qstore.WindowSampler` per partition, built when computed."""
        return [
            dask.delayed(_sampler_part, pure=False)(part, *self._args) for part in self.parts
        ]

    def map(self, fn, *args, **kwargs):
        """``fn(sampler, *args, **kwargs)`` for every partition's sampler, where the sampler is built: a list of
        ``dask.delayed`` results (``dask.compute(*samples.map(fn))``)."""
        return [dask.delayed(fn, pure=False)(s, *args, **kwargs) for s in self.to_delayed()]


def samples(
    store_path,
    features,
    label=None,
    window=60,
    instruments="all",
    start=None,
    end=None,
    freq="day",
    market="all",
    partition_size=PARTITION_SIZE,
    cache=None,
    compat=None,
):
    """:class:`qstore.WindowSampler` over a cluster: :class:`Samples` whose partitions are groups of
    ``partition_size`` instruments, each sampler holding the values of its own instruments only. Sample ``i``
    of a partition is what ``WindowSampler(Store(store_path, compat=compat), ...)`` gives for the same
    (instrument, day)."""
    n_features, query_exprs, window = _sampler_query(features, label, window)
    path, cache = str(store_path), _cache(cache)
    s, e = _range(start, end)
    _, _, universe = _query(query_exprs, instruments)
    query = dict(
        path=path, cache=cache, exprs=query_exprs, set_name=None, universe=universe, market=market,
        start=s, end=e, freq=freq, compat=compat,
    )
    names, _ = _on_cluster(_plan, *query.values())
    return Samples(_groups(names, partition_size), n_features, label is not None, window, query)
