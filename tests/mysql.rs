//! `qdump all --mysql` against the real MariaDB (never a mock). A server that cannot be reached fails these
//! tests: `tools/test.sh` brings it up.
//!
//! Each test uses its own tables, named after the test and the process, so tests run in parallel.

mod common;

use common::text;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{entries, tree};

use mysql::prelude::Queryable;
use qstore::{Freq, Store, parse_timestamp};

fn url() -> String {
    std::env::var("QSTORE_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

fn conn() -> mysql::PooledConn {
    let pool = mysql::Pool::new(mysql::Opts::from_url(&url()).unwrap()).unwrap_or_else(|e| {
        panic!(
            "MariaDB at {} is not reachable ({e}); run tools/test.sh, which starts it",
            url()
        )
    });
    pool.get_conn().unwrap()
}

fn table(name: &str) -> String {
    format!("t_{name}_{}", std::process::id())
}

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sample");

/// `SH600000` -> `600000.SH`, the spelling K-line tables use.
fn raw(symbol: &str) -> String {
    format!("{}.{}", &symbol[2..], &symbol[..2])
}

/// Creates `name` with a realistic schema and loads the sample fixtures into it (empty cells as NULL).
fn load_sample(c: &mut mysql::PooledConn, name: &str, unique: bool) {
    c.query_drop(format!("DROP TABLE IF EXISTS `{name}`"))
        .unwrap();
    let key = if unique {
        ", UNIQUE KEY uk (symbol, trade_date)"
    } else {
        ""
    };
    c.query_drop(format!(
        "CREATE TABLE `{name}` (id BIGINT AUTO_INCREMENT PRIMARY KEY, symbol VARCHAR(16) NOT NULL,
         trade_date DATE NOT NULL, open DECIMAL(12,2), high DECIMAL(12,2), low DECIMAL(12,2), close DECIMAL(12,2),
         volume BIGINT, amount DOUBLE, vwap DOUBLE, factor DOUBLE, name VARCHAR(32){key})"
    ))
    .unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(SAMPLE)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        let symbol = f.file_stem().unwrap().to_str().unwrap().to_owned();
        let text = std::fs::read_to_string(&f).unwrap();
        let rows: Vec<String> = text
            .lines()
            .skip(1)
            .map(|line| {
                let cells: Vec<String> = line
                    .split(',')
                    .map(|c| {
                        if c.is_empty() {
                            "NULL".into()
                        } else {
                            c.to_owned()
                        }
                    })
                    .collect();
                format!(
                    "('{}','{}',{},'{symbol} Co.')",
                    raw(&symbol),
                    cells[0],
                    cells[1..].join(",")
                )
            })
            .collect();
        c.query_drop(format!(
            "INSERT INTO `{name}` (symbol, trade_date, open, high, low, close, volume, amount, vwap, factor, name) VALUES {}",
            rows.join(",")
        ))
        .unwrap();
    }
}

fn drop_table(c: &mut mysql::PooledConn, name: &str) {
    c.query_drop(format!("DROP TABLE IF EXISTS `{name}`"))
        .unwrap();
}

