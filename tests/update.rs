//! `qdump update`, run for real: an `all` plus any number of updates equals one `all` over the whole period,
//! byte for byte; a killed update followed by a rerun equals an update that was never interrupted; corrections,
//! new fields, idempotence and the update lock.

mod common;

use common::{ok, text};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qstore::{Freq, Store, StoreOptions};

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sample");

fn qdump(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qdump"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn all(input: &str, to: &Path, end: Option<&str>) {
    let mut args = vec!["all", "--csv", input, "--to", to.to_str().unwrap()];
    if let Some(e) = end {
        args.extend(["--end-date", e]);
    }
    // Exit 3: symbols listed after `end` have no rows yet and are reported as skipped.
    let out = qdump(&args, &[]);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
}

fn update(input: &str, to: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args = vec!["update", "--csv", input, "--to", to.to_str().unwrap()];
    args.extend_from_slice(extra);
    qdump(&args, env)
}

/// The store's files, without the update lock file (a lock file stays, as lock files do) and the time stamp
/// of the last update.
fn store_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    common::tree(dir)
        .into_iter()
        .filter(|(p, _)| p != ".qstore-update.lock" && p != ".qstore-updated")
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Update boundaries that cross a late listing (SH688001 from 2023-05-18, SZ000017 from 05-30, SZ300009 from
/// 05-23), suspensions, and the delisting of SH600009 (last day 2023-08-24).
const STEPS: [&str; 8] = [
    "2023-05-15",
    "2023-05-19",
    "2023-05-22",
    "2023-06-30",
    "2023-08-24",
    "2023-08-25",
    "2023-10-09",
    "2024-01-11",
];

#[test]
fn all_plus_updates_equals_one_all_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    let inc = dir.path().join("inc");
    all(SAMPLE, &full, None);
    all(SAMPLE, &inc, Some("2023-04-28"));
    let mut listings = 0;
    for step in STEPS {
        let out = update(SAMPLE, &inc, &["--end-date", step, "--json"], &[]);
        let v: serde_json::Value = serde_json::from_str(&ok(out)).unwrap();
        listings += v["new_listings"].as_array().unwrap().len();
    }
    assert_eq!(listings, 3, "the three late listings arrive by update");
    assert_eq!(store_tree(&inc), store_tree(&full));
    // Running it again changes nothing.
    let out = ok(update(SAMPLE, &inc, &["--json"], &[]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["days_added"], 0);
    assert_eq!(v["rows"], 0);
    assert_eq!(store_tree(&inc), store_tree(&full));
}

/// A copy of the sample CSVs with `edit(symbol, lines)` applied.
fn edited_sample(dir: &Path, edit: impl Fn(&str, &mut Vec<String>)) -> PathBuf {
    let out = dir.join("csv");
    std::fs::create_dir_all(&out).unwrap();
    for e in std::fs::read_dir(SAMPLE).unwrap() {
        let p = e.unwrap().path();
        let sym = p.file_stem().unwrap().to_str().unwrap().to_string();
        let mut lines: Vec<String> = std::fs::read_to_string(&p)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        edit(&sym, &mut lines);
        std::fs::write(out.join(p.file_name().unwrap()), lines.join("\n") + "\n").unwrap();
    }
    out
}

#[test]
fn corrections_overwrite_changed_values_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    all(SAMPLE, &store, Some("2023-06-30"));
    // The vendor corrects SH600000's close of 2023-03-01.
    let csv = edited_sample(dir.path(), |sym, lines| {
        if sym == "SH600000" {
            let l = lines
                .iter_mut()
                .find(|l| l.starts_with("2023-03-01"))
                .unwrap();
            let mut cells: Vec<String> = l.split(',').map(String::from).collect();
            cells[4] = "99.99".into();
            *l = cells.join(",");
        }
    });
    let before = store_tree(&store);
    let out = ok(update(
        csv.to_str().unwrap(),
        &store,
        &[
            "--since",
            "2023-02-01",
            "--end-date",
            "2023-06-30",
            "--json",
        ],
        &[],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["corrections"], 1, "{out}");
    assert_eq!(v["days_added"], 0);
    assert!(v["unchanged_rows"].as_u64().unwrap() > 500, "{out}");
    let after = store_tree(&store);
    let changed: Vec<&str> = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.0.as_str())
        .collect();
    assert_eq!(changed, ["features/sh600000/close.day.bin"]);
    let s = Store::open(&store).unwrap();
    let day = s
        .calendar(Freq::DAY)
        .unwrap()
        .index_of(qstore::parse_timestamp("2023-03-01").unwrap())
        .unwrap();
    let v = s
        .read("SH600000", "close", Freq::DAY, day..day + 1)
        .unwrap();
    assert_eq!(v[0], 99.99f32);
}

#[test]
fn a_new_field_starts_at_its_first_day() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    all(SAMPLE, &store, Some("2023-06-30"));
    let csv = edited_sample(dir.path(), |_, lines| {
        lines[0].push_str(",turnover");
        for l in lines.iter_mut().skip(1) {
            let v = if l.as_str() > "2023-07" { "0.5" } else { "" };
            l.push(',');
            l.push_str(v);
        }
    });
    ok(update(
        csv.to_str().unwrap(),
        &store,
        &["--end-date", "2023-07-31"],
        &[],
    ));
    let s = Store::open(&store).unwrap();
    let cal = s.calendar(Freq::DAY).unwrap();
    let july = cal
        .index_of(qstore::parse_timestamp("2023-07-03").unwrap())
        .unwrap();
    let f = s
        .feature("SH600000", "turnover", Freq::DAY)
        .unwrap()
        .unwrap();
    assert_eq!(
        f.start(),
        july,
        "not 0 (qlib's DumpDataUpdate), the first new day"
    );
    assert!(f.values().iter().all(|&v| v == 0.5));
    assert_eq!(f.end(), cal.len());
}

