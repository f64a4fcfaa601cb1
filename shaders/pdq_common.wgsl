// Declarations shared by the PDQ kernels: the frame descriptor and the correctly rounded
// division. src/hash/gpu.rs puts this file in front of each kernel file when it builds the
// kernels (WGSL has no include), so each exists once.

// ---- Frame descriptor: field for field `FrameDesc` in src/hash/gpu.rs (576 bytes).
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

// ---- Correctly rounded division.
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
