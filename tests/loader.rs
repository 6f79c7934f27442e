//! `KlineLoader`: TTL with a controllable clock, refresh when the range is not covered, force refresh, many
//! loaders updating once, backfill after `clear`, and serving without a source.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use qstore::import::{self, CsvSource, Source};
use qstore::loader::{KlineLoader, SourceFactory};
use qstore::{Freq, Store, Timestamp, parse_timestamp};

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sample");

fn d(s: &str) -> Timestamp {
    parse_timestamp(s).unwrap()
}

fn build(dir: &Path, end: &str) -> PathBuf {
    let opts = import::FileOptions {
        end: Some(d(end)),
        ..Default::default()
    };
    let csv = CsvSource::open(Path::new(SAMPLE), opts).unwrap();
    let root = dir.join("s");
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

/// The sample as a source whose data reach only to `today` (days "arrive" when the test moves it).
fn source(today: Arc<Mutex<Timestamp>>) -> Arc<SourceFactory> {
    Arc::new(move |start, symbols| {
        let opts = import::FileOptions {
            start,
            end: Some(*today.lock().unwrap()),
            symbols,
            ..Default::default()
        };
        Ok(Box::new(CsvSource::open(Path::new(SAMPLE), opts)?) as Box<dyn Source>)
    })
}

fn last_day(root: &Path) -> Timestamp {
    Store::open(root)
        .unwrap()
        .calendar(Freq::DAY)
        .unwrap()
        .last()
        .unwrap()
}

#[test]
fn ttl_coverage_and_force_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let root = build(dir.path(), "2023-06-30");
    let today = Arc::new(Mutex::new(d("2023-07-31")));
    let offset = Arc::new(AtomicU64::new(0));
    let clock = {
        let offset = offset.clone();
        Arc::new(move || SystemTime::now() + Duration::from_secs(offset.load(Ordering::SeqCst)))
    };
    let ttl = Duration::from_secs(24 * 3600);
    let loader = KlineLoader::new(&root, Some(source(today.clone())), ttl).with_clock(clock);

    // Never updated: the first load updates.
    let f = loader
        .load("SH600000", Some(d("2023-07-01")), None)
        .unwrap();
    assert_eq!(last_day(&root), d("2023-07-31"));
    assert_eq!(f.datetime(f.len() - 1), d("2023-07-31"));
    assert!(f.columns().contains(&"close".to_string()));
    let stamp = loader.cache_info().unwrap().last_update.unwrap();

    // Fresh, and the range is covered: no update even though new days exist at the source.
    *today.lock().unwrap() = d("2023-08-31");
    loader
        .load("SH600000", None, Some(d("2023-07-20")))
        .unwrap();
    assert_eq!(loader.cache_info().unwrap().last_update.unwrap(), stamp);
    assert_eq!(last_day(&root), d("2023-07-31"));

    // Fresh, but the range reaches past the store: update.
    let f = loader
        .load("SH600000", None, Some(d("2023-08-15")))
        .unwrap();
    assert_eq!(last_day(&root), d("2023-08-31"));
    assert_eq!(f.datetime(f.len() - 1), d("2023-08-15"));

    // Older than the TTL: update.
    *today.lock().unwrap() = d("2023-09-29");
    loader.load("SH600000", None, None).unwrap();
    assert_eq!(last_day(&root), d("2023-08-31"), "still fresh");
    offset.store(ttl.as_secs() + 60, Ordering::SeqCst);
    loader.load("SH600000", None, None).unwrap();
    assert_eq!(last_day(&root), d("2023-09-28"));

    // force_refresh ignores the TTL.
    *today.lock().unwrap() = d("2023-10-31");
    offset.store(0, Ordering::SeqCst);
    let s = loader.force_refresh().unwrap().expect("forced");
    assert!(s.days_added > 0);
    assert_eq!(last_day(&root), d("2023-10-31"));
    let info = loader.cache_info().unwrap();
    assert_eq!(info.symbols, 12);
    assert!(info.size_mb > 0.0);
    assert_eq!(info.ttl, ttl);
}

#[test]
fn loaders_started_together_update_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = build(dir.path(), "2023-06-30");
    // An update long ago: every loader finds the store stale.
    std::fs::write(root.join(".qstore-updated"), "1000\n").unwrap();
    let today = Arc::new(Mutex::new(d("2023-12-29")));
    let updated: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let l = KlineLoader::new(
                    &root,
                    Some(source(today.clone())),
                    Duration::from_secs(3600),
                );
                s.spawn(move || l.refresh(false).unwrap().is_some())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(updated.iter().filter(|u| **u).count(), 1, "{updated:?}");
    assert_eq!(last_day(&root), d("2023-12-29"));
}

#[test]
fn cleared_symbols_are_backfilled_and_equal_a_full_import() {
    let dir = tempfile::tempdir().unwrap();
    let root = build(dir.path(), "2024-01-11");
    let full = Store::open(&root).unwrap();
    let cal = full.calendar(Freq::DAY).unwrap();
    let want = full
        .read("SH600009", "close", Freq::DAY, 0..cal.len())
        .unwrap()
        .to_vec();
    drop(full);
    let today = Arc::new(Mutex::new(d("2024-01-11")));
    let loader = KlineLoader::new(&root, Some(source(today)), Duration::from_secs(3600));
    loader.clear("SH600009").unwrap();
    assert_eq!(loader.cache_info().unwrap().symbols, 11);
    assert!(!root.join("features/sh600009").exists());
    let f = loader.load("SH600009", None, None).unwrap();
    let c = f.columns().iter().position(|c| c == "close").unwrap();
    let got: Vec<u32> = (0..f.len()).map(|r| f.value(r, c).to_bits()).collect();
    assert_eq!(got, want.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    assert_eq!(loader.cache_info().unwrap().symbols, 12);
    loader.clear_all().unwrap();
    assert_eq!(loader.cache_info().unwrap().symbols, 0);
}

#[test]
fn without_a_source_it_serves_what_the_store_has() {
    let dir = tempfile::tempdir().unwrap();
    let root = build(dir.path(), "2023-06-30");
    let loader = KlineLoader::new(&root, None, Duration::from_secs(1));
    let f = loader
        .load("sh600000", None, Some(d("2023-12-31")))
        .unwrap();
    assert_eq!(f.datetime(f.len() - 1), d("2023-06-30"));
    let err = loader.load("SH999999", None, None).unwrap_err().to_string();
    assert!(err.contains("does not have this symbol"), "{err}");
    assert!(loader.load("../x", None, None).is_err());
}

#[test]
fn a_refresh_brings_the_expression_cache_forward() {
    let dir = tempfile::tempdir().unwrap();
    let root = build(dir.path(), "2023-06-30");
    let cache = qstore::cache::expr::DiskExpressionCache::for_store(&root, false).unwrap();
    let e = qstore::expr::parse("Mean($close, 5)").unwrap();
    let store = Store::open(&root).unwrap();
    cache.warm(&store, &e, "SH600000", Freq::DAY).unwrap();
    let today = Arc::new(Mutex::new(d("2023-07-31")));
    let loader = KlineLoader::new(&root, Some(source(today)), Duration::from_secs(3600));
    loader.load("SH600000", None, None).unwrap();
    let store = Store::open(&root).unwrap();
    let fresh = qstore::cache::expr::DiskExpressionCache::for_store(&root, true).unwrap();
    let got = fresh.read(
        &store,
        &e,
        "SH600000",
        Freq::DAY,
        0..store.calendar(Freq::DAY).unwrap().len(),
    );
    assert!(got.unwrap().is_some(), "the entry follows the new days");
}
