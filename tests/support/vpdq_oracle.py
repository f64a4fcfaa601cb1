"""The PyPI `vpdq` (Meta's vPDQ C++, 0.2.5) as an oracle for tests/vpdq_reference.rs.

For each video it prints the lines vpdq's own writer (`outputVPDQFeatureToFile`) would write,
`frame_number,quality,pdq_hex,timestamp_seconds`, the timestamp fixed-point with three
decimals. `VpdqFeature.timestamp` holds vpdq's single-precision value widened to a Python
float, so `:.3f` rounds exactly what the C++ stream rounds. A line `# FILE` comes before each
video's lines.

    .venv/bin/python tests/support/vpdq_oracle.py SECONDS_PER_HASH VIDEO...
"""
import sys

import vpdq


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    seconds = float(argv[1])
    out = []
    for video in argv[2:]:
        out.append(f"# {video}")
        for f in vpdq.computeHash(video, seconds_per_hash=seconds):
            out.append(f"{f.frame_number},{f.quality},{f.hex},{f.timestamp:.3f}")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
