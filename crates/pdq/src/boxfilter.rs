//! The running-sum box filters behind PDQ's Jarosz passes, vectorised without changing a single
//! float operation.
//!
//! The reference filters one line at a time: a running sum that adds the pixel entering the
//! window, subtracts the one leaving it and divides by the window's size. Those sums are serial
//! along a line, and float addition is not associative, so every line must see exactly the
//! reference's sequence of additions. What can run in parallel is the lines themselves:
//!
//! * along columns, consecutive pixels of a row belong to different columns, so one row-wide
//!   vector of sums slides down the image;
//! * along rows, sixteen rows at a time are transposed into sixteen-lane vectors (one lane per
//!   row) in a small scratch strip, slid along, and transposed back.
//!
//! Each lane performs the reference's operations in the reference's order, so the result is
//! identical, bit for bit, to [`crate::box_1d`] applied line by line. On x86-64 with AVX2
//! the same code is compiled a second time for that instruction set and picked at run time.
//!
//! The hasher runs the first three passes as one sweep down the image ([`blur`]): strips of
//! rows go through the row pass, the column pass follows as far as the rows done so far allow,
//! and its output goes through the second row pass strip by strip. Only the rows the column
//! window still covers are kept, so the working set stays in cache instead of three full-size
//! float images going through memory.

use crate::DOWN;

/// Rows filtered together along rows: two AVX2 registers per step, so two independent
/// chains of additions hide each other's latency.
const LANES: usize = 16;
type Lanes = [f32; LANES];

/// Columns the column pass computes together in [`blur`]: eight AVX2 registers of sums,
/// eight independent chains of additions. Wider blocks go through the strip's list of
/// operations half as often as 32 columns did (about 2% faster at 1080p); 128 is slower.
const BLOCK: usize = 64;

/// Defines `pub fn NAME(args)` calling `IMPL::<Avx2>(args)` from a function compiled for AVX2
/// and FMA when the CPU has them, else `IMPL::<Portable>(args)`. `IMPL` is `#[inline(always)]`, so each
/// wrapper gets its own copy compiled for its instruction set.
macro_rules! multiversion {
    ($($(#[$doc:meta])* fn $name:ident => $imp:ident($($arg:ident: $ty:ty),*);)*) => {$(
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $imp::<Avx2>($($arg),*)
                }
                if has_avx2() {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just now).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $imp::<Portable>($($arg),*)
        }
    )*};
}

multiversion! {
    /// Box filter along every row of `input` (`rows x cols`, row-major) into `output`.
    fn rows => rows_impl(input: &[f32], output: &mut [f32], rows: usize, cols: usize, window: usize);
    /// Box filter along every row, kept only at the columns `at`: `output` is `rows x 64`.
    fn rows_sampled => rows_sampled_impl(
        input: &[f32], output: &mut [f32], rows: usize, cols: usize, window: usize, at: &[u32; DOWN]
    );
    /// Luma from 8-bit samples (`stride` bytes per row; `limited`: expand 16..235 to full
    /// range) and the box filter along rows, in one pass.
    #[cfg(test)]
    fn rows_u8 => rows_u8_impl(
        input: &[u8], stride: usize, limited: bool, output: &mut [f32], rows: usize, cols: usize,
        window: usize
    );
    /// Luma of packed RGB pixels, as [`crate::luma`] defines it, into `out`.
    fn luma_rgb => luma_rgb_impl(rgb: &[u8], out: &mut [f32]);
    /// Box filter along every column of `input` (`rows x cols`, row-major) into `output`.
    fn cols => cols_impl(input: &[f32], output: &mut [f32], rows: usize, cols: usize, window: usize);
    /// The first three passes in one streaming sweep (see [`blur_impl`]): luma of `src`
    /// (`rows x cols` pixels) filtered along rows, along columns and along rows again (windows
    /// `(along rows, along columns)`), kept only at the columns `at`: `kept` is `rows x 64`.
    fn blur => blur_impl(
        src: Source<'_>, rows: usize, cols: usize, windows: (usize, usize),
        at: &[u32; DOWN], kept: &mut [f32], scratch: &mut Scratch
    );
}

/// Whether the CPU has AVX2 and FMA (every x86-64 CPU with AVX2 so far also has FMA).
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static AVX2: OnceLock<bool> = OnceLock::new();
    *AVX2.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    })
}

/// The instruction set the filters run with on this CPU ("avx2" includes FMA).
pub fn instruction_set() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        return "avx2";
    }
    "portable"
}

/// A window size, as a float and as its reciprocal (for division without dividing, see
/// `avx2::divide`).
#[derive(Clone, Copy, Debug, Default)]
struct Divisor {
    size: f32,
    recip: f32,
}

impl Divisor {
    #[inline(always)]
    fn new(size: u32) -> Self {
        let size = size as f32;
        Self {
            size,
            recip: 1.0 / size,
        }
    }
}

/// What differs per instruction set: moving `LANES` rows in and out of a strip (one
/// `LANES`-wide vector per column), and dividing the sums by the window size.
trait Isa {
    /// `sum / d.size` in every lane, correctly rounded as `/` is.
    fn divide(sum: &Lanes, d: Divisor) -> Lanes;
    /// `out[i] = sum[i] / d.size`, correctly rounded as `/` is.
    fn divide_row(sum: &[f32], d: Divisor, out: &mut [f32]);
    /// Copies the first `strip.len()` columns of `LANES` rows of `input`, `stride` apart,
    /// into `strip`.
    fn load(input: &[f32], stride: usize, strip: &mut [Lanes]);
    /// The inverse of `load`.
    fn store(strip: &[Lanes], output: &mut [f32], stride: usize);
    /// `load` from 8-bit luma, converted as [`crate::luma`] does.
    fn load_u8(input: &[u8], stride: usize, limited: bool, strip: &mut [Lanes]);
    /// Eight consecutive outputs in the slide phase of a row pass: for `k` in `0..8`, add
    /// column `enter + k`, subtract column `leave + k` (ring indices, taken `& mask`) and
    /// divide by `d`; row `l`'s eight outputs go to `out[l * stride..][..8]`. The same
    /// operations in the same order as [`slide_strip`]'s slide phase, unrolled.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn slide8(
        columns: &[Lanes],
        mask: usize,
        (enter, leave): (usize, usize),
        sum: &mut Lanes,
        d: Divisor,
        out: &mut [f32],
        stride: usize,
    ) {
        for k in 0..8 {
            add(sum, &columns[(enter + k) & mask]);
            sub(sum, &columns[(leave + k) & mask]);
            let v = Self::divide(sum, d);
            for (l, &v) in v.iter().enumerate() {
                out[l * stride + k] = v;
            }
        }
    }

    /// The column pass over one block of `LANES` rows and `sums.len()` columns (at most
    /// `BLOCK`),
    /// transposed into `out` (one vector per column): `ops` in order, `Emit` giving the next
    /// row of the block. `ring` holds the first pass's rows, each `Add` and `Sub` the offset
    /// of one, and `sums` are the running sums of those columns.
    fn column_block(ops: &[ColumnOp], ring: &[f32], sums: &mut [f32], out: &mut [Lanes]) {
        let n = sums.len();
        let mut l = 0;
        for op in ops {
            match *op {
                ColumnOp::Add(at) => add_row(sums, &ring[at..at + n]),
                ColumnOp::Sub(at) => sub_row(sums, &ring[at..at + n]),
                ColumnOp::Emit(d) => {
                    for (o, &s) in out.iter_mut().zip(&*sums) {
                        o[l] = s / d.size;
                    }
                    l += 1;
                }
            }
        }
    }
}

/// 8-bit luma sample as f32: through the limited-to-full-range table, or as is.
#[inline(always)]
fn luma8(v: u8, limited: bool) -> f32 {
    if limited {
        crate::limited_to_full_lut()[v as usize]
    } else {
        f32::from(v)
    }
}

