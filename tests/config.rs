//! Store configuration: qstore.json, then QSTORE_* variables, then qlib's defaults.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use qstore::store::CacheConfig;
use qstore::store::settings::{CONFIG_FILE, CacheMode, Compat, LockKind, Overrides, Settings};
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
    let o = Settings::resolve_with(dir.path(), &Overrides::default(), &env(&[])).unwrap();
    let qlib = CacheConfig {
        limit: Limit::Entries(500),
        expiry: Some(Duration::from_secs(3600)),
    };
    assert_eq!(
        (
            o.store.calendar_cache,
            o.store.instrument_cache,
            o.feature_cache
        ),
        (qlib, qlib, qlib)
    );
    assert_eq!(
        (o.store.handle_cache.get(), o.store.map_threshold),
        (16_384, 65_536)
    );

    std::fs::write(
        dir.path().join(CONFIG_FILE),
        r#"{"mem_cache": {"calendar": {"limit": 1000000, "limit_type": "bytes", "expire_s": 0},
                          "instruments": {"limit": 7}},
            "map_threshold": 0}"#,
    )
    .unwrap();
    let o = Settings::resolve_with(dir.path(), &Overrides::default(), &env(&[])).unwrap();
    assert_eq!(
        o.store.calendar_cache,
        CacheConfig {
            limit: Limit::Bytes(1_000_000),
            expiry: None
        }
    );
    assert_eq!(o.store.instrument_cache.limit, Limit::Entries(7));
    assert_eq!(o.store.map_threshold, 0);

    let o = Settings::resolve_with(
        dir.path(),
        &Overrides::default(),
        &env(&[
            ("QSTORE_MEMCACHE_INSTRUMENTS_LIMIT", "9"),
            ("QSTORE_MEMCACHE_INSTRUMENTS_EXPIRE_S", "5"),
            ("QSTORE_MEMCACHE_CALENDAR_LIMIT_TYPE", "length"),
            ("QSTORE_HANDLE_CACHE", "100"),
        ]),
    )
    .unwrap();
    assert_eq!(
        o.store.instrument_cache,
        CacheConfig {
            limit: Limit::Entries(9),
            expiry: Some(Duration::from_secs(5))
        }
    );
    assert_eq!(o.store.calendar_cache.limit, Limit::Entries(1_000_000));
    assert_eq!(o.store.handle_cache.get(), 100);
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
        let err = Settings::resolve_with(dir.path(), &Overrides::default(), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{text}: {err}");
    }
    std::fs::remove_file(&file).unwrap();
    let err = Settings::resolve_with(
        dir.path(),
        &Overrides::default(),
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

/// The cache section: each value from the flag, else the variable, else qstore.json, else the default; a bad
/// lease, lock or mode is an error naming where it came from.
#[test]
fn cache_settings_are_resolved_once_flag_then_environment_then_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let none = Overrides::default();
    let d = Settings::resolve_with(root, &none, &env(&[]))
        .unwrap()
        .cache;
    assert_eq!(d.dir, root.join("features_cache"));
    assert_eq!((d.redis_url, d.lock), (None, None));
    assert_eq!(d.lease, Duration::from_secs(30));
    assert_eq!(d.mode, CacheMode::Read);

    std::fs::write(
        root.join(CONFIG_FILE),
        r#"{"expression_cache": {"dir": "cache", "redis_url": "redis://file:1/0", "lock": "file",
            "lease_s": 12, "mode": "write"}}"#,
    )
    .unwrap();
    let f = Settings::resolve_with(root, &none, &env(&[]))
        .unwrap()
        .cache;
    assert_eq!(f.dir, root.join("cache"));
    assert_eq!(f.redis_url.as_ref().unwrap().0, "redis://file:1/0");
    assert!(f.redis_url.as_ref().unwrap().1.contains("qstore.json"));
    assert_eq!(
        (f.lock, f.lease, f.mode),
        (
            Some(LockKind::File),
            Duration::from_secs(12),
            CacheMode::Write
        )
    );

    let vars = env(&[
        ("QSTORE_CACHE_DIR", "/elsewhere"),
        ("QSTORE_REDIS_URL", "redis://env:2/0"),
    ]);
    let e = Settings::resolve_with(root, &none, &vars).unwrap().cache;
    assert_eq!(e.dir, std::path::PathBuf::from("/elsewhere"));
    assert_eq!(
        e.redis_url,
        Some(("redis://env:2/0".into(), "QSTORE_REDIS_URL".into()))
    );

    let flags = Overrides {
        cache_dir: Some("/flag".into()),
        redis_url: Some("redis://flag:3/0".into()),
        lock: Some(LockKind::Redis),
        lease_s: Some(5.0),
        mode: Some(CacheMode::Off),
        compat: None,
    };
    let g = Settings::resolve_with(root, &flags, &vars).unwrap().cache;
    assert_eq!(g.dir, std::path::PathBuf::from("/flag"));
    assert_eq!(
        g.redis_url,
        Some(("redis://flag:3/0".into(), "--redis".into()))
    );
    assert_eq!(
        (g.lock, g.lease, g.mode),
        (
            Some(LockKind::Redis),
            Duration::from_secs(5),
            CacheMode::Off
        )
    );

    for (text, want) in [
        (
            r#"{"expression_cache": {"lease_s": 0.5}}"#,
            "expression_cache.lease_s",
        ),
        (
            r#"{"expression_cache": {"lock": "nfs"}}"#,
            "use \"redis\" or \"file\"",
        ),
        (
            r#"{"expression_cache": {"mode": "rw"}}"#,
            "use \"off\", \"read\" or \"write\"",
        ),
        (
            r#"{"compat": "pandas"}"#,
            "compat \"pandas\": use \"none\" or \"qlib\"",
        ),
    ] {
        std::fs::write(root.join(CONFIG_FILE), text).unwrap();
        let err = Settings::resolve_with(root, &none, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{text}: {err}");
    }
    std::fs::remove_file(root.join(CONFIG_FILE)).unwrap();
    let err = Settings::resolve_with(
        root,
        &Overrides {
            lease_s: Some(1e9),
            ..Default::default()
        },
        &env(&[]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--lease-s"), "{err}");
}

#[test]
fn compat_comes_from_the_flag_then_the_environment_then_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let none = Overrides::default();
    let vars = |v: Option<&str>| {
        let v = v.map(str::to_string);
        move |k: &str| (k == "QSTORE_COMPAT").then(|| v.clone()).flatten()
    };
    let compat = |flags: &Overrides, var: Option<&str>| {
        Settings::resolve_with(root, flags, &vars(var))
            .map(|s| s.compat)
            .map_err(|e| e.to_string())
    };
    assert_eq!(compat(&none, None), Ok(Compat::None));
    std::fs::write(root.join(CONFIG_FILE), r#"{"compat": "qlib"}"#).unwrap();
    assert_eq!(compat(&none, None), Ok(Compat::Qlib));
    assert_eq!(compat(&none, Some("none")), Ok(Compat::None));
    let flag = Overrides {
        compat: Some(Compat::Qlib),
        ..Default::default()
    };
    std::fs::write(root.join(CONFIG_FILE), r#"{"compat": "none"}"#).unwrap();
    assert_eq!(compat(&flag, Some("none")), Ok(Compat::Qlib));
    let err = compat(&none, Some("qlib0.9")).unwrap_err();
    assert!(
        err.contains("QSTORE_COMPAT") && err.contains("\"qlib\""),
        "{err}"
    );
}
