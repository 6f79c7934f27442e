"""The Python package on the sample fixtures, end to end (tools/test.sh runs it):

    pip install ./python pandas
    python python/examples/quickstart.py [STORE]
"""

import pathlib
import sys
import tempfile

import numpy as np

import qstore

fixtures = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "sample"
path = sys.argv[1] if len(sys.argv) > 1 else str(pathlib.Path(tempfile.mkdtemp()) / "store")

# Import the sample K-lines (CSV, one file per symbol) into a store; the summary is qdump's.
summary = qstore.dump_all(path, csv=fixtures, overwrite=True)
print(f"imported {summary['symbols_ok']} symbols, {summary['rows']} rows into {path}")

store = qstore.Store(path)
days = store.calendar()
print(f"calendar {days[0]} .. {days[-1]} ({len(days)} days), {len(store.instruments())} instruments")

# One field over a date range: a read-only view of the file, no copy.
close = store.read("SH600000", "close", start="2023-03-01", end="2023-03-31")
print(f"SH600000 close in March: {len(close)} days, mean {np.nanmean(close):.2f}")

# qlib's D.features frame, computed by qstore's engine.
df = store.features(["Mean($close, 5)", "Std($close, 20)"], start="2023-06-01", end="2023-06-30")
print(df.head())

# Alpha158 as arrays for a model, and training windows of 20 days with a label.
x = store.features("alpha158", instruments=["SH600000", "SZ000002"], output="numpy")
print(f"alpha158: {x.values.shape[0]} rows x {x.values.shape[1]} features")
windows = qstore.WindowSampler(store, "alpha158", label="Ref($close, -2) / Ref($close, -1) - 1", window=20)
sample, label = windows[len(windows) // 2]
print(f"{len(windows)} windows; one is {sample.shape}, its label {label:.4f}")
