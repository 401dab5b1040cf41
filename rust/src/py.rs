//! The Python binding layer: converts arguments while attached to the interpreter, runs the
//! core detached (GIL released), and maps core errors onto `twostage.errors` in one place.

use std::path::PathBuf;

use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyMapping};

use crate::error::Error;
use crate::index::{self, Config, Dtype, Metric};
use crate::{merge, slot};

// The exception classes are defined once, in Python (so they can inherit from both
// TwostageError and the matching builtin), and raised from here.
mod exc {
    pyo3::import_exception!(twostage.errors, TwostageError);
    pyo3::import_exception!(twostage.errors, DimensionMismatch);
    pyo3::import_exception!(twostage.errors, InvalidVector);
    pyo3::import_exception!(twostage.errors, InvalidArgument);
    pyo3::import_exception!(twostage.errors, DuplicateKey);
    pyo3::import_exception!(twostage.errors, KeyNotFound);
    pyo3::import_exception!(twostage.errors, CorruptIndex);
    pyo3::import_exception!(twostage.errors, ReadOnlyIndex);
    pyo3::import_exception!(twostage.errors, VersionConflict);
}

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        let msg = e.to_string();
        match e {
            Error::DimensionMismatch { .. } => exc::DimensionMismatch::new_err(msg),
            Error::InvalidVector(_) => exc::InvalidVector::new_err(msg),
            Error::InvalidArgument(_) => exc::InvalidArgument::new_err(msg),
            Error::DuplicateKey { .. } => exc::DuplicateKey::new_err(msg),
            Error::KeyNotFound(_) => exc::KeyNotFound::new_err(msg),
            Error::CorruptIndex { .. } => exc::CorruptIndex::new_err(msg),
            Error::ReadOnly(_) => exc::ReadOnlyIndex::new_err(msg),
            Error::VersionConflict { .. } => exc::VersionConflict::new_err(msg),
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                PyFileNotFoundError::new_err(msg)
            }
            Error::Io { .. } => PyOSError::new_err(msg),
            Error::Engine(_) => exc::TwostageError::new_err(msg),
        }
    }
}

/// A float32 array as a C-contiguous buffer: borrowed without a copy when it already is
/// one, converted once by numpy otherwise.
fn f32_array<'py>(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<PyReadonlyArrayDyn<'py, f32>> {
    if let Ok(a) = obj.cast::<PyArrayDyn<f32>>() {
        if a.is_c_contiguous() {
            return Ok(a.readonly());
        }
    }
    let np = obj.py().import("numpy")?;
    let converted = np
        .call_method1("ascontiguousarray", (obj, "float32"))
        .map_err(|e| {
            exc::InvalidVector::new_err(format!(
                "{what} must be a numeric array convertible to float32: {e}"
            ))
        })?;
    Ok(converted.cast_into::<PyArrayDyn<f32>>()?.readonly())
}

/// Keys as u64: a uint64 array is read in place; anything else goes through numpy, which
/// refuses negative or fractional keys with a message we rephrase.
fn u64_keys<'py>(obj: &Bound<'py, PyAny>) -> PyResult<PyReadonlyArrayDyn<'py, u64>> {
    if let Ok(a) = obj.cast::<PyArrayDyn<u64>>() {
        if a.is_c_contiguous() && a.ndim() == 1 {
            return Ok(a.readonly());
        }
    }
    let py = obj.py();
    let np = py.import("numpy")?;
    let arr = np
        .call_method1("asarray", (obj,))
        .map_err(|e| exc::InvalidArgument::new_err(format!("keys must be integers: {e}")))?;
    let kind: String = arr.getattr("dtype")?.getattr("kind")?.extract()?;
    let ndim: usize = arr.getattr("ndim")?.extract()?;
    let size: usize = arr.getattr("size")?.extract()?;
    if ndim > 1 {
        return Err(exc::InvalidArgument::new_err(format!(
            "keys must be a 1-D sequence of integers, got a {ndim}-D array"
        )));
    }
    if size > 0 && !(kind == "i" || kind == "u") {
        return Err(exc::InvalidArgument::new_err(format!(
            "keys must be integers, got numpy dtype kind {kind:?}"
        )));
    }
    if kind == "i" && size > 0 {
        let min: i64 = arr.call_method0("min")?.extract()?;
        if min < 0 {
            return Err(exc::InvalidArgument::new_err(format!(
                "keys must be non-negative, got {min}"
            )));
        }
    }
    let arr = np.call_method1(
        "ascontiguousarray",
        (arr.call_method1("reshape", (-1,))?, "uint64"),
    )?;
    Ok(arr.cast_into::<PyArrayDyn<u64>>()?.readonly())
}

