//! HNSW over u64 keys, on the `usearch` crate, with what the crate leaves to its callers:
//! capacity and thread-slot growth, upserts, shards, exact re-scoring of quantised vectors,
//! and a checked file format.
//!
//! Concurrency model (all methods take `&self`):
//! - `gate` is a read-write lock. Every call into usearch holds it shared; only the rare
//!   operations that reallocate usearch's internals (capacity growth, more thread slots, a
//!   different `ef`) take it exclusively. usearch itself is safe for concurrent add, remove
//!   and search as long as capacity and thread slots were reserved first.
//! - `writer` serialises mutations, so two upserts of one key cannot interleave their
//!   remove/add halves, and capacity is computed from a stable size.
//! - usearch hands each concurrent call a per-thread context from a pool sized at reserve
//!   time, and a call that finds none fails. `in_flight` counts admitted calls so there are
//!   always enough contexts: admission grows the pool (exclusively) before it would run out.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard};

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::format::{self, Header, ShardSection};
use crate::kernels::{self, Isa, Kind};
use crate::merge::{top_k_in_place, Order};

/// The key usearch reserves for "no entry"; used as padding where fewer than k hits exist.
pub const MISSING_KEY: u64 = u64::MAX;

/// The largest candidate list (`ef`) an index accepts, as for `k`: usearch sizes its
/// per-call buffers by it, and beyond this a search only fails to allocate.
pub const MAX_EF: usize = 1 << 20;

/// The search ef an index uses when neither the call nor its `ef_search` names one, for a
/// graph of `n` vectors and `k` results: `k + 1.25 · X(n)`, rounded up to a multiple of 16,
/// where `X(n) = max(28, 38 · (n / 100,000)^0.355)` is how far past `k` the candidate list
/// had to reach for recall@k ≥ 0.95 (the 1.25 is the margin).
///
/// Measured (`benches/ef_rule.py`, BENCHMARKS.md §2) with a collection's settings (f16, cos,
/// M 16, efConstruction 128) on two kinds of data at 10k, 100k and 1M vectors: the ANN
/// benchmark's clustered vectors, and the e2e benchmark's tangent-space vectors around
/// SciFact's MiniLM embeddings searched with SciFact's 1,109 real queries (the harder: at 1M
/// it needs ef 160–176 for k = 100, where a fixed 128 gave 0.937). The least ef past `k`,
/// the larger of the two, was 28 at 10k (k = 100), 38 at 100k (k = 10) and 86–102 at 1M
/// (k = 10; two builds, which differ: construction is multi-threaded): about the same for
/// k = 10 and k = 100, growing ~2.3× per decade of size. The rule's picks then reached
/// recall@k 0.959–0.987 on both (at 1M: 208 for k = 100, 128 for k = 10; at 100k: 160 and
/// 64; at 10k: 144 and 48). Beyond 1M the power law is an extrapolation.
pub fn default_ef(n: usize, k: usize) -> usize {
    const EXTRA_FLOOR: f64 = 28.0;
    const EXTRA_AT_100K: f64 = 38.0;
    const EXTRA_GROWTH: f64 = 0.355;
    const MARGIN: f64 = 1.25;
    let extra = (EXTRA_AT_100K * (n as f64 / 1e5).powf(EXTRA_GROWTH)).max(EXTRA_FLOOR);
    let ef = (k as f64 + MARGIN * extra).min(MAX_EF as f64) as usize;
    ef.div_ceil(16).saturating_mul(16).clamp(k, MAX_EF)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Cosine distance, `1 - cos(a, b)`.
    Cos,
    /// Inner-product distance, `1 - a·b` (for vectors already normalised, same order as cos).
    Ip,
    /// Squared Euclidean distance.
    L2,
}

impl Metric {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "cos" | "cosine" => Ok(Metric::Cos),
            "ip" | "dot" => Ok(Metric::Ip),
            "l2" | "l2sq" => Ok(Metric::L2),
            _ => Err(Error::InvalidArgument(format!(
                "unknown metric {s:?}: expected 'cos', 'ip' or 'l2'"
            ))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Metric::Cos => "cos",
            Metric::Ip => "ip",
            Metric::L2 => "l2",
        }
    }
    pub(crate) fn code(self) -> u8 {
        self as u8
    }
    pub(crate) fn from_code(c: u8) -> Option<Self> {
        [Metric::Cos, Metric::Ip, Metric::L2]
            .get(c as usize)
            .copied()
    }
    fn kind(self) -> usearch::MetricKind {
        match self {
            Metric::Cos => usearch::MetricKind::Cos,
            Metric::Ip => usearch::MetricKind::IP,
            Metric::L2 => usearch::MetricKind::L2sq,
        }
    }
    /// The exact distance in f32, matching usearch's definition for this metric.
    #[inline]
    fn distance(self, q: &[f32], v: &[f32]) -> f32 {
        match self {
            Metric::Cos => {
                let (mut ab, mut aa, mut bb) = (0f32, 0f32, 0f32);
                for (a, b) in q.iter().zip(v) {
                    ab += a * b;
                    aa += a * a;
                    bb += b * b;
                }
                if aa == 0.0 || bb == 0.0 {
                    1.0
                } else {
                    1.0 - ab / (aa.sqrt() * bb.sqrt())
                }
            }
            Metric::Ip => 1.0 - q.iter().zip(v).map(|(a, b)| a * b).sum::<f32>(),
            Metric::L2 => q.iter().zip(v).map(|(a, b)| (a - b) * (a - b)).sum(),
        }
    }
}

/// Exact f32 distances from one query to vectors that the graph holds quantised (i8): the
/// re-scoring of `rescore` and the exact scan of an i8 index. The metric's definition, with
/// the SIMD kernels of `kernels` (a scalar three-sum loop cost ~1 µs a row, the bulk of a
/// re-scored search's 300 rows).
struct Exact<'q> {
    metric: Metric,
    q: &'q [f32],
    /// |q|, for cos.
    q_norm: f32,
    dot: kernels::F32Fn,
    l2: kernels::F32Fn,
}

impl<'q> Exact<'q> {
    fn new(metric: Metric, q: &'q [f32]) -> Self {
        let isa = Isa::detect();
        let dot = kernels::f32_kernel(Kind::OneMinusDot, isa);
        let q_norm = (1.0 - dot(q.as_ptr(), q.as_ptr(), q.len())).max(0.0).sqrt();
        Exact {
            metric,
            q,
            q_norm,
            dot,
            l2: kernels::f32_kernel(Kind::L2sq, isa),
        }
    }

    fn distance(&self, v: &[f32]) -> f32 {
        let (q, n) = (self.q.as_ptr(), self.q.len());
        match self.metric {
            Metric::Cos => {
                // The kernel returns 1 - a·b: a·b comes back to within ~6e-8, which is small
                // against |q||v| unless a vector is nearly zero; those take the scalar way.
                let v_norm = (1.0 - (self.dot)(v.as_ptr(), v.as_ptr(), n))
                    .max(0.0)
                    .sqrt();
                let norms = self.q_norm * v_norm;
                if norms < 1e-3 {
                    return self.metric.distance(self.q, v);
                }
                1.0 - (1.0 - (self.dot)(q, v.as_ptr(), n)) / norms
            }
            Metric::Ip => (self.dot)(q, v.as_ptr(), n),
            Metric::L2 => (self.l2)(q, v.as_ptr(), n),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    I8,
}

impl Dtype {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" => Ok(Dtype::F32),
            "f16" | "float16" => Ok(Dtype::F16),
            "i8" | "int8" => Ok(Dtype::I8),
            _ => Err(Error::InvalidArgument(format!(
                "unknown dtype {s:?}: expected 'f32', 'f16' or 'i8'"
            ))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::I8 => "i8",
        }
    }
    pub(crate) fn code(self) -> u8 {
        self as u8
    }
    pub(crate) fn from_code(c: u8) -> Option<Self> {
        [Dtype::F32, Dtype::F16, Dtype::I8].get(c as usize).copied()
    }
    fn kind(self) -> usearch::ScalarKind {
        match self {
            Dtype::F32 => usearch::ScalarKind::F32,
            Dtype::F16 => usearch::ScalarKind::F16,
            Dtype::I8 => usearch::ScalarKind::I8,
        }
    }
}

/// How an index is built and searched. `threads == 0` means "all cores".
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub dim: usize,
    pub metric: Metric,
    pub dtype: Dtype,
    pub connectivity: usize,
    pub ef_construction: usize,
    /// The candidate list size a search uses when it names none. `None`: it follows the
    /// index's size and `k` ([`default_ef`]), which is what an index gets unless set.
    pub ef_search: Option<usize>,
    pub shards: usize,
    pub threads: usize,
    /// Keep f16 copies of the vectors and re-rank an oversampled candidate list exactly.
    pub rescore: bool,
    /// With `rescore`, fetch `k * oversample` candidates before re-ranking.
    pub oversample: usize,
}

