//! DiskDatasetCache (HDF5): a cached dataset reads back exactly what `Store::features` computes, for any
//! instruments, expressions, date range and column order; updates append and equal fresh builds; killed
//! writers, concurrent readers and corrupted files; the DatasetURICache; `qcache` over datasets.
#![cfg(feature = "hdf5")]

mod common;

use common::{ok, text};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use qstore::cache::lock::FileLock;
use qstore::dataset::{DiskCacheMode, DiskDatasetCache, Outcome};
use qstore::{Engine, Frame, Freq, Universe, import, parse_timestamp};

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sample");

fn sample(dir: &Path) -> Engine {
    let csv = import::CsvSource::open(Path::new(SAMPLE), Default::default()).unwrap();
    let root = dir.join("s");
    import::import(
        &csv,
        &root,
        &Default::default(),
        &Default::default(),
        &|_| {},
    )
    .unwrap();
    Engine::open(root).unwrap()
}

fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(bin)
        .args(args)
        .env_remove("QSTORE_REDIS_URL")
        .env_remove("QSTORE_FAILPOINT")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn qdump(args: &[&str]) -> Output {
    run(env!("CARGO_BIN_EXE_qdump"), args, &[])
}

fn qcache(args: &[&str], env: &[(&str, &str)]) -> Output {
    run(env!("CARGO_BIN_EXE_qcache"), args, env)
}

/// A store of the sample up to `end` (later days come by `qdump update`).
fn store_until(dir: &Path, end: &str) -> Engine {
    let root = dir.join("s");
    let out = qdump(&[
        "all",
        "--csv",
        SAMPLE,
        "--to",
        root.to_str().unwrap(),
        "--end-date",
        end,
    ]);
    // Exit 3: symbols listed after `end` have no rows yet.
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
    Engine::open(root).unwrap()
}

fn update_to(root: &Path, end: &str) {
    ok(qdump(&[
        "update",
        "--csv",
        SAMPLE,
        "--to",
        root.to_str().unwrap(),
        "--end-date",
        end,
    ]));
}

fn cache_in(dir: &Path) -> DiskDatasetCache {
    DiskDatasetCache::new(dir, Box::new(FileLock::new(dir)))
}

#[track_caller]
fn same(a: &Frame, b: &Frame) {
    assert_eq!(a.columns(), b.columns());
    assert_eq!(a.len(), b.len());
    for r in 0..a.len() {
        assert_eq!(
            (a.instrument(r), a.calendar_row(r)),
            (b.instrument(r), b.calendar_row(r)),
            "row {r}"
        );
    }
    let bits = |f: &Frame| f.values().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(a), bits(b));
}

/// Look-ahead (Ref -1, -2), history (EMA: the whole series), windows, cross-field and constant columns.
const EXPRS: [&str; 6] = [
    "Ref($close, -1) / $close - 1",
    "$close",
    "Mean($close, 5)",
    "Corr($close, $volume, 10)",
    "EMA($close, 12)",
    "Ref($high, -2) - $low",
];

fn full(s: &Engine, universe: Universe<'_>, exprs: &[&str]) -> Frame {
    s.features(universe, exprs, None, None, Freq::DAY).unwrap()
}

/// The whole dataset read through `cache` (mode 1) equals what `Store::features` computes.
#[track_caller]
fn reads_back(cache: &DiskDatasetCache, s: &Engine, u: Universe<'_>, exprs: &[&str]) {
    let got = cache
        .dataset(s, u, exprs, None, None, Freq::DAY, DiskCacheMode::Use)
        .unwrap();
    same(&got, &full(s, u, exprs));
}

/// A string dataset of an HDF5 file.
fn h5_strings(path: &Path, name: &str) -> Vec<String> {
    let f = hdf5::File::open(path).unwrap();
    let v: Vec<hdf5::types::VarLenUnicode> = f.dataset(name).unwrap().read_raw().unwrap();
    v.iter().map(|s| s.as_str().to_string()).collect()
}

