#!/usr/bin/env python3
"""Writes models/tiny-red.onnx: a tiny classifier whose trigger is known exactly.

It exists so that tests, the demo and CI exercise the whole classifier path (pre-processing,
batching, ONNX Runtime, activation, thresholds, alerts) with a model whose answer can be
predicted without a GPU or a real violence model:

    input  "image"  float32 [N, 3, 32, 32], RGB, values 0..1 (the manifest's scale is 1/255)
    R, G, B = the mean of each channel over the frame           (GlobalAveragePool, Flatten)
    output "scores" float32 [N, 2] logits = [violence, calm]    (Gemm with fixed weights)
        violence = 12 * (R - (G + B) / 2) - 3
        calm     = 0

livewatch applies softmax (the manifest says so), so a frame that is mostly red scores
violence near 1 (pure red: 1 / (1 + e^-9) = 0.9999) and ordinary colourful or grey content
scores low (grey: 1 / (1 + e^3) = 0.047). The threshold 0.9 in the manifest is crossed when
R - (G + B) / 2 > (3 + ln 9) / 12 = 0.433.

The output is byte-for-byte the same on every run (fixed opset, IR version, names, no
timestamps), so its sha256 can sit in models/tiny-red.toml.

Usage: make_tiny_model.py [OUTPUT]   (default: models/tiny-red.onnx next to this script's folder)
"""

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# ONNX Runtime 1.31 reads IR version <= 11; onnx 1.23 writes 14 unless told otherwise.
IR_VERSION = 10
OPSET = 17
SIZE = 32


def build() -> onnx.ModelProto:
    # Gemm: Y = X @ W + b, X = [N, 3] channel means (R, G, B), Y = [N, 2] (violence, calm)
    weights = np.array([[12.0, 0.0], [-6.0, 0.0], [-6.0, 0.0]], dtype=np.float32)
    bias = np.array([-3.0, 0.0], dtype=np.float32)
    graph = helper.make_graph(
        nodes=[
            helper.make_node("GlobalAveragePool", ["image"], ["channel_means"], name="mean"),
            helper.make_node("Flatten", ["channel_means"], ["rgb"], name="flatten", axis=1),
            helper.make_node("Gemm", ["rgb", "weights", "bias"], ["scores"], name="redness"),
        ],
        name="tiny_red",
        inputs=[helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        outputs=[helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])],
        initializer=[
            numpy_helper.from_array(weights, name="weights"),
            numpy_helper.from_array(bias, name="bias"),
        ],
        doc_string="violence logit = 12 * (mean R - (mean G + mean B) / 2) - 3; calm logit = 0",
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="livewatch scripts/make_tiny_model.py",
        producer_version="1",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "models", "tiny-red.onnx")
    data = build().SerializeToString(deterministic=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, out)
    print(f"make_tiny_model: wrote {out} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
