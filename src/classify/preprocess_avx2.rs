//! The CPU twin's fast path for YUV 4:2:0 pictures on x86-64 with AVX2.
//!
//! Every value goes through the same float operations, in the same order, as in the portable
//! twin ([`super::preprocess`]) and the WGSL kernels; only the grouping changes, so the three
//! agree bit for bit (tested against the portable path). Eight source rows go together, one
//! row per vector lane:
//!
//! 1. sixteen columns at a time, the eight rows' luma bytes and the four chroma rows' bytes
//!    are transposed so that a vector holds one column of the eight rows; the colour
//!    conversion then runs in registers: luma `(Y - 16) * k` and chroma shares `(C - 128) * k`
//!    are the same f32 products the portable path looks up ([`ColorTables`] is built from
//!    [`ColorConsts`]), then the sums and the clamp;
//! 2. the horizontal pass multiplies a whole column by one broadcast weight per tap (no
//!    gathers, no transposes of floats);
//! 3. its outputs are transposed into planar rows, and each output row of the vertical pass
//!    is computed as soon as the source rows it needs are there (while they are in cache).
//!
//! [`ColorTables`]: super::preprocess::ColorTables

use std::arch::x86_64::*;

// eight vectors (rows) into eight vectors (columns)
use livewatch_pdq::simd::transpose8 as transpose;

use super::manifest::{InputSpec, Layout};
use super::preprocess::{ColorConsts, Resample, Taps, Yuv420};

/// Rows per group, and lanes per vector.
const L: usize = 8;
/// Columns converted per step.
const STEP: usize = 16;

/// Whether this CPU can run the fast path.
pub fn available() -> bool {
    is_x86_feature_detected!("avx2")
}

/// Buffers kept between frames.
#[derive(Default)]
pub struct Scratch {
    /// One group of converted rows as columns: `[column][channel][row]`.
    cols: Vec<f32>,
    /// Each output's first column in `cols`.
    from: Vec<usize>,
    /// The horizontal pass of a group: `[output][channel][row]`.
    hgroup: Vec<f32>,
    /// The horizontal pass of all rows read, planar: `[row][channel][output]`, `ow8` wide.
    h: Vec<f32>,
    /// One output row of the vertical pass: `[channel][output]`.
    acc: Vec<f32>,
}

/// Pre-processes one YUV picture into `out`, as [`super::preprocess::Preprocessor::run`]
/// does. `order` maps tensor channels to RGB channels.
///
/// # Safety
/// The CPU must support AVX2 ([`available`]). `p` must have passed `Picture::check`, `rs`
/// must be built for its size and `out` must hold `spec.frame_len()` floats.
#[target_feature(enable = "avx2")]
pub unsafe fn run(
    p: &Yuv420<'_>,
    rs: &Resample,
    spec: &InputSpec,
    order: [usize; 3],
    s: &mut Scratch,
    out: &mut [f32],
) {
    let (ow, oh) = (spec.width as usize, spec.height as usize);
    let ow8 = ow.div_ceil(L) * L;
    // from an even column and row, so that column pairs and row pairs share chroma samples
    let xs = rs.x_lo & !1;
    let wb = (rs.x_hi - xs).div_ceil(STEP) * STEP;
    let yb = rs.y_lo & !1;
    let ks = rs.x.ksize;
    let groups = (rs.y_hi - yb).div_ceil(L);

    // padded taps read up to `ks` columns past the last converted one: those stay zero
    s.cols.resize((wb + ks) * 3 * L, 0.0);
    s.cols[wb * 3 * L..].fill(0.0);
    s.from.clear();
    s.from.extend(rs.x.first.iter().map(|&f| f as usize - xs));
    if let Some(last) = s.from.iter().max() {
        assert!((last + ks) * 3 * L <= s.cols.len(), "taps past the columns");
    }
    // once per frame, not per group: `horizontal` relies on it
    assert!(rs.x.count.len() == ow && rs.x.count.iter().all(|&n| n as usize <= ks));
    s.hgroup.resize(ow8 * 3 * L, 0.0);
    s.h.resize(groups * L * 3 * ow8, 0.0);
    s.acc.resize(3 * ow8, 0.0);

    let k = ColorConsts::new(p.full_range, p.matrix);
    let mut next = 0;
    for g in 0..groups {
        let r0 = yb + g * L;
        convert_group(p, &k, r0, rs.y_hi, xs, wb, &mut s.cols);
        horizontal(&s.cols, &s.from, &rs.x, ow, &mut s.hgroup);
        to_rows(
            &s.hgroup,
            ow8,
            &mut s.h[g * L * 3 * ow8..(g + 1) * L * 3 * ow8],
        );
        // the output rows whose source rows are all there
        let done = (r0 + L).min(rs.y_hi);
        while next < oh {
            let (first, ws) = rs.y.of(next);
            if first + ws.len() > done {
                break;
            }
            vertical_row(
                next,
                first - yb,
                ws,
                spec,
                order,
                ow8,
                &s.h,
                &mut s.acc,
                out,
            );
            next += 1;
        }
    }
    debug_assert_eq!(next, oh);
}

