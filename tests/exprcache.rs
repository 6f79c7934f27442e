//! DiskExpressionCache against real processes and the real Redis (never a mock): one build per entry under
//! concurrency, killed and paused writers, fencing, updates equal to fresh builds, verify, malformed files,
//! and Redis going away.

mod common;

use common::text;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qstore::cache::expr::{DiskExpressionCache, Outcome, key};
use qstore::cache::lock::{FileLock, Lock};
use qstore::expr::parse;
use qstore::{Engine, Freq, Universe};

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sample");

fn redis_url() -> String {
    std::env::var("QSTORE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

fn bin(name: &str) -> Command {
    let mut c = Command::new(match name {
        "qdump" => env!("CARGO_BIN_EXE_qdump"),
        _ => env!("CARGO_BIN_EXE_qcache"),
    });
    c.env_remove("QSTORE_FAILPOINT")
        .env_remove("QSTORE_REDIS_URL")
        .env_remove("QSTORE_CACHE_DIR");
    c
}

fn store_at(dir: &Path, end: Option<&str>) -> PathBuf {
    let root = dir.join("s");
    let mut c = bin("qdump");
    c.args(["all", "--csv", SAMPLE, "--to", root.to_str().unwrap()]);
    if let Some(e) = end {
        c.args(["--end-date", e]);
    }
    let out = c.output().unwrap();
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
    root
}

fn qcache(args: &[&str]) -> Output {
    bin("qcache").args(args).output().unwrap()
}

fn file_cache(root: &Path) -> DiskExpressionCache {
    let dir = root.join("features_cache");
    DiskExpressionCache::new(&dir, Box::new(FileLock::new(&dir)))
}

const EXPRS: [&str; 6] = [
    "Mean($close, 5)",
    "Ref($close, -2) / $close - 1",
    "EMA($close, 12)",
    "Corr($close, Log($volume + 1), 10)",
    "$close / Mask($close, 'SH600000')",
    "Rank(Std($close, 5), 20)",
];

#[test]
fn keys_are_canonical_and_pinned() {
    let a = key(&parse("$close+$open").unwrap(), "sh600000", Freq::DAY);
    let b = key(
        &parse("Add( $close , $open )").unwrap(),
        "SH600000",
        Freq::DAY,
    );
    assert_eq!(
        a, b,
        "spellings of one tree share one entry; instruments fold case"
    );
    assert_ne!(
        a,
        key(&parse("$open+$close").unwrap(), "SH600000", Freq::DAY)
    );
    assert_ne!(
        a,
        key(
            &parse("$close+$open").unwrap(),
            "SH600000",
            "1min".parse().unwrap()
        )
    );
    // The vector of storage-layout.md §8 (the format: a change here orphans every cache on disk).
    assert_eq!(a, "dc3f99c82114538338bf9f36f5d8320f");
}

#[test]
fn cached_reads_equal_evaluation_and_never_write() {
    let dir = tempfile::tempdir().unwrap();
    let root = store_at(dir.path(), None);
    let mut store = Engine::open(&root).unwrap();
    let cache = Arc::new(file_cache(&root));
    for sym in ["SH600000", "SZ300009", "SH600009"] {
        for e in EXPRS {
            assert_eq!(
                cache
                    .warm(store.store(), &parse(e).unwrap(), sym, Freq::DAY)
                    .unwrap(),
                Outcome::Built
            );
        }
    }
    let list: Vec<String> = ["SH600000", "SZ300009", "SH600009"]
        .map(String::from)
        .to_vec();
    let plain = store
        .features(Universe::List(&list), &EXPRS, None, None, Freq::DAY)
        .unwrap();
    let before = common::tree(&root.join("features_cache"));
    store.set_expression_cache(cache.clone(), qstore::cache::expr::Mode::Read);
    let cached = store
        .features(Universe::List(&list), &EXPRS, None, None, Freq::DAY)
        .unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(cached.values()), bits(plain.values()));
    assert_eq!(
        common::tree(&root.join("features_cache")),
        before,
        "reads write nothing"
    );
    // Hits really come from the cache: a planted value shows (and `verify` would flag it).
    let e = parse(EXPRS[0]).unwrap();
    let got = cache
        .read(store.store(), &e, "SH600000", Freq::DAY, 10..11)
        .unwrap()
        .unwrap();
    assert_eq!(
        got[0].to_bits(),
        plain
            .value(plain.rows_of("SH600000").start + 10, 0)
            .to_bits()
    );
}

/// Every entry's `.bin` values, decoded, by meta path.
fn entry_values(cache_dir: &Path) -> Vec<(String, usize, Vec<u32>)> {
    let c = DiskExpressionCache::new(cache_dir, Box::new(FileLock::new(cache_dir)));
    let mut out = Vec::new();
    for (p, m) in c.entries().unwrap() {
        let m = m.unwrap();
        let bin = p.with_file_name(format!(
            "{}.{}.bin",
            p.file_stem().unwrap().to_str().unwrap(),
            m.generation
        ));
        let f = qstore::FeatureFile::open(&bin).unwrap();
        let v = f.map_or(vec![], |f| {
            f.values()[..m.len].iter().map(|x| x.to_bits()).collect()
        });
        out.push((format!("{} {}", m.instrument, m.expr), m.start, v));
    }
    out.sort();
    out
}

#[test]
fn update_rounds_equal_fresh_builds() {
    let dir = tempfile::tempdir().unwrap();
    let root = store_at(dir.path(), Some("2023-05-19"));
    let warm = |root: &Path, cache_dir: &str| {
        let mut args = vec![
            "warm",
            root.to_str().unwrap(),
            "--cache-dir",
            cache_dir,
            "--fields",
        ];
        args.extend(EXPRS);
        let out = qcache(&args);
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    let inc = dir.path().join("inc");
    warm(&root, inc.to_str().unwrap());
    for (k, end) in ["2023-05-22", "2023-06-30", "2023-08-25", "2024-01-11"]
        .iter()
        .enumerate()
    {
        let out = bin("qdump")
            .args([
                "update",
                "--csv",
                SAMPLE,
                "--to",
                root.to_str().unwrap(),
                "--end-date",
                end,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let out = qcache(&[
            "update",
            root.to_str().unwrap(),
            "--cache-dir",
            inc.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let t = text(&out);
        assert!(
            t.contains("Appended") && t.contains("Built"),
            "appends and look-ahead rebuilds: {t}"
        );
        // A fresh cache over the same store: every entry `update` brought forward equals it.
        let fresh = dir.path().join(format!("fresh{k}"));
        warm(&root, fresh.to_str().unwrap());
        let fresh_values = entry_values(&fresh);
        let inc_values = entry_values(&inc);
        assert!(!inc_values.is_empty());
        for entry in &inc_values {
            assert!(
                fresh_values.contains(entry),
                "after the update to {end}: {} differs",
                entry.0
            );
        }
        // New listings get their entries from warm (existing ones are current already).
        let t = warm(&root, inc.to_str().unwrap());
        assert!(!t.contains("Appended"), "{t}");
        assert_eq!(entry_values(&inc), fresh_values);
    }
    // The source is corrected: the affected entries are rebuilt in full, and still equal a fresh build.
    let s = Engine::open(&root).unwrap();
    let f = s
        .store()
        .feature("SH600000", "close", Freq::DAY)
        .unwrap()
        .unwrap();
    let mut v = f.values().to_vec();
    v[3] += 1.0;
    s.store()
        .rewrite_feature("SH600000", "close", Freq::DAY, f.start(), &v)
        .unwrap();
    let out = qcache(&[
        "update",
        root.to_str().unwrap(),
        "--cache-dir",
        inc.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let fresh = dir.path().join("fresh-corrected");
    warm(&root, fresh.to_str().unwrap());
    assert_eq!(entry_values(&inc), entry_values(&fresh));
    let out = qcache(&[
        "verify",
        root.to_str().unwrap(),
        "--cache-dir",
        inc.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn verify_finds_planted_corruption_and_bad_files_are_misses() {
    let dir = tempfile::tempdir().unwrap();
    let root = store_at(dir.path(), None);
    let store = Engine::open(&root).unwrap();
    let cache = file_cache(&root);
    let exprs: Vec<_> = [
        "Mean($close,5)",
        "Std($close,5)",
        "Max($high,5)",
        "Min($low,5)",
    ]
    .iter()
    .map(|e| parse(e).unwrap())
    .collect();
    for e in &exprs {
        cache.warm(store.store(), e, "SH600000", Freq::DAY).unwrap();
    }
    let d = root.join("features_cache/sh600000");
    let path_of = |e: &qstore::expr::Expr, ext: &str| {
        d.join(format!("{}.{ext}", key(e, "SH600000", Freq::DAY)))
    };
    let verify = || {
        let out = qcache(&["verify", root.to_str().unwrap()]);
        (out.status.code(), text(&out))
    };
    assert_eq!(verify().0, Some(0));
    // A flipped byte, a truncated file, a missing meta, a temp file.
    let b0 = path_of(&exprs[0], "1.bin");
    let mut bytes = std::fs::read(&b0).unwrap();
    bytes[40] ^= 0x10;
    std::fs::write(&b0, &bytes).unwrap();
    let b1 = path_of(&exprs[1], "1.bin");
    let bytes = std::fs::read(&b1).unwrap();
    std::fs::write(&b1, &bytes[..bytes.len() - 8]).unwrap();
    std::fs::remove_file(path_of(&exprs[2], "meta")).unwrap();
    // The temp file of a writer of this machine that is gone (a live writer's would be no problem).
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    std::fs::write(
        d.join(format!(".qstore-tmp-{pid}@{}~abc", host.trim())),
        b"x",
    )
    .unwrap();
    let (code, out) = verify();
    assert_eq!(code, Some(5), "{out}");
    assert!(out.contains("checksum mismatch"), "{out}");
    assert!(out.contains("holds 248 values"), "{out}");
    assert!(out.contains("no meta (an orphan)"), "{out}");
    assert!(out.contains("temp file"), "{out}");
    assert!(out.contains("4 problems"), "{out}");
    // Damaged entries are misses, and warm rebuilds them.
    let fresh = file_cache(&root);
    for e in &exprs[..3] {
        assert!(
            fresh
                .read(store.store(), e, "SH600000", Freq::DAY, 0..250)
                .unwrap()
                .is_none()
        );
    }
    std::fs::write(path_of(&exprs[3], "meta"), b"{ not json").unwrap();
    assert!(
        fresh
            .read(store.store(), &exprs[3], "SH600000", Freq::DAY, 0..250)
            .unwrap()
            .is_none()
    );
    for e in &exprs {
        assert_eq!(
            fresh.warm(store.store(), e, "SH600000", Freq::DAY).unwrap(),
            Outcome::Built
        );
    }
    assert_eq!(fresh.remove_abandoned_temps().unwrap(), 1);
    let (code, out) = verify();
    assert_eq!(code, Some(0), "{out}");
}

/// Runs `n` `qcache warm` processes at once on the same cold entries; returns how many entries they built.
fn warm_together(root: &Path, n: usize, lock: &[&str]) -> usize {
    let children: Vec<_> = (0..n)
        .map(|_| {
            bin("qcache")
                .args([
                    "warm",
                    root.to_str().unwrap(),
                    "--instruments",
                    "SH600000,SZ000002,SH688001",
                ])
                .args([
                    "--fields",
                    "Mean($close,5)",
                    "Std($close,20)",
                    "Corr($close,$volume,10)",
                    "EMA($close,26)",
                ])
                .args(lock)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut built = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let t = text(&out);
        if let Some(i) = t.find("Built: ") {
            built += t[i + 7..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap();
        }
    }
    built
}

#[test]
fn eight_processes_build_each_entry_once_with_either_lock() {
    for lock in [vec!["--lock", "file"], vec!["--redis", &redis_url()]] {
        let dir = tempfile::tempdir().unwrap();
        let root = store_at(dir.path(), None);
        let lock: Vec<&str> = lock.iter().map(|s| &**s).collect();
        assert_eq!(
            warm_together(&root, 8, &lock),
            12,
            "3 instruments x 4 expressions, each built once ({lock:?})"
        );
        let out = qcache(&["verify", root.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
}

#[test]
fn a_killed_writer_strands_nothing_and_reset_lock_stays_in_its_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let root = store_at(dir.path(), None);
    let r = root.to_str().unwrap();
    let url = redis_url();
    let redis = |args: &[&str]| {
        let mut c = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query::<redis::Value>(&mut c).unwrap()
    };
    redis(&["SET", "lock:someone-else", "1"]);
    // Killed between its data and its meta, holding the lock (lease 3 s).
    let out = bin("qcache")
        .args([
            "warm",
            r,
            "--redis",
            &url,
            "--lease-s",
            "3",
            "--instruments",
            "SH600000",
            "--fields",
            "Mean($close,9)",
        ])
        .env("QSTORE_FAILPOINT", "cache:before-meta")
        .output()
        .unwrap();
    assert!(!out.status.success());
    // The entry is not corrupted: no meta, so a miss; verify names the orphan data file.
    let out = qcache(&["verify", r]);
    assert!(text(&out).contains("orphan"), "{}", text(&out));
    // Another writer waiting 1 s gives up with a clear message naming the holder ...
    let out = qcache(&[
        "warm",
        r,
        "--redis",
        &url,
        "--wait-s",
        "1",
        "--instruments",
        "SH600000",
        "--fields",
        "Mean($close,9)",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("reset-lock"), "{}", text(&out));
    // ... reset-lock lists it as held by a gone process and deletes it at once ...
    let out = qcache(&["reset-lock", r, "--redis", &url]);
    let t = text(&out);
    assert!(
        t.contains("holder gone -> deleted") && t.contains("1 deleted"),
        "{t}"
    );
    // ... and the next writer proceeds; verify is clean again.
    let out = qcache(&[
        "warm",
        r,
        "--redis",
        &url,
        "--instruments",
        "SH600000",
        "--fields",
        "Mean($close,9)",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(qcache(&["verify", r]).status.code(), Some(0));
    // A lease runs out by itself: a second killed writer, then a writer that waits past the lease.
    let out = bin("qcache")
        .args([
            "warm",
            r,
            "--redis",
            &url,
            "--lease-s",
            "1",
            "--instruments",
            "SH600000",
            "--fields",
            "Mean($close,8)",
        ])
        .env("QSTORE_FAILPOINT", "cache:before-meta")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let t0 = Instant::now();
    let out = qcache(&[
        "warm",
        r,
        "--redis",
        &url,
        "--wait-s",
        "10",
        "--instruments",
        "SH600000",
        "--fields",
        "Mean($close,8)",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(t0.elapsed() < Duration::from_secs(8));
    // --all --force clears every lock of this store and nothing else.
    let out = qcache(&["reset-lock", r, "--redis", &url, "--all", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        redis(&["EXISTS", "lock:someone-else"]),
        redis::Value::Int(1)
    );
    redis(&["DEL", "lock:someone-else"]);
}

#[test]
fn a_writer_that_lost_its_lease_does_not_publish() {
    let dir = tempfile::tempdir().unwrap();
    let root = store_at(dir.path(), None);
    let r = root.to_str().unwrap().to_string();
    let url = redis_url();
    // Writer 1 pauses 5 s between its data and its meta.
    let slow = bin("qcache")
        .args([
            "warm",
            &r,
            "--redis",
            &url,
            "--instruments",
            "SH600000",
            "--fields",
            "Mean($close,11)",
        ])
        .env("QSTORE_FAILPOINT", "cache:before-meta")
        .env("QSTORE_FAILPOINT_PAUSE_MS", "5000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it is paused at the point (holding its lease), not for a guessed time.
    let mut slow = slow;
    let mut err = std::io::BufReader::new(slow.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("pausing") {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut err, &mut line).unwrap();
        assert!(n > 0, "the writer never reached its failpoint: {said}");
        said.push_str(&line);
    }
    // Its lock is taken away (an operator's reset-lock), and writer 2 builds and publishes.
    let out = qcache(&["reset-lock", &r, "--redis", &url, "--all", "--force"]);
    assert!(text(&out).contains("1 deleted"), "{}", text(&out));
    let out = qcache(&[
        "warm",
        &r,
        "--redis",
        &url,
        "--instruments",
        "SH600000",
        "--fields",
        "Mean($close,11)",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let meta_before = std::fs::read_dir(root.join("features_cache/sh600000"))
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "meta"))
        .map(|e| std::fs::read(e.path()).unwrap())
        .unwrap();
    // Writer 1 wakes up: it must not publish over the newer generation.
    let out = slow.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert_eq!(out.status.code(), Some(1), "{rest}");
    let t = rest;
    assert!(
        t.contains("lease was lost") || t.contains("newer writer"),
        "{t}"
    );
    let meta_after = std::fs::read_dir(root.join("features_cache/sh600000"))
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "meta"))
        .map(|e| std::fs::read(e.path()).unwrap())
        .unwrap();
    assert_eq!(meta_before, meta_after);
}

#[test]
fn redis_going_away_fails_writers_clearly_and_readers_keep_working() {
    let port = 20000 + (std::process::id() % 20000) as u16;
    let mut server = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--bind",
            "127.0.0.1",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (tools/test.sh installs it)");
    let url = format!("redis://127.0.0.1:{port}/0");
    let t0 = Instant::now();
    while redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .is_err()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the private redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let dir = tempfile::tempdir().unwrap();
    let root = store_at(dir.path(), None);
    let r = root.to_str().unwrap();
    let out = qcache(&[
        "warm",
        r,
        "--redis",
        &url,
        "--instruments",
        "SH600000",
        "--fields",
        "Mean($close,5)",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    server.kill().unwrap();
    server.wait().unwrap();
    let out = qcache(&[
        "warm",
        r,
        "--redis",
        &url,
        "--instruments",
        "SH600000",
        "--fields",
        "Std($close,5)",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(
        t.contains(&url)
            && t.contains("(from --redis)")
            && t.contains("QSTORE_REDIS_URL")
            && t.contains("cannot be reached")
            && !t.contains("see the qstore.json section"),
        "{t}"
    );
    // Readers need no Redis: the existing entry still serves, and nothing was corrupted.
    let mut store = Engine::open(&root).unwrap();
    let cache = Arc::new(file_cache(&root));
    let e = parse("Mean($close,5)").unwrap();
    assert!(
        cache
            .read(store.store(), &e, "SH600000", Freq::DAY, 0..250)
            .unwrap()
            .is_some()
    );
    store.set_expression_cache(cache, qstore::cache::expr::Mode::Read);
    let list = vec!["SH600000".to_string()];
    store
        .features(
            Universe::List(&list),
            &["Mean($close,5)"],
            None,
            None,
            Freq::DAY,
        )
        .unwrap();
    assert_eq!(qcache(&["verify", r]).status.code(), Some(0));
    let lock: &dyn Lock = &FileLock::new(dir.path());
    assert!(lock.list().unwrap().is_empty());
}

#[test]
fn qdump_update_reports_and_updates_caches() {
    let dir = tempfile::tempdir().unwrap();
    let root = store_at(dir.path(), Some("2023-06-30"));
    let r = root.to_str().unwrap();
    let out = qcache(&[
        "warm",
        r,
        "--instruments",
        "SH600000,SZ000002",
        "--fields",
        "Mean($close,5)",
        "Ref($close,-1)",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let update = |end: &str, extra: &[&str]| {
        let out = bin("qdump")
            .args([
                "update",
                "--csv",
                SAMPLE,
                "--to",
                r,
                "--end-date",
                end,
                "--json",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let v = update("2023-07-31", &[]);
    assert_eq!(v["expression_cache"]["behind"], 4, "{v}");
    let v = update("2023-08-31", &["--update-caches"]);
    assert_eq!(v["expression_cache"]["updated"], 4, "{v}");
    assert_eq!(v["expression_cache"]["behind"], 0, "{v}");
    let mut store = Engine::open(&root).unwrap();
    store.set_expression_cache(Arc::new(file_cache(&root)), qstore::cache::expr::Mode::Read);
    let cache = file_cache(&root);
    assert!(
        cache
            .read(
                store.store(),
                &parse("Ref($close,-1)").unwrap(),
                "SZ000002",
                Freq::DAY,
                0..10
            )
            .unwrap()
            .is_some(),
        "current after --update-caches"
    );
}

#[test]
fn the_cache_is_configured_in_qstore_json() {
    let dir = tempfile::tempdir().unwrap();
    let root = store_at(dir.path(), None);
    let r = root.to_str().unwrap();
    let config = |text: &str| std::fs::write(root.join("qstore.json"), text).unwrap();
    let warm = || {
        qcache(&[
            "warm",
            r,
            "--instruments",
            "SH600000",
            "--fields",
            "Mean($close,5)",
        ])
    };
    config(r#"{"expression_cache": {"dir": "elsewhere", "redis_url": "redis://127.0.0.1:1/0"}}"#);
    let out = warm();
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(
        t.contains("qstore.json expression_cache.redis_url") && t.contains("redis://127.0.0.1:1/0"),
        "{t}"
    );
    config(
        r#"{"expression_cache": {"dir": "elsewhere", "redis_url": "redis://127.0.0.1:1/0", "lock": "file"}}"#,
    );
    let out = warm();
    assert!(out.status.success(), "{}", text(&out));
    assert!(root.join("elsewhere/sh600000").is_dir());
    assert!(!root.join("features_cache").exists());
    config(r#"{"expression_cache": {"lock": "zookeeper"}}"#);
    let out = warm();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("\"redis\" or \"file\""),
        "{}",
        text(&out)
    );
}

/// Lock and Redis failures are variants callers can match, each with its own advice.
#[test]
fn lock_failures_are_typed_errors() {
    use qstore::cache::lock::{FileLock, Lock, RedisLock};
    let dir = tempfile::tempdir().unwrap();
    let lock = FileLock::new(dir.path());
    let held = lock.acquire("e", Duration::from_secs(1)).unwrap();
    match lock.acquire("e", Duration::from_millis(50)) {
        Err(qstore::Error::LockBusy { what, waited, .. }) => {
            assert!(what.contains("e.lock"), "{what}");
            assert_eq!(waited, Duration::from_millis(50));
        }
        other => panic!("expected LockBusy, got {:?}", other.map(|_| ())),
    }
    drop(held);
    assert!(lock.acquire("e", Duration::from_millis(50)).is_ok());
    match RedisLock::connect(
        "redis://127.0.0.1:1/0",
        "id",
        Duration::from_secs(30),
        "--redis",
    ) {
        Err(e @ qstore::Error::Redis { .. }) => {
            let t = e.to_string();
            assert!(
                t.contains("redis://127.0.0.1:1/0") && t.contains("--lock file"),
                "{t}"
            );
        }
        other => panic!("expected a Redis error, got {:?}", other.map(|_| ())),
    }
}

/// An update split by instrument (a cluster's tasks) brings forward the entries of its instruments only; the
/// parts together leave the cache as one whole update does.
#[test]
fn an_update_of_some_instruments_brings_only_their_entries_forward() {
    let dir = tempfile::tempdir().unwrap();
    let root = store_at(dir.path(), Some("2023-05-19"));
    let store = qstore::Store::open(&root).unwrap();
    let cache = file_cache(&root);
    let exprs: Vec<_> = EXPRS[..3].iter().map(|e| parse(e).unwrap()).collect();
    let symbols: Vec<String> = store
        .instruments("all")
        .unwrap()
        .symbols()
        .map(String::from)
        .collect();
    cache
        .warm_all(&store, &symbols, &exprs, Freq::DAY, &|| {})
        .unwrap();
    assert_eq!(cache.instruments().unwrap(), symbols);
    let out = bin("qdump")
        .args(["update", "--csv", SAMPLE, "--to", root.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let store = qstore::Store::open(&root).unwrap();
    let behind = cache.behind(&store).unwrap();
    assert_eq!(behind, symbols.len() * 3);
    let (first, rest) = symbols.split_at(2);
    let counts = cache.update(&store, Some(first)).unwrap();
    assert_eq!(counts.values().sum::<usize>(), 2 * 3, "{counts:?}");
    assert_eq!(cache.behind(&store).unwrap(), behind - 2 * 3);
    cache.update(&store, Some(rest)).unwrap();
    assert_eq!(cache.behind(&store).unwrap(), 0);
    // An instrument name that is not one is refused, not looked up as a path.
    assert!(cache.update(&store, Some(&["../x".to_string()])).is_err());
}
