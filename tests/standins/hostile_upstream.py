"""An upstream that misbehaves the way real servers do, for the gateway's edge tests.

It speaks llama-server's readiness protocol (GET /health: 200 ok) and answers POST /v1/... by the
`mode` field of the JSON body it receives (the gateway rewrites only `model`, so the field passes):

    echo        200 JSON: the request's headers and body as the upstream saw them (the default)
    gzip        200 JSON compressed with gzip, `Content-Encoding: gzip`, and an exact Content-Length
    stream      `n_events` server-sent events, then [DONE]
    die         server-sent events, then SIGKILL to this very process after `n_events` (kill -9 mid-stream)
    die_plain   a JSON answer with a Content-Length it never finishes, then SIGKILL to itself
    hang        reads the request, then answers nothing, ever (a hung instance)
    silent      sends the status line and one event, then nothing more (an upstream gone silent)
    drop        reads the request, then closes the connection without a byte of answer
    crash       reads the request, then SIGKILL to this very process before answering (a poison request)
    gated       a streamed chat completion: "Hello" at once, then nothing until the file --gate-file exists,
                then " world", finish_reason "stop", usage when asked (stream_options), [DONE]: a test
                sees what reached its client while the upstream was still generating, with no clock

Without a `mode` field, a `model` of "mode-NAME" picks mode NAME (a translated request carries only the
fields its API defines; the instance's `model` setting names the mode then).

Every answer carries headers the gateway must never pass on: the upstream's own Access-Control-*
(a wildcard origin and credentials, as mlx_lm.server and llama-server send them), Set-Cookie,
Server and Alt-Svc. Connections are kept alive (HTTP/1.1) but closed by the server after
--idle-close seconds of quiet, as llama-server does with idle keep-alive connections.

    python hostile_upstream.py --port P [--idle-close 0.3] [--key KEY]

With --key, POSTs without `Authorization: Bearer KEY` get 401 (as llama-server --api-key does).
"""

from __future__ import annotations

import argparse
import gzip
import http.server
import json
import os
import signal
import sys
import threading
import time

LEAKY_HEADERS = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Credentials", "true"),
    ("Access-Control-Allow-Headers", "*"),
    ("Access-Control-Expose-Headers", "X-Secret"),
    ("Set-Cookie", "upstream_session=leaked; Path=/"),
    ("Alt-Svc", 'h2=":9999"'),
)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--idle-close", type=float, default=0.3, help="close a kept-alive connection after this")
    parser.add_argument("--key", default=None)
    parser.add_argument("--gate-file", default=None, help="mode gated: finish once this file exists")
    args = parser.parse_args()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = args.idle_close  # a quiet kept-alive connection is closed by the server after this
        server_version = "hostile-upstream/1.0"

        def do_GET(self) -> None:
            self._json(200, {"status": "ok"})

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if args.key is not None and self.headers.get("Authorization") != f"Bearer {args.key}":
                self._json(401, {"error": {"message": "Invalid API Key", "type": "authentication_error"}})
                return
            payload = json.loads(raw or b"{}")
            model = str(payload.get("model") or "")
            mode = payload.get("mode") or (model[5:] if model.startswith("mode-") else "echo")
            print(f"got a request: mode={mode}", flush=True)
            if mode == "echo":
                self._json(200, {"headers": dict(self.headers.items()), "body": payload, "path": self.path})
            elif mode == "gzip":
                body = gzip.compress(json.dumps({"object": "chat.completion", "content": "x" * 2000}).encode())
                self.send_response(200)
                self._leaky()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif mode == "gated":
                self._gated(bool((payload.get("stream_options") or {}).get("include_usage")))
            elif mode in ("stream", "die", "silent"):
                self._stream(mode, int(payload.get("n_events", 3)))
            elif mode == "die_plain":
                self.send_response(200)
                self._leaky()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                self.wfile.write(b'{"object": "chat.completion", "content": "' + b"y" * 1000)
                self.wfile.flush()
                time.sleep(0.2)
                os.kill(os.getpid(), signal.SIGKILL)
            elif mode == "drop":
                self.close_connection = True
                self.connection.shutdown(2)
            elif mode == "crash":
                os.kill(os.getpid(), signal.SIGKILL)
            elif mode == "hang":
                print(f"hanging on a request ({threading.active_count()} threads)", flush=True)
                time.sleep(3600)
            else:
                self._json(400, {"error": {"message": f"unknown mode {mode!r}", "type": "invalid_request_error"}})

        def _stream(self, mode: str, n_events: int) -> None:
            self.send_response(200)
            self._leaky()
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for number in range(n_events):
                self._chunk(f'data: {{"n": {number}}}\n\n'.encode())
                time.sleep(0.05)
            if mode == "die":
                time.sleep(0.2)
                os.kill(os.getpid(), signal.SIGKILL)  # kill -9 of the upstream while the answer streams
            if mode == "silent":
                time.sleep(3600)
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")

        def _gated(self, usage: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def event(data: dict) -> None:
                self._chunk(b"data: " + json.dumps({"object": "chat.completion.chunk", **data}).encode() + b"\n\n")

            event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello"}}]})
            while not (args.gate_file and os.path.exists(args.gate_file)):
                time.sleep(0.02)
            event({"choices": [{"index": 0, "delta": {"content": " world"}}]})
            event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            if usage:
                event({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _leaky(self) -> None:
            for name, value in LEAKY_HEADERS:
                self.send_header(name, value)

        def _json(self, status: int, data: object) -> None:
            body = json.dumps(data).encode()
            self.send_response(status)
            self._leaky()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"hostile upstream listening on {args.port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
