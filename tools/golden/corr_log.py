"""Why `Corr($close, Log($volume+1), 5)` differs from qlib's after suspensions (#20 part 4; docs/expressions.md).

Usage, with the virtualenv of tools/golden.sh:
  target/release/qgen csv --out /tmp/c/csv --symbols 300 --days 500
  target/release/qdump all --csv /tmp/c/csv --to /tmp/c/store --max-date 2100-12-31
  target/release/qcache query /tmp/c/store --fields '$close' '$volume' 'Log($volume+1)' \
      'Corr($close, Log($volume+1), 5)' --out /tmp/c/ours.csv
  target/qlib-venv/bin/python tools/golden/corr_log.py /tmp/c/store /tmp/c/ours.csv

It prints how many Log values differ (and whose are correctly rounded), the largest Corr difference, and the
same correlation computed by pandas over our Log values and over numpy's: each reproduces its side exactly,
so the Log rounding is the whole difference.
"""
import sys

import numpy as np
import pandas as pd
import qlib
from qlib.data import D

store, ours_csv = sys.argv[1], sys.argv[2]
qlib.init(provider_uri=store, region="cn", expression_cache=None, dataset_cache=None, kernels=1)
names = ["close", "volume", "log", "corr"]
theirs = D.features(
    D.instruments("all"), ["$close", "$volume", "Log($volume+1)", "Corr($close, Log($volume+1), 5)"], freq="day"
).astype(np.float32)
theirs.columns = names
ours = pd.read_csv(ours_csv, dtype={"instrument": str})
ours["datetime"] = pd.to_datetime(ours["datetime"])
ours = ours.set_index(["instrument", "datetime"]).astype(np.float32)
ours.columns = [n + "_ours" for n in names]
j = theirs.join(ours, how="inner")

x = (j["volume"].to_numpy(np.float32) + np.float32(1))[~j["volume"].isna().to_numpy()]
exact = np.log(x.astype(np.float64)).astype(np.float32)
valid = ~j["log_ours"].isna().to_numpy()
print(f"Log: {len(x)} values; numpy's float32 log is off the correctly rounded value on {(np.log(x) != exact).sum()}; "
      f"ours on {(j['log_ours'].to_numpy()[valid] != exact).sum()}")
d = (j["corr"] - j["corr_ours"]).abs()
print(f"Corr: largest difference {d.max():.3g}, at {d.idxmax()}; {(d > 2.3e-6).sum()} rows above 2.3e-6")


def pandas_corr(log_column):
    return pd.concat(
        g["close"].rolling(5, min_periods=1).corr(g[log_column]) for _, g in j.groupby(level=0)
    ).astype(np.float32)


print("pandas' rolling corr over numpy's Log vs qlib's Corr: max", (pandas_corr("log") - j["corr"]).abs().max())
print("pandas' rolling corr over our Log vs our Corr: max", (pandas_corr("log_ours") - j["corr_ours"]).abs().max())
inst, day = d.idxmax()
g = j.loc[inst]
k = g.index.get_loc(day)
print(g.iloc[max(0, k - 6): k + 1][["close", "volume", "log", "log_ours", "corr", "corr_ours"]].to_string())
