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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
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

/// One independently locked part of the cache, with its share of the limit.
struct Shard<K: Hash + Eq, V> {
    lru: LruCache<K, Entry<V>>,
    bytes: usize,
    limit: Limit,
    /// Counted under the shard's lock: no shared atomics for threads to fight over.
    stats: Stats,
}

/// Caches at least this large are split into [`SHARDS`] shards.
const SHARD_MIN_ENTRIES: usize = 256;
const SHARD_MIN_BYTES: usize = 64 << 20;
const SHARDS: usize = 8;

/// A thread-safe LRU cache bounded by [`Limit`], with optional expiry.
///
/// A cache of at least 256 entries or 64 MiB is split into 8 shards by key hash, each with its own lock, its
/// share of the limit and exact LRU order (so eviction is LRU per shard, and with a byte limit an entry larger
/// than one shard's share is not cached). Smaller caches have one shard: exact LRU over the whole cache.
pub struct MemCache<K: Hash + Eq, V> {
    shards: Box<[LockedShard<K, V>]>,
    limit: Limit,
    expiry: Option<Duration>,
    clock: Arc<dyn Clock>,
    hasher: lru::DefaultHasher,
}

type LockedShard<K, V> = Padded<Mutex<Shard<K, V>>>;

/// Keeps each shard's lock on its own cache lines, so two threads on different shards do not contend.
#[repr(align(128))]
struct Padded<T>(T);

impl<K: Hash + Eq, V: Clone + Weigh> MemCache<K, V> {
    /// A cache with `limit`, entries expiring `expiry` after insertion (never when `None`).
    pub fn new(limit: Limit, expiry: Option<Duration>) -> Self {
        MemCache::with_clock(limit, expiry, Arc::new(SystemClock))
    }

    /// The same with a clock of the caller's (tests).
    pub fn with_clock(limit: Limit, expiry: Option<Duration>, clock: Arc<dyn Clock>) -> Self {
        let n = match limit {
            Limit::Entries(e) if e >= SHARD_MIN_ENTRIES => SHARDS,
            Limit::Bytes(b) if b >= SHARD_MIN_BYTES => SHARDS,
            _ => 1,
        };
        // Spread the limit so that the shares add up to it exactly.
        let share = |total: usize, i: usize| total / n + usize::from(i < total % n);
        let shards = (0..n)
            .map(|i| {
                Padded(Mutex::new(Shard {
                    lru: LruCache::unbounded(),
                    bytes: 0,
                    limit: match limit {
                        Limit::Entries(e) => Limit::Entries(share(e, i)),
                        Limit::Bytes(b) => Limit::Bytes(share(b, i)),
                    },
                    stats: Stats::default(),
                }))
            })
            .collect();
        MemCache {
            shards,
            limit,
            expiry,
            clock,
            hasher: Default::default(),
        }
    }

    pub fn limit(&self) -> Limit {
        self.limit
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &Mutex<Shard<K, V>> {
        if self.shards.len() == 1 {
            return &self.shards[0].0;
        }
        let h = std::hash::BuildHasher::hash_one(&self.hasher, key);
        &self.shards[(h >> 32) as usize % self.shards.len()].0
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
        let mut shard = self.shard(key).lock();
        let hit = match shard.lru.get(key) {
            Some(e) if !self.is_expired(e, now) => Some(e.value.clone()),
            Some(_) => {
                if let Some(e) = shard.lru.pop(key) {
                    shard.bytes -= e.weight;
                }
                shard.stats.expired += 1;
                None
            }
            None => None,
        };
        match hit {
            Some(_) => shard.stats.hits += 1,
            None => shard.stats.misses += 1,
        }
        hit
    }

    /// Whether `key` holds a live entry, without refreshing its recency.
    pub fn contains<Q>(&self, key: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let now = self.clock.now();
        self.shard(key)
            .lock()
            .lru
            .peek(key)
            .is_some_and(|e| !self.is_expired(e, now))
    }

    /// Caches `value` under `key` (replacing an older one) and evicts the least recently used entries until the
    /// limit holds. Returns false, caching nothing, when the value alone exceeds the limit (of its shard).
    pub fn insert(&self, key: K, value: V) -> bool {
        let weight = value.weight();
        let inserted = self.clock.now();
        let mut guard = self.shard(&key).lock();
        let shard = &mut *guard;
        if let Some(old) = shard.lru.pop(&key) {
            shard.bytes -= old.weight;
        }
        match shard.limit {
            Limit::Bytes(max) if weight > max => {
                shard.stats.oversized += 1;
                return false;
            }
            Limit::Entries(0) => return false,
            _ => {}
        }
        shard.bytes += weight;
        shard.lru.put(
            key,
            Entry {
                value,
                weight,
                inserted,
            },
        );
        loop {
            let over = match shard.limit {
                Limit::Entries(n) => shard.lru.len() > n,
                Limit::Bytes(n) => shard.bytes > n,
            };
            if !over {
                break;
            }
            let Some((_, e)) = shard.lru.pop_lru() else {
                break;
            };
            shard.bytes -= e.weight;
            shard.stats.evictions += 1;
        }
        true
    }

    /// Drops `key`.
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut shard = self.shard(key).lock();
        let e = shard.lru.pop(key)?;
        shard.bytes -= e.weight;
        Some(e.value)
    }

    /// Drops every entry whose key matches `pred` (invalidation after a write).
    pub fn remove_if(&self, pred: impl Fn(&K) -> bool) -> usize
    where
        K: Clone,
    {
        let mut n = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.0.lock();
            let doomed: Vec<K> = shard
                .lru
                .iter()
                .filter(|(k, _)| pred(k))
                .map(|(k, _)| k.clone())
                .collect();
            for k in &doomed {
                if let Some(e) = shard.lru.pop(k) {
                    shard.bytes -= e.weight;
                    n += 1;
                }
            }
        }
        n
    }

    /// Drops everything.
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.0.lock();
            shard.lru.clear();
            shard.bytes = 0;
        }
    }

    /// Counters and sizes, summed over the shards.
    pub fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for shard in self.shards.iter() {
            let shard = shard.0.lock();
            let s = shard.stats;
            total.hits += s.hits;
            total.misses += s.misses;
            total.evictions += s.evictions;
            total.expired += s.expired;
            total.oversized += s.oversized;
            total.entries += shard.lru.len();
            total.bytes += shard.bytes;
        }
        total
    }
}