struct Portable;

impl Isa for Portable {
    #[inline(always)]
    fn divide(sum: &Lanes, d: Divisor) -> Lanes {
        std::array::from_fn(|l| sum[l] / d.size)
    }

    #[inline(always)]
    fn divide_row(sum: &[f32], d: Divisor, out: &mut [f32]) {
        for (o, &s) in out.iter_mut().zip(sum) {
            *o = s / d.size;
        }
    }

    #[inline(always)]
    fn load_u8(input: &[u8], stride: usize, limited: bool, strip: &mut [Lanes]) {
        let cols = strip.len();
        let lines: [&[u8]; LANES] = std::array::from_fn(|l| &input[l * stride..][..cols]);
        for (j, out) in strip.iter_mut().enumerate() {
            *out = std::array::from_fn(|l| luma8(lines[l][j], limited));
        }
    }

    #[inline(always)]
    fn load(input: &[f32], stride: usize, strip: &mut [Lanes]) {
        let cols = strip.len();
        let lines: [&[f32]; LANES] = std::array::from_fn(|l| &input[l * stride..][..cols]);
        for (j, out) in strip.iter_mut().enumerate() {
            *out = std::array::from_fn(|l| lines[l][j]);
        }
    }

    #[inline(always)]
    fn store(strip: &[Lanes], output: &mut [f32], stride: usize) {
        let out = &mut output[..(LANES - 1) * stride + strip.len()];
        for (j, v) in strip.iter().enumerate() {
            for l in 0..LANES {
                out[l * stride + j] = v[l];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Isa for Avx2 {
    #[inline(always)]
    fn divide(sum: &Lanes, d: Divisor) -> Lanes {
        // SAFETY: only reached from functions compiled for AVX2 and FMA, called after the CPU
        // check.
        unsafe { avx2::divide_lanes(sum, d) }
    }

    #[inline(always)]
    fn divide_row(sum: &[f32], d: Divisor, out: &mut [f32]) {
        // SAFETY: as for `divide`.
        unsafe { avx2::divide_row(sum, d, out) }
    }

    #[inline(always)]
    fn load_u8(input: &[u8], stride: usize, limited: bool, strip: &mut [Lanes]) {
        assert!(input.len() >= (LANES - 1) * stride + strip.len());
        // SAFETY: as for `load`.
        unsafe { avx2::load_u8(input, stride, limited, strip) }
    }

    #[inline(always)]
    fn load(input: &[f32], stride: usize, strip: &mut [Lanes]) {
        assert!(input.len() >= (LANES - 1) * stride + strip.len());
        // SAFETY: only reached from functions compiled for AVX2 and FMA, called after the CPU
        // check; the bounds are asserted above.
        unsafe { avx2::load(input, stride, strip) }
    }

    #[inline(always)]
    fn store(strip: &[Lanes], output: &mut [f32], stride: usize) {
        assert!(output.len() >= (LANES - 1) * stride + strip.len());
        // SAFETY: as for `load`.
        unsafe { avx2::store(strip, output, stride) }
    }

    #[inline(always)]
    fn slide8(
        columns: &[Lanes],
        mask: usize,
        (enter, leave): (usize, usize),
        sum: &mut Lanes,
        d: Divisor,
        out: &mut [f32],
        stride: usize,
    ) {
        assert!(mask < columns.len() && out.len() >= (LANES - 1) * stride + 8);
        if d.size > avx2::RECIPROCAL_MAX {
            return Portable::slide8(columns, mask, (enter, leave), sum, d, out, stride);
        }
        // SAFETY: as for `load`; the ring indices are masked within `columns`, and `out`'s
        // bounds are asserted above.
        unsafe { avx2::slide8(columns, mask, (enter, leave), sum, d, out, stride) }
    }

    #[inline(always)]
    fn column_block(ops: &[ColumnOp], ring: &[f32], sums: &mut [f32], out: &mut [Lanes]) {
        if sums.len() != BLOCK || out.len() != BLOCK {
            return Portable::column_block(ops, ring, sums, out);
        }
        // SAFETY: as for `load`; `avx2::column_block` checks the ring offsets.
        unsafe { avx2::column_block(ops, ring, sums, out) }
    }
}

#[cfg(target_arch = "x86_64")]
pub use avx2::transpose8;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{ColumnOp, Divisor, Lanes, LANES};
    use std::arch::x86_64::*;

    /// The largest window size `divide` multiplies by the reciprocal for; larger ones (images
    /// over 32768 pixels on a side) are divided.
    pub const RECIPROCAL_MAX: f32 = 256.0;

    /// `x / d.size`, correctly rounded, with two FMAs and a product instead of a division
    /// (which has a fifth of their throughput): `q = x * recip` is within an ulp of the
    /// quotient, the FMA `x - q * size` is then exactly its remainder, and `q + remainder *
    /// recip` rounds to the correctly rounded quotient (Markstein's correction). Scaling `x`
    /// by a power of two scales every step exactly, so checking every significand, `x` in
    /// [1, 2), for every size up to `RECIPROCAL_MAX` checks every normal `x`; a test does so.
    /// Zero gives +0, like +0 / size; the sums never are -0 (they start at +0, and in
    /// round-to-nearest a sum or difference is -0 only when an operand already is).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn divide(x: __m256, size: __m256, recip: __m256) -> __m256 {
        let q = _mm256_mul_ps(x, recip);
        let remainder = _mm256_fnmadd_ps(q, size, x);
        _mm256_fmadd_ps(remainder, recip, q)
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn divide_lanes(sum: &Lanes, d: Divisor) -> Lanes {
        let mut out = [0f32; LANES];
        for half in 0..LANES / 8 {
            let x = _mm256_loadu_ps(sum.as_ptr().add(half * 8));
            _mm256_storeu_ps(out.as_mut_ptr().add(half * 8), divide_by(x, d));
        }
        out
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn divide_row(sum: &[f32], d: Divisor, out: &mut [f32]) {
        let n = sum.len().min(out.len());
        let (size, recip) = (_mm256_set1_ps(d.size), _mm256_set1_ps(d.recip));
        let (src, dst) = (sum.as_ptr(), out.as_mut_ptr());
        let mut i = 0;
        if d.size <= RECIPROCAL_MAX {
            while i + 8 <= n {
                _mm256_storeu_ps(dst.add(i), divide(_mm256_loadu_ps(src.add(i)), size, recip));
                i += 8;
            }
        }
        for j in i..n {
            *dst.add(j) = *src.add(j) / d.size;
        }
    }

    /// 8x8 transpose in registers: vector `j` of the result holds element `j` of every input
    /// vector. The classifier's AVX2 pre-processing uses it too.
    ///
    /// # Safety
    /// The CPU supports AVX2 (calling it from code compiled for AVX2 needs no `unsafe`).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let u = transpose8_in_lanes(r);
        [
            _mm256_permute2f128_ps::<0x20>(u[0], u[4]),
            _mm256_permute2f128_ps::<0x20>(u[1], u[5]),
            _mm256_permute2f128_ps::<0x20>(u[2], u[6]),
            _mm256_permute2f128_ps::<0x20>(u[3], u[7]),
            _mm256_permute2f128_ps::<0x31>(u[0], u[4]),
            _mm256_permute2f128_ps::<0x31>(u[1], u[5]),
            _mm256_permute2f128_ps::<0x31>(u[2], u[6]),
            _mm256_permute2f128_ps::<0x31>(u[3], u[7]),
        ]
    }

    /// The in-lane steps of [`transpose8`]: 4x4 transposes within each 128-bit half, so that
    /// output `j` of the full transpose is the low halves of `u[j]` and `u[j + 4]`, and output
    /// `j + 4` their high halves, for `j` in `0..4`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn transpose8_in_lanes(r: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        [
            _mm256_shuffle_ps::<0x44>(t0, t2),
            _mm256_shuffle_ps::<0xee>(t0, t2),
            _mm256_shuffle_ps::<0x44>(t1, t3),
            _mm256_shuffle_ps::<0xee>(t1, t3),
            _mm256_shuffle_ps::<0x44>(t4, t6),
            _mm256_shuffle_ps::<0xee>(t4, t6),
            _mm256_shuffle_ps::<0x44>(t5, t7),
            _mm256_shuffle_ps::<0xee>(t5, t7),
        ]
    }

    /// Transposes the 8x8 block `r` and stores output vector `j` at `dst(j)`: the cross-lane
    /// step of [`transpose8`] becomes 128-bit stores (a plain store and an extracting store,
    /// which need no shuffle unit), so the block costs 16 shuffles instead of 24.
    ///
    /// # Safety
    /// The CPU supports AVX2; each `dst(j)` is valid for 8 floats.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn transpose8_store(r: [__m256; 8], dst: impl Fn(usize) -> *mut f32) {
        let u = transpose8_in_lanes(r);
        for j in 0..4 {
            let (lo, hi) = (dst(j), dst(j + 4));
            _mm_storeu_ps(lo, _mm256_castps256_ps128(u[j]));
            _mm_storeu_ps(lo.add(4), _mm256_castps256_ps128(u[j + 4]));
            _mm_storeu_ps(hi, _mm256_extractf128_ps::<1>(u[j]));
            _mm_storeu_ps(hi.add(4), _mm256_extractf128_ps::<1>(u[j + 4]));
        }
    }

