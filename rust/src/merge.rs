//! Merging ranked lists: shard top-k merge, reciprocal-rank fusion, and the final order of a
//! two-stage answer.
//!
//! Every function here gives a total order, so the same inputs give the same output whatever
//! order the lists arrive in (usearch's own shard merge keeps arrival order and duplicates;
//! we do not): ties are broken by ascending key, and NaN always ranks last, whichever
//! direction "better" is.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::error::{Error, Result};

/// A hasher for u64 keys: one multiply-xorshift instead of SipHash. Keys here are document
/// ids chosen by the caller, not attacker-controlled input to a long-lived table, and the
/// merge sits on every query's path (SipHash made the 8 x 100 merge ~3x slower).
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, x: u64) {
        let x = (x ^ (x >> 32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
        self.0 = x ^ (x >> 32);
    }
}

pub(crate) type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<KeyHasher>>;
pub(crate) type KeySet = std::collections::HashSet<u64, BuildHasherDefault<KeyHasher>>;

/// Which end of the score range is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Scores: larger is better (similarities, reranker logits, RRF).
    HigherFirst,
    /// Distances: smaller is better (what the HNSW index returns).
    LowerFirst,
}

impl Order {
    /// Compares two (key, score) entries: `Less` means `a` ranks before `b`.
    #[inline]
    pub fn cmp_entries(self, a: (u64, f32), b: (u64, f32)) -> Ordering {
        let by_score = match (a.1.is_nan(), b.1.is_nan()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            // Neither is NaN, so partial_cmp is total here, and unlike total_cmp it treats
            // -0.0 and 0.0 as equal (a tie, broken by key).
            (false, false) => {
                let o = a.1.partial_cmp(&b.1).unwrap_or(Ordering::Equal);
                match self {
                    Order::HigherFirst => o.reverse(),
                    Order::LowerFirst => o,
                }
            }
        };
        by_score.then(a.0.cmp(&b.0))
    }

    #[inline]
    fn better(self, a: f32, b: f32) -> bool {
        self.cmp_entries((0, a), (0, b)) == Ordering::Less
    }
}

/// Merges ranked lists into one deduplicated top-`k`.
///
/// Each list holds `(key, score)` pairs; lists need not be sorted (shards return sorted lists,
/// but sorting is not trusted for correctness). A key seen more than once keeps its best
/// score. The result is sorted best-first under `order`, ties by ascending key.
pub fn merge_topk<'a, I>(lists: I, k: usize, order: Order) -> Vec<(u64, f32)>
where
    I: IntoIterator<Item = &'a [(u64, f32)]>,
{
    let mut best: KeyMap<f32> = KeyMap::default();
    for list in lists {
        for &(key, score) in list {
            best.entry(key)
                .and_modify(|s| {
                    // Among equal-ranking scores (-0.0 vs 0.0, two NaNs) keep the lowest bit
                    // pattern, so the result does not depend on the order lists arrive in.
                    if order.better(score, *s)
                        || (!order.better(*s, score) && score.total_cmp(s) == Ordering::Less)
                    {
                        *s = score;
                    }
                })
                .or_insert(score);
        }
    }
    let mut all: Vec<(u64, f32)> = best.into_iter().collect();
    top_k_in_place(&mut all, k, order);
    all
}

/// Keeps the best `k` entries of `v`, sorted; O(n + k log k) via selection then sort.
pub fn top_k_in_place(v: &mut Vec<(u64, f32)>, k: usize, order: Order) {
    if k == 0 {
        v.clear();
        return;
    }
    if v.len() > k {
        v.select_nth_unstable_by(k - 1, |a, b| order.cmp_entries(*a, *b));
        v.truncate(k);
    }
    v.sort_unstable_by(|a, b| order.cmp_entries(*a, *b));
}