/// Results of `Index.search`.
///
/// `keys` (uint64) and `distances` (float32) have shape `(n, k)` for a 2-D query batch and
/// `(k,)` for a single 1-D query; rows with fewer than `k` hits are padded with key
/// `2**64 - 1` and distance `inf`, and `counts[i]` says how many entries of row `i` are real.
#[pyclass(name = "SearchResult", module = "twostage._core", frozen)]
pub struct PySearchResult {
    #[pyo3(get)]
    keys: Py<PyAny>,
    #[pyo3(get)]
    distances: Py<PyAny>,
    #[pyo3(get)]
    counts: Py<PyAny>,
}

#[pymethods]
impl PySearchResult {
    /// The real hits of row `row` as `[(key, distance), ...]`, padding removed.
    #[pyo3(signature = (row = 0))]
    fn to_list(&self, py: Python<'_>, row: usize) -> PyResult<Vec<(u64, f32)>> {
        let counts = self.counts.bind(py).cast::<PyArray1<u64>>()?.readonly();
        let counts = counts.as_slice()?;
        let Some(&count) = counts.get(row) else {
            return Err(exc::InvalidArgument::new_err(format!(
                "row {row} out of range for {} rows",
                counts.len()
            )));
        };
        let keys = self.keys.bind(py).cast::<PyArrayDyn<u64>>()?.readonly();
        let dists = self
            .distances
            .bind(py)
            .cast::<PyArrayDyn<f32>>()?
            .readonly();
        let k = keys.shape().last().copied().unwrap_or(0);
        let (keys, dists) = (keys.as_slice()?, dists.as_slice()?);
        Ok((0..count as usize)
            .map(|j| (keys[row * k + j], dists[row * k + j]))
            .collect())
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.counts.bind(py).len()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let shape = self.keys.bind(py).getattr("shape")?.repr()?.to_string();
        Ok(format!("SearchResult(shape={shape})"))
    }
}

/// Approximate nearest-neighbour index (HNSW, via usearch) over u64 keys.
///
/// Args:
///     dim: Vector length.
///     metric: ``"cos"`` (1 - cosine), ``"ip"`` (1 - dot) or ``"l2"`` (squared Euclidean).
///     dtype: Storage: ``"f32"``, ``"f16"`` or ``"i8"``.
///     connectivity: HNSW M, edges per node.
///     ef_construction: Candidate list size while inserting.
///     ef_search: Candidate list size of a search that names none (recall vs speed).
///         ``None`` (the default): it follows the index's size and ``k``
///         (``search_ef``), measured to keep recall@k at 0.95 or more.
///     shards: Independent graphs; keys are routed by hash and results merged.
///     threads: Size of this index's thread pool (default: all cores).
///     rescore: With ``dtype="i8"``, keep f16 copies and re-rank ``k * oversample``
///         candidates exactly.
///     oversample: Candidate multiple for ``rescore``.
///
/// Example:
///     >>> import numpy as np
///     >>> index = Index(dim=3)
///     >>> index.add([10, 20], np.eye(3, dtype=np.float32)[:2])
///     2
///     >>> index.search(np.array([1, 0, 0], np.float32), k=1).keys.tolist()
///     [10]
#[pyclass(name = "Index", module = "twostage._core", frozen)]
pub struct PyIndex {
    inner: index::Index,
}