    /// # Safety
    /// The CPU supports AVX2; `input` holds `LANES` rows, `stride` apart, of at least
    /// `strip.len()` values.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn load(input: &[f32], stride: usize, strip: &mut [Lanes]) {
        let (base, cols) = (input.as_ptr(), strip.len());
        let dst = strip.as_mut_ptr().cast::<f32>();
        let mut c = 0;
        while c + 8 <= cols {
            for half in 0..LANES / 8 {
                let rows: [__m256; 8] =
                    std::array::from_fn(|l| _mm256_loadu_ps(base.add((half * 8 + l) * stride + c)));
                for (j, v) in transpose8(rows).into_iter().enumerate() {
                    _mm256_storeu_ps(dst.add((c + j) * LANES + half * 8), v);
                }
            }
            c += 8;
        }
        for j in c..cols {
            for l in 0..LANES {
                *dst.add(j * LANES + l) = *base.add(l * stride + j);
            }
        }
    }

    /// The limited-to-full-range expansion of `bytes` (8 codes) as floats: the table's
    /// `clamp(round((v - 16) * 255 / 219), 0, 255)`, in four operations.
    ///
    /// * A saturating byte subtraction gives `max(v - 16, 0)`: codes below 16 give 0, as the
    ///   table's clamp does (their products are negative and would round to 0 or below).
    /// * The FMA `x * (255 / 219) + 1.5 * 2^23` rounds the exact product to a whole number: at
    ///   that magnitude the float spacing is 1, so the sum is rounded to the nearest integer
    ///   (the product is below 2^22, so the sum stays in that binade). The result is a whole
    ///   number and no code comes within 0.002 of a half before rounding, so the multiplier's
    ///   error (far below that) and rounding half to even instead of away from zero change
    ///   nothing.
    /// * `min` with `1.5 * 2^23 + 255` is the clamp at 255, and subtracting `1.5 * 2^23`
    ///   leaves the whole number, exactly.
    ///
    /// A test checks all 256 codes against the table.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn expand(bytes: __m128i) -> __m256 {
        const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
        let x = _mm_subs_epu8(bytes, _mm_set1_epi8(16));
        let x = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(x));
        let t = _mm256_fmadd_ps(x, _mm256_set1_ps(255.0 / 219.0), _mm256_set1_ps(MAGIC));
        let t = _mm256_min_ps(t, _mm256_set1_ps(MAGIC + 255.0));
        _mm256_sub_ps(t, _mm256_set1_ps(MAGIC))
    }

    /// `expand` of the 8 codes at `p`, for the test.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA; `p` is valid for 8 bytes.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn expand8(p: &[u8; 8]) -> [f32; 8] {
        let mut out = [0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), expand(_mm_loadl_epi64(p.as_ptr().cast())));
        out
    }

    /// # Safety
    /// As for [`load`].
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn load_u8(input: &[u8], stride: usize, limited: bool, strip: &mut [Lanes]) {
        let (base, cols) = (input.as_ptr(), strip.len());
        let dst = strip.as_mut_ptr().cast::<f32>();
        let mut c = 0;
        while c + 8 <= cols {
            for half in 0..LANES / 8 {
                let rows: [__m256; 8] = std::array::from_fn(|l| {
                    let bytes = _mm_loadl_epi64(base.add((half * 8 + l) * stride + c).cast());
                    if limited {
                        expand(bytes)
                    } else {
                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes))
                    }
                });
                for (j, v) in transpose8(rows).into_iter().enumerate() {
                    _mm256_storeu_ps(dst.add((c + j) * LANES + half * 8), v);
                }
            }
            c += 8;
        }
        for j in c..cols {
            for l in 0..LANES {
                *dst.add(j * LANES + l) = super::luma8(*base.add(l * stride + j), limited);
            }
        }
    }

    /// # Safety
    /// As for [`load`], with `output` in place of `input`.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn store(strip: &[Lanes], output: &mut [f32], stride: usize) {
        let (base, cols) = (output.as_mut_ptr(), strip.len());
        let src = strip.as_ptr().cast::<f32>();
        let mut c = 0;
        while c + 8 <= cols {
            for half in 0..LANES / 8 {
                let columns: [__m256; 8] =
                    std::array::from_fn(|j| _mm256_loadu_ps(src.add((c + j) * LANES + half * 8)));
                transpose8_store(columns, |l| base.add((half * 8 + l) * stride + c));
            }
            c += 8;
        }
        for j in c..cols {
            for l in 0..LANES {
                *base.add(l * stride + j) = *src.add(j * LANES + l);
            }
        }
    }

    /// `Isa::slide8`: the sums in two registers, the eight outputs transposed in registers
    /// straight into the rows of `out`, one 256-bit store per row (about 1.5% faster at 1080p
    /// than [`transpose8_store`]'s 128-bit stores here).
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA; `mask < columns.len()`, `d.size <= RECIPROCAL_MAX`, and
    /// `out` holds `(LANES - 1) * stride + 8` values.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn slide8(
        columns: &[Lanes],
        mask: usize,
        (enter, leave): (usize, usize),
        sum: &mut Lanes,
        d: Divisor,
        out: &mut [f32],
        stride: usize,
    ) {
        let (size, recip) = (_mm256_set1_ps(d.size), _mm256_set1_ps(d.recip));
        let col = |c: usize| columns.as_ptr().add(c & mask).cast::<f32>();
        let dst = out.as_mut_ptr();
        // one half of the lanes at a time, to stay within the 16 registers; the halves'
        // chains are independent, so they still overlap
        for half in 0..LANES / 8 {
            let mut s = _mm256_loadu_ps(sum.as_ptr().add(8 * half));
            let q: [__m256; 8] = std::array::from_fn(|k| {
                let v = _mm256_add_ps(s, _mm256_loadu_ps(col(enter + k).add(8 * half)));
                s = _mm256_sub_ps(v, _mm256_loadu_ps(col(leave + k).add(8 * half)));
                divide(s, size, recip)
            });
            _mm256_storeu_ps(sum.as_mut_ptr().add(8 * half), s);
            for (l, v) in transpose8(q).into_iter().enumerate() {
                _mm256_storeu_ps(dst.add((half * 8 + l) * stride), v);
            }
        }
    }

    /// `divide` by one window size, or a true division for sizes beyond `RECIPROCAL_MAX`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn divide_by(x: __m256, d: Divisor) -> __m256 {
        let size = _mm256_set1_ps(d.size);
        if d.size <= RECIPROCAL_MAX {
            divide(x, size, _mm256_set1_ps(d.recip))
        } else {
            _mm256_div_ps(x, size)
        }
    }

    /// `Isa::column_block` for `super::BLOCK` columns: their sums in registers (independent
    /// chains of additions), the block's rows transposed in registers.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA; `sums` and `out` hold `BLOCK` columns, `ops` emit
    /// `LANES` rows.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn column_block(
        ops: &[ColumnOp],
        ring: &[f32],
        sums: &mut [f32],
        out: &mut [Lanes],
    ) {
        const N: usize = super::BLOCK / 8;
        assert!(sums.len() >= 8 * N && out.len() >= 8 * N);
        let row = |at: usize| -> [__m256; N] {
            let row = &ring[at..at + 8 * N];
            std::array::from_fn(|i| _mm256_loadu_ps(row.as_ptr().add(8 * i)))
        };
        let mut sum: [__m256; N] =
            std::array::from_fn(|i| _mm256_loadu_ps(sums.as_ptr().add(8 * i)));
        let mut rows = [[_mm256_setzero_ps(); N]; LANES];
        let mut l = 0;
        for op in ops {
            match *op {
                ColumnOp::Add(at) => {
                    for (s, v) in sum.iter_mut().zip(row(at)) {
                        *s = _mm256_add_ps(*s, v);
                    }
                }
                ColumnOp::Sub(at) => {
                    for (s, v) in sum.iter_mut().zip(row(at)) {
                        *s = _mm256_sub_ps(*s, v);
                    }
                }
                ColumnOp::Emit(d) => {
                    for (r, &s) in rows[l].iter_mut().zip(&sum) {
                        *r = divide_by(s, d);
                    }
                    l += 1;
                }
            }
        }
        for (i, s) in sum.into_iter().enumerate() {
            _mm256_storeu_ps(sums.as_mut_ptr().add(8 * i), s);
        }
        let dst = out.as_mut_ptr().cast::<f32>();
        #[allow(clippy::needless_range_loop)] // register i of every row
        for i in 0..N {
            for half in 0..LANES / 8 {
                let block: [__m256; 8] = std::array::from_fn(|l| rows[half * 8 + l][i]);
                transpose8_store(block, |j| dst.add((8 * i + j) * LANES + half * 8));
            }
        }
    }
}