impl Config {
    pub fn new(dim: usize) -> Self {
        Config {
            dim,
            metric: Metric::Cos,
            dtype: Dtype::F32,
            connectivity: 16,
            ef_construction: 128,
            ef_search: None,
            shards: 1,
            threads: 0,
            rescore: false,
            oversample: 3,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.dim == 0 || self.dim > 65_536 {
            return bad(format!("dim must be in 1..=65536, got {}", self.dim));
        }
        if !(2..=1024).contains(&self.connectivity) {
            return bad(format!(
                "connectivity must be in 2..=1024, got {}",
                self.connectivity
            ));
        }
        if !(1..=MAX_EF).contains(&self.ef_construction) {
            return bad(format!(
                "ef_construction must be in 1..={MAX_EF}, got {}",
                self.ef_construction
            ));
        }
        if let Some(ef) = self.ef_search.filter(|ef| !(1..=MAX_EF).contains(ef)) {
            return bad(format!("ef_search must be in 1..={MAX_EF}, got {ef}"));
        }
        if self.shards == 0 || self.shards > 1024 {
            return bad(format!("shards must be in 1..=1024, got {}", self.shards));
        }
        if self.rescore && self.dtype != Dtype::I8 {
            return bad(format!(
                "rescore keeps f16 copies to correct i8 quantisation; with dtype={:?} it adds memory and no accuracy",
                self.dtype.name()
            ));
        }
        if self.oversample == 0 || self.oversample > 64 {
            return bad(format!(
                "oversample must be in 1..=64, got {}",
                self.oversample
            ));
        }
        Ok(())
    }

    fn thread_count(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// Results of a batch search: `n` rows of `k`, padded with [`MISSING_KEY`] / `inf` where a
/// row has fewer than `k` hits (`counts` says how many are real).
#[derive(Debug, Clone)]
pub struct Hits {
    pub n: usize,
    pub k: usize,
    pub keys: Vec<u64>,
    pub distances: Vec<f32>,
    pub counts: Vec<u64>,
}

/// The keys a filtered search may return (a metadata filter resolved to keys).
#[derive(Clone, Copy, Debug)]
pub enum Allowed<'a> {
    /// One byte per key, indexed by key: `mask[key] != 0` allows it; keys past the end are
    /// not allowed. O(1) per check, the form for large sets.
    Mask(&'a [u8]),
    /// Keys sorted ascending: binary search per check.
    Sorted(&'a [u64]),
}

impl Allowed<'_> {
    #[inline]
    pub fn contains(&self, key: u64) -> bool {
        match *self {
            Allowed::Mask(m) => usize::try_from(key)
                .ok()
                .and_then(|i| m.get(i))
                .is_some_and(|&b| b != 0),
            Allowed::Sorted(s) => s.binary_search(&key).is_ok(),
        }
    }
}

/// What a search walks: the whole graph, the graph with a key filter checked at every
/// candidate, or (exact) the given keys' vectors one by one.
#[derive(Clone, Copy)]
enum Scope<'a> {
    Graph(Option<Allowed<'a>>),
    Exact(&'a [u64]),
}

/// f16 copies of the vectors, for exact re-scoring of an i8 index. Rows written in this
/// process are held in memory; the rows of the file an index was opened from (`load` or
/// `view`) are read where they lie, in the mapped file, and paged in by the searches that
/// touch them, so an opened index keeps only its i8 graph in its own memory.
#[derive(Default)]
struct RescoreStore {
    /// Rows written since the index was created or opened: key to row in `data`.
    row_of: HashMap<u64, usize>,
    data: Vec<f16>,
    free: Vec<usize>,
    /// The rows of the file the index was opened from.
    file: Option<FileRows>,
    /// Keys whose row in `file` was removed or rewritten since it was opened.
    stale: HashSet<u64>,
}

/// A saved re-scoring section read in place: `n` keys ascending, then their rows in order.
struct FileRows {
    map: Arc<memmap2::Mmap>,
    keys: usize,
    rows: usize,
    n: usize,
}

impl FileRows {
    /// The section at `at..at + len` of `map`, if its rows can be read in place as f16
    /// (2-byte aligned, and a little-endian machine, as the file is); else `None`.
    fn new(
        map: &Arc<memmap2::Mmap>,
        at: usize,
        len: usize,
        dim: usize,
        path: &Path,
    ) -> Result<Option<Self>> {
        let (n, keys, rows) = format::rescore_layout(&map[at..at + len], dim, path)?;
        let aligned =
            (map.as_ptr() as usize + at + rows).is_multiple_of(std::mem::align_of::<f16>());
        Ok(
            (aligned && cfg!(target_endian = "little")).then(|| FileRows {
                map: Arc::clone(map),
                keys: at + keys,
                rows: at + rows,
                n,
            }),
        )
    }

    /// The row of `key`. Keys are mostly dense (a collection numbers its documents), so a
    /// few interpolation probes land on them in one or two reads; bisection bounds the rest.
    fn find(&self, key: u64) -> Option<usize> {
        use std::cmp::Ordering::{Equal, Greater, Less};
        let key_at = |i: usize| format::u64_at(&self.map, self.keys + i * 8);
        let (mut lo, mut hi) = (0, self.n);
        for _ in 0..4 {
            if lo >= hi {
                return None;
            }
            let (a, b) = (key_at(lo), key_at(hi - 1));
            if key < a || key > b {
                return None;
            }
            if a == b {
                return Some(lo);
            }
            let span = (key - a) as u128 * (hi - 1 - lo) as u128 / (b - a) as u128;
            let at = lo + span as usize;
            match key_at(at).cmp(&key) {
                Less => lo = at + 1,
                Greater => hi = at,
                Equal => return Some(at),
            }
        }
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match key_at(mid).cmp(&key) {
                Less => lo = mid + 1,
                Greater => hi = mid,
                Equal => return Some(mid),
            }
        }
        None
    }

    fn row(&self, i: usize, dim: usize) -> &[f16] {
        let at = self.rows + i * dim * 2;
        let bytes = &self.map[at..at + dim * 2];
        // SAFETY: `new` checked that rows start 2-byte aligned and that this machine is
        // little-endian like the file; f16 is a plain 2-byte value, so any bits are valid.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const f16, dim) }
    }

    fn keys(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        (0..self.n).map(|i| (i, format::u64_at(&self.map, self.keys + i * 8)))
    }
}

impl RescoreStore {
    fn in_file(&self, key: u64) -> bool {
        self.file.as_ref().is_some_and(|f| f.find(key).is_some())
    }
    fn put(&mut self, key: u64, v: &[f32]) {
        let dim = v.len();
        let row = match self.row_of.get(&key) {
            Some(&r) => r,
            None => {
                let r = self.free.pop().unwrap_or_else(|| {
                    self.data.resize(self.data.len() + dim, f16::ZERO);
                    self.data.len() / dim - 1
                });
                self.row_of.insert(key, r);
                if self.in_file(key) {
                    self.stale.insert(key);
                }
                r
            }
        };
        // Slice conversion uses F16C when the CPU has it (runtime-detected by `half`).
        self.data[row * dim..(row + 1) * dim].convert_from_f32_slice(v);
    }
    fn remove(&mut self, key: u64) {
        if let Some(r) = self.row_of.remove(&key) {
            self.free.push(r);
        } else if self.in_file(key) {
            self.stale.insert(key);
        }
    }
    fn row(&self, key: u64, dim: usize) -> Option<&[f16]> {
        if let Some(&r) = self.row_of.get(&key) {
            return Some(&self.data[r * dim..(r + 1) * dim]);
        }
        let file = self.file.as_ref()?;
        if self.stale.contains(&key) {
            return None;
        }
        file.find(key).map(|i| file.row(i, dim))
    }
    /// Every live row, for `save`.
    fn rows(&self, dim: usize) -> Vec<(u64, &[f16])> {
        let mut out: Vec<(u64, &[f16])> = self
            .row_of
            .iter()
            .map(|(&k, &r)| (k, &self.data[r * dim..(r + 1) * dim]))
            .collect();
        if let Some(file) = &self.file {
            out.extend(
                file.keys()
                    .filter(|(_, k)| !self.stale.contains(k))
                    .map(|(i, k)| (k, file.row(i, dim))),
            );
        }
        out
    }
    /// Bytes of this process's memory it holds (mapped file rows are the page cache's).
    fn memory_usage(&self) -> usize {
        self.data.len() * 2 + self.row_of.len() * 24 + self.stale.len() * 16
    }
}

struct Shard {
    hnsw: usearch::Index,
    rescore: Option<RwLock<RescoreStore>>,
}

/// Keeps a memory-mapped file alive for as long as a viewed index points into it.
struct Mapped {
    path: PathBuf,
    _map: Arc<memmap2::Mmap>,
}

pub struct Index {
    config: Config,
    shards: Vec<Shard>,
    gate: RwLock<()>,
    writer: Mutex<()>,
    in_flight: AtomicUsize,
    thread_slots: AtomicUsize,
    ef_current: AtomicUsize,
    pool: OnceLock<rayon::ThreadPool>,
    mapped: Option<Mapped>,
}

/// Admission to call into usearch: holds the gate shared and `n` counted thread contexts.
struct Admission<'a> {
    index: &'a Index,
    n: usize,
    _gate: RwLockReadGuard<'a, ()>,
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.index.in_flight.fetch_sub(self.n, Ordering::AcqRel);
    }
}

/// splitmix64's finaliser: spreads sequential keys evenly over shards.
#[inline]
fn shard_hash(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

/// Replaces usearch's distance with ours for f32/f16 storage (see `kernels`); i8 keeps
/// usearch's VNNI kernel, which is already fast. Must be called again after `load`/`view`,
/// which restore the built-in metric from the file.
fn install_kernel(hnsw: &mut usearch::Index, config: &Config) {
    let kind = match config.metric {
        Metric::L2 => Kind::L2sq,
        Metric::Cos | Metric::Ip => Kind::OneMinusDot,
    };
    let (isa, dim) = (Isa::detect(), config.dim);
    match config.dtype {
        Dtype::F32 => {
            let f = kernels::f32_kernel(kind, isa);
            hnsw.change_metric::<f32>(Box::new(move |a, b| f(a, b, dim)));
        }
        Dtype::F16 => {
            let f = kernels::f16_kernel(kind, isa);
            hnsw.change_metric::<usearch::f16>(Box::new(move |a, b| {
                f(a as *const u16, b as *const u16, dim)
            }));
        }
        Dtype::I8 => {}
    }
}

/// What usearch's own (index-wide) expansion is set to before the first search: every graph
/// search passes its ef through `Index::admit`, which changes it when it differs.
fn initial_ef(config: &Config) -> usize {
    config.ef_search.unwrap_or_else(|| default_ef(0, 1))
}

fn new_hnsw(config: &Config) -> Result<usearch::Index> {
    let options = usearch::IndexOptions {
        dimensions: config.dim,
        metric: config.metric.kind(),
        quantization: config.dtype.kind(),
        connectivity: config.connectivity,
        expansion_add: config.ef_construction,
        expansion_search: initial_ef(config),
        multi: false,
    };
    Ok(usearch::Index::new(&options)?)
}

impl Index {
    /// A new, empty index.
    pub fn new(config: Config) -> Result<Self> {
        config.validate()?;
        let shards = (0..config.shards)
            .map(|_| {
                let mut hnsw = new_hnsw(&config)?;
                install_kernel(&mut hnsw, &config);
                Ok(Shard {
                    hnsw,
                    rescore: config.rescore.then(|| RwLock::new(RescoreStore::default())),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let index = Self::assemble(config, shards, None);
        index.reserve_threads(index.config.thread_count() + 4)?;
        Ok(index)
    }

    fn assemble(config: Config, shards: Vec<Shard>, mapped: Option<Mapped>) -> Self {
        let ef = initial_ef(&config);
        Index {
            config,
            shards,
            gate: RwLock::new(()),
            writer: Mutex::new(()),
            in_flight: AtomicUsize::new(0),
            thread_slots: AtomicUsize::new(0),
            ef_current: AtomicUsize::new(ef),
            pool: OnceLock::new(),
            mapped,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn dim(&self) -> usize {
        self.config.dim
    }

    pub fn len(&self) -> usize {
        let _g = self.read_gate();
        self.shards.iter().map(|s| s.hnsw.size()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Path of the file this index is a read-only view of, if it is one.
    pub fn view_path(&self) -> Option<&Path> {
        self.mapped.as_ref().map(|m| m.path.as_path())
    }

    pub fn memory_usage(&self) -> usize {
        let _g = self.read_gate();
        self.shards
            .iter()
            .map(|s| {
                s.hnsw.memory_usage()
                    + s.rescore.as_ref().map_or(0, |r| {
                        r.read().unwrap_or_else(|p| p.into_inner()).memory_usage()
                    })
            })
            .sum()
    }

    /// The ef a search for `k` results runs with when it names none: the index's
    /// `ef_search` if one was set, else [`default_ef`] for the size of its largest shard.
    pub fn search_ef(&self, k: usize) -> usize {
        if let Some(ef) = self.config.ef_search {
            return ef;
        }
        let _g = self.read_gate();
        let n = self.shards.iter().map(|s| s.hnsw.size()).max().unwrap_or(0);
        default_ef(n, k)
    }

    /// A short description of the SIMD kernels usearch picked on this CPU.
    pub fn hardware_acceleration(&self) -> String {
        match self.config.dtype {
            Dtype::I8 => format!("usearch:{}", self.shards[0].hnsw.hardware_acceleration()),
            _ => format!("twostage:{}", Isa::detect().name()),
        }
    }

    fn pool(&self) -> &rayon::ThreadPool {
        // Built on first use, not at construction, so an index created before a server forks
        // its workers does not carry a dead pool into the children.
        self.pool.get_or_init(|| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(self.config.thread_count())
                .thread_name(|i| format!("twostage-index-{i}"))
                .build()
                .expect("cannot start the index thread pool")
        })
    }

    fn read_gate(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|p| p.into_inner())
    }

    fn shard_of(&self, key: u64) -> usize {
        (shard_hash(key) % self.shards.len() as u64) as usize
    }

    fn reserve_threads(&self, want: usize) -> Result<()> {
        let _g = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let have = self.thread_slots.load(Ordering::Acquire);
        if want <= have {
            return Ok(());
        }
        let want = want.next_power_of_two();
        for s in &self.shards {
            s.hnsw
                .reserve_capacity_and_threads(s.hnsw.capacity(), want)?;
        }
        self.thread_slots.store(want, Ordering::Release);
        Ok(())
    }

    /// Admits `n` concurrent calls into usearch at search expansion `ef` (None: any).
    fn admit(&self, n: usize, ef: Option<usize>) -> Result<Admission<'_>> {
        loop {
            let after = self.in_flight.fetch_add(n, Ordering::AcqRel) + n;
            if after > self.thread_slots.load(Ordering::Acquire) {
                self.in_flight.fetch_sub(n, Ordering::AcqRel);
                self.reserve_threads(after)?;
                continue;
            }
            let admission = Admission {
                index: self,
                n,
                _gate: self.read_gate(),
            };
            match ef {
                Some(ef) if ef != self.ef_current.load(Ordering::Acquire) => {
                    // `ef` is index-wide state in usearch: change it exclusively, then retry.
                    drop(admission);
                    let _w = self.gate.write().unwrap_or_else(|p| p.into_inner());
                    for s in &self.shards {
                        s.hnsw.change_expansion_search(ef);
                    }
                    self.ef_current.store(ef, Ordering::Release);
                }
                _ => return Ok(admission),
            }
        }
    }

    fn check_writable(&self) -> Result<()> {
        match &self.mapped {
            Some(m) => Err(Error::ReadOnly(m.path.clone())),
            None => Ok(()),
        }
    }

    /// With our `1 - a·b` kernel, cosine needs unit vectors: normalise a copy. Other
    /// metrics and i8 storage (usearch's own kernel) take the input as it is.
    fn prepare<'a>(&self, data: &'a [f32]) -> std::borrow::Cow<'a, [f32]> {
        if self.config.metric == Metric::Cos && self.config.dtype != Dtype::I8 {
            let mut owned = data.to_vec();
            kernels::normalize_rows(&mut owned, self.config.dim);
            std::borrow::Cow::Owned(owned)
        } else {
            std::borrow::Cow::Borrowed(data)
        }
    }

    /// Validates a flat row-major batch of vectors: length, and every value finite.
    fn check_vectors(&self, data: &[f32], what: &'static str) -> Result<usize> {
        let dim = self.config.dim;
        if !data.len().is_multiple_of(dim) {
            return Err(Error::DimensionMismatch {
                what,
                expected: dim,
                got: data.len(),
            });
        }
        if let Some(pos) = data.iter().position(|x| !x.is_finite()) {
            return Err(Error::InvalidVector(format!(
                "{what} row {} column {} is {} (vectors must be finite)",
                pos / dim,
                pos % dim,
                data[pos]
            )));
        }
        if self.config.metric == Metric::Cos {
            if let Some(row) = data.chunks(dim).position(|r| r.iter().all(|&x| x == 0.0)) {
                return Err(Error::InvalidVector(format!(
                    "{what} row {row} is all zeros: cosine distance is undefined for it"
                )));
            }
        }
        Ok(data.len() / dim)
    }

    /// Checks a batch for `add` without changing anything: shape, finiteness, one key per
    /// row, no key twice, no reserved key. Returns the row count.
    pub fn validate_batch(&self, keys: &[u64], vectors: &[f32]) -> Result<usize> {
        let n = self.check_vectors(vectors, "vectors")?;
        if n != keys.len() {
            return Err(Error::InvalidVector(format!(
                "{} keys but {} vectors: pass one key per row",
                keys.len(),
                n
            )));
        }
        let mut first_row: HashMap<u64, usize> = HashMap::with_capacity(n);
        for (i, &k) in keys.iter().enumerate() {
            if k == MISSING_KEY {
                return Err(Error::InvalidArgument(format!(
                    "key {MISSING_KEY} (2**64 - 1) at row {i} is reserved to mark missing results"
                )));
            }
            if let Some(first) = first_row.insert(k, i) {
                return Err(Error::DuplicateKey {
                    key: k,
                    first,
                    second: i,
                });
            }
        }
        Ok(n)
    }

    /// Adds vectors under `keys`, replacing the vector of any key already present (upsert).
    ///
    /// The whole batch is validated before anything changes: a bad row, a duplicate key or
    /// the reserved key `u64::MAX` leaves the index as it was.
    pub fn add(&self, keys: &[u64], vectors: &[f32]) -> Result<usize> {
        self.validate_batch(keys, vectors)?;
        self.add_validated(keys, vectors)
    }

    /// `add` for a batch that already passed [`Index::validate_batch`] (the binding checks a
    /// whole batch once, then adds it in interruptible chunks).
    pub(crate) fn add_validated(&self, keys: &[u64], vectors: &[f32]) -> Result<usize> {
        self.check_writable()?;
        let n = keys.len();
        if n == 0 {
            return Ok(0);
        }
        let vectors = self.prepare(vectors);
        let vectors: &[f32] = &vectors;
        let dim = self.config.dim;
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());

        // Grow each shard's capacity before the batch: usearch refuses inserts past it. Slots
        // of removed keys are reused first, so size + new keys always suffices.
        let mut new_per_shard = vec![0usize; self.shards.len()];
        for &k in keys {
            new_per_shard[self.shard_of(k)] += 1;
        }
        let needs_growth = self
            .shards
            .iter()
            .zip(&new_per_shard)
            .any(|(s, &m)| s.hnsw.size() + m > s.hnsw.capacity());
        if needs_growth {
            let _g = self.gate.write().unwrap_or_else(|p| p.into_inner());
            let threads = self.thread_slots.load(Ordering::Acquire);
            for (s, &m) in self.shards.iter().zip(&new_per_shard) {
                let need = s.hnsw.size() + m;
                if need > s.hnsw.capacity() {
                    let target = need.next_power_of_two().max(1024);
                    s.hnsw.reserve_capacity_and_threads(target, threads)?;
                }
            }
        }

        let workers = self.config.thread_count().min(n);
        let _a = self.admit(workers, None)?;
        let work = |(i, &key): (usize, &u64)| -> Result<()> {
            let shard = &self.shards[self.shard_of(key)];
            let v = &vectors[i * dim..(i + 1) * dim];
            if shard.hnsw.contains(key) {
                shard.hnsw.remove(key)?;
            }
            shard.hnsw.add(key, v)?;
            if let Some(store) = &shard.rescore {
                store.write().unwrap_or_else(|p| p.into_inner()).put(key, v);
            }
            Ok(())
        };
        if workers <= 1 {
            keys.iter().enumerate().try_for_each(work)?;
        } else {
            self.pool()
                .install(|| keys.par_iter().enumerate().try_for_each(work))?;
        }
        Ok(n)
    }

    /// Removes `keys`. Unless `missing_ok`, an unknown key is an error and nothing is removed.
    pub fn remove(&self, keys: &[u64], missing_ok: bool) -> Result<usize> {
        self.check_writable()?;
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let _a = self.admit(1, None)?;
        if !missing_ok {
            let missing: Vec<u64> = keys
                .iter()
                .copied()
                .filter(|&k| !self.shards[self.shard_of(k)].hnsw.contains(k))
                .collect();
            if !missing.is_empty() {
                return Err(Error::KeyNotFound(missing_message(&missing)));
            }
        }
        let mut removed = 0;
        let mut seen = HashSet::with_capacity(keys.len());
        for &k in keys {
            if !seen.insert(k) {
                continue;
            }
            let shard = &self.shards[self.shard_of(k)];
            removed += shard.hnsw.remove(k)?;
            if let Some(store) = &shard.rescore {
                store.write().unwrap_or_else(|p| p.into_inner()).remove(k);
            }
        }
        Ok(removed)
    }

    pub fn contains(&self, key: u64) -> bool {
        let _g = self.read_gate();
        self.shards[self.shard_of(key)].hnsw.contains(key)
    }

    /// The stored vectors of `keys` as f32 (dequantised; from the f16 copies with `rescore`).
    pub fn get(&self, keys: &[u64]) -> Result<Vec<f32>> {
        let dim = self.config.dim;
        let _a = self.admit(1, None)?;
        let mut out = vec![0f32; keys.len() * dim];
        let mut missing = vec![];
        for (i, &k) in keys.iter().enumerate() {
            let shard = &self.shards[self.shard_of(k)];
            let row = &mut out[i * dim..(i + 1) * dim];
            if let Some(store) = &shard.rescore {
                let store = store.read().unwrap_or_else(|p| p.into_inner());
                match store.row(k, dim) {
                    Some(src) => src.convert_to_f32_slice(row),
                    None => missing.push(k),
                }
            } else if shard.hnsw.get(k, row)? == 0 {
                missing.push(k);
            }
        }
        if !missing.is_empty() {
            return Err(Error::KeyNotFound(missing_message(&missing)));
        }
        Ok(out)
    }

    /// Searches `queries` (row-major, `n * dim`) for their `k` nearest keys.
    pub fn search(&self, queries: &[f32], k: usize, ef: Option<usize>) -> Result<Hits> {
        self.search_scoped(queries, k, ef, Scope::Graph(None))
    }

    /// [`Index::search`] restricted to `allowed` keys, checked inside the graph walk: every
    /// node is still walked through, but only allowed ones enter the result list, so the
    /// walk goes on until `max(k, ef)` allowed keys were seen (or the graph is exhausted).
    /// Its cost grows as the allowed share shrinks: below ~10 % of 100k keys (BENCHMARKS.md
    /// §12), [`Index::search_exact`] over the allowed keys is cheaper, and exact.
    pub fn search_filtered(
        &self,
        queries: &[f32],
        k: usize,
        ef: Option<usize>,
        allowed: Allowed<'_>,
    ) -> Result<Hits> {
        self.search_scoped(queries, k, ef, Scope::Graph(Some(allowed)))
    }

    /// The exact top `k` among `keys` (brute force over their stored vectors, with the
    /// distance the graph search reports for them). Keys not in the index are skipped, so a
    /// key set taken before a delete stays usable; a key listed twice counts once.
    pub fn search_exact(&self, queries: &[f32], k: usize, keys: &[u64]) -> Result<Hits> {
        let owned;
        let keys = if keys.windows(2).all(|w| w[0] < w[1]) {
            keys
        } else {
            let mut v = keys.to_vec();
            v.sort_unstable();
            v.dedup();
            owned = v;
            &owned
        };
        self.search_scoped(queries, k, None, Scope::Exact(keys))
    }

    fn search_scoped(
        &self,
        queries: &[f32],
        k: usize,
        ef: Option<usize>,
        scope: Scope<'_>,
    ) -> Result<Hits> {
        let n = self.check_vectors(queries, "queries")?;
        if k == 0 {
            return Err(Error::InvalidArgument("k must be >= 1".into()));
        }
        if k > 1 << 20 {
            return Err(Error::InvalidArgument(format!(
                "k={k} is too large (max 1048576)"
            )));
        }
        if let Some(ef) = ef.filter(|ef| !(1..=MAX_EF).contains(ef)) {
            return Err(Error::InvalidArgument(format!(
                "ef must be in 1..={MAX_EF}, got {ef}"
            )));
        }
        // The result arrays are allocated up front; refuse sizes that could only end in an
        // allocation failure (which aborts the process instead of raising).
        const MAX_RESULTS: usize = 1 << 28;
        if n.checked_mul(k).is_none_or(|total| total > MAX_RESULTS) {
            return Err(Error::InvalidArgument(format!(
                "{n} queries x k={k} is more than {MAX_RESULTS} results in one call: \
                 split the batch"
            )));
        }
        // An exact scan reads no graph: it leaves the index's `ef` as it is.
        let ef = match scope {
            Scope::Graph(_) => Some(ef.unwrap_or_else(|| self.search_ef(k))),
            Scope::Exact(_) => None,
        };
        let dim = self.config.dim;
        let queries = self.prepare(queries);
        let queries: &[f32] = &queries;
        let mut hits = Hits {
            n,
            k,
            keys: vec![MISSING_KEY; n * k],
            distances: vec![f32::INFINITY; n * k],
            counts: vec![0; n],
        };
        if n == 0 {
            return Ok(hits);
        }
        let shards = self.shards.len();
        let filter = match scope {
            Scope::Graph(f) => f,
            Scope::Exact(_) => None,
        };
        // One query's exact scan is split into chunks run in parallel when it is long.
        const EXACT_CHUNK: usize = 4096;
        let run_one = |q: &[f32], keys: &mut [u64], dists: &mut [f32]| -> Result<u64> {
            let found = if let Scope::Exact(among) = scope {
                if n == 1 && among.len() > EXACT_CHUNK && self.config.thread_count() > 1 {
                    let lists = self.pool().install(|| {
                        among
                            .par_chunks(EXACT_CHUNK)
                            .map(|part| self.exact_scan(q, k, part))
                            .collect::<Result<Vec<_>>>()
                    })?;
                    crate::merge::merge_topk(
                        lists.iter().map(|l| l.as_slice()),
                        k,
                        Order::LowerFirst,
                    )
                } else {
                    self.exact_scan(q, k, among)?
                }
            } else if shards == 1 {
                self.search_shard(&self.shards[0], q, k, filter)?
            } else if n == 1 {
                // One query over many shards: the shards are the parallelism.
                let lists = self.pool().install(|| {
                    self.shards
                        .par_iter()
                        .map(|s| self.search_shard(s, q, k, filter))
                        .collect::<Result<Vec<_>>>()
                })?;
                crate::merge::merge_topk(lists.iter().map(|l| l.as_slice()), k, Order::LowerFirst)
            } else {
                let lists = self
                    .shards
                    .iter()
                    .map(|s| self.search_shard(s, q, k, filter))
                    .collect::<Result<Vec<_>>>()?;
                crate::merge::merge_topk(lists.iter().map(|l| l.as_slice()), k, Order::LowerFirst)
            };
            for (j, (key, d)) in found.iter().enumerate() {
                keys[j] = *key;
                dists[j] = *d;
            }
            Ok(found.len() as u64)
        };

        if n == 1 {
            let parallel = match scope {
                Scope::Exact(among) if among.len() > EXACT_CHUNK => self.config.thread_count(),
                Scope::Graph(_) if shards > 1 => self.config.thread_count().min(shards),
                _ => 1,
            };
            let _a = self.admit(parallel, ef)?;
            hits.counts[0] = run_one(queries, &mut hits.keys, &mut hits.distances)?;
        } else {
            let workers = self.config.thread_count().min(n);
            let _a = self.admit(workers, ef)?;
            self.pool().install(|| {
                queries
                    .par_chunks(dim)
                    .zip(hits.keys.par_chunks_mut(k))
                    .zip(hits.distances.par_chunks_mut(k))
                    .zip(hits.counts.par_iter_mut())
                    .try_for_each(|(((q, keys), dists), count)| {
                        *count = run_one(q, keys, dists)?;
                        Ok::<(), Error>(())
                    })
            })?;
        }
        Ok(hits)
    }

    /// usearch's search, cleaned of what a concurrent writer can leave in it: a slot being
    /// removed or reused reads as the free key (u64::MAX) or, briefly, twice. Such entries
    /// are dropped, and the search is retried (up to 3 times) when it came back short.
    fn hnsw_search(
        &self,
        shard: &Shard,
        q: &[f32],
        k: usize,
        filter: Option<Allowed<'_>>,
    ) -> Result<Vec<(u64, f32)>> {
        let mut attempt = 0;
        loop {
            let m = match filter {
                None => shard.hnsw.search(q, k)?,
                Some(allowed) => shard
                    .hnsw
                    .filtered_search(q, k, |key| allowed.contains(key))?,
            };
            let raw = m.keys.len();
            let mut seen: crate::merge::KeySet =
                crate::merge::KeySet::with_capacity_and_hasher(raw, Default::default());
            let out: Vec<(u64, f32)> = m
                .keys
                .into_iter()
                .zip(m.distances)
                .filter(|&(key, _)| key != MISSING_KEY && seen.insert(key))
                .collect();
            attempt += 1;
            // A walk that raced a writer can also stop early (a neighbour list being
            // rewritten by an upsert): retry while the shard holds more than we got. With a
            // filter the shard's allowed count is unknown: retry on a race's traces only.
            let complete = match filter {
                None => out.len() >= k.min(shard.hnsw.size()),
                Some(_) => out.len() >= k || out.len() == raw,
            };
            if complete || attempt == 3 {
                return Ok(out);
            }
        }
    }

    /// One shard's top-k as (key, distance), best first; exact re-scoring when configured.
    fn search_shard(
        &self,
        shard: &Shard,
        q: &[f32],
        k: usize,
        filter: Option<Allowed<'_>>,
    ) -> Result<Vec<(u64, f32)>> {
        let Some(store) = &shard.rescore else {
            return self.hnsw_search(shard, q, k, filter);
        };
        let m = self.hnsw_search(shard, q, k * self.config.oversample, filter)?;
        let dim = self.config.dim;
        let store = store.read().unwrap_or_else(|p| p.into_inner());
        let exact = Exact::new(self.config.metric, q);
        let mut buf = vec![0f32; dim];
        let mut out: Vec<(u64, f32)> = m
            .into_iter()
            .map(|(key, d)| match store.row(key, dim) {
                Some(row) => {
                    row.convert_to_f32_slice(&mut buf);
                    (key, exact.distance(&buf))
                }
                // Added to the graph but not yet to the store (an upsert in flight).
                None => (key, d),
            })
            .collect();
        top_k_in_place(&mut out, k, Order::LowerFirst);
        Ok(out)
    }

    /// The top `k` of `keys` by exact distance to `q` (already prepared: unit length for
    /// cos). f32/f16 storage uses the graph's own kernel on the stored vector (the query cast
    /// to the storage type first, as usearch does), so a key scores here exactly what the
    /// graph search reports for it; i8 with `rescore` uses the f16 copies, as
    /// `search_shard` does; plain i8 dequantises (close to, not bit-equal with, usearch's i8
    /// kernel). Keys not in the index are skipped.
    fn exact_scan(&self, q: &[f32], k: usize, keys: &[u64]) -> Result<Vec<(u64, f32)>> {
        let dim = self.config.dim;
        let kind = match self.config.metric {
            Metric::L2 => Kind::L2sq,
            Metric::Cos | Metric::Ip => Kind::OneMinusDot,
        };
        let isa = Isa::detect();
        let mut out: Vec<(u64, f32)> = Vec::with_capacity(keys.len().min(1 << 16));
        match self.config.dtype {
            Dtype::F32 => {
                let f = kernels::f32_kernel(kind, isa);
                let mut row = vec![0f32; dim];
                for &key in keys {
                    let shard = &self.shards[self.shard_of(key)];
                    if shard.hnsw.get(key, &mut row)? > 0 {
                        out.push((key, f(q.as_ptr(), row.as_ptr(), dim)));
                    }
                }
            }
            Dtype::F16 => {
                let f = kernels::f16_kernel(kind, isa);
                let qh: Vec<u16> = q.iter().map(|&x| f16::from_f32(x).to_bits()).collect();
                let mut row = vec![0i16; dim];
                for &key in keys {
                    let shard = &self.shards[self.shard_of(key)];
                    let got = shard.hnsw.get(key, usearch::f16::from_mut_i16s(&mut row))?;
                    if got > 0 {
                        let d = f(qh.as_ptr(), row.as_ptr() as *const u16, dim);
                        out.push((key, d));
                    }
                }
            }
            Dtype::I8 => {
                let exact = Exact::new(self.config.metric, q);
                let mut row = vec![0f32; dim];
                for &key in keys {
                    let shard = &self.shards[self.shard_of(key)];
                    if let Some(store) = &shard.rescore {
                        let store = store.read().unwrap_or_else(|p| p.into_inner());
                        if let Some(src) = store.row(key, dim) {
                            src.convert_to_f32_slice(&mut row);
                            out.push((key, exact.distance(&row)));
                        }
                    } else if shard.hnsw.get(key, &mut row)? > 0 {
                        out.push((key, exact.distance(&row)));
                    }
                }
            }
        }
        top_k_in_place(&mut out, k, Order::LowerFirst);
        Ok(out)
    }

    /// Writes the index to `path` atomically (a temporary file renamed into place), with a
    /// header naming format version, dim, metric, dtype and count, and a CRC-32 checksum.
    pub fn save(&self, path: &Path) -> Result<()> {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let _g = self.read_gate();
        let mut blobs = Vec::with_capacity(self.shards.len());
        for s in &self.shards {
            let mut buf = vec![0u8; s.hnsw.serialized_length()];
            s.hnsw.save_to_buffer(&mut buf)?;
            let rescore = s.rescore.as_ref().map(|r| {
                let r = r.read().unwrap_or_else(|p| p.into_inner());
                format::encode_rescore(r.rows(self.config.dim), self.config.dim)
            });
            blobs.push((buf, rescore.unwrap_or_default()));
        }
        let count = self.shards.iter().map(|s| s.hnsw.size() as u64).sum();
        let bytes = format::encode(&self.config, count, &blobs);
        let tmp = tmp_path(path);
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(path, e)
        })
    }

    /// Loads an index saved by [`Index::save`] into memory. `threads` overrides the saved
    /// thread count (it describes the machine, not the data). The f16 re-scoring copies (if
    /// any) stay in the file, mapped, and are paged in as searches read them.
    pub fn load(path: &Path, threads: Option<usize>) -> Result<Self> {
        Self::open(path, threads, false)
    }

    /// Opens a saved index as a read-only memory-mapped view: pages load on demand, and any
    /// write raises. The f16 re-scoring copies (if any) are read in place too.
    pub fn view(path: &Path, threads: Option<usize>) -> Result<Self> {
        Self::open(path, threads, true)
    }

    fn open(path: &Path, threads: Option<usize>, as_view: bool) -> Result<Self> {
        let map = Arc::new(map_file(path)?);
        let (header, sections) = format::decode(&map, path)?;
        let config = header_config(&header, threads);
        // The checksums catch damage, not a file written wrong: settings no index could be
        // built with would reach usearch as they are (a dim of 2**32 - 1 asks for gigabytes).
        config.validate().map_err(|e| {
            Error::corrupt(path, format!("implausible settings in the header: {e}"))
        })?;
        let mut shards = Vec::with_capacity(sections.len());
        for (i, sec) in sections.iter().enumerate() {
            let bytes = sec.hnsw(&map);
            format::check_hnsw(bytes, &config)
                .map_err(|m| Error::corrupt(path, format!("shard {i}: {m}")))?;
            let mut hnsw = new_hnsw(&config)?;
            let opened = if as_view {
                // SAFETY: the mapping is stored in the returned index (`mapped`) and is
                // dropped after `shards` (field order), so the view never outlives its bytes.
                unsafe { hnsw.view_from_buffer(bytes) }
            } else {
                hnsw.load_from_buffer(bytes)
            };
            opened.map_err(|e| {
                let verb = if as_view { "view" } else { "load" };
                Error::corrupt(
                    path,
                    format!("shard {i}: usearch could not {verb} it: {}", e.what()),
                )
            })?;
            install_kernel(&mut hnsw, &config);
            shards.push(Shard {
                rescore: load_rescore(&config, sec, &map, path)?,
                hnsw,
            });
        }
        // A loaded index copied its graphs; a view keeps the mapping for them, and either
        // keeps it for the re-scoring copies (`load_rescore`).
        let mapped = as_view.then(|| Mapped {
            path: path.to_path_buf(),
            _map: map,
        });
        let index = Self::assemble(config, shards, mapped);
        index.finish_open(&header, path)?;
        Ok(index)
    }

    fn finish_open(&self, header: &Header, path: &Path) -> Result<()> {
        let count: u64 = self.shards.iter().map(|s| s.hnsw.size() as u64).sum();
        if count != header.count {
            return Err(Error::corrupt(
                path,
                format!(
                    "header says {} vectors, the shards hold {count}",
                    header.count
                ),
            ));
        }
        for s in &self.shards {
            if s.hnsw.dimensions() != self.config.dim {
                return Err(Error::corrupt(
                    path,
                    "a shard's dimension differs from the header",
                ));
            }
            s.hnsw.change_expansion_search(initial_ef(&self.config));
        }
        self.reserve_threads(self.config.thread_count() + 4)
    }
}

fn header_config(h: &Header, threads: Option<usize>) -> Config {
    Config {
        dim: h.dim as usize,
        metric: h.metric,
        dtype: h.dtype,
        connectivity: h.connectivity as usize,
        ef_construction: h.ef_construction as usize,
        // 0: the index follows its size (`Config::ef_search` None).
        ef_search: (h.ef_search != 0).then_some(h.ef_search as usize),
        shards: h.shards as usize,
        threads: threads.unwrap_or(0),
        rescore: h.rescore,
        oversample: h.oversample as usize,
    }
}

/// A shard's re-scoring copies as opened: read in place from the mapped file, or (where
/// they cannot be, see [`FileRows::new`]) copied into memory.
fn load_rescore(
    config: &Config,
    sec: &ShardSection,
    map: &Arc<memmap2::Mmap>,
    path: &Path,
) -> Result<Option<RwLock<RescoreStore>>> {
    if !config.rescore {
        return Ok(None);
    }
    let (at, len) = sec.rescore_range();
    let store = match FileRows::new(map, at, len, config.dim, path)? {
        Some(file) => RescoreStore {
            file: Some(file),
            ..Default::default()
        },
        None => {
            let (row_of, data) = format::decode_rescore(sec.rescore(map), config.dim, path)?;
            RescoreStore {
                row_of,
                data,
                ..Default::default()
            }
        }
    };
    Ok(Some(RwLock::new(store)))
}

fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the file is opened read-only; twostage writes index files only by renaming a
    // complete temporary file over them, so a mapped file is never modified in place.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

fn missing_message(missing: &[u64]) -> String {
    let shown: Vec<String> = missing.iter().take(10).map(|k| k.to_string()).collect();
    let more = if missing.len() > 10 {
        format!(" and {} more", missing.len() - 10)
    } else {
        String::new()
    };
    format!(
        "{} key(s) not in the index: {}{more}",
        missing.len(),
        shown.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng_vectors(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n * dim)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
            })
            .collect()
    }

