//! PDQ perceptual hash, computed exactly as Meta's reference implementation does.
//!
//! Every floating-point step mirrors the reference's order of operations (f32 accumulation,
//! the same running box sums, the DCT matrix computed in f64 and stored as f32, Torben's lower
//! median), so that the same pixels give the same 256 bits. This is the one CPU implementation
//! in the project: the reference for the GPU kernels and the fallback on GPU-less hosts.

mod boxfilter;

pub use boxfilter::instruction_set;

/// Register-level building blocks of the AVX2 filters, for other vectorised code.
#[cfg(target_arch = "x86_64")]
pub mod simd {
    pub use crate::boxfilter::transpose8;
}

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// Side of the downsampled image the DCT runs on.
pub const DOWN: usize = 64;
/// Side of the kept block of DCT coefficients.
pub const DCT: usize = 16;
/// Images smaller than this in either dimension get an all-zero hash of quality 0.
pub const MIN_HASHABLE_DIM: usize = 5;

const LUMA_R: f64 = 0.299;
const LUMA_G: f64 = 0.587;
const LUMA_B: f64 = 0.114;

/// A 256-bit PDQ hash. Bit `k` is DCT cell (row `k / 16`, column `k % 16`), stored in 16-bit
/// word `k / 16`, as in the reference's `Hash256`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Hash256 {
    pub words: [u16; 16],
}

impl Hash256 {
    pub fn bit(&self, k: usize) -> bool {
        self.words[k / 16] >> (k % 16) & 1 == 1
    }

    fn set_bit(&mut self, k: usize) {
        self.words[k / 16] |= 1 << (k % 16);
    }

    /// The same 256 bits as four 64-bit limbs, for fast Hamming distance.
    pub fn limbs(&self) -> [u64; 4] {
        let mut out = [0u64; 4];
        for (i, limb) in out.iter_mut().enumerate() {
            for w in 0..4 {
                *limb |= u64::from(self.words[i * 4 + w]) << (16 * w);
            }
        }
        out
    }

    pub fn distance(&self, other: &Hash256) -> u32 {
        let (a, b) = (self.limbs(), other.limbs());
        (0..4).map(|i| (a[i] ^ b[i]).count_ones()).sum()
    }
}

impl fmt::Display for Hash256 {
    /// 64 lowercase hex digits, word 15 first, as the reference prints hashes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for w in self.words.iter().rev() {
            write!(f, "{w:04x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Hash256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash256({self})")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseHashError {
    #[error("a PDQ hash has 64 hex digits, this has {0}")]
    Length(usize),
    #[error("a PDQ hash is hex, found {0:?}")]
    NotHex(char),
}

impl FromStr for Hash256 {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 64 {
            return Err(ParseHashError::Length(s.chars().count()));
        }
        let mut words = [0u16; 16];
        for (i, chunk) in s.as_bytes().chunks(4).enumerate() {
            let mut w = 0u16;
            for &c in chunk {
                let d = (c as char)
                    .to_digit(16)
                    .ok_or(ParseHashError::NotHex(c as char))?;
                w = w << 4 | d as u16;
            }
            words[15 - i] = w;
        }
        Ok(Hash256 { words })
    }
}

/// A hash with its quality score (0..=100; the reference ignores matches below 50).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PdqHash {
    pub hash: Hash256,
    pub quality: u8,
}

/// The 8 dihedral variants' hashes of one image, in the reference's order: original, rotated
/// 90, 180 and 270 degrees, flipped along X, along Y, about the main and the anti-diagonal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PdqDihedral {
    pub hashes: [Hash256; 8],
    pub quality: u8,
}

/// Names of the dihedral variants, in [`PdqDihedral::hashes`] order.
pub const DIHEDRAL_NAMES: [&str; 8] = [
    "original",
    "rot90",
    "rot180",
    "rot270",
    "flipx",
    "flipy",
    "flipplus1",
    "flipminus1",
];

