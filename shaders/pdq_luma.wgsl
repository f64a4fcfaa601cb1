// PDQ stage 1: luma as f32, one plane per frame (`width x height`, tightly packed).
//
// CPU twin: `pdq::luma` for `Pixels::Gray` (the code as f32) and `Pixels::VideoY` (through
// `pdq::limited_to_full_lut()`, uploaded as is: the kernel never recomputes the expansion).
// f32 input (luma the CPU computed from RGB in f64, which WGSL lacks) is copied unchanged.
//
// One invocation per input word; workgroups tile x and y over a frame's words, z is the frame.

// Frame, FLAG_* and exact_div come from pdq_common.wgsl, put in front of this file when built.

@group(0) @binding(0) var<storage, read> frames: array<Frame>;
// The limited-to-full-range table, 256 values four to a vector (uniform arrays need 16-byte
// elements).
@group(0) @binding(1) var<uniform> lut: array<vec4<f32>, 64>;
@group(0) @binding(2) var<storage, read> input: array<u32>;
@group(0) @binding(3) var<storage, read_write> luma: array<f32>;

const GROUP: u32 = 256u;

@compute @workgroup_size(256)
fn luma_main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let f = wg.z;
    let flags = frames[f].flags;
    if (flags & FLAG_TINY) != 0u {
        return;
    }
    let width = frames[f].width;
    let height = frames[f].height;
    let stride = frames[f].in_stride;
    let word = (wg.y * groups.x + wg.x) * GROUP + local;
    if word >= height * stride {
        return;
    }
    let row = word / stride;
    let in_row = word % stride;
    let bits = input[frames[f].in_offset + word];
    let out = frames[f].plane_offset + row * width;
    if (flags & FLAG_F32) != 0u {
        if in_row < width {
            luma[out + in_row] = bitcast<f32>(bits);
        }
        return;
    }
    let limited = (flags & FLAG_LIMITED) != 0u;
    for (var b = 0u; b < 4u; b++) {
        let col = in_row * 4u + b;
        if col < width {
            let code = (bits >> (8u * b)) & 0xffu;
            var v = f32(code);
            if limited {
                v = lut[code / 4u][code % 4u];
            }
            luma[out + col] = v;
        }
    }
}