#[pymethods]
impl PyIndex {
    #[new]
    #[pyo3(signature = (dim, metric = "cos", dtype = "f32", connectivity = 16, ef_construction = 128,
                        ef_search = None, shards = 1, threads = None, rescore = false, oversample = 3))]
    #[allow(clippy::too_many_arguments)] // mirrors the Python signature, keyword arguments
    fn new(
        dim: usize,
        metric: &str,
        dtype: &str,
        connectivity: usize,
        ef_construction: usize,
        ef_search: Option<i64>,
        shards: usize,
        threads: Option<usize>,
        rescore: bool,
        oversample: usize,
    ) -> PyResult<Self> {
        if threads == Some(0) {
            return Err(exc::InvalidArgument::new_err(
                "threads must be >= 1 (or None for all cores)",
            ));
        }
        let ef_search = ef_search.map(|e| positive(e, "ef_search")).transpose()?;
        let config = Config {
            dim,
            metric: Metric::parse(metric)?,
            dtype: Dtype::parse(dtype)?,
            connectivity,
            ef_construction,
            ef_search,
            shards,
            threads: threads.unwrap_or(0),
            rescore,
            oversample,
        };
        Ok(PyIndex {
            inner: index::Index::new(config)?,
        })
    }

    /// Adds ``vectors`` (float32, shape ``(n, dim)``) under ``keys`` (n non-negative ints).
    ///
    /// A key already present has its vector replaced (upsert). The batch is checked whole
    /// before anything changes: a wrong shape, NaN/inf, or a key repeated within the call
    /// raises and leaves the index untouched. Runs on the index's thread pool with the GIL
    /// released; Ctrl-C is honoured between chunks.
    ///
    /// Returns:
    ///     The number of vectors written.
    fn add(
        &self,
        py: Python<'_>,
        keys: &Bound<'_, PyAny>,
        vectors: &Bound<'_, PyAny>,
    ) -> PyResult<usize> {
        let keys = u64_keys(keys)?;
        let vectors = f32_array(vectors, "vectors")?;
        if vectors.ndim() != 2 {
            return Err(exc::InvalidVector::new_err(format!(
                "add takes a 2-D array of shape (n, {}), got shape {:?}; for one vector use v[None, :]",
                self.inner.dim(),
                vectors.shape()
            )));
        }
        if vectors.shape()[1] != self.inner.dim() {
            return Err(Error::DimensionMismatch {
                what: "vectors",
                expected: self.inner.dim(),
                got: vectors.shape()[1],
            }
            .into());
        }
        let (keys, data) = (keys.as_slice()?, vectors.as_slice()?);
        let inner = &self.inner;
        // Validate the whole batch once, so chunking below cannot turn a duplicate into an
        // upsert or leave half a bad batch behind.
        py.detach(|| inner.validate_batch(keys, data))?;
        const CHUNK: usize = 16_384;
        let dim = inner.dim();
        let mut written = 0;
        for start in (0..keys.len()).step_by(CHUNK) {
            let end = (start + CHUNK).min(keys.len());
            written += py
                .detach(|| inner.add_validated(&keys[start..end], &data[start * dim..end * dim]))?;
            py.check_signals()?;
        }
        Ok(written)
    }

    /// Removes ``keys``; returns how many were removed.
    ///
    /// An unknown key raises ``KeyNotFound`` and removes nothing, unless ``missing_ok``.
    #[pyo3(signature = (keys, *, missing_ok = false))]
    fn remove(&self, py: Python<'_>, keys: &Bound<'_, PyAny>, missing_ok: bool) -> PyResult<usize> {
        let keys = u64_keys(keys)?;
        let keys = keys.as_slice()?;
        Ok(py.detach(|| self.inner.remove(keys, missing_ok))?)
    }

    /// The stored vectors of ``keys`` as float32 ``(n, dim)`` (``(dim,)`` for one int key);
    /// dequantised for f16/i8 storage. Raises ``KeyNotFound`` naming any missing key.
    fn get<'py>(&self, py: Python<'py>, keys: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let single = keys.extract::<u64>().ok();
        let owned;
        let keys_slice: &[u64] = match single {
            Some(ref k) => std::slice::from_ref(k),
            None => {
                owned = u64_keys(keys)?;
                owned.as_slice()?
            }
        };
        let n = keys_slice.len();
        let data = py.detach(|| self.inner.get(keys_slice))?;
        let arr = PyArray1::from_vec(py, data);
        if single.is_some() {
            Ok(arr.into_any())
        } else {
            Ok(arr.reshape([n, self.inner.dim()])?.into_any())
        }
    }

    /// Searches for the ``k`` nearest keys of one query ``(dim,)`` or a batch ``(n, dim)``.
    ///
    /// Args:
    ///     queries: float32 (C-contiguous arrays are read in place, others converted once).
    ///     k: Hits per query.
    ///     ef: Candidate list size for this call (default: ``search_ef(k)``, the index's
    ///         ``ef_search`` or, without one, the size-following default). Calls with
    ///         different ``ef`` values serialise against each other.
    ///     allowed: Only these keys may be returned, checked inside the graph walk: a bool
    ///         (or uint8) array indexed by key (``allowed[key]`` true; keys past its end are
    ///         not allowed), or the keys themselves (uint64, sorted ascending; others are
    ///         sorted once). Both are read in place. The walk passes through other nodes and
    ///         goes on until it has seen ``max(k, ef)`` allowed ones, so it slows as the
    ///         allowed share shrinks; for a small set ``search_exact`` is faster and exact.
    ///
    /// Returns:
    ///     ``SearchResult`` with ``keys``, ``distances`` (smaller is closer) and ``counts``.
    #[pyo3(signature = (queries, k = 10, *, ef = None, allowed = None))]
    fn search(
        &self,
        py: Python<'_>,
        queries: &Bound<'_, PyAny>,
        k: i64,
        ef: Option<i64>,
        allowed: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PySearchResult> {
        let k = positive(k, "k")?;
        let ef = ef.map(|e| positive(e, "ef")).transpose()?;
        let (q, single) = self.query_batch(queries)?;
        let data = q.as_slice()?;
        let inner = &self.inner;
        let hits = match allowed {
            None => py.detach(|| inner.search(data, k, ef))?,
            Some(obj) => {
                let arg = AllowedArg::extract(obj)?;
                let sorted;
                let allowed = match &arg {
                    AllowedArg::Bools(a) => {
                        let b = a.as_slice()?;
                        // SAFETY: a bool is one byte holding 0 or 1, a valid u8.
                        index::Allowed::Mask(unsafe {
                            std::slice::from_raw_parts(b.as_ptr() as *const u8, b.len())
                        })
                    }
                    AllowedArg::Bytes(a) => index::Allowed::Mask(a.as_slice()?),
                    AllowedArg::Keys(a) => {
                        let keys = a.as_slice()?;
                        if keys.windows(2).all(|w| w[0] <= w[1]) {
                            index::Allowed::Sorted(keys)
                        } else {
                            let mut v = keys.to_vec();
                            py.detach(|| v.sort_unstable());
                            sorted = v;
                            index::Allowed::Sorted(&sorted)
                        }
                    }
                };
                py.detach(|| inner.search_filtered(data, k, ef, allowed))?
            }
        };
        result(py, hits, single)
    }

    /// The exact ``k`` nearest among ``keys``: a brute-force scan of their stored vectors,
    /// with the distance ``search`` reports for them (bit for bit for f32/f16 storage).
    ///
    /// For a small allowed set (a selective metadata filter) this is faster than a filtered
    /// graph walk and exact. Keys not in the index are skipped; a key listed twice counts
    /// once. Runs with the GIL released; one query's long scan is split over the pool.
    ///
    /// Args:
    ///     queries: One query ``(dim,)`` or a batch ``(n, dim)``, float32.
    ///     keys: The candidates (uint64 read in place; other integer sequences converted).
    ///     k: Hits per query.
    #[pyo3(signature = (queries, keys, k = 10))]
    fn search_exact(
        &self,
        py: Python<'_>,
        queries: &Bound<'_, PyAny>,
        keys: &Bound<'_, PyAny>,
        k: i64,
    ) -> PyResult<PySearchResult> {
        let k = positive(k, "k")?;
        let (q, single) = self.query_batch(queries)?;
        let keys = u64_keys(keys)?;
        let (data, keys) = (q.as_slice()?, keys.as_slice()?);
        let inner = &self.inner;
        let hits = py.detach(|| inner.search_exact(data, k, keys))?;
        result(py, hits, single)
    }

    /// Writes the index to ``path`` atomically, with a checked header and CRC-32.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        Ok(py.detach(|| self.inner.save(&path))?)
    }

    /// Loads an index written by ``save`` into memory (verifying its checksum).
    ///
    /// Raises ``CorruptIndex`` naming the file and the problem for a truncated, damaged or
    /// foreign file, ``FileNotFoundError`` for a missing one.
    #[staticmethod]
    #[pyo3(signature = (path, *, threads = None))]
    fn load(py: Python<'_>, path: PathBuf, threads: Option<usize>) -> PyResult<Self> {
        let inner = py.detach(|| index::Index::load(&path, threads))?;
        Ok(PyIndex { inner })
    }

    /// Opens an index written by ``save`` as a read-only memory-mapped view; writes raise
    /// ``ReadOnlyIndex``. Opening verifies the checksum (one sequential read of the file).
    #[staticmethod]
    #[pyo3(signature = (path, *, threads = None))]
    fn view(py: Python<'_>, path: PathBuf, threads: Option<usize>) -> PyResult<Self> {
        let inner = py.detach(|| index::Index::view(&path, threads))?;
        Ok(PyIndex { inner })
    }

    /// The header of an index file, checked but without reading the rest: a dict with
    /// ``format_version``, ``dim``, ``metric``, ``dtype``, ``count``, ``shards``, ... .
    #[staticmethod]
    fn read_header<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyDict>> {
        let h = py.detach(|| -> Result<_, Error> {
            let mut buf = vec![0u8; crate::format::HEADER_LEN];
            let mut f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            let n = std::io::Read::read(&mut f, &mut buf).map_err(|e| Error::io(&path, e))?;
            crate::format::read_header(&buf[..n], &path)
        })?;
        let d = PyDict::new(py);
        d.set_item("format_version", h.version)?;
        d.set_item("dim", h.dim)?;
        d.set_item("metric", h.metric.name())?;
        d.set_item("dtype", h.dtype.name())?;
        d.set_item("count", h.count)?;
        d.set_item("shards", h.shards)?;
        d.set_item("connectivity", h.connectivity)?;
        d.set_item("ef_construction", h.ef_construction)?;
        // 0 in the file: none set, the index follows its size.
        d.set_item("ef_search", (h.ef_search != 0).then_some(h.ef_search))?;
        d.set_item("rescore", h.rescore)?;
        d.set_item("checksum", h.payload_crc)?;
        d.set_item(
            "size_bytes",
            h.payload_len + crate::format::HEADER_LEN as u64,
        )?;
        Ok(d)
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __contains__(&self, key: &Bound<'_, PyAny>) -> bool {
        key.extract::<u64>().is_ok_and(|k| self.inner.contains(k))
    }

    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    #[getter]
    fn metric(&self) -> &'static str {
        self.inner.config().metric.name()
    }
    #[getter]
    fn dtype(&self) -> &'static str {
        self.inner.config().dtype.name()
    }
    #[getter]
    fn connectivity(&self) -> usize {
        self.inner.config().connectivity
    }
    #[getter]
    fn ef_construction(&self) -> usize {
        self.inner.config().ef_construction
    }
    /// The ``ef_search`` the index was created with; ``None``: it follows its size.
    #[getter]
    fn ef_search(&self) -> Option<usize> {
        self.inner.config().ef_search
    }
    /// The ef a search for ``k`` results runs with when it names none: ``ef_search`` if
    /// set, else ``default_ef(len of the largest shard, k)``.
    ///
    /// Example:
    ///     >>> Index(dim=3).search_ef(100) >= 100
    ///     True
    #[pyo3(signature = (k = 10))]
    fn search_ef(&self, k: i64) -> PyResult<usize> {
        Ok(self.inner.search_ef(positive(k, "k")?))
    }
    #[getter]
    fn shards(&self) -> usize {
        self.inner.config().shards
    }
    #[getter]
    fn rescore(&self) -> bool {
        self.inner.config().rescore
    }
    /// True for an index opened with ``Index.view``.
    #[getter]
    fn read_only(&self) -> bool {
        self.inner.view_path().is_some()
    }
    /// Bytes held by the graphs, vectors and re-scoring copies.
    #[getter]
    fn memory_usage(&self) -> usize {
        self.inner.memory_usage()
    }
    /// SIMD kernels usearch selected on this CPU (e.g. ``"skylake"``, ``"sapphire"``).
    #[getter]
    fn hardware_acceleration(&self) -> String {
        self.inner.hardware_acceleration()
    }

    fn __repr__(&self) -> String {
        let c = self.inner.config();
        format!(
            "Index(dim={}, metric={:?}, dtype={:?}, len={}, shards={}{})",
            c.dim,
            c.metric.name(),
            c.dtype.name(),
            self.inner.len(),
            c.shards,
            if self.read_only() {
                ", read_only=True"
            } else {
                ""
            }
        )
    }
}

