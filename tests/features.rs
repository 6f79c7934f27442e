//! `Engine::features` (and `features_by_column`) and feature sets over the sample store and hand-built stores: rows, ranges, the feature
//! cache and its invalidation, errors, writers.

mod common;

use std::path::Path;

use qstore::expr::{evaluate, parse};
use qstore::store::settings::Settings;
use qstore::{Engine, Error, FeatureSet, Freq, Store, Universe, import, parse_timestamp};

fn sample_store(dir: &Path) -> Engine {
    let fixtures = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sample"));
    let csv = import::CsvSource::open(fixtures, Default::default()).unwrap();
    let root = dir.join("store");
    import::import(
        &csv,
        &root,
        &Default::default(),
        &Default::default(),
        &|_| {},
    )
    .unwrap();
    Engine::open(root).unwrap()
}

fn ts(s: &str) -> qstore::Timestamp {
    parse_timestamp(s).unwrap()
}

/// A market where instruments have several spans (months of gap between them). SH688001's data starts on
/// 2023-05-18: the rows of its first span before that are NaN.
fn gaps_market() -> qstore::Instruments {
    let span = |a: &str, b: &str| qstore::Span {
        start: ts(a),
        end: ts(b),
    };
    let mut gaps = qstore::Instruments::new();
    for (sym, a, b) in [
        ("SH600000", "2023-01-03", "2023-03-31"),
        ("SH600000", "2023-06-01", "2023-09-29"),
        ("SZ000002", "2023-02-01", "2023-11-30"),
        ("SH688001", "2023-01-03", "2023-06-30"),
        ("SH688001", "2023-08-01", "2023-10-31"),
    ] {
        gaps.push(sym, span(a, b)).unwrap();
    }
    gaps
}

#[test]
fn market_rows_follow_the_spans_and_values_equal_direct_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let s = sample_store(dir.path());
    // A market where one instrument has two spans (a gap of months between them).
    let gaps = gaps_market();
    s.store().save_instruments("gaps", &gaps).unwrap();
    // Small queries go through the feature cache; with no room in it, every value is evaluated and
    // placed straight into the frame (in tiles of rows, or row by row where spans leave gaps).
    let mut settings = Settings::resolve(s.store().root(), &Default::default()).unwrap();
    settings.feature_cache = qstore::store::CacheConfig {
        limit: qstore::Limit::Entries(0),
        expiry: None,
    };
    let uncached = Engine::open_with(s.store().root(), settings).unwrap();
    for store in [&s, &uncached] {
        for market in ["all", "gaps"] {
            let f = check_market(store, market);
            if market == "all" {
                // SH600009 stops trading in August: its rows stop there, and Ref(.., -1) is NaN on its
                // last day.
                let r = f.rows_of("SH600009");
                assert_eq!(f.datetime(r.end - 1), ts("2023-08-24"));
                assert!(f.value(r.end - 1, 2).is_nan());
                assert!(!f.value(r.end - 2, 2).is_nan() || f.value(r.end - 2, 0).is_nan());
            }
        }
    }
}