/// Loads 16 bytes at `at`, or what is left of the plane there, zero-padded.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn load16(plane: &[u8], at: usize) -> __m128i {
    if at + 16 <= plane.len() {
        _mm_loadu_si128(plane[at..at + 16].as_ptr() as *const __m128i)
    } else {
        // the plane's last bytes: what would be past it is never used
        let mut b = [0u8; 16];
        let have = plane.len().saturating_sub(at).min(16);
        b[..have].copy_from_slice(&plane[at..at + have]);
        _mm_loadu_si128(b.as_ptr() as *const __m128i)
    }
}

/// Loads 8 bytes at `at` into the low half, or what is left of the plane there.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn load8(plane: &[u8], at: usize) -> __m128i {
    if at + 8 <= plane.len() {
        _mm_loadl_epi64(plane[at..at + 8].as_ptr() as *const __m128i)
    } else {
        let mut b = [0u8; 8];
        let have = plane.len().saturating_sub(at).min(8);
        b[..have].copy_from_slice(&plane[at..at + have]);
        _mm_loadl_epi64(b.as_ptr() as *const __m128i)
    }
}

/// Eight rows of 16 bytes to 16 columns of 8 bytes: column `j` is the low (`j` even) or high
/// half of vector `j / 2`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn bytes_to_columns(r: [__m128i; 8]) -> [__m128i; 8] {
    let a0 = _mm_unpacklo_epi8(r[0], r[1]);
    let a1 = _mm_unpacklo_epi8(r[2], r[3]);
    let a2 = _mm_unpacklo_epi8(r[4], r[5]);
    let a3 = _mm_unpacklo_epi8(r[6], r[7]);
    let b0 = _mm_unpackhi_epi8(r[0], r[1]);
    let b1 = _mm_unpackhi_epi8(r[2], r[3]);
    let b2 = _mm_unpackhi_epi8(r[4], r[5]);
    let b3 = _mm_unpackhi_epi8(r[6], r[7]);
    let c0 = _mm_unpacklo_epi16(a0, a1);
    let c1 = _mm_unpackhi_epi16(a0, a1);
    let c2 = _mm_unpacklo_epi16(a2, a3);
    let c3 = _mm_unpackhi_epi16(a2, a3);
    let d0 = _mm_unpacklo_epi16(b0, b1);
    let d1 = _mm_unpackhi_epi16(b0, b1);
    let d2 = _mm_unpacklo_epi16(b2, b3);
    let d3 = _mm_unpackhi_epi16(b2, b3);
    [
        _mm_unpacklo_epi32(c0, c2),
        _mm_unpackhi_epi32(c0, c2),
        _mm_unpacklo_epi32(c1, c3),
        _mm_unpackhi_epi32(c1, c3),
        _mm_unpacklo_epi32(d0, d2),
        _mm_unpackhi_epi32(d0, d2),
        _mm_unpacklo_epi32(d1, d3),
        _mm_unpackhi_epi32(d1, d3),
    ]
}

