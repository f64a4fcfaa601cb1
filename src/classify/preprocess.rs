//! Pre-processing for the classifiers, on the CPU: a decoded picture becomes one frame's part
//! of a model's input tensor. The WGSL kernels in `shaders/classify_preprocess.wgsl` (driven by
//! [`super::gpu`]) are this code's twin: the same tables, the same weights and the same float
//! operations in the same order, so both give the same bits (tested on Mesa's lavapipe).
//!
//! Per frame, as [`InputSpec`] describes it:
//!
//! 1. **Colour.** YUV 4:2:0 to RGB in 0..255 as f32 (not rounded): limited range ("TV": luma
//!    16..235, chroma 16..240) expanded unless the picture says full range; the BT.601 or
//!    BT.709 matrix; chroma sampled nearest, the chroma of pixel (x, y) being sample
//!    (x / 2, y / 2), as libswscale's unscaled converter takes it. Each channel is clamped to
//!    0..=255. A grey picture (luma only) gives R = G = B; packed RGB is taken as is. On real
//!    frames this is within 0.5 of a float64 numpy conversion rounded to u8 (that rounding
//!    alone), and within 2.9 (mean 0.63) of libswscale's fixed-point converter, as ffmpeg
//!    runs it (`tests/classify_preprocess.rs` measures both).
//! 2. **Resize** to `resize_to` (or straight to the input size) with PIL's
//!    `Image.resize(size, Image.BILINEAR)` filter: separable, horizontal pass first; output
//!    pixel `i` is centred on source position `(i + 0.5) * scale`; the triangle's support
//!    widens with the downscale factor (`max(scale, 1)`, so shrinking is antialiased); its
//!    taps are clipped at the picture's edges and the weights normalised, all in f64 as PIL
//!    computes them (equal to PIL's own "F"-mode weights), then used as f32. Unlike PIL on
//!    8-bit images, values are not rounded to u8 between or after the passes: against the
//!    numpy + PIL pipeline the tensors differ by at most 1.35 (mean 0.14 to 0.29) in 0..255
//!    units on real frames, PIL's three roundings to u8.
//! 3. **Centre crop** to `width` x `height` at `((rw - w) / 2, (rh - h) / 2)`, as
//!    `PIL.Image.crop`. Only the kept outputs are computed (from only the source rows and
//!    columns they need): the same values as resizing all and cropping.
//! 4. **Channel order** (RGB or BGR), then `(v * scale - mean[c]) / std[c]` with `c` the
//!    tensor's channel, written planar `[3][H][W]` (layouts `nchw` and `ncthw`) or interleaved
//!    `[H][W][3]` (`nhwc`).
//!
//! Float operations, in the order both twins perform them: RGB from YUV is
//! `y[Y] + rv[V]`, `(y[Y] + gu[U]) + gv[V]`, `y[Y] + bu[U]` from tables of 256 f32 values
//! ([`ColorTables`]: `y[Y] = (Y - 16) * (255 / 219)` for limited range, `rv[V] = (V - 128) *
//! k` and so on, each a single f32 product of constants computed in f64), then clamped; each resize pass is
//! `acc = 0; acc = acc + v_k * w_k` over the taps in ascending order (a product rounded before
//! the sum, never a fused multiply-add); last `(acc * scale - mean) / std`.
//!
//! The portable path runs these four lanes at a time (R, G, B and a spare) and its horizontal
//! pass tap by tap over a block of outputs, with the taps zero-padded to the longest. On
//! x86-64 with AVX2, YUV pictures take the path in `preprocess_avx2.rs`: eight source rows
//! at a time, bit-identical to this path (tested), several times faster.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::{bail, ensure};

use super::gpu::{GpuPreprocessor, Timings};
use super::manifest::{ColorOrder, InputSpec, Layout};

/// Largest picture side accepted.
pub const MAX_SIDE: usize = 16384;

/// YUV to RGB matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Matrix {
    Bt601,
    Bt709,
}

/// A YUV 4:2:0 picture: 8-bit planes, chroma `ceil(width / 2)` x `ceil(height / 2)`.
#[derive(Clone, Copy, Debug)]
pub struct Yuv420<'a> {
    pub y: &'a [u8],
    pub y_stride: usize,
    pub u: &'a [u8],
    pub v: &'a [u8],
    pub c_stride: usize,
    pub width: usize,
    pub height: usize,
    /// 0..=255 codes ("PC", JPEG range); otherwise limited range, expanded.
    pub full_range: bool,
    pub matrix: Matrix,
}

/// A decoded picture to pre-process.
#[derive(Clone, Copy, Debug)]
pub enum Picture<'a> {
    Yuv420(Yuv420<'a>),
    /// Y only (no chroma): grey
    Gray {
        y: &'a [u8],
        stride: usize,
        width: usize,
        height: usize,
        full_range: bool,
    },
    /// packed 8-bit RGB (still images)
    Rgb {
        data: &'a [u8],
        width: usize,
        height: usize,
    },
}

