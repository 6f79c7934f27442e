//! DiskDatasetCache (HDF5): a cached dataset reads back exactly what `Store::features` computes, for any date
//! range and column order; modes 0/1/2; a changed store makes it stale.
#![cfg(feature = "hdf5")]

use std::path::Path;

use qstore::datacache::{DiskCacheMode, DiskDatasetCache};
use qstore::{Frame, Freq, Store, Universe, import, parse_timestamp};

fn sample(dir: &Path) -> Store {
    let fixtures = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sample"));
    let csv = import::CsvSource::open(fixtures, Default::default()).unwrap();
    let root = dir.join("s");
    import::import(&csv, &root, false, &Default::default(), &|_| {}).unwrap();
    Store::open(root).unwrap()
}

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

const EXPRS: [&str; 4] = [
    "Ref($close, -1) / $close - 1",
    "$close",
    "Mean($close, 5)",
    "Corr($close, $volume, 10)",
];

#[test]
fn datasets_read_back_what_features_compute() {
    let dir = tempfile::tempdir().unwrap();
    let s = sample(dir.path());
    let cache = DiskDatasetCache::for_store(s.root());
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
    // Two datasets (market and list), each .data + .index + .meta.
    let mut files: Vec<String> = std::fs::read_dir(s.root().join("dataset_cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 6, "{files:?}");
    assert!(
        files
            .iter()
            .all(|f| f.ends_with(".data") || f.ends_with(".index") || f.ends_with(".meta"))
    );
}

#[test]
fn a_changed_store_makes_the_dataset_stale_and_skip_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = sample(dir.path());
    let cache = DiskDatasetCache::for_store(s.root());
    let exprs = ["Mean($close, 5)"];
    let skip = cache
        .dataset(
            &s,
            Universe::Market("all"),
            &exprs,
            None,
            None,
            Freq::DAY,
            DiskCacheMode::Skip,
        )
        .unwrap();
    assert!(
        !s.root().join("dataset_cache").exists(),
        "mode 0 leaves the cache alone"
    );
    let first = cache
        .dataset(
            &s,
            Universe::Market("all"),
            &exprs,
            None,
            None,
            Freq::DAY,
            DiskCacheMode::Use,
        )
        .unwrap();
    same(&first, &skip);
    // A correction to one close: the cached dataset is stale and is rebuilt with the new value.
    let f = s.feature("SH600000", "close", Freq::DAY).unwrap().unwrap();
    let mut v = f.values().to_vec();
    v[10] += 5.0;
    s.rewrite_feature("SH600000", "close", Freq::DAY, f.start(), &v)
        .unwrap();
    let again = cache
        .dataset(
            &s,
            Universe::Market("all"),
            &exprs,
            None,
            None,
            Freq::DAY,
            DiskCacheMode::Use,
        )
        .unwrap();
    let want = s
        .features(Universe::Market("all"), &exprs, None, None, Freq::DAY)
        .unwrap();
    same(&again, &want);
    assert_ne!(first.values(), again.values());
}