/// Four chroma rows of 8 samples (low halves) to 8 columns of 8 bytes, each sample twice
/// (the two luma rows that share it): column `c` is the low or high half of vector `c / 2`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn chroma_to_columns(q: [__m128i; 4]) -> [__m128i; 4] {
    let d: [__m128i; 4] = std::array::from_fn(|i| _mm_unpacklo_epi8(q[i], q[i]));
    let s0 = _mm_unpacklo_epi16(d[0], d[1]);
    let s1 = _mm_unpackhi_epi16(d[0], d[1]);
    let s2 = _mm_unpacklo_epi16(d[2], d[3]);
    let s3 = _mm_unpackhi_epi16(d[2], d[3]);
    [
        _mm_unpacklo_epi32(s0, s2),
        _mm_unpackhi_epi32(s0, s2),
        _mm_unpacklo_epi32(s1, s3),
        _mm_unpackhi_epi32(s1, s3),
    ]
}

/// The eight bytes of column `j` as floats.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn column(v: &[__m128i], j: usize) -> __m256 {
    let v = v[j / 2];
    let half = if j.is_multiple_of(2) {
        v
    } else {
        _mm_unpackhi_epi64(v, v)
    };
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(half))
}

/// Converts source rows `r0 .. r0 + 8` (`r0` even; rows from `y_end` on repeat the last one,
/// their outputs unused), columns `xs .. xs + wb`, into `cols` as clamped R, G, B.
#[target_feature(enable = "avx2")]
unsafe fn convert_group(
    p: &Yuv420<'_>,
    k: &ColorConsts,
    r0: usize,
    y_end: usize,
    xs: usize,
    wb: usize,
    cols: &mut [f32],
) {
    assert!(
        r0.is_multiple_of(2)
            && xs.is_multiple_of(2)
            && wb.is_multiple_of(STEP)
            && cols.len() >= wb * 3 * L
    );
    let last = y_end - 1;
    let yrow: [usize; L] = std::array::from_fn(|l| (r0 + l).min(last) * p.y_stride);
    let crow: [usize; 4] = std::array::from_fn(|i| (r0 / 2 + i).min(last / 2) * p.c_stride);
    let (zero, top) = (_mm256_setzero_ps(), _mm256_set1_ps(255.0));
    let (c16, c128) = (_mm256_set1_ps(16.0), _mm256_set1_ps(128.0));
    let ky = k.y_scale.map(|v| _mm256_set1_ps(v));
    let (krv, kgu, kgv, kbu) = (
        _mm256_set1_ps(k.r_v),
        _mm256_set1_ps(k.g_u),
        _mm256_set1_ps(k.g_v),
        _mm256_set1_ps(k.b_u),
    );
    let clamp = |v: __m256| _mm256_min_ps(_mm256_max_ps(v, zero), top);
    let dst = cols.as_mut_ptr();
    for o in (0..wb).step_by(STEP) {
        let x = xs + o;
        let ys = bytes_to_columns(std::array::from_fn(|l| load16(p.y, yrow[l] + x)));
        let us = chroma_to_columns(std::array::from_fn(|i| load8(p.u, crow[i] + x / 2)));
        let vs = chroma_to_columns(std::array::from_fn(|i| load8(p.v, crow[i] + x / 2)));
        for c in 0..STEP / 2 {
            let u = _mm256_sub_ps(column(&us, c), c128);
            let v = _mm256_sub_ps(column(&vs, c), c128);
            let (rv, gu, gv, bu) = (
                _mm256_mul_ps(v, krv),
                _mm256_mul_ps(u, kgu),
                _mm256_mul_ps(v, kgv),
                _mm256_mul_ps(u, kbu),
            );
            for j in [2 * c, 2 * c + 1] {
                let mut l = column(&ys, j);
                if let Some(ky) = ky {
                    l = _mm256_mul_ps(_mm256_sub_ps(l, c16), ky);
                }
                let r = clamp(_mm256_add_ps(l, rv));
                let g = clamp(_mm256_add_ps(_mm256_add_ps(l, gu), gv));
                let b = clamp(_mm256_add_ps(l, bu));
                let at = dst.add((o + j) * 3 * L);
                _mm256_storeu_ps(at, r);
                _mm256_storeu_ps(at.add(L), g);
                _mm256_storeu_ps(at.add(2 * L), b);
            }
        }
    }
}