impl Picture<'_> {
    pub fn width(&self) -> usize {
        match *self {
            Picture::Yuv420(p) => p.width,
            Picture::Gray { width, .. } | Picture::Rgb { width, .. } => width,
        }
    }

    pub fn height(&self) -> usize {
        match *self {
            Picture::Yuv420(p) => p.height,
            Picture::Gray { height, .. } | Picture::Rgb { height, .. } => height,
        }
    }

    /// Refuses an empty or oversized picture, and planes too short for its size and strides.
    pub fn check(&self) -> anyhow::Result<()> {
        let (w, h) = (self.width(), self.height());
        if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
            bail!("picture {w}x{h}: each side must be 1..={MAX_SIDE}");
        }
        let plane = |name: &str, len: usize, stride: usize, pw: usize, ph: usize| {
            ensure!(
                stride >= pw,
                "picture {w}x{h}: {name} stride {stride} is below its width {pw}"
            );
            let need = (ph - 1) * stride + pw;
            ensure!(
                len >= need,
                "picture {w}x{h}: {name} plane has {len} bytes, needs {need}"
            );
            Ok(())
        };
        match *self {
            Picture::Yuv420(p) => {
                let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
                plane("Y", p.y.len(), p.y_stride, w, h)?;
                plane("U", p.u.len(), p.c_stride, cw, ch)?;
                plane("V", p.v.len(), p.c_stride, cw, ch)?;
            }
            Picture::Gray { y, stride, .. } => plane("Y", y.len(), stride, w, h)?,
            Picture::Rgb { data, .. } => plane("RGB", data.len(), w * 3, w * 3, h)?,
        }
        Ok(())
    }
}

/// The colour conversion's constants for one range and matrix, computed in f64 and rounded
/// once to f32: the luma scale (limited range only) and each chroma component's share of R,
/// G and B per code away from 128.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColorConsts {
    /// `255 / 219` for limited range; `None` for full range (the code is the value).
    pub y_scale: Option<f32>,
    pub r_v: f32,
    pub g_u: f32,
    pub g_v: f32,
    pub b_u: f32,
}

impl ColorConsts {
    pub fn new(full_range: bool, matrix: Matrix) -> ColorConsts {
        let (kr, kb) = match matrix {
            Matrix::Bt601 => (0.299, 0.114),
            Matrix::Bt709 => (0.2126, 0.0722),
        };
        let kg = 1.0 - kr - kb;
        let c: f64 = if full_range { 1.0 } else { 255.0 / 224.0 };
        ColorConsts {
            y_scale: (!full_range).then_some((255.0f64 / 219.0) as f32),
            r_v: (2.0 * (1.0 - kr) * c) as f32,
            g_u: (-2.0 * kb * (1.0 - kb) / kg * c) as f32,
            g_v: (-2.0 * kr * (1.0 - kr) / kg * c) as f32,
            b_u: (2.0 * (1.0 - kb) * c) as f32,
        }
    }

    /// Luma code to its value in 0..255 (before clamping): `(Y - 16) * scale` in f32.
    #[inline(always)]
    pub fn luma(&self, code: u8) -> f32 {
        match self.y_scale {
            Some(k) => (f32::from(code) - 16.0) * k,
            None => f32::from(code),
        }
    }

    /// A chroma code's share: `(C - 128) * k` in f32.
    #[inline(always)]
    pub fn share(code: u8, k: f32) -> f32 {
        (f32::from(code) - 128.0) * k
    }
}

/// Lookup tables from 8-bit codes to f32, for one range and matrix: the luma in 0..255 and
/// each chroma code's share of R, G and B. Each entry is [`ColorConsts`]' f32 product for the
/// code, so code that computes the product in registers (the AVX2 path) gets the same bits as
/// code that looks it up (the portable path, the WGSL kernels).
#[derive(Debug)]
pub struct ColorTables {
    pub y: [f32; 256],
    /// V's share of R.
    pub r_v: [f32; 256],
    /// U's and V's shares of G (negative for positive chroma).
    pub g_u: [f32; 256],
    pub g_v: [f32; 256],
    /// U's share of B.
    pub b_u: [f32; 256],
}

impl ColorTables {
    /// Floats in [`flat`](Self::flat): the five tables in field order.
    pub const LEN: usize = 5 * 256;

