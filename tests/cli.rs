//! The `qdump` binary, run for real in temp directories.

mod common;

use common::text;
use qstore::store::settings::Compat;
use std::path::Path;
use std::process::{Command, Output};

use common::{entries, tree};

fn qdump(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qdump"))
        .args(args)
        .output()
        .unwrap()
}

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sample");

/// `qdump all --csv <input> --to <to> <extra...>`.
fn import_csv(input: &str, to: &str, extra: &[&str]) -> Output {
    let mut args = vec!["all", "--csv", input, "--to", to];
    args.extend_from_slice(extra);
    qdump(&args)
}

/// A temp directory holding `store`, imported from the sample fixtures.
fn sample_store() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("store");
    let out = import_csv(SAMPLE, to.to_str().unwrap(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    (dir, to)
}

#[test]
fn all_then_show() {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("store");
    let out = import_csv(SAMPLE, to.to_str().unwrap(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("12 of 12 symbols imported, 0 failed"),
        "{}",
        text(&out)
    );
    assert_eq!(
        entries(dir.path()),
        vec!["store"],
        "no staging directory is left"
    );
    let cal = std::fs::read_to_string(to.join("calendars/day.txt")).unwrap();
    assert_eq!(cal.lines().count(), 250);
    assert!(cal.starts_with("2023-01-03\n2023-01-04\n"));

    let out = qdump(&[
        "show",
        to.to_str().unwrap(),
        "--instruments",
        "SH600000",
        "--fields",
        "close,volume",
        "--start",
        "2023-01-03",
        "--end",
        "2023-01-05",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let csv = std::fs::read_to_string(Path::new(SAMPLE).join("SH600000.csv")).unwrap();
    let row = csv.lines().nth(1).unwrap().split(',').collect::<Vec<_>>();
    let shown = String::from_utf8(out.stdout).unwrap();
    let first = shown.lines().nth(1).unwrap();
    assert_eq!(
        first,
        format!(
            "2023-01-03\tSH600000\t{}\t{}",
            row[4].parse::<f32>().unwrap(),
            row[5].parse::<f32>().unwrap()
        )
    );
    assert_eq!(shown.lines().count(), 4, "{shown}");
}

#[test]
fn existing_store_needs_overwrite_and_is_replaced_atomically() {
    let (dir, to) = sample_store();
    let to_s = to.to_str().unwrap();
    let before = tree(&to);

    let out = import_csv(SAMPLE, to_s, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("pass --overwrite"), "{}", text(&out));
    assert_eq!(tree(&to), before, "the refused import changed the store");

    let one = format!("{SAMPLE}/SH600000.csv");
    let out = import_csv(&one, to_s, &["--overwrite"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_dir(to.join("features")).unwrap().count(), 1);
    assert_eq!(
        entries(dir.path()),
        vec!["store"],
        "the old store was not cleaned up"
    );
}

#[test]
fn bad_input_changes_nothing() {
    let (dir, to) = sample_store();
    let to_s = to.to_str().unwrap();
    let before = tree(&to);
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    let bad_s = bad.to_str().unwrap();
    // (content of bad/SH600000.csv, or None for a missing input; exit code; texts the output must contain)
    let cases: [(Option<&str>, i32, &[&str]); 6] = [
        (
            Some("date,close\n2020-01-02,1.5\n2020-01-03,abc\n"),
            4,
            &["SH600000.csv:3", "\"close\"", "\"abc\""],
        ),
        (
            Some("date,close\n2020-01-02,1.5\n2020-01-02,1.6\n"),
            4,
            &["two rows dated 2020-01-02"],
        ),
        (
            Some("day,close\n2020-01-02,1.5\n"),
            1,
            &["no date column \"date\" (columns: day, close)"],
        ),
        (
            Some("date,Close,close\n2020-01-02,1.5,1.5\n"),
            1,
            &["two columns are named \"close\""],
        ),
        (
            // The symbol fails (its rows cannot be stored), so nothing is imported: exit 4.
            Some("date,close\n2020-01-02 09:30:00,1.5\n2020-01-02 10:00:00,1.6\n"),
            4,
            &["SH600000.csv: the row dated 2020-01-02 09:30:00 has a time of day"],
        ),
        (None, 1, &["/nonexistent/x"]),
    ];
    for (content, code, wants) in cases {
        let input = match content {
            Some(c) => {
                std::fs::write(bad.join("SH600000.csv"), c).unwrap();
                bad_s
            }
            None => "/nonexistent/x",
        };
        let out = import_csv(input, to_s, &["--overwrite"]);
        let msg = text(&out);
        assert_eq!(out.status.code(), Some(code), "{content:?}: {msg}");
        for want in wants {
            assert!(
                msg.contains(want),
                "{content:?}: expected {want:?} in {msg}"
            );
        }
        assert_eq!(
            tree(&to),
            before,
            "{content:?}: a failed import touched the existing store"
        );
        assert_eq!(
            entries(dir.path()),
            vec!["bad", "store"],
            "{content:?}: a failed import left files behind"
        );
    }
}

#[test]
fn refuses_to_overwrite_a_directory_that_is_not_a_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious.txt"), "keep me").unwrap();
    let out = import_csv(SAMPLE, dir.path().to_str().unwrap(), &["--overwrite"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("not a store"), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("precious.txt")).unwrap(),
        "keep me"
    );
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("s");
    let out = import_csv(SAMPLE, to.to_str().unwrap(), &["--freq", "hourly"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("unknown frequency \"hourly\""),
        "{}",
        text(&out)
    );
    assert!(!to.exists());
    let out = qdump(&["show", dir.path().join("missing").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("is not a qstore/qlib store"),
        "{}",
        text(&out)
    );
    // `update --help` shows only what update takes; what only `all` takes is a usage error there.
    let help = text(&qdump(&["update", "--help"]));
    let listed = |flag: &str| {
        help.lines().map(str::trim).any(|l| {
            l == flag || l.starts_with(&format!("{flag} ")) || l.starts_with(&format!("{flag},"))
        })
    };
    for flag in ["--overwrite", "--keep-unknown", "--warm", "--start-date"] {
        assert!(!listed(flag), "{flag} in update --help");
        let out = qdump(&["update", "--csv", SAMPLE, "--to", "x", flag]);
        assert_eq!(out.status.code(), Some(2), "{flag}: {}", text(&out));
    }
    for flag in ["--since", "--update-caches", "--wait", "--max-date"] {
        assert!(listed(flag), "{flag} missing from update --help");
    }
}

#[test]
fn minute_bars_import_with_times() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(
        input.join("600000.SH.csv"),
        "date,close\n2020-01-02 09:31:00,1.5\n2020-01-02 09:33:00,1.7\n",
    )
    .unwrap();
    std::fs::write(
        input.join("000001.SZ.csv"),
        "date,close\n2020-01-02 09:32:00,9\n",
    )
    .unwrap();
    let to = dir.path().join("store");
    let out = import_csv(
        input.to_str().unwrap(),
        to.to_str().unwrap(),
        &["--freq", "1min"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(to.join("calendars/1min.txt")).unwrap(),
        "2020-01-02 09:31:00\n2020-01-02 09:32:00\n2020-01-02 09:33:00\n"
    );
    assert_eq!(
        std::fs::read_to_string(to.join("instruments/all.txt")).unwrap(),
        "SH600000\t2020-01-02 09:31:00\t2020-01-02 09:33:00\nSZ000001\t2020-01-02 09:32:00\t2020-01-02 09:32:00\n"
    );
    let bin = std::fs::read(to.join("features/sh600000/close.1min.bin")).unwrap();
    let want: Vec<u8> = [0f32, 1.5, f32::NAN, 1.7]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(bin, want);
}

#[test]
fn one_csv_with_a_symbol_column_equals_per_symbol_files() {
    let dir = tempfile::tempdir().unwrap();
    // Combine the sample into one file with a symbol column, rows shuffled across symbols.
    let mut rows = Vec::new();
    let mut header = String::new();
    for e in std::fs::read_dir(SAMPLE).unwrap() {
        let p = e.unwrap().path();
        let symbol = p.file_stem().unwrap().to_str().unwrap().to_owned();
        let text = std::fs::read_to_string(&p).unwrap();
        let mut lines = text.lines();
        header = format!("symbol,{}", lines.next().unwrap());
        rows.extend(
            lines.map(|l| format!("{},{l}", &format!("{}.{}", &symbol[2..], &symbol[..2]))),
        );
    }
    rows.sort_by_key(|r| r.split(',').nth(1).unwrap().to_owned()); // by date: symbols interleave
    let combined = dir.path().join("all.csv");
    std::fs::write(&combined, format!("{header}\n{}\n", rows.join("\n"))).unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let out = import_csv(combined.to_str().unwrap(), a.to_str().unwrap(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        import_csv(SAMPLE, b.to_str().unwrap(), &[])
            .status
            .success()
    );
    assert!(
        tree(&a) == tree(&b),
        "the combined file and the per-symbol files give different stores"
    );
    // --symbols and --limit apply to a combined file too
    let c = dir.path().join("c");
    let out = import_csv(
        combined.to_str().unwrap(),
        c.to_str().unwrap(),
        &["--symbols", "SH600000, 000002.SZ"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(entries(&c.join("features")), vec!["sh600000", "sz000002"]);
}

#[test]
fn non_ascii_field_names_import() {
    let dir = tempfile::tempdir().unwrap();
    let per_symbol = dir.path().join("in");
    std::fs::create_dir(&per_symbol).unwrap();
    std::fs::write(
        per_symbol.join("SH600000.csv"),
        "date,Änderung\n2020-01-02,1.5\n",
    )
    .unwrap();
    let combined = dir.path().join("all.csv");
    std::fs::write(
        &combined,
        "symbol,date,Änderung\n600000.SH,2020-01-02,1.5\n",
    )
    .unwrap();
    for (input, to) in [(&per_symbol, "a"), (&combined, "b")] {
        let to = dir.path().join(to);
        let out = import_csv(input.to_str().unwrap(), to.to_str().unwrap(), &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let bin = std::fs::read(to.join("features/sh600000/änderung.day.bin")).unwrap();
        assert_eq!(
            bin,
            [0f32, 1.5]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>()
        );
    }
}

#[test]
fn a_target_filled_during_the_import_is_not_overwritten() {
    // Two imports race into the same empty directory: the one that publishes second must fail cleanly,
    // leaving the winner's store and no staging directory.
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("store");
    qstore::Store::create(dir.path().join("other")).unwrap();
    std::fs::create_dir(&to).unwrap();
    let err = qstore::import::publish_new_store(&to, &Default::default(), |_| {
        // the other import wins meanwhile
        std::fs::rename(dir.path().join("other"), &to).unwrap();
        Ok(())
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("renaming the new store to"),
        "{err}"
    );
    assert!(
        to.join("calendars").is_dir(),
        "the winner's store was touched"
    );
    assert_eq!(
        entries(dir.path()),
        vec!["store"],
        "a staging directory was left behind"
    );
}

fn qcache(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qcache"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn qcache_query_prints_csv_json_and_writes_files() {
    let (dir, store) = sample_store();
    let s = store.to_str().unwrap();
    let out = qcache(&[
        "query",
        s,
        "--instruments",
        "SH600000,SZ000002",
        "--fields",
        "$close",
        "Mean($close, 5)",
        "--start",
        "2023-03-01",
        "--end",
        "2023-03-03",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let csv = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "instrument,datetime,$close,\"Mean($close, 5)\"");
    assert_eq!(lines.len(), 1 + 2 * 3, "{csv}");
    assert!(lines[1].starts_with("SH600000,2023-03-01,"), "{csv}");
    let out = qcache(&[
        "query",
        s,
        "--feature-set",
        "alpha158",
        "--instruments",
        "SH600000",
        "--end",
        "2023-01-10",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["instrument"], "SH600000");
    assert!(first["KMID"].is_number() && first["ROC5"].is_null());
    let file = dir.path().join("out.csv");
    let out = qcache(&[
        "query",
        s,
        "--fields",
        "$open",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stdout.is_empty());
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .starts_with("instrument,datetime,$open\n")
    );
    assert_eq!(
        entries(dir.path()),
        vec!["out.csv", "store"],
        "no temp file left"
    );
}

/// The CSV, Parquet and Arrow outputs of one query (alpha158 over the sample market) as (instrument,
/// datetime, values) rows, so their values can be compared bit for bit.
#[test]
fn qcache_query_writes_parquet_and_arrow_with_the_csv_values() {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float32Type, Int32Type, TimestampMillisecondType};
    let (dir, store) = sample_store();
    let s = store.to_str().unwrap();
    let query = |format: &str, name: &str, extra: &[&str]| {
        let file = dir.path().join(name);
        let mut args = vec![
            "query",
            s,
            "--feature-set",
            "alpha158",
            "--start",
            "2023-02-01",
            "--format",
            format,
            "--out",
            file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = qcache(&args);
        assert!(out.status.success(), "{}", text(&out));
        file
    };
    let csv_file = query("csv", "q.csv", &[]);
    let mut rd = csv::Reader::from_path(&csv_file).unwrap();
    let header: Vec<String> = rd.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(header[2..4], ["KMID", "KLEN"], "columns named by feature");
    type Rows = Vec<(String, String, Vec<u32>)>;
    let csv_rows: Rows = rd
        .records()
        .map(|r| {
            let r = r.unwrap();
            let values = r
                .iter()
                .skip(2)
                .map(|c| {
                    if c.is_empty() {
                        f32::NAN.to_bits()
                    } else {
                        c.parse::<f32>().unwrap().to_bits()
                    }
                })
                .collect();
            (r[0].to_string(), r[1].to_string(), values)
        })
        .collect();
    let names: std::collections::BTreeSet<&str> = csv_rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(names.len(), 12, "every instrument of the sample");
    let rows_of = |batches: Vec<arrow_array::RecordBatch>| -> Rows {
        let mut rows = Rows::new();
        for b in batches {
            assert_eq!(
                b.schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect::<Vec<_>>(),
                header,
                "the CSV's columns"
            );
            let inst = b.column(0).as_dictionary::<Int32Type>();
            let names = inst.values().as_string::<i32>();
            let dates = b.column(1).as_primitive::<TimestampMillisecondType>();
            for r in 0..b.num_rows() {
                let when = chrono::DateTime::from_timestamp_millis(dates.value(r)).unwrap();
                // Every NaN as the CSV's empty cell reads back (a computed NaN may carry a sign).
                let values = (2..b.num_columns())
                    .map(|c| b.column(c).as_primitive::<Float32Type>().value(r))
                    .map(|v| if v.is_nan() { f32::NAN } else { v }.to_bits())
                    .collect();
                rows.push((
                    names.value(inst.keys().value(r) as usize).to_string(),
                    when.format("%Y-%m-%d").to_string(),
                    values,
                ));
            }
        }
        rows
    };
    // Parts of 5 instruments: three row groups, one dictionary of every instrument.
    let pq = query("parquet", "q.parquet", &["--part-size", "5"]);
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&pq).unwrap(),
    )
    .unwrap();
    assert_eq!(
        reader.metadata().num_row_groups(),
        3,
        "one row group per part"
    );
    let batches: Vec<_> = reader.build().unwrap().map(Result::unwrap).collect();
    assert!(
        csv_rows == rows_of(batches),
        "Parquet holds the CSV's values, bit for bit"
    );
    let ipc = query("arrow", "q.arrow", &["--part-size", "5"]);
    let reader =
        arrow_ipc::reader::FileReader::try_new(std::fs::File::open(&ipc).unwrap(), None).unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    assert_eq!(batches.len(), 3, "one record batch per part");
    assert!(
        csv_rows == rows_of(batches),
        "Arrow holds the CSV's values, bit for bit"
    );
    // Parts change nothing in the text outputs either.
    for format in ["csv", "json", "stats"] {
        let whole = std::fs::read(query(format, "whole", &[])).unwrap();
        let parts = std::fs::read(query(format, "parts", &["--part-size", "1"])).unwrap();
        assert!(
            whole == parts,
            "--format {format} in parts of one instrument"
        );
    }
}

/// Alpha158 on a store without `$vwap` (qlib gives VWAP0 a column of NaN): the query runs without VWAP0 and
/// says so, in text and in `--json`; `qcache warm` leaves it out too.
#[test]
fn feature_set_columns_a_store_lacks_are_left_out_and_said() {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("store");
    let fields = ["--fields", "open,high,low,close,volume,factor"];
    let out = import_csv(SAMPLE, to.to_str().unwrap(), &fields);
    assert!(out.status.success(), "{}", text(&out));
    let s = to.to_str().unwrap();
    let query = [
        "query",
        s,
        "--feature-set",
        "alpha158",
        "--instruments",
        "SH600000",
    ];
    let out = qcache(&query);
    assert!(out.status.success(), "{}", text(&out));
    let csv = String::from_utf8(out.stdout).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    assert_eq!(header.len(), 2 + 157, "alpha158 without VWAP0");
    assert!(!header.contains(&"VWAP0") && header.contains(&"KMID"));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("VWAP0 left out: no instrument of the query has $vwap"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = qcache(&[&query[..], &["--json", "--format", "stats"]].concat());
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(
        report["left_out"],
        serde_json::json!([{"name": "VWAP0", "missing": ["vwap"]}])
    );
    let out = qcache(&["warm", s, "--feature-set", "alpha158", "--lock", "file"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("VWAP0 left out"), "{}", text(&out));
    // Alpha360's 60 VWAP columns: 300 columns, and one line that says so.
    let out = qcache(&[
        "query",
        s,
        "--feature-set",
        "alpha360",
        "--instruments",
        "SH600000",
        "--format",
        "csv",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let csv = String::from_utf8(out.stdout).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    assert_eq!(header.len(), 2 + 300, "alpha360 without the VWAP columns");
    assert_eq!(
        (header[2], header[2 + 299]),
        ("CLOSE59", "VOLUME0"),
        "qlib's order"
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        said.trim(),
        "qcache query: 60 features (VWAP59, VWAP58, VWAP57, ..., VWAP0) left out: no instrument of the query has $vwap",
    );
    // A store with $vwap computes it and says nothing.
    let (_d, full) = sample_store();
    let out = qcache(&[
        "query",
        full.to_str().unwrap(),
        "--feature-set",
        "alpha158",
        "--instruments",
        "SH600000",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap()
            .contains("VWAP0")
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(report["left_out"], serde_json::json!([]));
}

#[test]
fn qcache_query_failure_leaves_no_output_file() {
    let (dir, store) = sample_store();
    let file = dir.path().join("q.parquet");
    let out = qcache(&[
        "query",
        store.to_str().unwrap(),
        "--fields",
        "$close",
        "Mean($nosuch, 5)",
        "--format",
        "parquet",
        "--part-size",
        "2",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("$nosuch"), "{}", text(&out));
    assert_eq!(entries(dir.path()), vec!["store"], "no file, no temp file");
}

#[test]
fn qcache_query_errors_have_codes_and_positions() {
    let (dir, store) = sample_store();
    let s = store.to_str().unwrap();
    let out = qcache(&["query", s, "--fields", "Mean($close, 5"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("^ at byte 14"), "{}", text(&out));
    assert!(out.stdout.is_empty(), "nothing written before the error");
    let out = qcache(&["query", s, "--fields", "$close", "$vol"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("unknown field $vol"), "{}", text(&out));
    assert!(out.stdout.is_empty(), "no header before the error");
    let out = qcache(&["query", s, "--feature-set", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("alpha158, alpha360, technical"),
        "{}",
        text(&out)
    );
    let out = qcache(&["query", s]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "neither --fields nor --feature-set"
    );
    let file = dir.path().join("keep.csv");
    std::fs::write(&file, "old").unwrap();
    let out = qcache(&[
        "query",
        s,
        "--fields",
        "Foo($close)",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "old",
        "a failed query leaves --out alone"
    );
    let out = qcache(&[
        "query",
        dir.path().join("none").to_str().unwrap(),
        "--fields",
        "$close",
    ]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn qcache_query_repeat_shows_feature_cache_hits() {
    let (_dir, store) = sample_store();
    let out = qcache(&[
        "query",
        store.to_str().unwrap(),
        "--instruments",
        "SH600000,SZ000002",
        "--fields",
        "Mean($close, 5)",
        "--repeat",
        "3",
        "--format",
        "stats",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("memcache features: 4 hits, 2 misses"),
        "the second and third runs come from memory: {err}"
    );
}

#[test]
fn qdump_all_warm_fills_the_expression_cache() {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("store");
    let out = import_csv(SAMPLE, to.to_str().unwrap(), &["--warm", "technical"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("expression cache: 528 entries of technical"),
        "12 instruments x 44 expressions: {}",
        text(&out)
    );
    let out = qcache(&["verify", to.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = qcache(&["info", to.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["entries"], 516,
        "43 distinct expressions x 12 (MA20 and BOLL_MID are one)"
    );
    // Limits in qstore.json's own terms, never Rust debug text such as "Entries(500)".
    assert_eq!(v["memcache"]["calendar"]["limit"], 500);
    assert_eq!(v["memcache"]["calendar"]["limit_type"], "length");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Entries("));
}

#[cfg(feature = "hdf5")]
#[test]
fn qcache_query_disk_cache_reads_the_same_values_from_hdf5() {
    let (_dir, store) = sample_store();
    let s = store.to_str().unwrap();
    let q = |mode: &str| {
        let out = qcache(&[
            "query",
            s,
            "--feature-set",
            "technical",
            "--start",
            "2023-06-01",
            "--disk-cache",
            mode,
        ]);
        assert!(out.status.success(), "{}", text(&out));
        out.stdout
    };
    let plain = q("0");
    assert!(
        !store.join("dataset_cache").exists(),
        "mode 0 leaves the cache alone"
    );
    assert_eq!(q("1"), plain, "built, then read from HDF5");
    assert_eq!(q("1"), plain, "read from HDF5");
    assert_eq!(q("2"), plain, "rebuilt");
    let n = std::fs::read_dir(store.join("dataset_cache"))
        .unwrap()
        .filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".lock")
        })
        .count();
    assert_eq!(n, 3, ".data, .index, .meta (and the writers' file lock)");
    let out = qcache(&["query", s, "--fields", "$close", "--disk-cache", "3"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Every argument and flag of every command of both programs says what it is in `--help`, and `update` lists
/// only what it takes (not `all`'s --overwrite or --warm).
#[test]
fn every_flag_has_help_text() {
    let programs = [
        (
            env!("CARGO_BIN_EXE_qdump"),
            &["all", "update", "check", "show"][..],
        ),
        (
            env!("CARGO_BIN_EXE_qcache"),
            &[
                "warm",
                "update",
                "info",
                "clear",
                "verify",
                "reset-lock",
                "query",
            ][..],
        ),
    ];
    for (bin, commands) in programs {
        for command in commands {
            let out = Command::new(bin)
                .args([command, "--help"])
                .output()
                .unwrap();
            assert!(out.status.success());
            let help = String::from_utf8(out.stdout).unwrap();
            let lines: Vec<&str> = help.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                let t = line.trim_start();
                let indent = line.len() - t.len();
                // `  -h, --help`, `      --flag <V>`, `  <STORE>` (a possible value is `          - name: ...`).
                let is_arg = (indent == 2 || indent == 6)
                    && (t.starts_with("--") || t.starts_with('<') || t.starts_with("-h,"));
                if !is_arg {
                    continue;
                }
                // Help on the same line (short form) after two spaces, or on the next line (long form).
                let inline = t.split_once("  ").map(|(_, h)| h.trim()).unwrap_or("");
                let next = lines.get(i + 1).copied().unwrap_or("");
                let has = (!inline.is_empty() && !inline.starts_with("[default"))
                    || (next.starts_with("          ") && !next.trim().is_empty());
                assert!(has, "{bin} {command}: {line:?} has no help text");
            }
            if *command == "update" && bin.ends_with("qdump") {
                for flag in ["--overwrite", "--keep-unknown", "--warm ", "--start "] {
                    assert!(
                        !lines.iter().any(|l| l.trim_start().starts_with(flag)),
                        "qdump update --help offers {flag}"
                    );
                }
            }
        }
    }
}

/// Every file qstore publishes (store, caches, a query's --out) gets the mode a program's new file gets,
/// `0666 & !umask`, not a temp file's 0600, so a store built by one account is readable by the others; as
/// root, another account (nobody) reads them for real.
#[test]
fn published_files_are_readable_by_other_accounts() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: umask only reads and sets this process's file-creation mask; it is put back at once.
    let umask = unsafe {
        let old = libc::umask(0o022);
        libc::umask(old);
        old
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = dir.path().join("store");
    let s = store.to_str().unwrap();
    let out = import_csv(SAMPLE, s, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let qcache = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_qcache"))
            .args(args)
            .env_remove("QSTORE_REDIS_URL")
            .output()
            .unwrap()
    };
    let out = qcache(&["warm", s, "--fields", "Mean($close,5)", "--lock", "file"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = qcache(&[
        "warm",
        s,
        "--fields",
        "Std($close,5)",
        "--dataset",
        "--lock",
        "file",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let csv = dir.path().join("out.csv");
    let out = qcache(&[
        "query",
        s,
        "--fields",
        "Mean($close,5)",
        "--out",
        csv.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let (file_mode, dir_mode) = (0o666 & !umask, 0o777 & !umask);
    let mut files = vec![csv.clone()];
    let mut stack = vec![store.clone()];
    while let Some(d) = stack.pop() {
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            dir_mode,
            "{}",
            d.display()
        );
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|x| x == "meta"))
    );
    for f in &files {
        assert_eq!(
            std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
            file_mode,
            "{}",
            f.display()
        );
    }
    // SAFETY: geteuid only reads the process's effective user id.
    if unsafe { libc::geteuid() } == 0 {
        let as_nobody = |program: &str, args: &[&str]| {
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", program])
                .args(args)
                .output()
                .expect("setpriv (util-linux) runs a command as another account")
        };
        let out = as_nobody(
            env!("CARGO_BIN_EXE_qdump"),
            &["show", s, "--instruments", "SH600000"],
        );
        assert!(
            out.status.success(),
            "nobody cannot read the store: {}",
            text(&out)
        );
        let out = as_nobody(
            env!("CARGO_BIN_EXE_qcache"),
            &[
                "query",
                s,
                "--fields",
                "Mean($close,5)",
                "--expr-cache",
                "read",
                "--cache-stats",
            ],
        );
        assert!(
            out.status.success(),
            "nobody cannot read the cache: {}",
            text(&out)
        );
        assert!(text(&out).contains("hits"), "{}", text(&out));
        let out = as_nobody("cat", &[csv.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "nobody cannot read --out: {}",
            text(&out)
        );
    }
}

/// `qdump info` and `qdump ls` describe a store from its files; `qdump show` refuses names the store lacks.
#[test]
fn info_ls_and_show_of_unknown_names() {
    let (_dir, to) = sample_store();
    let store = to.to_str().unwrap();
    let out = qdump(&["info", store, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["calendars"][0]["freq"], "day");
    assert_eq!(v["calendars"][0]["days"], 250);
    assert_eq!(v["calendars"][0]["first"], "2023-01-03");
    assert_eq!(v["calendars"][0]["last"], "2024-01-11");
    let symbols = std::fs::read_dir(SAMPLE).unwrap().count();
    assert_eq!(v["markets"]["all"], symbols);
    assert_eq!(v["instruments_with_data"], symbols);
    let fields: Vec<&str> = v["fields"]["day"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"close") && fields.contains(&"factor"),
        "{fields:?}"
    );
    assert!(v["data_bytes"].as_u64().unwrap() > 0);
    assert!(v["last_update"].as_str().unwrap().ends_with("UTC"));
    let out = qdump(&["info", store]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("calendar    day: 250 days, 2023-01-03 to 2024-01-11"),
        "{}",
        text(&out)
    );

    let lines = |args: &[&str]| -> Vec<String> {
        let out = qdump(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    };
    let days = lines(&[
        "ls",
        "calendar",
        store,
        "--start",
        "2023-03-01",
        "--end",
        "2023-03-07",
    ]);
    assert_eq!(
        days,
        [
            "2023-03-01",
            "2023-03-02",
            "2023-03-03",
            "2023-03-06",
            "2023-03-07"
        ]
    );
    let all = lines(&["ls", "instruments", store]);
    assert_eq!(all.len(), symbols);
    // SH600009's span ends on 2023-08-24: it is not listed for later days.
    let late = lines(&["ls", "instruments", store, "--start", "2023-09-01"]);
    assert!(all.contains(&"SH600009".to_string()) && !late.contains(&"SH600009".to_string()));
    assert_eq!(late.len(), all.len() - 1);
    assert_eq!(lines(&["ls", "fields", store]), fields);
    assert_eq!(
        lines(&["ls", "fields", store, "--instrument", "SH600000"]),
        fields
    );

    for (args, says) in [
        (
            vec![
                "show",
                store,
                "--instruments",
                "SH600000",
                "--fields",
                "close,nope",
            ],
            "unknown field nope",
        ),
        (
            vec!["show", store, "--instruments", "SH600000,XX000000"],
            "unknown instrument XX000000",
        ),
        (
            vec!["ls", "fields", store, "--instrument", "XX000000"],
            "unknown instrument XX000000",
        ),
    ] {
        let out = qdump(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
        assert!(
            out.stdout.is_empty(),
            "no header before the error: {args:?}"
        );
    }
}

/// `--threads N` sizes the pool every parallel step runs on, before or after the subcommand; 0 is a usage
/// error. The results do not depend on it.
#[test]
fn threads_flag_sizes_the_pool_and_changes_no_result() {
    let (_dir, to) = sample_store();
    let store = to.to_str().unwrap();
    for args in [
        vec!["--threads", "1", "info", store, "--json"],
        vec!["info", store, "--json", "--threads", "1"],
    ] {
        let out = qcache(&args);
        assert!(out.status.success(), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["threads"], 1, "{args:?}");
    }
    let query = |extra: &[&str]| {
        let mut args = vec!["query", store, "--feature-set", "alpha158"];
        args.extend_from_slice(extra);
        let out = qcache(&args);
        assert!(out.status.success(), "{}", text(&out));
        out.stdout
    };
    assert_eq!(query(&["--threads", "1"]), query(&[]));
    let out = qcache(&["query", store, "--fields", "$close", "--threads", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = qdump(&["--threads", "2", "ls", "calendar", store]);
    assert!(out.status.success(), "{}", text(&out));
}

/// `--instruments` takes names, `@FILE` and patterns wherever instruments are taken; a pattern that matches
/// nothing, a broken pattern and a missing file are errors that say so.
#[test]
fn instruments_take_files_and_patterns() {
    let (dir, to) = sample_store();
    let store = to.to_str().unwrap();
    let rows = |out: Output| -> Vec<String> {
        assert!(out.status.success(), "{}", text(&out));
        let mut v: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .skip(1)
            .filter_map(|l| l.split(',').next().map(String::from))
            .collect();
        v.dedup();
        v
    };
    let query = |instruments: &str| {
        qcache(&[
            "query",
            store,
            "--fields",
            "$close",
            "--instruments",
            instruments,
            "--end",
            "2023-01-05",
        ])
    };
    let sh6 = rows(query("sh6*"));
    assert_eq!(
        sh6,
        ["SH600000", "SH600009", "SH600015", "SH688010"],
        "SH688001's data starts after --end"
    );
    let file = dir.path().join("list.txt");
    std::fs::write(&file, "SZ000002\nSH600000, SH600015\n").unwrap();
    let from_file = rows(query(&format!("@{}", file.display())));
    assert_eq!(from_file, ["SH600000", "SH600015", "SZ000002"]);
    assert_eq!(
        rows(query("SH60000[0-9],SZ000002")),
        ["SH600000", "SH600009", "SZ000002"]
    );
    let out = qdump(&[
        "show",
        store,
        "--instruments",
        "SZ3*",
        "--fields",
        "close",
        "--end",
        "2023-01-03",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("SZ300003"), "{}", text(&out));
    for (arg, says) in [
        ("XX*", "matches no instrument"),
        ("SH[6", "is not a pattern"),
        ("@/nonexistent/list.txt", "reading the --instruments file"),
    ] {
        let out = query(arg);
        assert_eq!(out.status.code(), Some(1), "{arg}: {}", text(&out));
        assert!(text(&out).contains(says), "{arg}: {}", text(&out));
    }
}

/// The sample fixtures with every date rewritten by `rewrite` (a `YYYY-MM-DD` text), in a new directory.
fn sample_with_dates(dir: &Path, rewrite: &dyn Fn(&str) -> String) -> std::path::PathBuf {
    let out = dir.join("dated");
    std::fs::create_dir_all(&out).unwrap();
    for e in std::fs::read_dir(SAMPLE).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        let mut lines = text.lines();
        let mut new = format!("{}\n", lines.next().unwrap());
        for l in lines {
            let (date, rest) = l.split_once(',').unwrap();
            new.push_str(&format!("{},{rest}\n", rewrite(date)));
        }
        std::fs::write(out.join(p.file_name().unwrap()), new).unwrap();
    }
    out
}

/// `--date-format`: CSV dates written `20230103` (or `03/01/2023`) import to the store of the ISO dates, byte for
/// byte; without the flag every symbol fails with a message that names the flag; a pattern that names no day
/// is exit 2 before anything is read.
#[test]
fn date_format_reads_dates_as_the_source_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, want) = sample_store();
    for (pattern, rewrite) in [
        (
            "%Y%m%d",
            (|d: &str| d.replace('-', "")) as fn(&str) -> String,
        ),
        ("%d/%m/%Y", |d: &str| {
            let p: Vec<&str> = d.split('-').collect();
            format!("{}/{}/{}", p[2], p[1], p[0])
        }),
    ] {
        let input = sample_with_dates(dir.path(), &rewrite);
        let to = dir.path().join("got");
        let out = import_csv(
            input.to_str().unwrap(),
            to.to_str().unwrap(),
            &["--date-format", pattern, "--overwrite"],
        );
        assert!(out.status.success(), "{pattern}: {}", text(&out));
        assert!(tree(&to) == tree(&want), "{pattern}");
        std::fs::remove_dir_all(&input).unwrap();
    }
    let input = sample_with_dates(dir.path(), &|d| d.replace('-', ""));
    let out = import_csv(
        input.to_str().unwrap(),
        dir.path().join("none").to_str().unwrap(),
        &[],
    );
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains("invalid date \"20230103\"")
            && said.contains("--date-format (for example %Y%m%d)"),
        "{said}"
    );
    let out = import_csv(
        input.to_str().unwrap(),
        dir.path().join("none").to_str().unwrap(),
        &["--date-format", "%Y%m"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("does not name a day"), "{}", text(&out));
    assert!(!dir.path().join("none").exists());
}

/// An identifier column (`id`, `*_id`) is not imported as a field unless named, and the summary says so;
/// `--exclude-fields` leaves columns out of the default fields (a name that is not one is an error, and it
/// cannot be given with `--fields`).
#[test]
fn identifiers_and_excluded_columns_are_not_fields() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("with-id");
    std::fs::create_dir_all(&input).unwrap();
    for (k, e) in std::fs::read_dir(SAMPLE).unwrap().enumerate() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        let mut lines = text.lines();
        let mut new = format!("{},id,source_id\n", lines.next().unwrap());
        for (r, l) in lines.enumerate() {
            new.push_str(&format!("{l},{},{k}\n", k * 1000 + r));
        }
        std::fs::write(input.join(p.file_name().unwrap()), new).unwrap();
    }
    let (_d, want) = sample_store();
    let input = input.to_str().unwrap();
    let got = dir.path().join("got");
    let out = import_csv(input, got.to_str().unwrap(), &["--json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(tree(&got) == tree(&want), "id and source_id are not fields");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let left: Vec<&str> = v["columns_left_out"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["column"].as_str().unwrap())
        .collect();
    assert_eq!(left, ["id", "source_id"], "{v}");
    let out = import_csv(input, dir.path().join("plain").to_str().unwrap(), &[]);
    assert!(
        text(&out).contains("column id left out: named as a row identifier"),
        "{}",
        text(&out)
    );
    // Named, it is imported.
    let named = dir.path().join("named");
    let out = import_csv(input, named.to_str().unwrap(), &["--fields", "close,id"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(named.join("features/sh600000/id.day.bin").exists());
    // --exclude-fields: the store of --fields with the rest.
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let out = import_csv(
        input,
        a.to_str().unwrap(),
        &["--exclude-fields", "amount,VWAP"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = import_csv(
        input,
        b.to_str().unwrap(),
        &["--fields", "open,high,low,close,volume,factor"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(tree(&a) == tree(&b));
    let out = import_csv(
        input,
        dir.path().join("c").to_str().unwrap(),
        &["--exclude-fields", "amout"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("--exclude-fields names \"amout\""),
        "{}",
        text(&out)
    );
    let out = import_csv(
        input,
        dir.path().join("d").to_str().unwrap(),
        &["--exclude-fields", "amount", "--fields", "close"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

/// `--help` ends with examples and the exit codes; completions and man pages come from the same definitions
/// (the bash script parses, the page is roff for the program, an unknown shell is usage error 2).
#[test]
fn help_completions_and_man_pages() {
    for program in [env!("CARGO_BIN_EXE_qdump"), env!("CARGO_BIN_EXE_qcache")] {
        let name = Path::new(program).file_name().unwrap().to_str().unwrap();
        let run = |args: &[&str]| Command::new(program).args(args).output().unwrap();
        let help = String::from_utf8(run(&["--help"]).stdout).unwrap();
        assert!(
            help.contains("Examples:\n") && help.contains("Exit codes:\n  0  success"),
            "{help}"
        );
        let script = run(&["completions", "bash"]);
        assert!(script.status.success());
        let completion = String::from_utf8(script.stdout).unwrap();
        assert!(completion.contains(&format!("_{name}()")), "{name}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("completion.bash");
        std::fs::write(&file, &completion).unwrap();
        let parsed = Command::new("bash").arg("-n").arg(&file).output().unwrap();
        assert!(parsed.status.success(), "{}", text(&parsed));
        let man = String::from_utf8(run(&["man"]).stdout).unwrap();
        assert!(man.contains(&format!(".TH {name} 1")), "{man}");
        assert_eq!(run(&["completions", "nosh"]).status.code(), Some(2));
    }
}

/// `-v` prints the library's decisions on standard error (as `RUST_LOG` does), `-q` nothing but errors; the
/// two together are a usage error.
#[test]
fn verbose_and_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], env: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_qdump"));
        cmd.args(args).env_remove("RUST_LOG");
        if let Some(v) = env {
            cmd.env("RUST_LOG", v);
        }
        cmd.output().unwrap()
    };
    let to = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let (a, b, c) = (to("a"), to("b"), to("c"));
    let out = run(&["-v", "all", "--csv", SAMPLE, "--to", &a], None);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("importing 8 fields of 12 symbols"), "{said}");
    let out = run(&["all", "--csv", SAMPLE, "--to", &b], Some("qstore=info"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("importing 8 fields"));
    let out = run(&["all", "--csv", SAMPLE, "--to", &c, "-q"], None);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert!(
        !String::from_utf8_lossy(&out.stdout).is_empty(),
        "the summary is output"
    );
    let out = run(&["-v", "-q", "info", &a], None);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn qcache_query_compat_qlib_gives_the_librarys_qlib_values_from_every_setting() {
    let (_dir, store) = sample_store();
    let s = store.to_str().unwrap();
    let exprs = [
        "Mean($close,5)",
        "EMA($close,10)",
        "IdxMax($high,10)",
        "WMA($close,5)",
    ];
    let query = |extra: &[&str]| {
        let mut args = vec!["query", s, "--instruments", "SH600000,SZ000002"];
        args.push("--fields");
        args.extend_from_slice(&exprs);
        args.extend_from_slice(&["--start", "2023-06-01", "--end", "2023-08-31"]);
        args.extend_from_slice(extra);
        let out = qcache(&args);
        assert!(out.status.success(), "{extra:?}: {}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    // The library's values, as CSV cells.
    let library = |compat: Compat| {
        let mut e = qstore::Engine::open(&store).unwrap();
        e.set_compat(compat);
        let list = vec!["SH600000".to_string(), "SZ000002".to_string()];
        let day = |d| Some(qstore::store::calendar::parse_timestamp(d).unwrap());
        let f = e
            .features(
                qstore::Universe::List(&list),
                &exprs,
                day("2023-06-01"),
                day("2023-08-31"),
                qstore::Freq::DAY,
            )
            .unwrap();
        (0..f.len())
            .map(|r| (0..exprs.len()).map(|c| f.value(r, c).to_bits()).collect())
            .collect::<Vec<Vec<u32>>>()
    };
    let cells = |csv: &str| -> Vec<Vec<u32>> {
        csv.lines()
            .skip(1)
            .map(|l| {
                // The expressions hold commas: the values are the last four cells.
                let cells: Vec<&str> = l.rsplitn(exprs.len() + 1, ',').collect();
                cells[..exprs.len()]
                    .iter()
                    .rev()
                    .map(|c| c.parse::<f32>().unwrap_or(f32::NAN).to_bits())
                    .collect()
            })
            .collect()
    };
    let own = query(&[]);
    let qlib = query(&["--compat", "qlib"]);
    let same_nan = |v: Vec<Vec<u32>>| -> Vec<Vec<u32>> {
        v.into_iter()
            .map(|r| {
                r.into_iter()
                    .map(|b| {
                        if f32::from_bits(b).is_nan() {
                            0x7fc0_0000
                        } else {
                            b
                        }
                    })
                    .collect()
            })
            .collect()
    };
    assert_eq!(same_nan(cells(&qlib)), same_nan(library(Compat::Qlib)));
    assert_eq!(same_nan(cells(&own)), same_nan(library(Compat::None)));
    assert_ne!(own, qlib);
    // The same from the environment and from qstore.json; the flag wins over both.
    let with_env = Command::new(env!("CARGO_BIN_EXE_qcache"))
        .args(["query", s, "--instruments", "SH600000,SZ000002", "--fields"])
        .args(exprs)
        .args(["--start", "2023-06-01", "--end", "2023-08-31"])
        .env("QSTORE_COMPAT", "qlib")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(with_env.stdout).unwrap(), qlib);
    std::fs::write(store.join("qstore.json"), r#"{"compat": "qlib"}"#).unwrap();
    assert_eq!(query(&[]), qlib);
    assert_eq!(query(&["--compat", "none"]), own);
    // A dataset-cache request with such an expression is computed, not cached with start-independent values.
    assert_eq!(query(&["--disk-cache", "use"]), qlib);
    assert!(
        !store.join("dataset_cache").exists()
            || std::fs::read_dir(store.join("dataset_cache"))
                .unwrap()
                .next()
                .is_none(),
        "no dataset was built"
    );
    let out = qcache(&["query", s, "--fields", "$close", "--compat", "pandas"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
