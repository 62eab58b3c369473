"""Copy a server's output from a pipe into its log file, rotating by size without losing a line.

    python -S -I .../llmctl/logrelay.py LOG_PATH --max-bytes N --backups K      (reads standard input)

It imports nothing but the standard library, so it runs without site-packages.

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

import contextlib
import os
import signal
import sys

# No argparse or pathlib: they would add a third to the weight of a process that lives as long as its server.
USAGE = "usage: logrelay.py LOG_PATH --max-bytes N --backups K"

CHUNK = 65536


class RotatingLog:
    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
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
            older = f"{self.path}.{index}"
            if os.path.exists(older):
                os.replace(older, f"{self.path}.{index + 1}")
        os.replace(self.path, f"{self.path}.1")

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


def main(argv: list[str]) -> int:
    try:
        path, max_flag, max_bytes, backups_flag, backups = argv
        if (max_flag, backups_flag) != ("--max-bytes", "--backups"):
            raise ValueError
        limits = int(max_bytes), int(backups)
    except ValueError:
        print(USAGE, file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    relay(sys.stdin.fileno(), RotatingLog(path, max(limits[0], 1024), limits[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
