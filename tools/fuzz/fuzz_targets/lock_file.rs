//! File-lock files: any bytes in a lock file are listed and taken without a panic, and the token a holder
//! gets is above the one the file held (fencing never goes back).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use qstore::cache::lock::{FileLock, Lock};

fn dir() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

fuzz_target!(|data: &[u8]| {
    let lock = FileLock::new(dir());
    std::fs::write(dir().join("entry.lock"), data).unwrap();
    let _ = lock.list();
    let before = String::from_utf8_lossy(data)
        .split_whitespace()
        .next()
        .and_then(|t| t.parse::<u64>().ok());
    match lock.try_acquire("entry") {
        Ok(Some(guard)) => {
            if let Some(b) = before {
                assert!(guard.token() > b);
            }
            let _ = lock.list();
        }
        Ok(None) => panic!("nobody else holds it"),
        Err(e) => assert!(before == Some(u64::MAX), "{e}"),
    }
});
