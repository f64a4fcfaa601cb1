"""Meta's vPDQ (PyPI `vpdq` 0.2.5, the reference C++) on a video, printed the way vpdq writes
its hash files: one `frame_number,quality,pdq_hex,timestamp_seconds` line per hashed frame.

    .venv/bin/python tests/support/vpdq_oracle.py VIDEO SECONDS_PER_HASH
"""
import sys

import vpdq


def main():
    video, seconds = sys.argv[1], float(sys.argv[2])
    for f in vpdq.computeHash(video, seconds_per_hash=seconds):
        print(f"{f.frame_number},{f.quality},{f.hex},{f.timestamp:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
