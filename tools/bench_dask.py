"""The measurements of tools/bench-dask.sh (which builds the store and the wheel): python tools/bench_dask.py
STORE WARM_N REDIS_URL."""
import os
import shutil
import statistics
import sys
import tempfile
import time

import dask
import numpy as np
import pandas  # imported before timing: its first import alone takes about 0.3 s
from distributed import Client, LocalCluster, get_task_stream, wait

import qstore
import qstore.dask as qd


def noop(i):
    return i


def block(i):
    return np.ones((75_000, 158), dtype=np.float32)


def main():
    store, warm_n, redis = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    off = qstore.CacheOptions(mode="off")

    def best(f, k=3):
        times = []
        for _ in range(k):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return min(times), statistics.median(times)

    one_best, one_med = best(lambda: qstore.Store(store, cache=off).features("alpha158"))
    print(f"features, one process (Store.features, pandas): best {one_best:.2f} s, median {one_med:.2f} s")

    # One partition's cost where it runs (the engine's threads on every core of the machine, no scheduler):
    # Alpha158 for 100 instruments, the median over the first partitions.
    names = qstore.Store(store).instruments()
    query = dict(path=store, cache=off._asdict(), exprs=[], set_name="alpha158", universe=None, market="all",
                 start=None, end=None, freq="day")
    per = []
    for k in range(0, min(len(names), 1000), 100):
        t = time.perf_counter()
        qd._features_part(names[k : k + 100], **query)
        per.append(time.perf_counter() - t)
    print(f"one partition of 100 instruments, in process: median {statistics.median(per) * 1e3:.1f} ms "
          f"({len(per)} partitions)")

    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        client.run(lambda: __import__("qstore"))  # the workers import qstore before timing
        for size in (100, 500):
            frame = qd.features(store, "alpha158", partition_size=size, cache=off)
            t = time.perf_counter()
            qd.features(store, "alpha158", partition_size=size, cache=off)
            plan = time.perf_counter() - t
            g_best, g_med = best(lambda: qd.features(store, "alpha158", partition_size=size, cache=off).compute())
            w_best, w_med = best(
                lambda: qd.features(store, "alpha158", partition_size=size, cache=off)
                .map_partitions(len).compute()
            )
            # .compute() has Dask concatenate every partition on one worker and send the whole frame on; the
            # partitions fetched to the client and concatenated there move the data once.
            c_best, c_med = best(
                lambda: pandas.concat(client.gather(client.compute(
                    qd.features(store, "alpha158", partition_size=size, cache=off).to_delayed()
                )))
            )
            with get_task_stream(client) as ts:
                frame.map_partitions(len).compute()
            durations = [
                sum(s["stop"] - s["start"] for s in t["startstops"] if s["action"] == "compute")
                for t in ts.data
                if isinstance(t["key"], tuple) and t["key"][0].startswith("qstore-features")
            ]
            print(
                f"features, cluster, {frame.npartitions} partitions of {size}: gathered to the client best "
                f"{g_best:.2f} s (median {g_med:.2f}) = {one_best / g_best:.2f}x one process; partitions gathered "
                f"and concatenated by the client best {c_best:.2f} s (median {c_med:.2f}) = "
                f"{one_best / c_best:.2f}x; kept on the workers "
                f"best {w_best:.2f} s (median {w_med:.2f}) = {one_best / w_best:.2f}x; plan {plan * 1000:.0f} ms; "
                f"a partition on a worker: median {statistics.median(durations):.3f} s ({len(durations)} tasks)"
            )
        # Numpy arrays of one partition's size, made on the workers and gathered: the transport's own speed.
        futures = client.map(block, range(20), pure=False)
        wait(futures)
        t = time.perf_counter()
        blocks = client.gather(futures)
        moved = sum(b.nbytes for b in blocks)
        del blocks
        print(f"transport: {moved / 1e6 / (time.perf_counter() - t):.0f} MB/s from the workers to the client")
        t = time.perf_counter()
        dask.compute(*[dask.delayed(noop, pure=False)(i) for i in range(2000)])
        per_task = (time.perf_counter() - t) / 2000
        print(f"scheduler: {per_task * 1e3:.2f} ms per empty task (2,000 tasks, 2 workers)")

    # The same with each worker's engine on one thread (2 processes x 1 thread on 2 cores, no oversubscription).
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0",
                      env={"RAYON_NUM_THREADS": "1"}) as cluster, Client(cluster):
        w_best, w_med = best(
            lambda: qd.features(store, "alpha158", partition_size=100, cache=off).map_partitions(len).compute()
        )
        print(f"features, cluster with RAYON_NUM_THREADS=1 on the workers, partitions of 100, kept on the "
              f"workers: best {w_best:.2f} s (median {w_med:.2f}) = {one_best / w_best:.2f}x one process")

    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0") as cluster, \
            Client(cluster):
        insts = qstore.Store(store).instruments()[:warm_n]
        def cold_copy():
            d = tempfile.mkdtemp(prefix="cold-", dir=os.path.dirname(store))
            shutil.rmtree(d)
            # The store's files as hard links (no copy), its cache directory left out: a cold cache.
            shutil.copytree(store, d, copy_function=os.link,
                            ignore=shutil.ignore_patterns("features_cache", "dataset_cache"))
            return d
        cache = qstore.CacheOptions(redis_url=redis, lock="redis")
        d = cold_copy()
        t = time.perf_counter()
        c1 = qstore.warm(d, "alpha158", instruments=insts, cache=cache)
        w1 = time.perf_counter() - t
        shutil.rmtree(d)
        d = cold_copy()
        t = time.perf_counter()
        c2 = qd.warm(d, "alpha158", instruments=insts, cache=cache)
        w2 = time.perf_counter() - t
        shutil.rmtree(d)
        assert c1.get("built") == c2.get("built"), (c1, c2)
        print(f"warm alpha158, {warm_n} instruments ({c1.get('built')} entries): one process {w1:.2f} s, "
              f"cluster {w2:.2f} s = {w1 / w2:.2f}x")


if __name__ == "__main__":
    main()
