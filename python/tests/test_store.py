"""`import qstore` against real stores built by `qdump`: zero-copy reads, features equal to `qcache query`,
errors, threads, forked processes, training windows."""

import datetime
import gc
import io
import multiprocessing
import threading
import warnings

import numpy as np
import pandas as pd
import pytest

import qstore
from conftest import SAMPLE, run


def bin_values(path):
    """A .bin file's start index and values, read the plain way."""
    raw = np.fromfile(path, dtype="<f4")
    return int(raw[0]), raw[1:]


def test_calendar_instruments_fields(store_path):
    s = qstore.Store(store_path)
    cal = s.calendar()
    assert cal.dtype == np.dtype("datetime64[s]")
    text = (store_path / "calendars" / "day.txt").read_text().split()
    assert [str(d)[:10] for d in cal] == text
    lines = (store_path / "instruments" / "all.txt").read_text().splitlines()
    assert s.instruments() == sorted(line.split("\t")[0] for line in lines)
    assert "close" in s.fields("SH600000") and s.fields("SH600000") == sorted(s.fields("SH600000"))
    # A market restricted to a range keeps the instruments trading in it.
    late = s.instruments(start="2023-12-01")
    assert 0 < len(late) <= len(s.instruments())


@pytest.mark.parametrize("mapped", [False, True])
def test_read_is_a_read_only_view_of_the_file(store_path, tmp_path, mapped):
    path = store_path
    if mapped:
        # A threshold of 0 maps every file instead of reading small ones at open.
        import shutil

        path = tmp_path / "mapped"
        shutil.copytree(store_path, path)
        (path / "qstore.json").write_text('{"map_threshold": 0}')
    s = qstore.Store(path)
    start, want = bin_values(path / "features" / "sh600000" / "close.day.bin")
    cal = s.calendar()
    dates, v = s.read("SH600000", "close", "2023-03-01", "2023-03-31", with_dates=True)
    assert v.dtype == np.float32 and not v.flags.writeable and v.base is not None
    first = int(np.searchsorted(cal, dates[0]))
    np.testing.assert_array_equal(v, want[first - start : first - start + len(v)])
    assert str(dates[0])[:10] == "2023-03-01" and str(dates[-1])[:10] == "2023-03-31"
    with pytest.raises(ValueError):
        v[0] = 1.0
    # By calendar rows: the same values.
    np.testing.assert_array_equal(s.read_rows("SH600000", "close", first, first + len(v)), v)
    # The view outlives the store: it holds the file, not the Store.
    whole = s.read("SH600000", "close")
    del s
    gc.collect()
    np.testing.assert_array_equal(whole, want)


def test_panel_matches_reads(store_path):
    s = qstore.Store(store_path)
    array, dates, insts, fields = s.panel(["close", "volume"], ["SH600000", "SZ000002"], "2023-02-01", "2023-02-28")
    assert array.shape == (len(dates), 2, 2) and array.dtype == np.float32
    d, close = s.read("SZ000002", "close", "2023-02-01", "2023-02-28", with_dates=True)
    at = np.searchsorted(dates, d)
    np.testing.assert_array_equal(array[at, 1, 0], close)


EXPRS = ["$close", "Mean($close, 5)", "Ref($close, -1) / $close - 1", "Corr($close, $volume, 10)"]


def qcache_frame(store_path, args):
    text = run("qcache", "query", store_path, *args, "--format", "csv")
    df = pd.read_csv(io.StringIO(text), dtype={"instrument": str}, parse_dates=["datetime"])
    return df.set_index(["instrument", "datetime"])


def test_features_equal_qcache_query_bit_for_bit(store_path):
    s = qstore.Store(store_path)
    df = s.features(EXPRS, start="2023-02-01", end="2023-06-30")
    assert list(df.columns) == EXPRS and df.index.names == ["instrument", "datetime"]
    assert all(df.dtypes == np.float32)
    want = qcache_frame(store_path, ["--fields", *EXPRS, "--start", "2023-02-01", "--end", "2023-06-30"])
    assert list(df.index.get_level_values(0)) == list(want.index.get_level_values(0))
    assert (df.index.get_level_values(1) == want.index.get_level_values(1)).all()
    # The CSV prints each float32 exactly (shortest round trip), so parsing it back gives the same bits.
    np.testing.assert_array_equal(df.to_numpy(), want.to_numpy().astype(np.float32))


