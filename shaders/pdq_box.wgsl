// PDQ stages 2 to 5: the two Jarosz box-filter passes (along rows, then along columns, twice)
// and the decimation to 64x64.
//
// CPU twins: `pdq::box_rows`, `pdq::box_cols`, `pdq::box_rows_sampled` and
// `pdq::box_cols_sampled`, all built on `pdq::box_1d`. A running sum is serial along its
// line and float addition is not associative, so each line is one invocation performing
// `box_1d`'s exact sequence: add the entering value, subtract the leaving one (two roundings,
// in that order), divide by the window's current size as f32. Lines run in parallel: one
// invocation per row (row passes) or per column (column passes), x the line, workgroup y the
// frame.
//
// The sampled passes keep only the outputs at the 64 sample positions, which equal the full
// pass's values there. A 64x64 frame is not blurred (as the CPU's `PdqHasher` does): the full
// passes skip it and the sampled passes copy it through.

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

// ---- Correctly rounded division: identical in every kernel file that divides (a test checks).
//
// Vulkan lets `a / b` be off by up to 2.5 units in the last place, and GPUs use that freedom
// (a reciprocal times `a`), while the CPU's division is correctly rounded. PDQ divides in its
// running averages and its quality steps, so `exact_div(a, n)` takes the hardware quotient and
// walks it to the correctly rounded one (to nearest, ties to even). Where division is already
// exact (lavapipe) no step is taken; tests run the walk with the quotient nudged (DIV_NUDGE).
//
// `n` is a whole number below 4096. The remainder a - q n is computed without any rounding: q
// splits into two halves of at most 12 significant bits, whose products with n are exact;
// a - qh n is exact by Sterbenz's lemma (qh n is within a factor of two of a); the rest are
// multiples of q's last place, small enough to be exact. So a driver fusing these into
// multiply-adds cannot change them either.

// Tests only: nudge the hardware quotient by -2..+2 units in the last place first; skip the
// walk (to show that the nudge alone changes results).
override DIV_NUDGE: bool = false;
override DIV_WALK: bool = true;

fn exact_div(a: f32, n: f32) -> f32 {
    var q = a / n;
    if DIV_NUDGE {
        let e = (bitcast<u32>(q) >> 23u) & 0xffu;
        if e > 24u && e < 253u {
            let k = (bitcast<u32>(a) * 2654435761u) >> 29u;
            q = bitcast<f32>(bitcast<u32>(q) + k % 5u - 2u);
        }
    }
    if !DIV_WALK {
        return q;
    }
    for (var step = 0u; step < 6u; step++) {
        let bits = bitcast<u32>(q);
        let e = (bits >> 23u) & 0xffu;
        // zero, tiny, huge, infinite or NaN: no PDQ quotient is; leave it
        if e <= 24u || e >= 253u {
            break;
        }
        let qh = bitcast<f32>(bits & 0xfffff000u);
        let ql = q - qh;
        let r = (a - qh * n) - ql * n;
        // half of n times q's last place, on the side away from zero and towards it (where the
        // last place halves below a power of two)
        let away = n * bitcast<f32>((e - 23u) << 23u) * 0.5;
        var toward = away;
        if (bits & 0x7fffffu) == 0u {
            toward = away * 0.5;
        }
        // r > 0: the true quotient is above q
        var above = away;
        var below = toward;
        if q < 0.0 {
            above = toward;
            below = away;
        }
        var up = r > above;
        var down = r < -below;
        // exactly halfway: to the neighbour with an even last bit
        if (r == above || r == -below) && (bits & 1u) == 1u {
            up = r > 0.0;
            down = r < 0.0;
        }
        if !up && !down {
            break;
        }
        // one step along the number line; its bit pattern counts the magnitude
        if up == (q > 0.0) {
            q = bitcast<f32>(bits + 1u);
        } else {
            q = bitcast<f32>(bits - 1u);
        }
    }
    return q;
}
// ---- end of correctly rounded division

@group(0) @binding(0) var<storage, read> frames: array<Frame>;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

// What `slide` writes: every output (output `o` at `d0 + o * ds`), or only the outputs at the
// sampled columns or rows (sample `k` at `d0 + k * ds`).
const EMIT_ALL: u32 = 0u;
const EMIT_AT_COLS: u32 = 1u;
const EMIT_AT_ROWS: u32 = 2u;

fn sample_position(f: u32, mode: u32, k: u32) -> u32 {
    if mode == EMIT_AT_COLS {
        return frames[f].at_cols[k];
    }
    return frames[f].at_rows[k];
}

