#!/usr/bin/env bash
# On a fresh Linux machine: install llmctl and real servers, write the tiny demo models, and bring
# up the default instances.yaml (two llama-server instances and one mlx_lm.server).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/python scripts/make_demo_models.py models
.venv/bin/llmctl up "$@"
.venv/bin/llmctl status
