//! Distance kernels installed into usearch in place of its built-in ones for f32 and f16
//! storage.
//!
//! Why: a profile of usearch's search on this machine put ~80% of the time in NumKong's
//! `angular_f32` kernel, which widens f32 to f64 (8 lanes per AVX-512 instruction instead of
//! 16) and keeps three running sums (a·b, |a|², |b|²) for every distance. hnswlib, 2x faster
//! at equal recall, normalises vectors once and then does a plain f32 dot product. We do the
//! same: for `cos`, vectors are L2-normalised on the way in (add and query), so the distance
//! is `1 - a·b` with one f32 accumulator; `ip` and `l2` keep their definitions. The
//! distances returned are the same quantities usearch defines (1 - cosine, 1 - dot, squared
//! L2), so nothing above this module changes meaning.
//!
//! Kernels are chosen once per index by runtime CPU detection (AVX-512F, else AVX2+FMA+F16C,
//! else portable scalar code), so one wheel runs everywhere.

use half::f16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Scalar,
}

impl Isa {
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Scalar => "scalar",
        }
    }
}

/// Which quantity a kernel computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `1 - a·b`: cosine on normalised vectors, and the `ip` metric.
    OneMinusDot,
    /// `sum (a - b)^2`.
    L2sq,
}

// ---- scalar reference (also the fallback) ---------------------------------------------

pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums: lets the compiler vectorise, and matches the SIMD summation order
    // closely enough that tests can compare at 1e-5.
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