/// Queries `market` and checks its rows against the spans and its values against direct evaluation.
fn check_market(s: &Engine, market: &str) -> qstore::Frame {
    let exprs = [
        "$close",
        "Mean($close, 5)",
        "Ref($close, -1) / $close - 1",
        "Rank($volume, 20)",
        // Its series is SH688001's (from 2023-05-18): NaN on the earlier rows of every instrument.
        "ChangeInstrument('SH688001', $close)",
    ];
    let f = s
        .features(Universe::Market(market), &exprs, None, None, Freq::DAY)
        .unwrap();
    let cal = s.store().calendar(Freq::DAY).unwrap();
    let ins = s.store().instruments(market).unwrap();
    assert_eq!(f.instruments().len(), ins.len());
    assert_eq!(f.columns(), &exprs.map(String::from));
    let fields = qstore_fields(s.store());
    let parsed: Vec<_> = exprs.iter().map(|e| parse(e).unwrap()).collect();
    for (sym, spans) in ins.iter() {
        let rows = f.rows_of(sym);
        let want: Vec<usize> = spans
            .iter()
            .flat_map(|sp| cal.locate(Some(sp.start), Some(sp.end)))
            .collect();
        let got: Vec<usize> = rows.clone().map(|r| f.calendar_row(r)).collect();
        assert_eq!(
            got, want,
            "{market} {sym}: one row per calendar day of its spans"
        );
        // The same numbers as evaluating one instrument directly.
        let direct = evaluate(&fields, sym, &parsed, want[0]..want[want.len() - 1] + 1).unwrap();
        for (i, r) in rows.enumerate() {
            for (c, col) in direct.iter().enumerate() {
                let (a, b) = (f.value(r, c), col[want[i] - want[0]]);
                assert!(
                    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                    "{market} {sym} row {i} column {c}: {a} vs {b}"
                );
            }
        }
    }
    f
}

/// The store's fields as the evaluator reads them, built from the public API.
fn qstore_fields(s: &Store) -> std::collections::HashMap<(String, String), (usize, Vec<f32>)> {
    let mut m = std::collections::HashMap::new();
    for (sym, _) in s.instruments("all").unwrap().iter() {
        for field in s.fields_of(sym, Freq::DAY).unwrap() {
            let f = s.feature(sym, &field, Freq::DAY).unwrap().unwrap();
            m.insert((sym.to_string(), field), (f.start(), f.values().to_vec()));
        }
    }
    m
}

#[test]
fn a_date_range_gives_the_same_values_as_the_full_history() {
    let dir = tempfile::tempdir().unwrap();
    let s = sample_store(dir.path());
    let exprs = [
        "EMA($close, 12)",
        "Std($close, 20)",
        "Delta($close, 3)",
        "Rank($volume, 0)",
    ];
    let list = vec!["SH600000".to_string(), "SZ300009".to_string()];
    let full = s
        .features(Universe::List(&list), &exprs, None, None, Freq::DAY)
        .unwrap();
    let part = s
        .features(
            Universe::List(&list),
            &exprs,
            Some(ts("2023-06-01")),
            Some(ts("2023-09-30")),
            Freq::DAY,
        )
        .unwrap();
    assert!(part.len() > 100 && part.len() < full.len());
    for r in 0..part.len() {
        let inst = part.instrument(r);
        let fr = full
            .rows_of(inst)
            .find(|&x| full.calendar_row(x) == part.calendar_row(r))
            .unwrap();
        assert!(part.datetime(r) >= ts("2023-06-01") && part.datetime(r) <= ts("2023-09-30"));
        for c in 0..exprs.len() {
            assert_eq!(part.value(r, c).to_bits(), full.value(fr, c).to_bits());
        }
    }
}

#[test]
fn repeated_queries_come_from_memory_and_writes_invalidate_them() {
    let dir = tempfile::tempdir().unwrap();
    common::store_with_calendar(dir.path(), 10);
    let s = Engine::open(dir.path()).unwrap();
    let w = s.store();
    w.write_feature("SH600000", "close", Freq::DAY, Some(0), &[1.0; 10])
        .unwrap();
    w.write_feature("SZ000001", "close", Freq::DAY, Some(0), &[2.0; 10])
        .unwrap();
    let list = vec!["SH600000".to_string(), "SZ000001".to_string()];
    let q = |s: &Engine| {
        s.features(
            Universe::List(&list),
            &["Mean($close, 3)"],
            None,
            None,
            Freq::DAY,
        )
        .unwrap()
    };
    let first = q(&s);
    let before = s.cache_stats().features;
    let second = q(&s);
    let after = s.cache_stats().features;
    assert_eq!(after.hits - before.hits, 2, "both instruments from memory");
    assert_eq!(after.misses, before.misses);
    assert_eq!(first.values(), second.values());
    // A write to one instrument drops its entries only.
    w.rewrite_feature("SH600000", "close", Freq::DAY, 0, &[4.0; 10])
        .unwrap();
    let third = q(&s);
    let last = s.cache_stats().features;
    assert_eq!(last.misses - after.misses, 1, "SH600000 recomputed");
    assert_eq!(last.hits - after.hits, 1, "SZ000001 still cached");
    assert_eq!(third.value(third.rows_of("SH600000").start, 0), 4.0);
    assert_eq!(third.value(third.rows_of("SZ000001").start, 0), 2.0);
}