/// Slides the window along a strip with the reference's four phases (grow the window, slide
/// it, shrink it), calling `emit(o, sums, size)` when output `o` is due.
#[inline(always)]
fn slide_strip(strip: &[Lanes], window: usize, mut emit: impl FnMut(usize, &Lanes, Divisor)) {
    let half = (window + 2) / 2;
    let (mut li, mut ri, mut oi) = (0usize, 0usize, 0usize);
    let mut size = 0u32;
    let mut sum = [0f32; LANES];
    for _ in 0..half - 1 {
        add(&mut sum, &strip[ri]);
        size += 1;
        ri += 1;
    }
    for _ in 0..window - half + 1 {
        add(&mut sum, &strip[ri]);
        size += 1;
        emit(oi, &sum, Divisor::new(size));
        ri += 1;
        oi += 1;
    }
    let full = Divisor::new(size);
    for _ in 0..strip.len().saturating_sub(window) {
        add(&mut sum, &strip[ri]);
        sub(&mut sum, &strip[li]);
        emit(oi, &sum, full);
        li += 1;
        ri += 1;
        oi += 1;
    }
    for _ in 0..half - 1 {
        sub(&mut sum, &strip[li]);
        size -= 1;
        emit(oi, &sum, Divisor::new(size));
        li += 1;
        oi += 1;
    }
}

#[inline(always)]
fn add(sum: &mut Lanes, v: &Lanes) {
    for l in 0..LANES {
        sum[l] += v[l];
    }
}

#[inline(always)]
fn sub(sum: &mut Lanes, v: &Lanes) {
    for l in 0..LANES {
        sum[l] -= v[l];
    }
}

#[inline(always)]
fn rows_impl<T: Isa>(input: &[f32], output: &mut [f32], rows: usize, cols: usize, window: usize) {
    let full = rows / LANES * LANES;
    let mut strip = vec![[0f32; LANES]; cols];
    let mut filtered = vec![[0f32; LANES]; cols];
    for r0 in (0..full).step_by(LANES) {
        T::load(&input[r0 * cols..], cols, &mut strip);
        slide_strip(
            &strip,
            window,
            #[inline(always)]
            |o, sum, d| filtered[o] = T::divide(sum, d),
        );
        T::store(&filtered, &mut output[r0 * cols..], cols);
    }
    for r in full..rows {
        crate::box_1d(&input[r * cols..], &mut output[r * cols..], cols, 1, window);
    }
}

/// The row pass's sums at the sampled columns of a strip, and the sizes to divide them by: the
/// division waits until the end, since dividing inside the slide lets the compiler hoist the
/// (side-effect free) division above the test and run it at every column.
struct Samples {
    sums: [Lanes; DOWN],
    divisors: [Divisor; DOWN],
    /// The next sample.
    k: usize,
}

impl Default for Samples {
    fn default() -> Self {
        Self::new()
    }
}

impl Samples {
    fn new() -> Self {
        Self {
            sums: [[0.0; LANES]; DOWN],
            divisors: [Divisor::default(); DOWN],
            k: 0,
        }
    }

    /// The next sampled column (`usize::MAX` once all are kept).
    #[inline(always)]
    fn next(&self, at: &[u32; DOWN]) -> usize {
        at.get(self.k).map_or(usize::MAX, |&c| c as usize)
    }

    /// Keeps the sums of output column `o` if it is sampled.
    #[inline(always)]
    fn record(&mut self, at: &[u32; DOWN], o: usize, sum: &Lanes, d: Divisor) {
        // positions are ascending; small images sample one column several times
        while self.k < DOWN && at[self.k] as usize == o {
            (self.sums[self.k], self.divisors[self.k]) = (*sum, d);
            self.k += 1;
        }
    }

    /// The kept values, `LANES x 64`, into `output`.
    #[inline(always)]
    fn finish<T: Isa>(&mut self, output: &mut [f32]) {
        for (v, &d) in self.sums.iter_mut().zip(&self.divisors) {
            *v = T::divide(v, d);
        }
        for (l, out) in output.chunks_exact_mut(DOWN).enumerate() {
            for (o, v) in out.iter_mut().zip(&self.sums) {
                *o = v[l];
            }
        }
    }
}

/// The row pass over one strip, kept only at the columns `at`, into `output` (`LANES x 64`).
#[inline(always)]
fn sampled_strip<T: Isa>(strip: &[Lanes], window: usize, at: &[u32; DOWN], output: &mut [f32]) {
    let mut samples = Samples::new();
    slide_strip(
        strip,
        window,
        #[inline(always)]
        |o, sum, d| samples.record(at, o, sum, d),
    );
    samples.finish::<T>(output);
}

#[inline(always)]
#[cfg(test)]
fn rows_u8_impl<T: Isa>(
    input: &[u8],
    stride: usize,
    limited: bool,
    output: &mut [f32],
    rows: usize,
    cols: usize,
    window: usize,
) {
    let full = rows / LANES * LANES;
    let mut strip = vec![[0f32; LANES]; cols];
    let mut filtered = vec![[0f32; LANES]; cols];
    for r0 in (0..full).step_by(LANES) {
        T::load_u8(&input[r0 * stride..], stride, limited, &mut strip);
        slide_strip(
            &strip,
            window,
            #[inline(always)]
            |o, sum, d| filtered[o] = T::divide(sum, d),
        );
        T::store(&filtered, &mut output[r0 * cols..], cols);
    }
    let mut line = vec![0f32; cols];
    for r in full..rows {
        for (d, &v) in line.iter_mut().zip(&input[r * stride..r * stride + cols]) {
            *d = luma8(v, limited);
        }
        crate::box_1d(&line, &mut output[r * cols..], cols, 1, window);
    }
}

