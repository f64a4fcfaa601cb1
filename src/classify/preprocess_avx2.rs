//! The CPU twin's fast path for YUV 4:2:0 pictures on x86-64 with AVX2.
//!
//! Every value goes through the same float operations, in the same order, as in the portable
//! twin ([`super::preprocess`]) and the WGSL kernels; only the grouping changes, so the three
//! agree bit for bit (tested against the portable path). Eight source rows go together:
//!
//! 1. each row is converted to planar R, G, B eight columns at a time: the luma as
//!    `((Y - 16) * 255) / 219` in f32 (equal to the f64-built table for all 256 codes, tested)
//!    or `Y` for full range, and the chroma shares looked up once per chroma row and widened
//!    to pairs of columns;
//! 2. the eight rows are transposed into columns (one vector holds a column's eight rows), so
//!    the horizontal pass multiplies a whole column by one broadcast weight per tap, with no
//!    gathers;
//! 3. its outputs are transposed back into planar rows, and the vertical pass runs over
//!    whole output rows.
//!
//! On a 2-core Xeon this is several times faster than the portable path (see `hardware.md`).

use std::arch::x86_64::*;

use super::manifest::{InputSpec, Layout};
use super::preprocess::{ColorTables, Resample, Yuv420};

/// Rows per group, and lanes per vector.
const L: usize = 8;

/// Whether this CPU can run the fast path.
pub fn available() -> bool {
    is_x86_feature_detected!("avx2")
}

/// Buffers kept between frames.
#[derive(Default)]
pub struct Scratch {
    /// One group of converted rows, planar: `[row][channel][column]`, `wv` columns each.
    planes: Vec<f32>,
    /// The group as columns: `[column][channel][row]`, `cols` columns.
    cols: Vec<f32>,
    /// One chroma row's shares of R, G (U's), G (V's) and B, `wv / 2` each.
    chroma: Vec<f32>,
    chroma_row: Option<usize>,
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
    // columns from an even one, so that column pairs share a chroma sample
    let xs = rs.x_lo & !1;
    let w = rs.x_hi - xs;
    let wv = w.div_ceil(L) * L;
    let ks = rs.x.ksize;
    let rows = rs.y_hi - rs.y_lo;
    let groups = rows.div_ceil(L);

    s.planes.resize(L * 3 * wv, 0.0);
    // padded taps read up to `ks` columns past the last: keep them zero
    s.cols.clear();
    s.cols.resize((wv + ks) * 3 * L, 0.0);
    s.chroma.resize(4 * (wv / 2), 0.0);
    s.chroma_row = None;
    s.hgroup.resize(ow8 * 3 * L, 0.0);
    s.h.resize(groups * L * 3 * ow8, 0.0);
    s.acc.resize(3 * ow8, 0.0);
    let from: Vec<usize> = rs.x.first.iter().map(|&f| f as usize - xs).collect();
    if let Some(last) = from.iter().max() {
        assert!((last + ks) * 3 * L <= s.cols.len(), "taps past the columns");
    }

    let t = ColorTables::get(p.full_range, p.matrix);
    for g in 0..groups {
        for lane in 0..L {
            // rows past the last one read repeat it; their outputs are not used
            let r = (rs.y_lo + g * L + lane).min(rs.y_hi - 1);
            let crow = r / 2;
            if s.chroma_row != Some(crow) {
                chroma_shares(p, t, crow, xs, &mut s.chroma);
                s.chroma_row = Some(crow);
            }
            convert_row(
                p,
                r,
                xs,
                wv,
                &s.chroma,
                &mut s.planes[lane * 3 * wv..(lane + 1) * 3 * wv],
            );
        }
        to_columns(&s.planes, wv, &mut s.cols);
        horizontal(&s.cols, &from, &rs.x.weights, ks, ow, &mut s.hgroup);
        to_rows(
            &s.hgroup,
            ow8,
            &mut s.h[g * L * 3 * ow8..(g + 1) * L * 3 * ow8],
        );
    }
    vertical(rs, spec, order, ow, ow8, &s.h, &mut s.acc, out, oh);
}

