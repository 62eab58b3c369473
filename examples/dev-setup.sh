#!/usr/bin/env bash
# Start the model servers an app needs, wait until they answer, and run the app with their URLs:
#
#   examples/dev-setup.sh npm run dev          # or: python app.py, uvicorn main:app, ...
#
# The app reads LLMCTL_<NAME>_URL (an instance named `mlx-chat` gives LLMCTL_MLX_CHAT_URL) and
# LLMCTL_GATEWAY_URL when the config has a gateway; LLMCTL_<NAME>_OPENAI_URL and OPENAI_BASE_URL give
# the OpenAI base URLs (.../v1). Set LLMCTL_CONFIG to use another config file.
set -euo pipefail

# Idempotent: instances already running are left alone; exit 1 names any that failed.
if ! llmctl up --timeout "${LLMCTL_UP_TIMEOUT:-900}"; then
    llmctl status >&2
    exit 1
fi
eval "$(llmctl env)"

if [ "$#" -eq 0 ]; then
    env | grep '^LLMCTL_.*_URL=' | sort
    exit 0
fi
exec "$@"
