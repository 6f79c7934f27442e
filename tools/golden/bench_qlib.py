"""Times qlib's D.features on a store: ten rolling expressions and Alpha158 for the first N instruments.

Usage: bench_qlib.py STORE N. Prints `qlib <label> <seconds wall> <seconds cpu>` lines (CPU includes joblib
workers). Expression and dataset caches are off, as for the qstore run it is compared with.
"""
import resource
import sys
import time

import qlib
from qlib.contrib.data.loader import Alpha158DL
from qlib.data import D

store, n = sys.argv[1], int(sys.argv[2])
TEN = ["Mean($close,5)", "Std($close,20)", "EMA($close,12)", "Max($high,60)", "Min($low,60)",
       "Corr($close,$volume,20)", "Slope($close,20)", "Rsquare($close,20)", "Rank($close,20)",
       "Quantile($close,60,0.8)"]
qlib.init(provider_uri=store, region="cn", expression_cache=None, dataset_cache=None, kernels=2)
insts = sorted(D.list_instruments(D.instruments("all"), as_list=True))[:n]


def cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


for label, exprs in [("ten", TEN), ("alpha158", Alpha158DL.get_feature_config()[0])]:
    t0, c0 = time.time(), cpu()
    df = D.features(insts, exprs, freq="day")
    print(f"qlib {label} {time.time() - t0:.2f} {cpu() - c0:.2f} rows={len(df)}", flush=True)
