"""Start server processes in their own process group, recognise them later, stop them whole.

A process is identified by (pid, create time): a PID alone may have been reused by an unrelated
program since we recorded it, and llmctl must never signal a stranger.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

_KILL_WAIT = 5.0  # how long to wait for the kernel after SIGKILL before giving up on a process


@dataclass(frozen=True)
class ProcessHandle:
    pid: int
    create_time: float

    @classmethod
    def of(cls, pid: int) -> ProcessHandle:
        return cls(pid, psutil.Process(pid).create_time())

    def process(self) -> psutil.Process | None:
        """The live process this handle names, or None if it exited or the PID now names another."""
        try:
            process = psutil.Process(self.pid)
            if abs(process.create_time() - self.create_time) > 0.01:
                return None
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            return process
        except psutil.Error:
            return None

    def is_alive(self) -> bool:
        return self.process() is not None


def handle_of_child(pid: int) -> ProcessHandle:
    """The handle of a child we just started; if it already died, one that matches nothing alive."""
    try:
        return ProcessHandle.of(pid)
    except psutil.Error:
        return ProcessHandle(pid, 0.0)


def open_log(path: Path) -> int:
    """A file descriptor appending to `path`, created 0600. Neither a planted symlink (O_NOFOLLOW)
    nor a FIFO (O_NONBLOCK, then a regular-file check) can redirect or hang it."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    fd = os.open(path, flags, 0o600)
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or a device planted in its place
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return fd


def spawn(argv: list[str], *, env: dict[str, str], output: int, cwd: str | None) -> subprocess.Popen[bytes]:
    """Start `argv` in a new session (so a new process group of its own), stdout and stderr to `output`."""
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd or None,
        start_new_session=True,
        close_fds=True,
    )


def signal_process(handle: ProcessHandle, sig: int) -> None:
    """Signal one process, only if it is still the one `handle` names."""
    process = handle.process()
    if process is not None:
        with contextlib.suppress(psutil.Error):
            process.send_signal(sig)


