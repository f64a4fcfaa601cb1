// Exact Hamming-radius scan: every stored 256-bit hash of a bank chunk against every query of
// a batch. Driven by `src/index/gpu.rs`, whose CPU twin is the brute-force distance in
// `src/index/mod.rs`.
//
// One invocation per stored hash: it keeps its hash in registers and walks the batch's
// queries, which the workgroup loads tile by tile into shared memory, so each query is read
// from device memory once per workgroup rather than once per invocation. A pair within the
// radius takes a slot in `hits` through an atomic counter; the counter keeps counting past
// the capacity, so the host sees how many slots an exact answer needs and runs the batch
// again with that many when it overflowed. The order of the hits is arbitrary: the host sorts
// them.

// Invocations per workgroup, and queries per shared-memory tile.
const SCAN_GROUP: u32 = 64u;
const SCAN_TILE: u32 = 64u;

// One chunk's dispatch (a bank larger than one storage binding is split into chunks).
struct ScanParams {
    // Hashes in this chunk.
    count: u32,
    // Queries in the batch.
    queries: u32,
    // Largest distance reported.
    radius: u32,
    // Id of the chunk's first hash: hits carry bank-wide ids.
    first_id: u32,
    // Slots in `hits`.
    capacity: u32,
    // Invocations per row of the dispatch grid (grids wider than the per-dimension limit
    // wrap into rows).
    row: u32,
}

// Hit counter, then the hits: x = stored hash id, y = query index << 9 | distance.
struct ScanOut {
    found: atomic<u32>,
    pad0: u32,
    pad1: u32,
    pad2: u32,
    hits: array<vec2<u32>>,
}

// Two vec4 per hash: its 64-bit limbs in order, each as (low, high) 32-bit words.
@group(0) @binding(0) var<storage, read> scan_bank: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> scan_queries: array<vec4<u32>>;
@group(0) @binding(2) var<uniform> scan_params: ScanParams;
@group(0) @binding(3) var<storage, read_write> scan_out: ScanOut;

var<workgroup> scan_tile: array<vec4<u32>, 128>; // 2 * SCAN_TILE

fn popcount256(a0: vec4<u32>, a1: vec4<u32>, b0: vec4<u32>, b1: vec4<u32>) -> u32 {
    let c = countOneBits(a0 ^ b0) + countOneBits(a1 ^ b1);
    return c.x + c.y + c.z + c.w;
}

@compute @workgroup_size(64)
fn scan_main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = gid.y * scan_params.row + gid.x;
    let live = i < scan_params.count;
    var h0 = vec4<u32>(0u);
    var h1 = vec4<u32>(0u);
    if live {
        h0 = scan_bank[2u * i];
        h1 = scan_bank[2u * i + 1u];
    }
    // every invocation, live or not, takes part in the tile loads and their barriers
    for (var t = 0u; t < scan_params.queries; t += SCAN_TILE) {
        let n = min(SCAN_TILE, scan_params.queries - t);
        workgroupBarrier();
        for (var k = lid; k < n; k += SCAN_GROUP) {
            scan_tile[2u * k] = scan_queries[2u * (t + k)];
            scan_tile[2u * k + 1u] = scan_queries[2u * (t + k) + 1u];
        }
        workgroupBarrier();
        if live {
            for (var k = 0u; k < n; k++) {
                let d = popcount256(h0, h1, scan_tile[2u * k], scan_tile[2u * k + 1u]);
                if d <= scan_params.radius {
                    let slot = atomicAdd(&scan_out.found, 1u);
                    if slot < scan_params.capacity {
                        scan_out.hits[slot] = vec2<u32>(scan_params.first_id + i, ((t + k) << 9u) | d);
                    }
                }
            }
        }
    }
}