    /// The tables for a range and matrix (built once).
    pub fn get(full_range: bool, matrix: Matrix) -> &'static ColorTables {
        static ALL: OnceLock<[ColorTables; 4]> = OnceLock::new();
        &ALL.get_or_init(|| {
            std::array::from_fn(|i| {
                let (full, matrix) = Self::params(i);
                Self::build(full, matrix)
            })
        })[Self::index(full_range, matrix)]
    }

    /// Where the tables of a range and matrix are among the four.
    pub fn index(full_range: bool, matrix: Matrix) -> usize {
        usize::from(full_range) * 2 + usize::from(matrix == Matrix::Bt709)
    }

    fn params(index: usize) -> (bool, Matrix) {
        let matrix = if index % 2 == 1 {
            Matrix::Bt709
        } else {
            Matrix::Bt601
        };
        (index >= 2, matrix)
    }

    fn build(full_range: bool, matrix: Matrix) -> ColorTables {
        let k = ColorConsts::new(full_range, matrix);
        let table = |f: &dyn Fn(u8) -> f32| std::array::from_fn(|c| f(c as u8));
        ColorTables {
            y: table(&|c| k.luma(c)),
            r_v: table(&|c| ColorConsts::share(c, k.r_v)),
            g_u: table(&|c| ColorConsts::share(c, k.g_u)),
            g_v: table(&|c| ColorConsts::share(c, k.g_v)),
            b_u: table(&|c| ColorConsts::share(c, k.b_u)),
        }
    }

    /// All four sets of tables, in [`index`](Self::index) order, each the five tables in
    /// field order (what the GPU kernels read).
    pub fn flat() -> Vec<f32> {
        let mut v = Vec::with_capacity(4 * Self::LEN);
        for i in 0..4 {
            let (full, matrix) = Self::params(i);
            let t = Self::get(full, matrix);
            for table in [&t.y, &t.r_v, &t.g_u, &t.g_v, &t.b_u] {
                v.extend_from_slice(table);
            }
        }
        v
    }
}

#[inline(always)]
fn clamp(v: f32) -> f32 {
    // the kernels' min(max(v, 0), 255) (no NaN reaches here; comparisons compile to the
    // plain max and min instructions, `f32::max` to NaN-aware sequences)
    let v = if v > 0.0 { v } else { 0.0 };
    if v < 255.0 {
        v
    } else {
        255.0
    }
}

/// PIL's bilinear filter.
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// One axis of the resize: for each kept output, its first source index and its weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Taps {
    /// First source index of each output.
    pub first: Vec<u32>,
    /// Taps of each output.
    pub count: Vec<u32>,
    /// Weights of output `o` at `o * ksize ..`, zero-padded to `ksize`.
    pub weights: Vec<f32>,
    pub ksize: usize,
}

impl Taps {
    /// PIL's `precompute_coeffs` for a resize from `in_size` to `out_size`, for the outputs
    /// `first_out .. first_out + n` only. Zero weights at either end are dropped (they add
    /// +0.0 to a non-negative sum: no change).
    pub fn new(in_size: usize, out_size: usize, first_out: usize, n: usize) -> Taps {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filterscale;
        let ss = 1.0 / filterscale;
        let mut rows: Vec<(u32, Vec<f32>)> = Vec::with_capacity(n);
        let mut w = Vec::new();
        for xx in first_out..first_out + n {
            let center = (xx as f64 + 0.5) * scale;
            // truncation towards zero, as C's (int)
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            w.clear();
            let mut ww = 0.0;
            for x in xmin..xmax {
                let v = triangle(((x as f64) - center + 0.5) * ss);
                w.push(v);
                ww += v;
            }
            let mut ws: Vec<f32> = w
                .iter()
                .map(|&v| if ww != 0.0 { (v / ww) as f32 } else { v as f32 })
                .collect();
            let mut start = xmin as u32;
            let lead = ws.iter().take_while(|&&v| v == 0.0).count();
            ws.drain(..lead);
            start += lead as u32;
            while ws.last() == Some(&0.0) {
                ws.pop();
            }
            rows.push((start, ws));
        }
        let ksize = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(1);
        let mut taps = Taps {
            first: Vec::with_capacity(n),
            count: Vec::with_capacity(n),
            weights: vec![0.0; n * ksize],
            ksize,
        };
        for (o, (start, ws)) in rows.into_iter().enumerate() {
            taps.first.push(start);
            taps.count.push(ws.len() as u32);
            taps.weights[o * ksize..o * ksize + ws.len()].copy_from_slice(&ws);
        }
        taps
    }

    pub fn len(&self) -> usize {
        self.first.len()
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_empty()
    }

    /// Output `o`'s first source index and weights.
    #[inline(always)]
    pub fn of(&self, o: usize) -> (usize, &[f32]) {
        let n = self.count[o] as usize;
        (
            self.first[o] as usize,
            &self.weights[o * self.ksize..o * self.ksize + n],
        )
    }

    /// The source indices any output reads: `lo..hi`.
    pub fn span(&self) -> (usize, usize) {
        let mut lo = usize::MAX;
        let mut hi = 0;
        for o in 0..self.len() {
            if self.count[o] > 0 {
                lo = lo.min(self.first[o] as usize);
                hi = hi.max((self.first[o] + self.count[o]) as usize);
            }
        }
        if hi == 0 {
            (0, 0)
        } else {
            (lo, hi)
        }
    }
}

/// Both axes of the resize and crop from one source size.
#[derive(Debug, Clone, PartialEq)]
pub struct Resample {
    pub x: Taps,
    pub y: Taps,
    /// Source columns and rows read: `x_lo..x_hi`, `y_lo..y_hi`.
    pub x_lo: usize,
    pub x_hi: usize,
    pub y_lo: usize,
    pub y_hi: usize,
    /// The CPU's horizontal pass runs tap by tap over all outputs: each output's first
    /// column from `x_lo`, and the weights tap-major (`k * width + j`), zero-padded to
    /// `x.ksize` taps. A padded tap adds +0.0 to a sum that is never -0.0: no change.
    x_from: Vec<usize>,
    x_by_tap: Vec<f32>,
}