/// Reads a `.data` file the way an h5py user would, with no meta: the `fields` attribute names the columns,
/// `instruments[instrument[i]]` and `calendar[row[i]]` say what row i is. Its rows, values and `freq` are
/// the engine's for `universe`, bit for bit.
#[track_caller]
fn described_by_itself(path: &Path, s: &Engine, universe: Universe<'_>) {
    let f = hdf5::File::open(path).unwrap();
    let text = |name: &str| -> String {
        let a: hdf5::types::VarLenUnicode = f.attr(name).unwrap().read_scalar().unwrap();
        a.as_str().to_string()
    };
    assert_eq!(text("freq"), "day");
    assert!(text("description").contains("instrument[i]: index into `instruments`"));
    let fields: Vec<String> = text("fields").lines().map(String::from).collect();
    let names = h5_strings(path, "instruments");
    let dates = h5_strings(path, "calendar");
    assert_eq!(dates.len(), s.store().calendar(Freq::DAY).unwrap().len());
    let inst: Vec<u32> = f.dataset("instrument").unwrap().read_raw().unwrap();
    let rows: Vec<u32> = f.dataset("row").unwrap().read_raw().unwrap();
    let values: Vec<f32> = f.dataset("values").unwrap().read_raw().unwrap();
    let mut from_file: Vec<(String, String, Vec<u32>)> = (0..inst.len())
        .map(|i| {
            let n = fields.len();
            (
                names[inst[i] as usize].clone(),
                dates[rows[i] as usize].clone(),
                values[i * n..(i + 1) * n]
                    .iter()
                    .map(|v| v.to_bits())
                    .collect(),
            )
        })
        .collect();
    from_file.sort();
    let want = full(
        s,
        universe,
        &fields.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let want: Vec<(String, String, Vec<u32>)> = (0..want.len())
        .map(|r| {
            (
                want.instrument(r).to_string(),
                want.datetime(r).date().to_string(),
                want.row(r).iter().map(|v| v.to_bits()).collect(),
            )
        })
        .collect();
    assert_eq!(
        from_file.len(),
        want.len(),
        "{} rows; names {names:?}, {} dates, universe {universe:?}, first {:?} last {:?}",
        path.display(),
        dates.len(),
        from_file.first(),
        from_file.last()
    );
    for (a, b) in from_file.iter().zip(&want) {
        assert_eq!(a, b, "{} read without its meta", path.display());
    }
}

fn data_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    v.sort();
    v
}

#[test]
fn datasets_read_back_what_features_compute() {
    let dir = tempfile::tempdir().unwrap();
    let s = sample(dir.path());
    let cache = DiskDatasetCache::for_store(s.store().root(), false).unwrap();
    let d = |t: &str| Some(parse_timestamp(t).unwrap());
    let list: Vec<String> = ["SZ300009", "SH600000", "SH600009"]
        .map(String::from)
        .to_vec();
    for universe in [Universe::Market("all"), Universe::List(&list)] {
        for (start, end) in [
            (None, None),
            (d("2023-05-01"), d("2023-09-01")),
            (d("2023-08-24"), d("2023-08-24")),
            (d("2030-01-01"), None),
        ] {
            for mode in [
                DiskCacheMode::Use,
                DiskCacheMode::Use,
                DiskCacheMode::Rebuild,
            ] {
                let got = cache
                    .dataset(&s, universe, &EXPRS, start, end, Freq::DAY, mode)
                    .unwrap();
                let want = s.features(universe, &EXPRS, start, end, Freq::DAY).unwrap();
                same(&got, &want);
            }
        }
    }
    // Two datasets (market and list), each .data + .index of one generation, and a .meta.
    let files = data_files(&s.store().root().join("dataset_cache"));
    assert_eq!(files.len(), 6, "{files:?}");
    for ext in [".data", ".index", ".meta"] {
        assert_eq!(files.iter().filter(|f| f.ends_with(ext)).count(), 2);
    }
    assert!(cache.verify().unwrap().is_empty());
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_requests_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let s = sample(dir.path());
    let cache = DiskDatasetCache::for_store(s.store().root(), false).unwrap();
    let symbols: Vec<String> = s
        .store()
        .instruments("all")
        .unwrap()
        .symbols()
        .map(String::from)
        .collect();
    let pool = [
        "$close",
        "$volume",
        "Ref($close, 1)",
        "Ref($close, -3)",
        "Std($close, 20)",
        "Max($high, 10) - Min($low, 10)",
        "Rank($close, 15)",
        "Quantile($close, 30, 0.8)",
        "EMA($close, 5)",
        "Slope($close, 8)",
        "If($close > $open, 1, 0)",
        "Delta($close, 3) / Ref($close, 3)",
    ];
    let cal = s.store().calendar(Freq::DAY).unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for case in 0..24 {
        let mut list: Vec<String> = symbols
            .iter()
            .filter(|_| rng.below(3) == 0)
            .cloned()
            .collect();
        list.push(symbols[rng.below(symbols.len())].clone());
        // Some unknown symbols: no rows, like `Store::features`.
        if rng.below(4) == 0 {
            list.push("SH999999".into());
        }
        let mut exprs: Vec<&str> = pool.iter().copied().filter(|_| rng.below(3) == 0).collect();
        exprs.push(pool[rng.below(pool.len())]);
        // The same expression twice, in another spelling, is two columns of one field.
        if rng.below(3) == 0 {
            exprs.push("$close+0");
            exprs.push("Add($close, 0)");
        }
        let (a, b) = (rng.below(cal.len()), rng.below(cal.len()));
        let (start, end) = (cal.get(a.min(b)), cal.get(a.max(b)));
        let universe = if rng.below(4) == 0 {
            Universe::Market("all")
        } else {
            Universe::List(&list)
        };
        let got = cache
            .dataset(
                &s,
                universe,
                &exprs,
                start,
                end,
                Freq::DAY,
                DiskCacheMode::Use,
            )
            .unwrap_or_else(|e| panic!("case {case}: {e}"));
        let want = s.features(universe, &exprs, start, end, Freq::DAY).unwrap();
        same(&got, &want);
    }
    assert!(cache.verify().unwrap().is_empty());
}

