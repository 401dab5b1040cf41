//! The on-disk index file: a fixed 128-byte header that can be checked on its own, a shard
//! table, then each shard's usearch blob and (with re-scoring) its f16 copies.
//!
//! ```text
//! 0   magic "TWSTGIDX"        8   format version u32     12  header length u32 (128)
//! 16  dim u32                 20  metric u8, dtype u8, rescore u8, oversample u8
//! 24  shards u32              28  connectivity u32   32 ef_construction u32   36 ef_search u32
//!                             (ef_search 0: none set, searches follow the index's size)
//! 40  vector count u64        48  payload length u64 56  payload CRC-32 u32
//! 60  header CRC-32 u32 (of bytes 0..60)              64..128 zero
//! 128 shard table: per shard (hnsw offset, hnsw length, rescore offset, rescore length) u64
//! ... sections, each starting on a 64-byte boundary (usearch views vectors in place)
//! ```
//! All integers are little-endian. The payload is everything after the header, and its
//! checksum is verified on every open, so a flipped bit anywhere is reported, not searched.

use std::collections::HashMap;
use std::path::Path;

use half::f16;

use crate::error::{Error, Result};
use crate::index::{Config, Dtype, Metric};

pub const MAGIC: &[u8; 8] = b"TWSTGIDX";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_LEN: usize = 128;
const ALIGN: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub version: u32,
    pub dim: u32,
    pub metric: Metric,
    pub dtype: Dtype,
    pub rescore: bool,
    pub oversample: u8,
    pub shards: u32,
    pub connectivity: u32,
    pub ef_construction: u32,
    pub ef_search: u32,
    pub count: u64,
    pub payload_len: u64,
    pub payload_crc: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct ShardSection {
    hnsw: (usize, usize),
    rescore: (usize, usize),
}

impl ShardSection {
    pub fn hnsw<'a>(&self, file: &'a [u8]) -> &'a [u8] {
        &file[self.hnsw.0..self.hnsw.0 + self.hnsw.1]
    }
    pub fn rescore<'a>(&self, file: &'a [u8]) -> &'a [u8] {
        &file[self.rescore.0..self.rescore.0 + self.rescore.1]
    }
    /// Where the re-scoring section lies in the file: (offset, length).
    pub fn rescore_range(&self) -> (usize, usize) {
        self.rescore
    }
}

fn align(x: usize) -> usize {
    x.div_ceil(ALIGN) * ALIGN
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Serialises a whole index file. `blobs` is (usearch bytes, rescore bytes) per shard.
pub fn encode(config: &Config, count: u64, blobs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let table_len = blobs.len() * 32;
    let mut offset = align(HEADER_LEN + table_len);
    let mut table = Vec::with_capacity(table_len);
    let mut places = Vec::with_capacity(blobs.len());
    for (hnsw, rescore) in blobs {
        let h = offset;
        offset = align(h + hnsw.len());
        let r = offset;
        offset = align(r + rescore.len());
        for v in [h, hnsw.len(), r, rescore.len()] {
            table.extend_from_slice(&(v as u64).to_le_bytes());
        }
        places.push((h, r));
    }
    let mut out = vec![0u8; offset];
    out[HEADER_LEN..HEADER_LEN + table_len].copy_from_slice(&table);
    for ((hnsw, rescore), (h, r)) in blobs.iter().zip(places) {
        out[h..h + hnsw.len()].copy_from_slice(hnsw);
        out[r..r + rescore.len()].copy_from_slice(rescore);
    }
    let payload_crc = crc32fast::hash(&out[HEADER_LEN..]);
    let payload_len = (out.len() - HEADER_LEN) as u64;

    let h = &mut out[..HEADER_LEN];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    h[16..20].copy_from_slice(&(config.dim as u32).to_le_bytes());
    h[20] = config.metric.code();
    h[21] = config.dtype.code();
    h[22] = config.rescore as u8;
    h[23] = config.oversample as u8;
    h[24..28].copy_from_slice(&(config.shards as u32).to_le_bytes());
    h[28..32].copy_from_slice(&(config.connectivity as u32).to_le_bytes());
    h[32..36].copy_from_slice(&(config.ef_construction as u32).to_le_bytes());
    // 0: no ef set, the index follows its size (`default_ef`).
    h[36..40].copy_from_slice(&(config.ef_search.unwrap_or(0) as u32).to_le_bytes());
    h[40..48].copy_from_slice(&count.to_le_bytes());
    h[48..56].copy_from_slice(&payload_len.to_le_bytes());
    h[56..60].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&h[..60]);
    h[60..64].copy_from_slice(&header_crc.to_le_bytes());
    out
}

