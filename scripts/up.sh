#!/usr/bin/env bash
# On a fresh Linux machine: install llmctl and real servers, fetch SmolLM2-135M-Instruct (once; ~93 MB,
# cached in ./models) and convert it for MLX, and bring up the default instances.yaml (two
# llama-server instances, one of them on demand, and one mlx_lm.server, behind the gateway on 8080).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/python scripts/fetch_model.py models
.venv/bin/llmctl up "$@"
.venv/bin/llmctl status