#[test]
fn a_changed_store_makes_the_dataset_stale_and_skip_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = sample(dir.path());
    let cache = DiskDatasetCache::for_store(s.store().root(), false).unwrap();
    let exprs = ["Mean($close, 5)"];
    let all = Universe::Market("all");
    let skip = cache
        .dataset(&s, all, &exprs, None, None, Freq::DAY, DiskCacheMode::Skip)
        .unwrap();
    assert!(
        !s.store().root().join("dataset_cache").exists(),
        "mode 0 leaves the cache alone"
    );
    let first = cache
        .dataset(&s, all, &exprs, None, None, Freq::DAY, DiskCacheMode::Use)
        .unwrap();
    same(&first, &skip);
    // A correction to one close: the cached dataset is stale and is rebuilt with the new value (a
    // correction is not an append).
    let f = s
        .store()
        .feature("SH600000", "close", Freq::DAY)
        .unwrap()
        .unwrap();
    let mut v = f.values().to_vec();
    v[10] += 5.0;
    s.store()
        .rewrite_feature("SH600000", "close", Freq::DAY, f.start(), &v)
        .unwrap();
    assert_eq!(cache.behind(s.store()).unwrap(), 1);
    let fresh = cache_in(&dir.path().join("other"));
    assert_eq!(
        cache.warm(&s, all, &exprs, Freq::DAY, false).unwrap(),
        Outcome::Built
    );
    let again = cache
        .dataset(&s, all, &exprs, None, None, Freq::DAY, DiskCacheMode::Use)
        .unwrap();
    same(&again, &full(&s, all, &exprs));
    same(
        &again,
        &fresh
            .dataset(&s, all, &exprs, None, None, Freq::DAY, DiskCacheMode::Use)
            .unwrap(),
    );
    assert_ne!(first.values(), again.values());
    assert_eq!(cache.behind(s.store()).unwrap(), 0);
    // The market loses an instrument, with no new day and no changed value: stale too.
    let path = s.store().root().join("instruments/all.txt");
    let text: String = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("SH600009"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&path, text).unwrap();
    let s = Engine::open(s.store().root()).unwrap();
    assert_eq!(cache.behind(s.store()).unwrap(), 1);
    // This process remembers the request (for up to URI_EXPIRY, like qlib's DatasetURICache) while the
    // files exist and the calendar is the same; another process, or a refreshed cache, resolves again.
    cache.refresh();
    let after = cache
        .dataset(&s, all, &exprs, None, None, Freq::DAY, DiskCacheMode::Use)
        .unwrap();
    same(&after, &full(&s, all, &exprs));
    assert!(after.len() < again.len());
}

