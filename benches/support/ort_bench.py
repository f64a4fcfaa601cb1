#!/usr/bin/env python3
"""Python onnxruntime on the same tensor, for `cargo bench --bench classify` (a cross-check of
its "bare" column: livewatch's `Model::run` should cost what ONNX Runtime itself costs).

Usage: ort_bench.py MODEL INPUT_NAME OUTPUT_NAME TENSOR SHAPE SECONDS ARENA

TENSOR holds the input as little-endian float32 in C order, SHAPE is its shape as
comma-separated integers (e.g. 16,3,224,224). The session: CPU execution provider and ONNX
Runtime's default session options (intra-op threads: its default, one per core), except the
CPU memory arena when ARENA is "no-arena". "arena" is ONNX Runtime's default; livewatch's
sessions run without it, because `ort`'s `ep::CPU::default()`, which livewatch registers,
disables it. After two warm-up runs the tensor is run again and again until SECONDS have
passed (at least once). Prints one JSON line:
    {"onnxruntime": "1.31.1", "runs": 40, "seconds": 3.02, "ms_per_batch": 75.5,
     "scores": [[...], ...]}
with the raw outputs of the last run (no activation), for checking against livewatch's.
"""

import json
import sys
import time

import numpy as np
import onnxruntime as ort


def main() -> int:
    if len(sys.argv) != 8 or sys.argv[7] not in ("arena", "no-arena"):
        print(__doc__, file=sys.stderr)
        return 2
    model, input_name, output_name, tensor, shape, seconds, arena = sys.argv[1:]
    shape = [int(d) for d in shape.split(",")]
    x = np.fromfile(tensor, dtype="<f4").reshape(shape)
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = arena == "arena"
    session = ort.InferenceSession(
        model, options, providers=["CPUExecutionProvider"]
    )
    for _ in range(2):
        session.run([output_name], {input_name: x})
    runs = 0
    start = time.perf_counter()
    while True:
        (out,) = session.run([output_name], {input_name: x})
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= float(seconds):
            break
    json.dump(
        {
            "onnxruntime": ort.__version__,
            "runs": runs,
            "seconds": elapsed,
            "ms_per_batch": elapsed * 1e3 / runs,
            "scores": out.astype(np.float64).tolist(),
        },
        sys.stdout,
    )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