/// Reads and checks only the header (cheap: 128 bytes), for `info`-style inspection.
pub fn read_header(file: &[u8], path: &Path) -> Result<Header> {
    let corrupt = |m: String| Error::corrupt(path, m);
    if file.len() < HEADER_LEN {
        if !file.starts_with(&MAGIC[..file.len().min(8)]) || file.is_empty() {
            return Err(corrupt(format!(
                "not a twostage index (file is {} bytes and does not start with {:?})",
                file.len(),
                std::str::from_utf8(MAGIC).unwrap()
            )));
        }
        return Err(corrupt(format!(
            "truncated: {} bytes, shorter than the {HEADER_LEN}-byte header",
            file.len()
        )));
    }
    if &file[..8] != MAGIC {
        return Err(corrupt(format!(
            "not a twostage index: it starts with {:?}, expected {:?}",
            String::from_utf8_lossy(&file[..8]),
            std::str::from_utf8(MAGIC).unwrap()
        )));
    }
    let version = u32_at(file, 8);
    if version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {version}; this twostage reads version {FORMAT_VERSION}"
        )));
    }
    if crc32fast::hash(&file[..60]) != u32_at(file, 60) {
        return Err(corrupt(
            "header checksum mismatch: the header is damaged".into(),
        ));
    }
    // Outside both checksums: zero as written, so a flipped bit here is damage too.
    if file[64..HEADER_LEN].iter().any(|&b| b != 0) {
        return Err(corrupt(
            "the header's reserved bytes (64..128) are not zero: the header is damaged".into(),
        ));
    }
    let metric = Metric::from_code(file[20])
        .ok_or_else(|| corrupt(format!("unknown metric code {}", file[20])))?;
    let dtype = Dtype::from_code(file[21])
        .ok_or_else(|| corrupt(format!("unknown dtype code {}", file[21])))?;
    Ok(Header {
        version,
        dim: u32_at(file, 16),
        metric,
        dtype,
        rescore: file[22] != 0,
        oversample: file[23].max(1),
        shards: u32_at(file, 24),
        connectivity: u32_at(file, 28),
        ef_construction: u32_at(file, 32),
        ef_search: u32_at(file, 36),
        count: u64_at(file, 40),
        payload_len: u64_at(file, 48),
        payload_crc: u32_at(file, 56),
    })
}

/// Checks the whole file (length, checksum, shard table bounds) and returns its sections.
pub fn decode(file: &[u8], path: &Path) -> Result<(Header, Vec<ShardSection>)> {
    let header = read_header(file, path)?;
    let corrupt = |m: String| Error::corrupt(path, m);
    let Some(expected) = header.payload_len.checked_add(HEADER_LEN as u64) else {
        return Err(corrupt(format!(
            "implausible payload length {}",
            header.payload_len
        )));
    };
    if (file.len() as u64) < expected {
        return Err(corrupt(format!(
            "truncated: {} bytes, the header says {expected}",
            file.len()
        )));
    }
    if (file.len() as u64) > expected {
        return Err(corrupt(format!(
            "{} trailing bytes after the {expected} the header describes",
            file.len() as u64 - expected
        )));
    }
    if crc32fast::hash(&file[HEADER_LEN..]) != header.payload_crc {
        return Err(corrupt("checksum mismatch: the file is damaged".into()));
    }
    let shards = header.shards as usize;
    if shards == 0 || HEADER_LEN + shards * 32 > file.len() || header.dim == 0 {
        return Err(corrupt(format!(
            "implausible header: {shards} shards, dim {}",
            header.dim
        )));
    }
    let mut sections = Vec::with_capacity(shards);
    for i in 0..shards {
        let at = HEADER_LEN + i * 32;
        let v: Vec<usize> = (0..4).map(|j| u64_at(file, at + j * 8) as usize).collect();
        for (off, len) in [(v[0], v[1]), (v[2], v[3])] {
            if off.checked_add(len).is_none_or(|end| end > file.len()) {
                return Err(corrupt(format!(
                    "shard {i}'s section lies outside the file"
                )));
            }
            // usearch views vectors in place: a section starts on a 64-byte boundary, past
            // the header and the shard table (as `encode` writes it).
            if len > 0 && (off % ALIGN != 0 || off < HEADER_LEN + shards * 32) {
                return Err(corrupt(format!(
                    "shard {i}'s section starts at {off}, not an aligned offset after the shard table"
                )));
            }
        }
        sections.push(ShardSection {
            hnsw: (v[0], v[1]),
            rescore: (v[2], v[3]),
        });
    }
    Ok((header, sections))
}

