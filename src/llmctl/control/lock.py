"""One supervisor per state folder: an flock on a file held for the supervisor's whole life, with its PID
written inside so that others can name the holder."""

from __future__ import annotations

import fcntl
import os
from typing import IO

from llmctl.errors import SupervisorError
from llmctl.paths import StatePaths


def acquire_supervisor_lock(paths: StatePaths) -> IO[str]:
    """Hold this state folder's supervisor lock, or raise if another supervisor has it."""
    paths.ensure()
    lock = os.fdopen(os.open(paths.supervisor_lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600), "r+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        holder = lock_holder(paths)
        raise SupervisorError(f"another supervisor (pid {holder}) is already running for {paths.root}") from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def lock_holder(paths: StatePaths) -> int | None:
    """The PID of the supervisor holding this state folder's lock, or None when none holds it."""
    try:
        fd = os.open(paths.supervisor_lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