/// One chroma row's shares, `wv / 2` samples from column `xs / 2` (zero past the plane).
#[target_feature(enable = "avx2")]
unsafe fn chroma_shares(p: &Yuv420<'_>, t: &ColorTables, crow: usize, xs: usize, out: &mut [f32]) {
    let n = out.len() / 4;
    let (rv, rest) = out.split_at_mut(n);
    let (gu, rest) = rest.split_at_mut(n);
    let (gv, bu) = rest.split_at_mut(n);
    let cw = p.width.div_ceil(2);
    let c0 = xs / 2;
    let have = cw.saturating_sub(c0).min(n);
    let at = crow * p.c_stride + c0;
    let (u, v) = (&p.u[at..at + have], &p.v[at..at + have]);
    for i in 0..have {
        let (u, v) = (u[i] as usize, v[i] as usize);
        rv[i] = t.r_v[v];
        gu[i] = t.g_u[u];
        gv[i] = t.g_v[v];
        bu[i] = t.b_u[u];
    }
    for a in [rv, gu, gv, bu] {
        a[have..].fill(0.0);
    }
}

/// Source row `r` from column `xs`, `wv` columns, as clamped planar R, G, B.
#[target_feature(enable = "avx2")]
unsafe fn convert_row(
    p: &Yuv420<'_>,
    r: usize,
    xs: usize,
    wv: usize,
    chroma: &[f32],
    out: &mut [f32],
) {
    let n = wv / 2;
    let base = r * p.y_stride + xs;
    let (zero, top) = (_mm256_setzero_ps(), _mm256_set1_ps(255.0));
    let (c16, c255, c219) = (
        _mm256_set1_ps(16.0),
        _mm256_set1_ps(255.0),
        _mm256_set1_ps(219.0),
    );
    let pairs = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
    let clamp = |v: __m256| _mm256_min_ps(_mm256_max_ps(v, zero), top);
    let widen = |a: &[f32], i: usize| {
        let four = _mm_loadu_ps(a[i / 2..i / 2 + 4].as_ptr());
        _mm256_permutevar8x32_ps(_mm256_castps128_ps256(four), pairs)
    };
    let (rv, gu, gv, bu) = (
        &chroma[..n],
        &chroma[n..2 * n],
        &chroma[2 * n..3 * n],
        &chroma[3 * n..4 * n],
    );
    let (ro, rest) = out.split_at_mut(wv);
    let (go, bo) = rest.split_at_mut(wv);
    let mut i = 0;
    while i < wv {
        let at = base + i;
        let bytes = if at + L <= p.y.len() {
            _mm_loadl_epi64(p.y[at..at + L].as_ptr() as *const __m128i)
        } else {
            // the plane's last bytes: what is past it is never used
            let mut b = [0u8; L];
            let have = p.y.len().saturating_sub(at).min(L);
            b[..have].copy_from_slice(&p.y[at..at + have]);
            _mm_loadl_epi64(b.as_ptr() as *const __m128i)
        };
        let mut l = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
        if !p.full_range {
            l = _mm256_div_ps(_mm256_mul_ps(_mm256_sub_ps(l, c16), c255), c219);
        }
        let r = clamp(_mm256_add_ps(l, widen(rv, i)));
        let g = clamp(_mm256_add_ps(_mm256_add_ps(l, widen(gu, i)), widen(gv, i)));
        let b = clamp(_mm256_add_ps(l, widen(bu, i)));
        _mm256_storeu_ps(ro[i..i + L].as_mut_ptr(), r);
        _mm256_storeu_ps(go[i..i + L].as_mut_ptr(), g);
        _mm256_storeu_ps(bo[i..i + L].as_mut_ptr(), b);
        i += L;
    }
}

