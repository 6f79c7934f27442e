//! The `Store` API over the sample fixtures and over hand-built stores.

mod common;

use std::path::Path;

use qstore::{Calendar, Error, Freq, Store, import, parse_timestamp};

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sample"))
}

/// Builds a store from the sample CSVs.
fn sample_store(dir: &Path) -> Store {
    let csv = import::CsvSource::open(fixtures(), Default::default()).unwrap();
    let root = dir.join("store");
    let summary = import::import(
        &csv,
        &root,
        &Default::default(),
        &Default::default(),
        &|_| {},
    )
    .unwrap();
    assert!(summary.failed.is_empty(), "{:?}", summary.failed);
    Store::open(root).unwrap()
}

/// Every CSV cell, parsed independently of the importer: (symbol, date, field) -> value text.
fn csv_cells() -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let path = entry.unwrap().path();
        let symbol = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        for line in lines {
            let cells: Vec<&str> = line.split(',').collect();
            for (h, c) in header.iter().zip(&cells).skip(1) {
                out.push((
                    symbol.clone(),
                    cells[0].to_owned(),
                    h.to_string(),
                    c.to_string(),
                ));
            }
        }
    }
    out
}

#[test]
fn sample_import_reads_back_every_cell() {
    let dir = tempfile::tempdir().unwrap();
    let store = sample_store(dir.path());
    let cal = store.calendar(Freq::DAY).unwrap();
    let cells = csv_cells();
    assert!(cells.len() > 15_000, "the sample has {} cells", cells.len());
    for (symbol, date, field, text) in &cells {
        let i = cal.index_of(parse_timestamp(date).unwrap()).unwrap();
        let got = store.read(symbol, field, Freq::DAY, i..i + 1).unwrap();
        assert_eq!(got.start(), i);
        if text.is_empty() {
            assert!(got[0].is_nan(), "{symbol} {date} {field}: {}", got[0]);
        } else {
            assert_eq!(
                got[0],
                text.parse::<f64>().unwrap() as f32,
                "{symbol} {date} {field}"
            );
        }
    }
    // Suspended days (no row) are NaN inside the span; the file starts at the first date.
    let dates: std::collections::BTreeSet<(String, String)> =
        cells.iter().map(|c| (c.0.clone(), c.1.clone())).collect();
    let ins = store.instruments("all").unwrap();
    let mut suspended = 0;
    for (symbol, spans) in ins.iter() {
        let span = spans[0];
        let f = store.feature(symbol, "close", Freq::DAY).unwrap().unwrap();
        assert_eq!(
            cal.get(f.start()),
            Some(span.start),
            "{symbol} starts on its first date"
        );
        assert_eq!(
            cal.get(f.end() - 1),
            Some(span.end),
            "{symbol} ends on its last date"
        );
        for i in f.start()..f.end() {
            let d = qstore::format_timestamp(cal.get(i).unwrap(), true);
            if !dates.contains(&(symbol.to_owned(), d)) {
                assert!(f.get(i).unwrap().is_nan());
                suspended += 1;
            }
        }
    }
    assert!(suspended > 0, "the sample must contain suspensions");
}

#[test]
fn panel_equals_single_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = sample_store(dir.path());
    let mut instruments: Vec<String> = store
        .instruments("all")
        .unwrap()
        .symbols()
        .map(String::from)
        .collect();
    instruments.push("SH999999".into()); // no files: all NaN
    let fields = vec![
        "close".to_string(),
        "volume".to_string(),
        "nosuch".to_string(),
    ];
    let cal = store.calendar(Freq::DAY).unwrap();
    for range in [0..cal.len(), 30..100, 200..400, 5..5] {
        let panel = store
            .panel(&instruments, &fields, Freq::DAY, range.clone())
            .unwrap();
        let clipped = range.start.min(cal.len())..range.end.min(cal.len());
        assert_eq!(
            panel.shape(),
            (clipped.len(), instruments.len(), fields.len())
        );
        assert_eq!(panel.start(), clipped.start);
        for (i, inst) in instruments.iter().enumerate() {
            for (f, field) in fields.iter().enumerate() {
                let s = store.read(inst, field, Freq::DAY, clipped.clone()).unwrap();
                for t in 0..clipped.len() {
                    let want = (clipped.start + t)
                        .checked_sub(s.start())
                        .and_then(|k| s.get(k).copied())
                        .unwrap_or(f32::NAN);
                    let got = panel.get(t, i, f);
                    assert!(
                        got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                        "{inst} {field} t={t}"
                    );
                }
            }
        }
    }
}

