//! A versioned slot whose content is replaced atomically while readers keep going.
//!
//! Readers call [`Slot::get`]: one lock-free load (arc-swap) that returns an owned `Arc` of
//! a (version, value) pair, so a reader can never see one version's number with another's
//! value, and the value it holds stays alive until it lets go, however many swaps happen
//! meanwhile. Writers are rare (a model swap), so they are serialised by a mutex: that makes
//! versions strictly increasing and compare-and-swap trivially correct, and costs readers
//! nothing.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::error::{Error, Result};

/// One published value and the version it was published as.
#[derive(Debug)]
pub struct Versioned<T> {
    pub version: u64,
    pub value: T,
}

pub struct Slot<T> {
    current: ArcSwap<Versioned<T>>,
    writer: Mutex<()>,
}

impl<T> Slot<T> {
    /// A slot holding `value` as version 1.
    pub fn new(value: T) -> Self {
        Slot {
            current: ArcSwap::from_pointee(Versioned { version: 1, value }),
            writer: Mutex::new(()),
        }
    }

    /// The current (version, value), lock-free. Hold the returned `Arc` for as long as the
    /// value is in use: that is what keeps a swapped-out value alive for its last reader.
    #[inline]
    pub fn get(&self) -> Arc<Versioned<T>> {
        self.current.load_full()
    }

    /// The current version alone (cheaper than `get` when the value is not needed).
    #[inline]
    pub fn version(&self) -> u64 {
        self.current.load().version
    }

    /// Publishes `value` as the next version and returns that version.
    pub fn swap(&self, value: T) -> u64 {
        // A poisoned mutex only means another writer panicked between load and store; the
        // slot itself is always a complete pair, so it is safe to go on.
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let version = self.current.load().version + 1;
        self.current.store(Arc::new(Versioned { version, value }));
        version
    }

    /// Publishes `value` only if the slot still holds `expected`; returns the new version.
    /// On a mismatch nothing changes and the error carries the version actually held.
    pub fn compare_and_swap(&self, expected: u64, value: T) -> Result<u64> {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let actual = self.current.load().version;
        if actual != expected {
            return Err(Error::VersionConflict { expected, actual });
        }
        let version = actual + 1;
        self.current.store(Arc::new(Versioned { version, value }));
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread;

    #[test]
    fn readers_see_consistent_monotonic_pairs() {
        // The value encodes its own version, so a torn read would show a mismatch.
        let slot = Arc::new(Slot::new(1u64));
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (slot, stop) = (slot.clone(), stop.clone());
                thread::spawn(move || {
                    let mut last = 0;
                    let mut reads = 0u64;
                    while !stop.load(Ordering::Relaxed) || reads == 0 {
                        let got = slot.get();
                        assert_eq!(got.version, got.value, "torn read");
                        assert!(got.version >= last, "version went backwards");
                        last = got.version;
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        for v in 2..=2000u64 {
            assert_eq!(slot.swap(v), v);
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
        assert_eq!(slot.version(), 2000);
    }

    #[test]
    fn old_value_lives_until_last_reader_drops() {
        let payload = Arc::new(());
        let slot = Slot::new(payload.clone());
        let held = slot.get();
        slot.swap(Arc::new(()));
        assert_eq!(
            Arc::strong_count(&payload),
            2,
            "the held reader keeps the old pair alive"
        );
        drop(held);
        assert_eq!(
            Arc::strong_count(&payload),
            1,
            "freed once the last reader let go"
        );
    }

    #[test]
    fn compare_and_swap_refuses_stale_version() {
        let slot = Slot::new("a");
        assert_eq!(slot.compare_and_swap(1, "b").unwrap(), 2);
        match slot.compare_and_swap(1, "c") {
            Err(Error::VersionConflict {
                expected: 1,
                actual: 2,
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(slot.get().value, "b");
    }
}