#[test]
fn unknown_fields_and_bad_expressions_are_positioned_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = sample_store(dir.path());
    let q = |e: &str| s.features(Universe::Market("all"), &[e], None, None, Freq::DAY);
    match q("Mean($clsoe, 5) + 1") {
        Err(Error::Expr { pos, reason, .. }) => {
            assert_eq!(pos, 5);
            assert!(reason.contains("unknown field $clsoe"), "{reason}");
            assert!(
                reason.contains("close"),
                "lists the fields there are: {reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    for (bad, pos) in [
        ("Foo($close, 5)", 0),
        ("Mean($close)", 0),
        ("Mean($close, -5)", 13),
        ("Mean($close, 'x')", 13),
        ("Corr($close, $open, 0)", 20),
        ("Kurt($close, 3)", 13),
    ] {
        match q(bad) {
            Err(Error::Expr { pos: p, .. }) => assert_eq!(p, pos, "{bad}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
    let err = q("Mean($close, 5").unwrap_err().to_string();
    assert!(err.contains('^'), "a caret under the position: {err}");
}

#[test]
fn feature_sets_name_columns_and_drop_optional_features_without_data() {
    let dir = tempfile::tempdir().unwrap();
    let s = sample_store(dir.path());
    let set = FeatureSet::resolve("technical").unwrap();
    assert!(set.features.len() >= 45, "{}", set.features.len());
    let f = s
        .feature_set(
            Universe::Market("all"),
            &set,
            Some(ts("2023-12-01")),
            None,
            Freq::DAY,
        )
        .unwrap();
    assert!(f.columns().contains(&"MACD_DIF".to_string()));
    assert!(
        f.columns().contains(&"AMOUNT_MA5".to_string()),
        "amount exists"
    );
    assert!(
        !f.columns().contains(&"TURNOVER".to_string()),
        "no turnover in the sample"
    );
    // MACD histogram = 2 (DIF - DEA), evaluated independently.
    let c = |n: &str| f.columns().iter().position(|x| x == n).unwrap();
    for r in 0..f.len() {
        let (dif, dea, hist) = (
            f.value(r, c("MACD_DIF")),
            f.value(r, c("MACD_DEA")),
            f.value(r, c("MACD_HIST")),
        );
        assert!((2.0 * (dif - dea) - hist).abs() <= 1e-5 * hist.abs().max(1.0));
    }
    let alpha = FeatureSet::resolve("alpha158").unwrap();
    assert_eq!(alpha.features.len(), 158);
}

#[test]
fn user_feature_set_files_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("mine.json");
    std::fs::write(
        &good,
        r#"{"name":"mine","features":[{"name":"R","expr":"$close/Ref($close,1)-1"}]}"#,
    )
    .unwrap();
    let set = FeatureSet::resolve(good.to_str().unwrap()).unwrap();
    assert_eq!(set.features[0].name, "R");
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"name":"b","features":[{"name":"X","expr":"Mean($close"}]}"#,
    )
    .unwrap();
    let err = FeatureSet::resolve(bad.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad.json") && err.contains("feature X"),
        "{err}"
    );
    let dup = dir.path().join("dup.json");
    std::fs::write(
        &dup,
        r#"{"name":"d","features":[{"name":"X","expr":"$close"},{"name":"X","expr":"$open"}]}"#,
    )
    .unwrap();
    let err = FeatureSet::resolve(dup.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("appears twice"), "{err}");
    let err = FeatureSet::resolve("alpha999").unwrap_err().to_string();
    assert!(err.contains("alpha158, alpha360, technical"), "{err}");
}

#[test]
fn csv_and_json_writers_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let s = sample_store(dir.path());
    let list = vec!["SH600000".to_string()];
    let f = s
        .features(
            Universe::List(&list),
            &["$high", "Std($close, 5)"],
            None,
            Some(ts("2023-02-01")),
            Freq::DAY,
        )
        .unwrap();
    let write = |format| {
        let mut out = Vec::new();
        let header = qstore::query::output::Header {
            columns: f.columns().to_vec(),
            instruments: f.instruments().to_vec(),
            freq: Freq::DAY,
            path: "-".into(),
        };
        let mut sink = qstore::query::output::sink(format, &mut out, header).unwrap();
        sink.write(&f.to_columns()).unwrap();
        sink.finish().unwrap();
        out
    };
    let csv_out = write(qstore::query::output::Format::Csv);
    let mut rd = csv::Reader::from_reader(csv_out.as_slice());
    assert_eq!(
        rd.headers().unwrap().iter().collect::<Vec<_>>(),
        ["instrument", "datetime", "$high", "Std($close, 5)"]
    );
    let json_out = write(qstore::query::output::Format::Json);
    let lines: Vec<serde_json::Value> = json_out
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    for (r, rec) in rd.records().enumerate() {
        let rec = rec.unwrap();
        assert_eq!(&rec[1], f.datetime(r).date().to_string());
        for c in 0..2 {
            let v = f.value(r, c);
            let cell = &rec[2 + c];
            let j = &lines[r][&f.columns()[c]];
            if v.is_nan() {
                assert_eq!(cell, "");
                assert!(j.is_null());
            } else {
                assert_eq!(cell.parse::<f32>().unwrap().to_bits(), v.to_bits());
                assert_eq!(j.as_f64().unwrap() as f32, v);
            }
        }
    }
    assert_eq!(lines.len(), f.len());
    assert!(
        f.column(0).iter().any(|v| v.is_nan()),
        "the sample has missing highs"
    );
}