    fn exact_top1(data: &[f32], q: &[f32], dim: usize, metric: Metric) -> u64 {
        data.chunks(dim)
            .enumerate()
            .map(|(i, v)| (i as u64, metric.distance(q, v)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap()
            .0
    }

    #[test]
    fn add_search_upsert_remove() {
        let dim = 16;
        let idx = Index::new(Config::new(dim)).unwrap();
        let data = rng_vectors(500, dim, 1);
        let keys: Vec<u64> = (0..500).collect();
        idx.add(&keys, &data).unwrap();
        assert_eq!(idx.len(), 500);
        let hits = idx.search(&data[..dim * 3], 5, None).unwrap();
        assert_eq!(&hits.keys[..1], &[0]);
        assert_eq!(hits.keys[5], 1);
        // Upsert key 0 with key 1's vector: both now sit at distance ~0 from it.
        idx.add(&[0], &data[dim..2 * dim]).unwrap();
        assert_eq!(idx.len(), 500);
        // `cos` stores unit vectors (our kernel is `1 - a·b`), so get() returns key 1's row
        // normalised.
        let got = idx.get(&[0]).unwrap();
        let mut want = data[dim..2 * dim].to_vec();
        kernels::normalize_rows(&mut want, dim);
        assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6));
        assert_eq!(idx.remove(&[0, 1], false).unwrap(), 2);
        assert!(!idx.contains(0) && idx.contains(2));
        assert!(matches!(
            idx.remove(&[0], false),
            Err(Error::KeyNotFound(_))
        ));
        assert_eq!(idx.remove(&[0], true).unwrap(), 0);
    }

