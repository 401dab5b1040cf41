//! The on-disk index file: a fixed 128-byte header that can be checked on its own, a shard
//! table, then each shard's usearch blob and (with re-scoring) its f16 copies.
//!
//! ```text
//! 0   magic "TWSTGIDX"        8   format version u32     12  header length u32 (128)
//! 16  dim u32                 20  metric u8, dtype u8, rescore u8, oversample u8
//! 24  shards u32              28  connectivity u32   32 ef_construction u32   36 ef_search u32
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
}

fn align(x: usize) -> usize {
    x.div_ceil(ALIGN) * ALIGN
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
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
    h[36..40].copy_from_slice(&(config.ef_search as u32).to_le_bytes());
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
    let expected = HEADER_LEN as u64 + header.payload_len;
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
        }
        sections.push(ShardSection {
            hnsw: (v[0], v[1]),
            rescore: (v[2], v[3]),
        });
    }
    Ok((header, sections))
}

/// Rescore section: count u64, keys u64[count], then f16 rows (count * dim).
pub fn encode_rescore(row_of: &HashMap<u64, usize>, data: &[f16], dim: usize) -> Vec<u8> {
    let mut keys: Vec<(u64, usize)> = row_of.iter().map(|(&k, &r)| (k, r)).collect();
    keys.sort_unstable();
    let mut out = Vec::with_capacity(8 + keys.len() * (8 + dim * 2));
    out.extend_from_slice(&(keys.len() as u64).to_le_bytes());
    for (k, _) in &keys {
        out.extend_from_slice(&k.to_le_bytes());
    }
    for (_, r) in &keys {
        for x in &data[r * dim..(r + 1) * dim] {
            out.extend_from_slice(&x.to_bits().to_le_bytes());
        }
    }
    out
}

pub fn decode_rescore(
    bytes: &[u8],
    dim: usize,
    path: &Path,
) -> Result<(HashMap<u64, usize>, Vec<f16>)> {
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
    let row_of = (0..n).map(|i| (u64_at(bytes, 8 + i * 8), i)).collect();
    let base = 8 + n * 8;
    let data = bytes[base..]
        .chunks_exact(2)
        .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
        .collect();
    Ok((row_of, data))
}