def test_feature_sets_and_outputs(store_path):
    s = qstore.Store(store_path)
    df = s.features("alpha158", instruments=["SH600000", "SZ000002"])
    names = [n for n, _ in qstore.feature_set("alpha158")]
    assert list(df.columns) == [n for n in names if n in df.columns] and "KMID" in df.columns
    arrays = s.features("alpha158", instruments="SH600000,SZ000002", output="numpy")
    assert not arrays.values.flags.writeable and arrays.values.base is not None
    np.testing.assert_array_equal(arrays.values, df.to_numpy())
    # The pandas frame is built on the engine's values, not a copy of them.
    framed = qstore._to_pandas(arrays)
    assert np.shares_memory(framed["KMID"].to_numpy(), arrays.values)
    rows = arrays.rows_of("SZ000002")
    assert set(arrays.codes[rows]) == {arrays.instruments.index("SZ000002")}
    table = s.features(EXPRS, instruments=["SH600000"], output="arrow")
    # No copy on the way into Arrow: the array's buffer is the engine's column.
    cols, *_ = s._s.features(EXPRS, None, ["SH600000"], "all", None, None, "day", True)
    import pyarrow as pa

    assert pa.array(cols[1]).buffers()[1].address == cols[1].ctypes.data
    assert table.column_names == ["instrument", "datetime", *EXPRS]
    np.testing.assert_array_equal(
        table.column(EXPRS[1]).to_numpy(zero_copy_only=False),
        s.features(EXPRS, instruments=["SH600000"])[EXPRS[1]].to_numpy(),
    )
    pl = s.features(EXPRS, instruments=["SH600000"], output="polars")
    assert pl.columns == ["instrument", "datetime", *EXPRS] and pl.height == table.num_rows


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_qcache_parquet_and_arrow_files_read_back_in_pyarrow_and_polars(store_path, tmp_path, fmt):
    import polars as pl
    import pyarrow.feather as feather
    import pyarrow.parquet as pq

    args = ["--feature-set", "alpha158", "--start", "2023-02-01"]
    path = tmp_path / f"q.{fmt}"
    # Parts of 5 instruments: several row groups / record batches sharing one instrument dictionary.
    run("qcache", "query", store_path, *args, "--format", fmt, "--part-size", 5, "--out", path)
    table = pq.read_table(path) if fmt == "parquet" else feather.read_table(path)
    want = qcache_frame(store_path, args)
    assert table.column_names == ["instrument", "datetime", *want.columns]
    assert str(table.schema.field("datetime").type) == "timestamp[ms]"
    assert all(str(table.schema.field(c).type) == "float" for c in want.columns)
    df = table.to_pandas()
    assert isinstance(df["instrument"].dtype, pd.CategoricalDtype)
    df = df.astype({"instrument": str}).set_index(["instrument", "datetime"])
    assert list(df.index.get_level_values(0)) == list(want.index.get_level_values(0))
    assert (df.index.get_level_values(1) == want.index.get_level_values(1)).all()
    # The CSV's values, bit for bit (NaN where the CSV has an empty cell), and the Python API's frame.
    np.testing.assert_array_equal(df.to_numpy(), want.to_numpy().astype(np.float32))
    from_api = qstore.Store(store_path).features("alpha158", start="2023-02-01")
    np.testing.assert_array_equal(df.to_numpy(), from_api.to_numpy())
    frame = pl.read_parquet(path) if fmt == "parquet" else pl.read_ipc(path)
    assert frame.columns == table.column_names and frame.height == table.num_rows
    assert frame.schema["instrument"] == pl.Categorical and frame.schema["KMID"] == pl.Float32
    np.testing.assert_array_equal(frame.select(want.columns).to_numpy(), df.to_numpy())
    assert frame["instrument"].cast(pl.String).to_list() == list(want.index.get_level_values(0))


def test_dataset_cache_files_describe_themselves_to_h5py(fresh_store):
    import glob
    import json

    import h5py

    run("qcache", "warm", fresh_store, "--dataset", "--fields", *EXPRS, "--lock", "file")
    [data] = glob.glob(str(fresh_store / "dataset_cache" / "*.data"))
    [meta] = glob.glob(str(fresh_store / "dataset_cache" / "*.meta"))
    rows = json.loads(open(meta).read())["rows"]
    with h5py.File(data, "r") as f:
        # What a row is comes from the file alone; the meta is read only for how many rows are published.
        assert f.attrs["freq"] == "day" and "instruments" in f.attrs["description"]
        fields = f.attrs["fields"].split("\n")
        names = f["instruments"].asstr()[:]
        dates = pd.to_datetime(f["calendar"].asstr()[:])
        index = pd.MultiIndex.from_arrays(
            [names[f["instrument"][:rows]], dates[f["row"][:rows]]], names=["instrument", "datetime"]
        )
        df = pd.DataFrame(f["values"][:rows], index=index, columns=fields).sort_index()
    want = qstore.Store(fresh_store).features(fields)
    assert df.index.equals(want.index)
    np.testing.assert_array_equal(df.to_numpy(), want.to_numpy())