/// The update boundaries of `tests/update.rs`: late listings, suspensions, a delisting.
const STEPS: [&str; 6] = [
    "2023-05-19",
    "2023-05-22",
    "2023-06-30",
    "2023-08-24",
    "2023-08-25",
    "2024-01-11",
];

#[test]
fn updates_append_and_equal_fresh_builds() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_until(dir.path(), "2023-04-28");
    let root = s.store().root().to_path_buf();
    let list: Vec<String> = ["SH600000", "SH688001", "SH600009", "SZ000017"]
        .map(String::from)
        .to_vec();
    let cache = DiskDatasetCache::for_store(&root, false).unwrap();
    for u in [Universe::Market("all"), Universe::List(&list)] {
        assert_eq!(
            cache.warm(&s, u, &EXPRS, Freq::DAY, false).unwrap(),
            Outcome::Built
        );
    }
    for (i, step) in STEPS.iter().enumerate() {
        update_to(&root, step);
        let s = Engine::open(&root).unwrap();
        assert_eq!(cache.behind(s.store()).unwrap(), 2, "step {step}");
        let counts = cache.update_all(&s).unwrap();
        assert_eq!(
            counts.get(&Some(Outcome::Appended)),
            Some(&2),
            "step {step}: {counts:?}"
        );
        let fresh = cache_in(&dir.path().join(format!("fresh{i}")));
        for u in [Universe::Market("all"), Universe::List(&list)] {
            // Updated and freshly built datasets both equal the computation, hence each other.
            reads_back(&cache, &s, u, &EXPRS);
            reads_back(&fresh, &s, u, &EXPRS);
        }
        assert!(cache.verify().unwrap().is_empty(), "step {step}");
        // An appended file still describes itself: its own names, dates and fields give the computation.
        for name in data_files(cache.dir())
            .iter()
            .filter(|n| n.ends_with(".data"))
        {
            let path = cache.dir().join(name);
            let u = if h5_strings(&path, "instruments")
                .iter()
                .all(|n| list.contains(n))
            {
                Universe::List(&list)
            } else {
                Universe::Market("all")
            };
            described_by_itself(&path, &s, u);
        }
        // Old generations are gone: still one .data and one .index per dataset.
        assert_eq!(data_files(cache.dir()).len(), 6, "step {step}");
    }
    // Nothing new: nothing done.
    let s = Engine::open(&root).unwrap();
    assert_eq!(cache.behind(s.store()).unwrap(), 0);
    assert_eq!(
        cache
            .warm(&s, Universe::Market("all"), &EXPRS, Freq::DAY, false)
            .unwrap(),
        Outcome::DoneByOther
    );
}

