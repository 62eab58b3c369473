"""Read a file that someone else may have replaced with something hostile.

A FIFO in place of state.json would hang whoever reads it (and a supervisor holding the lock would
hang every later command); a symlink could point anywhere; /dev/zero never ends. So: open without
blocking (O_NONBLOCK: a FIFO with no writer opens at once), without following a final symlink where
asked, accept only a regular file, and read at most `max_bytes`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path


class UnsafeFile(OSError):
    """Not a regular file, or larger than allowed."""


def read_regular_file(path: Path, max_bytes: int, *, follow_symlinks: bool = False) -> bytes:
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile(errno.ELOOP, "is a symbolic link; llmctl does not follow one here", str(path)) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFile(errno.EINVAL, "is not a regular file (a FIFO, a device or a folder)", str(path))
        if info.st_size > max_bytes:
            raise UnsafeFile(errno.EFBIG, f"is larger than {max_bytes} bytes", str(path))
        chunks, total = [], 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:  # it grew while we read
                raise UnsafeFile(errno.EFBIG, f"is larger than {max_bytes} bytes", str(path))
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: str) -> None:
    """Replace `path` with `data` whole or not at all: a temp file in the same folder, fsync, 0600, rename."""
    import tempfile  # here: `llmctl status` and `up` read state, and only the supervisor writes it

    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as temp:
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())
        os.chmod(temp_name, 0o600)
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise


def write_problem(folder: Path) -> str | None:
    """Why nothing can be written in `folder` now (a full disk, a changed mode, a read-only mount), as
    "cannot write in FOLDER: REASON"; None when a file can be made, written and removed there.

    A real write, not os.access(): access() says nothing of a full disk and answers for root as if
    every mode allowed it. One small file, no fsync: ext4 (delayed allocation reserves the block at
    write time), tmpfs and APFS report ENOSPC from write() itself."""
    try:
        fd = os.open(
            folder / f".write-check.{os.getpid()}.tmp",
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
    except OSError as exc:
        return f"cannot write in {folder}: {exc.strerror or exc}"
    try:
        os.write(fd, b"\n")
    except OSError as exc:
        return f"cannot write in {folder}: {exc.strerror or exc}"
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(folder / f".write-check.{os.getpid()}.tmp")
    return None
