#!/usr/bin/env bash
# Runs the demo: four clips replayed as live streams, one of them in a hash bank; alerts are
# received by the demo's own webhook receiver and printed. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo run --locked -- demo "$@"