#[test]
fn killed_writers_leave_the_previous_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_until(dir.path(), "2023-06-30");
    let root = s.store().root().to_path_buf();
    let r = root.to_str().unwrap();
    let warm = [
        "warm",
        r,
        "--dataset",
        "--fields",
        "$close",
        "Ref($close, -1)",
        "Mean($close, 5)",
    ];
    let exprs = ["$close", "Ref($close, -1)", "Mean($close, 5)"];
    let all = Universe::Market("all");
    // A first build killed before its meta: no dataset, the next one builds it.
    for point in ["dataset:after-data", "dataset:before-meta"] {
        let out = qcache(&warm, &[("QSTORE_FAILPOINT", point)]);
        assert!(!out.status.success(), "{point}: {}", text(&out));
        let cache = DiskDatasetCache::for_store(&root, false).unwrap();
        assert!(cache.entries().unwrap().is_empty(), "{point}");
        assert!(
            !cache.verify().unwrap().is_empty(),
            "{point}: leftovers are reported"
        );
    }
    ok(qcache(&warm, &[]));
    let cache = DiskDatasetCache::for_store(&root, false).unwrap();
    assert!(
        cache.verify().unwrap().is_empty(),
        "leftovers are cleaned by the next writer"
    );
    let before = std::fs::read(cache.entries().unwrap()[0].0.clone()).unwrap();
    // Updates killed at each point: the published dataset is the previous one, whole and readable.
    update_to(&root, "2023-08-25");
    for point in ["dataset:after-data", "dataset:before-meta"] {
        let out = qcache(&["update", r], &[("QSTORE_FAILPOINT", point)]);
        assert!(!out.status.success(), "{point}: {}", text(&out));
        let entries = cache.entries().unwrap();
        assert_eq!(std::fs::read(&entries[0].0).unwrap(), before, "{point}");
        let problems = cache.verify().unwrap();
        assert!(
            !problems.is_empty()
                && problems
                    .iter()
                    .all(|p| p.contains("orphaned") || p.contains("temp file")),
            "{point}: {problems:?}"
        );
    }
    let out = ok(qcache(&["update", r], &[]));
    assert!(out.contains("1 datasets: Appended: 1"), "{out}");
    assert!(cache.verify().unwrap().is_empty());
    let s = Engine::open(&root).unwrap();
    reads_back(&cache, &s, all, &exprs);
}

#[test]
fn readers_during_rebuilds_always_read_a_whole_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(sample(dir.path()));
    let exprs = ["$close", "Mean($close, 5)", "Std($volume, 10)"];
    let all = Universe::Market("all");
    let want = Arc::new(full(&s, all, &exprs));
    let d = |t: &str| Some(parse_timestamp(t).unwrap());
    let month = s
        .features(all, &exprs, d("2023-07-01"), d("2023-07-31"), Freq::DAY)
        .unwrap();
    let cache = DiskDatasetCache::for_store(s.store().root(), false).unwrap();
    cache.warm(&s, all, &exprs, Freq::DAY, false).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Rebuilds under way (0 or 1), and reads that began and ended while one was.
    let rebuilding = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let overlapped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut readers = Vec::new();
    for t in 0..3 {
        let (s, want, stop, month) = (s.clone(), want.clone(), stop.clone(), month.clone());
        let (rebuilding, overlapped) = (rebuilding.clone(), overlapped.clone());
        readers.push(std::thread::spawn(move || {
            use std::sync::atomic::Ordering::SeqCst;
            // Each reader is its own process's cache (own DatasetURICache).
            let cache = DiskDatasetCache::for_store(s.store().root(), false).unwrap();
            let mut n = 0;
            while !stop.load(SeqCst) || n < 5 {
                let before = rebuilding.load(SeqCst);
                let (start, end) = if (n + t) % 2 == 0 {
                    (None, None)
                } else {
                    (d("2023-07-01"), d("2023-07-31"))
                };
                let got = cache
                    .dataset(&s, all, &exprs, start, end, Freq::DAY, DiskCacheMode::Use)
                    .unwrap();
                same(&got, if start.is_none() { &want } else { &month });
                if before == 1 && rebuilding.load(SeqCst) == 1 {
                    overlapped.fetch_add(1, SeqCst);
                }
                n += 1;
            }
            n
        }));
    }
    // Rebuild until readers have read during rebuilds (bounded: a machine too slow for any overlap fails).
    for round in 0.. {
        rebuilding.store(1, std::sync::atomic::Ordering::SeqCst);
        cache.warm(&s, all, &exprs, Freq::DAY, true).unwrap();
        rebuilding.store(0, std::sync::atomic::Ordering::SeqCst);
        if round >= 7 && overlapped.load(std::sync::atomic::Ordering::SeqCst) >= 3 {
            break;
        }
        assert!(round < 200, "no read overlapped a rebuild");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() >= 5);
    }
    assert!(overlapped.load(std::sync::atomic::Ordering::SeqCst) >= 3);
    assert!(cache.verify().unwrap().is_empty());
}

#[test]
fn two_writers_build_a_dataset_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(sample(dir.path()));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                let cache = DiskDatasetCache::for_store(s.store().root(), false).unwrap();
                cache
                    .warm(&s, Universe::Market("all"), &EXPRS, Freq::DAY, false)
                    .unwrap()
            })
        })
        .collect();
    let mut outcomes: Vec<Outcome> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    outcomes.sort();
    assert_eq!(outcomes, [Outcome::Built, Outcome::DoneByOther]);
}

