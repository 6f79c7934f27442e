//! Per-kernel cost at windows 5, 20, 60 and 250 over one 5,000-row series (20 years of days), beside the
//! baseline of the same series through `$x + 0` (load, one element-wise pass, output): the cost of a kernel
//! should not grow with its window where the algorithm allows (Mad is O(window) on purpose; see
//! docs/expressions.md). Also the repeated-query case of the feature cache: a `features()` call answered from
//! memory vs the same call evaluated from disk, and eight instruments evaluated one at a time vs in lanes. Figures and conditions in benches/README.md.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use qstore::expr::{Query, Scratch, parse};
use qstore::store::settings::Settings;
use qstore::{Calendar, Engine, Freq, Store, Universe, parse_timestamp};

const ROWS: usize = 5000;

fn series() -> Vec<f32> {
    let mut x = 100.0f64;
    (0..ROWS)
        .map(|i| {
            x *= 1.0 + ((i * 7919 % 1000) as f64 / 1000.0 - 0.5) * 0.04;
            if i % 97 == 13 { f32::NAN } else { x as f32 }
        })
        .collect()
}

fn kernels(c: &mut Criterion) {
    let mut fields: HashMap<(String, String), (usize, Vec<f32>)> = HashMap::new();
    fields.insert(("X".into(), "x".into()), (0, series()));
    fields.insert(
        ("X".into(), "y".into()),
        (0, series().iter().rev().copied().collect()),
    );
    let mut g = c.benchmark_group("kernel");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    let run = |q: &Query| q.evaluate(&fields, "X", 0..ROWS).unwrap();
    let base = Query::new(vec![parse("$x + 0").unwrap()]);
    g.bench_function("baseline $x+0", |b| b.iter(|| black_box(run(&base))));
    for op in [
        "Mean", "Std", "Skew", "Max", "IdxMax", "Med", "Rank", "Quantile", "Slope", "Rsquare",
        "Resi", "WMA", "Mad", "Corr",
    ] {
        for n in [5, 20, 60, 250] {
            let text = match op {
                "Quantile" => format!("Quantile($x,{n},0.8)"),
                "Corr" => format!("Corr($x,$y,{n})"),
                _ => format!("{op}($x,{n})"),
            };
            let q = Query::new(vec![parse(&text).unwrap()]);
            g.bench_with_input(BenchmarkId::new(op, n), &q, |b, q| {
                b.iter(|| black_box(run(q)))
            });
        }
    }
    g.finish();
}

/// Eight instruments of 750 rows evaluated one at a time (`evaluate_into`) and together in lanes
/// (`evaluate_lanes_into`), for the kernels that have lane versions and one that goes lane by lane (Max).
fn lanes(c: &mut Criterion) {
    const DAYS: usize = 750;
    let names: Vec<String> = (0..Query::LANES).map(|l| format!("I{l}")).collect();
    let group: Vec<&str> = names.iter().map(String::as_str).collect();
    let all = series();
    let mut fields: HashMap<(String, String), (usize, Vec<f32>)> = HashMap::new();
    for (l, name) in names.iter().enumerate() {
        let x = all[l * 500..l * 500 + DAYS].to_vec();
        let y = x.iter().rev().copied().collect();
        fields.insert((name.clone(), "x".into()), (0, x));
        fields.insert((name.clone(), "y".into()), (0, y));
    }
    let mut g = c.benchmark_group("lanes 8x750");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    let mut scratch = Scratch::default();
    for text in [
        "Mean($x,20)",
        "Std($x,20)",
        "Corr($x,$y,20)",
        "Slope($x,20)",
        "Max($x,20)",
    ] {
        let q = Query::new(vec![parse(text).unwrap()]);
        let mut sum = 0.0;
        g.bench_function(BenchmarkId::new("one at a time", text), |b| {
            b.iter(|| {
                for name in &names {
                    q.evaluate_into(&fields, name, 0..DAYS, &mut scratch, |_, _, v| sum += v[0])
                        .unwrap();
                }
            })
        });
        g.bench_function(BenchmarkId::new("in lanes", text), |b| {
            b.iter(|| {
                let done = q
                    .evaluate_lanes_into(&fields, &group, 0..DAYS, &mut scratch, |_, _, _, v| {
                        sum += v[0]
                    })
                    .unwrap();
                assert!(done);
            })
        });
        black_box(sum);
    }
    g.finish();
}

/// A store of `symbols` instruments x 750 days with a close field.
fn store(dir: &std::path::Path, symbols: usize) -> Engine {
    let s = Engine::open_with(
        {
            let s = Store::create(dir).unwrap();
            let first = parse_timestamp("2020-01-01").unwrap();
            let days = (0..750)
                .map(|k| first + chrono::Days::new(k))
                .collect::<Vec<_>>();
            s.save_calendar(&Calendar::new(Freq::DAY, days).unwrap())
                .unwrap();
            dir
        },
        Settings::resolve(dir, &Default::default()).unwrap(),
    )
    .unwrap();
    let values: Vec<f32> = series()[..750].to_vec();
    for i in 0..symbols {
        s.store()
            .write_feature(&format!("SH{:06}", i), "close", Freq::DAY, Some(0), &values)
            .unwrap();
    }
    s
}

fn repeated_features(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 50);
    let list: Vec<String> = (0..50).map(|i| format!("SH{:06}", i)).collect();
    let exprs = [
        "Mean($close,5)",
        "Std($close,20)",
        "Corr($close,Ref($close,1),10)",
    ];
    let q = |s: &Engine| {
        s.features(Universe::List(&list), &exprs, None, None, Freq::DAY)
            .unwrap()
    };
    let mut g = c.benchmark_group("features 50x750x3");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    g.bench_function("from memory (feature cache hit)", |b| {
        q(&s);
        b.iter(|| black_box(q(&s)))
    });
    g.bench_function("evaluated (cache cleared each time)", |b| {
        b.iter(|| {
            s.refresh();
            black_box(q(&s))
        })
    });
    g.finish();
}

criterion_group!(benches, kernels, lanes, repeated_features);
criterion_main!(benches);