fn emit(f: u32, mode: u32, o: u32, v: f32, d0: u32, ds: u32, k: ptr<function, u32>) {
    if mode == EMIT_ALL {
        dst[d0 + o * ds] = v;
        return;
    }
    // positions ascend, and a small image samples one position several times
    while *k < 64u && sample_position(f, mode, *k) == o {
        dst[d0 + *k * ds] = v;
        *k += 1u;
    }
}

// `box_1d` along `len` values of `src` from `s0`, `ss` apart, with window `window`.
fn slide(f: u32, mode: u32, s0: u32, ss: u32, len: u32, window: u32, d0: u32, ds: u32) {
    let half = (window + 2u) / 2u;
    var li = s0;
    var ri = s0;
    var o = 0u;
    var k = 0u;
    var sum: f32 = 0.0;
    var size = 0u;
    // grow the window before the first output
    for (var n = 0u; n + 1u < half; n++) {
        sum = sum + src[ri];
        size += 1u;
        ri += ss;
    }
    // grow it to its full size, one output per step
    for (var n = 0u; n < window + 1u - half; n++) {
        sum = sum + src[ri];
        size += 1u;
        emit(f, mode, o, exact_div(sum, f32(size)), d0, ds, &k);
        ri += ss;
        o += 1u;
    }
    // slide it
    var steps = 0u;
    if len > window {
        steps = len - window;
    }
    for (var n = 0u; n < steps; n++) {
        sum = sum + src[ri];
        sum = sum - src[li];
        emit(f, mode, o, exact_div(sum, f32(size)), d0, ds, &k);
        li += ss;
        ri += ss;
        o += 1u;
    }
    // shrink it at the end
    for (var n = 0u; n + 1u < half; n++) {
        sum = sum - src[li];
        size -= 1u;
        emit(f, mode, o, exact_div(sum, f32(size)), d0, ds, &k);
        li += ss;
        o += 1u;
    }
}

fn blurred(f: u32) -> bool {
    return (frames[f].flags & (FLAG_TINY | FLAG_NO_BLUR)) == 0u;
}

// Along every row: src = luma, dst = row pass.
@compute @workgroup_size(64)
fn box_rows(@builtin(global_invocation_id) id: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
    let f = wg.y;
    let r = id.x;
    if !blurred(f) || r >= frames[f].height {
        return;
    }
    let width = frames[f].width;
    let base = frames[f].plane_offset + r * width;
    slide(f, EMIT_ALL, base, 1u, width, frames[f].win_rows, base, 1u);
}

// Along every column: src = row pass, dst = column pass.
@compute @workgroup_size(64)
fn box_cols(@builtin(global_invocation_id) id: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
    let f = wg.y;
    let c = id.x;
    let width = frames[f].width;
    if !blurred(f) || c >= width {
        return;
    }
    let base = frames[f].plane_offset + c;
    slide(f, EMIT_ALL, base, width, frames[f].height, frames[f].win_cols, base, width);
}

// Along every row, kept at the 64 sampled columns: src = column pass (luma for a 64x64 frame),
// dst = `height x 64`.
@compute @workgroup_size(64)
fn box_rows_sampled(
    @builtin(global_invocation_id) id: vec3<u32>,
    @builtin(workgroup_id) wg: vec3<u32>,
) {
    let f = wg.y;
    let r = id.x;
    let flags = frames[f].flags;
    if (flags & FLAG_TINY) != 0u || r >= frames[f].height {
        return;
    }
    let width = frames[f].width;
    let s0 = frames[f].plane_offset + r * width;
    let d0 = frames[f].kept_offset + r * 64u;
    if (flags & FLAG_NO_BLUR) != 0u {
        for (var c = 0u; c < 64u; c++) {
            dst[d0 + c] = src[s0 + c];
        }
        return;
    }
    slide(f, EMIT_AT_COLS, s0, 1u, width, frames[f].win_rows, d0, 1u);
}

// Along the 64 kept columns, kept at the 64 sampled rows: src = `height x 64`, dst = the 64x64
// decimated image.
@compute @workgroup_size(64)
fn box_cols_sampled(
    @builtin(local_invocation_index) c: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
) {
    let f = wg.y;
    let flags = frames[f].flags;
    if (flags & FLAG_TINY) != 0u {
        return;
    }
    let s0 = frames[f].kept_offset + c;
    let d0 = frames[f].down_offset + c;
    if (flags & FLAG_NO_BLUR) != 0u {
        for (var r = 0u; r < 64u; r++) {
            dst[d0 + r * 64u] = src[s0 + r * 64u];
        }
        return;
    }
    slide(f, EMIT_AT_ROWS, s0, 64u, frames[f].height, frames[f].win_cols, d0, 64u);
}
