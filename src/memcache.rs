//! `MemCache`: an in-memory LRU bounded by entry count or by real heap bytes, with optional expiry.
//!
//! qlib's `MemCacheUnit` is the model, minus its faults: the limit here is applied when the cache is built (not
//! at import time), byte limits count the real heap size of a value ([`Weigh`]) rather than a shallow
//! `sys.getsizeof`, an entry larger than the whole limit is simply not cached (qlib evicts everything, then the
//! entry itself), and the cache is safe to share between threads.
//!
//! As in qlib, `get` refreshes an entry's recency and `contains` does not.

use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::Mutex;

/// How many bytes a value holds, on the heap and inline: what a byte-bounded cache counts.
pub trait Weigh {
    fn weight(&self) -> usize;
}

impl Weigh for Vec<f32> {
    fn weight(&self) -> usize {
        std::mem::size_of::<Self>() + self.capacity() * std::mem::size_of::<f32>()
    }
}

impl Weigh for String {
    fn weight(&self) -> usize {
        std::mem::size_of::<Self>() + self.capacity()
    }
}

impl<T: Weigh + ?Sized> Weigh for Arc<T> {
    /// The value behind the `Arc`: it is kept alive by the cache.
    fn weight(&self) -> usize {
        std::mem::size_of::<Self>() + (**self).weight()
    }
}

impl Weigh for crate::calendar::Calendar {
    fn weight(&self) -> usize {
        std::mem::size_of::<Self>() + std::mem::size_of_val(self.dates())
    }
}

impl Weigh for crate::instruments::Instruments {
    fn weight(&self) -> usize {
        // Per symbol: the map node (key String + Vec of spans) and their heap parts.
        let node = std::mem::size_of::<String>() + std::mem::size_of::<Vec<crate::Span>>() + 16;
        std::mem::size_of::<Self>()
            + self
                .iter()
                .map(|(s, spans)| node + s.len() + std::mem::size_of_val(spans))
                .sum::<usize>()
    }
}

/// What bounds a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// At most this many entries (qlib's "length").
    Entries(usize),
    /// At most this many bytes of [`Weigh::weight`] (qlib's "sizeof", but real).
    Bytes(usize),
}

/// The time source of expiry, replaceable in tests.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The monotonic system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(Mutex<Instant>);

impl ManualClock {
    pub fn new() -> ManualClock {
        ManualClock(Mutex::new(Instant::now()))
    }

    pub fn advance(&self, by: Duration) {
        *self.0.lock() += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.0.lock()
    }
}

/// Counters of a cache, for `qcache info` and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub hits: u64,
    pub misses: u64,
    /// Entries dropped to respect the limit.
    pub evictions: u64,
    /// Entries dropped because they were older than the expiry.
    pub expired: u64,
    /// Inserts refused because the value alone exceeds the limit.
    pub oversized: u64,
    pub entries: usize,
    pub bytes: usize,
}

struct Entry<V> {
    value: V,
    weight: usize,
    inserted: Instant,
}

struct Inner<K: Hash + Eq, V> {
    lru: LruCache<K, Entry<V>>,
    bytes: usize,
}

/// A thread-safe LRU cache bounded by [`Limit`], with optional expiry.
pub struct MemCache<K: Hash + Eq, V> {
    inner: Mutex<Inner<K, V>>,
    limit: Limit,
    expiry: Option<Duration>,
    clock: Arc<dyn Clock>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    expired: AtomicU64,
    oversized: AtomicU64,
}

impl<K: Hash + Eq, V: Clone + Weigh> MemCache<K, V> {
    /// A cache with `limit`, entries expiring `expiry` after insertion (never when `None`).
    pub fn new(limit: Limit, expiry: Option<Duration>) -> Self {
        MemCache::with_clock(limit, expiry, Arc::new(SystemClock))
    }

    /// The same with a clock of the caller's (tests).
    pub fn with_clock(limit: Limit, expiry: Option<Duration>, clock: Arc<dyn Clock>) -> Self {
        MemCache {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            limit,
            expiry,
            clock,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            oversized: AtomicU64::new(0),
        }
    }

    pub fn limit(&self) -> Limit {
        self.limit
    }

    fn is_expired(&self, e: &Entry<V>, now: Instant) -> bool {
        self.expiry
            .is_some_and(|x| now.duration_since(e.inserted) >= x)
    }

    /// The value of `key`, refreshing its recency; an expired entry is dropped and is a miss.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let now = self.clock.now();
        let mut inner = self.inner.lock();
        let hit = match inner.lru.get(key) {
            Some(e) if !self.is_expired(e, now) => Some(e.value.clone()),
            Some(_) => {
                if let Some(e) = inner.lru.pop(key) {
                    inner.bytes -= e.weight;
                }
                self.expired.fetch_add(1, Ordering::Relaxed);
                None
            }
            None => None,
        };
        drop(inner);
        match hit {
            Some(_) => self.hits.fetch_add(1, Ordering::Relaxed),
            None => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        hit
    }

    /// Whether `key` holds a live entry, without refreshing its recency.
    pub fn contains<Q>(&self, key: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let now = self.clock.now();
        self.inner
            .lock()
            .lru
            .peek(key)
            .is_some_and(|e| !self.is_expired(e, now))
    }

    /// Caches `value` under `key` (replacing an older one) and evicts the least recently used entries until the
    /// limit holds. Returns false, caching nothing, when the value alone exceeds the limit.
    pub fn insert(&self, key: K, value: V) -> bool {
        let weight = value.weight();
        let mut inner = self.inner.lock();
        if let Some(old) = inner.lru.pop(&key) {
            inner.bytes -= old.weight;
        }
        if let Limit::Bytes(max) = self.limit
            && weight > max
        {
            drop(inner);
            self.oversized.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if self.limit == Limit::Entries(0) {
            return false;
        }
        inner.bytes += weight;
        let inserted = self.clock.now();
        inner.lru.put(
            key,
            Entry {
                value,
                weight,
                inserted,
            },
        );
        let mut evicted = 0;
        loop {
            let over = match self.limit {
                Limit::Entries(n) => inner.lru.len() > n,
                Limit::Bytes(n) => inner.bytes > n,
            };
            if !over {
                break;
            }
            let Some((_, e)) = inner.lru.pop_lru() else {
                break;
            };
            inner.bytes -= e.weight;
            evicted += 1;
        }
        drop(inner);
        self.evictions.fetch_add(evicted, Ordering::Relaxed);
        true
    }

    /// Drops `key`.
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut inner = self.inner.lock();
        let e = inner.lru.pop(key)?;
        inner.bytes -= e.weight;
        Some(e.value)
    }

    /// Drops every entry whose key matches `pred` (invalidation after a write).
    pub fn remove_if(&self, pred: impl Fn(&K) -> bool) -> usize
    where
        K: Clone,
    {
        let mut inner = self.inner.lock();
        let doomed: Vec<K> = inner
            .lru
            .iter()
            .filter(|(k, _)| pred(k))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &doomed {
            if let Some(e) = inner.lru.pop(k) {
                inner.bytes -= e.weight;
            }
        }
        doomed.len()
    }

    /// Drops everything.
    pub fn clear(&self) {
        let mut inner = self.inner.lock();
        inner.lru.clear();
        inner.bytes = 0;
    }

    pub fn stats(&self) -> Stats {
        let inner = self.inner.lock();
        Stats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            oversized: self.oversized.load(Ordering::Relaxed),
            entries: inner.lru.len(),
            bytes: inner.bytes,
        }
    }
}