#[test]
fn a_second_update_waits_or_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    all(SAMPLE, &store, Some("2023-06-30"));
    let lock = qstore::import::update::UpdateLock::acquire(&store, false).unwrap();
    let out = update(SAMPLE, &store, &[], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("another writer"), "{}", text(&out));
    // With --wait it blocks on the lock while this test holds it (the kernel lists it as a waiter in
    // /proc/locks), and runs once the lock is released.
    let waiting = std::process::Command::new(env!("CARGO_BIN_EXE_qdump"))
        .args([
            "update",
            "--csv",
            SAMPLE,
            "--to",
            store.to_str().unwrap(),
            "--wait",
        ])
        .env_remove("QSTORE_FAILPOINT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ino = std::os::unix::fs::MetadataExt::ino(
        &std::fs::metadata(store.join(".qstore-update.lock")).unwrap(),
    );
    let blocked = format!(":{ino} ");
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .any(|l| l.contains("->") && l.contains(&blocked))
    {
        assert!(
            t0.elapsed().as_secs() < 60,
            "the update never waited for the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let before = Store::open(&store)
        .unwrap()
        .calendar(Freq::DAY)
        .unwrap()
        .len();
    drop(lock);
    let out = ok(waiting.wait_with_output().unwrap());
    let after = Store::open(&store)
        .unwrap()
        .calendar(Freq::DAY)
        .unwrap()
        .len();
    assert!(after > before, "the waiting update added nothing: {out}");
}

/// Values of every field of every symbol, through a store that maps every file.
fn snapshot(s: &Store) -> Vec<(String, String, Vec<u32>)> {
    let cal = s.calendar(Freq::DAY).unwrap();
    let mut out = Vec::new();
    for (sym, _) in s.instruments("all").unwrap().iter() {
        for field in ["open", "close", "volume", "vwap"] {
            let v = s.read(sym, field, Freq::DAY, 0..cal.len()).unwrap();
            out.push((
                sym.to_string(),
                field.to_string(),
                v.iter().map(|x| x.to_bits()).collect(),
            ));
        }
    }
    out
}

/// Kills `qdump update` (abort at a failpoint) at 51 different points: every other file write (of 96; all of
/// them with QSTORE_CRASH_ALL=1) of the update from
/// 2023-06-30 to 2023-09-29 is a point, and so are the moments before the instruments, before the calendar and
/// after it. A reader that mapped the files before keeps reading the old values; the rerun then gives exactly
/// the store of an update that was never interrupted, and a second rerun changes nothing.
#[test]
fn killed_updates_then_rerun_equal_a_clean_update() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    all(SAMPLE, &base, Some("2023-06-30"));
    let clean = dir.path().join("clean");
    copy_dir(&base, &clean);
    ok(update(SAMPLE, &clean, &["--end-date", "2023-09-29"], &[]));
    let want = store_tree(&clean);
    // Half of the reruns stop earlier than the killed run did, so what it left past their end must go.
    let short = dir.path().join("short");
    copy_dir(&base, &short);
    ok(update(SAMPLE, &short, &["--end-date", "2023-08-15"], &[]));
    let want_short = store_tree(&short);
    // QSTORE_CRASH_ALL=1 kills at every file write instead of every other one (the longer run).
    let step = if std::env::var_os("QSTORE_CRASH_ALL").is_some() {
        1
    } else {
        2
    };
    let mut points: Vec<String> = (1..=96)
        .step_by(step)
        .map(|n| format!("update:file:{n}"))
        .collect();
    points.extend(
        [
            "update:before-instruments",
            "update:before-calendar",
            "update:after-calendar",
        ]
        .map(String::from),
    );
    assert!(points.len() >= 50);
    for (k, point) in points.iter().enumerate() {
        let s = dir.path().join(format!("run{k}"));
        copy_dir(&base, &s);
        let reader = Store::open_with(
            &s,
            StoreOptions {
                map_threshold: 0,
                ..Default::default()
            },
        )
        .unwrap();
        let seen = snapshot(&reader);
        let out = update(
            SAMPLE,
            &s,
            &["--end-date", "2023-09-29"],
            &[("QSTORE_FAILPOINT", point)],
        );
        assert!(
            !out.status.success(),
            "{point}: the failpoint was not reached\n{}",
            text(&out)
        );
        assert_eq!(
            snapshot(&reader),
            seen,
            "{point}: a reader's mapped values changed"
        );
        let committed = point == "update:after-calendar";
        let (end, want) = if k % 2 == 1 && !committed {
            ("2023-08-15", &want_short)
        } else {
            ("2023-09-29", &want)
        };
        let out = ok(update(SAMPLE, &s, &["--end-date", end, "--json"], &[]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["recovered"], true, "{point}");
        assert_eq!(
            v["days_added"].as_u64().unwrap() > 0,
            !committed,
            "{point}: {out}"
        );
        assert!(
            store_tree(&s) == *want,
            "{point}: the rerun to {end} differs from a clean update"
        );
        std::fs::remove_dir_all(&s).unwrap();
    }
}