/// Reciprocal-rank fusion (Cormack et al., 2009): each key scores `sum 1 / (c + rank)` over
/// the lists it appears in, rank counted from 1. A key repeated within one list counts at
/// its first (best) position only. Returns the top `k` by fused score, ties by key.
pub fn rrf<'a, I>(lists: I, k: usize, c: f64) -> Result<Vec<(u64, f32)>>
where
    I: IntoIterator<Item = &'a [u64]>,
{
    if !(c.is_finite() && c >= 0.0) {
        return Err(Error::InvalidArgument(format!(
            "rrf constant c must be finite and >= 0, got {c}"
        )));
    }
    // Accumulate in f64 so that summing many small terms does not reorder near-ties.
    let mut fused: KeyMap<f64> = KeyMap::default();
    for list in lists {
        let mut seen = std::collections::HashSet::with_capacity(list.len());
        for (i, &key) in list.iter().enumerate() {
            if seen.insert(key) {
                *fused.entry(key).or_insert(0.0) += 1.0 / (c + (i + 1) as f64);
            }
        }
    }
    let mut all: Vec<(u64, f64)> = fused.into_iter().collect();
    all.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all.truncate(k);
    Ok(all.into_iter().map(|(key, s)| (key, s as f32)).collect())
}

/// The final order of a two-stage answer, as positions into `candidates`.
///
/// `candidates` are keys in first-stage order; `scored` maps some of them to reranker scores
/// (higher is better). Scored candidates come first, by score (ties by first-stage position);
/// then every unscored candidate, in first-stage order. A NaN score is a reranker failure
/// for that pair, so that candidate is treated as unscored rather than ranked.
///
/// Errors if a candidate key repeats or a scored key is not among the candidates: either
/// means the caller mixed up two result sets, and a silently wrong order is worse.
pub fn rerank_order(candidates: &[u64], scored: &[(u64, f32)]) -> Result<Vec<usize>> {
    let mut position: KeyMap<usize> =
        KeyMap::with_capacity_and_hasher(candidates.len(), Default::default());
    for (i, &key) in candidates.iter().enumerate() {
        if position.insert(key, i).is_some() {
            return Err(Error::InvalidArgument(format!(
                "candidate key {key} appears twice in the first-stage list"
            )));
        }
    }
    let mut score_of: Vec<Option<f32>> = vec![None; candidates.len()];
    for &(key, score) in scored {
        let Some(&pos) = position.get(&key) else {
            return Err(Error::KeyNotFound(format!(
                "scored key {key} is not among the candidates"
            )));
        };
        if score_of[pos].is_some() {
            return Err(Error::InvalidArgument(format!("key {key} is scored twice")));
        }
        if !score.is_nan() {
            score_of[pos] = Some(score);
        }
    }
    let mut first: Vec<(usize, f32)> = score_of
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.map(|s| (i, s)))
        .collect();
    first.sort_unstable_by(|a, b| {
        b.1.partial_cmp(&a.1)
            .unwrap_or(Ordering::Equal)
            .then(a.0.cmp(&b.0))
    });
    let mut out: Vec<usize> = first.into_iter().map(|(i, _)| i).collect();
    out.extend(
        score_of
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_none())
            .map(|(i, _)| i),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The oracle: concatenate, keep each key's best, sort fully, truncate.
    fn oracle(lists: &[Vec<(u64, f32)>], k: usize, order: Order) -> Vec<(u64, f32)> {
        let mut all: Vec<(u64, f32)> = lists.iter().flatten().copied().collect();
        all.sort_by(|a, b| order.cmp_entries(*a, *b).then(a.1.total_cmp(&b.1)));
        let mut seen = std::collections::HashSet::new();
        all.retain(|e| seen.insert(e.0));
        all.truncate(k);
        all
    }

    fn score() -> impl Strategy<Value = f32> {
        prop_oneof![
            8 => (-4i32..4).prop_map(|x| x as f32 * 0.5), // many ties on purpose
            1 => Just(f32::NAN),
            1 => Just(f32::INFINITY),
            1 => Just(f32::NEG_INFINITY),
            2 => any::<f32>().prop_filter("finite", |x| x.is_finite()),
        ]
    }

    fn lists() -> impl Strategy<Value = Vec<Vec<(u64, f32)>>> {
        prop::collection::vec(prop::collection::vec((0u64..40, score()), 0..30), 0..6)
    }

    fn same(a: &[(u64, f32)], b: &[(u64, f32)]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                x.0 == y.0 && x.1.to_bits() == y.1.to_bits()
                    || (x.0 == y.0 && x.1.is_nan() && y.1.is_nan())
            })
    }

    proptest! {
        #[test]
        fn merge_matches_oracle(lists in lists(), k in 0usize..50, higher in any::<bool>()) {
            let order = if higher { Order::HigherFirst } else { Order::LowerFirst };
            let got = merge_topk(lists.iter().map(|l| l.as_slice()), k, order);
            let want = oracle(&lists, k, order);
            prop_assert!(same(&got, &want), "got {:?} want {:?}", got, want);
        }

        #[test]
        fn merge_is_order_independent(mut lists in lists(), k in 1usize..50) {
            let a = merge_topk(lists.iter().map(|l| l.as_slice()), k, Order::LowerFirst);
            lists.reverse();
            let b = merge_topk(lists.iter().map(|l| l.as_slice()), k, Order::LowerFirst);
            prop_assert!(same(&a, &b));
        }

        #[test]
        fn rrf_matches_oracle(lists in prop::collection::vec(prop::collection::vec(0u64..30, 0..20), 0..5),
                              k in 0usize..40) {
            let got = rrf(lists.iter().map(|l| l.as_slice()), k, 60.0).unwrap();
            let mut score: HashMap<u64, f64> = HashMap::new();
            for l in &lists {
                let mut seen = std::collections::HashSet::new();
                for (i, key) in l.iter().enumerate() {
                    if seen.insert(*key) { *score.entry(*key).or_default() += 1.0 / (61.0 + i as f64); }
                }
            }
            let mut want: Vec<(u64, f64)> = score.into_iter().collect();
            want.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
            want.truncate(k);
            prop_assert_eq!(got.iter().map(|e| e.0).collect::<Vec<_>>(),
                            want.iter().map(|e| e.0).collect::<Vec<_>>());
        }

        #[test]
        fn rerank_order_is_a_permutation(n in 0usize..60, seed in any::<u64>()) {
            let candidates: Vec<u64> = (0..n as u64).map(|i| i * 7 + 3).collect();
            let mut x = seed | 1;
            let mut scored = vec![];
            for &c in &candidates {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                if x % 3 != 0 { scored.push((c, ((x >> 40) % 5) as f32)); }
            }
            let order = rerank_order(&candidates, &scored).unwrap();
            let mut sorted = order.clone();
            sorted.sort();
            prop_assert_eq!(sorted, (0..n).collect::<Vec<_>>());
            // Scored first, non-increasing scores, ties by position; then unscored by position.
            let m = scored.len();
            let score_at = |p: usize| scored.iter().find(|s| s.0 == candidates[p]).map(|s| s.1);
            for w in order[..m].windows(2) {
                let (a, b) = (score_at(w[0]).unwrap(), score_at(w[1]).unwrap());
                prop_assert!(a > b || (a == b && w[0] < w[1]));
            }
            prop_assert!(order[m..].iter().all(|&p| score_at(p).is_none()));
            prop_assert!(order[m..].windows(2).all(|w| w[0] < w[1]));
        }
    }

    /// A permutation of every entry, regrouped into lists of random sizes.
    fn reshuffle(lists: &[Vec<(u64, f32)>], seed: u64) -> Vec<Vec<(u64, f32)>> {
        let mut all: Vec<(u64, f32)> = lists.iter().flatten().copied().collect();
        let mut x = seed | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in (1..all.len()).rev() {
            all.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        let mut out = vec![];
        while !all.is_empty() {
            let take = (next() % 8 + 1).min(all.len() as u64) as usize;
            out.push(all.drain(..take).collect());
        }
        out
    }

    proptest! {
        #![proptest_config(crate::test_config(256))]

        /// The answer is strictly ordered best-first (a total order: no two entries compare
        /// equal, so no key twice), each key carries its best input score, it is as long as
        /// it can be, and nothing left out ranks before the last entry kept.
        #[test]
        fn merge_is_a_deduplicated_top_k(lists in lists(), k in 0usize..50, higher in any::<bool>()) {
            let order = if higher { Order::HigherFirst } else { Order::LowerFirst };
            let got = merge_topk(lists.iter().map(|l| l.as_slice()), k, order);
            let mut best: HashMap<u64, f32> = HashMap::new();
            for &(key, s) in lists.iter().flatten() {
                let b = best.entry(key).or_insert(s);
                if order.cmp_entries((key, s), (key, *b)) == Ordering::Less {
                    *b = s;
                }
            }
            prop_assert_eq!(got.len(), k.min(best.len()));
            for w in got.windows(2) {
                prop_assert_eq!(order.cmp_entries(w[0], w[1]), Ordering::Less, "{:?}", got);
            }
            for &(key, s) in &got {
                let b = best[&key];
                prop_assert!(order.cmp_entries((key, s), (key, b)) == Ordering::Equal);
                prop_assert!(lists.iter().flatten().any(|e| e.0 == key
                    && (e.1.to_bits() == s.to_bits() || (e.1.is_nan() && s.is_nan()))));
            }
            if let Some(&last) = got.last() {
                for (&key, &b) in &best {
                    if !got.iter().any(|e| e.0 == key) {
                        prop_assert_eq!(order.cmp_entries(last, (key, b)), Ordering::Less);
                    }
                }
            }
        }

        /// Any permutation of the entries, grouped into any lists, gives the same bits.
        #[test]
        fn merge_ignores_arrival_order(lists in lists(), k in 0usize..50, higher in any::<bool>(),
                                       seed in any::<u64>()) {
            let order = if higher { Order::HigherFirst } else { Order::LowerFirst };
            let a = merge_topk(lists.iter().map(|l| l.as_slice()), k, order);
            let shuffled = reshuffle(&lists, seed);
            let b = merge_topk(shuffled.iter().map(|l| l.as_slice()), k, order);
            prop_assert!(same(&a, &b), "{:?} vs {:?}", a, b);
        }

        /// Selection then sort keeps exactly what a full sort would (distinct keys).
        #[test]
        fn top_k_in_place_matches_a_full_sort(scores in prop::collection::vec(score(), 0..80),
                                              k in 0usize..90, higher in any::<bool>()) {
            let order = if higher { Order::HigherFirst } else { Order::LowerFirst };
            let mut v: Vec<(u64, f32)> =
                scores.iter().enumerate().map(|(i, &s)| (i as u64 * 3 % 83, s)).collect();
            let mut want = v.clone();
            want.sort_by(|a, b| order.cmp_entries(*a, *b));
            want.truncate(k);
            top_k_in_place(&mut v, k, order);
            prop_assert!(same(&v, &want), "{:?} vs {:?}", v, want);
        }
    }

    #[test]
    fn nan_ranks_last_both_ways() {
        let l: &[(u64, f32)] = &[(1, f32::NAN), (2, 0.5), (3, -1.0)];
        let hi = merge_topk([l], 3, Order::HigherFirst);
        assert_eq!(hi.iter().map(|e| e.0).collect::<Vec<_>>(), vec![2, 3, 1]);
        let lo = merge_topk([l], 3, Order::LowerFirst);
        assert_eq!(lo.iter().map(|e| e.0).collect::<Vec<_>>(), vec![3, 2, 1]);
    }

    #[test]
    fn duplicate_key_keeps_best() {
        let a: &[(u64, f32)] = &[(5, 0.9), (6, 0.1)];
        let b: &[(u64, f32)] = &[(5, 0.2)];
        assert_eq!(
            merge_topk([a, b], 10, Order::LowerFirst),
            vec![(6, 0.1), (5, 0.2)]
        );
        assert_eq!(
            merge_topk([a, b], 10, Order::HigherFirst),
            vec![(5, 0.9), (6, 0.1)]
        );
    }

    #[test]
    fn rerank_order_nan_is_unscored_and_errors_are_specific() {
        let order = rerank_order(&[10, 20, 30], &[(30, 1.0), (10, f32::NAN)]).unwrap();
        assert_eq!(order, vec![2, 0, 1]);
        assert!(matches!(
            rerank_order(&[1, 1], &[]),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            rerank_order(&[1], &[(2, 0.0)]),
            Err(Error::KeyNotFound(_))
        ));
        assert!(rrf(std::iter::empty::<&[u64]>(), 3, f64::NAN).is_err());
    }
}
