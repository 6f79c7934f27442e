//! Expression-cache metas: any bytes as an entry's `.meta` are a miss or the entry's own values, never a panic
//! or other values; verify and the stale count read them without panicking.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use qstore::cache::expr::DiskExpressionCache;
use qstore::cache::lock::FileLock;
use qstore::{Calendar, Freq, Store};

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    cache: DiskExpressionCache,
    expr: qstore::expr::Expr,
    meta: std::path::PathBuf,
    values: Vec<f32>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let store = Store::create(&root).unwrap();
        let days: Vec<_> = (1..=20)
            .map(|d| qstore::parse_timestamp(&format!("2023-01-{d:02}")).unwrap())
            .collect();
        store.save_calendar(&Calendar::new(Freq::DAY, days).unwrap()).unwrap();
        let close: Vec<f32> = (0..20).map(|k| 10.0 + k as f32).collect();
        store.write_feature("SH600000", "close", Freq::DAY, Some(0), &close).unwrap();
        let cache_dir = root.join("features_cache");
        let cache = DiskExpressionCache::new(&cache_dir, Box::new(FileLock::new(&cache_dir)));
        let expr = qstore::expr::parse("Mean($close, 3)").unwrap();
        cache.warm(&store, &expr, "SH600000", Freq::DAY).unwrap();
        let values = cache.read(&store, &expr, "SH600000", Freq::DAY, 0..20).unwrap().unwrap();
        let key = qstore::cache::expr::key(&expr, "SH600000", Freq::DAY);
        let meta = cache_dir.join("sh600000").join(format!("{key}.meta"));
        Fixture { _dir: dir, store, cache, expr, meta, values }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    std::fs::write(&f.meta, data).unwrap();
    f.cache.refresh();
    if let Some(v) = f.cache.read(&f.store, &f.expr, "SH600000", Freq::DAY, 0..20).unwrap() {
        let same = v.iter().zip(&f.values).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "a meta made the cache serve other values");
    }
    let _ = f.cache.verify();
    let _ = f.cache.stale(&f.store);
});
