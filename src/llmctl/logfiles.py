"""Read instance logs: the last lines, or follow them as they grow (surviving truncation and rotation)."""

from __future__ import annotations

import os
import stat
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

FOLLOW_POLL = 0.1


def _open_log(path: Path) -> BinaryIO:
    """Open a log for reading without following a symlink someone planted in its place, nor hanging
    on a FIFO: only a regular file is read."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    return os.fdopen(fd, "rb")


def last_lines(path: Path, count: int) -> list[str]:
    """The last `count` lines of a log, read from the end so a large log costs little."""
    if count <= 0:
        return []
    try:
        with _open_log(path) as log:
            log.seek(0, os.SEEK_END)
            end = log.tell()
            block = 65536
            data = b""
            position = end
            while position > 0 and data.count(b"\n") <= count:
                position = max(0, position - block)
                log.seek(position)
                data = log.read(end - position)
    except OSError:  # missing, or a symlink (ELOOP): nothing to show
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-count:]


class _Follower:
    """One followed file; reopens it when it is replaced (rotation) or shrinks (truncation)."""

    def __init__(self, path: Path, from_end: bool) -> None:
        self.path = path
        self.handle: BinaryIO | None = None
        self.inode: int | None = None
        self.partial = b""
        self._open(seek_end=from_end)

    def _open(self, seek_end: bool) -> None:
        try:
            handle = _open_log(self.path)
        except OSError:
            return
        if self.handle is not None:
            self.handle.close()
        self.handle = handle
        self.inode = os.fstat(handle.fileno()).st_ino
        if seek_end:
            handle.seek(0, os.SEEK_END)

    def read_lines(self) -> list[str]:
        if self.handle is None:
            self._open(seek_end=False)
            if self.handle is None:
                return []
        lines = self._drain()
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return lines
        if current.st_ino != self.inode:
            self._open(seek_end=False)  # rotated: the rest of the old file was drained above
            lines += self._drain()
        elif current.st_size < self.handle.tell():
            self.handle.seek(0)  # truncated in place
        return lines

    def _drain(self) -> list[str]:
        assert self.handle is not None
        chunk = self.handle.read()
        if not chunk:
            return []
        data = self.partial + chunk
        *complete, self.partial = data.split(b"\n")
        return [line.decode("utf-8", errors="replace") for line in complete]


def follow(paths: dict[str, Path], backlog: int) -> Iterator[tuple[str, str]]:
    """(name, line) pairs: the last `backlog` lines of each log, then new lines as they are written."""
    for name, path in paths.items():
        for line in last_lines(path, backlog):
            yield name, line
    followers = {name: _Follower(path, from_end=True) for name, path in paths.items()}
    pending: deque[tuple[str, str]] = deque()
    while True:
        for name, follower in followers.items():
            pending.extend((name, line) for line in follower.read_lines())
        if pending:
            while pending:
                yield pending.popleft()
        else:
            time.sleep(FOLLOW_POLL)
