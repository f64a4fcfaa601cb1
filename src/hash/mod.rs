//! Perceptual hashing of sampled frames.
//!
//! PDQ has one CPU implementation, the `livewatch-pdq` crate in `crates/pdq` (re-exported here
//! as `pdq`): identical to Meta's reference on identical pixels, and kept in its own crate so it
//! is compiled optimised even in debug builds. The WGSL kernels in `gpu` mirror it.

pub mod gpu;
pub use livewatch_pdq as pdq;

pub use pdq::{Hash256, PdqDihedral, PdqHash, PdqHasher, Pixels};

use std::fmt;
use std::path::Path;

use anyhow::Context as _;

use crate::config::{AdapterSelector, HashBackend, HashConfig};

/// A decoded still image, packed 8-bit RGB.
#[derive(Clone, Copy, Debug)]
pub struct Image<'a> {
    pub rgb: &'a [u8],
    pub width: usize,
    pub height: usize,
}

/// A video frame's 8-bit luma plane.
#[derive(Clone, Copy, Debug)]
pub struct Luma<'a> {
    pub data: &'a [u8],
    pub width: usize,
    pub height: usize,
    pub stride: usize,
    /// 0..=255 already (JPEG range); otherwise limited range, expanded before hashing.
    pub full_range: bool,
}

impl<'a> Luma<'a> {
    fn pixels(&self) -> Pixels<'a> {
        if self.full_range {
            Pixels::Gray {
                data: self.data,
                stride: self.stride,
            }
        } else {
            Pixels::VideoY {
                data: self.data,
                stride: self.stride,
            }
        }
    }
}

/// What hashes: the CPU implementation, or the WGSL kernels on a GPU adapter.
pub enum Engine {
    Cpu(PdqHasher),
    Gpu(Box<gpu::GpuHasher>),
}

/// Which backend and adapter an [`Engine`] runs on, for logs, metrics and the status API.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BackendInfo {
    /// `cpu` or `gpu`.
    pub backend: &'static str,
    /// The GPU adapter's name, or the CPU path's instruction set.
    pub adapter: String,
    /// wgpu's device type (`DiscreteGpu`, `Cpu` for a software rasteriser ...); `-` on the CPU.
    pub device_type: String,
    /// Graphics API and driver, when on a GPU.
    pub driver: String,
}

impl BackendInfo {
    /// A GPU adapter's name, type and driver.
    pub fn gpu(a: &wgpu::AdapterInfo) -> Self {
        BackendInfo {
            backend: "gpu",
            adapter: a.name.clone(),
            device_type: format!("{:?}", a.device_type),
            driver: format!("{:?} {} {}", a.backend, a.driver, a.driver_info)
                .trim()
                .to_string(),
        }
    }

    /// The CPU, described by `adapter` (an instruction set, a method).
    pub fn cpu(adapter: &str) -> Self {
        BackendInfo {
            backend: "cpu",
            adapter: adapter.to_string(),
            device_type: "-".into(),
            driver: "-".into(),
        }
    }
}

impl fmt::Display for BackendInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.backend {
            "gpu" => write!(
                f,
                "gpu: {} ({}, {})",
                self.adapter, self.device_type, self.driver
            ),
            _ => write!(f, "cpu ({})", self.adapter),
        }
    }
}

impl Engine {
    /// Picks the backend the configuration asks for. `auto` falls back to the CPU when no
    /// real GPU adapter is usable, and says why in the log; `gpu` fails instead.
    pub fn new(config: &HashConfig) -> anyhow::Result<Self> {
        let choice = match &config.adapter {
            None => gpu::AdapterChoice::Auto,
            Some(AdapterSelector::Index(i)) => gpu::AdapterChoice::Index(*i),
            Some(AdapterSelector::Name(n)) => gpu::AdapterChoice::Name(n.clone()),
        };
        match config.backend {
            HashBackend::Cpu => Ok(Engine::Cpu(PdqHasher::new())),
            HashBackend::Gpu => {
                let g = gpu::GpuHasher::new(choice, config.allow_software)
                    .context("hash.backend = \"gpu\"")?;
                Ok(Engine::Gpu(Box::new(g)))
            }
            HashBackend::Auto => match gpu::GpuHasher::new(choice, false) {
                Ok(g) => Ok(Engine::Gpu(Box::new(g))),
                Err(e) => {
                    tracing::info!("no usable GPU adapter, hashing on the CPU: {e:#}");
                    Ok(Engine::Cpu(PdqHasher::new()))
                }
            },
        }
    }

