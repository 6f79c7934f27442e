//! `qdump all|update --parquet`: the layouts users' pipelines write (one file per symbol; files with a symbol
//! column, one or one per day), with the column types they hold, give the store the CSV gives, byte for byte;
//! bad files are errors that say what and where.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use arrow_array::types::Int32Type;
use arrow_array::{
    Array, ArrayRef, Date32Array, Decimal128Array, DictionaryArray, Float64Array, Int64Array,
    RecordBatch, StringArray, TimestampNanosecondArray,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use common::{text, tree};

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sample");

fn qdump(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qdump"))
        .args(args)
        .output()
        .unwrap()
}

/// One sample row: symbol (file stem), date, and the cells after the date.
type Row = (String, String, Vec<String>);

/// The sample's rows, in file order, and the names of the columns after the date.
fn sample_rows() -> (Vec<String>, Vec<Row>) {
    let mut names = Vec::new();
    let mut rows = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(SAMPLE)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for p in files {
        let symbol = p.file_stem().unwrap().to_str().unwrap().to_owned();
        let mut rd = csv::Reader::from_path(&p).unwrap();
        names = rd
            .headers()
            .unwrap()
            .iter()
            .skip(1)
            .map(String::from)
            .collect();
        for r in rd.records() {
            let r = r.unwrap();
            rows.push((
                symbol.clone(),
                r[0].to_string(),
                r.iter().skip(1).map(String::from).collect(),
            ));
        }
    }
    (names, rows)
}

/// A decimal cell's unscaled value at `scale` digits, exactly (no float on the way).
fn unscaled(cell: &str, scale: usize) -> Option<i128> {
    if cell.is_empty() {
        return None;
    }
    let (int, frac) = cell.split_once('.').unwrap_or((cell, ""));
    assert!(frac.len() <= scale, "{cell} has more than {scale} decimals");
    Some(format!("{int}{frac:0<scale$}").parse().unwrap())
}

/// Writes `rows` as one Parquet file with the types a pipeline would use: prices as float64, volume as
/// int64, amount and factor as decimals; the date as date32, or (with a symbol column, as pandas writes a
/// frame) as a timestamp in nanoseconds, the symbol dictionary-encoded.
fn write_parquet(
    path: &Path,
    names: &[String],
    rows: &[Row],
    with_symbol: bool,
    text_dates: Option<&str>,
) {
    let day = |d: &str| {
        chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
    };
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    if with_symbol {
        fields.push(Field::new_dictionary(
            "Symbol",
            DataType::Int32,
            DataType::Utf8,
            false,
        ));
        let d: DictionaryArray<Int32Type> = rows.iter().map(|r| r.0.as_str()).collect();
        columns.push(Arc::new(d));
        fields.push(Field::new(
            "date",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            false,
        ));
        columns.push(Arc::new(TimestampNanosecondArray::from_iter_values(
            rows.iter()
                .map(|r| day(&r.1).timestamp_nanos_opt().unwrap()),
        )));
    } else if let Some(pattern) = text_dates {
        // Dates as text, as a pipeline that wrote strings leaves them.
        fields.push(Field::new("date", DataType::Utf8, false));
        columns.push(Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| day(&r.1).format(pattern).to_string()),
        )));
    } else {
        fields.push(Field::new("date", DataType::Date32, false));
        columns.push(Arc::new(Date32Array::from_iter_values(
            rows.iter().map(|r| (day(&r.1).timestamp() / 86_400) as i32),
        )));
    }
    for (c, name) in names.iter().enumerate() {
        let cells = rows.iter().map(|r| r.2[c].as_str());
        let (ty, array): (DataType, ArrayRef) = match name.as_str() {
            "volume" => (
                DataType::Int64,
                Arc::new(Int64Array::from_iter(cells.map(|s| s.parse::<i64>().ok()))),
            ),
            "amount" | "factor" => {
                let scale = if name == "amount" { 2 } else { 6 };
                let d = Decimal128Array::from_iter(cells.map(|s| unscaled(s, scale)))
                    .with_precision_and_scale(24, scale as i8)
                    .unwrap();
                (d.data_type().clone(), Arc::new(d))
            }
            _ => (
                DataType::Float64,
                Arc::new(Float64Array::from_iter(
                    cells.map(|s| s.parse::<f64>().ok()),
                )),
            ),
        };
        fields.push(Field::new(name, ty, true));
        columns.push(array);
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn all(source: &[&str], to: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["all"];
    args.extend_from_slice(source);
    args.extend_from_slice(&["--to", to.to_str().unwrap()]);
    args.extend_from_slice(extra);
    qdump(&args)
}

#[test]
fn parquet_layouts_give_the_csv_store_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (names, rows) = sample_rows();
    let from_csv = dir.path().join("from-csv");
    common::ok(all(&["--csv", SAMPLE], &from_csv, &[]));

    // One file per symbol (dates typed, or as text in a format).
    let per_symbol_files = |dir: &Path, text_dates: Option<&str>| {
        std::fs::create_dir(dir).unwrap();
        for symbol in rows
            .iter()
            .map(|r| r.0.clone())
            .collect::<std::collections::BTreeSet<_>>()
        {
            let mine: Vec<Row> = rows.iter().filter(|r| r.0 == symbol).cloned().collect();
            let file = dir.join(format!("{symbol}.parquet"));
            write_parquet(&file, &names, &mine, false, text_dates);
        }
    };
    let per_symbol = dir.path().join("per-symbol");
    per_symbol_files(&per_symbol, None);
    let a = dir.path().join("a");
    let out = all(&["--parquet", per_symbol.to_str().unwrap()], &a, &[]);
    assert!(
        text(&out).contains("12 of 12 symbols imported"),
        "{}",
        text(&out)
    );
    assert!(
        tree(&a) == tree(&from_csv),
        "per-symbol Parquet files give the CSV's store"
    );

    // Dates as text in another format, read with --date-format.
    let text_dates = dir.path().join("text-dates");
    per_symbol_files(&text_dates, Some("%Y/%m/%d"));
    let t = dir.path().join("t");
    let source = ["--parquet", text_dates.to_str().unwrap()];
    common::ok(all(&source, &t, &["--date-format", "%Y/%m/%d"]));
    assert!(tree(&t) == tree(&from_csv), "text dates with --date-format");
    let out = all(&source, &dir.path().join("t2"), &[]);
    assert!(
        text(&out).contains("invalid date \"2023/01/03\"") && text(&out).contains("--date-format"),
        "{}",
        text(&out)
    );

    // One file with a symbol column (named in another case), rows interleaved by date.
    let mut by_date = rows.clone();
    by_date.sort_by(|x, y| x.1.cmp(&y.1));
    let combined = dir.path().join("all.parquet");
    write_parquet(&combined, &names, &by_date, true, None);
    let b = dir.path().join("b");
    common::ok(all(&["--parquet", combined.to_str().unwrap()], &b, &[]));
    assert!(
        tree(&b) == tree(&from_csv),
        "a combined Parquet file gives the CSV's store"
    );

    // Files of one day each (what a daily export writes), with --symbols and --fields applying as for CSV.
    let daily = dir.path().join("daily");
    std::fs::create_dir(&daily).unwrap();
    for chunk in by_date.chunk_by(|x, y| x.1 == y.1) {
        write_parquet(
            &daily.join(format!("{}.parquet", chunk[0].1)),
            &names,
            chunk,
            true,
            None,
        );
    }
    let (c, c_csv) = (dir.path().join("c"), dir.path().join("c-csv"));
    let pick = [
        "--symbols",
        "SH600000,000002.SZ",
        "--fields",
        "close,Volume",
    ];
    common::ok(all(&["--parquet", daily.to_str().unwrap()], &c, &pick));
    common::ok(all(&["--csv", SAMPLE], &c_csv, &pick));
    assert!(
        tree(&c) == tree(&c_csv),
        "daily Parquet files give the CSV's store"
    );
}

