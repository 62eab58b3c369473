#!/usr/bin/env python3
"""A server that takes long to start, in the ways real ones do, then serves GET /v1/models:

--download-seconds S   "download" REPO into the Hugging Face cache ($HF_HOME/hub) for S seconds,
                       a chunk every 0.25 s, printing nothing (only the cache folder grows)
--repo ORG/NAME        the repository the download is for
--log-seconds S        then "load" for S seconds, printing a progress line every 0.5 s
--stall                after one line, do nothing at all: no output, no port (a hung start)
"""

from __future__ import annotations

import argparse
import http.server
import os
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--download-seconds", type=float, default=0.0)
    parser.add_argument("--repo", default="standin/slow-model")
    parser.add_argument("--log-seconds", type=float, default=0.0)
    parser.add_argument("--stall", action="store_true")
    args = parser.parse_args()
    print(f"slow start pid {os.getpid()}", flush=True)
    if args.stall:
        time.sleep(100_000)
    if args.download_seconds:
        _download(args.repo, args.download_seconds)
    for step in range(int(args.log_seconds / 0.5)):
        print(f"loading tensors {step}", flush=True)
        time.sleep(0.5)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"object": "list", "data": [{"id": "slow"}]}'
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    print("serving", flush=True)
    http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
    return 0


def _download(repo: str, seconds: float) -> None:
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    blobs = home / "hub" / f"models--{repo.replace('/', '--')}" / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    with open(blobs / "0123abcd.incomplete", "ab") as partial:
        for _ in range(int(seconds / 0.25)):
            partial.write(b"\0" * (512 * 1024))
            partial.flush()
            time.sleep(0.25)


if __name__ == "__main__":
    sys.exit(main())
