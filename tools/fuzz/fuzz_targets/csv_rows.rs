//! The CSV source: any bytes as a per-symbol file (beside a good one, or alone, or as one file with a symbol
//! column) open and stream to rows or to per-symbol failures, never a panic; delivered rows have one value per
//! date in every column.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use qstore::import::FileOptions;
use qstore::import::csv::CsvSource;
use qstore::import::Source;

fn dir() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

fuzz_target!(|data: &[u8]| {
    let Some((&layout, body)) = data.split_first() else { return };
    let root = dir().join("in");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let path = match layout % 3 {
        0 => {
            std::fs::write(root.join("GOOD.csv"), "date,close\n2023-01-03,1.5\n").unwrap();
            std::fs::write(root.join("FUZZ.csv"), body).unwrap();
            root.clone()
        }
        1 => {
            std::fs::write(root.join("FUZZ.csv"), body).unwrap();
            root.join("FUZZ.csv")
        }
        _ => {
            let mut text = b"symbol,date,close\n".to_vec();
            text.extend_from_slice(body);
            std::fs::write(root.join("ALL.csv"), text).unwrap();
            root.join("ALL.csv")
        }
    };
    let Ok(source) = CsvSource::open(&path, FileOptions::default()) else { return };
    let _ = source.dates();
    let _ = source.stream(&|item| {
        if let Ok(rows) = item {
            for col in rows.columns.iter().flatten() {
                assert_eq!(col.len(), rows.dates.len());
            }
        }
    });
});
