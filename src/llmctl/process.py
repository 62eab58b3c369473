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
import subprocess
import sys
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
    """A file descriptor appending to `path`, created 0600. The child writes to it directly, so its
    output survives the supervisor; O_NOFOLLOW so a planted symlink cannot redirect it."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


# The relay is a standard-library script run without site-packages (-S -I): one per instance lives as
# long as its server, so it should weigh what a bare interpreter weighs.
RELAY_COMMAND = (sys.executable, "-S", "-I", str(Path(__file__).with_name("logrelay.py")))


@dataclass(frozen=True)
class LogLimits:
    max_bytes: int
    backups: int


def spawn(
    argv: list[str], *, env: dict[str, str], log_path: Path, cwd: str | None, limits: LogLimits
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """Start `argv` in a new session (so a new process group), its output going through a log
    relay (llmctl.logrelay, in a session of its own) that appends to `log_path` and rotates it.

    Returns (server, relay).
    """
    os.close(open_log(log_path))  # an unusable log file fails this start, not silently later
    read_end, write_end = os.pipe()
    try:
        relay = subprocess.Popen(
            [*RELAY_COMMAND, str(log_path), "--max-bytes", str(limits.max_bytes), "--backups", str(limits.backups)],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        try:
            server = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=write_end,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd or None,
                start_new_session=True,
                close_fds=True,
            )
        except BaseException:
            relay.kill()
            relay.wait()
            raise
    finally:
        os.close(read_end)
        os.close(write_end)
    return server, relay


async def finish_relay(relay: ProcessHandle, popen: subprocess.Popen[bytes] | None, grace: float = 2.0) -> None:
    """Let a log relay write what is left, then make sure it is gone (an escaped grandchild may
    still hold the pipe open, and would keep it alive forever)."""

    def gone() -> bool:
        if popen is not None:
            popen.poll()
        return not relay.is_alive()

    if await _wait_until(gone, grace, 0.02):
        return
    process = relay.process()
    if process is not None:
        with contextlib.suppress(psutil.Error):
            process.kill()
    await _wait_until(gone, _KILL_WAIT, 0.02)


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exited"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name} (signal {-returncode})"
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
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A group whose members are all zombies still answers; count only members that are not.
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                return True
        except (psutil.Error, OSError):
            continue
    return False


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.Error:
            continue
    return alive


def _signal_each(processes: list[psutil.Process], sig: int) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(sig)  # psutil checks the process is still the one we listed


async def stop_tree(
    handle: ProcessHandle,
    pgid: int,
    timeout: float,
    reap: Callable[[], object] | None = None,
    poll: float = 0.02,
) -> bool:
    """SIGTERM the process group and every descendant, SIGKILL what is left after `timeout`.

    The descendants are listed before any signal: once the leader dies its children are re-parented
    and can no longer be found from it (a grandchild that called setsid would escape a group kill).
    `reap` collects our own child's exit status, so it does not linger as a zombie group member.
    Returns True when everything is gone.
    """
    members = tree(handle)

    def gone() -> bool:
        if reap is not None:
            reap()
        return not _alive(members) and not _group_alive(pgid)

    if gone():
        return True
    for sig in (signal.SIGTERM, signal.SIGCONT):  # SIGCONT so a stopped (SIGSTOP) server sees the TERM
        _signal_group(pgid, sig)
        _signal_each(members, sig)
    if await _wait_until(gone, timeout, poll):
        return True
    _signal_group(pgid, signal.SIGKILL)
    _signal_each(_alive(members), signal.SIGKILL)
    return await _wait_until(gone, _KILL_WAIT, poll)


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

    On Linux a pidfd makes the event loop wake the moment the process dies; elsewhere, and for
    the rare kernel without pidfd_open, a short poll stands in.
    """
    pidfd = _open_pidfd(handle.pid)
    if pidfd is not None:
        try:
            if handle.is_alive():
                loop = asyncio.get_running_loop()
                exited: asyncio.Future[None] = loop.create_future()
                loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
                try:
                    await exited
                finally:
                    loop.remove_reader(pidfd)
        finally:
            os.close(pidfd)
    else:
        while (popen is None or popen.poll() is None) and handle.is_alive():
            await asyncio.sleep(0.05)
    if popen is not None:
        return popen.wait()
    return None


def _open_pidfd(pid: int) -> int | None:
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return opener(pid)
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            return None
        return None