impl Resample {
    /// From a `src_w` x `src_h` picture, for a spec's resize and crop.
    pub fn new(spec: &InputSpec, src_w: usize, src_h: usize) -> Resample {
        let (rw, rh) = spec.resized();
        let (rw, rh) = (rw as usize, rh as usize);
        let (w, h) = (spec.width as usize, spec.height as usize);
        let x = Taps::new(src_w, rw, (rw - w) / 2, w);
        let y = Taps::new(src_h, rh, (rh - h) / 2, h);
        let (x_lo, x_hi) = x.span();
        let (y_lo, y_hi) = y.span();
        let x_from = x.first.iter().map(|&f| f as usize - x_lo).collect();
        let mut x_by_tap = vec![0.0; w * x.ksize];
        for j in 0..w {
            for k in 0..x.ksize {
                x_by_tap[k * w + j] = x.weights[j * x.ksize + k];
            }
        }
        Resample {
            x,
            y,
            x_lo,
            x_hi,
            y_lo,
            y_hi,
            x_from,
            x_by_tap,
        }
    }
}

/// [`Resample`]s per source size, built once each.
#[derive(Debug)]
pub struct ResampleCache {
    spec: InputSpec,
    map: HashMap<(usize, usize), Arc<Resample>>,
}

/// Source sizes kept; more (a stream changing size often) start the cache afresh.
const CACHE_SIZES: usize = 64;

impl ResampleCache {
    pub fn new(spec: &InputSpec) -> Self {
        ResampleCache {
            spec: spec.clone(),
            map: HashMap::new(),
        }
    }

    pub fn get(&mut self, w: usize, h: usize) -> Arc<Resample> {
        if let Some(r) = self.map.get(&(w, h)) {
            return r.clone();
        }
        if self.map.len() >= CACHE_SIZES {
            self.map.clear();
        }
        let r = Arc::new(Resample::new(&self.spec, w, h));
        self.map.insert((w, h), r.clone());
        r
    }
}

/// Why a spec cannot be pre-processed, if it cannot (the manifest checks this too; a spec
/// built in code may not have been).
pub fn check_spec(spec: &InputSpec) -> anyhow::Result<()> {
    let (rw, rh) = spec.resized();
    ensure!(
        spec.width > 0 && spec.height > 0 && spec.width <= 8192 && spec.height <= 8192,
        "input size {}x{} is out of range",
        spec.width,
        spec.height
    );
    ensure!(
        rw >= spec.width && rh >= spec.height && rw <= 8192 && rh <= 8192,
        "resize to {rw}x{rh} must be at least the input size {}x{} and at most 8192",
        spec.width,
        spec.height
    );
    Ok(())
}

/// Which RGB channel each tensor channel takes.
pub fn channel_order(color: ColorOrder) -> [usize; 3] {
    match color {
        ColorOrder::Rgb => [0, 1, 2],
        ColorOrder::Bgr => [2, 1, 0],
    }
}

/// A pixel during the resize: R, G, B and a spare lane (four lanes vectorise).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(16))]
struct Px([f32; 4]);

#[inline(always)]
fn add(Px(a): Px, Px(b): Px) -> Px {
    Px([a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3]])
}

#[inline(always)]
fn madd(Px(acc): Px, Px(p): Px, w: f32) -> Px {
    Px([
        acc[0] + p[0] * w,
        acc[1] + p[1] * w,
        acc[2] + p[2] * w,
        acc[3] + p[3] * w,
    ])
}

/// The CPU twin of the pre-processing kernels. Keeps the spec, the weights per source size and
/// its scratch rows, so a frame allocates nothing once its size has been seen.
pub struct Preprocessor {
    spec: InputSpec,
    spec_ok: Result<(), String>,
    order: [usize; 3],
    cache: ResampleCache,
    /// One converted source row (the columns the resize reads).
    row: Vec<Px>,
    /// The horizontal pass: one row of outputs per source row read.
    tmp: Vec<Px>,
    /// One output row of the vertical pass.
    acc: Vec<Px>,
    /// Each chroma sample's shares of R, G (U's) and B, and of G (V's), for the chroma row
    /// in use.
    chroma: Vec<[Px; 2]>,
    /// The AVX2 path's buffers, where the CPU has AVX2 (YUV pictures take it).
    #[cfg(target_arch = "x86_64")]
    avx2: Option<Box<super::preprocess_avx2::Scratch>>,
}

impl Preprocessor {
    /// The fastest path this CPU runs.
    pub fn new(spec: &InputSpec) -> Self {
        let mut p = Self::portable(spec);
        #[cfg(target_arch = "x86_64")]
        if super::preprocess_avx2::available() {
            p.avx2 = Some(Box::default());
        }
        p
    }