impl PyIndex {
    /// Queries as a float32 array: one ``(dim,)`` (``single``) or a batch ``(n, dim)``.
    fn query_batch<'py>(
        &self,
        queries: &Bound<'py, PyAny>,
    ) -> PyResult<(PyReadonlyArrayDyn<'py, f32>, bool)> {
        let q = f32_array(queries, "queries")?;
        let dim = self.inner.dim();
        let single = match q.ndim() {
            1 => true,
            2 => false,
            d => {
                return Err(exc::InvalidVector::new_err(format!(
                    "queries must be 1-D (dim,) or 2-D (n, dim), got {d}-D shape {:?}",
                    q.shape()
                )))
            }
        };
        let width = *q.shape().last().unwrap_or(&0);
        if width != dim {
            return Err(Error::DimensionMismatch {
                what: "queries",
                expected: dim,
                got: width,
            }
            .into());
        }
        Ok((q, single))
    }
}

fn positive(v: i64, what: &str) -> PyResult<usize> {
    if v <= 0 {
        return Err(exc::InvalidArgument::new_err(format!(
            "{what} must be >= 1, got {v}"
        )));
    }
    Ok(v as usize)
}

/// Search hits as a ``SearchResult``: ``(k,)`` arrays for a single query, ``(n, k)`` else.
fn result(py: Python<'_>, hits: index::Hits, single: bool) -> PyResult<PySearchResult> {
    let (n, k) = (hits.n, hits.k);
    let keys = PyArray1::from_vec(py, hits.keys);
    let distances = PyArray1::from_vec(py, hits.distances);
    let (keys, distances) = if single {
        (keys.into_any(), distances.into_any())
    } else {
        // A reshape of a fresh contiguous array is a view: no copy.
        (
            keys.reshape([n, k])?.into_any(),
            distances.reshape([n, k])?.into_any(),
        )
    };
    Ok(PySearchResult {
        keys: keys.unbind(),
        distances: distances.unbind(),
        counts: PyArray1::from_vec(py, hits.counts).into_any().unbind(),
    })
}