#[test]
fn qdump_update_appends_days_from_parquet_files() {
    let dir = tempfile::tempdir().unwrap();
    let (names, rows) = sample_rows();
    let (store, want) = (dir.path().join("store"), dir.path().join("want"));
    let out = all(&["--csv", SAMPLE], &store, &["--end", "2023-11-30"]);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
    common::ok(all(&["--csv", SAMPLE], &want, &[]));
    // The new days, one file each, as a daily job would leave them.
    let daily = dir.path().join("daily");
    std::fs::create_dir(&daily).unwrap();
    let mut new: Vec<Row> = rows
        .into_iter()
        .filter(|r| r.1.as_str() > "2023-11-30")
        .collect();
    new.sort_by(|x, y| x.1.cmp(&y.1));
    assert!(!new.is_empty());
    for chunk in new.chunk_by(|x, y| x.1 == y.1) {
        write_parquet(
            &daily.join(format!("{}.parquet", chunk[0].1)),
            &names,
            chunk,
            true,
            None,
        );
    }
    let out = qdump(&[
        "update",
        "--parquet",
        daily.to_str().unwrap(),
        "--to",
        store.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    // The update's stamp (when it ran) is the one file an import does not write.
    let got: Vec<_> = tree(&store)
        .into_iter()
        .filter(|(p, _)| p != ".qstore-updated")
        .collect();
    let want = tree(&want);
    assert!(got == want, "updated from Parquet = imported whole");
}

#[test]
fn bad_parquet_input_says_what_and_where() {
    let dir = tempfile::tempdir().unwrap();
    let (names, rows) = sample_rows();
    let file = dir.path().join("all.parquet");
    write_parquet(&file, &names, &rows, true, None);
    let to = dir.path().join("store");
    let err = |out: Output| {
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(!to.exists(), "nothing is written");
        text(&out)
    };
    // A Parquet file given as CSV.
    let msg = err(all(&["--csv", file.to_str().unwrap()], &to, &[]));
    assert!(
        msg.contains("is a Parquet file, not CSV; import it with --parquet"),
        "{msg}"
    );
    // A CSV file given as Parquet.
    let csv = Path::new(SAMPLE).join("SH600000.csv");
    let msg = err(all(&["--parquet", csv.to_str().unwrap()], &to, &[]));
    assert!(msg.contains("not a readable Parquet file"), "{msg}");
    // A field that is text.
    let schema = Arc::new(Schema::new(vec![
        Field::new("date", DataType::Utf8, false),
        Field::new("close", DataType::Float64, false),
        Field::new("board", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["2023-01-03", "2023-01-04"])),
            Arc::new(Float64Array::from(vec![1.0, 2.0])),
            Arc::new(StringArray::from(vec!["main", "main"])),
        ],
    )
    .unwrap();
    let text_file = dir.path().join("SH600000.parquet");
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&text_file).unwrap(),
        schema,
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    // A date with a time zone: which day it is depends on the zone, so it is refused with the fix.
    let zoned = dir.path().join("SZ000002.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "date",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("Asia/Shanghai".into())),
            false,
        ),
        Field::new("close", DataType::Float64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(
                TimestampNanosecondArray::from(vec![1_672_675_200_000_000_000])
                    .with_timezone("Asia/Shanghai"),
            ),
            Arc::new(Float64Array::from(vec![1.0])),
        ],
    )
    .unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&zoned).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let out = all(&["--parquet", zoned.to_str().unwrap()], &to, &[]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("time zone Asia/Shanghai; store the exchange's local time"),
        "{}",
        text(&out)
    );
    assert!(!to.exists());
    // By default the fields are the numeric columns (as for MySQL); naming a text column is an error.
    let msg = err(all(
        &["--parquet", text_file.to_str().unwrap()],
        &to,
        &["--fields", "close,board"],
    ));
    assert!(
        msg.contains("column \"board\" is Utf8, not numbers; leave it out of --fields"),
        "{msg}"
    );
    let out = all(&["--parquet", text_file.to_str().unwrap()], &to, &[]);
    assert!(text(&out).contains("2 rows, 1 fields"), "{}", text(&out));
    assert_eq!(
        common::entries(&to.join("features/sh600000")),
        ["close.day.bin"]
    );
}