def test_feature_set_columns_a_store_lacks_are_left_out_with_a_warning(tmp_path):
    path = tmp_path / "no-vwap"
    run("qdump", "all", "--csv", SAMPLE, "--to", path, "--fields", "open,high,low,close,volume,factor")
    s = qstore.Store(path)
    with pytest.warns(qstore.LeftOutWarning, match=r"VWAP0 left out: no instrument of the query has \$vwap"):
        df = s.features("alpha158", instruments=["SH600000"])
    assert "VWAP0" not in df.columns and len(df.columns) == 157
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.features(EXPRS, instruments=["SH600000"])  # no feature set, nothing left out, no warning


def test_bad_arguments_raise_and_write_nothing(store_path):
    before = sorted(p.relative_to(store_path) for p in store_path.rglob("*"))
    s = qstore.Store(store_path)
    with pytest.raises(qstore.ExpressionError) as e:
        s.features(["Mean($clse, 5)"])
    assert e.value.pos == 5 and "clse" in str(e.value) and e.value.expr == "Mean($clse, 5)"
    with pytest.raises(qstore.ExpressionError):
        s.features(["Mean($close,"])
    with pytest.raises(qstore.NotFound):
        qstore.Store(store_path / "nope")
    with pytest.raises(qstore.NotFound):
        s.instruments("nosuchmarket")
    with pytest.raises(qstore.InvalidArgument, match="start 2023-03-01 is after end 2023-01-01; swap them"):
        s.read("SH600000", "close", "2023-03-01", "2023-01-01")
    with pytest.raises(qstore.InvalidArgument, match="swap"):
        s.read("SH600000", "close", np.datetime64("2023-03-01"), datetime.date(2023, 1, 1))
    # A start later in the end's own day is an empty range, not an error (as qlib's).
    assert len(s.read("SH600000", "close", "2023-03-01 10:00:00", "2023-03-01")) == 0
    with pytest.raises(qstore.InvalidArgument):
        s.read("../etc", "close")
    with pytest.raises(qstore.InvalidArgument):
        s.calendar("fortnight")
    with pytest.raises(qstore.InvalidArgument):
        s.read("SH600000", "close", start=3.5)
    with pytest.raises(qstore.InvalidArgument):
        s.features(EXPRS, output="excel")
    with pytest.raises(TypeError):
        s.fields(42)
    assert isinstance(qstore.InvalidArgument("x"), ValueError)
    assert sorted(p.relative_to(store_path) for p in store_path.rglob("*")) == before


def test_one_store_many_threads(store_path):
    s = qstore.Store(store_path)
    want = s.features(EXPRS).to_numpy()
    results, errors = [], []

    def work():
        try:
            for _ in range(3):
                results.append(s.features(EXPRS).to_numpy())
                s.read("SH600000", "close")
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 18
    for r in results:
        np.testing.assert_array_equal(r, want)


def _child(store, queue):
    try:
        df = store.features(EXPRS)
        v = store.read("SH600000", "close")
        queue.put((df.to_numpy().tobytes(), v.tobytes()))
    except Exception as e:  # sent to the parent
        queue.put(repr(e))


