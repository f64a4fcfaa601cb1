//! Perceptual hashing of sampled frames.
//!
//! `pdq` holds the one CPU implementation of PDQ; the GPU kernels (later) mirror it.

pub mod pdq;

pub use pdq::{Hash256, PdqHash, PdqHasher};