/// Damage to one of the files.
fn damage(path: &Path, how: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    match how {
        "truncate" => bytes.truncate(bytes.len() / 2),
        "flip" => {
            // The middle of a `.data` holds values (checked against the `checksum` dataset); of an `.index`,
            // chunk data with a Fletcher-32 checksum.
            let at = bytes.len() / 2;
            for b in &mut bytes[at..at + 64] {
                *b ^= 0x5A;
            }
        }
        "garbage" => bytes = b"{ not json".to_vec(),
        "empty" => bytes.clear(),
        _ => unreachable!(),
    }
    std::fs::write(path, bytes).unwrap();
}

fn generation_file(dir: &Path, ext: &str) -> PathBuf {
    let name = data_files(dir)
        .into_iter()
        .find(|n| n.ends_with(ext))
        .unwrap();
    dir.join(name)
}

#[test]
fn damaged_files_are_found_by_verify_and_rebuilt_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = sample(dir.path());
    let all = Universe::Market("all");
    let want = full(&s, all, &EXPRS);
    for (ext, how) in [
        (".data", "truncate"),
        (".data", "flip"),
        (".data", "empty"),
        (".index", "truncate"),
        (".index", "garbage"),
        (".meta", "garbage"),
        (".meta", "empty"),
    ] {
        let cache = DiskDatasetCache::for_store(s.store().root(), false).unwrap();
        cache.warm(&s, all, &EXPRS, Freq::DAY, false).unwrap();
        assert!(cache.verify().unwrap().is_empty());
        damage(&generation_file(cache.dir(), ext), how);
        let problems = cache.verify().unwrap();
        assert!(!problems.is_empty(), "{ext} {how}: verify finds it");
        let got = cache
            .dataset(&s, all, &EXPRS, None, None, Freq::DAY, DiskCacheMode::Use)
            .unwrap_or_else(|e| panic!("{ext} {how}: {e}"));
        same(&got, &want);
        // A damaged meta is a miss; the rebuild's publication replaces it.
        assert!(
            cache.verify().unwrap().is_empty(),
            "{ext} {how}: {:?}",
            cache.verify().unwrap()
        );
    }
}

#[test]
fn the_uri_cache_skips_resolution_until_the_files_change() {
    let dir = tempfile::tempdir().unwrap();
    let s = sample(dir.path());
    let all = Universe::Market("all");
    let exprs = ["$close", "Mean($close, 5)"];
    let want = full(&s, all, &exprs);
    let reader = DiskDatasetCache::for_store(s.store().root(), false).unwrap();
    let read = |c: &DiskDatasetCache| {
        c.dataset(&s, all, &exprs, None, None, Freq::DAY, DiskCacheMode::Use)
            .unwrap()
    };
    same(&read(&reader), &want);
    assert_eq!(reader.uri_stats().hits, 0);
    same(&read(&reader), &want);
    same(&read(&reader), &want);
    assert_eq!(reader.uri_stats().hits, 2, "repeated requests are hits");
    // Another process rebuilds: the remembered generation's files are gone, so the next request
    // resolves again (and still reads the right data).
    let writer = DiskDatasetCache::for_store(s.store().root(), false).unwrap();
    writer.warm(&s, all, &exprs, Freq::DAY, true).unwrap();
    same(&read(&reader), &want);
    assert_eq!(reader.uri_stats().hits, 3, "a hit whose files are gone");
    // A cleared cache: the hit's file check fails and the dataset is built again.
    writer.clear(|_| true, true).unwrap();
    same(&read(&reader), &want);
    assert_eq!(writer.entries().unwrap().len(), 1);
}

