"""The log hub: copies every instance's output from its FIFO into its log file, rotating by size.

    python -S -I .../llmctl/logrelay.py PIPES_DIR LOGS_DIR

One process per state folder serves every instance (one bare interpreter, ~4 MiB PSS, instead of
one per instance). It imports nothing but the standard library, so it runs without site-packages.

Each server writes to `PIPES_DIR/NAME.fifo`; this copies it to `LOGS_DIR/NAME.log`. The hub holds
each FIFO open for reading *and* writing, and so does the supervisor: a server never sees a closed
pipe (no SIGPIPE, no EPIPE) while either lives, and if the hub dies the supervisor starts another,
which picks up every FIFO where the last one stopped: the kernel kept what was written meanwhile.
The hub runs in its own session, so it outlives the supervisor; SIGINT and SIGHUP do not stop it.
SIGWINCH means "look for new or removed FIFOs now" (a signal whose default action is to be ignored,
so a nudge that arrives before the handler is installed cannot kill it); SIGTERM makes it drain
every FIFO and exit.

A FIFO whose file is removed is drained and closed. `PIPES_DIR/limits` holds "MAX_BYTES BACKUPS":
logs rotate NAME.log -> NAME.log.1 -> ... -> NAME.log.K. Only whole lines go out, so rotation
never splits one; a line longer than MAX_LINE is split, each piece ending with a visible marker,
so neither the hub nor a reader ever holds an unbounded line. A full or broken disk drops lines
(counted, noted once it works again) but the hub keeps reading, so a server never blocks.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import stat
import sys
import time

CHUNK = 65536
MAX_LINE = 64 * 1024
SPLIT_MARKER = b" [llmctl: line continues]\n"
RESCAN_MS = 2000
DEFAULT_LIMITS = (10 * 1024 * 1024, 3)
USAGE = "usage: logrelay.py PIPES_DIR LOGS_DIR"


MARK_EVERY_S = 1.0
MAX_MARKS_BYTES = 256 * 1024


class RotatingLog:
    """NAME.log and its rotations, with NAME.marks beside them: `EPOCH INODE OFFSET` lines that
    say where each file stood at a time, at most one a second while output flows. Lines carry no
    timestamps of their own (they are the server's), so `llmctl logs --since` reads these."""

    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.fd: int | None = None
        self.dropped = 0
        self.marked_at = 0.0

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        self.fd = os.open(self.path, flags, 0o600)
        if not stat.S_ISREG(os.fstat(self.fd).st_mode):  # a FIFO or device planted in its place
            self.close()
            raise OSError("not a regular file")

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def _rotate(self) -> None:
        self.close()
        self._record_rotation()
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
            assert self.fd is not None
            # fstat, not a counter: the supervisor appends its own lines to the same file.
            size = os.fstat(self.fd).st_size
            if size and size + len(data) > self.max_bytes:
                self._rotate()
                self._open()
                size, self.marked_at = 0, 0.0
            self._mark(size)
            if self.dropped:
                note = f"[llmctl] {self.dropped} bytes of output were lost while the log could not be written\n"
                self._write_all(note.encode())
                self.dropped = 0
            self._write_all(data)
        except OSError:
            self.dropped += len(data)
            self.close()

    def _mark(self, offset: int) -> None:
        now = time.time()
        if now - self.marked_at < MARK_EVERY_S:
            return
        self.marked_at = now
        assert self.fd is not None
        marks = self.path.removesuffix(".log") + ".marks"
        with contextlib.suppress(OSError):
            if os.path.getsize(marks) > MAX_MARKS_BYTES:
                self._trim_marks(marks)
        self._append_mark(f"{now:.3f} {os.fstat(self.fd).st_ino} {offset}\n")

    def _record_rotation(self) -> None:
        """`rotated INODE LINES` in NAME.marks, before the file moves: how many lines the file that
        rotates out holds, so a follower that falls behind by more than `backups` rotations can say
        how many lines it missed (llmctl.logs.files). Counted from the file itself, which holds the
        supervisor's own lines too; at most max_bytes read, once per rotation."""
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
            try:
                inode, lines = os.fstat(fd).st_ino, 0
                while chunk := os.read(fd, CHUNK):
                    lines += chunk.count(b"\n")
            finally:
                os.close(fd)
            self._append_mark(f"rotated {inode} {lines}\n")

    def _append_mark(self, line: str) -> None:
        marks = self.path.removesuffix(".log") + ".marks"
        with contextlib.suppress(OSError):
            fd = os.open(marks, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)

    def _trim_marks(self, marks: str) -> None:
        """Keep the newer half: the files the older marks point into have rotated away, or will soon."""
        with open(marks, "rb") as file:
            lines = file.read().splitlines(keepends=True)
        temporary = marks + ".tmp"
        with open(temporary, "wb") as file:
            file.writelines(lines[len(lines) // 2 :])
        os.replace(temporary, marks)

    def _write_all(self, data: bytes) -> None:
        assert self.fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]


def split_lines(pending: bytes, chunk: bytes, max_line: int = MAX_LINE) -> tuple[bytes, bytes]:
    """(whole lines to write, what is left of an unfinished line); over-long lines are split."""
    data = pending + chunk
    cut = data.rfind(b"\n") + 1
    out, rest = data[:cut], data[cut:]
    if len(out) > max_line and max(map(len, out.split(b"\n"))) > max_line:
        out = b"".join(_split_line(line, max_line) for line in out.splitlines(keepends=True))
    pieces = []
    while len(rest) > max_line:
        pieces.append(rest[:max_line] + SPLIT_MARKER)
        rest = rest[max_line:]
    return out + b"".join(pieces), rest


def _split_line(line: bytes, max_line: int) -> bytes:
    pieces = []
    while len(line.rstrip(b"\r\n")) > max_line:
        pieces.append(line[:max_line] + SPLIT_MARKER)
        line = line[max_line:]
    return b"".join(pieces) + line


class Pipe:
    def __init__(self, name: str, fd: int, identity: tuple[int, int], log: RotatingLog) -> None:
        self.name, self.fd, self.identity, self.log = name, fd, identity, log
        self.pending = b""

    def drain(self) -> None:
        """Read what the FIFO holds now (never blocks: the descriptor is non-blocking)."""
        while True:
            try:
                chunk = os.read(self.fd, CHUNK)
            except BlockingIOError:
                return
            except OSError:
                return
            if not chunk:
                return
            lines, self.pending = split_lines(self.pending, chunk)
            if lines:
                self.log.write(lines)
            if len(chunk) < CHUNK:
                return

    def close(self) -> None:
        self.drain()
        if self.pending:
            self.log.write(self.pending + b"\n")
            self.pending = b""
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.log.close()


class Hub:
    def __init__(self, pipes_dir: str, logs_dir: str) -> None:
        self.pipes_dir, self.logs_dir = pipes_dir, logs_dir
        self.pipes: dict[int, Pipe] = {}
        self.poller = select.poll()

    def limits(self) -> tuple[int, int]:
        try:
            fd = os.open(os.path.join(self.pipes_dir, "limits"), os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise ValueError("not a regular file")
                max_bytes, backups = os.read(fd, 64).split()[:2]
            finally:
                os.close(fd)
            return max(int(max_bytes), 1024), max(int(backups), 0)
        except (OSError, ValueError):
            return DEFAULT_LIMITS

    def rescan(self) -> None:
        present: dict[str, tuple[int, int]] = {}
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.pipes_dir):
                if entry.name.endswith(".fifo"):
                    with contextlib.suppress(OSError):
                        info = entry.stat(follow_symlinks=False)
                        if stat.S_ISFIFO(info.st_mode):
                            present[entry.name[: -len(".fifo")]] = (info.st_dev, info.st_ino)
        for fd, pipe in list(self.pipes.items()):
            if present.get(pipe.name) != pipe.identity:
                self.forget(fd)
        open_names = {pipe.name for pipe in self.pipes.values()}
        max_bytes, backups = self.limits()
        for name, identity in present.items():
            if name not in open_names:
                self.open(name, identity, max_bytes, backups)

    def open(self, name: str, identity: tuple[int, int], max_bytes: int, backups: int) -> None:
        path = os.path.join(self.pipes_dir, name + ".fifo")
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        log = RotatingLog(os.path.join(self.logs_dir, name + ".log"), max_bytes, backups)
        self.pipes[fd] = Pipe(name, fd, identity, log)
        self.poller.register(fd, select.POLLIN)

    def forget(self, fd: int) -> None:
        pipe = self.pipes.pop(fd)
        self.poller.unregister(fd)
        pipe.close()

    def run(self, wakeup: int, flags: dict[str, bool]) -> None:
        self.rescan()
        while not flags["stop"]:
            events = self.poller.poll(RESCAN_MS)
            for fd, _event in events:
                if fd == wakeup:
                    with contextlib.suppress(OSError):
                        os.read(wakeup, 4096)
                elif fd in self.pipes:
                    self.pipes[fd].drain()
            if flags["rescan"] or not events:
                flags["rescan"] = False
                self.rescan()
        for fd in list(self.pipes):
            self.forget(fd)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(USAGE, file=sys.stderr)
        return 2
    flags = {"stop": False, "rescan": False}
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGWINCH, lambda *_: flags.__setitem__("rescan", True))
    signal.signal(signal.SIGTERM, lambda *_: flags.__setitem__("stop", True))
    hub = Hub(argv[0], argv[1])
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end)
    hub.poller.register(read_end, select.POLLIN)
    hub.run(read_end, flags)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
