"""qstore.qlib's column-wise CSZScoreNorm and CSZFillna against qlib 0.9.7's per-day ones, on frames built to be
hard: days of one, two and many instruments, NaN, infinities, a column equal on every day, float32 values."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import qlib.data.dataset.processor as stock

import qstore.qlib as fast

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(os.environ.get("QSTORE_BIN_DIR", ROOT / "target" / "debug"))


def frame(seed):
    rng = np.random.default_rng(seed)
    rows = []
    for k, day in enumerate(pd.date_range("2020-01-01", periods=80)):
        rows += [(day, f"S{i:03d}") for i in range(int(rng.choice([1, 2, 3, 7, 40])))]
    index = pd.MultiIndex.from_tuples(rows, names=["datetime", "instrument"])
    n = len(index)
    columns = pd.MultiIndex.from_tuples(
        [("feature", "NORMAL"), ("feature", "BIG"), ("feature", "INF"), ("feature", "SPARSE"), ("feature", "CONST"),
         ("label", "LABEL0")]
    )
    v = np.empty((n, len(columns)), np.float32)
    v[:, 0] = rng.standard_normal(n)
    v[:, 1] = rng.standard_normal(n) * 1e6 + 3e6
    v[:, 2] = rng.standard_normal(n)
    v[rng.random(n) < 0.1, 2] = np.inf
    v[rng.random(n) < 0.05, 2] = -np.inf
    v[:, 3] = rng.standard_normal(n)
    v[rng.random(n) < 0.6, 3] = np.nan
    v[:, 4] = 0.1
    v[:, 5] = rng.standard_normal(n) * 0.02
    v[rng.random(n) < 0.1, 5] = np.nan
    return pd.DataFrame(v, index=index, columns=columns)


def same(a, b, column, atol=1e-6):
    x, y = a[column].to_numpy(np.float64), b[column].to_numpy(np.float64)
    return np.isclose(x, y, rtol=1e-5, atol=atol, equal_nan=True)


CASES = [
    ("CSZScoreNorm", {"fields_group": "feature"}),
    ("CSZScoreNorm", {"fields_group": "label"}),
    ("CSZScoreNorm", {"fields_group": ["feature", "label"], "method": "robust"}),
    ("CSZFillna", {"fields_group": "feature"}),
    ("CSZFillna", {"fields_group": None}),
]


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("name,kwargs", CASES)
def test_column_wise_processor_equals_qlibs(name, kwargs, seed):
    df = frame(seed)
    want = fast._STOCK[name](**kwargs)(df.copy())
    got = getattr(fast, name)(**kwargs)(df.copy())
    assert isinstance(getattr(fast, name)(**kwargs), fast._STOCK[name])
    assert want.index.equals(got.index) and want.columns.equals(got.columns)
    assert list(want.dtypes) == list(got.dtypes)
    # A z-score subtracts the day's mean in float32; qlib's float32 sum and pandas' compensated float64 one round
    # that mean apart by a few ulps of the values, which is 1e-6 of a standard deviation for values that are large
    # against their spread (BIG: 3e6 +- 1e6), and cancellation makes that an absolute error near zero.
    atol = 1e-5 if name == "CSZScoreNorm" and kwargs.get("method") != "robust" else 1e-6
    for c in df.columns:
        ok = same(want, got, c, atol)
        groups = kwargs["fields_group"] if isinstance(kwargs["fields_group"], list) else [kwargs["fields_group"]]
        zscored = name == "CSZScoreNorm" and kwargs.get("method") != "robust" and c[0] in groups
        if c[1] == "CONST" and zscored:
            # A day whose values are all equal has no z-score: 0 / 0 is NaN here. qlib's float32 mean of such a day
            # can be an ulp off the value, and it then gives +-inf instead; the only difference, documented.
            assert np.isnan(got[c].to_numpy()).all()
            assert np.isinf(want[c].to_numpy()[~ok]).all()
            continue
        assert ok.all(), f"{name} {kwargs} {c}: {(~ok).sum()} values differ"


def test_processors_leave_other_columns_and_the_index_alone():
    df = frame(4)
    out = fast.CSZScoreNorm("label")(df.copy())
    pd.testing.assert_frame_equal(out["feature"], df["feature"])
    assert not np.allclose(out["label"].to_numpy(), df["label"].to_numpy(), equal_nan=True)
    out = fast.CSZFillna("label")(df.copy())
    pd.testing.assert_frame_equal(out["feature"], df["feature"])
    assert out["label"].notna().sum().item() > df["label"].notna().sum().item()


def test_init_installs_them_and_fast_processors_false_restores_qlibs(tmp_path):
    store = tmp_path / "store"
    out = subprocess.run(
        [str(BIN / "qdump"), "all", "--csv", str(ROOT / "fixtures" / "sample"), "--to", str(store)],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    script = (
        "import sys, qstore.qlib, qlib.data.dataset.processor as p\n"
        "qstore.qlib.init(provider_uri=sys.argv[1], kernels=1)\n"
        "print(p.CSZScoreNorm.__module__, p.CSZFillna.__module__)\n"
        "qstore.qlib.init(provider_uri=sys.argv[1], kernels=1, fast_processors=False)\n"
        "print(p.CSZScoreNorm.__module__, p.CSZFillna.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(store)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[:2] == ["qstore.qlib qstore.qlib", "qlib.data.dataset.processor qlib.data.dataset.processor"]