pub fn l2sq_scalar(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

// ---- x86-64 SIMD --------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX-512F; `a` and `b` must point to `n` readable f32 values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_f32_avx512(a: *const f32, b: *const f32, n: usize) -> f32 {
        let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut i = 0;
        while i + 32 <= n {
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(b.add(i)), s0);
            s1 = _mm512_fmadd_ps(
                _mm512_loadu_ps(a.add(i + 16)),
                _mm512_loadu_ps(b.add(i + 16)),
                s1,
            );
            i += 32;
        }
        while i + 16 <= n {
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(b.add(i)), s0);
            i += 16;
        }
        if i < n {
            let m: __mmask16 = ((1u32 << (n - i)) - 1) as u16;
            s1 = _mm512_fmadd_ps(
                _mm512_maskz_loadu_ps(m, a.add(i)),
                _mm512_maskz_loadu_ps(m, b.add(i)),
                s1,
            );
        }
        _mm512_reduce_add_ps(_mm512_add_ps(s0, s1))
    }

    /// # Safety
    /// As [`dot_f32_avx512`].
    #[target_feature(enable = "avx512f")]
    pub unsafe fn l2sq_f32_avx512(a: *const f32, b: *const f32, n: usize) -> f32 {
        let mut s = _mm512_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            let d = _mm512_sub_ps(_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(b.add(i)));
            s = _mm512_fmadd_ps(d, d, s);
            i += 16;
        }
        if i < n {
            let m: __mmask16 = ((1u32 << (n - i)) - 1) as u16;
            let d = _mm512_sub_ps(
                _mm512_maskz_loadu_ps(m, a.add(i)),
                _mm512_maskz_loadu_ps(m, b.add(i)),
            );
            s = _mm512_fmadd_ps(d, d, s);
        }
        _mm512_reduce_add_ps(s)
    }

    /// f16 rows (IEEE half bits): widened to f32 in registers, accumulated in f32.
    ///
    /// # Safety
    /// AVX-512F; `n` readable u16 values behind each pointer.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_f16_avx512(a: *const u16, b: *const u16, n: usize) -> f32 {
        let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut i = 0;
        while i + 32 <= n {
            let x0 = _mm512_cvtph_ps(_mm256_loadu_si256(a.add(i) as *const __m256i));
            let y0 = _mm512_cvtph_ps(_mm256_loadu_si256(b.add(i) as *const __m256i));
            let x1 = _mm512_cvtph_ps(_mm256_loadu_si256(a.add(i + 16) as *const __m256i));
            let y1 = _mm512_cvtph_ps(_mm256_loadu_si256(b.add(i + 16) as *const __m256i));
            s0 = _mm512_fmadd_ps(x0, y0, s0);
            s1 = _mm512_fmadd_ps(x1, y1, s1);
            i += 32;
        }
        let mut s = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
        while i < n {
            s += super::f16::from_bits(*a.add(i)).to_f32()
                * super::f16::from_bits(*b.add(i)).to_f32();
            i += 1;
        }
        s
    }

    /// # Safety
    /// As [`dot_f16_avx512`].
    #[target_feature(enable = "avx512f")]
    pub unsafe fn l2sq_f16_avx512(a: *const u16, b: *const u16, n: usize) -> f32 {
        let mut s0 = _mm512_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            let x = _mm512_cvtph_ps(_mm256_loadu_si256(a.add(i) as *const __m256i));
            let y = _mm512_cvtph_ps(_mm256_loadu_si256(b.add(i) as *const __m256i));
            let d = _mm512_sub_ps(x, y);
            s0 = _mm512_fmadd_ps(d, d, s0);
            i += 16;
        }
        let mut s = _mm512_reduce_add_ps(s0);
        while i < n {
            let d = super::f16::from_bits(*a.add(i)).to_f32()
                - super::f16::from_bits(*b.add(i)).to_f32();
            s += d * d;
            i += 1;
        }
        s
    }

    #[inline(always)]
    unsafe fn hsum256(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// AVX2 + FMA; `n` readable f32 values behind each pointer.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32_avx2(a: *const f32, b: *const f32, n: usize) -> f32 {
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), s0);
            s1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.add(i + 8)),
                _mm256_loadu_ps(b.add(i + 8)),
                s1,
            );
            i += 16;
        }
        let mut s = hsum256(_mm256_add_ps(s0, s1));
        while i < n {
            s += *a.add(i) * *b.add(i);
            i += 1;
        }
        s
    }

    /// # Safety
    /// As [`dot_f32_avx2`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn l2sq_f32_avx2(a: *const f32, b: *const f32, n: usize) -> f32 {
        let mut s0 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let d = _mm256_sub_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)));
            s0 = _mm256_fmadd_ps(d, d, s0);
            i += 8;
        }
        let mut s = hsum256(s0);
        while i < n {
            let d = *a.add(i) - *b.add(i);
            s += d * d;
            i += 1;
        }
        s
    }

    /// # Safety
    /// AVX2 + FMA + F16C; `n` readable u16 values behind each pointer.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16_avx2(a: *const u16, b: *const u16, n: usize) -> f32 {
        let mut s0 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let x = _mm256_cvtph_ps(_mm_loadu_si128(a.add(i) as *const __m128i));
            let y = _mm256_cvtph_ps(_mm_loadu_si128(b.add(i) as *const __m128i));
            s0 = _mm256_fmadd_ps(x, y, s0);
            i += 8;
        }
        let mut s = hsum256(s0);
        while i < n {
            s += super::f16::from_bits(*a.add(i)).to_f32()
                * super::f16::from_bits(*b.add(i)).to_f32();
            i += 1;
        }
        s
    }

    /// # Safety
    /// As [`dot_f16_avx2`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn l2sq_f16_avx2(a: *const u16, b: *const u16, n: usize) -> f32 {
        let mut s0 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let x = _mm256_cvtph_ps(_mm_loadu_si128(a.add(i) as *const __m128i));
            let y = _mm256_cvtph_ps(_mm_loadu_si128(b.add(i) as *const __m128i));
            let d = _mm256_sub_ps(x, y);
            s0 = _mm256_fmadd_ps(d, d, s0);
            i += 8;
        }
        let mut s = hsum256(s0);
        while i < n {
            let d = super::f16::from_bits(*a.add(i)).to_f32()
                - super::f16::from_bits(*b.add(i)).to_f32();
            s += d * d;
            i += 1;
        }
        s
    }
}

/// Type-erased f32 kernel: `(a, b, n) -> distance`.
pub type F32Fn = fn(*const f32, *const f32, usize) -> f32;
/// Type-erased f16 kernel over raw half bits.
pub type F16Fn = fn(*const u16, *const u16, usize) -> f32;

macro_rules! finish {
    ($kind:expr, $v:expr) => {
        match $kind {
            Kind::OneMinusDot => 1.0 - $v,
            Kind::L2sq => $v,
        }
    };
}