/// Checks a shard's usearch blob before usearch reads it. usearch checks its own framing
/// (sizes, the entry node) but trusts the graph: a neighbour slot past the last node, or a
/// node whose level disagrees with the level table, is an out-of-bounds read at search time.
/// The file's checksums catch damage after writing; this catches a file written wrong (or
/// damaged before its checksum was taken), so that any such file is refused, never run.
///
/// The layout (usearch 2.26, `index_dense_gt<u64, u32>`, 32-bit matrix dimensions):
/// ```text
/// rows u32, cols u32, rows * cols bytes of vectors
/// 64-byte head: "usearch", version u16 x 3, metric u8, scalar u8, key u8, slot u8,
///               present u64, deleted u64, dimensions u64, multi u8
/// graph header: size, connectivity, connectivity_base, max_level, entry_slot (u64 each)
/// levels i16[size]; then per node: key u64, level i16, and for each level 0..=level a
/// neighbour count u32 and (connectivity_base at 0, connectivity above) u32 slots
/// ```
pub fn check_hnsw(blob: &[u8], config: &Config) -> std::result::Result<(), String> {
    let u16_at = |at: usize| u16::from_le_bytes([blob[at], blob[at + 1]]);
    let need = |end: usize, what: &str| {
        if end > blob.len() {
            Err(format!("usearch data ends inside its {what}"))
        } else {
            Ok(())
        }
    };
    if blob.is_empty() {
        return Err("no usearch data".into());
    }
    need(8, "matrix dimensions")?;
    let (rows, cols) = (u32_at(blob, 0) as usize, u32_at(blob, 4) as usize);
    let scalar = match config.dtype {
        Dtype::F32 => 4,
        Dtype::F16 => 2,
        Dtype::I8 => 1,
    };
    if cols != config.dim * scalar {
        return Err(format!(
            "usearch rows are {cols} bytes; dim {} of {} needs {}",
            config.dim,
            config.dtype.name(),
            config.dim * scalar
        ));
    }
    let head = rows
        .checked_mul(cols)
        .and_then(|v| v.checked_add(8))
        .ok_or("usearch matrix size overflows")?;
    need(head + 64 + 40, "header")?;
    let h = &blob[head..head + 64];
    let (metric, scalar_kind) = (h[13], h[14]);
    let want_metric = match config.metric {
        Metric::Cos => b'c',
        Metric::Ip => b'i',
        Metric::L2 => b'e',
    };
    let want_scalar = match config.dtype {
        Dtype::F32 => 11,
        Dtype::F16 => 12,
        Dtype::I8 => 23,
    };
    let dims = u64_at(h, 33);
    if &h[..7] != b"usearch"
        || metric != want_metric
        || scalar_kind != want_scalar
        || (h[15], h[16]) != (14, 15) // u64 keys, u32 slots
        || dims != config.dim as u64
        || h[41] != 0
    {
        return Err(format!(
            "usearch head disagrees with the header (metric {metric}, scalar {scalar_kind},              dimensions {dims}, multi {})",
            h[41]
        ));
    }
    let g = head + 64;
    let size = u64_at(blob, g);
    let (m, m0) = (u64_at(blob, g + 8), u64_at(blob, g + 16));
    let (max_level, entry) = (u64_at(blob, g + 24), u64_at(blob, g + 32));
    if size != rows as u64 {
        return Err(format!("usearch holds {size} nodes and {rows} vectors"));
    }
    if size == 0 {
        return if blob.len() == g + 40 {
            Ok(())
        } else {
            Err("trailing bytes after an empty usearch graph".into())
        };
    }
    if !(2..=1 << 16).contains(&m) || !(m..=1 << 17).contains(&m0) || max_level > i16::MAX as u64 {
        return Err(format!(
            "implausible usearch graph: connectivity {m}/{m0}, max level {max_level}"
        ));
    }
    if entry >= size {
        return Err(format!("usearch entry node {entry} of {size}"));
    }
    let (size, m, m0) = (size as usize, m as usize, m0 as usize);
    let levels_at = g + 40;
    let mut at = levels_at
        .checked_add(size * 2)
        .ok_or("usearch level table overflows")?;
    need(at, "level table")?;
    if (u16_at(levels_at + 2 * entry as usize) as i16) < max_level as i16 {
        return Err("usearch entry node is below the top level".into());
    }
    for i in 0..size {
        let level = u16_at(levels_at + 2 * i) as i16;
        if level < 0 || level as u64 > max_level {
            return Err(format!("usearch node {i} has level {level} of {max_level}"));
        }
        need(at + 10, "nodes")?;
        if u16_at(at + 8) as i16 != level {
            return Err(format!(
                "usearch node {i}'s level disagrees with the level table"
            ));
        }
        at += 10;
        for l in 0..=level as usize {
            let cap = if l == 0 { m0 } else { m };
            need(at + 4 + 4 * cap, "nodes")?;
            let count = u32_at(blob, at) as usize;
            if count > cap {
                return Err(format!(
                    "usearch node {i} has {count} neighbours, room for {cap}"
                ));
            }
            for j in 0..count {
                // A link at level l leads to a node that has level l: the walk reads that
                // node's list for l next.
                let slot = u32_at(blob, at + 4 + 4 * j) as usize;
                if slot >= size || (u16_at(levels_at + 2 * slot) as i16) < l as i16 {
                    return Err(format!(
                        "usearch node {i} links to slot {slot} at level {l}"
                    ));
                }
            }
            at += 4 + 4 * cap;
        }
    }
    if at != blob.len() {
        return Err(format!("{} bytes after the usearch graph", blob.len() - at));
    }
    Ok(())
}

