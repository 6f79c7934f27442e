"""KunQuant's compute time for Alpha158 (without VWAP0) per factor group over a qstore store (issue 21).

    python bench_kunquant.py STORE BUILD_DIR GROUP [RUNS] [THREADS]
    python bench_kunquant.py exprs GROUP      (qstore's expressions of the group, from featuresets/alpha158.json)

Reads open/high/low/close/volume/amount of every instrument of STORE (qlib's `.bin` layout, read with numpy),
compiles the group's factors with KunQuant (float32, AVX2 blocks of 8 instruments, time x stock layout: the
configuration KunQuant documents as its fastest) into BUILD_DIR/GROUP (reused when present), then runs the
compiled code RUNS times (default 3) on THREADS threads (default 2) and prints one line:

    kunquant GROUP FACTORS first S repeat S1 S2 ...

`first` is the first call (it allocates its buffers), the repeats are calls on the same inputs with the
outputs preallocated: compute only, no loading, compiling or summary. Needs `pip install kunquant==0.1.12`
and a C++ compiler; tools/bench-expr.sh runs it.
"""

import json
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROLLING = [5, 10, 20, 30, 60]
# The groups of issue 21, by KunQuant's operator names (its "LOW" is Alpha158's MIN); qstore's side is the
# factors of featuresets/alpha158.json with the same names (`exprs`).
GROUPS = {
    "all": "all",
    "kbar": {"kbar": {}},
    "price": "price",
    "roc-ma": ["ROC", "MA"],
    "std-vstd": ["STD", "VSTD"],
    "beta-rsqr-resi": ["BETA", "RSQR", "RESI"],
    "max-min-rsv-imax-imin-imxd": ["MAX", "LOW", "RSV", "IMAX", "IMIN", "IMXD"],
    "qtlu-qtld-rank": ["QTLU", "QTLD", "RANK"],
    "corr-cord": ["CORR", "CORD"],
    "cnt-sum-vma-wvma-vsum": ["CNTP", "CNTN", "CNTD", "SUMP", "SUMN", "SUMD", "VMA", "WVMA", "VSUMP", "VSUMN",
                              "VSUMD"],
}


def config(group, data):
    spec = GROUPS[group]
    price = {"windows": [0], "feature": [("OPEN", data.open), ("HIGH", data.high), ("LOW", data.low)]}
    if spec == "all":
        return {"kbar": {}, "price": price, "rolling": {"windows": ROLLING}}
    if isinstance(spec, dict):
        return spec
    if spec == "price":
        return {"price": price}
    return {"rolling": {"windows": ROLLING, "include": spec}}


def exprs(group):
    """qstore's expressions for the group: Alpha158's factors of the same names (VWAP0 left out, as KunQuant's
    price group has no VWAP)."""
    spec = GROUPS[group]
    if spec == "all":
        pattern = r"(?!VWAP0$)"
    elif isinstance(spec, dict):
        pattern = r"K"
    elif spec == "price":
        pattern = r"(OPEN|HIGH|LOW)0$"
    else:
        pattern = "(%s)[0-9]+$" % "|".join("MIN" if op == "LOW" else op for op in spec)
    with open(os.path.join(ROOT, "featuresets", "alpha158.json")) as f:
        features = json.load(f)["features"]
    return [x["expr"] for x in features if re.match(pattern, x["name"])]


def load(store):
    """{field: float32 array (time x instrument)} over the whole day calendar, NaN where a series is absent."""
    import numpy as np

    with open(os.path.join(store, "calendars", "day.txt")) as f:
        days = sum(1 for line in f if line.strip())
    with open(os.path.join(store, "instruments", "all.txt")) as f:
        names = sorted(line.split("\t")[0].strip().lower() for line in f if line.strip())
    # KunQuant is fastest on a multiple of its 8-lane blocks; the bench stores have 500 or 5,000 instruments.
    out = {}
    for field in ["open", "high", "low", "close", "volume", "amount"]:
        m = np.full((days, len(names)), np.nan, dtype=np.float32)
        for j, name in enumerate(names):
            path = os.path.join(store, "features", name, f"{field}.day.bin")
            if not os.path.exists(path):
                continue
            raw = np.fromfile(path, dtype="<f4")
            start = int(raw[0])
            m[start : start + len(raw) - 1, j] = raw[1:]
        out[field] = m
    return out, names


def compiled(group, build):
    from KunQuant.Driver import KunCompilerConfig
    from KunQuant.jit import cfake
    from KunQuant.Op import Builder, Input, Output
    from KunQuant.predefined.Alpha158 import AllData
    from KunQuant.runner import KunRunner as kr
    from KunQuant.Stage import Function

    name = group.replace("-", "_")  # the module's name is a C++ identifier
    path = os.path.join(build, name, f"{name}.so")
    if os.path.exists(path):
        return kr.Library.load(path)
    builder = Builder()
    with builder:
        data = AllData(low=Input("low"), high=Input("high"), close=Input("close"), open=Input("open"),
                       amount=Input("amount"), volume=Input("volume"))
        factors, names = data.build(config(group, data))
        for v, k in zip(factors, names):
            Output(v, k)
    f = Function(builder.ops)
    cfg = KunCompilerConfig(dtype="float", blocking_len=8, partition_factor=4, input_layout="TS",
                            output_layout="TS", options={"opt_reduce": True, "fast_log": True})
    os.makedirs(build, exist_ok=True)
    cfake.compileit([(name, f, cfg)], name, cfake.CppCompilerConfig(), tempdir=build, keep_files=True, load=False)
    return kr.Library.load(path)


def main():
    if sys.argv[1] == "exprs":
        print("\n".join(exprs(sys.argv[2])))
        return
    from KunQuant.runner import KunRunner as kr

    store, build, group = sys.argv[1:4]
    runs = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    threads = int(sys.argv[5]) if len(sys.argv) > 5 else 2
    inputs, _ = load(store)
    lib = compiled(group, build)
    module = lib.getModule(group.replace("-", "_"))
    executor = kr.createMultiThreadExecutor(threads)
    n_time = inputs["close"].shape[0]
    t = time.perf_counter()
    out = kr.runGraph(executor, module, inputs, 0, n_time)
    first = time.perf_counter() - t
    repeats = []
    for _ in range(runs):
        t = time.perf_counter()
        kr.runGraph(executor, module, inputs, 0, n_time, out)
        repeats.append(time.perf_counter() - t)
    print(f"kunquant {group} {len(out)} first {first:.3f} repeat " + " ".join(f"{r:.3f}" for r in repeats))


if __name__ == "__main__":
    main()