    #[test]
    fn bad_input_leaves_index_unchanged() {
        let idx = Index::new(Config::new(4)).unwrap();
        idx.add(&[1], &[1.0, 0.0, 0.0, 0.0]).unwrap();
        assert!(matches!(
            idx.add(&[2], &[1.0; 3]),
            Err(Error::DimensionMismatch { .. })
        ));
        assert!(matches!(
            idx.add(&[2, 3], &[1.0, 0.0, 0.0, 0.0, f32::NAN, 0.0, 0.0, 0.0]),
            Err(Error::InvalidVector(_))
        ));
        assert!(matches!(
            idx.add(&[2, 2], &[1.0; 8]),
            Err(Error::DuplicateKey { .. })
        ));
        assert!(matches!(
            idx.add(&[MISSING_KEY], &[1.0; 4]),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            idx.search(&[1.0; 4], 0, None),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(idx.len(), 1);
        assert!(!idx.contains(2) && !idx.contains(3));
    }

    #[test]
    fn default_ef_grows_with_size_and_k_and_never_undercuts_k() {
        let sizes = [0, 1, 100, 10_000, 100_000, 1_000_000, 10_000_000, 1 << 40];
        for k in [1, 10, 50, 100, 1000, MAX_EF] {
            let efs: Vec<usize> = sizes.iter().map(|&n| default_ef(n, k)).collect();
            assert!(efs.windows(2).all(|w| w[0] <= w[1]), "k={k}: {efs:?}");
            assert!(
                efs.iter().all(|&ef| ef >= k && ef <= MAX_EF),
                "k={k}: {efs:?}"
            );
        }
        for n in sizes {
            let efs: Vec<usize> = [1, 10, 100, 1000].map(|k| default_ef(n, k)).to_vec();
            assert!(efs.windows(2).all(|w| w[0] <= w[1]), "n={n}: {efs:?}");
        }
    }

    #[test]
    fn searches_without_ef_follow_the_size_unless_one_was_set() {
        let dim = 8;
        let data = rng_vectors(3000, dim, 4);
        let dir = tempfile::tempdir().unwrap();
        for set in [None, Some(40)] {
            let mut c = Config::new(dim);
            c.ef_search = set;
            let idx = Index::new(c).unwrap();
            let mut seen = vec![];
            for n in [10usize, 3000] {
                idx.add(&(0..n as u64).collect::<Vec<_>>(), &data[..n * dim])
                    .unwrap();
                for k in [1, 10, 100] {
                    let want = set.unwrap_or(default_ef(n, k));
                    assert_eq!(idx.search_ef(k), want);
                    // A search that names no ef runs with it (usearch's expansion is set).
                    idx.search(&data[..dim], k, None).unwrap();
                    assert_eq!(idx.ef_current.load(Ordering::Acquire), want);
                    // A named ef wins.
                    idx.search(&data[..dim], k, Some(7)).unwrap();
                    assert_eq!(idx.ef_current.load(Ordering::Acquire), 7);
                    seen.push(want);
                }
            }
            // The setting survives a save, whether a number or none (0 in the header).
            let path = dir.path().join("ef.tsidx");
            idx.save(&path).unwrap();
            for opened in [Index::load(&path, None), Index::view(&path, None)] {
                let opened = opened.unwrap();
                assert_eq!(opened.config().ef_search, set);
                assert_eq!(opened.search_ef(100), set.unwrap_or(default_ef(3000, 100)));
            }
            if set.is_none() {
                assert!(seen.windows(2).any(|w| w[0] != w[1]), "{seen:?}");
            }
        }
        let mut c = Config::new(dim);
        c.ef_search = Some(0);
        assert!(matches!(Index::new(c), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn rescore_rows_are_read_from_the_file_and_overridden_by_later_writes() {
        let dim = 16;
        let mut c = Config::new(dim);
        c.dtype = Dtype::I8;
        c.rescore = true;
        let idx = Index::new(c).unwrap();
        let data = rng_vectors(200, dim, 8);
        idx.add(&(0..200).collect::<Vec<_>>(), &data).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.tsidx");
        idx.save(&path).unwrap();
        let in_memory = idx.memory_usage();
        let f16_of =
            |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| f16::from_f32(x).to_f32()).collect() };
        for opened in [
            Index::load(&path, None).unwrap(),
            Index::view(&path, None).unwrap(),
        ] {
            // The copies stay in the mapped file: only the graph is the index's memory.
            assert!(opened.memory_usage() + 200 * dim * 2 <= in_memory);
            assert_eq!(opened.get(&[5]).unwrap(), f16_of(&data[5 * dim..6 * dim]));
        }
        let opened = Index::load(&path, None).unwrap();
        // Rewrite key 5 with key 6's vector, remove key 7, add key 500: the file's rows for
        // 5 and 7 are stale from then on.
        opened.add(&[5, 500], &data[6 * dim..8 * dim]).unwrap();
        opened.remove(&[7], false).unwrap();
        assert_eq!(opened.get(&[5]).unwrap(), f16_of(&data[6 * dim..7 * dim]));
        assert_eq!(opened.get(&[500]).unwrap(), f16_of(&data[7 * dim..8 * dim]));
        assert!(matches!(opened.get(&[7]), Err(Error::KeyNotFound(_))));
        let hits = opened.search(&data[6 * dim..7 * dim], 2, None).unwrap();
        let mut top: Vec<u64> = hits.keys.clone();
        top.sort_unstable();
        assert_eq!(top, vec![5, 6]);
        assert!(hits.distances.iter().all(|d| d.abs() < 1e-3), "{hits:?}");
        // Saved again: the file's live rows and the new ones, nothing stale.
        let again = dir.path().join("r2.tsidx");
        opened.save(&again).unwrap();
        let reopened = Index::load(&again, None).unwrap();
        assert_eq!(reopened.len(), 200);
        assert_eq!(reopened.get(&[5]).unwrap(), f16_of(&data[6 * dim..7 * dim]));
        assert_eq!(
            reopened.get(&[9]).unwrap(),
            f16_of(&data[9 * dim..10 * dim])
        );
        assert!(matches!(reopened.get(&[7]), Err(Error::KeyNotFound(_))));
    }

    #[test]
    fn mapped_rescore_rows_are_found_by_key_dense_or_sparse() {
        let dim = 2;
        let dir = tempfile::tempdir().unwrap();
        let mut rng = 7u64;
        let mut sparse: Vec<u64> = (0..500)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng >> (rng % 60)
            })
            .collect();
        sparse.extend([0, 1, u64::MAX - 1]);
        sparse.sort_unstable();
        sparse.dedup();
        for keys in [(10..300u64).collect::<Vec<_>>(), sparse, vec![42]] {
            let rows: Vec<Vec<f16>> = keys
                .iter()
                .map(|&k| vec![f16::from_f32((k % 1000) as f32), f16::ONE])
                .collect();
            let bytes = format::encode_rescore(
                keys.iter()
                    .zip(&rows)
                    .map(|(&k, r)| (k, r.as_slice()))
                    .collect(),
                dim,
            );
            let path = dir.path().join("rows");
            std::fs::write(&path, &bytes).unwrap();
            let map = Arc::new(map_file(&path).unwrap());
            let file = FileRows::new(&map, 0, bytes.len(), dim, &path)
                .unwrap()
                .unwrap();
            for (i, &k) in keys.iter().enumerate() {
                assert_eq!(file.find(k), Some(i), "key {k}");
                assert_eq!(file.row(i, dim), rows[i].as_slice());
                for probe in [k.wrapping_add(1), k.wrapping_sub(1)] {
                    if keys.binary_search(&probe).is_err() {
                        assert_eq!(file.find(probe), None, "absent {probe}");
                    }
                }
            }
        }
    }

    #[test]
    fn fewer_than_k_pads_with_missing() {
        let idx = Index::new(Config::new(4)).unwrap();
        idx.add(&[7, 8], &[1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0])
            .unwrap();
        let hits = idx.search(&[1.0, 0.0, 0.0, 0.0], 4, None).unwrap();
        assert_eq!(hits.counts, vec![2]);
        assert_eq!(&hits.keys, &[7, 8, MISSING_KEY, MISSING_KEY]);
        assert!(hits.distances[2].is_infinite());
    }

    #[test]
    fn shards_and_rescore_find_exact_neighbours() {
        let dim = 32;
        for (shards, dtype, rescore) in [(4, Dtype::F32, false), (3, Dtype::I8, true)] {
            let mut c = Config::new(dim);
            c.shards = shards;
            c.dtype = dtype;
            c.rescore = rescore;
            c.ef_search = Some(128);
            let idx = Index::new(c).unwrap();
            let data = rng_vectors(2000, dim, 7);
            idx.add(&(0..2000).collect::<Vec<_>>(), &data).unwrap();
            let queries = rng_vectors(50, dim, 99);
            let hits = idx.search(&queries, 10, None).unwrap();
            let correct = queries
                .chunks(dim)
                .enumerate()
                .filter(|(i, q)| hits.keys[i * 10] == exact_top1(&data, q, dim, Metric::Cos))
                .count();
            assert!(
                correct >= 45,
                "{shards} shards {dtype:?}: top-1 right for {correct}/50"
            );
        }
    }

    #[test]
    fn filtered_and_exact_search_agree_with_the_graph() {
        let dim = 32;
        let n = 3000u64;
        let data = rng_vectors(n as usize, dim, 11);
        let queries = rng_vectors(20, dim, 12);
        for (dtype, metric, shards) in [
            (Dtype::F32, Metric::Cos, 1),
            (Dtype::F16, Metric::Cos, 2),
            (Dtype::F16, Metric::L2, 1),
            (Dtype::F32, Metric::Ip, 3),
        ] {
            let mut c = Config::new(dim);
            c.dtype = dtype;
            c.metric = metric;
            c.shards = shards;
            c.ef_search = Some(256);
            let idx = Index::new(c).unwrap();
            idx.add(&(0..n).collect::<Vec<_>>(), &data).unwrap();
            // The scan reports, bit for bit, the distance the walk reports for a key.
            let all: Vec<u64> = (0..n).collect();
            let walked = idx.search(&queries, 10, None).unwrap();
            let scanned = idx.search_exact(&queries, 10, &all).unwrap();
            let mut same = 0;
            for (i, (wk, wd)) in walked.keys.iter().zip(&walked.distances).enumerate() {
                let row = i / 10;
                let sk = &scanned.keys[row * 10..(row + 1) * 10];
                if let Some(j) = sk.iter().position(|k| k == wk) {
                    assert_eq!(
                        scanned.distances[row * 10 + j].to_bits(),
                        wd.to_bits(),
                        "{dtype:?} {metric:?} key {wk}"
                    );
                    same += 1;
                }
            }
            assert!(same >= 190, "{dtype:?} {metric:?}: {same}/200 shared");
            // Every 7th key, and every 97th: as a mask and as sorted keys.
            for step in [7u64, 97] {
                let keys: Vec<u64> = (0..n).filter(|k| k % step == 3).collect();
                let mut mask = vec![0u8; n as usize];
                keys.iter().for_each(|&k| mask[k as usize] = 1);
                let a = idx
                    .search_filtered(&queries, 10, None, Allowed::Mask(&mask))
                    .unwrap();
                let b = idx
                    .search_filtered(&queries, 10, None, Allowed::Sorted(&keys))
                    .unwrap();
                let e = idx.search_exact(&queries, 10, &keys).unwrap();
                assert_eq!(a.keys, b.keys);
                assert!(a.keys.iter().all(|k| k % step == 3));
                assert!(e.counts.iter().all(|&c| c == 10));
                let found = a
                    .keys
                    .chunks(10)
                    .zip(e.keys.chunks(10))
                    .map(|(x, y)| x.iter().filter(|k| y.contains(k)).count())
                    .sum::<usize>();
                // HNSW does not promise every node is reachable: a node left without
                // in-links (seen here about once in 30 builds) is missing from every walk, and
                // with 31 allowed keys one such node costs up to 10 % of this recall.
                let floor = if step == 7 { 190 } else { 170 };
                assert!(found >= floor, "{dtype:?} step {step}: recall {found}/200");
            }
        }
    }

    #[test]
    fn filters_never_return_removed_or_unknown_keys() {
        let dim = 8;
        let idx = Index::new(Config::new(dim)).unwrap();
        let data = rng_vectors(200, dim, 5);
        idx.add(&(0..200).collect::<Vec<_>>(), &data).unwrap();
        idx.remove(&[3, 4, 5], false).unwrap();
        let keys = [3u64, 4, 5, 6, 500];
        let q = &data[3 * dim..4 * dim];
        let e = idx.search_exact(q, 10, &[500, 6, 5, 6, 4, 3]).unwrap();
        assert_eq!(e.counts, vec![1]);
        assert_eq!(e.keys[0], 6);
        let w = idx
            .search_filtered(q, 10, None, Allowed::Sorted(&keys))
            .unwrap();
        assert_eq!(&w.keys[..w.counts[0] as usize], &[6]);
        let none = idx
            .search_filtered(q, 10, None, Allowed::Mask(&[]))
            .unwrap();
        assert_eq!(none.counts, vec![0]);
        let none = idx.search_exact(q, 10, &[]).unwrap();
        assert_eq!(none.counts, vec![0]);
        assert!(none.keys.iter().all(|&k| k == MISSING_KEY));
    }

    // ---- model-based property test: the index against a brute-force reference ----------

    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        /// Upsert rows: (key, vector); may hold a duplicate key, a zero row or the reserved
        /// key, which must be refused with nothing changed.
        Add(Vec<(u64, Vec<f32>)>),
        Remove(Vec<u64>, bool),
        Search(Vec<f32>, usize),
        /// A search restricted to the keys in the set: through the graph (as a mask or as
        /// sorted keys) and exactly.
        SearchAmong(Vec<f32>, usize, Vec<u64>, bool),
        Get(Vec<u64>),
        /// Save, then carry on with the loaded copy (a view must answer the same).
        Reopen,
    }