// `T` (the instruction set) is unused: the portable code vectorises as it is
#[allow(clippy::extra_unused_type_parameters)]
#[inline(always)]
fn luma_rgb_impl<T>(rgb: &[u8], out: &mut [f32]) {
    for (o, p) in out.iter_mut().zip(rgb.chunks_exact(3)) {
        *o = crate::rgb_luma(p[0], p[1], p[2]);
    }
}

#[inline(always)]
fn rows_sampled_impl<T: Isa>(
    input: &[f32],
    output: &mut [f32],
    rows: usize,
    cols: usize,
    window: usize,
    at: &[u32; DOWN],
) {
    let full = rows / LANES * LANES;
    let mut strip = vec![[0f32; LANES]; cols];
    for r0 in (0..full).step_by(LANES) {
        T::load(&input[r0 * cols..], cols, &mut strip);
        sampled_strip::<T>(
            &strip,
            window,
            at,
            &mut output[r0 * DOWN..(r0 + LANES) * DOWN],
        );
    }
    let mut line = vec![0f32; cols];
    for r in full..rows {
        crate::box_1d(&input[r * cols..], &mut line, cols, 1, window);
        for (o, &c) in output[r * DOWN..(r + 1) * DOWN].iter_mut().zip(at) {
            *o = line[c as usize];
        }
    }
}

/// The box filter down all columns at once: one row-wide vector of running sums.
#[inline(always)]
fn cols_impl<T: Isa>(input: &[f32], output: &mut [f32], rows: usize, cols: usize, window: usize) {
    let row = |r: usize| &input[r * cols..(r + 1) * cols];
    let mut sums = vec![0f32; cols];
    let mut slide = Slide::new(rows, window);
    while let Some(step) = slide.step(rows) {
        for r in step.adds {
            add_row(&mut sums, row(r));
        }
        if let Some(r) = step.sub {
            sub_row(&mut sums, row(r));
        }
        T::divide_row(
            &sums,
            step.d,
            &mut output[step.o * cols..(step.o + 1) * cols],
        );
    }
}

/// The box filter down the 64 columns of `input` (`rows x 64`), kept only at the rows `at`:
/// the running sums cover every row, the division happens at the sampled rows only.
pub fn cols_sampled(
    input: &[f32],
    rows: usize,
    window: usize,
    at: &[u32; DOWN],
) -> [[f32; DOWN]; DOWN] {
    let row = |r: usize| &input[r * DOWN..(r + 1) * DOWN];
    let mut sums = [0f32; DOWN];
    let mut out = [[0f32; DOWN]; DOWN];
    let mut k = 0;
    let mut slide = Slide::new(rows, window);
    while let Some(step) = slide.step(rows) {
        for r in step.adds {
            add_row(&mut sums, row(r));
        }
        if let Some(r) = step.sub {
            sub_row(&mut sums, row(r));
        }
        // positions are ascending; small images sample one row several times
        while k < DOWN && at[k] as usize == step.o {
            for (o, &s) in out[k].iter_mut().zip(&sums) {
                *o = s / step.d.size;
            }
            k += 1;
        }
    }
    out
}

#[inline(always)]
fn add_row(sums: &mut [f32], v: &[f32]) {
    for (s, &v) in sums.iter_mut().zip(v) {
        *s += v;
    }
}

#[inline(always)]
fn sub_row(sums: &mut [f32], v: &[f32]) {
    for (s, &v) in sums.iter_mut().zip(v) {
        *s -= v;
    }
}

/// One output of the running-sum filter along a line: add entries `adds` to the sum, in
/// order, then subtract entry `sub`; output `o` is the sum divided by `d`.
struct Step {
    o: usize,
    adds: std::ops::Range<usize>,
    sub: Option<usize>,
    d: Divisor,
}

/// The reference's four phases (grow the window, slide it, shrink it) cut into one [`Step`]
/// per output, so that a filter can run as far as the entries produced so far allow.
struct Slide {
    len: usize,
    window: usize,
    half: usize,
    /// The next output.
    next: usize,
    size: u32,
    d: Divisor,
}

impl Slide {
    fn new(len: usize, window: usize) -> Self {
        Self {
            len,
            window,
            half: (window + 2) / 2,
            next: 0,
            size: 0,
            d: Divisor::default(),
        }
    }

    /// Runs `run(o, enter, leave, d)` for the outputs from the next one on that are in the
    /// slide phase and read no entry at or beyond `avail`: each adds entry `enter`, subtracts
    /// entry `leave` and divides by `d`. The same steps as [`Slide::step`] gives, in a tight
    /// loop.
    #[inline(always)]
    fn slide(&mut self, avail: usize, mut run: impl FnMut(usize, usize, usize, Divisor)) {
        let (half, window) = (self.half, self.window);
        if self.next <= window - half {
            return;
        }
        // outputs up to len - half are in the slide phase; output o reads o + half - 1
        let end = (self.len + 1 - half).min((avail + 1).saturating_sub(half));
        for o in self.next..end {
            run(o, o + half - 1, o + half - 1 - window, self.d);
        }
        self.next = self.next.max(end);
    }

    /// The next `8 * n` outputs, for the largest `n > 0` such that they are all in the slide
    /// phase and read no entry at or beyond `avail`: the first output, the entries entering
    /// and leaving with it (output `o + k` adds `enter + k` and subtracts `leave + k`), the
    /// divisor, and `n`. The same steps as `8 * n` calls of [`Slide::step`]; handing out
    /// every available run of 8 at once keeps this test out of the unrolled loops.
    #[inline(always)]
    fn chunks8(&mut self, avail: usize) -> Option<(usize, usize, usize, Divisor, usize)> {
        let (o, half, window) = (self.next, self.half, self.window);
        let end = (self.len + 1 - half).min((avail + 1).saturating_sub(half));
        if o <= window - half || o + 8 > end {
            return None;
        }
        let n = (end - o) / 8;
        self.next += 8 * n;
        Some((o, o + half - 1, o + half - 1 - window, self.d, n))
    }

    /// The next output's step, if it reads no entry at or beyond `avail`.
    #[inline(always)]
    fn step(&mut self, avail: usize) -> Option<Step> {
        let (o, half, window) = (self.next, self.half, self.window);
        // entry o + half - 1 enters the window with output o
        let enter = o + half - 1;
        if o >= self.len || enter.min(self.len - 1) >= avail {
            return None;
        }
        self.next += 1;
        let (adds, sub) = if o <= window - half {
            // grow; the reference adds the first half - 1 entries before the first output
            let first = if o == 0 { 0 } else { enter };
            self.size += (enter + 1 - first) as u32;
            self.d = Divisor::new(self.size);
            (first..enter + 1, None)
        } else if enter < self.len {
            (enter..enter + 1, Some(enter - window))
        } else {
            self.size -= 1;
            self.d = Divisor::new(self.size);
            (0..0, Some(enter - window))
        };
        Some(Step {
            o,
            adds,
            sub,
            d: self.d,
        })
    }
}

/// One operation of the column pass on a block of columns (see [`Isa::column_block`]).
#[derive(Clone, Copy, Debug)]
enum ColumnOp {
    /// Add the ring row at this offset.
    Add(usize),
    /// Subtract the ring row at this offset.
    Sub(usize),
    /// The next output row: the sums divided.
    Emit(Divisor),
}

/// Where the pixels of [`blur`] come from.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// 8-bit luma, `stride` bytes per row; `limited`: expand 16..235 to full range.
    Luma8 {
        data: &'a [u8],
        stride: usize,
        limited: bool,
    },
    /// Packed RGB (`rows * cols * 3` bytes), luma as [`crate::luma`] computes it.
    Rgb(&'a [u8]),
}

