#!/usr/bin/env bash
# Install everything (as scripts/install.sh does) and run the whole test suite on real servers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check src tests scripts bench
exec .venv/bin/python -m pytest "$@"
