//! Perceptual hashing of sampled frames.
//!
//! PDQ has one CPU implementation, the `livewatch-pdq` crate in `crates/pdq` (re-exported here
//! as `pdq`): identical to Meta's reference on identical pixels, and kept in its own crate so it
//! is compiled optimised even in debug builds. The WGSL kernels in `gpu` mirror it.

pub mod gpu;
pub use livewatch_pdq as pdq;

pub use pdq::{Hash256, PdqDihedral, PdqHash, PdqHasher, Pixels};