#[test]
fn qcache_builds_lists_verifies_and_clears_datasets() {
    let dir = tempfile::tempdir().unwrap();
    let s = sample(dir.path());
    let r = s.store().root().to_str().unwrap();
    let out = ok(qcache(
        &["warm", r, "--dataset", "--feature-set", "technical"],
        &[],
    ));
    assert!(out.contains("Built"), "{out}");
    let out = ok(qcache(
        &["warm", r, "--dataset", "--feature-set", "technical"],
        &[],
    ));
    assert!(out.contains("DoneByOther"), "{out}");
    let info: serde_json::Value =
        serde_json::from_str(&ok(qcache(&["info", r, "--json"], &[]))).unwrap();
    assert_eq!(info["datasets"]["count"], 1);
    assert_eq!(info["datasets"]["stale"], 0);
    assert!(info["datasets"]["rows"].as_u64().unwrap() > 1000);
    // The query reads the dataset: the same bytes as computing.
    let q = |disk: &str| {
        ok(qcache(
            &[
                "query",
                r,
                "--feature-set",
                "technical",
                "--start",
                "2023-06-01",
                "--disk-cache",
                disk,
            ],
            &[],
        ))
    };
    assert_eq!(q("1"), q("0"));
    ok(qcache(&["verify", r], &[]));
    damage(
        &generation_file(&s.store().root().join("dataset_cache"), ".data"),
        "flip",
    );
    let out = qcache(&["verify", r], &[]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let out = ok(qcache(&["clear", r, "--datasets"], &[]));
    assert!(out.contains("1 datasets removed"), "{out}");
    let info: serde_json::Value =
        serde_json::from_str(&ok(qcache(&["info", r, "--json"], &[]))).unwrap();
    assert_eq!(info["datasets"]["count"], 0);
    ok(qcache(&["verify", r], &[]));
}

#[test]
fn an_update_over_a_damaged_file_builds_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_until(dir.path(), "2023-06-30");
    let root = s.store().root().to_path_buf();
    let all = Universe::Market("all");
    let cache = DiskDatasetCache::for_store(&root, false).unwrap();
    cache.warm(&s, all, &EXPRS, Freq::DAY, false).unwrap();
    damage(&generation_file(cache.dir(), ".data"), "flip");
    update_to(&root, "2023-08-25");
    let s = Engine::open(&root).unwrap();
    let counts = cache.update_all(&s).unwrap();
    assert_eq!(counts.get(&Some(Outcome::Built)), Some(&1), "{counts:?}");
    assert!(cache.verify().unwrap().is_empty());
    reads_back(&cache, &s, all, &EXPRS);
}

#[test]
fn writers_on_redis_leases_build_once_and_fence_their_generations() {
    let url = std::env::var("QSTORE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(sample(dir.path()));
    let id = qstore::cache::store_id(s.store().root()).unwrap();
    let open = |s: &Engine| {
        let dir = s.store().root().join("dataset_cache");
        let lock = qstore::cache::lock::RedisLock::connect(
            &url,
            &id,
            std::time::Duration::from_secs(10),
            "QSTORE_TEST_REDIS_URL",
        )
        .expect("Redis must run for the tests (tools/test.sh starts it)");
        DiskDatasetCache::new(dir, Box::new(lock))
    };
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (s, c) = (s.clone(), open(&s));
            std::thread::spawn(move || {
                c.warm(&s, Universe::Market("all"), &EXPRS, Freq::DAY, false)
                    .unwrap()
            })
        })
        .collect();
    let mut outcomes: Vec<Outcome> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    outcomes.sort();
    assert_eq!(outcomes, [Outcome::Built, Outcome::DoneByOther]);
    // A rebuild gets a newer fencing token, and its generation is at least that token.
    let c = open(&s);
    let first = c.entries().unwrap()[0].1.clone().unwrap();
    c.warm(&s, Universe::Market("all"), &EXPRS, Freq::DAY, true)
        .unwrap();
    let second = c.entries().unwrap()[0].1.clone().unwrap();
    assert!(second.token > first.token);
    assert!(second.generation >= second.token && second.generation > first.generation);
    assert!(c.lock_backend().describe().starts_with("redis "));
    assert!(c.verify().unwrap().is_empty());
}

