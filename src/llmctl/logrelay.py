"""Copy a server's output from a pipe into its log file, rotating by size without losing a line.

    python -m llmctl.logrelay LOG_PATH --max-bytes N --backups K      (reads standard input)

A server writing straight into a file cannot have that file rotated under it without losing
what it writes between copy and truncate; so a small relay per instance owns the file instead.
It runs in its own session, outside the server's process group, so it survives the supervisor
and outlives the server long enough to write its last words: it stops at end of input (every
writer gone), never on SIGTERM/SIGINT/SIGHUP. A full or broken disk drops lines (counted, noted
once it works again) but the relay keeps reading, so the server never blocks on its output.
Rotation renames LOG → LOG.1 → ... → LOG.K; a reader following the file sees the rename and
finishes the old file before opening the new one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path

CHUNK = 65536


class RotatingLog:
    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.fd: int | None = None
        self.size = 0
        self.dropped = 0

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self.fd).st_size

    def _rotate(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.backups <= 0:
            os.truncate(self.path, 0)
            return
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))

    def write(self, data: bytes) -> None:
        """Write whole lines; rotate first when they would push the file past max_bytes."""
        try:
            if self.fd is None:
                self._open()
            if self.size and self.size + len(data) > self.max_bytes:
                self._rotate()
                self._open()
            if self.dropped:
                note = f"[llmctl] {self.dropped} bytes of output were lost while the log could not be written\n"
                self._write_all(note.encode())
                self.dropped = 0
            self._write_all(data)
        except OSError:
            self.dropped += len(data)
            if self.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self.fd)
                self.fd = None

    def _write_all(self, data: bytes) -> None:
        assert self.fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
            self.size += written


def relay(source: int, log: RotatingLog) -> None:
    pending = b""
    while True:
        chunk = os.read(source, CHUNK)
        if not chunk:
            break
        data = pending + chunk
        cut = data.rfind(b"\n") + 1
        # Only whole lines go out, so rotation never splits one across two files.
        if cut:
            log.write(data[:cut])
            pending = data[cut:]
        else:
            pending = data
        if len(pending) > log.max_bytes:  # a "line" longer than the whole log: write it as it is
            log.write(pending)
            pending = b""
    if pending:
        log.write(pending + b"\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmctl-logrelay")
    parser.add_argument("path", type=Path)
    parser.add_argument("--max-bytes", type=int, required=True)
    parser.add_argument("--backups", type=int, required=True)
    args = parser.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    relay(sys.stdin.fileno(), RotatingLog(args.path, max(args.max_bytes, 1024), args.backups))
    return 0


if __name__ == "__main__":
    sys.exit(main())
