//! Dataset-cache metas: any bytes as a dataset's `.meta` give the dataset's own values (read, or rebuilt), never
//! a panic; verify reads them without panicking.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use qstore::dataset::{DiskCacheMode, DiskDatasetCache};
use qstore::cache::lock::FileLock;
use qstore::{Calendar, Engine, Freq, Store, Universe};

struct Fixture {
    _dir: tempfile::TempDir,
    store: Engine,
    cache: DiskDatasetCache,
    meta: std::path::PathBuf,
    rows: Vec<Vec<f32>>,
}

const EXPRS: [&str; 2] = ["Mean($close, 3)", "$close"];

fn rows(frame: &qstore::Frame) -> Vec<Vec<f32>> {
    (0..frame.len()).map(|r| frame.row(r).to_vec()).collect()
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
        store.save_calendar(&Calendar::new(Freq::DAY, days.clone()).unwrap()).unwrap();
        let mut inst = qstore::Instruments::new();
        for (k, sym) in ["SH600000", "SZ000002"].iter().enumerate() {
            let close: Vec<f32> = (0..20).map(|d| (k * 100 + d) as f32).collect();
            store.write_feature(sym, "close", Freq::DAY, Some(0), &close).unwrap();
            inst.push(sym, qstore::Span { start: days[0], end: days[19] }).unwrap();
        }
        store.save_instruments("all", &inst).unwrap();
        let store = Engine::open(&root).unwrap();
        let cache_dir = root.join("dataset_cache");
        let cache = DiskDatasetCache::new(&cache_dir, Box::new(FileLock::new(&cache_dir)));
        let frame = cache
            .dataset(&store, Universe::Market("all"), &EXPRS, None, None, Freq::DAY, DiskCacheMode::Use)
            .unwrap();
        let meta = std::fs::read_dir(&cache_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "meta"))
            .unwrap();
        Fixture { _dir: dir, rows: rows(&frame), store, cache, meta }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    std::fs::write(&f.meta, data).unwrap();
    f.cache.refresh();
    let _ = f.cache.verify();
    let frame = f
        .cache
        .dataset(&f.store, Universe::Market("all"), &EXPRS, None, None, Freq::DAY, DiskCacheMode::Use)
        .expect("a damaged meta is a miss, rebuilt");
    let got = rows(&frame);
    let same = got.len() == f.rows.len()
        && got.iter().flatten().zip(f.rows.iter().flatten()).all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same, "a meta made the dataset cache serve other values");
});
