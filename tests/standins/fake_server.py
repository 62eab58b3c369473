"""A small purpose-built server for faults that concern process behaviour, not a model.

It speaks llama-server's readiness protocol (GET /health: 503 `Loading model`, then 200 ok) and
misbehaves on request:

    --port P               listen on 127.0.0.1:P
    --load-seconds S       answer 503 for S seconds first (a slow model load)
    --never-ready          answer 503 forever (a stuck load)
    --exit-at-once CODE    exit with CODE before listening (a crash at start)
    --ignore-term          ignore SIGTERM (only SIGKILL stops it)
    --children N           fork N children that sleep in the same process group
    --escaping-child       fork a grandchild that calls setsid and keeps stdout open
    --flood N              print numbered lines to stdout, N per second
    --allocate-mb N        hold N MiB of resident memory
    --sick-file PATH       answer 500 to /health while PATH exists (a hung or broken server)
    --exit-file PATH       once PATH exists, exit with the code it holds (0 if empty)
    --tick S               print "tick N" every S seconds
    --count-term           print "got SIGTERM" for each SIGTERM, and exit 0.5 s after the first
    --say-hex HEX          write these bytes to stdout at start (escape sequences, broken UTF-8)
"""

from __future__ import annotations

import argparse
import http.server
import os
import signal
import subprocess
import sys
import threading
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--load-seconds", type=float, default=0.0)
    parser.add_argument("--never-ready", action="store_true")
    parser.add_argument("--exit-at-once", type=int)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--children", type=int, default=0)
    parser.add_argument("--escaping-child", action="store_true")
    parser.add_argument("--allocate-mb", type=int, default=0, help="hold this much memory once ready")
    parser.add_argument("--flood", type=float, default=0.0, help="numbered lines per second")
    parser.add_argument("--sick-file")
    parser.add_argument("--exit-file")
    parser.add_argument("--tick", type=float, default=0.0)
    parser.add_argument("--count-term", action="store_true")
    parser.add_argument("--say-hex", default="")
    parser.add_argument("--log-probes", action="store_true", help="print the monotonic time of each GET")
    parser.add_argument(
        "--zombie-leader", type=float, default=0.0, help="on SIGTERM the main thread exits, another lives N s more"
    )
    args = parser.parse_args()

    print(f"fake server pid {os.getpid()} starting", flush=True)
    if args.exit_at_once is not None:
        print(f"fake server: exiting at once with {args.exit_at_once}", flush=True)
        return args.exit_at_once
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.say_hex:
        sys.stdout.buffer.write(bytes.fromhex(args.say_hex))
        sys.stdout.flush()
    if args.count_term:
        signal.signal(signal.SIGTERM, _count_term)
    if args.zombie_leader:
        signal.signal(signal.SIGTERM, lambda *_: _leave_a_zombie_leader(args.zombie_leader))
    for _ in range(args.children):
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"])
    if args.escaping_child:
        subprocess.Popen(
            [sys.executable, "-c", "import os, time; os.setsid(); time.sleep(1000)"],
            stdout=sys.stdout,
            stderr=sys.stderr,
        )
    if args.flood:
        threading.Thread(target=_flood, args=(args.flood,), daemon=True).start()

    ballast = bytearray(args.allocate_mb * 1024 * 1024)
    for offset in range(0, len(ballast), 4096):
        ballast[offset] = 1  # touch every page so it is resident
    ready_at = time.monotonic() + args.load_seconds

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if args.log_probes:
                print(f"probe at {time.monotonic():.6f}", flush=True)
            ready = not args.never_ready and time.monotonic() >= ready_at
            body = b'{"status":"ok"}' if ready else b'{"error":{"code":503,"message":"Loading model"}}'
            sick = args.sick_file and os.path.exists(args.sick_file)
            self.send_response(500 if sick else 200 if ready else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            """An OpenAI-style answer that echoes the `model` it received; with "stream": true, `n_events`
            server-sent events 0.1 s apart (or `event_interval`), then [DONE]."""
            import json

            payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if not payload.get("stream"):
                body = json.dumps(
                    {
                        "object": "chat.completion",
                        "received_model": payload.get("model", "<none>"),
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            try:
                for number in range(int(payload.get("n_events", 10))):
                    self.wfile.write(f'data: {{"n": {number}}}\n\n'.encode())
                    self.wfile.flush()
                    time.sleep(float(payload.get("event_interval", 0.1)))
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                print("stream done", flush=True)
            except (BrokenPipeError, ConnectionResetError):
                print("stream aborted: the client went away", flush=True)

        def log_message(self, *_: object) -> None:
            pass

    if args.exit_file:
        threading.Thread(target=_exit_when, args=(args.exit_file,), daemon=True).start()
    if args.tick:
        threading.Thread(target=_tick, args=(args.tick,), daemon=True).start()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    _say(f"fake server listening on {args.port}")
    server.serve_forever()
    return 0


def _leave_a_zombie_leader(seconds: float) -> None:
    """The main thread ends (pthread_exit) while another thread holds on: the process is a zombie
    leader with a live thread, as a server whose worker threads outlive main() is."""
    import ctypes

    def linger() -> None:
        time.sleep(seconds)
        print(f"last thread done at {time.time():.6f}", flush=True)
        os._exit(0)

    threading.Thread(target=linger).start()
    print("main thread exits", flush=True)
    ctypes.CDLL(None).pthread_exit(None)


def _count_term(*_: object) -> None:
    print("got SIGTERM", flush=True)
    threading.Timer(0.5, os._exit, args=(0,)).start()


def _exit_when(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.02)
    with open(path) as source:
        code = int(source.read().strip() or 0)
    os.unlink(path)
    print(f"fake server exiting with code {code}", flush=True)
    os._exit(code)


def _say(line: str) -> None:
    """One whole line in one write: print() writes the text and the newline apart, and two threads
    printing at once interleave ("listening on 123tick 1")."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _tick(seconds: float) -> None:
    number = 0
    while True:
        number += 1
        _say(f"tick {number}")
        time.sleep(seconds)


def _flood(per_second: float) -> None:
    number = 0
    started = time.monotonic()
    while True:
        due = int((time.monotonic() - started) * per_second)
        while number < due:
            number += 1
            sys.stdout.write(f"line {number}\n")
        sys.stdout.flush()
        time.sleep(0.005)


if __name__ == "__main__":
    sys.exit(main())
