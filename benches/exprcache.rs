//! DiskExpressionCache: a hit (`read` of a current entry, validated once per process) beside a raw field read of
//! the same range through the same `Store` (the baseline), and the lock round trips of one miss with Redis
//! leases vs file locks (acquire + release, without the computation). Figures in benches/README.md.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use qstore::cache::expr::DiskExpressionCache;
use qstore::cache::lock::{FileLock, Lock, RedisLock};
use qstore::expr::parse;
use qstore::{Freq, Store, import};

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sample");
    let csv = import::CsvSource::open(&fixtures, Default::default()).unwrap();
    let root = dir.path().join("s");
    import::import(
        &csv,
        &root,
        &Default::default(),
        &Default::default(),
        &|_| {},
    )
    .unwrap();
    let store = Store::open(&root).unwrap();
    let cache_dir = root.join("features_cache");
    let cache = DiskExpressionCache::new(&cache_dir, Box::new(FileLock::new(&cache_dir)));
    let e = parse("Mean($close, 5)").unwrap();
    cache.warm(&store, &e, "SH600000", Freq::DAY).unwrap();
    let rows = 50..200;
    let canonical = e.to_string();

    let mut g = c.benchmark_group("exprcache");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("raw field read, 150 values into a Vec (baseline)", |b| {
        b.iter(|| {
            black_box(
                store
                    .read("SH600000", "close", Freq::DAY, rows.clone())
                    .unwrap()
                    .to_vec(),
            )
        })
    });
    g.bench_function("cache hit, 150 values into a Vec", |b| {
        b.iter(|| {
            black_box(
                cache
                    .read_canonical(&store, &canonical, &e, "SH600000", Freq::DAY, rows.clone())
                    .unwrap()
                    .unwrap(),
            )
        })
    });
    let file: Box<dyn Lock> = Box::new(FileLock::new(dir.path().join("locks")));
    g.bench_function("lock round trip: file", |b| {
        b.iter(|| drop(file.acquire("bench/entry", Duration::from_secs(5)).unwrap()))
    });
    let url = std::env::var("QSTORE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    match RedisLock::connect(
        &url,
        "bench",
        Duration::from_secs(30),
        "QSTORE_TEST_REDIS_URL",
    ) {
        Ok(redis) => {
            g.bench_function("lock round trip: redis", |b| {
                b.iter(|| {
                    drop(
                        redis
                            .acquire("bench/entry", Duration::from_secs(5))
                            .unwrap(),
                    )
                })
            });
        }
        Err(e) => panic!("{e}: tools/test.sh starts Redis"),
    }
    g.finish();
}

criterion_group!(group, benches);
criterion_main!(group);
