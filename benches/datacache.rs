//! DiskDatasetCache: Alpha158 over a market (tools/bench-datasets.sh makes 300 instruments x 750 days and sets
//! QSTORE_BENCH_STORE; without it, the sample fixture). Measured in one run: building the dataset; reading the
//! whole range and one month from it; the same reads by recomputing (no caches) and from the expression
//! cache; and a plain memcpy of the same number of bytes (the ceiling). Throughput is the frame's bytes.
//! Figures in benches/README.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qstore::cache::expr::DiskExpressionCache;
use qstore::cache::lock::FileLock;
use qstore::dataset::{DiskCacheMode, DiskDatasetCache};
use qstore::store::CacheConfig;
use qstore::store::settings::Settings;
use qstore::util::memcache::Limit;
use qstore::{Engine, FeatureSet, Freq, Universe, import};

/// A store without the in-memory feature cache, so every query computes (or reads a disk cache).
fn uncached(root: &std::path::Path) -> Engine {
    let mut settings = Settings::resolve(root, &Default::default()).unwrap();
    settings.feature_cache = CacheConfig {
        limit: Limit::Entries(0),
        expiry: None,
    };
    Engine::open_with(root, settings).unwrap()
}

fn benches(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let root = match std::env::var_os("QSTORE_BENCH_STORE") {
        Some(r) => std::path::PathBuf::from(r),
        None => {
            let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sample");
            let csv = import::CsvSource::open(&fixtures, Default::default()).unwrap();
            let root = tmp.path().join("s");
            import::import(
                &csv,
                &root,
                &Default::default(),
                &Default::default(),
                &|_| {},
            )
            .unwrap();
            root
        }
    };
    let store = uncached(&root);
    let all = Universe::Market("all");
    let set = FeatureSet::resolve("alpha158").unwrap();
    let cols = store.feature_set_columns(all, &set, Freq::DAY).unwrap();
    let exprs: Vec<&str> = cols.iter().map(|f| f.expr.as_str()).collect();
    let cal = store.store().calendar(Freq::DAY).unwrap();
    let (m0, m1) = (cal.get(cal.len() - 21), cal.last());
    let dir = tmp.path().join("datasets");
    let datasets = DiskDatasetCache::new(&dir, Box::new(FileLock::new(&dir)));
    datasets
        .warm(&store, all, &exprs, Freq::DAY, false)
        .unwrap();
    let whole = datasets
        .dataset(
            &store,
            all,
            &exprs,
            None,
            None,
            Freq::DAY,
            DiskCacheMode::Use,
        )
        .unwrap();
    let month = datasets
        .dataset(&store, all, &exprs, m0, m1, Freq::DAY, DiskCacheMode::Use)
        .unwrap();
    // The expression cache of the same set, in a store that reads through it.
    let ec_dir = tmp.path().join("features_cache");
    let ec = Arc::new(DiskExpressionCache::new(
        &ec_dir,
        Box::new(FileLock::new(&ec_dir)),
    ));
    let parsed: Vec<_> = exprs
        .iter()
        .map(|e| qstore::expr::parse(e).unwrap())
        .collect();
    let symbols: Vec<String> = store
        .store()
        .instruments("all")
        .unwrap()
        .symbols()
        .map(String::from)
        .collect();
    ec.warm_all(store.store(), &symbols, &parsed, Freq::DAY, &|| {})
        .unwrap();
    let mut via_ec = uncached(&root);
    via_ec.set_expression_cache(ec, qstore::cache::expr::Mode::Read);
    eprintln!(
        "dataset: {} rows x {} columns ({} MB); one month: {} rows",
        whole.len(),
        exprs.len(),
        whole.values().len() * 4 / 1_000_000,
        month.len()
    );

    for (label, start, end, frame) in [("whole", None, None, &whole), ("month", m0, m1, &month)] {
        let bytes = frame.values().len() * 4;
        let mut g = c.benchmark_group(format!("datacache alpha158 {label}"));
        g.throughput(Throughput::Bytes(bytes as u64))
            .sample_size(10)
            .measurement_time(Duration::from_secs(if label == "whole" { 20 } else { 5 }))
            .warm_up_time(Duration::from_secs(1));
        let src = frame.values().to_vec();
        let mut dst = vec![0f32; src.len()];
        g.bench_function("memcpy of the same bytes (ceiling)", |b| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&dst);
            })
        });
        g.bench_function("dataset cache read", |b| {
            b.iter(|| {
                datasets
                    .dataset(
                        &store,
                        all,
                        &exprs,
                        start,
                        end,
                        Freq::DAY,
                        DiskCacheMode::Use,
                    )
                    .unwrap()
            })
        });
        g.bench_function("expression cache read", |b| {
            b.iter(|| via_ec.features(all, &exprs, start, end, Freq::DAY).unwrap())
        });
        g.bench_function("recompute", |b| {
            b.iter(|| store.features(all, &exprs, start, end, Freq::DAY).unwrap())
        });
        if label == "whole" {
            g.bench_function("build the dataset", |b| {
                b.iter(|| datasets.warm(&store, all, &exprs, Freq::DAY, true).unwrap())
            });
        }
        g.finish();
    }
}

criterion_group!(group, benches);
criterion_main!(group);