/// Rescore section: count u64, keys u64[count], then f16 rows (count * dim).
/// Serialises a shard's re-scoring copies: the count, the keys ascending, then each key's
/// f16 row in the same order (so a reader finds a row by binary search, in place).
pub fn encode_rescore(mut rows: Vec<(u64, &[f16])>, dim: usize) -> Vec<u8> {
    rows.sort_unstable_by_key(|r| r.0);
    let mut out = Vec::with_capacity(8 + rows.len() * (8 + dim * 2));
    out.extend_from_slice(&(rows.len() as u64).to_le_bytes());
    for (k, _) in &rows {
        out.extend_from_slice(&k.to_le_bytes());
    }
    for (_, row) in &rows {
        for x in *row {
            out.extend_from_slice(&x.to_bits().to_le_bytes());
        }
    }
    out
}

/// Checks a re-scoring section's length against its count and returns `(count, offset of
/// the first key, offset of the first row)`, offsets relative to the section.
pub fn rescore_layout(bytes: &[u8], dim: usize, path: &Path) -> Result<(usize, usize, usize)> {
    let corrupt = || Error::corrupt(path, "re-scoring section has the wrong length");
    if bytes.len() < 8 {
        return Err(corrupt());
    }
    let n = u64_at(bytes, 0) as usize;
    let need = n
        .checked_mul(8 + dim * 2)
        .and_then(|x| x.checked_add(8))
        .ok_or_else(corrupt)?;
    if bytes.len() != need {
        return Err(corrupt());
    }
    Ok((n, 8, 8 + n * 8))
}