async def wait_until_gone(handle: ProcessHandle, popen: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    def gone() -> bool:
        if popen is not None:
            popen.poll()
        return not handle.is_alive()

    return await _wait_until(gone, timeout, 0.02)


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exited"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name} (signal {-returncode})"
    return f"exited with code {returncode}"


def tree(handle: ProcessHandle) -> list[psutil.Process]:
    """The process and all its live descendants (including any that left its process group)."""
    root = handle.process()
    if root is None:
        return []
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return [root]


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_has_live_member(pgid: int) -> bool:
    """A scan of the process table: a group of zombies still answers killpg, so count the living."""
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                return True
        except (psutil.Error, OSError):
            continue
    return False


def _pgid_of(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except OSError:
        return None


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.is_running() and (process.status() != psutil.STATUS_ZOMBIE or _threads_left(process.pid)):
                alive.append(process)
        except psutil.Error:
            continue
    return alive


def _threads_left(pid: int) -> bool:
    """A zombie leader whose other threads still run (they hold its memory, GPU memory included) is
    not gone: Linux lists them under /proc/PID/task until the last one exits."""
    try:
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def _signal_each(processes: list[psutil.Process], sig: int) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(sig)  # psutil checks the process is still the one we listed


class _GroupWatch:
    """Is anything of the tree left? Listed members are checked each time; the process table is
    scanned (for unlisted members that are not zombies) at most every SCAN_EVERY seconds, since a
    Mac runs hundreds of processes and a stop polls every 20 ms."""

    SCAN_EVERY = 0.5

    def __init__(self, members: list[psutil.Process], pgid: int, reap: Callable[[], object] | None) -> None:
        self.members, self.pgid, self.reap = members, pgid, reap
        self.last_scan = -1e9
        self.last_scan_found = True

    def gone(self) -> bool:
        # Our own child is gone once reaped: the kernel reports its exit only when its last thread ended.
        if self.reap is not None and self.reap() is None:
            return False
        if _alive(self.members):
            return False
        if not _group_exists(self.pgid):
            return True
        now = time.monotonic()
        if now - self.last_scan >= self.SCAN_EVERY:
            self.last_scan, self.last_scan_found = now, _group_has_live_member(self.pgid)
        return not self.last_scan_found


async def stop_tree(
    handle: ProcessHandle,
    pgid: int,
    timeout: float,
    reap: Callable[[], object] | None = None,
    poll: float = 0.02,
) -> bool:
    """SIGTERM the process group once, and once each descendant that left it; SIGKILL what is left
    after `timeout`.

    One TERM per process: servers such as llama-server read a second SIGTERM as "terminate
    immediately". The descendants are listed before any signal: once the leader dies its children are
    re-parented and can no longer be found from it (a grandchild that called setsid escapes a group
    kill). `reap` collects our own child's exit status, so it does not linger as a zombie group member.
    Returns True when everything is gone.
    """
    members = tree(handle)
    escaped = [member for member in members if _pgid_of(member) != pgid]
    watch = _GroupWatch(members, pgid, reap)
    if watch.gone():
        return True
    for sig in (signal.SIGTERM, signal.SIGCONT):  # SIGCONT so a stopped (SIGSTOP) server sees the TERM
        _signal_group(pgid, sig)
        _signal_each(escaped, sig)
    if await _wait_until(watch.gone, timeout, poll):
        return True
    _signal_group(pgid, signal.SIGKILL)
    _signal_each(_alive(members), signal.SIGKILL)
    return await _wait_until(watch.gone, _KILL_WAIT, poll)


async def _wait_until(condition: Callable[[], bool], timeout: float, poll: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll)


def kill_group_leftovers(pgid: int) -> None:
    """After a server's leader died, kill what it left in its group (e.g. Ollama's runners)."""
    _signal_group(pgid, signal.SIGKILL)


async def wait_for_exit(popen: subprocess.Popen[bytes] | None, handle: ProcessHandle) -> int | None:
    """Return when the process exits: its return code for our own child, None for an adopted one.

    The event loop wakes the moment the process dies: through a pidfd on Linux, a kqueue
    EVFILT_PROC/NOTE_EXIT event on macOS and the BSDs; a short poll only where neither exists.
    """
    loop = asyncio.get_running_loop()
    waiter = _exit_waiter(handle.pid)
    if waiter is not None:
        fd, close = waiter
        try:
            if handle.is_alive():
                exited: asyncio.Future[None] = loop.create_future()
                loop.add_reader(fd, lambda: exited.done() or exited.set_result(None))
                try:
                    await exited
                finally:
                    loop.remove_reader(fd)
        finally:
            close()
    else:
        while (popen is None or popen.poll() is None) and handle.is_alive():
            await asyncio.sleep(0.05)
    if popen is not None:
        return popen.wait()
    return None


def _exit_waiter(pid: int) -> tuple[int, Callable[[], None]] | None:
    """A file descriptor that turns readable when `pid` exits, and how to close it."""
    opener = getattr(os, "pidfd_open", None)
    if opener is not None:
        try:
            fd = opener(pid)
        except OSError:
            return None
        return fd, lambda: os.close(fd)
    return _kqueue_exit_waiter(pid)


def _kqueue_exit_waiter(pid: int, select_module: object = None) -> tuple[int, Callable[[], None]] | None:
    import select

    module: object = select_module or select
    kqueue_type = getattr(module, "kqueue", None)
    if kqueue_type is None:
        return None
    queue = kqueue_type()
    event = module.kevent(  # type: ignore[attr-defined]
        pid,
        filter=module.KQ_FILTER_PROC,  # type: ignore[attr-defined]
        flags=module.KQ_EV_ADD | module.KQ_EV_ONESHOT,  # type: ignore[attr-defined]
        fflags=module.KQ_NOTE_EXIT,  # type: ignore[attr-defined]
    )
    try:
        queue.control([event], 0, 0)
    except OSError:  # already gone (ESRCH): the caller sees it dead
        queue.close()
        return None
    return queue.fileno(), queue.close