impl Source<'_> {
    /// Prepares rows `r0..r0 + LANES` for `load_block`: RGB pixels' luma into `luma`.
    #[inline(always)]
    fn prepare<T>(&self, r0: usize, cols: usize, luma: &mut Vec<f32>) {
        if let Source::Rgb(rgb) = *self {
            luma.resize(LANES * cols, 0.0);
            luma_rgb_impl::<T>(&rgb[r0 * cols * 3..(r0 + LANES) * cols * 3], luma);
        }
    }

    /// Luma of rows `r0..r0 + LANES`, columns `c0..c0 + block.len()`, into `block`; the
    /// image is `cols` wide, and `luma` is what `prepare` left.
    #[inline(always)]
    fn load_block<T: Isa>(
        &self,
        r0: usize,
        c0: usize,
        cols: usize,
        luma: &[f32],
        block: &mut [Lanes],
    ) {
        match *self {
            Source::Luma8 {
                data,
                stride,
                limited,
            } => T::load_u8(&data[r0 * stride + c0..], stride, limited, block),
            Source::Rgb(_) => T::load(&luma[c0..], cols, block),
        }
    }

    /// Rows `r0..r0 + n` (`n < LANES`) followed by zeros up to `LANES` rows, copied into
    /// `pad`, as a source whose row 0 is row `r0`.
    fn padded<'p>(&self, r0: usize, n: usize, cols: usize, pad: &'p mut Vec<u8>) -> Source<'p> {
        pad.clear();
        match *self {
            Source::Luma8 {
                data,
                stride,
                limited,
            } => {
                for r in r0..r0 + n {
                    pad.extend_from_slice(&data[r * stride..r * stride + cols]);
                }
                pad.resize(LANES * cols, 0);
                Source::Luma8 {
                    data: pad,
                    stride: cols,
                    limited,
                }
            }
            Source::Rgb(rgb) => {
                pad.extend_from_slice(&rgb[r0 * cols * 3..(r0 + n) * cols * 3]);
                pad.resize(LANES * cols * 3, 0);
                Source::Rgb(pad)
            }
        }
    }
}

/// Working memory of [`blur`], kept from frame to frame.
#[derive(Default)]
pub struct Scratch {
    /// The last columns of a strip, as many as a row pass still reads.
    columns: Vec<Lanes>,
    /// The last rows of the first pass, as many as the column pass still reads.
    ring: Vec<f32>,
    /// The column pass's running sums.
    sums: Vec<f32>,
    /// The column pass's operations for the output rows not yet computed.
    ops: Vec<ColumnOp>,
    /// Luma of the strip of RGB pixels being filtered.
    luma: Vec<f32>,
    /// The second row pass's sums at the sampled columns.
    samples: Box<Samples>,
    /// The last `rows % LANES` rows of pixels, padded with zeros to `LANES` rows.
    pad: Vec<u8>,
}

/// The first three passes as one sweep down the image, so that no full-size intermediate image
/// is ever written, and no strip-wide one either:
///
/// * the first row pass loads `LANES` rows 8 columns at a time into a small ring of columns,
///   slides along them and transposes its output back 8 columns at a time, into a ring of
///   rows;
/// * the column pass is planned as a list of operations (rows to add and subtract, outputs)
///   as far as the rows done allow; every `LANES` output rows it runs block by block of 8
///   columns, the sums in a register, the block transposed in registers into a ring of
///   columns that the second row pass slides along, keeping the sampled columns.
///
/// Only the order in which lines are processed changes: each line still goes through the
/// reference's operations in the reference's order, so the values are those of the three
/// separate passes, bit for bit. The last `rows % LANES` rows go through the same vector
/// path, padded to `LANES` rows: each lane's values depend on its own line only, so the
/// padding changes nothing in the others (about 1% faster at 1080p than line by line).
#[inline(always)]
fn blur_impl<T: Isa>(
    src: Source<'_>,
    rows: usize,
    cols: usize,
    (win_rows, win_cols): (usize, usize),
    at: &[u32; DOWN],
    kept: &mut [f32],
    scratch: &mut Scratch,
) {
    let Scratch {
        columns,
        ring,
        sums,
        ops,
        luma,
        samples,
        pad,
    } = scratch;
    assert!(kept.len() >= rows * DOWN);
    // When columns c..c + BLOCK are loaded, a row pass still reads columns from c - win_rows
    // on; a power of two makes the ring index a mask, and keeps every block contiguous.
    columns.resize((win_rows + BLOCK).next_power_of_two(), [0.0; LANES]);
    // When rows r..r + LANES are written, the column pass has planned every output that needs
    // no later row; fewer than LANES of those wait to run, and they read nothing below
    // r - win_cols - (LANES - 1): win_cols + 2 * LANES rows suffice. A multiple of LANES keeps
    // each strip's rows contiguous.
    let cap = (win_cols + 2 * LANES).next_multiple_of(LANES);
    ring.resize(cap * cols, 0.0);
    sums.clear();
    sums.resize(cols, 0.0);
    ops.clear();
    let mut column = Slide::new(rows, win_cols);
    let (mut done, mut waiting) = (0, 0);
    let mut last = [0f32; LANES * DOWN];
    while done < rows {
        // the last rows % LANES rows go through the same path, padded with zeros to LANES
        // rows: lanes are independent, and the padding's output rows of the first pass land
        // in ring slots no output reads (the ring holds LANES rows beyond what is read)
        let (strip, r0) = if done + LANES <= rows {
            (src, done)
        } else {
            (src.padded(done, rows - done, cols, pad), 0)
        };
        strip.prepare::<T>(r0, cols, luma);
        row_pass_strip::<T>(
            &strip,
            luma,
            r0,
            cols,
            win_rows,
            columns,
            &mut ring[done % cap * cols..],
        );
        done = (done + LANES).min(rows);
        while let Some(step) = column.step(done) {
            ops.extend(step.adds.map(|r| ColumnOp::Add(r % cap * cols)));
            ops.extend(step.sub.map(|r| ColumnOp::Sub(r % cap * cols)));
            ops.push(ColumnOp::Emit(step.d));
            waiting += 1;
            if waiting < LANES && step.o + 1 < rows {
                continue;
            }
            // LANES output rows, or the last rows % LANES ones padded with repeats of the
            // last (one call site: the strip is inlined, and a second copy costs speed)
            let o0 = step.o + 1 - waiting;
            ops.extend((waiting..LANES).map(|_| ColumnOp::Emit(step.d)));
            let padded = waiting < LANES;
            let dst = if padded {
                &mut last[..]
            } else {
                &mut kept[o0 * DOWN..(o0 + LANES) * DOWN]
            };
            column_row_pass_strip::<T>(ops, ring, sums, win_rows, at, columns, samples, dst);
            if padded {
                kept[o0 * DOWN..rows * DOWN].copy_from_slice(&last[..waiting * DOWN]);
            }
            ops.clear();
            waiting = 0;
        }
    }
}