/// Reads a re-scoring section into memory: key to row index, and the rows.
pub fn decode_rescore(
    bytes: &[u8],
    dim: usize,
    path: &Path,
) -> Result<(HashMap<u64, usize>, Vec<f16>)> {
    let (n, keys, rows) = rescore_layout(bytes, dim, path)?;
    let row_of = (0..n).map(|i| (u64_at(bytes, keys + i * 8), i)).collect();
    let data = bytes[rows..]
        .chunks_exact(2)
        .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
        .collect();
    Ok((row_of, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Index;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    /// Saved files to damage: f32 over 2 shards with removals, i8 with re-scoring copies, f16
    /// l2, and an empty index.
    fn valid_files() -> &'static [Vec<u8>] {
        static FILES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        FILES.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let mut out = vec![];
            for (i, (dtype, metric, shards, rescore, n)) in [
                (Dtype::F32, Metric::Cos, 2, false, 40u64),
                (Dtype::I8, Metric::Ip, 1, true, 25),
                (Dtype::F16, Metric::L2, 3, false, 30),
                (Dtype::F32, Metric::Cos, 1, false, 0),
            ]
            .into_iter()
            .enumerate()
            {
                let mut c = Config::new(4);
                (c.dtype, c.metric, c.shards, c.rescore, c.threads) =
                    (dtype, metric, shards, rescore, 1);
                c.connectivity = 4;
                let idx = Index::new(c).unwrap();
                let keys: Vec<u64> = (0..n).collect();
                let data: Vec<f32> = (0..n * 4).map(|x| ((x * 7 % 11) as f32) - 5.0).collect();
                idx.add(&keys, &data).unwrap();
                if n > 10 {
                    idx.remove(&[1, 3, 5], false).unwrap();
                }
                let path = dir.path().join(format!("{i}.tsidx"));
                idx.save(&path).unwrap();
                out.push(std::fs::read(&path).unwrap());
            }
            out
        })
    }

    /// Opens `bytes` every way there is: header alone, whole-file decode, load and view (a
    /// search on whatever opens). Panics (the test fails) on a panic; returns the results.
    fn open_every_way(bytes: &[u8]) -> Vec<Result<()>> {
        let path = Path::new("mem");
        let mut out = vec![
            read_header(bytes, path).map(|_| ()),
            decode(bytes, path).map(|_| ()),
        ];
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.tsidx");
        std::fs::write(&file, bytes).unwrap();
        for opened in [Index::load(&file, Some(1)), Index::view(&file, Some(1))] {
            out.push(opened.and_then(|idx| {
                let q = vec![0.5; idx.dim()];
                idx.search(&q, 5, None).map(|_| ())
            }));
        }
        out
    }

    fn all_corrupt(results: &[Result<()>]) -> bool {
        results
            .iter()
            .all(|r| matches!(r, Err(Error::CorruptIndex { .. })))
    }

    /// Recomputes both checksums, so that damage reaches the parsing behind them.
    fn reseal(b: &mut [u8]) {
        let payload_crc = crc32fast::hash(&b[HEADER_LEN..]);
        b[56..60].copy_from_slice(&payload_crc.to_le_bytes());
        let header_crc = crc32fast::hash(&b[..60]);
        b[60..64].copy_from_slice(&header_crc.to_le_bytes());
    }

    #[test]
    fn the_valid_files_open() {
        for f in valid_files() {
            assert!(open_every_way(f).iter().all(|r| r.is_ok()));
        }
    }

    /// What SIGSEGV'd before `check_hnsw`: a neighbour slot past the last node, behind
    /// checksums recomputed to match.
    #[test]
    fn a_link_past_the_last_node_is_refused() {
        let mut b = valid_files()[0].clone();
        let (header, sections) = decode(&b, Path::new("mem")).unwrap();
        let (off, _) = sections[0].hnsw;
        let (rows, cols) = (u32_at(&b, off) as usize, u32_at(&b, off + 4) as usize);
        let g = off + 8 + rows * cols + 64;
        let node0 = g + 40 + rows * 2;
        assert!(
            u32_at(&b, node0 + 10) > 0,
            "node 0 has neighbours at level 0"
        );
        b[node0 + 14..node0 + 18].copy_from_slice(&(rows as u32 + 5).to_le_bytes());
        reseal(&mut b);
        assert_eq!(header.dim, 4);
        let got = open_every_way(&b);
        for r in &got[2..] {
            let Err(Error::CorruptIndex { reason, .. }) = r else {
                panic!("{got:?}")
            };
            assert!(reason.contains("links to slot"), "{reason}");
        }
    }

    proptest! {
        #![proptest_config(crate::test_config(128))]

        #[test]
        fn arbitrary_bytes_are_refused(mut bytes in prop::collection::vec(any::<u8>(), 0..400),
                                       magic in any::<bool>()) {
            if magic && bytes.len() >= 8 {
                bytes[..8].copy_from_slice(MAGIC);
            }
            let got = open_every_way(&bytes);
            prop_assert!(all_corrupt(&got), "{:?}", got);
        }

        #[test]
        fn truncations_are_refused(file in 0usize..4, cut in any::<prop::sample::Index>()) {
            let f = &valid_files()[file];
            let bytes = &f[..cut.index(f.len())];
            let mut got = open_every_way(bytes);
            if bytes.len() >= HEADER_LEN {
                prop_assert!(got.remove(0).is_ok()); // read_header reads the header alone
            }
            prop_assert!(all_corrupt(&got), "cut at {}: {:?}", bytes.len(), got);
        }

        /// A flipped bit anywhere, the reserved header bytes included, is reported.
        #[test]
        fn bit_flips_are_refused(file in 0usize..4,
                                 flips in prop::collection::vec(any::<prop::sample::Index>(), 1..4),
                                 bits in prop::collection::vec(0u8..8, 3)) {
            let mut b = valid_files()[file].clone();
            let at: Vec<usize> = flips.iter().map(|i| i.index(b.len())).collect();
            for (i, &at) in at.iter().enumerate() {
                b[at] ^= 1 << bits[i % bits.len()];
            }
            if b != valid_files()[file] {
                let mut got = open_every_way(&b);
                if b[..HEADER_LEN] == valid_files()[file][..HEADER_LEN] {
                    prop_assert!(got.remove(0).is_ok()); // read_header reads the header alone
                }
                prop_assert!(all_corrupt(&got), "flips at {:?}: {:?}", at, got);
            }
        }

        /// Header fields set to anything, checksums recomputed: an error or a working index,
        /// never a panic, an abort or a huge allocation.
        #[test]
        fn resealed_header_fields_never_panic(file in 0usize..4,
                                              field in prop::sample::select(
                                                  vec![16usize, 20, 21, 22, 23, 24, 28, 32, 36, 40, 48]),
                                              value in prop_oneof![
                                                  Just(0u64), Just(1), Just(2), Just(3), Just(255),
                                                  Just(65_537), Just(u32::MAX as u64), Just(u64::MAX),
                                                  any::<u64>()]) {
            let mut b = valid_files()[file].clone();
            match field {
                20..=23 => b[field] = value as u8,
                40 | 48 => b[field..field + 8].copy_from_slice(&value.to_le_bytes()),
                _ => b[field..field + 4].copy_from_slice(&(value as u32).to_le_bytes()),
            }
            reseal(&mut b);
            let got = open_every_way(&b);
            prop_assert!(got.iter().all(|r| matches!(r, Ok(()) | Err(Error::CorruptIndex { .. }))),
                         "{:?}", got);
        }

        /// usearch's own serialised graph damaged behind intact checksums (a byte, or a u32
        /// such as a neighbour slot, a count or a dimension): refused by `check_hnsw` or
        /// usearch, or a working index; never an out-of-bounds read (SIGSEGV before).
        #[test]
        fn resealed_usearch_blobs_never_crash(file in 0usize..3, at in any::<prop::sample::Index>(),
                                              value in any::<u32>(), wide in any::<bool>()) {
            let mut b = valid_files()[file].clone();
            let (_, sections) = decode(&b, Path::new("mem")).unwrap();
            let (off, len) = sections[0].hnsw;
            let width = if wide { 4 } else { 1 };
            let at = off + at.index(len - width + 1);
            b[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
            reseal(&mut b);
            let got = open_every_way(&b);
            prop_assert!(got.iter().all(|r| matches!(r, Ok(()) | Err(Error::CorruptIndex { .. }))),
                         "{:?}", got);
        }

        /// The shard table and the re-scoring sections damaged behind intact checksums.
        #[test]
        fn resealed_tables_never_panic(file in 0usize..3,
                                       at in any::<prop::sample::Index>(),
                                       value in prop_oneof![Just(0u64), Just(1), Just(64),
                                                            Just(u64::MAX), any::<u64>()],
                                       rescore in any::<bool>()) {
            let mut b = valid_files()[file].clone();
            let (header, sections) = decode(&b, Path::new("mem")).unwrap();
            let at = if rescore && header.rescore {
                // Inside the first shard's re-scoring section: its count or its keys.
                let (off, len) = sections[0].rescore;
                off + at.index(len.min(64) - 7)
            } else {
                HEADER_LEN + at.index(header.shards as usize * 32 - 7)
            };
            b[at..at + 8].copy_from_slice(&value.to_le_bytes());
            reseal(&mut b);
            let got = open_every_way(&b);
            prop_assert!(got.iter().all(|r| matches!(r, Ok(()) | Err(Error::CorruptIndex { .. }))),
                         "{:?}", got);
        }
    }
}
