"""qstore.dask on a real distributed.LocalCluster (2 worker processes) and the real Redis of the test suite."""

import os
import pathlib
import shutil
import signal
import subprocess
import threading
import time

import dask
import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster

import qstore
import qstore.dask as qd

from conftest import BIN, run

REDIS = os.environ.get("QSTORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/")


def redis_cache(**kw):
    return qstore.CacheOptions(redis_url=REDIS, lock="redis", **kw)


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0") as c:
        with Client(c) as cl:
            yield cl


def metas(store):
    return sorted(pathlib.Path(store, "features_cache").rglob("*.meta"))


def verify(store):
    out = subprocess.run([str(BIN / "qcache"), "verify", str(store)], capture_output=True, text=True)
    return out.returncode, out.stdout + out.stderr


QUERIES = [
    # A market, cut to dates (instruments whose spans miss the range have no rows).
    dict(exprs=["$close", "Mean($close, 5)", "Corr($close, $volume, 10)"], start="2023-03-01", end="2023-06-30"),
    # A feature set over the whole market, columns named by feature.
    dict(exprs="alpha158"),
    # A list: unsorted, a lower-case spelling, an instrument the store lacks.
    dict(exprs=["$close", "Ref($close, 1) / $close"], instruments=["SZ000002", "sh600000", "XX000000", "SH600009"]),
]


@pytest.mark.parametrize("query", QUERIES, ids=["market", "feature-set", "list"])
def test_features_equal_the_store_bit_for_bit(client, store_path, query):
    expected = qstore.Store(store_path).features(**query)
    frame = qd.features(store_path, partition_size=3, **query)
    assert frame.npartitions > 1
    got = frame.compute()
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    # Bit for bit, NaNs included.
    assert got.values.tobytes() == expected.values.tobytes()
    # Divisions are instruments: one instrument's rows come from its partition alone.
    first = expected.index.get_level_values(0)[0]
    assert frame.known_divisions
    pd.testing.assert_frame_equal(frame.loc[first].compute(), expected.loc[[first]], check_categorical=False)


def test_features_from_the_expression_cache_equal_computing(client, fresh_store):
    query = dict(exprs="alpha158", start="2023-02-01")
    computed = qd.features(fresh_store, cache=qstore.CacheOptions(mode="off"), **query).compute()
    counts = qd.warm(fresh_store, "alpha158", partition_size=4, cache=redis_cache())
    assert counts.get("built", 0) > 0
    cached = qd.features(fresh_store, cache=qstore.CacheOptions(mode="read"), **query).compute()
    assert cached.values.tobytes() == computed.values.tobytes()
    pd.testing.assert_frame_equal(cached, computed, check_exact=True)

    # The workers' reads were served by the cache: a partition read there reports hits and no misses.
    def part_stats(path):
        store = qstore.Store(path, cache={"mode": "read"})
        store.features("alpha158", instruments=store.instruments()[:3], start="2023-02-01")
        return store.cache_stats()["expression_cache"]

    stats = client.submit(part_stats, str(fresh_store), pure=False).result()
    assert stats["hits"] > 0 and stats["misses"] == 0, stats


