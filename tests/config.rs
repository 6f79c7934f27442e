//! Store configuration: qstore.json, then QSTORE_* variables, then qlib's defaults.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use qstore::store::CacheConfig;
use qstore::store::settings::{self, CONFIG_FILE};
use qstore::{Freq, Limit, Store};

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn defaults_then_file_then_environment() {
    let dir = tempfile::tempdir().unwrap();
    let o = settings::load_with(dir.path(), &env(&[])).unwrap();
    let qlib = CacheConfig {
        limit: Limit::Entries(500),
        expiry: Some(Duration::from_secs(3600)),
    };
    assert_eq!(
        (o.calendar_cache, o.instrument_cache, o.feature_cache),
        (qlib, qlib, qlib)
    );
    assert_eq!((o.handle_cache.get(), o.map_threshold), (16_384, 65_536));

    std::fs::write(
        dir.path().join(CONFIG_FILE),
        r#"{"mem_cache": {"calendar": {"limit": 1000000, "limit_type": "bytes", "expire_s": 0},
                          "instruments": {"limit": 7}},
            "map_threshold": 0}"#,
    )
    .unwrap();
    let o = settings::load_with(dir.path(), &env(&[])).unwrap();
    assert_eq!(
        o.calendar_cache,
        CacheConfig {
            limit: Limit::Bytes(1_000_000),
            expiry: None
        }
    );
    assert_eq!(o.instrument_cache.limit, Limit::Entries(7));
    assert_eq!(o.map_threshold, 0);

    let o = settings::load_with(
        dir.path(),
        &env(&[
            ("QSTORE_MEMCACHE_INSTRUMENTS_LIMIT", "9"),
            ("QSTORE_MEMCACHE_INSTRUMENTS_EXPIRE_S", "5"),
            ("QSTORE_MEMCACHE_CALENDAR_LIMIT_TYPE", "length"),
            ("QSTORE_HANDLE_CACHE", "100"),
        ]),
    )
    .unwrap();
    assert_eq!(
        o.instrument_cache,
        CacheConfig {
            limit: Limit::Entries(9),
            expiry: Some(Duration::from_secs(5))
        }
    );
    assert_eq!(o.calendar_cache.limit, Limit::Entries(1_000_000));
    assert_eq!(o.handle_cache.get(), 100);
}

#[test]
fn typos_and_bad_values_are_errors_naming_where() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(CONFIG_FILE);
    for (text, want) in [
        (
            r#"{"mem_cache": {"calender": {}}}"#,
            "unknown field `calender`",
        ),
        (
            r#"{"mem_cache": {"calendar": {"limit_type": "sizeof"}}}"#,
            "use \"length\" or \"bytes\"",
        ),
        (r#"{"handle_cache": 0}"#, "must be at least 1"),
        ("{ not json", "line 1 column 3"),
    ] {
        std::fs::write(&file, text).unwrap();
        let err = settings::load_with(dir.path(), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{text}: {err}");
    }
    std::fs::remove_file(&file).unwrap();
    let err = settings::load_with(
        dir.path(),
        &env(&[("QSTORE_MEMCACHE_CALENDAR_LIMIT", "lots")]),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("QSTORE_MEMCACHE_CALENDAR_LIMIT"),
        "{err}"
    );
    // Store::open reports it too, and a bad file stops the open
    common::store_with_calendar(dir.path(), 2);
    std::fs::write(&file, r#"{"mem_cache": {"calender": {}}}"#).unwrap();
    assert!(
        Store::open(dir.path())
            .unwrap_err()
            .to_string()
            .contains("qstore.json")
    );
}

#[test]
fn the_store_uses_its_configuration() {
    let dir = tempfile::tempdir().unwrap();
    common::store_with_calendar(dir.path(), 2);
    // a calendar cache that holds nothing: every read goes to disk
    std::fs::write(
        dir.path().join(CONFIG_FILE),
        r#"{"mem_cache": {"calendar": {"limit": 0}}}"#,
    )
    .unwrap();
    let store = Store::open(dir.path()).unwrap();
    for _ in 0..3 {
        assert_eq!(store.calendar(Freq::DAY).unwrap().len(), 2);
    }
    let c = store.cache_stats().calendar;
    assert_eq!((c.hits, c.misses, c.entries), (0, 3, 0));
}