    /// The portable path only (what the fast paths are tested against).
    pub fn portable(spec: &InputSpec) -> Self {
        Preprocessor {
            spec: spec.clone(),
            spec_ok: check_spec(spec).map_err(|e| format!("{e:#}")),
            order: channel_order(spec.color),
            cache: ResampleCache::new(spec),
            row: Vec::new(),
            tmp: Vec::new(),
            acc: Vec::new(),
            chroma: Vec::new(),
            #[cfg(target_arch = "x86_64")]
            avx2: None,
        }
    }

    /// Which path YUV pictures take: `"avx2"` or `"portable"`.
    pub fn path(&self) -> &'static str {
        #[cfg(target_arch = "x86_64")]
        if self.avx2.is_some() {
            return "avx2";
        }
        "portable"
    }

    pub fn spec(&self) -> &InputSpec {
        &self.spec
    }

    /// Pre-processes one picture into `out` (`spec.frame_len()` floats).
    pub fn run(&mut self, pic: &Picture<'_>, out: &mut [f32]) -> anyhow::Result<()> {
        if let Err(e) = &self.spec_ok {
            bail!("{e}");
        }
        pic.check()?;
        ensure!(
            out.len() == self.spec.frame_len(),
            "output has {} floats, the frame needs {}",
            out.len(),
            self.spec.frame_len()
        );
        let rs = self.cache.get(pic.width(), pic.height());
        #[cfg(target_arch = "x86_64")]
        if let (Picture::Yuv420(p), Some(scratch)) = (pic, self.avx2.as_deref_mut()) {
            // SAFETY: `avx2` is set only where the CPU has AVX2; the picture was checked, `rs`
            // is for its size and `out` was checked against the spec.
            unsafe {
                super::preprocess_avx2::run(p, &rs, &self.spec, self.order, scratch, out);
            }
            return Ok(());
        }
        let (ow, oh) = (self.spec.width as usize, self.spec.height as usize);
        // the row, and room for the padded taps past its end (read as zeros)
        let ks = rs.x.ksize;
        self.row.clear();
        self.row.resize(rs.x_hi - rs.x_lo + ks, Px::default());
        self.tmp.resize((rs.y_hi - rs.y_lo) * ow, Px::default());
        self.acc.resize(ow, Px::default());

        // convert each source row read, and resize it horizontally: tap by tap over all
        // outputs, so each output's sum runs in the order of its taps
        let mut chroma_row = usize::MAX;
        for r in rs.y_lo..rs.y_hi {
            let width = rs.x_hi - rs.x_lo;
            convert_row(
                pic,
                r,
                rs.x_lo,
                &mut self.row[..width],
                &mut self.chroma,
                &mut chroma_row,
            );
            let dst = &mut self.tmp[(r - rs.y_lo) * ow..(r - rs.y_lo + 1) * ow];
            let mut j = 0;
            while j + H_BLOCK <= ow {
                let acc: [Px; H_BLOCK] = horizontal_block(&self.row, &rs, j, ow);
                dst[j..j + H_BLOCK].copy_from_slice(&acc);
                j += H_BLOCK;
            }
            while j < ow {
                let [acc] = horizontal_block::<1>(&self.row, &rs, j, ow);
                dst[j] = acc;
                j += 1;
            }
        }

        // then vertically, a row of outputs at a time, the taps in the same order
        let plane = ow * oh;
        let interleaved = self.spec.layout == Layout::Nhwc;
        for i in 0..oh {
            let (first, ws) = rs.y.of(i);
            self.acc.fill(Px::default());
            for (k, &w) in ws.iter().enumerate() {
                let r = first + k - rs.y_lo;
                let src = &self.tmp[r * ow..(r + 1) * ow];
                for (a, p) in self.acc.iter_mut().zip(src) {
                    *a = madd(*a, *p, w);
                }
            }
            for c in 0..3 {
                let s = self.order[c];
                let (scale, mean, std) = (self.spec.scale, self.spec.mean[c], self.spec.std[c]);
                if interleaved {
                    let row = &mut out[i * ow * 3..(i + 1) * ow * 3];
                    for (j, a) in self.acc.iter().enumerate() {
                        row[j * 3 + c] = (a.0[s] * scale - mean) / std;
                    }
                } else {
                    let row = &mut out[c * plane + i * ow..c * plane + (i + 1) * ow];
                    for (o, a) in row.iter_mut().zip(&self.acc) {
                        *o = (a.0[s] * scale - mean) / std;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Outputs of the horizontal pass computed together: independent sums, so the adds of one
/// do not wait for another's.
const H_BLOCK: usize = 8;

/// Outputs `j .. j + N` of the horizontal pass over a converted row, each sum over its taps in
/// ascending order from 0.0.
#[inline(always)]
fn horizontal_block<const N: usize>(row: &[Px], rs: &Resample, j: usize, ow: usize) -> [Px; N] {
    let from: [usize; N] = std::array::from_fn(|b| rs.x_from[j + b]);
    let mut acc = [Px::default(); N];
    for k in 0..rs.x.ksize {
        let ws = &rs.x_by_tap[k * ow + j..k * ow + j + N];
        for b in 0..N {
            acc[b] = madd(acc[b], row[from[b] + k], ws[b]);
        }
    }
    acc
}

/// Source row `r`, columns `x0 .. x0 + row.len()`, as clamped RGB. For YUV, `chroma` holds
/// the shares of chroma row `*chroma_row`, looked up once for the two rows that share it.
fn convert_row(
    pic: &Picture<'_>,
    r: usize,
    x0: usize,
    row: &mut [Px],
    chroma: &mut Vec<[Px; 2]>,
    chroma_row: &mut usize,
) {
    match *pic {
        Picture::Yuv420(p) => {
            let t = ColorTables::get(p.full_range, p.matrix);
            let (c0, c1) = (x0 / 2, (x0 + row.len()).div_ceil(2));
            if *chroma_row != r / 2 {
                *chroma_row = r / 2;
                let at = (r / 2) * p.c_stride;
                let (u, v) = (&p.u[at + c0..at + c1], &p.v[at + c0..at + c1]);
                chroma.clear();
                chroma.extend(u.iter().zip(v).map(|(&u, &v)| {
                    let (u, v) = (u as usize, v as usize);
                    [
                        Px([t.r_v[v], t.g_u[u], t.b_u[u], 0.0]),
                        Px([0.0, t.g_v[v], 0.0, 0.0]),
                    ]
                }));
            }
            // R = l + rv, G = (l + gu) + gv, B = l + bu, four lanes at a time: R and B gain a
            // + 0.0, exact as neither is ever -0.0 (the tables' only -0.0 are gu and gv at 128)
            let pixel = |yy: u8, [c1, c2]: [Px; 2]| {
                let l = t.y[yy as usize];
                // (the spare lane too, so that all four lanes vary alike and vectorise)
                let Px(s) = add(add(Px([l; 4]), c1), c2);
                Px([clamp(s[0]), clamp(s[1]), clamp(s[2]), clamp(s[3])])
            };
            let y = &p.y[r * p.y_stride + x0..][..row.len()];
            // an odd first column has its chroma sample alone; then pairs share one
            let odd = x0 % 2;
            if odd == 1 {
                row[0] = pixel(y[0], chroma[0]);
            }
            let pairs = row[odd..].chunks_mut(2).zip(y[odd..].chunks(2));
            for (i, (px, yy)) in pairs.enumerate() {
                let c = chroma[odd + i];
                for (px, &yy) in px.iter_mut().zip(yy) {
                    *px = pixel(yy, c);
                }
            }
        }
        Picture::Gray {
            y,
            stride,
            full_range,
            ..
        } => {
            let t = ColorTables::get(full_range, Matrix::Bt601);
            let y = &y[r * stride + x0..][..row.len()];
            for (px, &yy) in row.iter_mut().zip(y) {
                let l = clamp(t.y[yy as usize]);
                *px = Px([l, l, l, 0.0]);
            }
        }
        Picture::Rgb { data, width, .. } => {
            let src = &data[(r * width + x0) * 3..][..row.len() * 3];
            for (px, s) in row.iter_mut().zip(src.chunks_exact(3)) {
                *px = Px([f32::from(s[0]), f32::from(s[1]), f32::from(s[2]), 0.0]);
            }
        }
    }
}

/// Pre-processing on either backend, for the pipeline.
// one per model: the CPU variant's size does not matter
#[allow(clippy::large_enum_variant)]
pub enum Preprocess {
    Cpu(Preprocessor),
    Gpu(Box<GpuPreprocessor>),
}

impl Preprocess {
    /// Pre-processes a batch, frame `i` at `i * spec.frame_len()` of `out`.
    pub fn run_batch(&mut self, pics: &[Picture<'_>], out: &mut [f32]) -> anyhow::Result<Timings> {
        match self {
            Preprocess::Gpu(g) => g.run_batch(pics, out),
            Preprocess::Cpu(p) => {
                let len = p.spec.frame_len();
                ensure!(
                    out.len() == pics.len() * len,
                    "output has {} floats, {} frames need {}",
                    out.len(),
                    pics.len(),
                    pics.len() * len
                );
                let started = Instant::now();
                for (i, pic) in pics.iter().enumerate() {
                    p.run(pic, &mut out[i * len..(i + 1) * len])?;
                }
                Ok(Timings {
                    compute: started.elapsed(),
                    ..Timings::default()
                })
            }
        }
    }

    /// `"cpu"` or `"gpu"`.
    pub fn backend(&self) -> &'static str {
        match self {
            Preprocess::Cpu(_) => "cpu",
            Preprocess::Gpu(_) => "gpu",
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn spec(
        layout: Layout,
        w: u32,
        h: u32,
        color: ColorOrder,
        resize_to: Option<[u32; 2]>,
    ) -> InputSpec {
        InputSpec {
            name: "input".into(),
            layout,
            width: w,
            height: h,
            frames: 1,
            color,
            scale: 1.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            resize_to,
        }
    }

    fn weights_of(t: &Taps, o: usize) -> (usize, Vec<f32>) {
        let (first, ws) = t.of(o);
        (first, ws.to_vec())
    }

    /// PIL's own weights, read back from `Image.resize` of one-hot rows in mode "F" (which
    /// filters with its f64 weights, stored as f32) with Pillow 11.
    #[test]
    fn resize_weights_are_pils() {
        // shrink 10 -> 4: scale 2.5, support 2.5, the triangle five taps wide
        let t = Taps::new(10, 4, 0, 4);
        assert_eq!(
            weights_of(&t, 0),
            (
                0,
                vec![0.318_181_8, 0.409_090_9, 0.227_272_73, 0.045_454_547]
            )
        );
        assert_eq!(weights_of(&t, 1), (1, vec![0.04, 0.2, 0.36, 0.28, 0.12]));
        assert_eq!(
            weights_of(&t, 3),
            (
                6,
                vec![0.045_454_547, 0.227_272_73, 0.409_090_9, 0.318_181_8]
            )
        );
        // enlarge 3 -> 7: the edges clip to a single tap
        let t = Taps::new(3, 7, 0, 7);
        assert_eq!(weights_of(&t, 0), (0, vec![1.0]));
        assert_eq!(weights_of(&t, 1), (0, vec![0.857_142_87, 0.142_857_15]));
        assert_eq!(weights_of(&t, 6), (2, vec![1.0]));
        // 1920 -> 224, bit for bit
        let t = Taps::new(1920, 224, 0, 224);
        let (first, ws) = weights_of(&t, 0);
        assert_eq!(first, 0);
        assert_eq!(ws.len(), 13);
        assert_eq!(ws[0].to_bits(), 1_033_390_851);
        assert_eq!(ws[1].to_bits(), 1_035_476_365);
        assert_eq!(ws[12], 0.005_549_389_4);
        let (first, ws) = weights_of(&t, 1);
        assert_eq!((first, ws.len()), (4, 17));
        assert_eq!(ws[0].to_bits(), 994_013_292);
        assert_eq!(ws[2].to_bits(), 1_022_838_411);
        let (first, ws) = weights_of(&t, 223);
        assert_eq!((first, ws.len()), (1907, 13));
        assert_eq!(ws[0].to_bits(), 1_001_772_967);
        // cropping computes the same outputs as resizing all
        let all = Taps::new(1920, 256, 0, 256);
        let crop = Taps::new(1920, 256, 16, 224);
        for o in 0..224 {
            assert_eq!(weights_of(&crop, o), weights_of(&all, o + 16));
        }
    }

    #[test]
    fn same_size_leaves_every_value() {
        let t = Taps::new(5, 5, 0, 5);
        for o in 0..5 {
            assert_eq!(weights_of(&t, o), (o, vec![1.0]));
        }
        // an RGB picture the size of the input comes through unchanged
        let (w, h) = (7, 5);
        let data: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 256) as u8).collect();
        let mut p = Preprocessor::new(&spec(Layout::Nhwc, 7, 5, ColorOrder::Rgb, None));
        let mut out = vec![0.0; w * h * 3];
        p.run(
            &Picture::Rgb {
                data: &data,
                width: w,
                height: h,
            },
            &mut out,
        )
        .unwrap();
        let want: Vec<f32> = data.iter().map(|&v| f32::from(v)).collect();
        assert_eq!(out, want);
    }

    /// A 2x2 RGB picture, not resized: where each value lands, per layout and colour order,
    /// with normalisation by the tensor's channel.
    #[test]
    fn layout_colour_order_and_normalisation_land_where_the_tensor_wants_them() {
        // pixel (x, y) = [R, G, B]
        let px = [[10u8, 20, 30], [40, 50, 60], [70, 80, 90], [100, 110, 120]];
        let data: Vec<u8> = px.iter().flatten().copied().collect();
        let pic = Picture::Rgb {
            data: &data,
            width: 2,
            height: 2,
        };
        let run = |layout, color| {
            let mut s = spec(layout, 2, 2, color, None);
            s.scale = 0.5;
            s.mean = [1.0, 2.0, 3.0];
            s.std = [2.0, 4.0, 8.0];
            let mut out = vec![0.0; 12];
            Preprocessor::new(&s).run(&pic, &mut out).unwrap();
            out
        };
        let norm = |v: u8, c: usize| (f32::from(v) * 0.5 - [1.0, 2.0, 3.0][c]) / [2.0, 4.0, 8.0][c];
        // planar, RGB: R plane, G plane, B plane, pixels row by row
        let want: Vec<f32> = (0..3)
            .flat_map(|c| px.iter().map(move |p| norm(p[c], c)))
            .collect();
        assert_eq!(run(Layout::Nchw, ColorOrder::Rgb), want);
        assert_eq!(run(Layout::Ncthw, ColorOrder::Rgb), want);
        // interleaved, BGR: tensor channel 0 is blue, normalised with mean[0] and std[0]
        let want: Vec<f32> = px
            .iter()
            .flat_map(|p| (0..3).map(move |c| norm(p[2 - c], c)))
            .collect();
        assert_eq!(run(Layout::Nhwc, ColorOrder::Bgr), want);
        assert_eq!(want[0], (30.0 * 0.5 - 1.0) / 2.0);
    }

    #[test]
    fn limited_range_yuv_expands_and_clamps_with_nearest_chroma() {
        // 3x3: chroma 2x2, the last column and row take the second chroma sample
        let y = [16u8, 235, 126, 16, 235, 126, 0, 255, 16];
        let u = [128u8, 128, 128, 240];
        let v = [128u8, 240, 128, 128];
        let pic = Picture::Yuv420(Yuv420 {
            y: &y,
            y_stride: 3,
            u: &u,
            v: &v,
            c_stride: 2,
            width: 3,
            height: 3,
            full_range: false,
            matrix: Matrix::Bt601,
        });
        let mut out = vec![0.0; 27];
        let mut p = Preprocessor::new(&spec(Layout::Nhwc, 3, 3, ColorOrder::Rgb, None));
        p.run(&pic, &mut out).unwrap();
        let at = |x: usize, y: usize| &out[(y * 3 + x) * 3..][..3];
        // black and white, grey chroma
        assert_eq!(at(0, 0), [0.0; 3]);
        assert_eq!(at(1, 0), [255.0; 3]);
        // (2, 0) takes chroma (1, 0): V = 240, red at its limit
        let l126 = (126.0 - 16.0) * 255.0 / 219.0;
        assert_eq!(at(2, 0)[0], 255.0);
        assert!((f64::from(at(2, 0)[1]) - (l126 - 0.714_136 * 127.5)).abs() < 0.01);
        // luma is the f32 product (126 - 16) * f32(255 / 219)
        let l126_f32 = 110.0f32 * (255.0f64 / 219.0) as f32;
        assert!((f64::from(l126_f32) - l126).abs() < 1e-4);
        assert_eq!(at(2, 0)[2], l126_f32);
        // codes below 16 and above 235 clamp
        assert_eq!(at(0, 2), [0.0; 3]);
        assert_eq!(at(1, 2), [255.0; 3]);
        // (2, 2) takes chroma (1, 1): U = 240, blue from black, green clamped
        assert_eq!(at(2, 2)[..2], [0.0, 0.0]);
        assert!((f64::from(at(2, 2)[2]) - 1.772 * 127.5).abs() < 0.01);
        // grey at 126: (126 - 16) * 255 / 219, not rounded
        // (2, 1) shares (2, 0)'s luma and chroma sample
        assert_eq!(at(2, 1), at(2, 0));
        let grey = l126_f32;
        // the same luma as a grey picture gives the same
        let mut g = vec![0.0; 27];
        p.run(
            &Picture::Gray {
                y: &y,
                stride: 3,
                width: 3,
                height: 3,
                full_range: false,
            },
            &mut g,
        )
        .unwrap();
        assert_eq!(&g[(3 + 2) * 3..][..3], [grey; 3]);
    }

    #[test]
    fn refuses_short_planes_and_wrong_sizes() {
        let y = vec![0u8; 100];
        let c = vec![0u8; 25];
        let mut p = Preprocessor::new(&spec(Layout::Nchw, 4, 4, ColorOrder::Rgb, None));
        let mut out = vec![0.0; 48];
        let yuv = |width, height, y_stride, c_stride| {
            Picture::Yuv420(Yuv420 {
                y: &y,
                y_stride,
                u: &c,
                v: &c,
                c_stride,
                width,
                height,
                full_range: false,
                matrix: Matrix::Bt709,
            })
        };
        p.run(&yuv(10, 10, 10, 5), &mut out).unwrap();
        p.run(&yuv(9, 9, 10, 5), &mut out).unwrap();
        for (pic, want) in [
            (yuv(0, 10, 10, 5), "each side"),
            (yuv(10, 11, 10, 5), "Y plane has 100 bytes"),
            (yuv(10, 10, 9, 5), "stride 9 is below"),
            (yuv(11, 10, 11, 6), "Y plane"),
            (yuv(10, 10, 10, 4), "U stride 4"),
        ] {
            let e = p.run(&pic, &mut out).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let e = p.run(&yuv(10, 10, 10, 5), &mut out[..47]).unwrap_err();
        assert!(e.to_string().contains("needs 48"), "{e}");
        let rgb = Picture::Rgb {
            data: &y[..47],
            width: 4,
            height: 4,
        };
        assert!(p.run(&rgb, &mut out).is_err());
        let mut bad = spec(Layout::Nchw, 4, 4, ColorOrder::Rgb, Some([3, 8]));
        let e = Preprocessor::new(&bad).run(&yuv(10, 10, 10, 5), &mut out);
        assert!(e.unwrap_err().to_string().contains("at least"));
        bad.resize_to = None;
        bad.width = 0;
        assert!(Preprocessor::new(&bad)
            .run(&yuv(10, 10, 10, 5), &mut out)
            .is_err());
    }
}
