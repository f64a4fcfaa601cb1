// Classifier pre-processing: decoded pictures to a model's input tensor, a batch of pictures
// of any sizes per dispatch.
//
// CPU twin: `Preprocessor::run` in src/classify/preprocess.rs, driven from
// src/classify/gpu.rs. Two passes:
//
// * `resize_rows`: one invocation per (source row read, kept output column): each tap's pixel
//   converted to RGB (the uploaded `ColorTables`: additions only, then clamped to 0..255)
//   and the horizontal resize, into `tmp` (three f32 per value);
// * `resize_cols`: one invocation per output pixel: the vertical resize from `tmp`, the
//   channel order and `(v * scale - mean[c]) / std[c]`, into `out`, planar or interleaved.
//
// Taps, weights, tables and offsets all come from the CPU (`Resample`, `ColorTables`), so no
// kernel computes a position or a weight. Every float operation is the twin's, in its order:
// sums start at 0.0 and add the taps in ascending order; each product goes through
// `pre_rounded` first, so a driver cannot fuse it with the sum into one multiply-add (naga
// marks nothing NoContraction); never `fma`. Division is plain `/`: correctly rounded on
// lavapipe and CPUs, within 2.5 units in the last place on other GPUs.
//
// Workgroups tile x and y over a picture's invocations; z is the picture.
//
// The names here avoid those of pdq_common.wgsl: a test validates each shader with that file
// in front of it.

// The spec, the same for every picture: field for field `Params` in src/classify/gpu.rs.
struct Params {
    out_w: u32,
    out_h: u32,
    // 1: [H][W][3] (nhwc); 0: [3][H][W] (nchw, ncthw).
    interleaved: u32,
    // Always 0, but unknown to the compiler: see `pre_rounded`.
    zero: u32,
    // The RGB channel each tensor channel takes.
    order: vec4<u32>,
    // x: the scale; the rest unused.
    scale: vec4<f32>,
    mean: vec4<f32>,
    stdev: vec4<f32>,
}

// One picture: field for field `PicDesc` in src/classify/gpu.rs (80 bytes).
struct Pic {
    // PIC_* kind.
    kind: u32,
    // First float of its range and matrix's tables in `lut` (five tables of 256).
    lut: u32,
    width: u32,
    height: u32,
    // Byte offsets in `input` and bytes per row: Y (or RGB), U, V, chroma rows.
    y_off: u32,
    y_stride: u32,
    u_off: u32,
    v_off: u32,
    c_stride: u32,
    // First source row read, and how many.
    row0: u32,
    rows: u32,
    // First value (three floats each) of its rows in `tmp`.
    tmp: u32,
    // Horizontal taps: word offset in `taps` (out_w pairs first/count, then out_w x hk
    // weights as f32 bits), and weights per output.
    hx: u32,
    hk: u32,
    // Vertical taps, the same with out_h outputs.
    vy: u32,
    vk: u32,
    // First float of its frame in `out`.
    out: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

const PIC_YUV420: u32 = 0u;
const PIC_GRAY: u32 = 1u;
const PIC_RGB: u32 = 2u;

const PRE_GROUP: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> pics: array<Pic>;
@group(0) @binding(2) var<storage, read> taps: array<u32>;
@group(0) @binding(3) var<storage, read> lut: array<f32>;
// Planes as bytes, four to a word, least significant first.
@group(0) @binding(4) var<storage, read> input: array<u32>;
@group(0) @binding(5) var<storage, read_write> tmp: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

// A product, rounded to f32 before it is summed.
fn pre_rounded(product: vec3<f32>) -> vec3<f32> {
    return bitcast<vec3<f32>>(bitcast<vec3<u32>>(product) ^ vec3<u32>(params.zero));
}

fn pre_byte(i: u32) -> u32 {
    return (input[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu;
}

// Source pixel (x, y) as RGB in 0..255, as `convert_row`.
fn pre_pixel(p: Pic, x: u32, y: u32) -> vec3<f32> {
    if p.kind == PIC_RGB {
        let i = p.y_off + y * p.y_stride + x * 3u;
        return vec3<f32>(f32(pre_byte(i)), f32(pre_byte(i + 1u)), f32(pre_byte(i + 2u)));
    }
    let l = lut[p.lut + pre_byte(p.y_off + y * p.y_stride + x)];
    if p.kind == PIC_GRAY {
        let g = min(max(l, 0.0), 255.0);
        return vec3<f32>(g, g, g);
    }
    let c = (y / 2u) * p.c_stride + x / 2u;
    let u = pre_byte(p.u_off + c);
    let v = pre_byte(p.v_off + c);
    let r = l + lut[p.lut + 256u + v];
    let g = (l + lut[p.lut + 512u + u]) + lut[p.lut + 768u + v];
    let b = l + lut[p.lut + 1024u + u];
    return min(max(vec3<f32>(r, g, b), vec3<f32>(0.0)), vec3<f32>(255.0));
}

fn pre_index(wg: vec3<u32>, groups: vec3<u32>, local: u32) -> u32 {
    return (wg.y * groups.x + wg.x) * PRE_GROUP + local;
}

@compute @workgroup_size(256)
fn resize_rows(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let p = pics[wg.z];
    let ow = params.out_w;
    let t = pre_index(wg, groups, local);
    if t >= p.rows * ow {
        return;
    }
    let y = p.row0 + t / ow;
    let j = t % ow;
    let first = taps[p.hx + 2u * j];
    let count = taps[p.hx + 2u * j + 1u];
    let w0 = p.hx + 2u * ow + j * p.hk;
    var acc = vec3<f32>(0.0);
    for (var k = 0u; k < count; k++) {
        let w = bitcast<f32>(taps[w0 + k]);
        acc = acc + pre_rounded(pre_pixel(p, first + k, y) * w);
    }
    let o = (p.tmp + t) * 3u;
    tmp[o] = acc.x;
    tmp[o + 1u] = acc.y;
    tmp[o + 2u] = acc.z;
}

@compute @workgroup_size(256)
fn resize_cols(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let p = pics[wg.z];
    let ow = params.out_w;
    let oh = params.out_h;
    let t = pre_index(wg, groups, local);
    if t >= ow * oh {
        return;
    }
    let i = t / ow;
    let j = t % ow;
    let first = taps[p.vy + 2u * i];
    let count = taps[p.vy + 2u * i + 1u];
    let w0 = p.vy + 2u * oh + i * p.vk;
    var acc = vec3<f32>(0.0);
    for (var k = 0u; k < count; k++) {
        let w = bitcast<f32>(taps[w0 + k]);
        let s = (p.tmp + (first + k - p.row0) * ow + j) * 3u;
        acc = acc + pre_rounded(vec3<f32>(tmp[s], tmp[s + 1u], tmp[s + 2u]) * w);
    }
    let scaled = pre_rounded(acc * params.scale.x);
    for (var c = 0u; c < 3u; c++) {
        let v = (scaled[params.order[c]] - params.mean[c]) / params.stdev[c];
        if params.interleaved != 0u {
            out[p.out + t * 3u + c] = v;
        } else {
            out[p.out + c * ow * oh + t] = v;
        }
    }
}