/// ``Index.search``'s ``allowed``: a mask indexed by key, or keys.
enum AllowedArg<'py> {
    Bools(PyReadonlyArrayDyn<'py, bool>),
    Bytes(PyReadonlyArrayDyn<'py, u8>),
    Keys(PyReadonlyArrayDyn<'py, u64>),
}

impl<'py> AllowedArg<'py> {
    fn extract(obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        let one_d = |ndim: usize| {
            if ndim == 1 {
                Ok(())
            } else {
                Err(exc::InvalidArgument::new_err(format!(
                    "allowed must be 1-D (a mask indexed by key, or keys), got {ndim}-D"
                )))
            }
        };
        if let Ok(a) = obj.cast::<PyArrayDyn<bool>>() {
            one_d(a.ndim())?;
            return Ok(AllowedArg::Bools(contiguous(a)?));
        }
        if let Ok(a) = obj.cast::<PyArrayDyn<u8>>() {
            one_d(a.ndim())?;
            return Ok(AllowedArg::Bytes(contiguous(a)?));
        }
        Ok(AllowedArg::Keys(u64_keys(obj)?))
    }
}

/// A 1-D numpy array read in place when contiguous, copied once by numpy otherwise.
fn contiguous<'py, T: numpy::Element>(
    a: &Bound<'py, PyArrayDyn<T>>,
) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    if a.is_c_contiguous() {
        return Ok(a.readonly());
    }
    let np = a.py().import("numpy")?;
    Ok(np
        .call_method1("ascontiguousarray", (a,))?
        .cast_into::<PyArrayDyn<T>>()?
        .readonly())
}