/// The first row pass over `LANES` rows from `r0`, into `out` (`LANES` rows, `cols` apart).
#[inline(always)]
fn row_pass_strip<T: Isa>(
    src: &Source<'_>,
    luma: &[f32],
    r0: usize,
    cols: usize,
    window: usize,
    columns: &mut [Lanes],
    out: &mut [f32],
) {
    let mask = columns.len() - 1;
    let mut slide = Slide::new(cols, window);
    let mut sum = [0f32; LANES];
    let mut pending = Pending::new();
    // BLOCK columns per load (the ring holds BLOCK columns beyond the window, see
    // `blur_impl`): fewer trips through the slide's phase tests than 8 at a time, about 5%
    // faster at 1080p
    for c0 in (0..cols).step_by(BLOCK) {
        let n = (cols - c0).min(BLOCK);
        src.load_block::<T>(r0, c0, cols, luma, &mut columns[c0 & mask..][..n]);
        loop {
            if let Some((o, enter, leave, d, chunks)) = slide.chunks8(c0 + n) {
                pending.flush::<T>(out, cols);
                for k in (0..8 * chunks).step_by(8) {
                    T::slide8(
                        columns,
                        mask,
                        (enter + k, leave + k),
                        &mut sum,
                        d,
                        &mut out[o + k..],
                        cols,
                    );
                }
                continue;
            }
            slide.slide(c0 + n, |o, enter, leave, d| {
                add(&mut sum, &columns[enter & mask]);
                sub(&mut sum, &columns[leave & mask]);
                pending.emit::<T>(o, &sum, d, out, cols);
            });
            let Some(step) = slide.step(c0 + n) else {
                break;
            };
            for c in step.adds {
                add(&mut sum, &columns[c & mask]);
            }
            if let Some(c) = step.sub {
                sub(&mut sum, &columns[c & mask]);
            }
            pending.emit::<T>(step.o, &sum, step.d, out, cols);
        }
    }
    pending.flush::<T>(out, cols);
}

/// Outputs of a row pass waiting to be transposed into its rows, up to 8 consecutive ones.
struct Pending {
    filtered: [Lanes; 8],
    /// The first waiting output.
    first: usize,
    n: usize,
}

impl Pending {
    fn new() -> Self {
        Self {
            filtered: [[0.0; LANES]; 8],
            first: 0,
            n: 0,
        }
    }

    /// Output `o` (the one after the last waiting, if any): `sum / d`; `out` has `LANES` rows
    /// `cols` apart.
    #[inline(always)]
    fn emit<T: Isa>(&mut self, o: usize, sum: &Lanes, d: Divisor, out: &mut [f32], cols: usize) {
        if self.n == 0 {
            self.first = o;
        }
        self.filtered[self.n] = T::divide(sum, d);
        self.n += 1;
        if self.n == 8 {
            self.flush::<T>(out, cols);
        }
    }

    /// Writes the waiting outputs.
    #[inline(always)]
    fn flush<T: Isa>(&mut self, out: &mut [f32], cols: usize) {
        if self.n > 0 {
            T::store(&self.filtered[..self.n], &mut out[self.first..], cols);
            self.n = 0;
        }
    }
}

