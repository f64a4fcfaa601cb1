//! PDQ on the GPU (WGSL kernels in `shaders/`, driven by wgpu).