/// Pixels to hash, and how their luma is obtained.
#[derive(Clone, Copy, Debug)]
pub enum Pixels<'a> {
    /// Packed RGB, `width * height * 3` bytes: luma as the reference computes it.
    Rgb(&'a [u8]),
    /// 8-bit full-range luma (0 = black, 255 = white), rows `stride` bytes apart.
    Gray { data: &'a [u8], stride: usize },
    /// The Y plane of a limited-range ("TV", 16..235) video frame, rows `stride` bytes apart:
    /// expanded to full range first, since unexpanded Y compresses contrast and lowers the
    /// quality score.
    VideoY { data: &'a [u8], stride: usize },
}

/// Reusable working memory for hashing frames of one size after another without allocating.
#[derive(Default)]
pub struct PdqHasher {
    luma: Vec<f32>,
    kept: Vec<f32>,
    scratch: boxfilter::Scratch,
}

impl PdqHasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn hash(&mut self, pixels: Pixels<'_>, width: usize, height: usize) -> PdqHash {
        let (dct, quality) = self.dct(pixels, width, height);
        PdqHash {
            hash: dct.map_or_else(Hash256::default, |d| dct_to_bits(&d)),
            quality,
        }
    }

    pub fn hash_dihedral(
        &mut self,
        pixels: Pixels<'_>,
        width: usize,
        height: usize,
    ) -> PdqDihedral {
        let (dct, quality) = self.dct(pixels, width, height);
        let hashes = match dct {
            Some(d) => dihedral(&d).map(|v| dct_to_bits(&v)),
            None => [Hash256::default(); 8],
        };
        PdqDihedral { hashes, quality }
    }

    /// The 16x16 DCT block the bits are taken from; `None` for images too small to hash.
    pub fn dct_block(
        &mut self,
        pixels: Pixels<'_>,
        width: usize,
        height: usize,
    ) -> Option<[[f32; DCT]; DCT]> {
        self.dct(pixels, width, height).0
    }

    /// Packed RGB pixels (`width * height * 3` bytes, row-major).
    pub fn hash_rgb(&mut self, rgb: &[u8], width: usize, height: usize) -> PdqHash {
        self.hash(Pixels::Rgb(rgb), width, height)
    }

    /// 8-bit full-range luma, `stride` bytes apart per row.
    pub fn hash_gray(
        &mut self,
        luma: &[u8],
        width: usize,
        height: usize,
        stride: usize,
    ) -> PdqHash {
        self.hash(Pixels::Gray { data: luma, stride }, width, height)
    }

    /// The Y plane of a limited-range video frame.
    pub fn hash_video_luma(
        &mut self,
        y: &[u8],
        width: usize,
        height: usize,
        stride: usize,
    ) -> PdqHash {
        self.hash(Pixels::VideoY { data: y, stride }, width, height)
    }

    /// The 16x16 DCT block and the quality; `None` (quality 0) for images too small to hash.
    fn dct(
        &mut self,
        pixels: Pixels<'_>,
        width: usize,
        height: usize,
    ) -> (Option<[[f32; DCT]; DCT]>, u8) {
        if width < MIN_HASHABLE_DIM || height < MIN_HASHABLE_DIM {
            return (None, 0);
        }
        let down = if width == DOWN && height == DOWN {
            // The reference skips the blur for inputs that are already 64x64.
            luma(pixels, width, height, &mut self.luma);
            std::array::from_fn(|i| self.luma[i * DOWN..(i + 1) * DOWN].try_into().unwrap())
        } else {
            self.blur_and_decimate(pixels, width, height)
        };
        (Some(dct64_to_16(&down)), quality_metric(&down))
    }

    /// The reference's two X,Y box-filter passes (Jarosz), keeping only what the 64x64
    /// decimation reads: the last row pass only at the 64 sampled columns, the last column
    /// pass only at the 64 sampled rows. The first three passes run as one sweep down the
    /// image (`boxfilter::blur`), with the same values as [`box_rows`], [`box_cols`] and
    /// [`box_rows_sampled`] one after the other.
    fn blur_and_decimate(
        &mut self,
        pixels: Pixels<'_>,
        width: usize,
        height: usize,
    ) -> [[f32; DOWN]; DOWN] {
        let (win_along_rows, win_along_cols) =
            (jarosz_window(width, DOWN), jarosz_window(height, DOWN));
        let (at_cols, at_rows) = (sample_positions(width), sample_positions(height));
        // 8-bit luma is converted on the fly, strip by strip (same values as `luma`)
        let src = match pixels {
            Pixels::Gray { data, stride } | Pixels::VideoY { data, stride } => {
                check_plane(data, width, height, stride);
                boxfilter::Source::Luma8 {
                    data,
                    stride,
                    limited: matches!(pixels, Pixels::VideoY { .. }),
                }
            }
            Pixels::Rgb(rgb) => {
                assert_eq!(rgb.len(), width * height * 3, "RGB buffer size");
                boxfilter::Source::Rgb(rgb)
            }
        };
        self.kept.resize(height * DOWN, 0.0);
        boxfilter::blur(
            src,
            height,
            width,
            (win_along_rows, win_along_cols),
            &at_cols,
            &mut self.kept,
            &mut self.scratch,
        );
        box_cols_sampled(&self.kept, height, win_along_cols, &at_rows)
    }
}

/// One pixel's luma: summed in f64 and rounded to f32, as `pdqhash` does.
#[inline(always)]
fn rgb_luma(r: u8, g: u8, b: u8) -> f32 {
    (f64::from(r) * LUMA_R + f64::from(g) * LUMA_G + f64::from(b) * LUMA_B) as f32
}

fn check_plane(data: &[u8], width: usize, height: usize, stride: usize) {
    assert!(stride >= width, "stride {stride} below width {width}");
    assert!(
        data.len() >= (height - 1) * stride + width,
        "luma plane size"
    );
}

/// Luma as f32, row-major and tightly packed, into `out`.
pub fn luma(pixels: Pixels<'_>, width: usize, height: usize, out: &mut Vec<f32>) {
    out.clear();
    match pixels {
        Pixels::Rgb(rgb) => {
            assert_eq!(rgb.len(), width * height * 3, "RGB buffer size");
            // pdqhash (the wrapper the ecosystem hashes with) sums in f64, then rounds to
            // f32; Meta's C++ CLI sums in f32. The two differ in the last bit for about a
            // third of all colours, enough to flip bits near the median, so we follow the
            // wrapper.
            out.resize(width * height, 0.0);
            boxfilter::luma_rgb(rgb, out);
        }
        Pixels::Gray { data, stride } => {
            for row in 0..height {
                let line = &data[row * stride..row * stride + width];
                out.extend(line.iter().map(|&v| f32::from(v)));
            }
        }
        Pixels::VideoY { data, stride } => {
            let lut = limited_to_full_lut();
            for row in 0..height {
                let line = &data[row * stride..row * stride + width];
                out.extend(line.iter().map(|&v| lut[v as usize]));
            }
        }
    }
}

/// Full-range value for each limited-range 8-bit luma code: (y - 16) * 255 / 219, clamped.
pub fn limited_to_full_lut() -> &'static [f32; 256] {
    static LUT: OnceLock<[f32; 256]> = OnceLock::new();
    LUT.get_or_init(|| {
        let mut t = [0f32; 256];
        for (v, out) in t.iter_mut().enumerate() {
            let full = ((v as f32 - 16.0) * 255.0 / 219.0).round();
            *out = full.clamp(0.0, 255.0);
        }
        t
    })
}