fn qdump(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qdump"));
    cmd.args(args)
        .env_remove("QSTORE_MYSQL_PASSWORD")
        .env_remove("QSTORE_FAILPOINT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// `qdump <command> --mysql <url> --table <t> --to <to> <extra...>`.
fn from_mysql(command: &str, t: &str, to: &Path, extra: &[&str]) -> Output {
    let u = url();
    let mut args = vec![
        command,
        "--mysql",
        &u,
        "--table",
        t,
        "--to",
        to.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    qdump(&args, &[])
}

fn import_mysql(t: &str, to: &Path, extra: &[&str]) -> Output {
    from_mysql("all", t, to, extra)
}

fn update_mysql(t: &str, to: &Path, extra: &[&str]) -> Output {
    from_mysql("update", t, to, extra)
}

/// A store's files as `tree` gives them, without the update's lock and marker (which a store built by one
/// `qdump all` does not have).
fn store_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    tree(dir)
        .into_iter()
        .filter(|(p, _)| !p.starts_with(".qstore-update"))
        .collect()
}

#[test]
fn mysql_import_equals_sql_and_csv() {
    let mut c = conn();
    let t = table("equal");
    load_sample(&mut c, &t, true);
    let dir = tempfile::tempdir().unwrap();
    let (from_sql, from_csv, one_conn) = (
        dir.path().join("sql"),
        dir.path().join("csv"),
        dir.path().join("one"),
    );

    let out = import_mysql(&t, &from_sql, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["symbols_ok"], 12);
    assert_eq!(
        summary["fields"],
        serde_json::json!([
            "open", "high", "low", "close", "volume", "amount", "vwap", "factor"
        ])
    );
    let out = qdump(
        &["all", "--csv", SAMPLE, "--to", from_csv.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        tree(&from_sql) == tree(&from_csv),
        "MySQL and CSV imports of the same data differ"
    );
    let on_disk: usize = tree(&from_sql).iter().map(|(_, b)| b.len()).sum();
    assert_eq!(
        summary["store_bytes"], on_disk,
        "the summary's store size is not the bytes on disk"
    );
    let out = import_mysql(&t, &one_conn, &["--connections", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        tree(&one_conn) == tree(&from_sql),
        "1 and 2 connections give different stores"
    );

    // Every cell equals a direct query of it (NULL <-> NaN).
    let store = Store::open(&from_sql).unwrap();
    let cal = store.calendar(Freq::DAY).unwrap();
    let fields = [
        "open", "high", "low", "close", "volume", "amount", "vwap", "factor",
    ];
    let rows: Vec<mysql::Row> = c
        .query(format!(
            "SELECT symbol, DATE_FORMAT(trade_date, '%Y-%m-%d'), {} FROM `{t}`",
            fields.join(",")
        ))
        .unwrap();
    assert!(rows.len() > 2500);
    for row in rows {
        let symbol: String = row.get(0).unwrap();
        let date: String = row.get(1).unwrap();
        let i = cal.index_of(parse_timestamp(&date).unwrap()).unwrap();
        let store_symbol = qstore::import::qlib_symbol(&symbol);
        for (k, field) in fields.iter().enumerate() {
            let want: Option<f64> = row.get(k + 2).unwrap();
            let got = store
                .read(&store_symbol, field, Freq::DAY, i..i + 1)
                .unwrap()[0];
            match want {
                None => assert!(got.is_nan(), "{symbol} {date} {field}"),
                Some(v) => assert_eq!(got, v as f32, "{symbol} {date} {field}"),
            }
        }
    }
    // The calendar is the distinct dates; the instruments the first and last date of each symbol.
    let dates: Vec<String> = c
        .query(format!(
            "SELECT DISTINCT DATE_FORMAT(trade_date, '%Y-%m-%d') FROM `{t}` ORDER BY 1"
        ))
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(from_sql.join("calendars/day.txt")).unwrap(),
        dates.join("\n") + "\n"
    );
    let spans: Vec<(String, String, String)> = c
        .query(format!(
            "SELECT symbol, MIN(trade_date), MAX(trade_date) FROM `{t}` GROUP BY symbol"
        ))
        .unwrap();
    let ins = store.instruments("all").unwrap();
    assert_eq!(ins.len(), spans.len());
    for (symbol, first, last) in spans {
        let s = ins.spans(&qstore::import::qlib_symbol(&symbol)).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].start, s[0].end),
            (
                parse_timestamp(&first).unwrap(),
                parse_timestamp(&last).unwrap()
            )
        );
    }
    drop_table(&mut c, &t);
}

