#!/usr/bin/env bash
# Installs ONNX Runtime's CUDA build for livewatch on a GPU server, and prints the lines the
# systemd unit needs to load it.
#
# livewatch loads ONNX Runtime at run time (the `ort` crate's load-dynamic), so the same binary
# runs on CPU-only hosts (the `onnxruntime` wheel that scripts/setup.sh installs) and on GPU
# servers (this script). It installs, into a Python virtual environment of its own:
#   onnxruntime-gpu[cuda,cudnn]==1.31.1   the CUDA 13 build from PyPI, with NVIDIA's CUDA
#                                         runtime, cuBLAS, cuFFT, cuRAND, NVRTC and cuDNN 9
#                                         wheels, so no system CUDA toolkit is needed.
# livewatch then needs two environment variables, printed at the end as Environment= lines:
#   ORT_DYLIB_PATH   onnxruntime/capi/libonnxruntime.so.1.31.1 (keep the capi/ folder whole:
#                    the CUDA and TensorRT providers are libraries next to it, loaded from there)
#   LD_LIBRARY_PATH  the wheels' nvidia/*/lib folders (Python's onnxruntime finds them by
#                    itself; a Rust program does not)
#
# Needs: an NVIDIA driver recent enough for CUDA 13 (nvidia-smi shows "CUDA Version: 13.x"),
# python3-venv, and network access to PyPI.
#
# TensorRT (providers = ["tensorrt", "cuda"]) is NOT installed by this script: install
# TensorRT 10 for CUDA 13 separately (NVIDIA's apt repository, or its pip wheels) and add the
# folder holding libnvinfer.so.10 to LD_LIBRARY_PATH. The first start with TensorRT builds
# engines for minutes; give livewatch a cache folder for them (e.g. /var/cache/livewatch/tensorrt,
# inside the unit's CacheDirectory) so later starts take seconds.
#
# Usage: scripts/install-onnxruntime-gpu.sh [PREFIX]
#   PREFIX: where the environment goes (default /opt/livewatch/onnxruntime-gpu). Re-running it
#   is safe: an existing environment is reused and the pinned packages are checked.
#   PYTHON=/path/to/python3 chooses the interpreter (default /usr/bin/python3).
set -euo pipefail

ORT_VERSION=1.31.1
PREFIX="${1:-/opt/livewatch/onnxruntime-gpu}"
PYTHON="${PYTHON:-/usr/bin/python3}"

if command -v nvidia-smi >/dev/null 2>&1; then
  echo "install-onnxruntime-gpu: NVIDIA driver: $(nvidia-smi --query-gpu=driver_version,name --format=csv,noheader | head -n 1)"
else
  echo "install-onnxruntime-gpu: warning: nvidia-smi not found; the CUDA provider needs an NVIDIA driver" >&2
fi

if [ ! -x "$PREFIX/bin/python" ]; then
  echo "install-onnxruntime-gpu: creating the Python environment in $PREFIX"
  "$PYTHON" -m venv "$PREFIX"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
"$PREFIX/bin/python" -m pip install --quiet --upgrade pip
echo "install-onnxruntime-gpu: installing onnxruntime-gpu[cuda,cudnn]==$ORT_VERSION (about 2 GB with the CUDA wheels)"
"$PREFIX/bin/python" -m pip install --quiet "onnxruntime-gpu[cuda,cudnn]==$ORT_VERSION"

site_packages="$("$PREFIX/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
capi="$site_packages/onnxruntime/capi"
lib="$capi/libonnxruntime.so.$ORT_VERSION"
if [ ! -f "$lib" ]; then
  echo "install-onnxruntime-gpu: error: $lib is missing after the install" >&2
  exit 1
fi
if [ ! -f "$capi/libonnxruntime_providers_cuda.so" ]; then
  echo "install-onnxruntime-gpu: error: no CUDA provider in $capi: is this the CPU wheel?" >&2
  exit 1
fi

# Every nvidia/<component>/lib (or nvidia/cu13/lib) folder that holds shared libraries.
lib_dirs=()
if [ -d "$site_packages/nvidia" ]; then
  while IFS= read -r dir; do
    if compgen -G "$dir/*.so*" >/dev/null; then
      lib_dirs+=("$dir")
    fi
  done < <(find "$site_packages/nvidia" -mindepth 2 -maxdepth 3 -type d -name lib | sort)
fi
if [ ${#lib_dirs[@]} -eq 0 ]; then
  echo "install-onnxruntime-gpu: error: no nvidia/*/lib folders under $site_packages" >&2
  exit 1
fi
ld_library_path="$(IFS=:; echo "${lib_dirs[*]}")"

# A quick check that the CUDA provider's libraries resolve with these paths.
echo "install-onnxruntime-gpu: checking the CUDA provider's libraries"
missing="$(LD_LIBRARY_PATH="$ld_library_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  ldd "$capi/libonnxruntime_providers_cuda.so" | grep 'not found' || true)"
if [ -n "$missing" ]; then
  echo "install-onnxruntime-gpu: warning: libraries the CUDA provider needs are not found:" >&2
  echo "$missing" >&2
fi

cat <<EOF

ONNX Runtime $ORT_VERSION (CUDA) is in $PREFIX.
Put these lines in the livewatch unit (systemctl edit livewatch), then restart it:

[Service]
Environment=ORT_DYLIB_PATH=$lib
Environment=LD_LIBRARY_PATH=$ld_library_path

and choose the provider in the config (providers = ["cuda"]; with TensorRT installed,
["tensorrt", "cuda"]). livewatch logs the provider each model runs on at start-up, and
refuses to start when a configured provider fails unless CPU fallback is allowed.
TensorRT 10 is a separate install: add the folder with libnvinfer.so.10 to LD_LIBRARY_PATH.
EOF