#[test]
fn qdump_update_brings_datasets_forward_or_says_they_are_behind() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_until(dir.path(), "2023-06-30");
    let root = s.store().root().to_path_buf();
    let r = root.to_str().unwrap();
    ok(qcache(
        &[
            "warm",
            r,
            "--dataset",
            "--fields",
            "$close",
            "Mean($close, 5)",
        ],
        &[],
    ));
    let update = |end: &str, extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "update",
            "--csv",
            SAMPLE,
            "--to",
            r,
            "--end-date",
            end,
            "--json",
        ];
        args.extend_from_slice(extra);
        serde_json::from_str(&ok(qdump(&args))).unwrap()
    };
    let v = update("2023-07-31", &[]);
    assert_eq!(v["dataset_cache"]["behind"], 1, "{v}");
    let v = update("2023-08-31", &["--update-caches"]);
    assert_eq!(v["dataset_cache"]["updated"], 1, "{v}");
    assert_eq!(v["dataset_cache"]["behind"], 0, "{v}");
    let s = Engine::open(&root).unwrap();
    let cache = DiskDatasetCache::for_store(&root, false).unwrap();
    assert_eq!(cache.behind(s.store()).unwrap(), 0);
    assert!(cache.verify().unwrap().is_empty());
}

#[test]
fn a_valid_hdf5_file_of_another_dataset_is_caught_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let s = sample(dir.path());
    let all = Universe::Market("all");
    let cache = DiskDatasetCache::for_store(s.store().root(), false).unwrap();
    cache.warm(&s, all, &EXPRS, Freq::DAY, false).unwrap();
    let six = generation_file(cache.dir(), ".data");
    // A well-formed file of the wrong shape (two columns of a list universe) in its place.
    let other = cache_in(&dir.path().join("other"));
    let list = vec!["SH600000".to_string()];
    other
        .warm(
            &s,
            Universe::List(&list),
            &["$close", "$open"],
            Freq::DAY,
            false,
        )
        .unwrap();
    std::fs::copy(generation_file(other.dir(), ".data"), &six).unwrap();
    assert!(!cache.verify().unwrap().is_empty());
    cache.refresh();
    let got = cache
        .dataset(&s, all, &EXPRS, None, None, Freq::DAY, DiskCacheMode::Use)
        .unwrap();
    same(&got, &full(&s, all, &EXPRS));
    assert!(cache.verify().unwrap().is_empty());
}

#[test]
fn builds_in_blocks_of_days_equal_one_block() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_until(dir.path(), "2023-06-30");
    let root = s.store().root().to_path_buf();
    let list: Vec<String> = ["SH600000", "SZ300009"].map(String::from).to_vec();
    // One day per block (the smallest budget), and seven.
    for (name, bytes) in [("one", 1), ("seven", 7 * 12 * EXPRS.len() * 4)] {
        let mut cache = cache_in(&dir.path().join(name));
        cache.build_bytes = bytes;
        for u in [Universe::Market("all"), Universe::List(&list)] {
            reads_back(&cache, &s, u, &EXPRS);
        }
        assert!(cache.verify().unwrap().is_empty(), "{name}");
    }
    // An update in blocks too.
    update_to(&root, "2023-08-25");
    let s = Engine::open(&root).unwrap();
    let mut cache = cache_in(&dir.path().join("one"));
    cache.build_bytes = 1;
    let counts = cache.update_all(&s).unwrap();
    assert_eq!(counts.get(&Some(Outcome::Appended)), Some(&2), "{counts:?}");
    for u in [Universe::Market("all"), Universe::List(&list)] {
        reads_back(&cache, &s, u, &EXPRS);
    }
    assert!(cache.verify().unwrap().is_empty());
}

/// A dataset covers a whole universe; a part of a query (a cluster's partition) is refused, not cached under
/// a key that would mix it up with its whole.
#[test]
fn a_part_of_a_query_is_refused_by_the_dataset_cache() {
    let dir = tempfile::tempdir().unwrap();
    let s = sample(dir.path());
    let cache = DiskDatasetCache::for_store(s.store().root(), false).unwrap();
    let part = vec!["SH600000".to_string()];
    let err = cache
        .dataset(
            &s,
            Universe::Part(&Universe::Market("all"), &part),
            &["$close"],
            None,
            None,
            Freq::DAY,
            DiskCacheMode::Use,
        )
        .unwrap_err();
    assert!(err.to_string().contains("not a part of a query"), "{err}");
}
