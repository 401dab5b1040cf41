//! Criterion benchmarks of the Rust core: HNSW search (100k x 384, k = 100) per storage
//! type, the shard merge (8 x 100), and `Slot::get` with and without contention.
//!
//! `cargo bench --bench core` (full); CI runs it short with
//! `-- --warm-up-time 1 --measurement-time 2` and `TWOSTAGE_BENCH_N=20000`: it measures and
//! prints, it never fails on time. The asserts inside make sure each bench measures what it
//! says (a search that found nothing would be fast and wrong).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use twostage::{merge_topk, Config, Dtype, Index, Order, Slot};

/// xorshift64*: a tiny seeded generator, so the data is the same on every run.
struct Rng(u64);
impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545F4914F6CDD1D);
        (x >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Approximately standard normal (sum of uniforms), plenty for benchmark data.
    fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.next_f32()).sum::<f32>() * 1.732 - 3.464
    }
}

/// Clustered unit vectors: 500 Gaussian centres in a 48-d subspace, plus noise.
fn clustered(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(0x9E3779B97F4A7C15 ^ 7);
    let sub = 48.min(dim);
    let centres: Vec<f32> = (0..500 * sub).map(|_| rng.normal()).collect();
    let basis: Vec<f32> = (0..sub * dim)
        .map(|_| rng.normal() / (dim as f32).sqrt())
        .collect();
    let mut rng = Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1);
    let mut out = vec![0f32; n * dim];
    let mut z = vec![0f32; sub];
    for row in out.chunks_mut(dim) {
        let c = (rng.next_f32() * 500.0) as usize % 500;
        for (j, zj) in z.iter_mut().enumerate() {
            *zj = centres[c * sub + j] + rng.normal() * 0.8;
        }
        for (i, x) in row.iter_mut().enumerate() {
            *x = (0..sub).map(|j| z[j] * basis[j * dim + i]).sum::<f32>() + 0.3 * rng.normal();
        }
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= norm);
    }
    out
}

fn bench_search(c: &mut Criterion) {
    let n: usize = std::env::var("TWOSTAGE_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let dim = 384;
    let k = 100;
    let base = clustered(n, dim, 1);
    let queries = clustered(256, dim, 2);
    let keys: Vec<u64> = (0..n as u64).collect();
    let mut group = c.benchmark_group(format!("search/n={n}/dim={dim}/k={k}"));
    group.sample_size(20);
    for (dtype, rescore) in [
        (Dtype::F32, false),
        (Dtype::F16, false),
        (Dtype::I8, false),
        (Dtype::I8, true),
    ] {
        let mut config = Config::new(dim);
        config.dtype = dtype;
        config.rescore = rescore;
        config.ef_search = Some(128);
        let index = Index::new(config).unwrap();
        index.add(&keys, &base).unwrap();
        let label = format!("{}{}", dtype.name(), if rescore { "+rescore" } else { "" });

        group.throughput(Throughput::Elements(1));
        let mut i = 0;
        group.bench_function(BenchmarkId::new("one_query/ef=128", &label), |b| {
            b.iter(|| {
                i = (i + 1) % 256;
                let hits = index
                    .search(&queries[i * dim..(i + 1) * dim], k, None)
                    .unwrap();
                assert_eq!(hits.counts[0], k as u64);
                black_box(hits)
            })
        });
        group.throughput(Throughput::Elements(256));
        group.bench_function(BenchmarkId::new("batch256/ef=128", &label), |b| {
            b.iter(|| {
                let hits = index.search(&queries, k, None).unwrap();
                assert!(hits.counts.iter().all(|&c| c == k as u64));
                black_box(hits)
            })
        });
    }
    group.finish();
}

fn bench_merge(c: &mut Criterion) {
    let mut rng = Rng(42);
    // 8 shards x 100 sorted (key, distance) lists with some keys in two shards (as after a
    // re-shard), the shape of a sharded top-100.
    let lists: Vec<Vec<(u64, f32)>> = (0..8)
        .map(|s| {
            let mut l: Vec<(u64, f32)> = (0..100)
                .map(|i| ((s * 90 + i) as u64, rng.next_f32()))
                .collect();
            l.sort_by(|a, b| a.1.total_cmp(&b.1));
            l
        })
        .collect();
    let mut group = c.benchmark_group("merge_topk");
    group.throughput(Throughput::Elements(800));
    group.bench_function("8x100->100", |b| {
        b.iter(|| {
            let out = merge_topk(lists.iter().map(|l| l.as_slice()), 100, Order::LowerFirst);
            assert_eq!(out.len(), 100);
            black_box(out)
        })
    });
    group.finish();
}

fn bench_slot(c: &mut Criterion) {
    let mut group = c.benchmark_group("slot_get");
    for contenders in [0usize, 1, 3] {
        let slot = Arc::new(Slot::new(vec![0u8; 64]));
        let stop = Arc::new(AtomicBool::new(false));
        // Background threads: `contenders` readers hammering get(), plus one swapper
        // replacing the value continuously, so the measured reads race real swaps.
        let mut handles = vec![];
        if contenders > 0 {
            let (s, st) = (slot.clone(), stop.clone());
            handles.push(thread::spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    s.swap(vec![1u8; 64]);
                    thread::yield_now();
                }
            }));
        }
        for _ in 1..contenders {
            let (s, st) = (slot.clone(), stop.clone());
            handles.push(thread::spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    black_box(s.get());
                }
            }));
        }
        group.bench_function(BenchmarkId::new("background_threads", contenders), |b| {
            b.iter(|| {
                let v = slot.get();
                assert_eq!(v.value.len(), 64);
                black_box(v)
            })
        });
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.join().unwrap();
        }
    }
    group.finish();
}

criterion_group!(benches, bench_merge, bench_slot, bench_search);
criterion_main!(benches);