/// A column-major query holds the bits of the row-major one, on every evaluation path: the feature cache
/// (small queries), the direct path (no room in it), spans with gaps (row by row), and the disk expression
/// cache.
#[test]
fn column_frames_hold_the_same_values_as_frames() {
    let dir = tempfile::tempdir().unwrap();
    let s = sample_store(dir.path());
    let root = s.store().root().to_path_buf();
    let gaps = gaps_market();
    s.store().save_instruments("gaps", &gaps).unwrap();
    let mut settings = Settings::resolve(&root, &Default::default()).unwrap();
    settings.feature_cache = qstore::store::CacheConfig {
        limit: qstore::Limit::Entries(0),
        expiry: None,
    };
    let uncached = Engine::open_with(&root, settings).unwrap();
    let exprs = ["$close", "Mean($close, 5)", "Ref($close, -1) / $close - 1"];
    // The disk cache path: every expression warmed, read back in `read` mode.
    let cache = qstore::cache::expr::DiskExpressionCache::for_store(&root, false).unwrap();
    let symbols: Vec<String> = s
        .store()
        .instruments("all")
        .unwrap()
        .symbols()
        .map(String::from)
        .collect();
    let parsed: Vec<_> = exprs.iter().map(|e| parse(e).unwrap()).collect();
    cache
        .warm_all(s.store(), &symbols, &parsed, Freq::DAY, &|| {})
        .unwrap();
    let from_disk = Engine::open(&root).unwrap();
    assert!(from_disk.expression_cache().is_some());
    let list = vec!["SH600000".to_string(), "SZ000002".to_string()];
    for engine in [&s, &uncached, &from_disk] {
        for universe in [
            Universe::Market("all"),
            Universe::Market("gaps"),
            Universe::List(&list),
        ] {
            let rows = engine
                .features(universe, &exprs, None, None, Freq::DAY)
                .unwrap();
            let cols = engine
                .features_by_column(universe, &exprs, None, None, Freq::DAY)
                .unwrap();
            assert_eq!(cols.instruments(), rows.instruments());
            assert_eq!(cols.index(), rows.index());
            assert_eq!(cols.columns(), rows.columns());
            assert!(!cols.is_empty());
            for c in 0..exprs.len() {
                let want: Vec<u32> = rows.column(c).iter().map(|v| v.to_bits()).collect();
                let got: Vec<u32> = cols.column(c).iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, want, "{universe:?} column {c}");
            }
            // Part by part (parts of 1 and of 5 instruments): the same rows and values, in order.
            let rows_of = |f: &qstore::ColumnFrame| -> Vec<(String, u32)> {
                f.index()
                    .iter()
                    .map(|&(i, r)| (f.instruments()[i as usize].clone(), r))
                    .collect()
            };
            for size in [1, 5] {
                let (mut rows, mut values, mut parts) = (Vec::new(), vec![Vec::new(); 3], 0);
                engine
                    .features_in_parts(universe, &exprs, None, None, Freq::DAY, size, |p| {
                        assert_eq!(p.columns(), cols.columns());
                        assert!(p.instruments().len() <= size);
                        rows.extend(rows_of(&p));
                        for (c, v) in values.iter_mut().enumerate() {
                            v.extend(p.column(c).iter().map(|x| x.to_bits()));
                        }
                        parts += 1;
                        Ok(())
                    })
                    .unwrap();
                assert_eq!(rows, rows_of(&cols), "{universe:?} in parts of {size}");
                let n = engine
                    .instruments_of(universe, None, None, Freq::DAY)
                    .unwrap()
                    .len();
                let expected = if n <= size { 1 } else { n.div_ceil(size) };
                assert_eq!(parts, expected, "{universe:?} in parts of {size}");
                for (c, v) in values.iter().enumerate() {
                    let want: Vec<u32> = cols.column(c).iter().map(|v| v.to_bits()).collect();
                    assert!(*v == want, "{universe:?} column {c} in parts of {size}");
                }
            }
        }
    }
    let set = FeatureSet::resolve("technical").unwrap();
    let by_rows = s
        .feature_set(Universe::List(&list), &set, None, None, Freq::DAY)
        .unwrap();
    let by_cols = s
        .feature_set_by_column(Universe::List(&list), &set, None, None, Freq::DAY)
        .unwrap();
    assert_eq!(by_cols.columns(), by_rows.columns());
    assert_eq!(
        by_cols
            .column(3)
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>(),
        by_rows
            .column(3)
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>()
    );
}