#[test]
fn missing_store_frequency_and_market_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open(dir.path().join("nope")).unwrap_err();
    assert!(
        matches!(err, Error::MissingStore { .. }) && err.to_string().contains("qdump all"),
        "{err}"
    );
    let err = Store::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("no calendars/ directory"), "{err}");

    let store = common::store_with_calendar(dir.path(), 3);
    let err = store.calendar(Freq::MINUTE).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the store has no calendar for frequency 1min ({}/calendars/1min.txt is missing); available: day",
            dir.path().display()
        )
    );
    assert!(matches!(
        store.instruments("csi300"),
        Err(Error::NoMarket { .. })
    ));
    assert!(matches!(
        store.read("../x", "close", Freq::DAY, 0..1),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        store.read("A", "close.day", Freq::DAY, 0..1),
        Err(Error::InvalidName { .. })
    ));
    // a corrupt calendar names its line
    std::fs::write(
        dir.path().join("calendars/day.txt"),
        "2020-01-01\n2020-01-03\n2020-01-02\n",
    )
    .unwrap();
    let err = Store::open(dir.path())
        .unwrap()
        .calendar(Freq::DAY)
        .unwrap_err();
    assert!(err.to_string().contains("calendars/day.txt:3:"), "{err}");
}

#[test]
fn reserved_and_odd_symbols_round_trip_through_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::store_with_calendar(dir.path(), 5);
    for (symbol, dirname) in [
        ("CON", "_qlib_con"),
        ("LPT1", "_qlib_lpt1"),
        ("NA", "na"),
        ("NULL", "null"),
    ] {
        store
            .write_feature(symbol, "close", Freq::DAY, Some(1), &[1.5])
            .unwrap();
        assert!(
            dir.path()
                .join("features")
                .join(dirname)
                .join("close.day.bin")
                .is_file(),
            "{symbol}"
        );
        assert_eq!(
            &store.read(symbol, "close", Freq::DAY, 0..5).unwrap()[..],
            &[1.5]
        );
        assert_eq!(
            qstore::store::layout::fname_to_code(dirname),
            symbol.to_lowercase()
        );
    }
}

#[test]
fn reads_are_a_snapshot_until_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let writer = common::store_with_calendar(dir.path(), 3);
    writer
        .write_feature("A", "close", Freq::DAY, Some(0), &[1., 2., 3.])
        .unwrap();
    let reader = Store::open(dir.path()).unwrap();
    assert_eq!(
        &reader.read("A", "close", Freq::DAY, 0..10).unwrap()[..],
        &[1., 2., 3.]
    );
    // another process appends a day: values first, then the calendar
    writer
        .write_feature("A", "close", Freq::DAY, None, &[4.])
        .unwrap();
    assert_eq!(
        reader.read("A", "close", Freq::DAY, 0..10).unwrap().len(),
        3,
        "unpublished day is invisible"
    );
    writer
        .save_calendar(&Calendar::new(Freq::DAY, common::days(4)).unwrap())
        .unwrap();
    assert_eq!(
        reader.read("A", "close", Freq::DAY, 0..10).unwrap().len(),
        3,
        "snapshot until refresh"
    );
    reader.refresh();
    assert_eq!(
        &reader.read("A", "close", Freq::DAY, 0..10).unwrap()[..],
        &[1., 2., 3., 4.]
    );
    // a write through the same store is seen at once
    writer
        .write_feature("A", "close", Freq::DAY, Some(1), &[20.])
        .unwrap();
    assert_eq!(
        &writer.read("A", "close", Freq::DAY, 0..10).unwrap()[..],
        &[1., 20., 3., 4.]
    );
}