    pub fn info(&self) -> BackendInfo {
        match self {
            Engine::Cpu(_) => BackendInfo::cpu(pdq::instruction_set()),
            Engine::Gpu(g) => BackendInfo::gpu(g.adapter_info()),
        }
    }

    /// Hashes still images, with their 8 dihedral variants.
    pub fn hash_images(&mut self, images: &[Image<'_>]) -> anyhow::Result<Vec<PdqDihedral>> {
        match self {
            Engine::Cpu(h) => Ok(images
                .iter()
                .map(|i| h.hash_dihedral(Pixels::Rgb(i.rgb), i.width, i.height))
                .collect()),
            Engine::Gpu(g) => {
                // WGSL has no f64: luma from RGB is computed here, exactly as the CPU path does
                let lumas: Vec<Vec<f32>> = images
                    .iter()
                    .map(|i| {
                        let mut l = Vec::new();
                        pdq::luma(Pixels::Rgb(i.rgb), i.width, i.height, &mut l);
                        l
                    })
                    .collect();
                let frames: Vec<_> = lumas
                    .iter()
                    .zip(images)
                    .map(|(l, i)| gpu::GpuFrame::LumaF32 {
                        data: l,
                        width: i.width,
                        height: i.height,
                    })
                    .collect();
                g.hash_batch(&frames, true)
            }
        }
    }

    /// Hashes video frames (the original orientation only).
    pub fn hash_frames(&mut self, frames: &[Luma<'_>]) -> anyhow::Result<Vec<PdqHash>> {
        Ok(self
            .hash_frames_with(frames, false)?
            .into_iter()
            .map(|d| PdqHash {
                hash: d.hashes[0],
                quality: d.quality,
            })
            .collect())
    }

    /// Hashes frames; with `dihedral`, all 8 orientations (index 0 is the frame as it is),
    /// otherwise only index 0 is filled.
    pub fn hash_frames_with(
        &mut self,
        frames: &[Luma<'_>],
        dihedral: bool,
    ) -> anyhow::Result<Vec<PdqDihedral>> {
        match self {
            Engine::Cpu(h) => Ok(hash_frames_cpu_with(h, frames, dihedral)),
            Engine::Gpu(g) => {
                let batch: Vec<_> = frames
                    .iter()
                    .map(|f| gpu::GpuFrame::Luma8 {
                        data: f.data,
                        width: f.width,
                        height: f.height,
                        stride: f.stride,
                        limited: !f.full_range,
                    })
                    .collect();
                Ok(g.hash_batch(&batch, dihedral)?
                    .into_iter()
                    .map(|d| PdqDihedral {
                        hashes: d.hashes,
                        quality: d.quality,
                    })
                    .collect())
            }
        }
    }
}

/// Decodes a still image (JPEG, PNG, WebP) into packed 8-bit RGB, as the reference tools read
/// pictures: alpha is dropped, not composited; EXIF orientation is not applied.
pub fn load_rgb(path: &Path) -> anyhow::Result<(Vec<u8>, usize, usize)> {
    let reader = image::ImageReader::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read {}", path.display()))?;
    let img = reader
        .decode()
        .with_context(|| format!("{}: not a decodable image", path.display()))?;
    let rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    Ok((rgb.into_raw(), w, h))
}

/// Hashes video frames on the CPU.
pub fn hash_frames_cpu(hasher: &mut PdqHasher, frames: &[Luma<'_>]) -> Vec<PdqHash> {
    frames
        .iter()
        .map(|f| hasher.hash(f.pixels(), f.width, f.height))
        .collect()
}

/// [`hash_frames_cpu`] with the 8 orientations when `dihedral`.
pub fn hash_frames_cpu_with(
    hasher: &mut PdqHasher,
    frames: &[Luma<'_>],
    dihedral: bool,
) -> Vec<PdqDihedral> {
    frames
        .iter()
        .map(|f| {
            if dihedral {
                hasher.hash_dihedral(f.pixels(), f.width, f.height)
            } else {
                let h = hasher.hash(f.pixels(), f.width, f.height);
                let mut hashes = [Hash256::default(); 8];
                hashes[0] = h.hash;
                PdqDihedral {
                    hashes,
                    quality: h.quality,
                }
            }
        })
        .collect()
}