/// The parts of a query (what a cluster's partitions evaluate) are the whole query cut by instrument: the
/// same rows and values bit for bit, the same columns, and fields checked against the whole.
#[test]
fn parts_of_a_query_are_the_whole_query_cut_by_instrument() {
    let dir = tempfile::tempdir().unwrap();
    let s = sample_store(dir.path());
    s.store().save_instruments("gaps", &gaps_market()).unwrap();
    let exprs = ["$close", "Mean($close, 5)", "Corr($close, $volume, 10)"];
    let list: Vec<String> = ["SZ000002", "SH600000", "XX000000", "SH688001"]
        .map(String::from)
        .to_vec();
    let groups: [&[&str]; 3] = [&["SH600000"], &["SH688001", "SZ000002", "XX000000"], &[]];
    for whole in [Universe::Market("gaps"), Universe::List(&list)] {
        let (start, end) = (Some(ts("2023-02-15")), Some(ts("2023-10-15")));
        let full = s.features(whole, &exprs, start, end, Freq::DAY).unwrap();
        let mut rows: Vec<(String, u32, Vec<u32>)> = Vec::new();
        for g in groups {
            let part: Vec<String> = g.iter().map(|x| x.to_string()).collect();
            let f = s
                .features(Universe::Part(&whole, &part), &exprs, start, end, Freq::DAY)
                .unwrap();
            assert_eq!(f.columns(), full.columns());
            for (r, (i, d)) in f.index().iter().enumerate() {
                let bits = f.row(r).iter().map(|v| v.to_bits()).collect();
                rows.push((f.instruments()[*i as usize].clone(), *d, bits));
            }
        }
        let want: Vec<(String, u32, Vec<u32>)> = full
            .index()
            .iter()
            .enumerate()
            .map(|(r, (i, d))| {
                let bits = full.row(r).iter().map(|v| v.to_bits()).collect();
                (full.instruments()[*i as usize].clone(), *d, bits)
            })
            .collect();
        assert!(!want.is_empty());
        assert_eq!(rows, want, "{whole:?}");
    }
    // A part whose instruments have no data is checked as its whole: no rows, not an unknown-field error
    // (which the same instruments as a query of their own are).
    let absent = vec!["XX000000".to_string()];
    let part = s
        .features(
            Universe::Part(&Universe::List(&list), &absent),
            &exprs,
            None,
            None,
            Freq::DAY,
        )
        .unwrap();
    assert_eq!(part.len(), 0);
    assert!(matches!(
        s.features(Universe::List(&absent), &exprs, None, None, Freq::DAY),
        Err(Error::Expr { .. })
    ));
    // A feature set's columns are the whole query's, even for a part without the optional fields' data.
    let set = FeatureSet::resolve("technical").unwrap();
    let whole = s
        .feature_set(Universe::List(&list), &set, None, None, Freq::DAY)
        .unwrap();
    let part = s
        .feature_set(
            Universe::Part(&Universe::List(&list), &absent),
            &set,
            None,
            None,
            Freq::DAY,
        )
        .unwrap();
    assert!(whole.columns().contains(&"AMOUNT_MA5".to_string()));
    assert_eq!(part.columns(), whole.columns());
}

