//! MemCache: eviction order, size accounting, oversized entries, expiry, and many threads at once.

use std::sync::Arc;
use std::time::Duration;

use qstore::util::memcache::{Limit, ManualClock, MemCache, Weigh};

fn v(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    v.resize(n, n as f32);
    v
}

#[test]
fn eviction_follows_recency_get_refreshes_contains_does_not() {
    let c: MemCache<&str, Vec<f32>> = MemCache::new(Limit::Entries(3), None);
    for k in ["a", "b", "c"] {
        assert!(c.insert(k, v(1)));
    }
    assert!(c.get("a").is_some()); // a is now the most recent
    c.insert("d", v(1)); // evicts b, the least recently used
    assert!(!c.contains("b") && c.contains("a") && c.contains("c") && c.contains("d"));
    assert!(c.contains("c")); // does not refresh c ...
    c.insert("e", v(1)); // ... so c goes next
    assert!(!c.contains("c"));
    let s = c.stats();
    assert_eq!((s.entries, s.evictions, s.hits), (3, 2, 1));
    assert!(c.get("zzz").is_none());
    assert_eq!(c.stats().misses, 1);
}

#[test]
fn byte_accounting_across_insert_replace_remove() {
    let w = |n| v(n).weight();
    let c: MemCache<u32, Vec<f32>> = MemCache::new(Limit::Bytes(w(100) * 3), None);
    c.insert(1, v(100));
    c.insert(2, v(100));
    assert_eq!(c.stats().bytes, 2 * w(100));
    c.insert(1, v(50)); // replace: the old weight goes, the new comes
    assert_eq!(c.stats().bytes, w(100) + w(50));
    assert_eq!(c.get(&1).unwrap().len(), 50);
    c.remove(&2);
    assert_eq!(c.stats().bytes, w(50));
    c.insert(3, v(100));
    c.insert(4, v(100));
    c.insert(5, v(100)); // 50 + 4 * 100 > 300: evict the oldest until it fits
    let s = c.stats();
    assert!(s.bytes <= w(100) * 3, "{s:?}");
    assert!(!c.contains(&1) && c.contains(&5));
    c.clear();
    assert_eq!((c.stats().bytes, c.stats().entries), (0, 0));
    // entry-count limits keep byte totals too
    let e: MemCache<u32, Vec<f32>> = MemCache::new(Limit::Entries(2), None);
    e.insert(1, v(10));
    e.insert(2, v(20));
    e.insert(3, v(30));
    assert_eq!(e.stats().bytes, w(20) + w(30));
}

#[test]
fn an_entry_larger_than_the_limit_is_not_cached_and_evicts_nothing() {
    let c: MemCache<u32, Vec<f32>> = MemCache::new(Limit::Bytes(v(100).weight()), None);
    assert!(c.insert(1, v(10)));
    assert!(!c.insert(2, v(1000)));
    assert!(c.contains(&1) && !c.contains(&2));
    assert_eq!(c.stats().oversized, 1);
    assert_eq!(c.stats().evictions, 0);
    let none: MemCache<u32, Vec<f32>> = MemCache::new(Limit::Entries(0), None);
    assert!(!none.insert(1, v(1)));
    assert!(!none.contains(&1));
}

#[test]
fn entries_expire_on_the_controllable_clock() {
    let clock = Arc::new(ManualClock::new());
    let c: MemCache<&str, Vec<f32>> = MemCache::with_clock(
        Limit::Entries(10),
        Some(Duration::from_secs(60)),
        clock.clone(),
    );
    c.insert("a", v(1));
    clock.advance(Duration::from_secs(59));
    assert!(c.get("a").is_some());
    assert!(c.contains("a"));
    clock.advance(Duration::from_secs(1));
    assert!(!c.contains("a"));
    assert!(
        c.get("a").is_none(),
        "an entry older than the expiry is a miss"
    );
    let s = c.stats();
    assert_eq!(
        (s.expired, s.entries, s.bytes),
        (1, 0, 0),
        "and it is dropped"
    );
    // a replaced entry starts a new life
    c.insert("b", v(1));
    clock.advance(Duration::from_secs(30));
    c.insert("b", v(2));
    clock.advance(Duration::from_secs(45));
    assert_eq!(c.get("b").unwrap().len(), 2);
}

#[test]
fn many_threads_never_exceed_the_limit_nor_lose_or_duplicate_entries() {
    let limit = 40 * v(64).weight();
    let c: Arc<MemCache<u32, Vec<f32>>> = Arc::new(MemCache::new(Limit::Bytes(limit), None));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                let mut s = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for _ in 0..20_000 {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    let key = (s % 200) as u32;
                    match (s >> 20) % 4 {
                        0 | 1 => {
                            if let Some(got) = c.get(&key) {
                                assert_eq!(
                                    got,
                                    v(key as usize % 64 + 1),
                                    "key {key} holds another key's value"
                                );
                            }
                        }
                        2 => {
                            c.insert(key, v(key as usize % 64 + 1));
                        }
                        _ => {
                            c.remove(&key);
                        }
                    }
                    assert!(c.stats().bytes <= limit);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = c.stats();
    let live: Vec<u32> = (0..200).filter(|k| c.contains(k)).collect();
    assert_eq!(s.entries, live.len());
    let sum: usize = live.iter().map(|&k| v(k as usize % 64 + 1).weight()).sum();
    assert_eq!(
        s.bytes, sum,
        "the byte total drifted from the entries' weights"
    );
    assert!(s.hits + s.misses > 0 && s.evictions > 0);
}

#[test]
fn a_sharded_cache_keeps_its_total_limits_under_two_threads() {
    // 512 entries (sharded: 8 locks) and 64 MiB (sharded), filled far past their limits from two threads.
    let entries: Arc<MemCache<u64, Vec<f32>>> = Arc::new(MemCache::new(Limit::Entries(512), None));
    let bytes: Arc<MemCache<u64, Vec<f32>>> = Arc::new(MemCache::new(Limit::Bytes(64 << 20), None));
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let (entries, bytes) = (entries.clone(), bytes.clone());
            s.spawn(move || {
                for k in 0..5000u64 {
                    let key = k * 2 + t;
                    entries.insert(key, v(4));
                    bytes.insert(key, v(10_000)); // 40 KB each: 5000 of them would be 200 MB
                    // The other thread may already have evicted it from the shard (64 entries each); when it
                    // is there, it is whole.
                    if let Some(got) = entries.get(&key) {
                        assert_eq!(got, v(4));
                    }
                }
            });
        }
    });
    let s = entries.stats();
    assert!(s.entries <= 512 && s.entries > 400, "{s:?}");
    assert_eq!(s.evictions as usize + s.entries, 10_000);
    let b = bytes.stats();
    assert!(b.bytes <= 64 << 20 && b.bytes > 48 << 20, "{b:?}");
    assert_eq!(b.oversized, 0);
}