/// Transposes eight vectors (rows) into eight vectors (columns).
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn transpose(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
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

/// Planar rows `[row][channel][column]` to columns `[column][channel][row]`.
#[target_feature(enable = "avx2")]
unsafe fn to_columns(planes: &[f32], wv: usize, cols: &mut [f32]) {
    assert!(planes.len() >= L * 3 * wv && cols.len() >= wv * 3 * L);
    let (src, dst) = (planes.as_ptr(), cols.as_mut_ptr());
    for x in (0..wv).step_by(L) {
        for c in 0..3 {
            let rows: [__m256; 8] =
                std::array::from_fn(|row| _mm256_loadu_ps(src.add((row * 3 + c) * wv + x)));
            for (k, v) in transpose(rows).into_iter().enumerate() {
                _mm256_storeu_ps(dst.add(((x + k) * 3 + c) * L), v);
            }
        }
    }
}

/// Outputs per block of the horizontal pass: twelve sums in flight.
const HB: usize = 4;

/// The horizontal pass over a group's columns: output `j`, channel `c` of all eight rows is
/// `acc = 0; acc = acc + col[from[j] + k][c] * w[j][k]` over `k` in `0..ks`.
#[target_feature(enable = "avx2")]
unsafe fn horizontal(
    cols: &[f32],
    from: &[usize],
    weights: &[f32],
    ks: usize,
    ow: usize,
    hgroup: &mut [f32],
) {
    assert!(from.len() == ow && weights.len() >= ow * ks && hgroup.len() >= ow * 3 * L);
    // `run` checked that every column read is inside `cols`
    let (src, wp, dst) = (cols.as_ptr(), weights.as_ptr(), hgroup.as_mut_ptr());
    let mut j = 0;
    while j + HB <= ow {
        let mut acc = [[_mm256_setzero_ps(); 3]; HB];
        for k in 0..ks {
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
        for k in 0..ks {
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

/// The vertical pass, a row of outputs at a time (`acc = 0; acc = acc + h * w` over the taps
/// in order), then channel order and normalisation into the tensor.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
unsafe fn vertical(
    rs: &Resample,
    spec: &InputSpec,
    order: [usize; 3],
    ow: usize,
    ow8: usize,
    h: &[f32],
    acc: &mut [f32],
    out: &mut [f32],
    oh: usize,
) {
    let plane = ow * oh;
    let interleaved = spec.layout == Layout::Nhwc;
    let width = 3 * ow8;
    for i in 0..oh {
        let (first, ws) = rs.y.of(i);
        acc.fill(0.0);
        for (k, &w) in ws.iter().enumerate() {
            let r = first + k - rs.y_lo;
            let src = &h[r * width..(r + 1) * width];
            for (a, &v) in acc.iter_mut().zip(src) {
                *a = *a + v * w;
            }
        }
        for c in 0..3 {
            let src = &acc[order[c] * ow8..order[c] * ow8 + ow];
            let (scale, mean, std) = (spec.scale, spec.mean[c], spec.std[c]);
            if interleaved {
                let row = &mut out[i * ow * 3..(i + 1) * ow * 3];
                for (j, &a) in src.iter().enumerate() {
                    row[j * 3 + c] = (a * scale - mean) / std;
                }
            } else {
                let row = &mut out[c * plane + i * ow..c * plane + (i + 1) * ow];
                for (o, &a) in row.iter_mut().zip(src) {
                    *o = (a * scale - mean) / std;
                }
            }
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
    fn luma_in_f32_equals_the_tables_for_every_code() {
        for (full, matrix) in [(false, Matrix::Bt601), (false, Matrix::Bt709)] {
            let t = ColorTables::get(full, matrix);
            for c in 0..=255u8 {
                let f = ((f32::from(c) - 16.0) * 255.0) / 219.0;
                assert_eq!(f.to_bits(), t.y[c as usize].to_bits(), "code {c}");
            }
        }
        let t = ColorTables::get(true, Matrix::Bt601);
        for c in 0..=255u8 {
            assert_eq!(
                f32::from(c).to_bits(),
                t.y[c as usize].to_bits(),
                "code {c}"
            );
        }
    }

    fn spec(
        layout: Layout,
        (w, h): (u32, u32),
        color: ColorOrder,
        resize_to: Option<[u32; 2]>,
        norm: bool,
    ) -> InputSpec {
        InputSpec {
            name: "input".into(),
            layout,
            width: w,
            height: h,
            frames: 1,
            color,
            scale: if norm { 1.0 / 255.0 } else { 1.0 },
            mean: if norm {
                [0.485, 0.456, 0.406]
            } else {
                [0.0; 3]
            },
            std: if norm {
                [0.229, 0.224, 0.225]
            } else {
                [1.0; 3]
            },
            resize_to,
        }
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