/// The column pass's next `LANES` output rows (`ops`, on the first pass's rows in `ring`),
/// `BLOCK` columns at a time, each block followed by the second row pass; its values at the
/// sampled columns `at` into `kept` (`LANES x 64`).
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the sweep's state, borrowed piece by piece
fn column_row_pass_strip<T: Isa>(
    ops: &[ColumnOp],
    ring: &[f32],
    sums: &mut [f32],
    window: usize,
    at: &[u32; DOWN],
    columns: &mut [Lanes],
    samples: &mut Samples,
    kept: &mut [f32],
) {
    let (cols, mask) = (sums.len(), columns.len() - 1);
    let mut slide = Slide::new(cols, window);
    let mut sum = [0f32; LANES];
    // every column in `at` is recorded before `finish`: no need to clear the sums
    samples.k = 0;
    for c0 in (0..cols).step_by(BLOCK) {
        let n = (cols - c0).min(BLOCK);
        T::column_block(
            ops,
            &ring[c0..],
            &mut sums[c0..c0 + n],
            &mut columns[c0 & mask..][..n],
        );
        loop {
            // most runs of 8 outputs hold no sampled column: slide through them unrolled,
            // with no test per column
            if let Some((o, enter, leave, d, chunks)) = slide.chunks8(c0 + n) {
                for i in (0..8 * chunks).step_by(8) {
                    let (o, enter, leave) = (o + i, enter + i, leave + i);
                    if samples.next(at) >= o + 8 {
                        for k in 0..8 {
                            add(&mut sum, &columns[(enter + k) & mask]);
                            sub(&mut sum, &columns[(leave + k) & mask]);
                        }
                    } else {
                        for k in 0..8 {
                            add(&mut sum, &columns[(enter + k) & mask]);
                            sub(&mut sum, &columns[(leave + k) & mask]);
                            samples.record(at, o + k, &sum, d);
                        }
                    }
                }
                continue;
            }
            slide.slide(c0 + n, |o, enter, leave, d| {
                add(&mut sum, &columns[enter & mask]);
                sub(&mut sum, &columns[leave & mask]);
                samples.record(at, o, &sum, d);
            });
            let Some(step) = slide.step(c0 + n) else {
                break;
            };
            for c in step.adds {
                add(&mut sum, &columns[c & mask]);
            }
            if let Some(c) = step.sub {
                sub(&mut sum, &columns[c & mask]);
            }
            samples.record(at, step.o, &sum, step.d);
        }
    }
    samples.finish::<T>(kept);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{box_1d, sample_positions};

    /// Photo-like values with a fractional part, so float rounding is exercised.
    fn picture(rows: usize, cols: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).max(1);
        (0..rows * cols)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let (r, c) = (i / cols, i % cols);
                let base = ((r * 3 + c * 5) % 256) as f32 * 0.587;
                base + (state % 1000) as f32 / 7.0
            })
            .collect()
    }

    const SIZES: [(usize, usize); 8] = [
        (9, 7),
        (16, 64),
        (17, 333),
        (64, 64),
        (100, 1),
        (5, 1000),
        (72, 129),
        (40, 1923),
    ];

    #[test]
    fn rows_equal_the_line_by_line_reference() {
        for (rows, cols) in SIZES {
            for window in [1, 2, 3, 7, 8].into_iter().filter(|&w| w <= cols) {
                let input = picture(rows, cols, (rows * cols + window) as u32);
                let mut ours = vec![0f32; rows * cols];
                let mut reference = vec![0f32; rows * cols];
                super::rows(&input, &mut ours, rows, cols, window);
                for r in 0..rows {
                    box_1d(
                        &input[r * cols..],
                        &mut reference[r * cols..],
                        cols,
                        1,
                        window,
                    );
                }
                assert_eq!(
                    bits(&ours),
                    bits(&reference),
                    "{rows}x{cols} window {window}"
                );
            }
        }
    }

    #[test]
    fn columns_equal_the_line_by_line_reference() {
        for (rows, cols) in SIZES {
            for window in [1, 2, 3, 7, 8].into_iter().filter(|&w| w <= rows) {
                let input = picture(rows, cols, (rows + cols * window) as u32);
                let mut ours = vec![0f32; rows * cols];
                let mut reference = vec![0f32; rows * cols];
                super::cols(&input, &mut ours, rows, cols, window);
                for c in 0..cols {
                    box_1d(&input[c..], &mut reference[c..], rows, cols, window);
                }
                assert_eq!(
                    bits(&ours),
                    bits(&reference),
                    "{rows}x{cols} window {window}"
                );
            }
        }
    }

    #[test]
    fn sampled_rows_equal_the_full_pass_at_the_samples() {
        for (rows, cols) in SIZES {
            let window = (cols / 20).max(1);
            let at = sample_positions(cols);
            let input = picture(rows, cols, 7);
            let mut full = vec![0f32; rows * cols];
            super::rows(&input, &mut full, rows, cols, window);
            let mut kept = vec![0f32; rows * DOWN];
            super::rows_sampled(&input, &mut kept, rows, cols, window, &at);
            for r in 0..rows {
                for (k, &c) in at.iter().enumerate() {
                    assert_eq!(
                        kept[r * DOWN + k].to_bits(),
                        full[r * cols + c as usize].to_bits(),
                        "{rows}x{cols} row {r} sample {k}"
                    );
                }
            }
        }
    }

    #[test]
    fn luma_and_rows_in_one_pass_equal_the_two_passes() {
        // window 1 is the identity: every code of both ranges, 16 rows so the vector path runs
        let codes: Vec<u8> = (0..16 * 259).map(|i| (i % 259 % 256) as u8).collect();
        for limited in [false, true] {
            let mut out = vec![0f32; 16 * 259];
            super::rows_u8(&codes, 259, limited, &mut out, 16, 259, 1);
            for (&v, &o) in codes.iter().zip(&out) {
                assert_eq!(
                    o.to_bits(),
                    luma8(v, limited).to_bits(),
                    "code {v} limited {limited}"
                );
            }
        }
        for (rows, cols) in SIZES {
            let stride = cols + 3;
            let data: Vec<u8> = (0..rows * stride).map(|i| (i * 37 % 251) as u8).collect();
            let window = (cols / 30).max(1);
            for limited in [false, true] {
                let pixels = if limited {
                    crate::Pixels::VideoY {
                        data: &data,
                        stride,
                    }
                } else {
                    crate::Pixels::Gray {
                        data: &data,
                        stride,
                    }
                };
                let mut luma = Vec::new();
                crate::luma(pixels, cols, rows, &mut luma);
                let mut two = vec![0f32; rows * cols];
                super::rows(&luma, &mut two, rows, cols, window);
                let mut one = vec![0f32; rows * cols];
                super::rows_u8(&data, stride, limited, &mut one, rows, cols, window);
                assert_eq!(bits(&one), bits(&two), "{rows}x{cols} limited {limited}");
            }
        }
    }

    /// Every window size the AVX2 code divides by multiplying, against `/`: exhaustively over
    /// one binade (which covers every normal float, see `avx2::divide`), and on whole
    /// numbers, zero, negative and random values as a cross-check of that argument.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn division_by_the_reciprocal_is_exact() {
        if !has_avx2() {
            eprintln!("no AVX2 and FMA here: nothing to check");
            return;
        }
        let mut xs: Vec<f32> = (0..1u32 << 23)
            .map(|m| f32::from_bits(0x3f80_0000 | m))
            .collect();
        xs.extend((0..=255 * 256).map(|v| v as f32));
        let mut state = 0x9e37_79b9u32;
        xs.extend((0..1 << 20).map(|i| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            // exponents 2^-64 ..= 2^63, either sign
            let bits = (state & 0x807f_ffff) | ((63 + state % 128) << 23);
            if i % 2 == 0 {
                f32::from_bits(bits)
            } else {
                -f32::from_bits(bits)
            }
        }));
        let mut quotients = vec![0f32; xs.len()];
        for size in 1..=avx2::RECIPROCAL_MAX as u32 {
            let d = Divisor::new(size);
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            unsafe { avx2::divide_row(&xs, d, &mut quotients) };
            let exact = |(x, q): (&f32, &f32)| (x / d.size).to_bits() == q.to_bits();
            let wrong: usize = xs
                .iter()
                .zip(&quotients)
                .map(|p| usize::from(!exact(p)))
                .sum();
            if wrong > 0 {
                let (x, q) = xs.iter().zip(&quotients).find(|p| !exact(*p)).unwrap();
                panic!("{x:e} / {size}: {q:e}, expected {:e}", x / d.size);
            }
        }
    }

    /// The first three passes as separate full-image passes, as the reference runs them.
    fn three_passes(
        luma: &[f32],
        rows: usize,
        cols: usize,
        win_rows: usize,
        win_cols: usize,
    ) -> Vec<f32> {
        let mut pass1 = vec![0f32; rows * cols];
        super::rows(luma, &mut pass1, rows, cols, win_rows);
        let mut pass2 = vec![0f32; rows * cols];
        super::cols(&pass1, &mut pass2, rows, cols, win_cols);
        let mut kept = vec![0f32; rows * DOWN];
        let at = sample_positions(cols);
        super::rows_sampled(&pass2, &mut kept, rows, cols, win_rows, &at);
        kept
    }

    #[test]
    fn sampled_columns_equal_the_full_pass_at_the_samples() {
        for rows in [5, 16, 17, 64, 100, 333, 1080] {
            let input = picture(rows, DOWN, rows as u32);
            let at = sample_positions(rows);
            for window in [1, 2, 3, crate::jarosz_window(rows, DOWN), rows.min(40)] {
                let mut full = vec![0f32; rows * DOWN];
                super::cols(&input, &mut full, rows, DOWN, window);
                let kept = super::cols_sampled(&input, rows, window, &at);
                for (k, &r) in at.iter().enumerate() {
                    assert_eq!(
                        bits(&kept[k]),
                        bits(&full[r as usize * DOWN..(r as usize + 1) * DOWN]),
                        "{rows} rows window {window} sample {k}"
                    );
                }
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_expansion_equals_the_table_for_every_code() {
        if !has_avx2() {
            return;
        }
        let lut = crate::limited_to_full_lut();
        for v0 in (0..=255u8).step_by(8) {
            let codes: [u8; 8] = std::array::from_fn(|i| v0 + i as u8);
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            let got = unsafe { avx2::expand8(&codes) };
            for (&v, g) in codes.iter().zip(got) {
                assert_eq!(g.to_bits(), lut[v as usize].to_bits(), "code {v}");
            }
        }
    }

    #[test]
    fn one_sweep_equals_the_three_passes() {
        // heights below, at and off multiples of LANES; column windows wider than a strip
        const SWEEP_SIZES: [(usize, usize); 11] = [
            (5, 5),
            (7, 9),
            (15, 64),
            (16, 16),
            (17, 333),
            (31, 8),
            (48, 100),
            (64, 64),
            (135, 240),
            (300, 47),
            (1080, 96),
        ];
        let mut scratch = Scratch::default();
        for (rows, cols) in SWEEP_SIZES {
            let windows = [
                (
                    crate::jarosz_window(cols, DOWN),
                    crate::jarosz_window(rows, DOWN),
                ),
                (1, 1),
                (2, 3),
                (3, 2),
                (cols.min(7), rows.min(8)),
                (cols.min(40), rows.min(40)),
                (cols, rows),
            ];
            let stride = cols + 5;
            let data: Vec<u8> = (0..rows * stride)
                .map(|i| ((i * 37 + i / stride * 11) % 253) as u8)
                .collect();
            let rgb: Vec<u8> = (0..rows * cols * 3).map(|i| (i * 29 % 251) as u8).collect();
            for (win_rows, win_cols) in windows {
                for input in 0..3 {
                    let (src, pixels) = match input {
                        0 => (
                            Source::Luma8 {
                                data: &data,
                                stride,
                                limited: false,
                            },
                            crate::Pixels::Gray {
                                data: &data,
                                stride,
                            },
                        ),
                        1 => (
                            Source::Luma8 {
                                data: &data,
                                stride,
                                limited: true,
                            },
                            crate::Pixels::VideoY {
                                data: &data,
                                stride,
                            },
                        ),
                        _ => (Source::Rgb(&rgb), crate::Pixels::Rgb(&rgb)),
                    };
                    let mut luma = Vec::new();
                    crate::luma(pixels, cols, rows, &mut luma);
                    let expected = three_passes(&luma, rows, cols, win_rows, win_cols);
                    let at = sample_positions(cols);
                    // the path this CPU dispatches to, and the portable one
                    let paths: [(&str, Blur); 2] = [
                        ("dispatched", super::blur),
                        ("portable", blur_impl::<Portable>),
                    ];
                    for (path, blur) in paths {
                        let mut kept = vec![f32::NAN; rows * DOWN];
                        blur(
                            src,
                            rows,
                            cols,
                            (win_rows, win_cols),
                            &at,
                            &mut kept,
                            &mut scratch,
                        );
                        assert_eq!(
                            bits(&kept),
                            bits(&expected),
                            "{path} {rows}x{cols} windows {win_rows},{win_cols} {src:?}"
                        );
                    }
                }
            }
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// [`super::blur`]'s signature, to run each path through the same checks.
    type Blur =
        fn(Source<'_>, usize, usize, (usize, usize), &[u32; DOWN], &mut [f32], &mut Scratch);
}