/// Box-filter window per pass: half of a 1/64th block, rounded up.
pub fn jarosz_window(old_dim: usize, new_dim: usize) -> usize {
    old_dim.div_ceil(2 * new_dim)
}

/// Where the 64 decimation samples fall along a dimension of `dim` pixels: the reference's
/// `(int)((i + 0.5) * dim / 64)`, evaluated in double precision.
pub fn sample_positions(dim: usize) -> [u32; DOWN] {
    std::array::from_fn(|i| (((i as f64 + 0.5) * dim as f64) / DOWN as f64) as u32)
}

/// First pass along rows: every row of `input` (`rows x cols`, row-major) box-filtered into
/// `output`.
pub fn box_rows(input: &[f32], output: &mut [f32], rows: usize, cols: usize, window: usize) {
    crate::boxfilter::rows(input, output, rows, cols, window);
}

/// First pass along columns.
pub fn box_cols(input: &[f32], output: &mut [f32], rows: usize, cols: usize, window: usize) {
    crate::boxfilter::cols(input, output, rows, cols, window);
}

/// Second pass along rows, kept only at the 64 sampled columns: `output` is `rows x 64`. The
/// running sums still cover every pixel, so each kept value is the one a full pass computes.
pub fn box_rows_sampled(
    input: &[f32],
    output: &mut [f32],
    rows: usize,
    cols: usize,
    window: usize,
    at: &[u32; DOWN],
) {
    crate::boxfilter::rows_sampled(input, output, rows, cols, window, at);
}

