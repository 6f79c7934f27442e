//! Read-path benchmarks on a store of 5000 instruments x 750 days x 2 fields, each beside a baseline measured in
//! the same run (see benches/README.md for figures and conditions).
//!
//! - `range_250/*`: one 250-value range of a random instrument from a warm store (files read at open, the
//!   default for small files, or all mapped), vs reading the same file with `std::fs::read` and vs `pread` of
//!   the same 1000 bytes from an already open file.
//! - `panel_2x5000x750/*`: the whole panel from a warm store and from a freshly opened one (default, and with
//!   every file mapped), vs `std::fs::read` of the same 10,000 files.

use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use qstore::store::bin;
use qstore::{Calendar, Freq, Store};

const INSTRUMENTS: usize = 5000;
const DAYS: usize = 750;
const FIELDS: [&str; 2] = ["close", "volume"];

/// Writes the bench store directly (no fsync: this is a fixture, not the product's write path).
fn build_store(root: &Path) -> Vec<String> {
    let store = Store::create(root).unwrap();
    let first = chrono::NaiveDate::from_ymd_opt(2021, 1, 4).unwrap();
    let days = (0..DAYS)
        .map(|k| (first + chrono::Days::new(k as u64)).and_time(chrono::NaiveTime::MIN))
        .collect();
    store
        .save_calendar(&Calendar::new(Freq::DAY, days).unwrap())
        .unwrap();
    let names: Vec<String> = (0..INSTRUMENTS)
        .map(|i| format!("SH{:06}", 600000 + i))
        .collect();
    for (i, name) in names.iter().enumerate() {
        let dir = root.join("features").join(name.to_lowercase());
        std::fs::create_dir_all(&dir).unwrap();
        // One in ten lists late, so files start at different calendar indexes.
        let start = if i % 10 == 0 { (i * 7) % 300 } else { 0 };
        for (f, field) in FIELDS.iter().enumerate() {
            let values: Vec<f32> = (start..DAYS)
                .map(|t| (i * 31 + t * 7 + f) as f32 * 0.01)
                .collect();
            std::fs::write(
                dir.join(format!("{field}.day.bin")),
                bin::encode(start as u32, &values),
            )
            .unwrap();
        }
    }
    names
}

/// A fixed pseudo-random sequence (splitmix64), so every run reads the same instruments and ranges.
fn picks(n: usize) -> Vec<(usize, usize)> {
    let mut s = 0x5EEDu64;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (
                (z % INSTRUMENTS as u64) as usize,
                ((z >> 32) % (DAYS as u64 - 250)) as usize,
            )
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let names = build_store(dir.path());
    let store = Store::open(dir.path()).unwrap();
    let mapped_opts = || qstore::StoreOptions {
        map_threshold: 0,
        ..Default::default()
    };
    let mapped = Store::open_with(dir.path(), mapped_opts()).unwrap();
    let paths: Vec<PathBuf> = names
        .iter()
        .map(|n| store.feature_path(n, "close", Freq::DAY).unwrap())
        .collect();
    // Warm: every file mapped once and its pages in memory.
    for n in &names {
        for f in FIELDS {
            black_box(
                store
                    .read(n, f, Freq::DAY, 0..DAYS)
                    .unwrap()
                    .iter()
                    .sum::<f32>(),
            );
        }
    }
    let picks = picks(4096);

    let mut g = c.benchmark_group("range_250");
    g.measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    let mut k = 0usize;
    g.bench_function("qstore_read", |b| {
        b.iter(|| {
            let (i, s) = picks[k % picks.len()];
            k += 1;
            let v = store
                .read(&names[i], "close", Freq::DAY, s..s + 250)
                .unwrap();
            black_box(&v[..]);
        })
    });
    g.bench_function("qstore_read_all_mapped", |b| {
        b.iter(|| {
            let (i, s) = picks[k % picks.len()];
            k += 1;
            let v = mapped
                .read(&names[i], "close", Freq::DAY, s..s + 250)
                .unwrap();
            black_box(&v[..]);
        })
    });
    g.bench_function("qstore_read_and_sum", |b| {
        b.iter(|| {
            let (i, s) = picks[k % picks.len()];
            k += 1;
            let v = store
                .read(&names[i], "close", Freq::DAY, s..s + 250)
                .unwrap();
            black_box(v.iter().sum::<f32>());
        })
    });
    g.bench_function("baseline_fs_read_whole_file", |b| {
        b.iter(|| {
            let (i, _) = picks[k % picks.len()];
            k += 1;
            black_box(std::fs::read(&paths[i]).unwrap());
        })
    });
    let files: Vec<std::fs::File> = paths
        .iter()
        .map(|p| std::fs::File::open(p).unwrap())
        .collect();
    let mut buf = vec![0u8; 1000];
    g.bench_function("baseline_pread_open_file", |b| {
        b.iter(|| {
            let (i, s) = picks[k % picks.len()];
            k += 1;
            // Offsets are approximate for late listings; the cost is what is measured.
            let n = files[i].read_at(&mut buf, 4 + 4 * s as u64).unwrap();
            black_box(&buf[..n]);
        })
    });
    drop(files);
    g.finish();

    let mut g = c.benchmark_group("panel_2x5000x750");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1));
    let fields: Vec<String> = FIELDS.iter().map(|s| s.to_string()).collect();
    let names_ref: Vec<String> = names.clone();
    g.bench_function("qstore_panel_warm", |b| {
        b.iter(|| {
            black_box(
                store
                    .panel(&names_ref, &fields, Freq::DAY, 0..DAYS)
                    .unwrap(),
            );
        })
    });
    g.bench_function("qstore_panel_fresh_store", |b| {
        b.iter(|| {
            let fresh = Store::open(dir.path()).unwrap();
            black_box(
                fresh
                    .panel(&names_ref, &fields, Freq::DAY, 0..DAYS)
                    .unwrap(),
            );
        })
    });
    g.bench_function("qstore_panel_fresh_store_all_mapped", |b| {
        b.iter(|| {
            let fresh = Store::open_with(dir.path(), mapped_opts()).unwrap();
            black_box(
                fresh
                    .panel(&names_ref, &fields, Freq::DAY, 0..DAYS)
                    .unwrap(),
            );
        })
    });
    let all_paths: Vec<PathBuf> = names
        .iter()
        .flat_map(|n| FIELDS.map(|f| store.feature_path(n, f, Freq::DAY).unwrap()))
        .collect();
    g.bench_function("baseline_fs_read_10000_files", |b| {
        b.iter(|| {
            for p in &all_paths {
                black_box(std::fs::read(p).unwrap());
            }
        })
    });
    g.finish();
}

criterion_group!(read, benches);
criterion_main!(read);
