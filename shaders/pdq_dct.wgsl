// PDQ stage 6: from the 64x64 decimated image to the hash. One workgroup of 256 invocations
// per frame (workgroup x is the frame):
//
// * the 16x16 DCT block, B = D A Dᵀ with D the 16x64 matrix of `pdq::dct_matrix()` uploaded
//   as is (never computed here with WGSL's cos): T = D A first, each entry summed over k
//   ascending in f32, then B = T Dᵀ the same way, exactly as `pdq::dct64_to_16`; a product
//   and the running sum are two roundings, never a fused multiply-add (`rounded`);
// * the quality, `pdq::quality_metric`: each step `(a - b) * 100 / 255` correctly rounded
//   (`exact_div`) and truncated; the sum is of integers, so any order gives the same total;
// * per dihedral variant (`pdq::dihedral`: sign changes and transposition, both exact), the
//   lower median by Torben's method (`pdq::torben_median`, same float steps; its `/ 2.0` is
//   `* 0.5` here, the same exact halving) and the bits above it (`pdq::dct_to_bits`: bit
//   k = row * 16 + column, in 16-bit word k / 16).
//
// Result record per frame, RESULT_WORDS u32: quality, 3 zero words, then 8 hashes of 8 words,
// each word holding two 16-bit hash words (word 2m in the low half, 2m + 1 in the high half).
// Variants beyond the frame's `variants` and tiny frames get zero hashes. The DCT block goes
// to `dct_offset` as f32 bits.

// Frame, FLAG_* and exact_div come from pdq_common.wgsl, put in front of this file when built.

const RESULT_WORDS: u32 = 68u;
const HASH_BASE: u32 = 4u;

@group(0) @binding(0) var<storage, read> frames: array<Frame>;
// `pdq::dct_matrix()`, row-major 16 x 64, four values to a vector.
@group(0) @binding(1) var<uniform> matrix: array<vec4<f32>, 256>;
@group(0) @binding(2) var<storage, read> down: array<f32>;
@group(0) @binding(3) var<storage, read_write> results: array<u32>;

// T = D A, 16 x 64.
var<workgroup> partial: array<f32, 1024>;
// B = T Dᵀ, 16 x 16.
var<workgroup> block: array<f32, 256>;
var<workgroup> gradient_sum: atomic<i32>;

// A product, rounded to f32 before it is summed. naga marks no operation NoContraction, and
// drivers may fuse a product and a sum into one multiply-add (one rounding, not the CPU's
// two); `zero` is always 0 but read at run time, so the product has to be materialised.
fn rounded(product: f32, zero: u32) -> f32 {
    return bitcast<f32>(bitcast<u32>(product) ^ zero);
}

fn d(i: u32, k: u32) -> f32 {
    let n = i * 64u + k;
    return matrix[n / 4u][n % 4u];
}

// Quantised gradient between two pixels of the decimated image, as `quality_metric` takes it.
fn gradient(a: f32, b: f32) -> i32 {
    return abs(i32(exact_div((a - b) * 100.0, 255.0)));
}

// Cell (r, c) of dihedral variant `v`, in `pdq::DIHEDRAL_NAMES` order.
fn variant_value(v: u32, r: u32, c: u32) -> f32 {
    let same = block[r * 16u + c];
    let swapped = block[c * 16u + r];
    let even_sum = ((r + c) & 1u) == 0u;
    switch v {
        case 0u: { return same; }
        case 1u: { return select(-swapped, swapped, (r & 1u) == 1u); }
        case 2u: { return select(-same, same, even_sum); }
        case 3u: { return select(-swapped, swapped, (c & 1u) == 1u); }
        case 4u: { return select(-same, same, (r & 1u) == 1u); }
        case 5u: { return select(-same, same, (c & 1u) == 1u); }
        case 6u: { return swapped; }
        default: { return select(-swapped, swapped, even_sum); }
    }
}

fn value(v: u32, n: u32) -> f32 {
    return variant_value(v, n / 16u, n % 16u);
}

