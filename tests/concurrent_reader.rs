//! A reader in another process keeps a feature file mapped, and keeps reopening it, while this process rewrites,
//! appends, overlays and rebases it. The reader must never crash (SIGBUS) and must only ever see a state the
//! writer published: the old one or the new one, never a mix. An in-place append may be seen part-way, but only
//! as whole values after the old ones (the calendar is what hides it from store reads).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use qstore::FeatureFile;
use qstore::store::writer;

const ROUNDS: usize = 240;

/// The writer's operation number `k`, applied to `path`.
fn apply(path: &Path, k: usize) {
    let v = k as f32;
    match k % 4 {
        0 => writer::rewrite(path, k % 5, &vec![v; 64 + k % 17]).unwrap(),
        1 => {
            writer::write(path, None, &[v; 20]).unwrap();
        }
        2 => {
            let start = FeatureFile::open(path).unwrap().unwrap().start();
            writer::write(path, Some(start + 5), &[v; 10]).unwrap();
        }
        _ => {
            let f = FeatureFile::open(path).unwrap().unwrap();
            writer::rebase(path, f.start() + 1, f.end() + 7).unwrap();
        }
    }
}

type Snapshot = (usize, Vec<u32>);

/// Reads the file, mapped (`map` = true) or read into memory.
fn snapshot_with(path: &Path, map: bool) -> Snapshot {
    let f = FeatureFile::open_with(path, if map { 0 } else { u64::MAX })
        .unwrap()
        .unwrap();
    assert_eq!(f.is_mapped(), map);
    (f.start(), f.values().iter().map(|v| v.to_bits()).collect())
}

fn snapshot(path: &Path) -> Snapshot {
    let f = FeatureFile::open(path).unwrap().unwrap();
    (f.start(), f.values().iter().map(|v| v.to_bits()).collect())
}

#[test]
fn reader_process_sees_old_or_new_never_a_mix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("close.day.bin");
    apply(&path, 0);
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "reader_child",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("QSTORE_READER_DIR", dir.path())
        .spawn()
        .unwrap();
    let ready = dir.path().join("ready");
    let t0 = Instant::now();
    while !ready.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "reader never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    for k in 1..ROUNDS {
        apply(&path, k);
    }
    std::fs::write(dir.path().join("done"), b"").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the reader process failed: {:?}",
        out.status
    );
}

/// The reader process, started by the test above; not a test on its own.
#[test]
#[ignore = "the reader process of reader_process_sees_old_or_new_never_a_mix, which starts it"]
fn reader_child() {
    let dir =
        PathBuf::from(std::env::var_os("QSTORE_READER_DIR").expect("started by the writer test"));
    let path = dir.join("close.day.bin");
    // The states the writer publishes, computed on a private copy.
    let scratch = tempfile::tempdir().unwrap();
    let mine = scratch.path().join("close.day.bin");
    let mut states: Vec<(Snapshot, bool)> = Vec::new();
    for k in 0..ROUNDS {
        apply(&mine, k);
        states.push((snapshot(&mine), k % 4 == 1));
    }
    // A mapping held for the whole run must never change under us.
    let held = FeatureFile::open_with(&path, 0).unwrap().unwrap();
    assert!(held.is_mapped());
    let held_copy: Vec<u32> = held.values().iter().map(|v| v.to_bits()).collect();
    std::fs::write(dir.join("ready"), b"").unwrap();

    let (mut seen, mut distinct, mut last) = (0usize, 0usize, None);
    let done = dir.join("done");
    loop {
        let finished = done.exists();
        let snap = snapshot_with(&path, seen % 2 == 0);
        let ok = states.iter().enumerate().any(|(i, (state, _))| {
            *state == snap
                // an append seen part-way: the previous state, then some of the appended values
                || (states[i].1
                    && i > 0
                    && snap.0 == state.0
                    && snap.1.len() > states[i - 1].0.1.len()
                    && state.1.starts_with(&snap.1))
        });
        assert!(
            ok,
            "observed a state the writer never published: start {}, {} values",
            snap.0,
            snap.1.len()
        );
        let held_now: Vec<u32> = held.values().iter().map(|v| v.to_bits()).collect();
        assert_eq!(
            held_now, held_copy,
            "a held mapping changed under the reader"
        );
        seen += 1;
        if last.as_ref() != Some(&snap) {
            distinct += 1;
            last = Some(snap);
        }
        if finished {
            break;
        }
    }
    eprintln!("reader: {seen} reads, {distinct} distinct states, all published ones");
    assert!(
        distinct >= 2,
        "the reader saw only {distinct} state(s); the test raced nothing"
    );
}