/// Holds one Python object with a version; ``swap`` replaces it atomically.
///
/// Readers call ``get()`` and keep the returned object for the whole request, so each
/// request uses one version from start to end; the replaced object is released once its
/// last reader drops it. Reads are lock-free (arc-swap); writers are serialised.
///
/// Example:
///     >>> slot = Slot("model-a")
///     >>> slot.get()
///     (1, 'model-a')
///     >>> slot.swap("model-b")
///     2
#[pyclass(name = "Slot", module = "twostage._core", frozen)]
pub struct PySlot {
    inner: slot::Slot<Py<PyAny>>,
}

#[pymethods]
impl PySlot {
    #[new]
    fn new(obj: Py<PyAny>) -> Self {
        PySlot {
            inner: slot::Slot::new(obj),
        }
    }

    /// ``(version, object)``, read atomically as a pair.
    fn get(&self, py: Python<'_>) -> (u64, Py<PyAny>) {
        let cur = self.inner.get();
        (cur.version, cur.value.clone_ref(py))
    }

    /// Publishes ``obj`` as the next version; returns that version.
    fn swap(&self, obj: Py<PyAny>) -> u64 {
        self.inner.swap(obj)
    }

    /// Publishes ``obj`` only if the slot still holds ``expected_version``; returns the new
    /// version. Raises ``VersionConflict`` (and changes nothing) otherwise.
    fn compare_and_swap(&self, expected_version: u64, obj: Py<PyAny>) -> PyResult<u64> {
        Ok(self.inner.compare_and_swap(expected_version, obj)?)
    }