// Torben's median of the 256 cells of variant `v`, the lower one (as 256 is even).
fn torben_median(v: u32) -> f32 {
    let half = 128u;
    var lo = value(v, 0u);
    var hi = lo;
    for (var n = 1u; n < 256u; n++) {
        let x = value(v, n);
        lo = min(lo, x);
        hi = max(hi, x);
    }
    // Each round either returns or drops at least one distinct value from [lo, hi], so 256
    // rounds always suffice; the bound only makes that visible to the compiler.
    for (var round = 0u; round <= 256u; round++) {
        // `/ 2.0` on the CPU: halving is exact, and a product is correctly rounded everywhere
        let guess = (lo + hi) * 0.5;
        var less = 0u;
        var greater = 0u;
        var equal = 0u;
        var max_lt = lo;
        var min_gt = hi;
        for (var n = 0u; n < 256u; n++) {
            let x = value(v, n);
            if x < guess {
                less += 1u;
                if x > max_lt {
                    max_lt = x;
                }
            } else if x > guess {
                greater += 1u;
                if x < min_gt {
                    min_gt = x;
                }
            } else {
                equal += 1u;
            }
        }
        if less <= half && greater <= half {
            if less >= half {
                return max_lt;
            } else if less + equal >= half {
                return guess;
            }
            return min_gt;
        } else if less > greater {
            hi = max_lt;
        } else {
            lo = min_gt;
        }
    }
    return lo;
}

@compute @workgroup_size(256)
fn dct_main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let f = wg.x;
    let res = frames[f].result_offset;
    if (frames[f].flags & FLAG_TINY) != 0u {
        if t < RESULT_WORDS {
            results[res + t] = 0u;
        }
        return;
    }
    let a = frames[f].down_offset;
    let zero = frames[f].zero;
    if t == 0u {
        atomicStore(&gradient_sum, 0);
    }

    // T = D A: four entries per invocation
    for (var e = t; e < 1024u; e += 256u) {
        let i = e / 64u;
        let j = e % 64u;
        var sum: f32 = 0.0;
        for (var k = 0u; k < 64u; k++) {
            sum = sum + rounded(d(i, k) * down[a + k * 64u + j], zero);
        }
        partial[e] = sum;
    }

    // the quality's gradients meanwhile: down the columns, then along the rows
    var q = 0;
    for (var n = t; n < 63u * 64u; n += 256u) {
        let i = n / 64u;
        let j = n % 64u;
        q += gradient(down[a + i * 64u + j], down[a + (i + 1u) * 64u + j]);
    }
    for (var n = t; n < 64u * 63u; n += 256u) {
        let i = n / 63u;
        let j = n % 63u;
        q += gradient(down[a + i * 64u + j], down[a + i * 64u + j + 1u]);
    }
    workgroupBarrier();
    atomicAdd(&gradient_sum, q);

    // B = T Dᵀ: one entry per invocation
    {
        let i = t / 16u;
        let j = t % 16u;
        var sum: f32 = 0.0;
        for (var k = 0u; k < 64u; k++) {
            sum = sum + rounded(partial[i * 64u + k] * d(j, k), zero);
        }
        block[t] = sum;
        results[frames[f].dct_offset + t] = bitcast<u32>(sum);
    }
    workgroupBarrier();

    if t == 0u {
        let sum = atomicLoad(&gradient_sum);
        results[res] = u32(min(sum / 90, 100));
        results[res + 1u] = 0u;
        results[res + 2u] = 0u;
        results[res + 3u] = 0u;
    }
    if t < 8u {
        let out = res + HASH_BASE + t * 8u;
        if t >= frames[f].variants {
            for (var m = 0u; m < 8u; m++) {
                results[out + m] = 0u;
            }
            return;
        }
        let median = torben_median(t);
        for (var m = 0u; m < 8u; m++) {
            var bits = 0u;
            for (var b = 0u; b < 32u; b++) {
                // bit b of this word is cell k = 32 m + b: row 2m + b / 16, column b % 16
                if value(t, m * 32u + b) > median {
                    bits |= 1u << b;
                }
            }
            results[out + m] = bits;
        }
    }
}
