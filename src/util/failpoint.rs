//! Crash-test hook: with `QSTORE_FAILPOINT=<name>[:<n>]` in the environment, the process aborts (as if killed)
//! the n-th time (default: the first) it passes the point `<name>`; with `QSTORE_FAILPOINT_PAUSE_MS=<ms>` it
//! sleeps there instead (a writer paused past its lease). Unset, a point costs one relaxed atomic load.
//!
//! Points: `import:after-calendar`, `import:symbol` (after each symbol's files), `import:before-publish`,
//! `import:after-exchange` (the new store is in place, the old one not yet removed); `update:file` (after each
//! file an update writes), `update:before-instruments`, `update:before-calendar`, `update:after-calendar`;
//! `cache:before-meta` (a cache entry's data written, its meta not yet), `cache:before-pack` (a pack's values
//! written, its index not yet); `dataset:after-data` (a dataset's new
//! `.data` in place, its `.index` not yet), `dataset:before-meta` (both files in place, the meta not yet).

#[cfg(debug_assertions)]
use std::sync::OnceLock;
#[cfg(debug_assertions)]
use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(debug_assertions)]
static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
#[cfg(debug_assertions)]
static PASSED: AtomicU64 = AtomicU64::new(0);

/// Aborts (or pauses) the process if this is the armed point and its count is reached. Compiled into debug
/// builds only (the test suite's binaries): a release binary never reads `QSTORE_FAILPOINT`.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_name: &str) {}

/// Aborts (or pauses) the process if this is the armed point and its count is reached. Compiled into debug
/// builds only (the test suite's binaries): a release binary never reads `QSTORE_FAILPOINT`.
#[cfg(debug_assertions)]
pub fn hit(name: &str) {
    let armed = ARMED.get_or_init(|| {
        let spec = std::env::var("QSTORE_FAILPOINT").ok()?;
        let (point, n) = match spec.rsplit_once(':') {
            Some((p, n)) if n.bytes().all(|b| b.is_ascii_digit()) && !n.is_empty() => {
                (p.to_owned(), n.parse().ok()?)
            }
            _ => (spec, 1),
        };
        Some((point, n))
    });
    if let Some((point, n)) = armed
        && point == name
        && PASSED.fetch_add(1, Ordering::Relaxed) + 1 == *n
    {
        if let Some(ms) = std::env::var("QSTORE_FAILPOINT_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            eprintln!("qstore: failpoint {name} reached, pausing {ms} ms");
            std::thread::sleep(std::time::Duration::from_millis(ms));
            return;
        }
        eprintln!("qstore: failpoint {name} reached, aborting");
        std::process::abort();
    }
}