def test_two_concurrent_warms_build_every_entry_once(client, fresh_store):
    cache = redis_cache()
    results = [None, None]

    def warm(i):
        results[i] = qd.warm(fresh_store, "alpha158", partition_size=2, cache=cache)

    threads = [threading.Thread(target=warm, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    built = sum(r.get("built", 0) for r in results)
    entries = len(metas(fresh_store))
    # Each entry written exactly once, by whichever task got its lock first.
    assert entries > 0 and built == entries, (results, entries)
    code, out = verify(fresh_store)
    assert code == 0, out
    again = qd.warm(fresh_store, "alpha158", cache=cache)
    assert again.get("built", 0) == 0 and again.get("fresh", 0) > 0, again


def test_a_worker_killed_mid_warm_is_retried_and_nothing_published_is_wrong(fresh_store):
    # Each worker process pauses once, at its 40th publish (its data written, its meta not), holding its
    # entries' Redis locks; the test kills one there, as a machine dying mid-write.
    env = {"QSTORE_FAILPOINT": "cache:before-meta:40", "QSTORE_FAILPOINT_PAUSE_MS": "4000"}
    cache = redis_cache(lease_s=2)
    with LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0", env=env
    ) as cluster, Client(cluster) as cl:
        pids = cl.run(os.getpid)
        out = {}

        def warm():
            try:
                out["counts"] = qd.warm(fresh_store, "alpha158", partition_size=3, cache=cache)
            except BaseException as e:  # reported below
                out["error"] = e

        t = threading.Thread(target=warm)
        t.start()
        cache_dir = pathlib.Path(fresh_store, "features_cache")
        deadline = time.monotonic() + 120
        # Mid-warm: some entries published, and more data written than published.
        mid_warm = False
        while time.monotonic() < deadline and t.is_alive():
            published = len(list(cache_dir.rglob("*.meta")))
            written = len(list(cache_dir.rglob("*.bin")))
            if published >= 40 and written > published:
                mid_warm = True
                break
            time.sleep(0.05)
        assert mid_warm, "never saw the warm mid-way (data written, not yet published)"
        victim = next(iter(pids.values()))
        os.kill(victim, signal.SIGKILL)
        t.join(timeout=300)
        assert not t.is_alive(), "the warm did not finish after a worker was killed"
        assert "error" not in out, out.get("error")
        # The nanny started a new worker process in the victim's place.
        assert victim not in cl.run(os.getpid).values()
        # Every entry is accounted for by a finished task (the victim's tasks were rerun elsewhere).
        assert sum(out["counts"].values()) >= len(metas(fresh_store))
    code, report = verify(fresh_store)
    assert code == 0, report
    # Every entry is published and right: reading the cache gives what computing gives.
    store_off = qstore.Store(fresh_store, cache={"mode": "off"})
    store_read = qstore.Store(fresh_store, cache={"mode": "read"})
    computed = store_off.features("alpha158")
    cached = store_read.features("alpha158")
    assert cached.values.tobytes() == computed.values.tobytes()
    stats = store_read.cache_stats()["expression_cache"]
    assert stats["misses"] == 0 and stats["hits"] > 0, stats


def test_update_brings_every_entry_forward_after_new_days(client, fresh_store, tmp_path):
    cache = redis_cache()
    qd.warm(fresh_store, ["Mean($close, 5)", "Std($close, 10)"], cache=cache)
    # New days for every instrument: the fixtures' rows after the store's last day, as a CSV update.
    extra = tmp_path / "extra"
    extra.mkdir()
    last = qstore.Store(fresh_store).calendar()[-1]
    day = pd.Timestamp(last) + pd.offsets.BDay(1)
    for inst in qstore.Store(fresh_store).instruments():
        pd.DataFrame(
            {"date": [day.strftime("%Y-%m-%d")], "open": [10.0], "high": [11.0], "low": [9.5], "close": [10.5],
             "volume": [1000.0], "amount": [10500.0], "vwap": [10.4], "factor": [1.0]}
        ).to_csv(extra / f"{inst}.csv", index=False)
    run("qdump", "update", "--csv", extra, "--to", fresh_store)
    counts = qd.update(fresh_store, partition_size=3, cache=cache)
    assert counts["expression_cache_updated"] == len(metas(fresh_store)), counts
    store = qstore.Store(fresh_store, cache={"mode": "read"})
    read = store.features(["Mean($close, 5)", "Std($close, 10)"])
    stats = store.cache_stats()["expression_cache"]
    assert stats["hits"] > 0 and stats["misses"] == 0 and stats["partial"] == 0, stats
    computed = qstore.Store(fresh_store, cache={"mode": "off"}).features(["Mean($close, 5)", "Std($close, 10)"])
    assert read.values.tobytes() == computed.values.tobytes()


def test_samples_are_the_window_sampler_split_by_instrument(client, store_path):
    features, label = ["$close", "Mean($close, 5)"], "Ref($close, -1) / $close - 1"
    whole = qstore.WindowSampler(qstore.Store(store_path), features, label=label, window=5)
    samples = qd.samples(store_path, features, label=label, window=5, partition_size=4)
    assert samples.npartitions == 3
    sizes = dask.compute(*samples.map(len))
    assert sum(sizes) == len(whole)

    def windows(sampler, picks):
        return [(sampler.index(i), sampler[i]) for i in picks]

    got = dask.compute(*samples.map(windows, [0, 7, -1]))
    index = {whole.index(i): i for i in range(len(whole))}
    for part in got:
        for key, (x, y) in part:
            wx, wy = whole[index[key]]
            np.testing.assert_array_equal(x, wx)
            assert np.array_equal(y, wy, equal_nan=True)


def test_bad_input_is_the_librarys_error_not_a_hang(client, store_path, tmp_path):
    with pytest.raises(qstore.NotFound, match="not a qstore/qlib store"):
        qd.features(tmp_path / "nowhere", ["$close"])
    with pytest.raises(qstore.ExpressionError) as e:
        qd.features(store_path, ["Mean($close, 5"])
    assert e.value.expr == "Mean($close, 5" and e.value.pos is not None
    with pytest.raises(qstore.ExpressionError, match=r"unknown field \$nope"):
        qd.features(store_path, ["$nope"], instruments=["SH600000"])
    with pytest.raises(qstore.InvalidArgument, match="partition_size"):
        qd.features(store_path, ["$close"], partition_size=0)
    # A store that goes away between planning and computing: the workers' error, from .compute().
    moved = tmp_path / "store"
    shutil.copytree(store_path, moved)
    frame = qd.features(moved, ["$close"])
    shutil.rmtree(moved)
    with pytest.raises(qstore.NotFound):
        frame.compute()
    with pytest.raises(qstore.NotFound):
        qd.warm(tmp_path / "nowhere", ["Mean($close, 5)"])


def test_features_in_qlibs_compatible_mode(client, store_path):
    query = dict(exprs=["WMA($close, 5)", "EMA($close, 10)", "Mean($close, 5)"], start="2023-06-01")
    expected = qstore.Store(store_path, compat="qlib").features(**query)
    got = qd.features(store_path, partition_size=3, compat="qlib", **query).compute()
    assert got.values.tobytes() == expected.values.tobytes()
    own = qd.features(store_path, partition_size=3, **query).compute()
    assert not np.array_equal(own.to_numpy(), got.to_numpy(), equal_nan=True)