/// Second pass along the 64 kept columns (`input` is `rows x 64`), kept only at the 64 sampled
/// rows: the decimated 64x64 image.
pub fn box_cols_sampled(
    input: &[f32],
    rows: usize,
    window: usize,
    at: &[u32; DOWN],
) -> [[f32; DOWN]; DOWN] {
    crate::boxfilter::cols_sampled(input, rows, window, at)
}

/// One running-sum box filter along a strided vector, with the reference's four phases (grow
/// the window, slide it, shrink it) and its exact order of float additions and subtractions.
pub fn box_1d(input: &[f32], output: &mut [f32], len: usize, stride: usize, window: usize) {
    let half = (window + 2) / 2;
    let phase1 = half - 1;
    let phase2 = window - half + 1;
    let phase3 = len.saturating_sub(window);
    let phase4 = half - 1;
    let (mut li, mut ri, mut oi) = (0usize, 0usize, 0usize);
    let mut sum = 0f32;
    let mut size = 0i32;
    for _ in 0..phase1 {
        sum += input[ri];
        size += 1;
        ri += stride;
    }
    for _ in 0..phase2 {
        sum += input[ri];
        size += 1;
        output[oi] = sum / size as f32;
        ri += stride;
        oi += stride;
    }
    for _ in 0..phase3 {
        sum += input[ri];
        sum -= input[li];
        output[oi] = sum / size as f32;
        li += stride;
        ri += stride;
        oi += stride;
    }
    for _ in 0..phase4 {
        sum -= input[li];
        size -= 1;
        output[oi] = sum / size as f32;
        li += stride;
        oi += stride;
    }
}

/// The reference's heuristic: the sum of quantised gradients, scaled to 0..=100.
#[allow(clippy::needless_range_loop)] // indexed as the reference is, rows i and i + 1
pub fn quality_metric(b: &[[f32; DOWN]; DOWN]) -> u8 {
    let mut sum: i32 = 0;
    for i in 0..DOWN - 1 {
        for j in 0..DOWN {
            let d = ((b[i][j] - b[i + 1][j]) * 100.0 / 255.0) as i32;
            sum += d.abs();
        }
    }
    for row in b.iter() {
        for j in 0..DOWN - 1 {
            let d = ((row[j] - row[j + 1]) * 100.0 / 255.0) as i32;
            sum += d.abs();
        }
    }
    (sum / 90).min(100) as u8
}

/// Rows 1..=16 of the 64-point DCT-II basis, computed in f64 and stored as f32 as the
/// reference does (the scale factor itself is rounded to f32 first).
pub fn dct_matrix() -> &'static [[f32; DOWN]; DCT] {
    static MATRIX: OnceLock<[[f32; DOWN]; DCT]> = OnceLock::new();
    MATRIX.get_or_init(|| {
        let scale = (2.0f64 / DOWN as f64).sqrt() as f32;
        let mut m = [[0f32; DOWN]; DCT];
        for (i, row) in m.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                let angle = (std::f64::consts::PI / 2.0 / DOWN as f64)
                    * (i + 1) as f64
                    * (2 * j + 1) as f64;
                *v = (f64::from(scale) * angle.cos()) as f32;
            }
        }
        m
    })
}

