#!/usr/bin/env bash
# Prove the GPU path on a machine with an NVIDIA GPU (benchmarks/gpu_check.py): ONNX Runtime
# on CUDA, a replica served on a GPU, and a use_gpu training job; results in
# benchmarks/results/gpu.{md,json}. Without a GPU it says so and exits 2 before installing
# anything. Arguments go to the check (--seconds N per measurement).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check: no NVIDIA GPU here (nvidia-smi cannot list one); run it on a machine with one" >&2
  exit 2
fi
scripts/setup.sh dev
# onnxruntime-gpu in place of onnxruntime: both install the module `onnxruntime`, and the
# one installed last wins. The GPU build runs on CPUs too, so the venv stays usable.
if ! .venv/bin/python -c 'import onnxruntime, sys; sys.exit("CUDAExecutionProvider" not in onnxruntime.get_available_providers())'; then
  .venv/bin/python -m pip uninstall --quiet -y onnxruntime
  .venv/bin/python -m pip install --quiet -e '.[gpu]'
fi
exec .venv/bin/python -m benchmarks.gpu_check "$@"
