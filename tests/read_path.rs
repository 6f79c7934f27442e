//! The expression cache on the read path: `qcache query` (so `Store::features`) reads what `qcache warm`
//! wrote, uses behind entries for the rows they have, fills the cache in write mode, and never serves a
//! damaged entry.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::text;

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sample");

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env_remove("QSTORE_FAILPOINT")
        .env_remove("QSTORE_REDIS_URL")
        .env_remove("QSTORE_CACHE_DIR")
        .output()
        .unwrap()
}

fn qdump(args: &[&str]) -> Output {
    run(env!("CARGO_BIN_EXE_qdump"), args)
}

fn qcache(args: &[&str]) -> Output {
    run(env!("CARGO_BIN_EXE_qcache"), args)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `qcache query STORE --feature-set technical --format csv --cache-stats --json <extra>`: the CSV and the
/// expression cache's counters.
fn query(store: &Path, extra: &[&str]) -> (Vec<u8>, serde_json::Value) {
    let mut args = vec![
        "query",
        s(store),
        "--feature-set",
        "technical",
        "--cache-stats",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = qcache(&args);
    assert!(out.status.success(), "{}", text(&out));
    let stats: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stderr).lines().last().unwrap()).unwrap();
    (out.stdout, stats)
}

fn store(dir: &Path, end: Option<&str>) -> std::path::PathBuf {
    let to = dir.join("s");
    let mut args = vec!["all", "--csv", SAMPLE, "--to", s(&to)];
    if let Some(e) = end {
        args.extend(["--end-date", e]);
    }
    let out = qdump(&args);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
    to
}