/// B = D A Dᵀ, accumulating in f32 in the reference's order.
pub fn dct64_to_16(a: &[[f32; DOWN]; DOWN]) -> [[f32; DCT]; DCT] {
    let d = dct_matrix();
    let mut t = [[0f32; DOWN]; DCT];
    for i in 0..DCT {
        for j in 0..DOWN {
            let mut sum = 0f32;
            for k in 0..DOWN {
                sum += d[i][k] * a[k][j];
            }
            t[i][j] = sum;
        }
    }
    let mut b = [[0f32; DCT]; DCT];
    for i in 0..DCT {
        for j in 0..DCT {
            let mut sum = 0f32;
            for k in 0..DOWN {
                sum += t[i][k] * d[j][k];
            }
            b[i][j] = sum;
        }
    }
    b
}

/// One bit per coefficient: set when above the (lower) median of all 256.
pub fn dct_to_bits(b: &[[f32; DCT]; DCT]) -> Hash256 {
    let flat: Vec<f32> = b.iter().flatten().copied().collect();
    let median = torben_median(&flat);
    let mut hash = Hash256::default();
    for (k, &v) in flat.iter().enumerate() {
        if v > median {
            hash.set_bit(k);
        }
    }
    hash
}

/// The DCT blocks of the 8 dihedral variants of an image, derived from the original's block
/// by sign changes and transposition exactly as the reference does, in [`DIHEDRAL_NAMES`]
/// order.
pub fn dihedral(b: &[[f32; DCT]; DCT]) -> [[[f32; DCT]; DCT]; 8] {
    let mut out = [[[0f32; DCT]; DCT]; 8];
    for i in 0..DCT {
        for j in 0..DCT {
            let v = b[i][j];
            let keep_if = |keep: bool| if keep { v } else { -v };
            out[0][i][j] = v;
            out[1][j][i] = keep_if(j & 1 == 1);
            out[2][i][j] = keep_if((i + j) & 1 == 0);
            out[3][j][i] = keep_if(i & 1 == 1);
            out[4][i][j] = keep_if(i & 1 == 1);
            out[5][i][j] = keep_if(j & 1 == 1);
            out[6][j][i] = v;
            out[7][j][i] = keep_if((i + j) & 1 == 0);
        }
    }
    out
}