    fn value() -> impl Strategy<Value = f32> {
        // Few distinct values: ties in distance on purpose, and exact in f16.
        (-4i32..=4).prop_map(|x| x as f32 * 0.25)
    }

    fn vector(dim: usize) -> impl Strategy<Value = Vec<f32>> {
        prop::collection::vec(value(), dim)
    }

    fn key() -> impl Strategy<Value = u64> {
        prop_oneof![20 => 0u64..24, 1 => Just(MISSING_KEY), 1 => Just(u64::MAX - 1)]
    }

    fn op(dim: usize) -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => prop::collection::vec((key(), vector(dim)), 0..8).prop_map(Op::Add),
            2 => (prop::collection::vec(key(), 0..4), any::<bool>())
                .prop_map(|(k, ok)| Op::Remove(k, ok)),
            5 => (vector(dim), 1usize..30).prop_map(|(q, k)| Op::Search(q, k)),
            3 => (vector(dim), 1usize..30, prop::collection::vec(key(), 0..12), any::<bool>())
                .prop_map(|(q, k, keys, mask)| Op::SearchAmong(q, k, keys, mask)),
            1 => prop::collection::vec(key(), 1..4).prop_map(Op::Get),
            1 => Just(Op::Reopen),
        ]
    }

    fn case() -> impl Strategy<Value = (Config, Vec<Op>)> {
        (
            1usize..=6,
            0u8..3,
            0u8..4,
            1usize..=3,
            prop::sample::select(vec![2usize, 3, 4, 8, 16]),
        )
            .prop_flat_map(|(dim, metric, dtype, shards, m)| {
                let mut c = Config::new(dim);
                c.metric = Metric::from_code(metric).unwrap();
                // 3: i8 with exact re-scoring from f16 copies.
                c.dtype = Dtype::from_code(dtype.min(2)).unwrap();
                c.rescore = dtype == 3;
                c.shards = shards;
                c.connectivity = m;
                c.ef_construction = 64;
                c.ef_search = Some(256); // beyond any set here: the walk reaches every node
                c.threads = 2;
                (Just(c), prop::collection::vec(op(dim), 1..24))
            })
    }

    /// What the index stores for `v`, as f32: unit length for cos (f32/f16), then rounded to
    /// the storage type (f16 also for the re-scoring copies of i8).
    fn stored(c: &Config, v: &[f32]) -> Vec<f32> {
        let mut s = v.to_vec();
        if c.metric == Metric::Cos && c.dtype != Dtype::I8 {
            kernels::normalize_rows(&mut s, c.dim);
        }
        if c.dtype != Dtype::F32 {
            s.iter_mut().for_each(|x| *x = f16::from_f32(*x).to_f32());
        }
        s
    }

    /// The distance the index reports for query `q` and stored row `s` (f32/f16 storage, or
    /// i8 re-scored from its f16 copies).
    fn reference_distance(c: &Config, q: &[f32], s: &[f32]) -> f32 {
        if c.dtype == Dtype::I8 {
            return c.metric.distance(q, s); // search_shard's exact re-scoring
        }
        let q = stored(c, q); // usearch casts the query to the storage type too
        match c.metric {
            Metric::Cos | Metric::Ip => 1.0 - q.iter().zip(s).map(|(a, b)| a * b).sum::<f32>(),
            Metric::L2 => q.iter().zip(s).map(|(a, b)| (a - b) * (a - b)).sum(),
        }
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-3 * (1.0 + a.abs().max(b.abs()))
    }

    /// Runs `ops` on a new index and on a BTreeMap, checking every answer. Returns the
    /// number of operations run.
    fn run_model(c: Config, ops: Vec<Op>) -> std::result::Result<(), TestCaseError> {
        let dim = c.dim;
        let dir = tempfile::tempdir().unwrap();
        let mut idx = Index::new(c.clone()).unwrap();
        let mut model: BTreeMap<u64, Vec<f32>> = BTreeMap::new();
        // Whether a key was removed or replaced: usearch does not repair links then.
        let mut churned = false;
        for op in ops {
            match op {
                Op::Add(rows) => {
                    let keys: Vec<u64> = rows.iter().map(|r| r.0).collect();
                    let flat: Vec<f32> = rows.iter().flat_map(|r| r.1.iter().copied()).collect();
                    let mut seen = HashSet::new();
                    let bad = keys.iter().any(|&k| k == MISSING_KEY || !seen.insert(k))
                        || (c.metric == Metric::Cos
                            && rows.iter().any(|r| r.1.iter().all(|&x| x == 0.0)));
                    let before = idx.len();
                    match idx.add(&keys, &flat) {
                        Ok(n) => {
                            prop_assert!(!bad, "accepted a bad batch {:?}", rows);
                            prop_assert_eq!(n, rows.len());
                            for (k, v) in rows {
                                churned |= model.insert(k, v).is_some();
                            }
                        }
                        Err(e) => {
                            prop_assert!(bad, "refused a good batch: {}", e);
                            prop_assert_eq!(idx.len(), before);
                        }
                    }
                }
                Op::Remove(keys, missing_ok) => {
                    let present: HashSet<u64> = keys
                        .iter()
                        .copied()
                        .filter(|k| model.contains_key(k))
                        .collect();
                    let missing = keys.iter().any(|k| !model.contains_key(k));
                    match idx.remove(&keys, missing_ok) {
                        Ok(n) => {
                            prop_assert!(missing_ok || !missing);
                            prop_assert_eq!(n, present.len());
                            for k in &present {
                                model.remove(k);
                            }
                            churned |= !present.is_empty();
                        }
                        Err(e) => {
                            prop_assert!(!missing_ok && missing, "remove failed: {}", e);
                            prop_assert!(matches!(e, Error::KeyNotFound(_)));
                        }
                    }
                }
                Op::Search(q, k) => {
                    let zero = q.iter().all(|&x| x == 0.0);
                    let hits = match idx.search(&q, k, None) {
                        Err(e) => {
                            prop_assert!(zero && c.metric == Metric::Cos, "search: {}", e);
                            continue;
                        }
                        Ok(h) => h,
                    };
                    let count = hits.counts[0] as usize;
                    // HNSW does not promise every node is reachable, whatever `ef`:
                    // - with connectivity 2-4 its neighbour pruning can leave a small graph
                    //   disconnected (up to a quarter of searches at 2 with ip);
                    // - an upsert reuses a removed node's slot: its old neighbours are
                    //   re-linked among themselves (the vendored usearch's
                    //   `repair_links_around_`), but a node that linked it from outside its
                    //   list still points to its new place, so a node whose in-links all ran
                    //   through it can be stranded (seen, before that repair, at connectivity 8,
                    //   f32 and f16, l2 and ip);
                    // - i8 storage normalises vectors (usearch's cast), so low-dimensional
                    //   data turns into duplicates, which the pruning links sparsely.
                    // Exact where none of these applies; the invariants above everywhere.
                    let whole = c.connectivity >= 8 && c.dtype != Dtype::I8 && !churned;
                    prop_assert!(count <= k.min(model.len()), "{:?}", hits);
                    if whole {
                        prop_assert_eq!(count, k.min(model.len()), "{:?}", hits);
                    }
                    let (keys, dists) = (&hits.keys[..count], &hits.distances[..count]);
                    let unique: HashSet<u64> = keys.iter().copied().collect();
                    prop_assert_eq!(unique.len(), count, "a key twice: {:?}", keys);
                    prop_assert!(keys.iter().all(|k| model.contains_key(k)), "{:?}", keys);
                    prop_assert!(hits.keys[count..].iter().all(|&k| k == MISSING_KEY));
                    prop_assert!(hits.distances[count..].iter().all(|d| d.is_infinite()));
                    prop_assert!(dists.windows(2).all(|w| w[0] <= w[1]), "{:?}", dists);
                    if c.dtype == Dtype::I8 && !c.rescore {
                        continue; // usearch's own i8 distances: the invariants above only
                    }
                    for (key, d) in keys.iter().zip(dists) {
                        let want = reference_distance(&c, &q, &stored(&c, &model[key]));
                        prop_assert!(close(*d, want), "key {} at {} not {}", key, d, want);
                    }
                    if whole {
                        // Exact: the k smallest reference distances, ties in any order.
                        let mut all: Vec<f32> = model
                            .values()
                            .map(|v| reference_distance(&c, &q, &stored(&c, v)))
                            .collect();
                        all.sort_by(f32::total_cmp);
                        for (got, want) in dists.iter().zip(&all) {
                            prop_assert!(close(*got, *want), "{:?} vs {:?}", dists, &all[..count]);
                        }
                    }
                }
                Op::SearchAmong(q, k, mut among, as_mask) => {
                    let zero = q.iter().all(|&x| x == 0.0);
                    if as_mask {
                        among.retain(|&key| key < 24); // the mask covers keys 0..24
                    }
                    let mut sorted = among.clone();
                    sorted.sort_unstable();
                    sorted.dedup();
                    let mask: Vec<u8> = (0..24u64).map(|k| sorted.contains(&k) as u8).collect();
                    let allowed = if as_mask {
                        Allowed::Mask(&mask)
                    } else {
                        Allowed::Sorted(&sorted)
                    };
                    let (walked, exact) = match (
                        idx.search_filtered(&q, k, None, allowed),
                        idx.search_exact(&q, k, &among),
                    ) {
                        (Ok(w), Ok(e)) => (w, e),
                        (w, e) => {
                            prop_assert!(
                                zero && c.metric == Metric::Cos,
                                "{:?} {:?}",
                                w.err(),
                                e.err()
                            );
                            continue;
                        }
                    };
                    // The reference: allowed keys in the model, by reference distance.
                    let mut want: Vec<(u64, f32)> = sorted
                        .iter()
                        .filter(|key| model.contains_key(key))
                        .map(|key| (*key, reference_distance(&c, &q, &stored(&c, &model[key]))))
                        .collect();
                    want.sort_by(|a, b| a.1.total_cmp(&b.1));
                    let ecount = exact.counts[0] as usize;
                    prop_assert_eq!(ecount, k.min(want.len()), "exact {:?}", exact);
                    let wcount = walked.counts[0] as usize;
                    prop_assert!(wcount <= ecount);
                    let whole = c.connectivity >= 8 && c.dtype != Dtype::I8 && !churned;
                    if whole {
                        prop_assert_eq!(wcount, ecount, "walked {:?}", walked);
                    }
                    for hits in [&walked, &exact] {
                        let count = hits.counts[0] as usize;
                        let keys = &hits.keys[..count];
                        let dists = &hits.distances[..count];
                        prop_assert!(keys
                            .iter()
                            .all(|k| sorted.contains(k) && model.contains_key(k)));
                        let unique: HashSet<u64> = keys.iter().copied().collect();
                        prop_assert_eq!(unique.len(), count);
                        prop_assert!(dists.windows(2).all(|w| w[0] <= w[1]), "{:?}", dists);
                        prop_assert!(hits.keys[count..].iter().all(|&k| k == MISSING_KEY));
                    }
                    if c.dtype == Dtype::I8 && !c.rescore {
                        continue;
                    }
                    // Exact: the k smallest reference distances, ties in any order; the walk
                    // reports the same distance for a key as the scan does.
                    for (got, w) in exact.distances[..ecount].iter().zip(&want) {
                        prop_assert!(close(*got, w.1), "{:?} vs {:?}", exact, want);
                    }
                    for (key, d) in walked.keys[..wcount].iter().zip(&walked.distances) {
                        let e = want.iter().find(|w| w.0 == *key).unwrap().1;
                        prop_assert!(close(*d, e), "key {} walked {} exact {}", key, d, e);
                    }
                    if whole {
                        for (got, w) in walked.distances[..wcount].iter().zip(&want) {
                            prop_assert!(close(*got, w.1), "{:?} vs {:?}", walked, want);
                        }
                    }
                }
                Op::Get(keys) => match idx.get(&keys) {
                    Ok(rows) => {
                        prop_assert!(keys.iter().all(|k| model.contains_key(k)));
                        if c.dtype == Dtype::I8 && !c.rescore {
                            continue;
                        }
                        for (k, row) in keys.iter().zip(rows.chunks(dim)) {
                            let want = stored(&c, &model[k]);
                            prop_assert!(row.iter().zip(&want).all(|(a, b)| close(*a, *b)));
                        }
                    }
                    Err(e) => {
                        prop_assert!(keys.iter().any(|k| !model.contains_key(k)), "get: {}", e);
                        prop_assert!(matches!(e, Error::KeyNotFound(_)));
                    }
                },
                Op::Reopen => {
                    let path = dir.path().join("i.tsidx");
                    idx.save(&path).unwrap();
                    let q = vec![0.5; dim];
                    let k = model.len().max(1);
                    let want = idx.search(&q, k, None).unwrap();
                    let view = Index::view(&path, Some(2)).unwrap();
                    let loaded = Index::load(&path, Some(2)).unwrap();
                    for other in [&view, &loaded] {
                        prop_assert_eq!(other.len(), model.len());
                        let got = other.search(&q, k, None).unwrap();
                        prop_assert_eq!(&got.counts, &want.counts);
                        prop_assert_eq!(&got.keys, &want.keys);
                    }
                    drop(view);
                    idx = loaded;
                }
            }
            prop_assert_eq!(idx.len(), model.len());
            for k in 0..24 {
                prop_assert_eq!(idx.contains(k), model.contains_key(&k), "contains({})", k);
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(crate::test_config(64))]

        #[test]
        fn index_matches_a_brute_force_reference((c, ops) in case()) {
            run_model(c, ops)?;
        }
    }

    #[test]
    fn save_load_view_roundtrip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tsidx");
        let dim = 8;
        let mut c = Config::new(dim);
        c.shards = 2;
        let idx = Index::new(c).unwrap();
        let data = rng_vectors(300, dim, 3);
        idx.add(&(0..300).collect::<Vec<_>>(), &data).unwrap();
        idx.save(&path).unwrap();
        let q = &data[..dim * 4];
        let want = idx.search(q, 10, None).unwrap();
        for opened in [
            Index::load(&path, None).unwrap(),
            Index::view(&path, None).unwrap(),
        ] {
            let got = opened.search(q, 10, None).unwrap();
            assert_eq!(got.keys, want.keys);
            assert_eq!(got.distances, want.distances);
        }
        let view = Index::view(&path, None).unwrap();
        assert!(matches!(
            view.add(&[1000], &data[..dim]),
            Err(Error::ReadOnly(_))
        ));
        assert!(matches!(view.remove(&[1], false), Err(Error::ReadOnly(_))));

        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        assert!(matches!(
            Index::load(&path, None),
            Err(Error::CorruptIndex { .. })
        ));
        let mut flipped = bytes.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0xff;
        std::fs::write(&path, &flipped).unwrap();
        assert!(matches!(
            Index::load(&path, None),
            Err(Error::CorruptIndex { .. })
        ));
        std::fs::write(&path, b"not an index at all").unwrap();
        assert!(matches!(
            Index::view(&path, None),
            Err(Error::CorruptIndex { .. })
        ));
        assert!(matches!(
            Index::load(&dir.path().join("missing"), None),
            Err(Error::Io { .. })
        ));
    }
}
