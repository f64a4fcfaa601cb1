#!/usr/bin/env python3
"""faiss-cpu IndexBinaryFlat baseline for `cargo bench --bench index`.

Reads what the Rust bench writes, all little-endian:
  hashes.bin   N x 32 bytes: each 256-bit hash as its four u64 limbs, limb 0 first, each
               limb's bytes least significant first (bit i of the hash is bit i % 8 of byte
               i // 8). faiss binary vectors are uint8 arrays of d/8 = 32 bytes; Hamming
               distance does not depend on how the 256 bits are laid out as long as stored
               hashes and queries use the same layout, which they do here.
  queries.bin  Q x 32 bytes, same layout.
  counts.bin   Q x u32: livewatch's number of matches within the threshold, per query.

Builds faiss.IndexBinaryFlat(256), times range_search(queries[:limit], threshold + 1) (the
radius is exclusive in faiss: it returns distance < radius, so 32 gives d <= 31), compares
per-query result counts with livewatch's, and prints one JSON line.

faiss is a benchmark-only dependency: when `import faiss` fails this installs faiss-cpu
into the interpreter's environment (the project's .venv) with pip, never elsewhere.
"""

import argparse
import json
import os
import subprocess
import sys
import time


def import_faiss():
    try:
        import faiss  # noqa: F401
    except ImportError:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "faiss-cpu"],
            check=True,
            stdout=sys.stderr,
        )
    import faiss

    return faiss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True, help="folder with hashes.bin, queries.bin, counts.bin")
    ap.add_argument("--threshold", type=int, default=31, help="largest distance that matches")
    ap.add_argument("--limit", type=int, default=0, help="run only the first LIMIT queries (0: all)")
    args = ap.parse_args()

    import numpy as np

    faiss = import_faiss()
    hashes = np.fromfile(os.path.join(args.dir, "hashes.bin"), dtype=np.uint8).reshape(-1, 32)
    queries = np.fromfile(os.path.join(args.dir, "queries.bin"), dtype=np.uint8).reshape(-1, 32)
    counts = np.fromfile(os.path.join(args.dir, "counts.bin"), dtype="<u4")
    assert len(counts) == len(queries), "one count per query"
    if args.limit:
        queries, counts = queries[: args.limit], counts[: args.limit]

    t = time.perf_counter()
    index = faiss.IndexBinaryFlat(256)
    index.add(hashes)
    add_s = time.perf_counter() - t

    t = time.perf_counter()
    lims, dist, ids = index.range_search(queries, args.threshold + 1)
    search_s = time.perf_counter() - t

    got = np.diff(lims).astype(np.int64)
    equal = bool(np.array_equal(got, counts.astype(np.int64)))
    if equal:
        assert int(dist.max(initial=0)) <= args.threshold
    print(
        json.dumps(
            {
                "faiss_version": faiss.__version__,
                "threads": faiss.omp_get_max_threads(),
                "n": int(hashes.shape[0]),
                "queries": int(queries.shape[0]),
                "radius_exclusive": args.threshold + 1,
                "add_s": add_s,
                "search_s": search_s,
                "queries_per_s": queries.shape[0] / search_s,
                "matches": int(got.sum()),
                "counts_equal": equal,
                "mismatched_queries": int((got != counts).sum()),
            }
        )
    )


if __name__ == "__main__":
    main()
