//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::Output;

use qstore::{Calendar, Freq, Store, Timestamp};

/// `n` consecutive days from 2020-01-01 (weekends included: tests care about indexes, not trading days).
pub fn days(n: usize) -> Vec<Timestamp> {
    let first = chrono::NaiveDate::from_ymd_opt(2020, 1, 1).unwrap();
    (0..n)
        .map(|k| (first + chrono::Days::new(k as u64)).and_time(chrono::NaiveTime::MIN))
        .collect()
}

/// A new store in `dir` with a daily calendar of `n` days.
pub fn store_with_calendar(dir: &Path, n: usize) -> Store {
    let store = Store::create(dir).unwrap();
    store
        .save_calendar(&Calendar::new(Freq::DAY, days(n)).unwrap())
        .unwrap();
    store
}

/// The bytes qlib's writer produces: `np.hstack([index, values]).astype("<f").tofile(fp)`, built by hand.
pub fn qlib_bytes(start: u32, values: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(start as f32).to_le_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Compares float slices treating NaN as equal to NaN.
pub fn same(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}

#[macro_export]
macro_rules! assert_same {
    ($a:expr, $b:expr) => {{
        let (a, b): (&[f32], &[f32]) = (&$a, &$b);
        assert!($crate::common::same(a, b), "left:  {a:?}\nright: {b:?}");
    }};
}

/// Every file below `dir` with its bytes, sorted by path: for "nothing changed" and "byte-identical" checks.
/// The writer lock's empty file is left out: taking the lock (as a refused `--overwrite` does) changes no data.
pub fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == ".qstore-update.lock") {
                continue;
            } else {
                out.push((
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// The names in `dir`, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A finished command's standard output and error, for assertions and their messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The output of a command that must have succeeded (else the test fails showing it).
#[track_caller]
pub fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", text(&out));
    text(&out)
}
