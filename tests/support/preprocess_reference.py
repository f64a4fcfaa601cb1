#!/usr/bin/env python3
"""Reference pre-processing for the classifiers, as model authors' Python code does it.

Reads raw YUV 4:2:0 frames (planar, tightly packed, chroma ceil(w/2) x ceil(h/2)), and per
frame: YUV -> RGB with numpy in float64 (the BT.601 or BT.709 matrix, limited range expanded
unless --range full, chroma sampled nearest), clipped and rounded to uint8; then PIL
`Image.resize((rw, rh), Image.BILINEAR)`, `crop` to the centre, the channel order, and
`(v * scale - mean[c]) / std[c]`, written as float32 in the spec's layout (nchw and ncthw
planar [3][H][W], nhwc interleaved [H][W][3]), the frames one after the other.

With --rgb-out, also writes each frame's uint8 RGB (the conversion alone).

    preprocess_reference.py --yuv clip.yuv --width 1280 --height 720 --frames 3 \
        --matrix bt709 --range limited --spec '{"layout": "nchw", ...}' --out ref.f32
"""

import argparse
import json
import sys

import numpy as np
from PIL import Image

COEFFS = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


def to_rgb(y, u, v, matrix, full_range):
    kr, kb = COEFFS[matrix]
    kg = 1.0 - kr - kb
    h, w = y.shape
    # nearest chroma: pixel (x, y) takes sample (x // 2, y // 2)
    u = np.repeat(np.repeat(u, 2, axis=0), 2, axis=1)[:h, :w].astype(np.float64)
    v = np.repeat(np.repeat(v, 2, axis=0), 2, axis=1)[:h, :w].astype(np.float64)
    y = y.astype(np.float64)
    if full_range:
        luma, cb, cr = y, u - 128.0, v - 128.0
    else:
        luma = (y - 16.0) * 255.0 / 219.0
        cb = (u - 128.0) * 255.0 / 224.0
        cr = (v - 128.0) * 255.0 / 224.0
    r = luma + 2.0 * (1.0 - kr) * cr
    g = luma - 2.0 * kb * (1.0 - kb) / kg * cb - 2.0 * kr * (1.0 - kr) / kg * cr
    b = luma + 2.0 * (1.0 - kb) * cb
    rgb = np.stack([r, g, b], axis=-1)
    return np.rint(np.clip(rgb, 0.0, 255.0)).astype(np.uint8)


def preprocess(rgb, spec):
    w, h = spec["width"], spec["height"]
    rw, rh = spec.get("resize_to") or (w, h)
    img = Image.fromarray(rgb, "RGB").resize((rw, rh), Image.BILINEAR)
    left, top = (rw - w) // 2, (rh - h) // 2
    img = img.crop((left, top, left + w, top + h))
    a = np.asarray(img, dtype=np.float32)
    if spec["color"] == "bgr":
        a = a[..., ::-1]
    scale = np.float32(spec.get("scale", 1.0))
    mean = np.asarray(spec.get("mean", [0.0] * 3), dtype=np.float32)
    std = np.asarray(spec.get("std", [1.0] * 3), dtype=np.float32)
    a = (a * scale - mean) / std
    if spec["layout"] in ("nchw", "ncthw"):
        a = a.transpose(2, 0, 1)
    return np.ascontiguousarray(a, dtype=np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--yuv", required=True)
    ap.add_argument("--width", type=int, required=True)
    ap.add_argument("--height", type=int, required=True)
    ap.add_argument("--frames", type=int, required=True)
    ap.add_argument("--matrix", choices=sorted(COEFFS), required=True)
    ap.add_argument("--range", choices=["limited", "full"], default="limited")
    ap.add_argument("--spec", required=True, help="the input spec as JSON")
    ap.add_argument("--out", required=True)
    ap.add_argument("--rgb-out")
    args = ap.parse_args()

    spec = json.loads(args.spec)
    w, h = args.width, args.height
    cw, ch = (w + 1) // 2, (h + 1) // 2
    frame_bytes = w * h + 2 * cw * ch
    data = np.fromfile(args.yuv, dtype=np.uint8)
    if data.size < frame_bytes * args.frames:
        sys.exit(f"{args.yuv}: {data.size} bytes, {args.frames} frames need {frame_bytes * args.frames}")
    tensors, rgbs = [], []
    for f in range(args.frames):
        at = f * frame_bytes
        y = data[at : at + w * h].reshape(h, w)
        u = data[at + w * h : at + w * h + cw * ch].reshape(ch, cw)
        v = data[at + w * h + cw * ch : at + frame_bytes].reshape(ch, cw)
        rgb = to_rgb(y, u, v, args.matrix, args.range == "full")
        rgbs.append(rgb)
        tensors.append(preprocess(rgb, spec))
    np.concatenate([t.ravel() for t in tensors]).astype("<f4").tofile(args.out)
    if args.rgb_out:
        np.concatenate([r.ravel() for r in rgbs]).tofile(args.rgb_out)


if __name__ == "__main__":
    main()