def test_forked_workers_read_correctly(store_path):
    s = qstore.Store(store_path)
    # The parent computes first, so its thread pool exists when the children are forked.
    want = (s.features(EXPRS).to_numpy().tobytes(), s.read("SH600000", "close").tobytes())
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(s, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert got == [want, want]


def test_window_sampler(store_path):
    s = qstore.Store(store_path)
    feats = ["$close", "Mean($close, 5)"]
    label = "Ref($close, -1) / $close - 1"
    ws = qstore.WindowSampler(s, feats, label=label, window=20, instruments=["SH600000", "SZ000002"])
    full = s.features([*feats, label], instruments=["SH600000", "SZ000002"])
    assert len(ws) == len(full)
    vals = full.to_numpy()
    for i in [0, 5, 19, 20, 200, len(ws) - 1, -1]:
        x, y = ws[i]
        assert x.shape == (20, 2) and x.dtype == np.float32
        k = i % len(ws)
        inst, day = ws.index(k)
        rows = full.index.get_level_values(0) == inst
        first = int(np.flatnonzero(rows)[0])
        lo = max(first, k - 19)
        pad = 20 - (k + 1 - lo)
        assert np.isnan(x[:pad]).all()
        np.testing.assert_array_equal(x[pad:], vals[lo : k + 1, :2])
        np.testing.assert_array_equal(y, vals[k, 2])
        assert full.index[k] == (inst, pd.Timestamp(day))
    with pytest.raises(IndexError):
        ws[len(ws)]
    with pytest.raises(qstore.InvalidArgument):
        qstore.WindowSampler(s, feats, window=0)
    # Works as a map-style dataset: batches stack windows.
    batch = np.stack([ws[i][0] for i in range(8)])
    assert batch.shape == (8, 20, 2)


def test_expression_cache_is_on_the_read_path(fresh_store):
    assert qstore.Store(fresh_store).cache_stats()["expression_cache"] is None
    run("qcache", "warm", fresh_store, "--fields", *EXPRS[1:], "--lock", "file")
    s = qstore.Store(fresh_store)
    cached = s.features(EXPRS)
    disk = s.cache_stats()["expression_cache"]
    # Every computed column of every instrument came from its entry ($close is a field, read as one).
    assert disk["hits"] == 3 * len(s.instruments()) and disk["misses"] == 0, disk
    run("qcache", "clear", fresh_store, "--all", "--lock", "file")
    computed = qstore.Store(fresh_store).features(EXPRS)
    np.testing.assert_array_equal(cached.to_numpy(), computed.to_numpy())


def test_instruments_take_patterns_and_files(store_path, tmp_path):
    """``instruments=`` takes what ``--instruments`` takes: glob patterns matched against the market
    (case-insensitive), ``@FILE``, and lists mixing names and patterns; a pattern that matches nothing is a
    ``qstore.ConfigError``, not an empty frame."""
    s = qstore.Store(store_path)
    every = s.instruments()
    sh6 = sorted(i for i in every if i.startswith("SH6"))
    df = s.features(["$close"], instruments="sh6*")
    assert sorted(df.index.get_level_values("instrument").unique()) == sh6
    listed = tmp_path / "mine.txt"
    listed.write_text("SZ000002\nSH6*\n")
    df = s.features(["$close"], instruments=f"@{listed}")
    assert sorted(df.index.get_level_values("instrument").unique()) == sorted(sh6 + ["SZ000002"])
    _, _, names, _ = s.panel(["close"], instruments=["SZ00000?", "BJ830806"])
    assert names == [i for i in every if i.startswith("SZ00000")] + ["BJ830806"]
    with pytest.raises(qstore.ConfigError, match="matches no instrument"):
        s.features(["$close"], instruments="XX*")


def test_qlibs_compatible_mode(fresh_store):
    """``Store(path, compat="qlib")``: qlib's own values for the operators qstore fixes (measured from the query's
    start), the same values elsewhere, and never an expression-cache entry for the former."""
    exprs = ["Mean($close, 5)", "WMA($close, 5)", "EMA($close, 10)", "IdxMax($high, 10)"]
    run("qcache", "warm", fresh_store, "--fields", *exprs, "--lock", "file")
    own, qlib = qstore.Store(fresh_store), qstore.Store(fresh_store, compat="qlib")
    assert (own.compat, qlib.compat) == ("none", "qlib") and "compat" in repr(qlib)
    a = own.features(exprs, start="2023-06-01")
    b = qlib.features(exprs, start="2023-06-01")
    assert a.index.equals(b.index)
    np.testing.assert_array_equal(a["Mean($close, 5)"].to_numpy(), b["Mean($close, 5)"].to_numpy())
    for c in exprs[1:]:
        assert not np.array_equal(a[c].to_numpy(), b[c].to_numpy(), equal_nan=True), c
    # qlib's WMA of a full window without NaN is the weighted mean divided by its length (qlib issue #1993).
    ratio = (a["WMA($close, 5)"] / b["WMA($close, 5)"]).dropna()
    assert ((ratio - 5).abs() < 1e-4).mean() > 0.9, ratio.describe()
    # Only Mean was read from the cache; the three others were computed (misses), per instrument.
    disk = qlib.cache_stats()["expression_cache"]
    n = len(b.index.get_level_values("instrument").unique())
    assert disk["hits"] == n and disk["misses"] == 3 * n, disk
    # EMA depends on the start in qlib's mode, not in qstore's.
    later_a = own.features(["EMA($close, 10)"], start="2023-09-01")
    later_b = qlib.features(["EMA($close, 10)"], start="2023-09-01")
    np.testing.assert_array_equal(later_a.to_numpy(), a.loc[later_a.index, ["EMA($close, 10)"]].to_numpy())
    assert not np.array_equal(later_b.to_numpy(), b.loc[later_b.index, ["EMA($close, 10)"]].to_numpy())
    with pytest.raises(qstore.InvalidArgument, match="compat"):
        qstore.Store(fresh_store, compat="pandas")
    with pytest.raises(qstore.InvalidArgument, match="compat"):
        qstore.Store(fresh_store, compat=1)