    /// The current version.
    #[getter]
    fn version(&self) -> u64 {
        self.inner.version()
    }

    fn __repr__(&self) -> String {
        format!("Slot(version={})", self.inner.version())
    }
}

type KeyScoreLists = Vec<(Vec<u64>, Vec<f32>)>;
type KeysAndScores<'py> = (Bound<'py, PyArray1<u64>>, Bound<'py, PyArray1<f32>>);

/// Merges ranked lists into one deduplicated top-``k``.
///
/// Args:
///     lists: ``[(keys, scores), ...]``; a key seen more than once keeps its best score.
///     k: Length of the result.
///     higher_is_better: ``True`` for similarities/scores, ``False`` for distances.
///
/// Returns:
///     ``(keys uint64, scores float32)``, best first; ties by ascending key; NaN last.
#[pyfunction]
#[pyo3(signature = (lists, k, *, higher_is_better = true))]
fn merge_topk<'py>(
    py: Python<'py>,
    lists: KeyScoreLists,
    k: usize,
    higher_is_better: bool,
) -> PyResult<KeysAndScores<'py>> {
    let mut pairs = Vec::with_capacity(lists.len());
    for (i, (keys, scores)) in lists.iter().enumerate() {
        if keys.len() != scores.len() {
            return Err(exc::InvalidArgument::new_err(format!(
                "list {i} has {} keys but {} scores",
                keys.len(),
                scores.len()
            )));
        }
        pairs.push(
            keys.iter()
                .copied()
                .zip(scores.iter().copied())
                .collect::<Vec<_>>(),
        );
    }
    let order = if higher_is_better {
        merge::Order::HigherFirst
    } else {
        merge::Order::LowerFirst
    };
    let out = py.detach(|| merge::merge_topk(pairs.iter().map(|p| p.as_slice()), k, order));
    let (keys, scores): (Vec<u64>, Vec<f32>) = out.into_iter().unzip();
    Ok((PyArray1::from_vec(py, keys), PyArray1::from_vec(py, scores)))
}

