#!/usr/bin/env bash
# Runs the whole test suite: installs what it needs (scripts/setup.sh), then every test target.
# The integration tests start real peers: GStreamer's RTSP server, a webhook receiver that
# verifies signatures with the Standard Webhooks reference library, and Meta's PDQ (pdqhash).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
# ThreatExchange conformance data, when it sits beside the checkout (tests say loudly if not)
if [ -z "${LIVEWATCH_TESTDATA:-}" ] && [ -d ../shared/testdata/threatexchange ]; then
  LIVEWATCH_TESTDATA="$(cd ../shared/testdata/threatexchange && pwd)"
  export LIVEWATCH_TESTDATA
fi
cargo test --locked --workspace --all-targets -- --test-threads 2
