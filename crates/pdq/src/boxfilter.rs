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
//! * along rows, eight rows at a time are transposed into eight-lane vectors (one lane per row)
//!   in a small scratch strip, slid along, and transposed back.
//!
//! Each lane performs the reference's operations in the reference's order, so the result is
//! identical, bit for bit, to [`crate::box_1d`] applied line by line. On x86-64 with AVX2
//! the same code is compiled a second time for that instruction set and picked at run time.

use crate::DOWN;

/// Rows filtered together along rows: two AVX2 registers per step, so two independent
/// chains of additions hide each other's latency.
const LANES: usize = 16;
type Lanes = [f32; LANES];

/// Defines `pub fn NAME(args)` calling `IMPL::<Avx2>(args)` from a function compiled for AVX2
/// when the CPU has it, else `IMPL::<Portable>(args)`. `IMPL` is `#[inline(always)]`, so each
/// wrapper gets its own copy compiled for its instruction set.
macro_rules! multiversion {
    ($($(#[$doc:meta])* fn $name:ident => $imp:ident($($arg:ident: $ty:ty),*);)*) => {$(
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) {
                    $imp::<Avx2>($($arg),*)
                }
                if has_avx2() {
                    // SAFETY: the CPU supports AVX2 (checked just now).
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
    fn rows_u8 => rows_u8_impl(
        input: &[u8], stride: usize, limited: bool, output: &mut [f32], rows: usize, cols: usize,
        window: usize
    );
    /// Luma of packed RGB pixels, as [`crate::luma`] defines it, into `out`.
    fn luma_rgb => luma_rgb_impl(rgb: &[u8], out: &mut [f32]);
    /// Box filter along every column of `input` (`rows x cols`, row-major) into `output`.
    fn cols => cols_impl(input: &[f32], output: &mut [f32], rows: usize, cols: usize, window: usize);
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static AVX2: OnceLock<bool> = OnceLock::new();
    *AVX2.get_or_init(|| std::arch::is_x86_feature_detected!("avx2"))
}

/// The instruction set the filters run with on this CPU.
pub fn instruction_set() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        return "avx2";
    }
    "portable"
}

/// Moving `LANES` rows in and out of a strip (one `LANES`-wide vector per column).
trait Transpose {
    /// Copies rows `r0..r0 + LANES` of `input` into `strip`.
    fn load(input: &[f32], r0: usize, cols: usize, strip: &mut [Lanes]);
    /// The inverse of `load`.
    fn store(strip: &[Lanes], output: &mut [f32], r0: usize, cols: usize);
    /// `load` from 8-bit luma, converted as [`crate::luma`] does.
    fn load_u8(
        input: &[u8],
        stride: usize,
        limited: bool,
        r0: usize,
        cols: usize,
        strip: &mut [Lanes],
    );
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

impl Transpose for Portable {
    #[inline(always)]
    fn load_u8(
        input: &[u8],
        stride: usize,
        limited: bool,
        r0: usize,
        cols: usize,
        strip: &mut [Lanes],
    ) {
        let lines: [&[u8]; LANES] = std::array::from_fn(|l| &input[(r0 + l) * stride..][..cols]);
        for (j, out) in strip[..cols].iter_mut().enumerate() {
            *out = std::array::from_fn(|l| luma8(lines[l][j], limited));
        }
    }

    #[inline(always)]
    fn load(input: &[f32], r0: usize, cols: usize, strip: &mut [Lanes]) {
        let lines: [&[f32]; LANES] = std::array::from_fn(|l| &input[(r0 + l) * cols..][..cols]);
        for (j, out) in strip[..cols].iter_mut().enumerate() {
            *out = std::array::from_fn(|l| lines[l][j]);
        }
    }

    #[inline(always)]
    fn store(strip: &[Lanes], output: &mut [f32], r0: usize, cols: usize) {
        let out = &mut output[r0 * cols..(r0 + LANES) * cols];
        for (j, v) in strip[..cols].iter().enumerate() {
            for l in 0..LANES {
                out[l * cols + j] = v[l];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Transpose for Avx2 {
    #[inline(always)]
    fn load_u8(
        input: &[u8],
        stride: usize,
        limited: bool,
        r0: usize,
        cols: usize,
        strip: &mut [Lanes],
    ) {
        assert!(input.len() >= (r0 + LANES - 1) * stride + cols && cols <= stride);
        assert!(strip.len() >= cols);
        // SAFETY: as for `load`.
        unsafe { avx2::load_u8(input, stride, limited, r0, cols, strip) }
    }

    #[inline(always)]
    fn load(input: &[f32], r0: usize, cols: usize, strip: &mut [Lanes]) {
        assert!(input.len() >= (r0 + LANES) * cols && strip.len() >= cols);
        // SAFETY: only reached from functions compiled for AVX2, called after the CPU check;
        // the bounds are asserted above.
        unsafe { avx2::load(input, r0, cols, strip) }
    }

    #[inline(always)]
    fn store(strip: &[Lanes], output: &mut [f32], r0: usize, cols: usize) {
        assert!(output.len() >= (r0 + LANES) * cols && strip.len() >= cols);
        // SAFETY: as for `load`.
        unsafe { avx2::store(strip, output, r0, cols) }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Lanes, LANES};
    use std::arch::x86_64::*;

    /// 8x8 transpose in registers.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xee>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xee>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xee>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xee>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }

    /// # Safety
    /// The CPU supports AVX2; `input` holds rows `r0..r0 + LANES` of `cols` values and
    /// `strip` at least `cols` vectors.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn load(input: &[f32], r0: usize, cols: usize, strip: &mut [Lanes]) {
        let base = input.as_ptr().add(r0 * cols);
        let dst = strip.as_mut_ptr().cast::<f32>();
        let mut c = 0;
        while c + 8 <= cols {
            for half in 0..LANES / 8 {
                let rows: [__m256; 8] =
                    std::array::from_fn(|l| _mm256_loadu_ps(base.add((half * 8 + l) * cols + c)));
                for (j, v) in transpose8(rows).into_iter().enumerate() {
                    _mm256_storeu_ps(dst.add((c + j) * LANES + half * 8), v);
                }
            }
            c += 8;
        }
        for j in c..cols {
            for l in 0..LANES {
                *dst.add(j * LANES + l) = *base.add(l * cols + j);
            }
        }
    }

    /// The limited-to-full-range expansion: the table's `clamp(round((v - 16) * 255 / 219), 0,
    /// 255)`. The result is a whole number, and no code comes within 0.002 of a half before
    /// rounding, so multiplying by 255 / 219 (off by far less than that) instead of dividing,
    /// and rounding half to even instead of away from zero, give the table's values exactly
    /// (a test checks all 256 codes).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn expand(v: __m256) -> __m256 {
        let t = _mm256_mul_ps(
            _mm256_sub_ps(v, _mm256_set1_ps(16.0)),
            _mm256_set1_ps(255.0 / 219.0),
        );
        let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
        _mm256_min_ps(_mm256_max_ps(r, _mm256_setzero_ps()), _mm256_set1_ps(255.0))
    }

    /// # Safety
    /// The CPU supports AVX2; `input` holds rows `r0..r0 + LANES` of `cols <= stride` bytes
    /// and `strip` at least `cols` vectors.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn load_u8(
        input: &[u8],
        stride: usize,
        limited: bool,
        r0: usize,
        cols: usize,
        strip: &mut [Lanes],
    ) {
        let base = input.as_ptr().add(r0 * stride);
        let dst = strip.as_mut_ptr().cast::<f32>();
        let mut c = 0;
        while c + 8 <= cols {
            for half in 0..LANES / 8 {
                let rows: [__m256; 8] = std::array::from_fn(|l| {
                    let bytes = _mm_loadl_epi64(base.add((half * 8 + l) * stride + c).cast());
                    let v = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
                    if limited {
                        expand(v)
                    } else {
                        v
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
    pub unsafe fn store(strip: &[Lanes], output: &mut [f32], r0: usize, cols: usize) {
        let base = output.as_mut_ptr().add(r0 * cols);
        let src = strip.as_ptr().cast::<f32>();
        let mut c = 0;
        while c + 8 <= cols {
            for half in 0..LANES / 8 {
                let columns: [__m256; 8] =
                    std::array::from_fn(|j| _mm256_loadu_ps(src.add((c + j) * LANES + half * 8)));
                for (l, v) in transpose8(columns).into_iter().enumerate() {
                    _mm256_storeu_ps(base.add((half * 8 + l) * cols + c), v);
                }
            }
            c += 8;
        }
        for j in c..cols {
            for l in 0..LANES {
                *base.add(l * cols + j) = *src.add(j * LANES + l);
            }
        }
    }
}

/// Slides the window along a strip with the reference's four phases (grow the window, slide
/// it, shrink it), calling `emit(o, sums, size)` when output `o` is due.
#[inline(always)]
fn slide_strip(strip: &[Lanes], window: usize, mut emit: impl FnMut(usize, &Lanes, f32)) {
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
        emit(oi, &sum, size as f32);
        ri += 1;
        oi += 1;
    }
    for _ in 0..strip.len().saturating_sub(window) {
        add(&mut sum, &strip[ri]);
        sub(&mut sum, &strip[li]);
        emit(oi, &sum, size as f32);
        li += 1;
        ri += 1;
        oi += 1;
    }
    for _ in 0..half - 1 {
        sub(&mut sum, &strip[li]);
        size -= 1;
        emit(oi, &sum, size as f32);
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
fn div(sum: &Lanes, size: f32) -> Lanes {
    let mut out = [0f32; LANES];
    for l in 0..LANES {
        out[l] = sum[l] / size;
    }
    out
}

#[inline(always)]
fn sub(sum: &mut Lanes, v: &Lanes) {
    for l in 0..LANES {
        sum[l] -= v[l];
    }
}

#[inline(always)]
fn rows_impl<T: Transpose>(
    input: &[f32],
    output: &mut [f32],
    rows: usize,
    cols: usize,
    window: usize,
) {
    let full = rows / LANES * LANES;
    let mut strip = vec![[0f32; LANES]; cols];
    let mut filtered = vec![[0f32; LANES]; cols];
    for r0 in (0..full).step_by(LANES) {
        T::load(input, r0, cols, &mut strip);
        slide_strip(
            &strip,
            window,
            #[inline(always)]
            |o, sum, size| filtered[o] = div(sum, size),
        );
        T::store(&filtered, output, r0, cols);
    }
    for r in full..rows {
        crate::box_1d(&input[r * cols..], &mut output[r * cols..], cols, 1, window);
    }
}

/// The row pass over one strip, kept only at the columns `at`, into `output` (`LANES x 64`).
#[inline(always)]
fn sampled_strip(strip: &[Lanes], window: usize, at: &[u32; DOWN], output: &mut [f32]) {
    let mut kept = [[0f32; LANES]; DOWN];
    let mut k = 0;
    slide_strip(
        strip,
        window,
        #[inline(always)]
        |o, sum, size| {
            // positions are ascending; small images sample one column several times
            while k < DOWN && at[k] as usize == o {
                kept[k] = div(sum, size);
                k += 1;
            }
        },
    );
    for (l, out) in output.chunks_exact_mut(DOWN).enumerate() {
        for (o, v) in out.iter_mut().zip(&kept) {
            *o = v[l];
        }
    }
}

#[inline(always)]
fn rows_u8_impl<T: Transpose>(
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
        T::load_u8(input, stride, limited, r0, cols, &mut strip);
        slide_strip(
            &strip,
            window,
            #[inline(always)]
            |o, sum, size| filtered[o] = div(sum, size),
        );
        T::store(&filtered, output, r0, cols);
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
fn rows_sampled_impl<T: Transpose>(
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
        T::load(input, r0, cols, &mut strip);
        sampled_strip(
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

// `T` (the instruction set) is unused: the portable code vectorises as it is
#[allow(clippy::extra_unused_type_parameters)]
#[inline(always)]
fn cols_impl<T>(input: &[f32], output: &mut [f32], rows: usize, cols: usize, window: usize) {
    slide_rows(
        input,
        rows,
        cols,
        window,
        #[inline(always)]
        |o, sum, size| {
            for (d, &s) in output[o * cols..(o + 1) * cols].iter_mut().zip(sum) {
                *d = s / size;
            }
        },
    );
}

/// The box filter down all columns at once: one row-wide vector of running sums slides over
/// the rows, calling `emit(o, sums, size)` when output row `o` is due.
#[inline(always)]
fn slide_rows(
    input: &[f32],
    rows: usize,
    cols: usize,
    window: usize,
    mut emit: impl FnMut(usize, &[f32], f32),
) {
    let row = |r: usize| &input[r * cols..(r + 1) * cols];
    let half = (window + 2) / 2;
    let (mut li, mut ri, mut oi) = (0usize, 0usize, 0usize);
    let mut size = 0u32;
    let mut sum = vec![0f32; cols];
    for _ in 0..half - 1 {
        sum.iter_mut().zip(row(ri)).for_each(|(s, &v)| *s += v);
        size += 1;
        ri += 1;
    }
    for _ in 0..window - half + 1 {
        sum.iter_mut().zip(row(ri)).for_each(|(s, &v)| *s += v);
        size += 1;
        emit(oi, &sum, size as f32);
        ri += 1;
        oi += 1;
    }
    for _ in 0..rows.saturating_sub(window) {
        let (add, sub) = (row(ri), row(li));
        for ((s, &a), &b) in sum.iter_mut().zip(add).zip(sub) {
            *s += a;
            *s -= b;
        }
        emit(oi, &sum, size as f32);
        li += 1;
        ri += 1;
        oi += 1;
    }
    for _ in 0..half - 1 {
        sum.iter_mut().zip(row(li)).for_each(|(s, &v)| *s -= v);
        size -= 1;
        emit(oi, &sum, size as f32);
        li += 1;
        oi += 1;
    }
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

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }
}
