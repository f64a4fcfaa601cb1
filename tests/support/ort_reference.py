#!/usr/bin/env python3
"""Reference scores for tests/classify_models.rs: runs a model with Python's onnxruntime.

Reads a JSON request on stdin:
    {"model": "models/tiny-red.onnx", "input": "image", "output": "scores",
     "activation": "none" | "softmax" | "sigmoid",
     "batches": [{"file": "batch1.f32", "shape": [1, 3, 32, 32]}, ...]}
where each file holds the input tensor as little-endian float32 in C order, and prints
    {"onnxruntime": "1.31.1", "scores": [[[...], ...], ...]}
one list of rows per batch, with the activation applied here (numpy), independently of
livewatch's own code.
"""

import json
import sys

import numpy as np
import onnxruntime as ort


def activate(name: str, x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    if name == "none":
        return x
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if name == "softmax":
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    raise SystemExit(f"unknown activation {name!r}")


def main() -> int:
    req = json.load(sys.stdin)
    session = ort.InferenceSession(req["model"], providers=["CPUExecutionProvider"])
    scores = []
    for batch in req["batches"]:
        x = np.fromfile(batch["file"], dtype="<f4").reshape(batch["shape"])
        (out,) = session.run([req["output"]], {req["input"]: x})
        scores.append(activate(req["activation"], out).tolist())
    json.dump({"onnxruntime": ort.__version__, "scores": scores}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
