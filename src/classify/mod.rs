//! Violence classification: model manifests, pre-processing (WGSL on a GPU, a CPU twin
//! elsewhere), ONNX Runtime sessions, and the batcher that feeds them frames of many streams.

pub mod gpu;
pub mod manifest;
pub mod model;
pub mod preprocess;
#[cfg(target_arch = "x86_64")]
mod preprocess_avx2;
pub mod runtime;
pub mod service;
