"""Times Meta's reference PDQ (the `pdqhash` wheel) on raw RGB frames written by the Rust bench.

Usage: pdq_reference_timing.py FILE WIDTH HEIGHT COUNT ROUNDS
Prints one JSON object: best seconds per round, and the hashes (for a cross-check).
"""
import json
import sys
import time

import numpy as np
import pdqhash


def main():
    path, w, h, n, rounds = sys.argv[1], *map(int, sys.argv[2:6])
    frames = np.fromfile(path, dtype=np.uint8).reshape(n, h, w, 3)
    best = float("inf")
    hashes = []
    for _ in range(rounds):
        start = time.perf_counter()
        out = [pdqhash.compute(frames[i]) for i in range(n)]
        best = min(best, time.perf_counter() - start)
        hashes = ["%064x" % int("".join(map(str, vec)), 2) for vec, _ in out]
    print(json.dumps({"best_seconds": best, "hashes": hashes}))


if __name__ == "__main__":
    main()