/// The f32 distance for `kind` on this CPU. Each arm is its own function so the SIMD body
/// inlines into it (one indirect call per distance, from usearch's trampoline).
pub fn f32_kernel(kind: Kind, isa: Isa) -> F32Fn {
    match (kind, isa) {
        #[cfg(target_arch = "x86_64")]
        (Kind::OneMinusDot, Isa::Avx512) => {
            |a, b, n| finish!(Kind::OneMinusDot, unsafe { x86::dot_f32_avx512(a, b, n) })
        }
        #[cfg(target_arch = "x86_64")]
        (Kind::L2sq, Isa::Avx512) => |a, b, n| unsafe { x86::l2sq_f32_avx512(a, b, n) },
        #[cfg(target_arch = "x86_64")]
        (Kind::OneMinusDot, Isa::Avx2) => {
            |a, b, n| finish!(Kind::OneMinusDot, unsafe { x86::dot_f32_avx2(a, b, n) })
        }
        #[cfg(target_arch = "x86_64")]
        (Kind::L2sq, Isa::Avx2) => |a, b, n| unsafe { x86::l2sq_f32_avx2(a, b, n) },
        (Kind::OneMinusDot, _) => |a, b, n| {
            let (a, b) = unsafe {
                (
                    std::slice::from_raw_parts(a, n),
                    std::slice::from_raw_parts(b, n),
                )
            };
            1.0 - dot_scalar(a, b)
        },
        (Kind::L2sq, _) => |a, b, n| {
            let (a, b) = unsafe {
                (
                    std::slice::from_raw_parts(a, n),
                    std::slice::from_raw_parts(b, n),
                )
            };
            l2sq_scalar(a, b)
        },
    }
}

/// The f16 distance for `kind` on this CPU, over raw half bits.
pub fn f16_kernel(kind: Kind, isa: Isa) -> F16Fn {
    fn widen(p: *const u16, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| f16::from_bits(unsafe { *p.add(i) }).to_f32())
            .collect()
    }
    match (kind, isa) {
        #[cfg(target_arch = "x86_64")]
        (Kind::OneMinusDot, Isa::Avx512) => {
            |a, b, n| finish!(Kind::OneMinusDot, unsafe { x86::dot_f16_avx512(a, b, n) })
        }
        #[cfg(target_arch = "x86_64")]
        (Kind::L2sq, Isa::Avx512) => |a, b, n| unsafe { x86::l2sq_f16_avx512(a, b, n) },
        #[cfg(target_arch = "x86_64")]
        (Kind::OneMinusDot, Isa::Avx2) => {
            |a, b, n| finish!(Kind::OneMinusDot, unsafe { x86::dot_f16_avx2(a, b, n) })
        }
        #[cfg(target_arch = "x86_64")]
        (Kind::L2sq, Isa::Avx2) => |a, b, n| unsafe { x86::l2sq_f16_avx2(a, b, n) },
        (Kind::OneMinusDot, _) => |a, b, n| 1.0 - dot_scalar(&widen(a, n), &widen(b, n)),
        (Kind::L2sq, _) => |a, b, n| l2sq_scalar(&widen(a, n), &widen(b, n)),
    }
}

/// L2-normalises each `dim`-row of `data` in place. Rows must have non-zero norm (checked
/// by the caller, which can name the offending row).
pub fn normalize_rows(data: &mut [f32], dim: usize) {
    for row in data.chunks_mut(dim) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            let inv = 1.0 / norm;
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2654435761) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn every_kernel_matches_the_f64_reference() {
        // Every ISA this CPU can run: AVX-512 implies the AVX2 set on all CPUs that have it.
        let isas: Vec<Isa> = match Isa::detect() {
            Isa::Avx512 => vec![Isa::Avx512, Isa::Avx2, Isa::Scalar],
            Isa::Avx2 => vec![Isa::Avx2, Isa::Scalar],
            Isa::Scalar => vec![Isa::Scalar],
        };
        for n in [1usize, 7, 8, 15, 16, 17, 31, 33, 64, 100, 384, 385] {
            let (a, b) = (data(n, 1), data(n, 2));
            let dot: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let l2: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
                .sum();
            let (ha, hb): (Vec<u16>, Vec<u16>) = (
                a.iter().map(|x| f16::from_f32(*x).to_bits()).collect(),
                b.iter().map(|x| f16::from_f32(*x).to_bits()).collect(),
            );
            let hdot: f64 = ha
                .iter()
                .zip(&hb)
                .map(|(x, y)| f16::from_bits(*x).to_f64() * f16::from_bits(*y).to_f64())
                .sum();
            for &isa in &isas {
                let d = f32_kernel(Kind::OneMinusDot, isa)(a.as_ptr(), b.as_ptr(), n);
                assert!((d as f64 - (1.0 - dot)).abs() < 1e-5, "{isa:?} n={n} dot");
                let d = f32_kernel(Kind::L2sq, isa)(a.as_ptr(), b.as_ptr(), n);
                assert!(
                    (d as f64 - l2).abs() < 1e-4 * l2.max(1.0),
                    "{isa:?} n={n} l2"
                );
                let d = f16_kernel(Kind::OneMinusDot, isa)(ha.as_ptr(), hb.as_ptr(), n);
                assert!(
                    (d as f64 - (1.0 - hdot)).abs() < 1e-4,
                    "{isa:?} n={n} f16 dot"
                );
            }
        }
    }
}
