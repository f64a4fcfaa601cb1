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

// Frame, FLAG_* and exact_div come from pdq_common.wgsl, put in front of this file when built.

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