/// Eight of the sample's instruments span the same days, so a column-major query evaluates them together in
/// the engine's lanes (`Query::evaluate_lanes_into`) and the other four one at a time, while a row-major one
/// evaluates every instrument alone: Alpha158 and the technical set, every column, bit for bit the same.
#[test]
fn instruments_in_lanes_get_the_values_they_get_alone() {
    let dir = tempfile::tempdir().unwrap();
    let root = sample_store(dir.path()).store().root().to_path_buf();
    // Without the feature cache, which would answer the second query from the first.
    let mut settings = Settings::resolve(&root, &Default::default()).unwrap();
    settings.feature_cache = qstore::store::CacheConfig {
        limit: qstore::Limit::Entries(0),
        expiry: None,
    };
    let s = Engine::open_with(&root, settings).unwrap();
    let spans = s.store().instruments("all").unwrap();
    let full = spans
        .iter()
        .filter(|(_, sp)| {
            sp.len() == 1 && sp[0].end == ts("2024-01-11") && sp[0].start == ts("2023-01-03")
        })
        .count();
    assert_eq!(
        full,
        qstore::expr::Query::LANES,
        "the sample has one group of lanes"
    );
    for name in ["alpha158", "technical"] {
        let set = FeatureSet::resolve(name).unwrap();
        let rows = s
            .feature_set(Universe::Market("all"), &set, None, None, Freq::DAY)
            .unwrap();
        let cols = s
            .feature_set_by_column(Universe::Market("all"), &set, None, None, Freq::DAY)
            .unwrap();
        assert_eq!(cols.index(), rows.index());
        for c in 0..cols.columns().len() {
            let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(
                bits(cols.column(c).to_vec()) == bits(rows.column(c)),
                "{name} column {}",
                cols.columns()[c]
            );
        }
    }
}
