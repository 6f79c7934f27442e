//! The `.bin` parser: any bytes either parse to a shape consistent with their size or give a typed error;
//! when they parse, a file with those bytes opens and reads back every value without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(shape) = qstore::store::bin::parse_shape(data) else {
        return;
    };
    assert_eq!(shape.len, data.len().saturating_sub(4) / 4);
    let dir = tempfile_dir();
    let path = dir.join("x.day.bin");
    std::fs::write(&path, data).unwrap();
    let f = qstore::FeatureFile::open(&path).unwrap().unwrap();
    assert_eq!(f.len(), shape.len);
    assert_eq!(f.values().len(), shape.len);
    let (first, values) = f.slice(0..usize::MAX);
    assert!(values.is_empty() || first == f.start());
    if let Some(start) = shape.start {
        // re-encoding what we read gives the same bytes back
        let again = qstore::store::bin::encode(start, f.values());
        assert_eq!(&again[4..], &data[4..]);
    }
});

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("qstore-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