/// Reciprocal-rank fusion: each key scores ``sum(1 / (c + rank))`` over the lists it is in.
///
/// Returns:
///     ``(keys uint64, scores float32)`` for the top ``k``, ties by ascending key.
#[pyfunction]
#[pyo3(signature = (lists, k, c = 60.0))]
fn rrf<'py>(
    py: Python<'py>,
    lists: Vec<Vec<u64>>,
    k: usize,
    c: f64,
) -> PyResult<KeysAndScores<'py>> {
    let out = py.detach(|| merge::rrf(lists.iter().map(|l| l.as_slice()), k, c))?;
    let (keys, scores): (Vec<u64>, Vec<f32>) = out.into_iter().unzip();
    Ok((PyArray1::from_vec(py, keys), PyArray1::from_vec(py, scores)))
}

/// The final order of a two-stage answer, as positions into ``candidates``.
///
/// Args:
///     candidates: Keys in first-stage order.
///     scored: ``{key: reranker score}`` for the candidates the reranker reached.
///
/// Returns:
///     int64 positions: scored candidates by descending score (ties by first-stage rank),
///     then the unscored ones in first-stage order. A NaN score counts as unscored.
#[pyfunction]
fn rerank_order<'py>(
    py: Python<'py>,
    candidates: Vec<u64>,
    scored: &Bound<'py, PyMapping>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let mut pairs = Vec::with_capacity(scored.len()?);
    for item in scored.items()?.iter() {
        let (k, s): (u64, f32) = item.extract().map_err(|e| {
            PyTypeError::new_err(format!("scored must map int keys to float scores: {e}"))
        })?;
        pairs.push((k, s));
    }
    let order = merge::rerank_order(&candidates, &pairs)?;
    Ok(PyArray1::from_vec(
        py,
        order.into_iter().map(|i| i as i64).collect(),
    ))
}

/// The search ef an index without ``ef_search`` uses for a graph of ``n`` vectors and ``k``
/// results: the smallest that kept recall@k at 0.95 or more where it was measured, plus a
/// margin (the rule and its measurements: ``twostage.Index.search_ef``, BENCHMARKS.md §2).
///
/// Example:
///     >>> default_ef(1_000_000, 100) >= default_ef(10_000, 100) >= 100
///     True
#[pyfunction]
#[pyo3(signature = (n, k = 10))]
fn default_ef(n: usize, k: i64) -> PyResult<usize> {
    Ok(index::default_ef(n, positive(k, "k")?))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyIndex>()?;
    m.add_class::<PySearchResult>()?;
    m.add_class::<PySlot>()?;
    m.add_function(wrap_pyfunction!(merge_topk, m)?)?;
    m.add_function(wrap_pyfunction!(rrf, m)?)?;
    m.add_function(wrap_pyfunction!(rerank_order, m)?)?;
    m.add_function(wrap_pyfunction!(default_ef, m)?)?;
    m.add("MISSING_KEY", index::MISSING_KEY)?;
    m.add("usearch_version", usearch::version())?;
    Ok(())
}
