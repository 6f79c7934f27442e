"""Maintenance from Python (dump_all, update, warm) and the loader, against CSV and the real MariaDB."""

import csv
import os
import shutil
import subprocess

import numpy as np
import pytest

import qstore
from conftest import SAMPLE, run

MYSQL = os.environ.get("QSTORE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")


def sql(statement):
    """Runs SQL on the test server with the `mariadb` client (tools/test.sh installs and starts it)."""
    out = subprocess.run(
        ["mariadb", "--protocol=tcp", "-h", "127.0.0.1", "-P", "3306", "-uroot", "-e", statement],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, f"MariaDB is required (tools/test.sh starts it): {out.stderr}"
    return out.stdout


def csv_until(tmp_path, last_day):
    """A copy of the sample CSV files cut after `last_day`."""
    out = tmp_path / f"until-{last_day}"
    out.mkdir()
    for f in SAMPLE.glob("*.csv"):
        lines = f.read_text().splitlines()
        kept = [lines[0]] + [line for line in lines[1:] if line[:10] <= last_day]
        (out / f.name).write_text("\n".join(kept) + "\n")
    return out


def test_dump_all_update_and_warm_match_the_commands(tmp_path):
    part = csv_until(tmp_path, "2023-11-30")
    path = tmp_path / "store"
    summary = qstore.dump_all(path, csv=part)
    assert summary["published"] and summary["symbols_ok"] == 12 and summary["calendar_last"] == "2023-11-30"
    with pytest.raises(qstore.Error, match="overwrite"):
        qstore.dump_all(path, csv=part)
    up = qstore.update(path, csv=SAMPLE)
    assert up["days_added"] > 0 and up["failed"] == [] and up["last_day"] == "2024-01-11"
    full = tmp_path / "full"
    run("qdump", "all", "--csv", SAMPLE, "--to", full)
    for f in ["close", "volume"]:
        a = qstore.Store(path).read("SH600000", f)
        b = qstore.Store(full).read("SH600000", f)
        np.testing.assert_array_equal(a, b)
    counts = qstore.warm(path, ["Mean($close, 5)", "Std($close, 20)"], instruments="SH600000,SZ000002")
    assert counts == {"built": 4}
    assert qstore.warm(path, ["Mean($close, 5)", "Std($close, 20)"], instruments="SH600000,SZ000002") == {
        "fresh": 4
    }
    assert run("qcache", "verify", path, "--lock", "file").strip().endswith("0 problems")
    caught_up = qstore.update(path, csv=SAMPLE, update_caches=True)
    assert caught_up["days_added"] == 0 and caught_up["expression_cache_updated"] == 4
    assert caught_up["dataset_cache_updated"] == 0
    with pytest.raises(qstore.InvalidArgument, match="exactly one source"):
        qstore.update(path)
    with pytest.raises(qstore.ExpressionError):
        qstore.warm(path, ["Mean($close,"])


@pytest.fixture
def kline_table():
    """`qstore_pytest.kline` on the real MariaDB: two symbols of the sample, in the users' spelling."""
    sql("CREATE DATABASE IF NOT EXISTS qstore_pytest")
    sql(
        "DROP TABLE IF EXISTS qstore_pytest.kline; CREATE TABLE qstore_pytest.kline (symbol VARCHAR(16), "
        "trade_date DATE, open DOUBLE, high DOUBLE, low DOUBLE, close DOUBLE, volume DOUBLE, "
        "PRIMARY KEY (symbol, trade_date))"
    )
    rows = []
    for name, symbol in [("SH600000", "600000.SH"), ("SZ000002", "000002.SZ")]:
        with open(SAMPLE / f"{name}.csv") as f:
            for r in csv.DictReader(f):
                vals = [r[k] or "NULL" for k in ["open", "high", "low", "close", "volume"]]
                rows.append(f"('{symbol}','{r['date']}',{','.join(vals)})")
    sql("INSERT INTO qstore_pytest.kline VALUES " + ",".join(rows))
    yield MYSQL.rsplit("/", 1)[0] + "/qstore_pytest"
    sql("DROP DATABASE qstore_pytest")


def test_loader_refreshes_from_mysql_and_backfills(tmp_path, kline_table):
    path = tmp_path / "store"
    qstore.dump_all(path, mysql=kline_table, table="kline", end="2023-10-31")
    assert str(qstore.Store(path).calendar()[-1])[:10] == "2023-10-31"
    loader = qstore.KlineLoader(path, mysql=kline_table, table="kline", ttl=0)
    df = loader.load_kline_data("600000.SH", "2023-10-01", "2024-01-11")
    days = df.index.get_level_values("datetime")
    assert str(days[-1])[:10] == "2024-01-11", "the loader updated the store before answering"
    assert set(df.columns) == {"open", "high", "low", "close", "volume"}
    want = {}
    with open(SAMPLE / "SH600000.csv") as f:
        for r in csv.DictReader(f):
            want[r["date"]] = float(r["close"]) if r["close"] else np.nan
    got = dict(zip((str(d)[:10] for d in days), df["close"].to_numpy()))
    for day, v in got.items():
        np.testing.assert_equal(np.float32(want[day]), v)
    info = loader.get_cache_info()
    assert info["cached_stocks"] == 2 and info["cache_ttl_hours"] == 0 and info["last_day"] == "2024-01-11"
    loader.clear_cache("600000.SH")
    assert "SH600000" not in qstore.Store(path).instruments()
    again = loader.load_kline_data("600000.SH", "2023-10-01", "2024-01-11")
    np.testing.assert_array_equal(again.to_numpy(), df.to_numpy())
    feats = loader.get_features("600000.SH", "2023-12-01", "2023-12-29")
    assert "MA5" in feats.columns and len(feats) > 10
    with pytest.raises(qstore.InvalidArgument):
        qstore.KlineLoader(path, mysql=kline_table, ttl=-1)


def test_loader_without_a_source_serves_the_store(store_path, tmp_path):
    path = tmp_path / "copy"
    shutil.copytree(store_path, path)
    loader = qstore.KlineLoader(path)
    df = loader.load_kline_data("SH600000", "2023-03-01", "2023-03-31")
    np.testing.assert_array_equal(
        df["close"].to_numpy(), qstore.Store(path).read("SH600000", "close", "2023-03-01", "2023-03-31")
    )
    with pytest.raises(qstore.Error, match="does not have this symbol"):
        loader.load_kline_data("SH999999")


def test_date_format_reads_the_sources_dates(tmp_path):
    """``date_format=`` reads CSV dates written another way into the store the ISO dates give, byte for byte;
    a pattern that names no day is a ``qstore.ConfigError`` before anything is written."""
    dated = tmp_path / "dated"
    dated.mkdir()
    for f in SAMPLE.glob("*.csv"):
        lines = f.read_text().splitlines()
        rows = [lines[0]] + [line[:10].replace("-", "") + line[10:] for line in lines[1:]]
        (dated / f.name).write_text("\n".join(rows) + "\n")
    want, got = tmp_path / "want", tmp_path / "got"
    qstore.dump_all(want, csv=SAMPLE)
    summary = qstore.dump_all(got, csv=dated, date_format="%Y%m%d")
    assert summary["symbols_ok"] == 12 and not summary["failed"]
    for a in sorted(p for p in want.rglob("*.bin")):
        assert (got / a.relative_to(want)).read_bytes() == a.read_bytes(), a
    with pytest.raises(qstore.ConfigError, match="does not name a day"):
        qstore.dump_all(tmp_path / "bad", csv=dated, date_format="%Y%m")
    assert not (tmp_path / "bad").exists()