/// Outputs per block of the horizontal pass: twelve sums in flight.
const HB: usize = 4;

/// The horizontal pass over a group's columns: output `j`, channel `c` of all eight rows is
/// `acc = 0; acc = acc + col[from[j] + k][c] * w[j][k]` over its taps `k` (a block of outputs
/// runs to its longest: the zero-padded weights add +0.0 to a sum that is never -0.0).
#[target_feature(enable = "avx2")]
unsafe fn horizontal(cols: &[f32], from: &[usize], taps: &Taps, ow: usize, hgroup: &mut [f32]) {
    let ks = taps.ksize;
    assert!(from.len() == ow && taps.weights.len() >= ow * ks && hgroup.len() >= ow * 3 * L);
    debug_assert!(taps.count.len() == ow && taps.count.iter().all(|&n| n as usize <= ks));
    // `run` checked that every column read is inside `cols`
    let (src, wp, dst) = (cols.as_ptr(), taps.weights.as_ptr(), hgroup.as_mut_ptr());
    let mut j = 0;
    while j + HB <= ow {
        let mut acc = [[_mm256_setzero_ps(); 3]; HB];
        // the block's longest taps: the others' weights are zero-padded that far
        let n = taps.count[j..j + HB]
            .iter()
            .max()
            .map_or(0, |&n| n as usize);
        for k in 0..n {
            for (b, a) in acc.iter_mut().enumerate() {
                let w = _mm256_set1_ps(*wp.add((j + b) * ks + k));
                let col = src.add((from[j + b] + k) * 3 * L);
                for (c, a) in a.iter_mut().enumerate() {
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(_mm256_loadu_ps(col.add(c * L)), w));
                }
            }
        }
        for (b, a) in acc.iter().enumerate() {
            for (c, a) in a.iter().enumerate() {
                _mm256_storeu_ps(dst.add(((j + b) * 3 + c) * L), *a);
            }
        }
        j += HB;
    }
    while j < ow {
        let mut acc = [_mm256_setzero_ps(); 3];
        for k in 0..taps.count[j] as usize {
            let w = _mm256_set1_ps(*wp.add(j * ks + k));
            let col = src.add((from[j] + k) * 3 * L);
            for (c, a) in acc.iter_mut().enumerate() {
                *a = _mm256_add_ps(*a, _mm256_mul_ps(_mm256_loadu_ps(col.add(c * L)), w));
            }
        }
        for (c, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(dst.add((j * 3 + c) * L), *a);
        }
        j += 1;
    }
}

/// A group's horizontal outputs `[output][channel][row]` to planar rows
/// `[row][channel][output]` (`ow8` wide; outputs past `ow` are left as they were).
#[target_feature(enable = "avx2")]
unsafe fn to_rows(hgroup: &[f32], ow8: usize, h: &mut [f32]) {
    assert!(hgroup.len() >= ow8 * 3 * L && h.len() >= L * 3 * ow8);
    let (src, dst) = (hgroup.as_ptr(), h.as_mut_ptr());
    for j in (0..ow8).step_by(L) {
        for c in 0..3 {
            let outs: [__m256; 8] =
                std::array::from_fn(|b| _mm256_loadu_ps(src.add(((j + b) * 3 + c) * L)));
            for (row, v) in transpose(outs).into_iter().enumerate() {
                _mm256_storeu_ps(dst.add((row * 3 + c) * ow8 + j), v);
            }
        }
    }
}

