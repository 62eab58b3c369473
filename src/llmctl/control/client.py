"""Talk to the supervisor of a state folder, starting one in the background when needed.

Only the standard library is imported here: `llmctl status` in a script loop pays for nothing else.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from llmctl.control.lock import lock_holder
from llmctl.errors import SupervisorError, from_kind
from llmctl.paths import StatePaths

TYPE_CHECKING = False  # not `from typing`: importing typing costs `llmctl status` 4 ms
if TYPE_CHECKING:
    from typing import Any


SUPERVISOR_START_TIMEOUT = 15.0


class SupervisorNotRunning(SupervisorError):
    """No supervisor answers on this state folder's socket."""

    kind = "supervisor_not_running"


def request(
    paths: StatePaths,
    payload: dict[str, Any],
    timeout: float | None = 30.0,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Send one request; return the answer, or raise the error the supervisor reported, as its class.

    Lines the supervisor sends before its answer (progress events) go to `on_event`.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(timeout)
            connection.connect(str(paths.socket))
            _check_peer(connection, paths)
            connection.sendall(json.dumps(payload).encode() + b"\n")
            for line in _lines(connection):
                response = _decode(line)
                if "event" in response and "ok" not in response:
                    if on_event is not None:
                        on_event(response)
                    continue
                break
            else:
                raise SupervisorError("the supervisor closed the connection without an answer")
    except (FileNotFoundError, ConnectionRefusedError):
        raise SupervisorNotRunning(f"no supervisor is running for {paths.root}") from None
    except TimeoutError:
        raise SupervisorError(f"the supervisor for {paths.root} did not answer in {timeout:g}s") from None
    except OSError as exc:
        raise SupervisorError(f"cannot reach the supervisor at {paths.socket}: {exc.strerror or exc}") from None
    if not response.get("ok"):
        error = response.get("error")
        if not isinstance(error, dict):
            raise SupervisorError("the supervisor sent an unreadable error")
        raise from_kind(error.get("kind"), str(error.get("message", "the supervisor reported an error")))
    return response


def _check_peer(connection: socket.socket, paths: StatePaths) -> None:
    """Send nothing (the request may carry a config with secrets) to a process of another user."""
    from llmctl.system.peercred import peer_uid

    uid = peer_uid(connection)
    if uid is not None and uid != os.getuid():
        raise SupervisorError(
            f"the process listening on {paths.socket} runs as uid {uid}, not as you (uid {os.getuid()}); "
            f"llmctl will not talk to it: remove {paths.socket}"
        )


def _decode(line: bytes) -> dict[str, Any]:
    try:
        response = json.loads(line)
    except ValueError:
        raise SupervisorError("the supervisor sent an unreadable answer") from None
    if not isinstance(response, dict):
        raise SupervisorError("the supervisor sent an unreadable answer")
    return response


def _lines(connection: socket.socket) -> Iterator[bytes]:
    buffer = b""
    while True:
        chunk = connection.recv(65536)
        if not chunk:
            if buffer.strip():
                yield buffer
            return
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line


def is_running(paths: StatePaths) -> bool:
    try:
        request(paths, {"op": "ping"}, timeout=5.0)
    except SupervisorNotRunning:
        return False
    return True


def ensure_supervisor(paths: StatePaths) -> bool:
    """Make sure a supervisor serves `paths`; True if this call started it.

    A lock around check-and-spawn makes five `llmctl up` at once start one supervisor; the
    supervisor's own lock would catch a second one anyway, this only saves the wasted start.
    """
    if is_running(paths):
        return False
    paths.ensure()
    lock_fd = os.open(paths.spawn_lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(lock_fd, "r+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_running(paths):
            return False
        _spawn_daemon(paths)
    return True


def _spawn_daemon(paths: StatePaths) -> None:
    import subprocess  # only here: `llmctl status` never spawns

    log_fd = os.open(paths.supervisor_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "llmctl.control.daemon", "--state-dir", str(paths.root)],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            start_new_session=True,  # survives the terminal closing and Ctrl-C in it
            close_fds=True,
            env={**os.environ, "LLMCTL_STATE_DIR": str(paths.root)},
        )
    finally:
        os.close(log_fd)
    deadline = time.monotonic() + SUPERVISOR_START_TIMEOUT
    while time.monotonic() < deadline:
        if is_running(paths):
            return
        if daemon.poll() is not None and not is_running(paths):
            holder = lock_holder(paths)
            if holder is None:
                raise SupervisorError(
                    f"the supervisor exited at start; see {paths.supervisor_log}: {_last_line(paths.supervisor_log)}"
                )
            # Another supervisor holds the lock: its socket may be back in a moment (it recreates a deleted one).
            _wait_for_answer(paths, holder, deadline)
            return
        time.sleep(0.02)
    raise SupervisorError(
        f"the supervisor did not answer within {SUPERVISOR_START_TIMEOUT:g}s; see {paths.supervisor_log}"
    )


def _wait_for_answer(paths: StatePaths, holder: int, deadline: float) -> None:
    limit = min(deadline, time.monotonic() + 5.0)
    while time.monotonic() < limit:
        if is_running(paths):
            return
        time.sleep(0.05)
    raise SupervisorError(
        f"another supervisor (pid {holder}) holds the lock of {paths.root} but does not answer on {paths.socket}; "
        f"stop it (`kill {holder}`) and try again"
    )


def _last_line(path: Path) -> str:
    try:
        from llmctl.logs.files import last_lines

        lines = last_lines(path, 1)
    except OSError:
        return ""
    return lines[-1] if lines else ""
