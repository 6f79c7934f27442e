"""Writes featuresets/alpha360.json from qlib's own definition (pyqlib 0.9.7:
qlib.contrib.data.loader.Alpha360DL.get_feature_config()): the same names and expressions, in qlib's order.
The VWAP columns are optional (a store without $vwap gets the other 300). Run with the qlib virtualenv of
tools/golden.sh: target/qlib-venv/bin/python tools/golden/alpha360_json.py ."""
import json
import sys
from pathlib import Path

import qlib
from qlib.contrib.data.loader import Alpha360DL

repo = Path(sys.argv[1])
fields, names = Alpha360DL.get_feature_config()
WHAT = {"CLOSE": "close", "OPEN": "open", "HIGH": "high", "LOW": "low", "VWAP": "VWAP", "VOLUME": "volume"}
features = []
for name, expr in zip(names, fields):
    kind = name.rstrip("0123456789")
    lag = int(name[len(kind):])
    base = "today's volume" if kind == "VOLUME" else "today's close"
    when = "today's" if lag == 0 else f"the {WHAT[kind]} {lag} trading day{'s' if lag > 1 else ''} ago"
    doc = f"{WHAT[kind]} relative to {base}" if lag == 0 else f"{when} relative to {base}"
    if kind == "VOLUME" and lag == 0:
        doc = "1 (today's volume relative to itself; 0 on a day without volume, NaN without a value)"
    if kind == "CLOSE" and lag == 0:
        doc = "1 (today's close relative to itself; NaN without a close)"
    f = {"name": name, "expr": expr, "doc": doc}
    if "$vwap" in expr:
        f["optional"] = True
    features.append(f)
out = {
    "name": "alpha360",
    "description": "qlib's Alpha360 features (qlib.contrib.data.loader.Alpha360DL.get_feature_config(), "
    f"pyqlib {qlib.__version__}): the last 60 days of open, high, low, close and VWAP relative to today's close "
    "and of volume relative to today's volume; the same names and expressions, in qlib's order. The VWAP "
    "columns are optional.",
    "features": features,
}
(repo / "featuresets" / "alpha360.json").write_text(json.dumps(out, indent=1) + "\n")
print(f"alpha360: {len(features)} features")
