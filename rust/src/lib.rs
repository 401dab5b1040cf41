//! twostage's Rust core: the HNSW index (`index`), ranked-list merging (`merge`) and the
//! hot-swap slot (`slot`). None of these modules know about Python; the `py` module (behind
//! the `python` feature) is the only binding layer, so the core is unit-tested and
//! benchmarked without libpython.

pub mod error;
pub mod format;
pub mod index;
pub mod kernels;
pub mod merge;
pub mod slot;

#[cfg(feature = "python")]
mod py;

pub use error::{Error, Result};
pub use index::{Config, Dtype, Hits, Index, Metric, MISSING_KEY};
pub use merge::{merge_topk, rerank_order, rrf, Order};
pub use slot::{Slot, Versioned};

/// Property-test settings: `default_cases` cases unless `PROPTEST_CASES` says otherwise (the
/// CI suite runs the defaults; `benches/fuzz.py rust` runs many more in release).
#[cfg(test)]
pub(crate) fn test_config(default_cases: u32) -> proptest::prelude::ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    proptest::prelude::ProptestConfig {
        cases,
        ..proptest::prelude::ProptestConfig::default()
    }
}