/// Output row `i` of the vertical pass (`acc = 0; acc = acc + h * w` over its taps in order,
/// from row `first` of `h`), then channel order and normalisation into the tensor.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
unsafe fn vertical_row(
    i: usize,
    first: usize,
    ws: &[f32],
    spec: &InputSpec,
    order: [usize; 3],
    ow8: usize,
    h: &[f32],
    acc: &mut [f32],
    out: &mut [f32],
) {
    let (ow, oh) = (spec.width as usize, spec.height as usize);
    let plane = ow * oh;
    let width = 3 * ow8;
    acc.fill(0.0);
    for (k, &w) in ws.iter().enumerate() {
        let r = first + k;
        let src = &h[r * width..(r + 1) * width];
        for (a, &v) in acc.iter_mut().zip(src) {
            *a += v * w;
        }
    }
    // normalised in place, a channel at a time (in vectors), then copied to the tensor
    for c in 0..3 {
        let (scale, mean, std) = (spec.scale, spec.mean[c], spec.std[c]);
        for a in &mut acc[order[c] * ow8..order[c] * ow8 + ow] {
            *a = (*a * scale - mean) / std;
        }
    }
    // the tensor's channels, in its order
    let [c0, c1, c2] = order.map(|c| &acc[c * ow8..c * ow8 + ow]);
    if spec.layout == Layout::Nhwc {
        let row = &mut out[i * ow * 3..(i + 1) * ow * 3];
        for (o, ((&a, &b), &c)) in row.chunks_exact_mut(3).zip(c0.iter().zip(c1).zip(c2)) {
            o.copy_from_slice(&[a, b, c]);
        }
    } else {
        for (c, src) in [c0, c1, c2].into_iter().enumerate() {
            out[c * plane + i * ow..c * plane + (i + 1) * ow].copy_from_slice(src);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::manifest::ColorOrder;
    use super::super::preprocess::{Matrix, Picture, Preprocessor};
    use super::*;

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn tables_hold_the_products_computed_in_registers() {
        use super::super::preprocess::ColorTables;
        for full in [false, true] {
            for matrix in [Matrix::Bt601, Matrix::Bt709] {
                let (t, k) = (
                    ColorTables::get(full, matrix),
                    ColorConsts::new(full, matrix),
                );
                for c in 0..=255u8 {
                    let i = c as usize;
                    let l = match k.y_scale {
                        Some(s) => (f32::from(c) - 16.0) * s,
                        None => f32::from(c),
                    };
                    assert_eq!(l.to_bits(), t.y[i].to_bits());
                    let d = f32::from(c) - 128.0;
                    assert_eq!((d * k.r_v).to_bits(), t.r_v[i].to_bits());
                    assert_eq!((d * k.g_u).to_bits(), t.g_u[i].to_bits());
                    assert_eq!((d * k.g_v).to_bits(), t.g_v[i].to_bits());
                    assert_eq!((d * k.b_u).to_bits(), t.b_u[i].to_bits());
                }
                // and the f64 definitions, within f32 rounding
                let scale = if full { 1.0 } else { 255.0 / 224.0 };
                let (kr, kb) = if matrix == Matrix::Bt601 {
                    (0.299, 0.114)
                } else {
                    (0.2126, 0.0722)
                };
                let exact = 2.0 * (1.0 - kr) * scale * 127.0;
                assert!((f64::from(t.r_v[255]) - exact).abs() < 1e-4 * exact);
                let exact = -2.0 * kb * (1.0 - kb) / (1.0 - kr - kb) * scale * -128.0;
                assert!((f64::from(t.g_u[0]) - exact).abs() < 1e-4 * exact.abs());
            }
        }
    }

    /// The portable twin's test spec, normalised as ImageNet models are if `norm`.
    fn spec(
        layout: Layout,
        (w, h): (u32, u32),
        color: ColorOrder,
        resize_to: Option<[u32; 2]>,
        norm: bool,
    ) -> InputSpec {
        let mut s = super::super::preprocess::tests::spec(layout, w, h, color, resize_to);
        if norm {
            s.scale = 1.0 / 255.0;
            s.mean = [0.485, 0.456, 0.406];
            s.std = [0.229, 0.224, 0.225];
        }
        s
    }

    /// Bit for bit the portable path, on pictures of many sizes (odd ones, padded strides,
    /// saturated and random content), both ranges and matrices, down- and upscaling, crops and
    /// layouts.
    #[test]
    fn equals_the_portable_path_bit_for_bit() {
        if !available() {
            eprintln!("no AVX2 on this CPU: nothing to compare");
            return;
        }
        let specs = [
            spec(Layout::Nchw, (224, 224), ColorOrder::Rgb, None, false),
            spec(
                Layout::Nhwc,
                (224, 224),
                ColorOrder::Bgr,
                Some([256, 256]),
                true,
            ),
            spec(Layout::Nchw, (7, 5), ColorOrder::Bgr, Some([9, 6]), true),
            spec(Layout::Ncthw, (32, 24), ColorOrder::Rgb, None, false),
        ];
        let sizes: [(usize, usize); 12] = [
            (1, 1),
            (2, 2),
            (3, 5),
            (9, 7),
            (17, 9),
            (31, 33),
            (64, 48),
            (101, 77),
            (224, 224),
            (333, 199),
            (640, 360),
            (1280, 720),
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for (i, &(w, h)) in sizes.iter().enumerate() {
            let y_stride = w + [0, 1, 32][i % 3];
            let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
            let c_stride = cw + [0, 3, 16][i % 3];
            // planes exactly as long as they must be: reads past the last byte would fail
            let mut y = vec![0u8; (h - 1) * y_stride + w];
            let mut u = vec![0u8; (ch - 1) * c_stride + cw];
            let mut v = vec![0u8; (ch - 1) * c_stride + cw];
            for (k, b) in y.iter_mut().enumerate() {
                // random, with runs of black and white
                *b = match (k / 97) % 4 {
                    0 => 0,
                    1 => 255,
                    _ => rng.next() as u8,
                };
            }
            for (b, c) in u.iter_mut().zip(v.iter_mut()) {
                *b = rng.next() as u8;
                *c = if rng.below(3) == 0 {
                    255
                } else {
                    rng.next() as u8
                };
            }
            for (full_range, matrix) in [
                (false, Matrix::Bt601),
                (true, Matrix::Bt709),
                (i % 2 == 0, Matrix::Bt709),
            ] {
                let pic = Picture::Yuv420(Yuv420 {
                    y: &y,
                    y_stride,
                    u: &u,
                    v: &v,
                    c_stride,
                    width: w,
                    height: h,
                    full_range,
                    matrix,
                });
                for s in &specs {
                    let mut fast = Preprocessor::new(s);
                    assert_eq!(fast.path(), "avx2");
                    let mut slow = Preprocessor::portable(s);
                    let (mut a, mut b) = (vec![0.0f32; s.frame_len()], vec![0.0f32; s.frame_len()]);
                    // twice through the same pre-processor: nothing left over from before
                    for _ in 0..2 {
                        fast.run(&pic, &mut a).unwrap();
                        slow.run(&pic, &mut b).unwrap();
                        let diff = a
                            .iter()
                            .zip(&b)
                            .position(|(x, y)| x.to_bits() != y.to_bits());
                        assert!(
                            diff.is_none(),
                            "{w}x{h} full={full_range} {matrix:?} {:?} {}x{}: first difference \
                             at {:?}: {} against {}",
                            s.layout,
                            s.width,
                            s.height,
                            diff,
                            a[diff.unwrap()],
                            b[diff.unwrap()]
                        );
                    }
                }
            }
        }
    }
}
