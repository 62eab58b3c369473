#!/usr/bin/env python3
"""A stand-in for `ollama serve`, NOT Ollama: it speaks the part of Ollama's documented API that
llmctl uses, because Ollama's binary cannot be installed on the machines llmctl is tested on.

    fake_ollama.py serve        listens on $OLLAMA_HOST (host:port)

Endpoints, shaped as Ollama's server/routes.go answers them: GET / ("Ollama is running"),
GET /api/version, GET /api/tags, GET /api/ps, POST /api/pull (stream false), POST /api/generate (no prompt: load the model, answer
done_reason "load"; unknown model: 404), POST /api/chat and /api/embed (they echo the request they got, so a
test sees what a front sent on: the chat's content is the request as JSON, streamed as NDJSON unless
`stream` is false), POST /v1/chat/completions. Like Ollama, a loaded model
lives in a runner child process (here a sleeping Python process holding some memory), in the same
process group as the server.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import time
from typing import ClassVar

KNOWN_MODELS = {"tiny:latest", "llama3.2:latest"}
PULLABLE = {"pullme:latest"}  # not in the library until /api/pull fetches it (slowly: STANDIN_PULL_SECONDS)
RUNNER_BYTES = 32 * 1024 * 1024


def canonical(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


class State:
    runners: ClassVar[dict[str, subprocess.Popen]] = {}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, payload: object, content_type: str = "application/json") -> None:
        body = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/":
            self._send(200, "Ollama is running", "text/plain")
        elif self.path == "/api/version":
            self._send(200, {"version": "0.0.0"})
        elif self.path == "/api/tags":
            self._send(200, {"models": [{"name": name, "model": name, "size": 1} for name in sorted(KNOWN_MODELS)]})
        elif self.path == "/api/ps":
            models = [
                {"name": name, "model": name, "size": RUNNER_BYTES, "size_vram": 0, "context_length": 4096}
                for name, runner in State.runners.items()
                if runner.poll() is None
            ]
            self._send(200, {"models": models})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        request = json.loads(self.rfile.read(length) or b"{}")
        if self.path == "/api/generate":
            model = canonical(str(request.get("model", "")))
            if model not in KNOWN_MODELS:
                self._send(404, {"error": f"model '{request.get('model')}' not found"})
                return
            if model not in State.runners:
                code = f"b = bytearray({RUNNER_BYTES}); import time; time.sleep(100000)"
                State.runners[model] = subprocess.Popen([sys.executable, "-c", code])
                time.sleep(0.2)  # loading
            self._send(200, {"model": model, "response": "", "done": True, "done_reason": "load"})
        elif self.path == "/api/pull":
            self._pull(canonical(str(request.get("model", ""))))
        elif self.path == "/api/chat":
            self._chat(request)
        elif self.path == "/api/embed":
            self._send(200, {"model": request.get("model"), "embeddings": [[1.0, 0.0]], "prompt_eval_count": 1})
        elif self.path == "/v1/chat/completions":
            message = {"role": "assistant", "content": "stand-in reply"}
            self._send(200, {"object": "chat.completion", "choices": [{"index": 0, "message": message}]})
        else:
            self._send(404, {"error": "not found"})

    def _chat(self, request: dict) -> None:
        model = str(request.get("model", ""))
        if canonical(model) not in KNOWN_MODELS:
            self._send(404, {"error": f"model '{model}' not found"})
            return
        done = {
            "model": model,
            "created_at": "2026-01-01T00:00:00Z",
            "done": True,
            "done_reason": "stop",
            "eval_count": 1,
            "prompt_eval_count": 1,
        }
        echo = json.dumps(request, sort_keys=True)
        if request.get("stream") is False:
            self._send(200, {**done, "message": {"role": "assistant", "content": echo}})
            return
        lines = [
            {
                "model": model,
                "created_at": "2026-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": echo},
                "done": False,
            },
            {**done, "message": {"role": "assistant", "content": ""}},
        ]
        self._send(200, "".join(json.dumps(line) + "\n" for line in lines), "application/x-ndjson")

    def _pull(self, model: str) -> None:
        if model not in PULLABLE:
            self._send(500, {"error": "pull model manifest: file does not exist"})
            return
        folder = os.environ.get("OLLAMA_MODELS") or os.path.expanduser("~/.ollama/models")
        os.makedirs(os.path.join(folder, "blobs"), exist_ok=True)
        seconds = float(os.environ.get("STANDIN_PULL_SECONDS", "2"))
        with open(os.path.join(folder, "blobs", "sha256-standin-partial"), "ab") as blob:
            for _ in range(int(seconds / 0.25)):
                blob.write(b"\0" * (256 * 1024))
                blob.flush()
                time.sleep(0.25)
        KNOWN_MODELS.add(model)
        self._send(200, {"status": "success"})

    def log_message(self, fmt: str, *args: object) -> None:
        sys.stdout.write("stand-in ollama: " + fmt % args + "\n")
        sys.stdout.flush()


def main() -> int:
    if sys.argv[1:2] != ["serve"]:
        print("usage: fake_ollama.py serve", file=sys.stderr)
        return 2
    host, _, port = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434").rpartition(":")
    server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
    print(f"stand-in ollama listening on {host}:{port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