#[test]
fn mysql_selection_flags() {
    let mut c = conn();
    let t = table("select");
    load_sample(&mut c, &t, true);
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("s");
    let list = dir.path().join("symbols.txt");
    std::fs::write(&list, "600000.SH\n000002.SZ\n").unwrap();
    let at = format!("@{}", list.display());
    let out = import_mysql(
        &t,
        &to,
        &[
            "--symbols",
            &at,
            "--start-date",
            "2023-03-01",
            "--end-date",
            "2023-03-31",
            "--fields",
            "close,volume",
            "--symbol-format",
            "raw",
            "--market",
            "mine",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        entries(&to.join("features")),
        vec!["000002.sz", "600000.sh"]
    );
    assert_eq!(
        entries(&to.join("features/600000.sh")),
        vec!["close.day.bin", "volume.day.bin"]
    );
    let cal = std::fs::read_to_string(to.join("calendars/day.txt")).unwrap();
    assert!(
        cal.starts_with("2023-03-01\n") && cal.ends_with("2023-03-31\n"),
        "{cal}"
    );
    assert!(to.join("instruments/mine.txt").is_file());

    let out = import_mysql(&t, &dir.path().join("l"), &["--limit", "3"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(entries(&dir.path().join("l/features")).len(), 3);
    drop_table(&mut c, &t);
}

#[test]
fn mysql_bad_input_changes_nothing() {
    let mut c = conn();
    let t = table("bad");
    load_sample(&mut c, &t, true);
    let victim = table("victim");
    c.query_drop(format!("CREATE TABLE `{victim}` (x INT)"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("store");
    let to_s = to.to_str().unwrap().to_owned();
    assert!(
        qdump(&["all", "--csv", SAMPLE, "--to", &to_s], &[])
            .status
            .success()
    );
    let before = tree(&to);
    let u = url();
    let secret = "s3cr3t-pw";
    let with_pw = u.replacen("root@", &format!("root:{secret}@"), 1);
    // (arguments, environment, exit code, text the output must contain)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, i32, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["--mysql", "mysql://root@127.0.0.1:1/test", "--table", &t],
            vec![],
            1,
            "cannot connect",
        ),
        (
            vec!["--mysql", &with_pw, "--table", &t],
            vec![],
            1,
            "Access denied",
        ),
        (
            vec!["--mysql", &u, "--table", &t],
            vec![("QSTORE_MYSQL_PASSWORD", secret)],
            1,
            "Access denied",
        ),
        (
            vec!["--mysql", "postgres://x", "--table", &t],
            vec![],
            1,
            "not a valid MySQL URL",
        ),
        (
            vec!["--mysql", &u, "--table", "no_such_table"],
            vec![],
            1,
            "table \"no_such_table\" not found",
        ),
        (
            vec!["--mysql", &u, "--table", &t, "--date-column", "day"],
            vec![],
            1,
            "no column \"day\"",
        ),
        (
            vec!["--mysql", &u, "--table", &t, "--fields", "close,name"],
            vec![],
            1,
            "has type varchar, which is not numeric",
        ),
        (
            vec!["--mysql", &u, "--table", "x; DROP TABLE y"],
            vec![],
            1,
            "is not a plain identifier",
        ),
        (
            vec![
                "--mysql",
                &u,
                "--table",
                &t,
                "--fields",
                "close`; DROP TABLE victim; --",
            ],
            vec![],
            1,
            "is not a plain identifier",
        ),
        (
            vec!["--mysql", &u, "--table", &t, "--start-date", "2030-01-01"],
            vec![],
            4,
            "nothing was imported",
        ),
        (
            vec![
                "--mysql",
                &u,
                "--table",
                &t,
                "--start-date",
                "2023-05-01",
                "--end-date",
                "2023-04-01",
            ],
            vec![],
            4,
            "nothing was imported",
        ),
        (
            vec!["--mysql", &u, "--table", &t, "--symbols", "999999.SH"],
            vec![],
            4,
            "no rows",
        ),
        // A date that does not parse is bad usage (exit 2), named by the flag's spelling.
        (
            vec!["--mysql", &u, "--table", &t, "--start-date", "someday"],
            vec![],
            2,
            "invalid value 'someday' for '--start <DATE>'",
        ),
    ];
    for (args, env, code, want) in cases {
        let mut full = vec!["all"];
        full.extend(args.iter().copied());
        full.extend(["--to", &to_s, "--overwrite"]);
        let out = qdump(&full, &env);
        let msg = text(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {msg}");
        assert!(msg.contains(want), "{args:?}: expected {want:?} in: {msg}");
        assert!(
            !msg.contains(secret),
            "{args:?}: the password leaked: {msg}"
        );
        assert!(tree(&to) == before, "{args:?} changed the existing store");
        assert_eq!(
            entries(dir.path()),
            vec!["store"],
            "{args:?} left files behind"
        );
    }
    let still: Vec<String> = c.query(format!("SHOW TABLES LIKE '{victim}'")).unwrap();
    assert_eq!(still.len(), 1, "the victim table was dropped");
    drop_table(&mut c, &victim);
    drop_table(&mut c, &t);
}

#[test]
fn failing_symbols_are_reported_and_skipped() {
    let mut c = conn();
    let t = table("failing");
    load_sample(&mut c, &t, false);
    c.query_drop(format!(
        "INSERT INTO `{t}` (symbol, trade_date, close) VALUES
         ('009999.SZ', '2023-01-03', NULL), ('009999.SZ', '2023-01-04', NULL),
         ('../../etc', '2023-01-03', 1.0),
         ('600000.SH', '2023-01-03', 99.0)"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("store");
    let out = import_mysql(&t, &to, &["--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["symbols_ok"], 11);
    let failed: Vec<(String, String)> = s["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["symbol"].as_str().unwrap().to_owned(),
                f["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert!(
        failed[0].0 == "../../etc" && failed[0].1.contains("invalid instrument name"),
        "{failed:?}"
    );
    assert!(
        failed[1].0 == "009999.SZ"
            && failed[1]
                .1
                .contains("every value of every field is missing"),
        "{failed:?}"
    );
    assert!(
        failed[2].0 == "600000.SH" && failed[2].1.contains("two rows dated 2023-01-03"),
        "{failed:?}"
    );
    assert!(!dir.path().join("etc").exists() && !to.join("features/..").join("etc").exists());
    assert!(!to.join("features/sh600000").exists());

    // --on-duplicate last keeps the later row (by the table's auto-increment id).
    let out = import_mysql(
        &t,
        &to,
        &[
            "--overwrite",
            "--on-duplicate",
            "last",
            "--symbols",
            "600000.SH",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let store = Store::open(&to).unwrap();
    assert_eq!(
        store.read("SH600000", "close", Freq::DAY, 0..1).unwrap()[0],
        99.0
    );
    let out = import_mysql(
        &t,
        &to,
        &[
            "--overwrite",
            "--on-duplicate",
            "first",
            "--symbols",
            "600000.SH",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let first_close: f64 = c
        .query_first(format!("SELECT close FROM `{t}` WHERE symbol='600000.SH' AND trade_date='2023-01-03' ORDER BY id LIMIT 1"))
        .unwrap()
        .unwrap();
    assert_eq!(
        Store::open(&to)
            .unwrap()
            .read("SH600000", "close", Freq::DAY, 0..1)
            .unwrap()[0],
        first_close as f32
    );
    drop_table(&mut c, &t);
}

#[test]
fn killed_import_leaves_the_old_store_and_a_rerun_succeeds() {
    let mut c = conn();
    let t = table("kill");
    load_sample(&mut c, &t, true);
    let dir = tempfile::tempdir().unwrap();
    let (to, want) = (dir.path().join("store"), dir.path().join("want"));
    let one = format!("{SAMPLE}/SH600000.csv");
    assert!(
        qdump(&["all", "--csv", &one, "--to", to.to_str().unwrap()], &[])
            .status
            .success()
    );
    let old = tree(&to);
    assert!(import_mysql(&t, &want, &[]).status.success());
    let new = tree(&want);
    std::fs::remove_dir_all(&want).unwrap();
    let u = url();
    for point in [
        "import:after-calendar",
        "import:symbol:1",
        "import:symbol:7",
        "import:before-publish",
        "import:after-exchange",
    ] {
        let args = [
            "all",
            "--mysql",
            &u,
            "--table",
            &t,
            "--to",
            to.to_str().unwrap(),
            "--overwrite",
        ];
        let out = qdump(&args, &[("QSTORE_FAILPOINT", point)]);
        assert!(
            !out.status.success(),
            "{point}: the failpoint did not fire: {}",
            text(&out)
        );
        assert!(text(&out).contains("failpoint"), "{point}: {}", text(&out));
        let now = tree(&to);
        if point == "import:after-exchange" {
            assert!(
                now == new,
                "{point}: the exchanged store is not the complete new one"
            );
        } else {
            assert!(now == old, "{point}: the old store changed");
        }
        let out = qdump(&args, &[]);
        assert_eq!(out.status.code(), Some(0), "{point}: rerun: {}", text(&out));
        assert!(
            tree(&to) == new,
            "{point}: the rerun differs from a clean import"
        );
        assert_eq!(
            entries(dir.path()),
            vec!["store"],
            "{point}: staging left behind"
        );
        // back to the old store for the next point
        std::fs::remove_dir_all(&to).unwrap();
        assert!(
            qdump(&["all", "--csv", &one, "--to", to.to_str().unwrap()], &[])
                .status
                .success()
        );
    }
    drop_table(&mut c, &t);
}

#[test]
fn calendar_table_gives_the_calendar() {
    let mut c = conn();
    let t = table("caltab");
    let cal = table("tradedays");
    load_sample(&mut c, &t, true);
    c.query_drop(format!("CREATE TABLE `{cal}` (cal_date DATE PRIMARY KEY)"))
        .unwrap();
    c.query_drop(format!(
        "INSERT INTO `{cal}` SELECT DISTINCT trade_date FROM `{t}`"
    ))
    .unwrap();
    // future trading days past the data
    c.query_drop(format!(
        "INSERT INTO `{cal}` VALUES ('2030-01-02'), ('2030-01-03')"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (plain, with_cal) = (dir.path().join("plain"), dir.path().join("cal"));
    assert!(import_mysql(&t, &plain, &[]).status.success());
    let out = import_mysql(
        &t,
        &with_cal,
        &["--calendar-table", &cal, "--calendar-column", "cal_date"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        tree(&plain) == tree(&with_cal),
        "the trading-day table gave a different store"
    );

    // a trading day missing from the table: symbols with rows on it fail, naming the date
    c.query_drop(format!("DELETE FROM `{cal}` WHERE cal_date = '2023-03-01'"))
        .unwrap();
    let out = import_mysql(
        &t,
        &with_cal,
        &[
            "--overwrite",
            "--calendar-table",
            &cal,
            "--calendar-column",
            "cal_date",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("row dated 2023-03-01 00:00:00 is not in the trading-day table"),
        "{}",
        text(&out)
    );
    let out = import_mysql(
        &t,
        &with_cal,
        &["--overwrite", "--calendar-table", "no_such"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    drop_table(&mut c, &t);
    drop_table(&mut c, &cal);
}

/// `qdump all --mysql` to a date plus `qdump update --mysql` steps equals one `qdump all --mysql`, byte for
/// byte; and a `KlineLoader` over the same table brings a store forward and backfills a cleared symbol.
#[test]
fn mysql_updates_and_loader() {
    let mut c = conn();
    let t = table("update");
    load_sample(&mut c, &t, true);
    let dir = tempfile::tempdir().unwrap();
    let (full, inc) = (dir.path().join("full"), dir.path().join("inc"));
    let out = import_mysql(&t, &full, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let out = import_mysql(&t, &inc, &["--end-date", "2023-05-19"]);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
    let u = url();
    for end in ["2023-08-24", "2023-08-25", "2024-01-11"] {
        let out = update_mysql(&t, &inc, &["--end-date", end]);
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_eq!(store_tree(&inc), store_tree(&full));

    // The loader: a store a month behind is brought forward by the first load, and a cleared symbol returns.
    let behind = dir.path().join("behind");
    let out = import_mysql(&t, &behind, &["--end-date", "2023-12-01"]);
    assert!(out.status.success(), "{}", text(&out));
    let conn = qstore::import::mysql::Connection::parse(&u, None).unwrap();
    let opts = qstore::import::mysql::MysqlOptions {
        table: t.clone(),
        ..Default::default()
    };
    let loader = qstore::loader::KlineLoader::new(
        &behind,
        Some(qstore::loader::mysql_source(conn, opts)),
        std::time::Duration::from_secs(3600),
    );
    let f = loader.load("SH600000", None, None).unwrap();
    assert_eq!(
        f.datetime(f.len() - 1),
        parse_timestamp("2024-01-11").unwrap()
    );
    loader.clear("SZ000002").unwrap();
    let f = loader.load("SZ000002", None, None).unwrap();
    let s = Store::open(&full).unwrap();
    let want = s.read("SZ000002", "close", Freq::DAY, 0..250).unwrap();
    let col = f.columns().iter().position(|c| c == "close").unwrap();
    assert_eq!(f.len(), want.len());
    assert!((0..f.len()).all(|r| f.value(r, col).to_bits() == want[r].to_bits()));
    drop_table(&mut c, &t);
}

/// A table stored day by day (every symbol's rows spread over the whole scan), read with a hold of a few
/// kilobytes so that rows go to the spill file and back, gives the store of the same rows stored symbol by
/// symbol, and of the sorted scan that `--limit` uses; duplicate rows keep their insertion order for
/// `--on-duplicate`.
#[test]
fn a_table_stored_day_by_day_imports_the_same_in_bounded_memory() {
    let mut c = conn();
    let (t, by_day) = (table("bysym"), table("byday"));
    load_sample(&mut c, &t, false);
    drop_table(&mut c, &by_day);
    c.query_drop(format!("CREATE TABLE `{by_day}` LIKE `{t}`"))
        .unwrap();
    c.query_drop(format!(
        "INSERT INTO `{by_day}` (symbol, trade_date, open, high, low, close, volume, amount, vwap, factor, name)
         SELECT symbol, trade_date, open, high, low, close, volume, amount, vwap, factor, name FROM `{t}`
         ORDER BY trade_date, symbol DESC"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (want, sorted, got) = (
        dir.path().join("want"),
        dir.path().join("sorted"),
        dir.path().join("got"),
    );
    assert!(import_mysql(&t, &want, &[]).status.success());
    assert!(
        import_mysql(&by_day, &sorted, &["--limit", "1000"])
            .status
            .success()
    );
    let import = |table: &str, to: &Path, hold_bytes: usize| {
        let conn = qstore::import::mysql::Connection::parse(&url(), None).unwrap();
        let opts = qstore::import::mysql::MysqlOptions {
            table: table.into(),
            hold_bytes,
            ..Default::default()
        };
        let src = qstore::import::MysqlSource::open(conn, opts).unwrap();
        qstore::import::import(&src, to, &Default::default(), &Default::default(), &|_| {}).unwrap()
    };
    let s = import(&by_day, &got, 4096);
    assert_eq!((s.symbols_ok, s.failed.len()), (12, 0), "{:?}", s.failed);
    assert!(
        tree(&got) == tree(&want),
        "day by day, spilled: a different store"
    );
    assert!(
        tree(&sorted) == tree(&want),
        "the sorted scan: a different store"
    );

    // A second row for one symbol and day, inserted last: `first` keeps the old value, `last` the new one.
    c.query_drop(format!(
        "INSERT INTO `{by_day}` (symbol, trade_date, close) VALUES ('600000.SH', '2023-01-03', 99.0)"
    ))
    .unwrap();
    for (policy, want_close) in [("first", false), ("last", true)] {
        let to = dir.path().join(policy);
        let out = import_mysql(&by_day, &to, &["--on-duplicate", policy]);
        assert!(out.status.success(), "{}", text(&out));
        let v = Store::open(&to)
            .unwrap()
            .read("SH600000", "close", Freq::DAY, 0..1)
            .unwrap()[0];
        assert_eq!(v == 99.0, want_close, "{policy}: {v}");
    }
    drop_table(&mut c, &t);
    drop_table(&mut c, &by_day);
}

#[test]
fn null_symbols_and_missing_requested_symbols_are_reported() {
    let mut c = conn();
    let t = table("nullsym");
    load_sample(&mut c, &t, false);
    c.query_drop(format!("ALTER TABLE `{t}` MODIFY symbol VARCHAR(16) NULL"))
        .unwrap();
    c.query_drop(format!(
        "INSERT INTO `{t}` (symbol, trade_date, close) VALUES (NULL, '2023-01-03', 1), (NULL, '2023-01-04', 2)"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = import_mysql(&t, &dir.path().join("a"), &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["symbols_ok"], 12, "{v}");
    assert_eq!(v["left_out"][0]["rows"], 2, "{v}");
    assert!(
        v["left_out"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("is NULL"),
        "{v}"
    );
    let out = import_mysql(
        &t,
        &dir.path().join("b"),
        &["--symbols", "600000.SH,999999.SH"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("999999.SH: not in the source"),
        "{}",
        text(&out)
    );
    drop_table(&mut c, &t);
}

/// Turns MariaDB's general query log on (to a table) for as long as it lives, and back to what it was.
struct GeneralLog {
    was: (i64, String),
}

impl GeneralLog {
    fn on(c: &mut mysql::PooledConn) -> GeneralLog {
        let was: (i64, String) = c
            .query_first("SELECT @@GLOBAL.general_log + 0, @@GLOBAL.log_output")
            .unwrap()
            .unwrap();
        c.query_drop("SET GLOBAL log_output = 'TABLE', general_log = 1")
            .unwrap();
        GeneralLog { was }
    }

    /// Statements logged so far that read from `table`.
    fn reads_of(c: &mut mysql::PooledConn, table: &str) -> Vec<String> {
        let statements: Vec<Vec<u8>> = c
            .exec(
                "SELECT argument FROM mysql.general_log WHERE command_type IN ('Query', 'Execute') \
                 AND argument LIKE ? AND argument NOT LIKE '%general_log%'",
                (format!("%FROM `{table}`%"),),
            )
            .unwrap();
        statements
            .into_iter()
            .map(|s| String::from_utf8_lossy(&s).into_owned())
            .collect()
    }
}

impl Drop for GeneralLog {
    fn drop(&mut self) {
        // Back as it was (a log left on would record every later statement of the server).
        let mut c = conn();
        c.exec_drop(
            "SET GLOBAL general_log = ?, log_output = ?",
            (self.was.0, &self.was.1),
        )
        .unwrap();
        if self.was.0 == 0 {
            c.query_drop("TRUNCATE TABLE mysql.general_log").unwrap();
        }
    }
}

/// How `qdump update --mysql` reads a whole table's new rows, on three schemas: with `PRIMARY KEY (symbol,
/// trade_date)` (the most common, no index on the date) it never scans the table: the general query log shows
/// the symbols read from the index and then each symbol's range of it (EXPLAIN: no full scan); with an index
/// on the date, one statement for the server to run on it (on a table this small it scans the table
/// instead); with neither, one scan of the table (two connections on halves of its id). No listing of symbols, dates or counts first. Every
/// result equals a full import byte for byte, also when the new rows pass the hold and go
/// through the spill file.
#[test]
fn an_update_reads_only_the_new_rows_once() {
    let mut c = conn();
    let sample = table("once_src");
    load_sample(&mut c, &sample, true);
    let columns = "symbol VARCHAR(16) NOT NULL, trade_date DATE NOT NULL, open DECIMAL(12,2), \
                   high DECIMAL(12,2), low DECIMAL(12,2), close DECIMAL(12,2), volume BIGINT, amount DOUBLE, \
                   vwap DOUBLE, factor DOUBLE, name VARCHAR(32)";
    let schemas = [
        ("once_pk", "PRIMARY KEY (symbol, trade_date)"),
        (
            "once_date",
            "PRIMARY KEY (symbol, trade_date), KEY by_date (trade_date)",
        ),
        ("once_none", "id BIGINT AUTO_INCREMENT PRIMARY KEY"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let u = url();
    for (name, keys) in schemas {
        let t = table(name);
        drop_table(&mut c, &t);
        c.query_drop(format!("CREATE TABLE `{t}` ({columns}, {keys})"))
            .unwrap();
        c.query_drop(format!(
            "INSERT INTO `{t}` (symbol, trade_date, open, high, low, close, volume, amount, vwap, factor, name)
             SELECT symbol, trade_date, open, high, low, close, volume, amount, vwap, factor, name FROM `{sample}`"
        ))
        .unwrap();
        // Statistics now, not whenever the server gets to them: the plans below depend on them.
        c.query_drop(format!("ANALYZE TABLE `{t}`")).unwrap();
        let (full, inc, spilled) = (
            dir.path().join(format!("{name}-full")),
            dir.path().join(format!("{name}-inc")),
            dir.path().join(format!("{name}-spilled")),
        );
        assert!(import_mysql(&t, &full, &[]).status.success());
        for to in [&inc, &spilled] {
            let out = import_mysql(&t, to, &["--end-date", "2023-08-24"]);
            assert!(out.status.success(), "{}", text(&out));
        }
        let log = GeneralLog::on(&mut c);
        let before = GeneralLog::reads_of(&mut c, &t).len();
        let out = update_mysql(&t, &inc, &["--json", "-v"]);
        let reads = GeneralLog::reads_of(&mut c, &t).split_off(before);
        // -v says how the rows were read.
        let said = String::from_utf8_lossy(&out.stderr);
        let how = match name {
            "once_pk" => "through its (symbol, trade_date) key: 12 symbols, 1 statements",
            _ => "learning the symbols and days from the rows",
        };
        assert!(said.contains(how), "{name}: {said}");
        drop(log);
        assert!(out.status.success(), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["days_added"], 93, "{name}: {v}");
        // How the server runs each statement: (type, Extra) of its plan.
        let plans: Vec<(String, String)> = reads
            .iter()
            .map(|sql| {
                let row: mysql::Row = c.query_first(format!("EXPLAIN {sql}")).unwrap().unwrap();
                let get = |k: &str| -> String {
                    row.get_opt::<Option<String>, _>(k)
                        .and_then(|v| v.ok())
                        .flatten()
                        .unwrap_or_default()
                };
                (get("type"), get("Extra"))
            })
            .collect();
        match name {
            "once_pk" => {
                assert!(reads.len() >= 2, "{name}: {reads:#?}");
                assert!(
                    reads[0].starts_with("SELECT DISTINCT `symbol`"),
                    "{reads:#?}"
                );
                assert!(
                    plans[0].1.contains("Using index for group-by"),
                    "{name}: {plans:?}"
                );
                assert!(
                    reads[1..].iter().all(|r| r.contains("`symbol` IN (")),
                    "{reads:#?}"
                );
                assert!(
                    plans.iter().all(|p| p.0 == "range"),
                    "{name}: no statement scans the table: {plans:?}"
                );
            }
            "once_date" => {
                // One statement the server may run on the date index (on a table this small it scans it).
                assert_eq!(reads.len(), 1, "{name}: {reads:#?}");
                assert!(reads[0].contains("`trade_date` >="), "{reads:#?}");
            }
            _ => {
                // The id's bounds, then one scan per connection over disjoint ranges of it.
                assert!(
                    reads[0].starts_with("SELECT MIN(`id`), MAX(`id`)"),
                    "{reads:#?}"
                );
                assert!(
                    reads[1..]
                        .iter()
                        .all(|r| r.contains("`trade_date` >=") && r.contains("`id` ")),
                    "{reads:#?}"
                );
                assert_eq!(reads.len(), 3, "{name}: {reads:#?}");
            }
        }

        // The library with a hold of a few kilobytes: the new rows go to the spill file and back.
        let store = Store::open(&spilled).unwrap();
        let lock = qstore::import::update::UpdateLock::acquire(&spilled, false).unwrap();
        let start = qstore::import::update::first_new_row(&store, Freq::DAY, None, &lock).unwrap();
        let src = qstore::import::MysqlSource::open(
            qstore::import::mysql::Connection::parse(&u, None).unwrap(),
            qstore::import::mysql::MysqlOptions {
                table: t.clone(),
                start,
                hold_bytes: 4096,
                ..Default::default()
            },
        )
        .unwrap();
        use qstore::import::Source;
        assert_eq!(src.symbol_count(), None);
        let s = qstore::import::update::update_locked(
            &src,
            &spilled,
            &Default::default(),
            &lock,
            &|_| {},
        )
        .unwrap();
        assert_eq!((s.days_added, s.failed.len()), (93, 0), "{name}");
        drop(lock);
        assert!(store_tree(&inc) == store_tree(&full), "{name}");
        assert!(store_tree(&spilled) == store_tree(&full), "{name}");
        drop_table(&mut c, &t);
    }
    drop_table(&mut c, &sample);
}

/// A VARCHAR date column written `20230103` (sorts as text: the server selects an update's range) or
/// `03/01/2023` (does not: rows are kept by date as they are read) imports with `--date-format` to the store of
/// the DATE column, and `qdump all` to a day plus `qdump update` equals the whole import; without the flag the
/// failure shows the text as it is (`"20230103"`, not a driver's debug form) and names the flag.
#[test]
fn text_dates_in_the_source_format() {
    let mut c = conn();
    let sample = table("textdate_src");
    load_sample(&mut c, &sample, true);
    let dir = tempfile::tempdir().unwrap();
    let want = dir.path().join("want");
    assert!(import_mysql(&sample, &want, &[]).status.success());
    for (name, pattern, sql) in [
        ("td_ymd", "%Y%m%d", "DATE_FORMAT(trade_date, '%Y%m%d')"),
        ("td_dmy", "%d/%m/%Y", "DATE_FORMAT(trade_date, '%d/%m/%Y')"),
    ] {
        let t = table(name);
        drop_table(&mut c, &t);
        c.query_drop(format!(
            "CREATE TABLE `{t}` (symbol VARCHAR(16) NOT NULL, trade_date VARCHAR(10) NOT NULL, open DECIMAL(12,2),
             high DECIMAL(12,2), low DECIMAL(12,2), close DECIMAL(12,2), volume BIGINT, amount DOUBLE,
             vwap DOUBLE, factor DOUBLE, name VARCHAR(32), PRIMARY KEY (symbol, trade_date))"
        ))
        .unwrap();
        c.query_drop(format!(
            "INSERT INTO `{t}` SELECT symbol, {sql}, open, high, low, close, volume, amount, vwap, factor, name
             FROM `{sample}`"
        ))
        .unwrap();
        let (full, inc) = (
            dir.path().join(format!("{name}-full")),
            dir.path().join(format!("{name}-inc")),
        );
        let out = import_mysql(&t, &full, &["--date-format", pattern]);
        assert!(out.status.success(), "{name}: {}", text(&out));
        assert!(tree(&full) == tree(&want), "{name}");
        let out = import_mysql(
            &t,
            &inc,
            &["--date-format", pattern, "--end-date", "2023-08-24"],
        );
        assert!(out.status.success(), "{name}: {}", text(&out));
        let out = update_mysql(&t, &inc, &["--date-format", pattern, "--json"]);
        assert!(out.status.success(), "{name}: {}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        // No stored day comes back (not even the last, which `>= '20230824'` selects): kept by date here.
        assert_eq!(
            (
                v["days_added"].as_u64(),
                v["corrections"].as_u64(),
                v["unchanged_rows"].as_u64()
            ),
            (Some(93), Some(0), Some(0)),
            "{name}: {v}"
        );
        assert!(store_tree(&inc) == store_tree(&full), "{name}");
        if name == "td_ymd" {
            let out = import_mysql(&t, &dir.path().join("no-format"), &[]);
            assert!(!out.status.success());
            let said = text(&out);
            assert!(
                said.contains("a row has date \"20230103\" in column trade_date")
                    && said.contains("--date-format")
                    && !said.contains("Bytes("),
                "{said}"
            );
        }
        drop_table(&mut c, &t);
    }
    drop_table(&mut c, &sample);
}

/// An integer `id` that is not auto-increment (ids the loading job assigns) is not imported as a field: the
/// store equals the one of the same rows with an auto-increment id, and the summary says which column was left
/// out; `--exclude-fields` leaves out more.
#[test]
fn an_id_column_is_not_a_field() {
    let mut c = conn();
    let (sample, t) = (table("plainid_src"), table("plainid"));
    load_sample(&mut c, &sample, true);
    drop_table(&mut c, &t);
    c.query_drop(format!(
        "CREATE TABLE `{t}` (id BIGINT NOT NULL PRIMARY KEY, symbol VARCHAR(16) NOT NULL, trade_date DATE NOT NULL,
         open DECIMAL(12,2), high DECIMAL(12,2), low DECIMAL(12,2), close DECIMAL(12,2), volume BIGINT,
         amount DOUBLE, vwap DOUBLE, factor DOUBLE, name VARCHAR(32))"
    ))
    .unwrap();
    c.query_drop(format!("INSERT INTO `{t}` SELECT * FROM `{sample}`"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (want, got) = (dir.path().join("want"), dir.path().join("got"));
    assert!(import_mysql(&sample, &want, &[]).status.success());
    let out = import_mysql(&t, &got, &["--json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(tree(&got) == tree(&want));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["columns_left_out"][0]["column"], "id", "{v}");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    assert!(
        import_mysql(&t, &a, &["--exclude-fields", "vwap,amount"])
            .status
            .success()
    );
    let fields = ["--fields", "open,high,low,close,volume,factor"];
    assert!(import_mysql(&t, &b, &fields).status.success());
    assert!(tree(&a) == tree(&b));
    drop_table(&mut c, &t);
    drop_table(&mut c, &sample);
}
