// PDQ stage 1: luma as f32, one plane per frame (`width x height`, tightly packed).
//
// CPU twin: `pdq::luma` for `Pixels::Gray` (the code as f32) and `Pixels::VideoY` (through
// `pdq::limited_to_full_lut()`, uploaded as is: the kernel never recomputes the expansion).
// f32 input (luma the CPU computed from RGB in f64, which WGSL lacks) is copied unchanged.
//
// One invocation per input word; workgroups tile x and y over a frame's words, z is the frame.

// ---- Frame descriptor: identical in every kernel file (a test checks), and field for field
// ---- `FrameDesc` in src/hash/gpu.rs (576 bytes).
//
// One dispatch covers a batch of frames of any sizes: each kernel finds its frame by index
// and everything about it here. Windows and sample positions come from the CPU
// implementation's own functions, so no kernel rounds a position.
struct Frame {
    width: u32,
    height: u32,
    // Input: first u32 word of the frame, and words per row. 8-bit luma is packed four pixels
    // a word, least significant byte first; f32 luma is one pixel a word (its bits).
    in_offset: u32,
    in_stride: u32,
    // First value of the frame in the full-size planes (luma, row pass, column pass).
    plane_offset: u32,
    // First value in the `height x 64` output of the sampled row pass.
    kept_offset: u32,
    // First value of the 64x64 decimated image.
    down_offset: u32,
    // First word of the result record: quality, 3 spare words, 8 hashes of 8 words.
    result_offset: u32,
    // First word of the 16x16 DCT block (f32 bits, in the result buffer).
    dct_offset: u32,
    // Box-filter windows along rows and along columns.
    win_rows: u32,
    win_cols: u32,
    // FLAG_* bits.
    flags: u32,
    // Dihedral variants to hash: 1 (the original only) or 8.
    variants: u32,
    // Always 0, but unknown to the compiler: see `rounded` in pdq_dct.wgsl.
    zero: u32,
    pad1: u32,
    pad2: u32,
    // The 64 sampled columns and the 64 sampled rows, ascending.
    at_cols: array<u32, 64>,
    at_rows: array<u32, 64>,
}

// Limited-range 8-bit luma: expand through the table.
const FLAG_LIMITED: u32 = 1u;
// The input words are f32 luma, not packed 8-bit luma.
const FLAG_F32: u32 = 2u;
// Exactly 64x64: no blur, the luma is the decimated image.
const FLAG_NO_BLUR: u32 = 4u;
// A side below 5: hash 0 and quality 0; no pass touches the frame.
const FLAG_TINY: u32 = 8u;
// ---- end of Frame descriptor

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
