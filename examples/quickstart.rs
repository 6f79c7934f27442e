//! The README's library walk-through, compiled and run by the test suite:
//! `cargo run --example quickstart [STORE]` (default: a store built from fixtures/sample in a temp directory).

use qstore::{Engine, Freq, Universe, import, parse_timestamp};

fn main() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = match std::env::args().nth(1) {
        Some(path) => std::path::PathBuf::from(path),
        None => {
            let root = tmp.path().join("store");
            let csv = import::CsvSource::open("fixtures/sample".as_ref(), Default::default())?;
            import::import(
                &csv,
                &root,
                &Default::default(),
                &Default::default(),
                &|_| {},
            )?;
            root
        }
    };

    // The engine answers queries through its caches; its store reads and writes the files.
    let engine = Engine::open(&root)?;
    let store = engine.store();
    let cal = store.calendar(Freq::DAY)?;

    // One field over a date range: zero-copy, borrowed from the mapped file.
    let (march, end) = (
        parse_timestamp("2023-03-01")?,
        parse_timestamp("2023-03-31")?,
    );
    let close = store.read_dates("SH600000", "close", Freq::DAY, Some(march), Some(end))?;
    let valid: Vec<f32> = close.iter().copied().filter(|v| !v.is_nan()).collect();
    let mean = valid.iter().sum::<f32>() / valid.len().max(1) as f32;
    println!(
        "SH600000 close: {} values from {}, mean {mean:.2}",
        close.len(),
        cal.get(close.start()).unwrap()
    );

    // A training batch: time x instrument x field in one contiguous f32 array, NaN where there is no data.
    let instruments: Vec<String> = store
        .instruments("all")?
        .symbols()
        .map(String::from)
        .collect();
    let fields = vec!["close".to_string(), "volume".to_string()];
    let panel = store.panel(&instruments, &fields, Freq::DAY, 0..cal.len())?;
    let (t, n, f) = panel.shape();
    let x: &[f32] = panel.data(); // element (t, i, f) at (t * n + i) * f_len + f
    let missing = x.iter().filter(|v| v.is_nan()).count();
    println!(
        "panel {t} days x {n} instruments x {f} fields, {missing} of {} cells missing",
        x.len()
    );

    // Expressions, evaluated for every instrument in parallel (qlib's D.features).
    let frame = engine.features(
        Universe::Market("all"),
        &["Mean($close, 5)", "Std($close, 20)"],
        None,
        None,
        Freq::DAY,
    )?;
    let row: &[f32] = frame.row(0); // one value per expression for (frame.instrument(0), frame.datetime(0))
    println!(
        "{} rows; {} {}: {:?}",
        frame.len(),
        frame.instrument(0),
        frame.datetime(0),
        row
    );

    // The same query from the HDF5 dataset cache (qlib's disk_cache=1): built the first time, then read by date
    // range with one index lookup and one hyperslab. Keep the cache object: it remembers resolved requests.
    #[cfg(feature = "hdf5")]
    {
        use qstore::dataset::{DiskCacheMode, DiskDatasetCache};
        let datasets = DiskDatasetCache::for_store(store.root(), false)?;
        let exprs = ["Mean($close, 5)", "Std($close, 20)"];
        let all = Universe::Market("all");
        let march = datasets.dataset(
            &engine,
            all,
            &exprs,
            Some(march),
            Some(end),
            Freq::DAY,
            DiskCacheMode::Use,
        )?;
        println!("dataset cache: {} rows in March", march.len());
    }
    Ok(())
}
