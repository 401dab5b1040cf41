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
