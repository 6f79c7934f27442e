//! MemCache: get (hit) and insert latency on one thread, and get throughput on 1 and 2 threads, beside a plain
//! `HashMap` lookup behind the same kind of lock as the baseline (see benches/README.md).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use parking_lot::Mutex;
use qstore::util::memcache::{Limit, MemCache};

const KEYS: u64 = 400;

fn benches(c: &mut Criterion) {
    let cache: Arc<MemCache<u64, Arc<Vec<f32>>>> = Arc::new(MemCache::new(
        Limit::Entries(500),
        Some(Duration::from_secs(3600)),
    ));
    let value = Arc::new(vec![1f32; 250]);
    for k in 0..KEYS {
        cache.insert(k, value.clone());
    }
    let map: Mutex<HashMap<u64, Arc<Vec<f32>>>> =
        Mutex::new((0..KEYS).map(|k| (k, value.clone())).collect());

    let mut g = c.benchmark_group("memcache");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    let mut k = 0u64;
    g.bench_function("get_hit", |b| {
        b.iter(|| {
            k = (k + 7) % KEYS;
            black_box(cache.get(&k));
        })
    });
    g.bench_function("baseline_mutex_hashmap_get", |b| {
        b.iter(|| {
            k = (k + 7) % KEYS;
            black_box(map.lock().get(&k).cloned());
        })
    });
    g.bench_function("insert_replace", |b| {
        b.iter(|| {
            k = (k + 7) % KEYS;
            black_box(cache.insert(k, value.clone()));
        })
    });
    for threads in [1usize, 2] {
        g.bench_function(
            format!("get_hit_throughput_{threads}_threads_x100000"),
            |b| {
                b.iter_custom(|iters| {
                    let t0 = Instant::now();
                    std::thread::scope(|s| {
                        for t in 0..threads {
                            let cache = &cache;
                            s.spawn(move || {
                                let mut k = t as u64;
                                for _ in 0..iters * 100_000 / threads as u64 {
                                    k = (k + 7) % KEYS;
                                    black_box(cache.get(&k));
                                }
                            });
                        }
                    });
                    t0.elapsed()
                })
            },
        );
    }
    // Baseline: the same number of lookups in thread-private maps (no shared state at all), to show how far two
    // threads can scale on this machine.
    for threads in [1usize, 2] {
        g.bench_function(
            format!("baseline_private_map_throughput_{threads}_threads_x100000"),
            |b| {
                b.iter_custom(|iters| {
                    let t0 = Instant::now();
                    std::thread::scope(|s| {
                        for t in 0..threads {
                            let value = value.clone();
                            s.spawn(move || {
                                let map: HashMap<u64, Arc<Vec<f32>>> =
                                    (0..KEYS).map(|k| (k, value.clone())).collect();
                                let mut k = t as u64;
                                for _ in 0..iters * 100_000 / threads as u64 {
                                    k = (k + 7) % KEYS;
                                    black_box(map.get(&k).cloned());
                                }
                            });
                        }
                    });
                    t0.elapsed()
                })
            },
        );
    }
    g.finish();
}

criterion_group!(memcache, benches);
criterion_main!(memcache);
