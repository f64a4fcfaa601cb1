//! PDQ perceptual hash, computed exactly as Meta's reference implementation does.
//!
//! Every floating-point step mirrors the reference's order of operations (f32 accumulation,
//! the same running box sums, the DCT matrix computed in f64 and stored as f32, Torben's lower
//! median), so that the same pixels give the same 256 bits. This is the one CPU implementation
//! in the project: the reference for the GPU kernels and the fallback on GPU-less hosts.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// Side of the downsampled image the DCT runs on.
const DOWN: usize = 64;
/// Side of the kept block of DCT coefficients.
const DCT: usize = 16;
/// Images smaller than this in either dimension get an all-zero hash of quality 0.
pub const MIN_HASHABLE_DIM: usize = 5;
/// X,Y,X,Y passes of the box filter approximate a tent filter (Jarosz 2001).
const JAROSZ_PASSES: usize = 2;

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

/// Reusable working memory for hashing frames of one size after another without allocating.
#[derive(Default)]
pub struct PdqHasher {
    buf1: Vec<f32>,
    buf2: Vec<f32>,
}

impl PdqHasher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Hashes packed RGB pixels (`width * height * 3` bytes, row-major), computing luma exactly
    /// as the reference does for colour images.
    pub fn hash_rgb(&mut self, rgb: &[u8], width: usize, height: usize) -> PdqHash {
        assert_eq!(rgb.len(), width * height * 3, "RGB buffer size");
        self.buf1.clear();
        // pdqhash (the wrapper the ecosystem hashes with) sums in f64, then rounds to f32;
        // Meta's C++ CLI sums in f32. The two differ in the last bit for about a third of all
        // colours, enough to flip bits near the median, so we follow the wrapper.
        self.buf1.extend(rgb.chunks_exact(3).map(|p| {
            (f64::from(p[0]) * LUMA_R + f64::from(p[1]) * LUMA_G + f64::from(p[2]) * LUMA_B) as f32
        }));
        self.hash_buffer(width, height)
    }

    /// Hashes 8-bit luma given as full-range values (0 = black, 255 = white), `stride` bytes
    /// apart per row.
    pub fn hash_gray(
        &mut self,
        luma: &[u8],
        width: usize,
        height: usize,
        stride: usize,
    ) -> PdqHash {
        self.buf1.clear();
        for row in 0..height {
            let line = &luma[row * stride..row * stride + width];
            self.buf1.extend(line.iter().map(|&v| f32::from(v)));
        }
        self.hash_buffer(width, height)
    }

    /// Hashes the Y plane of a limited-range ("TV", 16..235) video frame: luma is expanded to
    /// full range first, since unexpanded Y compresses contrast and lowers the quality score.
    pub fn hash_video_luma(
        &mut self,
        y: &[u8],
        width: usize,
        height: usize,
        stride: usize,
    ) -> PdqHash {
        let lut = limited_to_full_lut();
        self.buf1.clear();
        for row in 0..height {
            let line = &y[row * stride..row * stride + width];
            self.buf1.extend(line.iter().map(|&v| lut[v as usize]));
        }
        self.hash_buffer(width, height)
    }

    /// Hashes luma already in `buf1` (row-major, `width * height` values).
    fn hash_buffer(&mut self, width: usize, height: usize) -> PdqHash {
        if width < MIN_HASHABLE_DIM || height < MIN_HASHABLE_DIM {
            return PdqHash {
                hash: Hash256::default(),
                quality: 0,
            };
        }
        let mut down = [[0f32; DOWN]; DOWN];
        if width == DOWN && height == DOWN {
            // The reference skips the blur for inputs that are already 64x64.
            for (i, row) in down.iter_mut().enumerate() {
                row.copy_from_slice(&self.buf1[i * DOWN..(i + 1) * DOWN]);
            }
        } else {
            self.buf2.resize(width * height, 0.0);
            jarosz_filter(&mut self.buf1, &mut self.buf2, height, width);
            decimate(&self.buf1, height, width, &mut down);
        }
        let quality = quality_metric(&down);
        let dct = dct64_to_16(&down);
        PdqHash {
            hash: dct_to_bits(&dct),
            quality,
        }
    }
}

/// Full-range value for each limited-range 8-bit luma code: (y - 16) * 255 / 219, clamped.
fn limited_to_full_lut() -> &'static [f32; 256] {
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
fn jarosz_window(old_dim: usize, new_dim: usize) -> usize {
    (old_dim + 2 * new_dim - 1) / (2 * new_dim)
}

fn jarosz_filter(buf1: &mut [f32], buf2: &mut [f32], rows: usize, cols: usize) {
    let win_rows = jarosz_window(cols, DOWN);
    let win_cols = jarosz_window(rows, DOWN);
    for _ in 0..JAROSZ_PASSES {
        for r in 0..rows {
            box_1d(&buf1[r * cols..], &mut buf2[r * cols..], cols, 1, win_rows);
        }
        for c in 0..cols {
            box_1d(&buf2[c..], &mut buf1[c..], rows, cols, win_cols);
        }
    }
}

/// One running-sum box filter along a strided vector, with the reference's four phases (grow
/// the window, slide it, shrink it) and its exact order of float additions and subtractions.
fn box_1d(input: &[f32], output: &mut [f32], len: usize, stride: usize, window: usize) {
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

/// Samples the blurred image at the centres of a 64x64 grid.
fn decimate(input: &[f32], rows: usize, cols: usize, out: &mut [[f32; DOWN]; DOWN]) {
    for (i, out_row) in out.iter_mut().enumerate() {
        let ini = (((i as f64 + 0.5) * rows as f64) / DOWN as f64) as usize;
        for (j, o) in out_row.iter_mut().enumerate() {
            let inj = (((j as f64 + 0.5) * cols as f64) / DOWN as f64) as usize;
            *o = input[ini * cols + inj];
        }
    }
}

/// The reference's heuristic: the sum of quantised gradients, scaled to 0..=100.
fn quality_metric(b: &[[f32; DOWN]; DOWN]) -> u8 {
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
fn dct64_to_16(a: &[[f32; DOWN]; DOWN]) -> [[f32; DCT]; DCT] {
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
fn dct_to_bits(b: &[[f32; DCT]; DCT]) -> Hash256 {
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

/// Torben Mogensen's median search (no reordering of the input), returning the lower median
/// for even counts, as the reference does.
fn torben_median(m: &[f32]) -> f32 {
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