#[test]
fn handle_cache_is_bounded_and_correct_under_eviction() {
    // with every file mapped, and with every file read into memory
    for map_threshold in [0, u64::MAX] {
        handle_cache_case(map_threshold);
    }
}

fn handle_cache_case(map_threshold: u64) {
    let dir = tempfile::tempdir().unwrap();
    common::store_with_calendar(dir.path(), 4);
    let opts = qstore::StoreOptions {
        handle_cache: std::num::NonZeroUsize::new(3).unwrap(),
        map_threshold,
        ..Default::default()
    };
    let store = Store::open_with(dir.path(), opts).unwrap();
    for i in 0..10 {
        store
            .write_feature(&format!("S{i}"), "close", Freq::DAY, Some(0), &[i as f32])
            .unwrap();
    }
    for round in 0..3 {
        for i in 0..10 {
            let v = store
                .read(&format!("S{i}"), "close", Freq::DAY, 0..4)
                .unwrap();
            assert_eq!(&v[..], &[i as f32], "round {round}");
            assert_eq!(v.file().unwrap().is_mapped(), map_threshold == 0);
            assert!(
                store.open_handles() <= 3,
                "the handle cache grew past its bound"
            );
        }
    }
    assert_eq!(store.open_handles(), 3);
}

#[test]
fn freqs_and_markets_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::store_with_calendar(dir.path(), 2);
    let minute = Calendar::new(
        Freq::MINUTE,
        vec![
            parse_timestamp("2020-01-02 09:31:00").unwrap(),
            parse_timestamp("2020-01-02 09:32:00").unwrap(),
        ],
    )
    .unwrap();
    store.save_calendar(&minute).unwrap();
    std::fs::write(
        dir.path().join("calendars/day_future.txt"),
        "2020-01-01\n2020-01-02\n2020-01-03\n",
    )
    .unwrap();
    assert_eq!(store.freqs().unwrap(), vec![Freq::MINUTE, Freq::DAY]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("calendars/1min.txt")).unwrap(),
        "2020-01-02 09:31:00\n2020-01-02 09:32:00\n"
    );
    assert_eq!(store.future_calendar(Freq::DAY).unwrap().len(), 3);
    assert_eq!(
        store.future_calendar(Freq::MINUTE).unwrap().len(),
        2,
        "falls back to the plain calendar"
    );
    store
        .save_instruments("CSI300", &qstore::Instruments::new())
        .unwrap();
    assert_eq!(store.markets().unwrap(), vec!["csi300".to_string()]);
}

#[test]
fn calendars_and_instruments_are_served_from_memory_and_invalidated_by_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::store_with_calendar(dir.path(), 3);
    let mut ins = qstore::Instruments::new();
    let span = |a: &str, b: &str| qstore::Span {
        start: parse_timestamp(a).unwrap(),
        end: parse_timestamp(b).unwrap(),
    };
    ins.push("A", span("2020-01-01", "2020-01-03")).unwrap();
    store.save_instruments("all", &ins).unwrap();
    for _ in 0..3 {
        assert_eq!(store.instruments("all").unwrap().len(), 1);
        assert_eq!(store.calendar(Freq::DAY).unwrap().len(), 3);
    }
    let stats = store.cache_stats();
    let (c, i) = (stats.calendar, stats.instruments);
    assert_eq!((i.misses, i.hits), (1, 2), "{i:?}");
    assert!(c.hits >= 2, "{c:?}");
    // a write through the store is seen at once
    ins.push("B", span("2020-01-02", "2020-01-03")).unwrap();
    store.save_instruments("ALL", &ins).unwrap();
    assert_eq!(store.instruments("all").unwrap().len(), 2);
    // another process's write is seen after refresh
    std::fs::write(
        dir.path().join("instruments/all.txt"),
        "C\t2020-01-01\t2020-01-02\n",
    )
    .unwrap();
    assert_eq!(store.instruments("all").unwrap().len(), 2);
    store.refresh();
    assert!(store.instruments("all").unwrap().spans("C").is_some());
}