/// `qcache warm` of the technical set under file locks.
fn warm(store: &Path) {
    let out = qcache(&[
        "warm",
        s(store),
        "--feature-set",
        "technical",
        "--lock",
        "file",
    ]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_warm_cache_is_read_and_equals_computing() {
    let dir = tempfile::tempdir().unwrap();
    let to = store(dir.path(), None);
    let (computed, stats) = query(&to, &["--expr-cache", "off"]);
    assert!(stats["expression_cache"].is_null(), "{stats}");
    warm(&to);
    // Read is the default once the cache exists.
    let (read, stats) = query(&to, &[]);
    assert_eq!(
        read, computed,
        "values from the cache differ from computed ones"
    );
    let d = &stats["expression_cache"];
    assert_eq!(d["misses"], 0, "{stats}");
    assert_eq!(d["partial"], 0, "{stats}");
    assert_eq!(d["writes"], 0, "{stats}");
    // Every (instrument, expression) but bare fields came from the disk: as many hits as entries, since the
    // set's columns are distinct (MA20 and BOLL_MID share one entry, read twice).
    let info = qcache(&["info", s(&to), "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let hits = d["hits"].as_u64().unwrap();
    let entries = info["entries"].as_u64().unwrap();
    assert!(
        hits >= entries && hits <= entries + 12,
        "{hits} hits, {entries} entries"
    );
}

#[test]
fn after_an_update_behind_entries_serve_their_rows_and_the_new_ones_are_computed() {
    let dir = tempfile::tempdir().unwrap();
    let to = store(dir.path(), Some("2023-09-29"));
    warm(&to);
    let out = qdump(&["update", "--csv", SAMPLE, "--to", s(&to)]);
    assert!(out.status.success(), "{}", text(&out));
    let (computed, _) = query(&to, &["--expr-cache", "off"]);
    let (read, stats) = query(&to, &["--expr-cache", "read"]);
    assert_eq!(
        read, computed,
        "rows past the entries' end differ from computed ones"
    );
    let d = &stats["expression_cache"];
    assert!(d["partial"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(d["writes"], 0, "read mode writes nothing: {stats}");
    // Write mode brings them forward; a read then hits every entry.
    let (written, stats) = query(&to, &["--expr-cache", "write"]);
    assert_eq!(written, computed);
    assert!(
        stats["expression_cache"]["writes"].as_u64().unwrap() > 0,
        "{stats}"
    );
    let (again, stats) = query(&to, &["--expr-cache", "read"]);
    assert_eq!(again, computed);
    let d = &stats["expression_cache"];
    assert_eq!(
        (d["partial"].as_u64(), d["misses"].as_u64()),
        (Some(0), Some(0)),
        "{stats}"
    );
    let out = qcache(&["verify", s(&to)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn write_mode_in_four_processes_builds_each_entry_once() {
    let dir = tempfile::tempdir().unwrap();
    let to = store(dir.path(), None);
    std::fs::write(
        to.join("qstore.json"),
        r#"{ "expression_cache": { "lock": "file" } }"#,
    )
    .unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_qcache"))
                .args([
                    "query",
                    s(&to),
                    "--feature-set",
                    "technical",
                    "--expr-cache",
                    "write",
                    "--cache-stats",
                    "--json",
                ])
                .env_remove("QSTORE_REDIS_URL")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut writes = 0;
    let mut outputs = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let stats: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stderr).lines().last().unwrap())
                .unwrap();
        writes += stats["expression_cache"]["writes"].as_u64().unwrap();
        outputs.push(out.stdout);
    }
    let info = qcache(&["info", s(&to), "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(
        writes,
        info["entries"].as_u64().unwrap(),
        "each entry built exactly once"
    );
    assert!(outputs.windows(2).all(|w| w[0] == w[1]));
    // The read-through packed what it built, as `warm` does (a pack another process held may lack some
    // entries: those are read from their own files).
    let cache = to.join("features_cache");
    for d in std::fs::read_dir(&cache).unwrap() {
        let d = d.unwrap().path();
        if d.is_dir() {
            let packs = std::fs::read_dir(&d)
                .unwrap()
                .filter(|f| {
                    f.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "pack")
                })
                .count();
            assert_eq!(packs, 1, "{}", d.display());
        }
    }
    let out = qcache(&["verify", s(&to)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (read, stats) = query(&to, &["--expr-cache", "read"]);
    assert_eq!(read, outputs[0]);
    assert_eq!(stats["expression_cache"]["misses"], 0, "{stats}");
}

#[test]
fn a_damaged_entry_is_a_miss_never_wrong_values() {
    let dir = tempfile::tempdir().unwrap();
    let to = store(dir.path(), None);
    warm(&to);
    let (computed, _) = query(&to, &["--expr-cache", "off"]);
    // Flip a value in every data file of one instrument.
    let inst = to.join("features_cache/sh600000");
    let mut damaged = 0;
    for e in std::fs::read_dir(&inst).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "bin") {
            let mut b = std::fs::read(&p).unwrap();
            if b.len() > 100 {
                b[100] ^= 0x40;
                std::fs::write(&p, b).unwrap();
                damaged += 1;
            }
        }
    }
    assert!(damaged > 10);
    // The instrument's pack still holds every entry whole: all of them are read from it.
    let (read, stats) = query(&to, &[]);
    assert_eq!(read, computed, "a damaged entry was served");
    assert_eq!(stats["expression_cache"]["misses"], 0, "{stats}");
    // Damage the pack too: a byte of every packed entry.
    let values: Vec<_> = std::fs::read_dir(&inst)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "values"))
        .collect();
    assert_eq!(values.len(), 1, "one pack per instrument: {values:?}");
    let mut b = std::fs::read(&values[0]).unwrap();
    for i in (4..b.len()).step_by(256) {
        b[i] ^= 0x40;
    }
    std::fs::write(&values[0], b).unwrap();
    let (read, stats) = query(&to, &[]);
    assert_eq!(read, computed, "a damaged entry was served");
    assert!(
        stats["expression_cache"]["misses"].as_u64().unwrap() >= damaged,
        "{stats}"
    );
    // verify names both kinds of damage.
    let out = qcache(&["verify", s(&to)]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        text(&out).contains(".values: checksum mismatch"),
        "{}",
        text(&out)
    );
}

/// Reads of a packed instrument open its pack, not its entries: with every entry's files made unreadable the
/// query still reads every column from the disk; the packs follow `qdump update` + `qcache update`, and `clear`
/// removes them with the entries.
#[test]
fn packs_serve_reads_follow_updates_and_go_with_clear() {
    let dir = tempfile::tempdir().unwrap();
    let to = store(dir.path(), Some("2023-09-29"));
    warm(&to);
    let cache = to.join("features_cache");
    let files_with = |ext: &str| -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for d in std::fs::read_dir(&cache).unwrap() {
            let d = d.unwrap().path();
            if d.is_dir() {
                for f in std::fs::read_dir(&d).unwrap() {
                    let f = f.unwrap().path();
                    if f.extension().is_some_and(|x| x == ext) {
                        out.push(f);
                    }
                }
            }
        }
        out.sort();
        out
    };
    let instruments = std::fs::read_dir(&cache)
        .unwrap()
        .filter(|d| d.as_ref().unwrap().path().is_dir())
        .count();
    assert_eq!(files_with("pack").len(), instruments);
    assert_eq!(files_with("values").len(), instruments);
    // Warming again finds every pack current and writes none.
    let before: Vec<_> = files_with("values");
    warm(&to);
    assert_eq!(files_with("values"), before);
    let (computed, _) = query(&to, &["--expr-cache", "off"]);
    // Hide every entry's meta: only the packs can answer.
    let metas = files_with("meta");
    for m in &metas {
        std::fs::rename(m, m.with_extension("hidden")).unwrap();
    }
    let (read, stats) = query(&to, &[]);
    assert_eq!(read, computed);
    let d = &stats["expression_cache"];
    assert_eq!(
        (d["misses"].as_u64(), d["partial"].as_u64()),
        (Some(0), Some(0)),
        "{stats}"
    );
    assert!(d["hits"].as_u64().unwrap() >= metas.len() as u64, "{stats}");
    for m in &metas {
        std::fs::rename(m.with_extension("hidden"), m).unwrap();
    }
    // New days: the packs are behind and serve the rows they have; `qcache update` brings them forward.
    let out = qdump(&["update", "--csv", SAMPLE, "--to", s(&to)]);
    assert!(out.status.success(), "{}", text(&out));
    let (computed, _) = query(&to, &["--expr-cache", "off"]);
    let (read, stats) = query(&to, &[]);
    assert_eq!(read, computed);
    assert!(
        stats["expression_cache"]["partial"].as_u64().unwrap() > 0,
        "{stats}"
    );
    let out = qcache(&["update", s(&to), "--lock", "file"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(files_with("pack").len(), instruments);
    assert_eq!(
        files_with("values").len(),
        instruments,
        "old generations deleted"
    );
    for m in &metas {
        std::fs::rename(m, m.with_extension("hidden")).unwrap();
    }
    let (read, stats) = query(&to, &[]);
    assert_eq!(read, computed);
    let d = &stats["expression_cache"];
    assert_eq!(
        (d["misses"].as_u64(), d["partial"].as_u64()),
        (Some(0), Some(0)),
        "{stats}"
    );
    for m in &metas {
        std::fs::rename(m.with_extension("hidden"), m).unwrap();
    }
    let out = qcache(&["verify", s(&to)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // An orphan values file is reported; clear takes the packs with the entries.
    let orphan = before[0].with_file_name(format!("{}.values", "0".repeat(32) + ".7"));
    std::fs::write(&orphan, b"\0\0\0\0").unwrap();
    let out = qcache(&["verify", s(&to)]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        text(&out).contains("no pack index (an orphan)"),
        "{}",
        text(&out)
    );
    std::fs::remove_file(&orphan).unwrap();
    let out = qcache(&["clear", s(&to), "--all"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(files_with("pack").is_empty() && files_with("values").is_empty());
}

/// A writer killed between a pack's values and its index leaves an orphan that `verify` names and readers never
/// open (the entries answer); the next warm deletes it and publishes the pack.
#[test]
fn a_writer_killed_before_the_pack_index_strands_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let to = store(dir.path(), None);
    let (computed, _) = query(&to, &["--expr-cache", "off"]);
    let killed = Command::new(env!("CARGO_BIN_EXE_qcache"))
        .args([
            "warm",
            s(&to),
            "--feature-set",
            "technical",
            "--lock",
            "file",
        ])
        .env_remove("QSTORE_REDIS_URL")
        .env("QSTORE_FAILPOINT", "cache:before-pack")
        .output()
        .unwrap();
    assert!(!killed.status.success(), "{}", text(&killed));
    assert!(
        text(&killed).contains("failpoint cache:before-pack"),
        "{}",
        text(&killed)
    );
    let out = qcache(&["verify", s(&to)]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        text(&out).contains("no pack index (an orphan)"),
        "{}",
        text(&out)
    );
    let (read, stats) = query(&to, &[]);
    assert_eq!(read, computed);
    assert_eq!(stats["expression_cache"]["misses"], 0, "{stats}");
    warm(&to);
    let out = qcache(&["verify", s(&to)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let packs = std::fs::read_dir(to.join("features_cache/sh600000"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "pack")
        })
        .count();
    assert_eq!(packs, 1);
}
