"""Writes fixtures/golden/*.csv: qlib's own values for the operator list and the feature sets.

Run through tools/golden.sh, which creates the virtualenv (pyqlib 0.9.7 from PyPI) and the store. The CSVs
hold float32 values as '%.9g' (exact round trip), NaN as an empty cell; rows are qlib's D.features rows for a
list of instruments (every row where the series exist, start to end of the calendar; for the `*compat` files,
from COMPAT_START: qlib's values depend on where a query starts, which is what `--compat qlib` reproduces).
"""
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import qlib
from qlib.data import D

store, repo = Path(sys.argv[1]), Path(sys.argv[2])
# Which files to write (default: all); the others are left as they are.
only = set(sys.argv[3:])
out = repo / "fixtures" / "golden"
INSTRUMENTS = ["BJ830806", "SH600000", "SH600009", "SH688001", "SZ000002", "SZ300009"]
# After the first listings of the sample (SH688001 and SZ300009 list in May 2023) and about 100 rows into the
# others, so that both a clipped and an unclipped extended window are tested.
COMPAT_START = "2023-06-01"

qlib.init(provider_uri=str(store), region="cn", expression_cache=None, dataset_cache=None, kernels=1)


def dump(name, columns, exprs, start=None):
    if only and name not in only:
        return
    df = D.features(INSTRUMENTS, exprs, start_time=start, freq="day")
    df.columns = columns
    df = df.astype(np.float32).reset_index()
    df["datetime"] = df["datetime"].dt.strftime("%Y-%m-%d")
    df = df[["instrument", "datetime"] + columns]
    df.to_csv(out / f"{name}.csv", index=False, float_format="%.9g", na_rep="")
    print(f"{name}: {len(df)} rows x {len(columns)} columns")


ops = [l.strip() for l in (repo / "tools/golden/operators.txt").read_text().splitlines()]
ops = [l for l in ops if l and not l.startswith("#")]
dump("operators", ops, ops)
for set_name in ["alpha158", "alpha360", "technical"]:
    # Optional features too: the sample store has every field.
    fs = json.loads((repo / "featuresets" / f"{set_name}.json").read_text())["features"]
    # qlib's parser is Python: `0-$volume` is fine, unary minus is not used in the shipped sets.
    dump(set_name, [f["name"] for f in fs], [f["expr"] for f in fs])
compat = [l.strip() for l in (repo / "tools/golden/compat.txt").read_text().splitlines()]
compat = ops + [l for l in compat if l and not l.startswith("#") and l not in ops]
dump("compat", compat, compat, COMPAT_START)
fs = json.loads((repo / "featuresets" / "alpha158.json").read_text())["features"]
dump("alpha158_compat", [f["name"] for f in fs], [f["expr"] for f in fs], COMPAT_START)

(out / "VERSIONS").write_text(
    f"pyqlib {qlib.__version__}\npandas {pd.__version__}\nnumpy {np.__version__}\n"
    f"instruments {' '.join(INSTRUMENTS)}\n"
    f"compat start {COMPAT_START}\n"
)
