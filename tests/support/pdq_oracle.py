"""Reference PDQ hashes from Meta's C++ implementation (PyPI `pdqhash` 0.2.8) for pixel data that
the Rust tests hash too, so both sides hash the very same RGB bytes.

    .venv/bin/python tests/support/pdq_oracle.py --out DIR [--testdata ../shared/testdata/threatexchange]

Writes DIR/NAME.rgb (H*W*3 uint8, row-major RGB) and DIR/NAME.png (the same pixels) per image,
and DIR/manifest.json. With
--testdata it also prints the Hamming distances of our hashes to pdq-expected.csv.
"""
import argparse
import csv
import json
import os
import sys

import numpy as np
import pdqhash
from PIL import Image


def to_hex(bits):
    # pdqhash returns bit 255 first (its hash_to_vector reverses the words' bits), so reading
    # the vector as one big-endian binary number gives Meta's printed form: 16-bit words,
    # word 15 first, bit k = DCT cell (k/16, k%16).
    return "%064x" % int("".join(map(str, bits)), 2)


def natural(rs, w, h):
    """Smooth gradients, many overlapping shapes and mild noise: a photo-like picture of any
    size. Enough edges that PDQ rates it quality ~100, so every bit is meaningful."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = x / max(w - 1, 1), y / max(h - 1, 1)
    img = np.stack([200 * u + 30, 160 * v + 40 * np.sin(6 * u), 120 + 80 * np.cos(4 * u + 3 * v)], -1)
    for _ in range(30):
        cx, cy, r = rs.uniform(0, 1), rs.uniform(0, 1), rs.uniform(0.02, 0.15)
        color = rs.uniform(0, 255, 3)
        if rs.rand() < 0.5:
            mask = (u - cx) ** 2 + ((v - cy) * h / max(w, 1)) ** 2 < r * r
        else:
            mask = (abs(u - cx) < r) & (abs(v - cy) < r / 2)
        img[mask] = 0.2 * img[mask] + 0.8 * color
    img += rs.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def noise(rs, w, h):
    return rs.randint(0, 256, (h, w, 3)).astype(np.uint8)


def nearly_flat(rs, w, h):
    # +-1 grey-level jitter: real signal far below PDQ's quality threshold.
    return (128 + rs.randint(-1, 2, (h, w, 3))).astype(np.uint8)


# (name, generator, width, height, seed). Sizes cover PDQ's branches: below the 5-pixel minimum
# (zero hash, quality 0), the exact-64x64 path that skips downscaling, odd/non-square sizes.
SYNTHETIC = [
    ("noise_256x256", noise, 256, 256, 1),
    ("natural_640x480", natural, 640, 480, 2),
    ("nearly_flat_320x240", nearly_flat, 320, 240, 3),
    ("natural_333x517", natural, 333, 517, 4),
    ("natural_7x9", natural, 7, 9, 5),
    ("noise_5x5", noise, 5, 5, 6),
    ("noise_4x4", noise, 4, 4, 7),
    ("natural_64x64", natural, 64, 64, 8),
    ("noise_64x64", noise, 64, 64, 9),
    ("natural_1280x720", natural, 1280, 720, 10),
    ("natural_127x128", natural, 127, 128, 11),
    ("natural_1000x3", natural, 1000, 3, 12),
    ("natural_3x1000", natural, 3, 1000, 13),
]


def entry(out, name, arr, **extra):
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    h, w, _ = arr.shape
    with open(os.path.join(out, name + ".rgb"), "wb") as f:
        f.write(arr.tobytes())
    # the same pixels, losslessly, for the command-line tool
    Image.fromarray(arr, "RGB").save(os.path.join(out, name + ".png"))
    bits, quality = pdqhash.compute(arr)
    # compute_dihedral -> ([8 bit vectors], quality), order: original, rotate90, rotate180,
    # rotate270, flipX, flipY, flipPlus1 (transpose), flipMinus1 (anti-transpose).
    dih, dq = pdqhash.compute_dihedral(arr)
    assert dq == quality and to_hex(dih[0]) == to_hex(bits), name
    return {"name": name, "width": w, "height": h, "file": name + ".rgb", "png": name + ".png",
            "pdq_hex": to_hex(bits),
            "quality": int(quality), "dihedral": [to_hex(d) for d in dih], **extra}


def hamming(a, b):
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--testdata", help="ThreatExchange folder with pdq/ and pdq-expected.csv")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    manifest = []
    for name, gen, w, h, seed in SYNTHETIC:
        manifest.append(entry(args.out, name, gen(np.random.RandomState(seed), w, h),
                              source="synthetic", expected_pdq_hex=None, expected=[]))

    if args.testdata:
        # Some files have rows from two reference implementations; keep them all.
        expected = {}
        with open(os.path.join(args.testdata, "pdq-expected.csv"), newline="") as f:
            for row in csv.DictReader(f):
                expected.setdefault(row["file"], []).append(
                    {"pdq_hex": row["expected_pdq_hex"], "reference": row["reference"]})
        rels = sorted(
            os.path.relpath(os.path.join(d, fn), args.testdata).replace(os.sep, "/")
            for d, _, fns in os.walk(os.path.join(args.testdata, "pdq"))
            for fn in fns if fn.lower().endswith((".jpg", ".jpeg", ".png")))
        dists = []
        for rel in rels:
            # Pillow's libjpeg decode; PNG alpha is dropped (convert, no compositing), as the
            # references do. EXIF orientation is deliberately not applied.
            with Image.open(os.path.join(args.testdata, rel)) as im:
                arr = np.asarray(im.convert("RGB"))
            exps = expected.get(rel, [])
            # expected_pdq_hex: the file's first csv row (or null); expected: every row.
            e = entry(args.out, rel.replace("/", "__"), arr, source="testdata",
                      expected_pdq_hex=exps[0]["pdq_hex"] if exps else None, expected=exps)
            manifest.append(e)
            for x in exps:
                dists.append((hamming(e["pdq_hex"], x["pdq_hex"]), rel, x["reference"]))
                print(f"{dists[-1][0]:3d}  q={e['quality']:3d}  {x['reference']:17s} {rel}")
            if not exps:
                print(f"  -  q={e['quality']:3d}  (not in csv)      {rel}")
        if dists:
            d = sorted(x[0] for x in dists)
            print(f"distance to pdq-expected.csv over {len(d)} rows: min {d[0]}, "
                  f"median {d[len(d) // 2]}, max {d[-1]}, exact {d.count(0)}, >16: {sum(x > 16 for x in d)}")
            for ref in sorted({x[2] for x in dists}):
                sub = [x[0] for x in dists if x[2] == ref]
                print(f"  {ref}: n={len(sub)} max {max(sub)} mean {sum(sub) / len(sub):.1f}")
            missing = sorted(set(expected) - set(rels))
            if missing:
                print("in csv but not found:", ", ".join(missing))

    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"wrote {len(manifest)} images and manifest.json to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