/// Torben Mogensen's median search (no reordering of the input), returning the lower median
/// for even counts, as the reference does.
pub fn torben_median(m: &[f32]) -> f32 {
    let n = m.len();
    let half = n.div_ceil(2);
    let (mut min, mut max) = (m[0], m[0]);
    for &v in &m[1..] {
        min = min.min(v);
        max = max.max(v);
    }
    loop {
        let guess = (min + max) / 2.0;
        let (mut less, mut greater, mut equal) = (0usize, 0usize, 0usize);
        let (mut max_lt, mut min_gt) = (min, max);
        for &v in m {
            if v < guess {
                less += 1;
                if v > max_lt {
                    max_lt = v;
                }
            } else if v > guess {
                greater += 1;
                if v < min_gt {
                    min_gt = v;
                }
            } else {
                equal += 1;
            }
        }
        if less <= half && greater <= half {
            return if less >= half {
                max_lt
            } else if less + equal >= half {
                guess
            } else {
                min_gt
            };
        } else if less > greater {
            max = max_lt;
        } else {
            min = min_gt;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_keeps_word_order() {
        let text = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22";
        let h: Hash256 = text.parse().unwrap();
        assert_eq!(h.to_string(), text);
        // word 15 is printed first, so the last four digits are word 0
        assert_eq!(h.words[0], 0x9b22);
        assert_eq!(h.words[15], 0xf8f8);
    }

    #[test]
    fn bad_hex_is_rejected_with_a_reason() {
        assert_eq!("abc".parse::<Hash256>(), Err(ParseHashError::Length(3)));
        let mut s = "0".repeat(63);
        s.push('g');
        assert_eq!(s.parse::<Hash256>(), Err(ParseHashError::NotHex('g')));
    }

    #[test]
    fn distance_counts_differing_bits() {
        let a = Hash256::default();
        let mut b = Hash256::default();
        b.set_bit(0);
        b.set_bit(255);
        b.set_bit(100);
        assert_eq!(a.distance(&b), 3);
        assert_eq!(b.distance(&b), 0);
    }

    #[test]
    fn torben_returns_lower_median() {
        assert_eq!(torben_median(&[4.0, 1.0, 3.0, 2.0]), 2.0);
        assert_eq!(torben_median(&[5.0, 1.0, 3.0]), 3.0);
        assert_eq!(torben_median(&[7.0, 7.0, 7.0, 7.0]), 7.0);
    }

    #[test]
    fn box_filter_window_one_is_identity_on_integers() {
        let input = [1.0f32, 5.0, 2.0, 8.0];
        let mut out = [0f32; 4];
        box_1d(&input, &mut out, 4, 1, 1);
        assert_eq!(out, input);
    }

    #[test]
    fn box_filter_matches_the_reference_worked_example() {
        // window 7 over 0..16: the reference's comment lists the window sums
        let input: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let mut out = vec![0f32; 16];
        box_1d(&input, &mut out, 16, 1, 7);
        let sums = [
            6, 10, 15, 21, 28, 35, 42, 49, 56, 63, 70, 77, 84, 75, 65, 54,
        ];
        let sizes = [4, 5, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 5, 4];
        for i in 0..16 {
            assert_eq!(out[i], sums[i] as f32 / sizes[i] as f32, "index {i}");
        }
    }

    #[test]
    fn tiny_images_hash_to_zero_with_quality_zero() {
        let mut h = PdqHasher::new();
        let r = h.hash_rgb(&[200u8; 4 * 4 * 3], 4, 4);
        assert_eq!(
            r,
            PdqHash {
                hash: Hash256::default(),
                quality: 0
            }
        );
    }

    #[test]
    fn the_hasher_equals_the_four_separate_passes() {
        let mut hasher = PdqHasher::new();
        for (w, h) in [(5, 5), (64, 17), (130, 64), (333, 250), (1280, 720)] {
            let stride = w + 3;
            let data: Vec<u8> = (0..h * stride).map(|i| (i * 31 % 241) as u8).collect();
            let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 253) as u8).collect();
            for pixels in [
                Pixels::Gray {
                    data: &data,
                    stride,
                },
                Pixels::VideoY {
                    data: &data,
                    stride,
                },
                Pixels::Rgb(&rgb),
            ] {
                let (wr, wc) = (jarosz_window(w, DOWN), jarosz_window(h, DOWN));
                let mut l = Vec::new();
                luma(pixels, w, h, &mut l);
                let mut pass1 = vec![0f32; w * h];
                box_rows(&l, &mut pass1, h, w, wr);
                let mut pass2 = vec![0f32; w * h];
                box_cols(&pass1, &mut pass2, h, w, wc);
                let mut kept = vec![0f32; h * DOWN];
                box_rows_sampled(&pass2, &mut kept, h, w, wr, &sample_positions(w));
                let down = box_cols_sampled(&kept, h, wc, &sample_positions(h));
                let expected = dct64_to_16(&down);
                let ours = hasher.dct_block(pixels, w, h).unwrap();
                let bits = |b: &[[f32; DCT]; DCT]| -> Vec<u32> {
                    b.iter().flatten().map(|v| v.to_bits()).collect()
                };
                assert_eq!(bits(&ours), bits(&expected), "{w}x{h} {pixels:?}");
            }
        }
    }

    #[test]
    fn limited_range_expansion_maps_black_and_white() {
        let lut = limited_to_full_lut();
        assert_eq!(lut[16], 0.0);
        assert_eq!(lut[235], 255.0);
        assert_eq!(lut[0], 0.0);
        assert_eq!(lut[255], 255.0);
    }

    #[test]
    fn a_picture_and_its_negative_are_far_apart() {
        let (w, h) = (160, 120);
        let img: Vec<u8> = (0..w * h)
            .flat_map(|i| {
                let (x, y) = (i % w, i / w);
                let v = (((x * 7) ^ (y * 3)) % 256) as u8;
                [v, v / 2, 255 - v]
            })
            .collect();
        let neg: Vec<u8> = img.iter().map(|v| 255 - v).collect();
        let mut hasher = PdqHasher::new();
        let a = hasher.hash_rgb(&img, w, h);
        let b = hasher.hash_rgb(&neg, w, h);
        assert!(
            a.hash.distance(&b.hash) > 128,
            "negative should flip most bits"
        );
        assert_eq!(hasher.hash_rgb(&img, w, h), a, "hashing is deterministic");
    }
}
