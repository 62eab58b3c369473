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
    _check_writable(paths)
    lock_fd = os.open(paths.spawn_lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(lock_fd, "r+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_running(paths):
            return False
        _spawn_daemon(paths)
    return True


def _check_writable(paths: StatePaths) -> None:
    """A supervisor must write its state, logs and socket in the folder: on a full disk or a read-only
    folder it could not even make its socket, and every command would wait for it in vain."""
    from llmctl.system.files import write_problem

    problem = write_problem(paths.root)
    if problem is not None:
        raise SupervisorError(f"cannot start a supervisor: {problem}; {writable_fix(paths)}")


def writable_fix(paths: StatePaths) -> str:
    """What to do about a state folder that cannot be written (one phrase, for an error line)."""
    return f"free space on its disk or `chmod 700 {paths.root}` (or set $LLMCTL_STATE_DIR to another folder)"


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


DOWN_GRACE = 10.0  # seconds a supervisor gets beyond its servers' longest stop_timeout to exit after SIGTERM


def stop_unreachable(paths: StatePaths, unreachable: SupervisorError) -> dict[str, str]:
    """`down` of everything when no supervisor can be asked (its folder made unsearchable, a full disk on
    which none can make its socket, one that no longer answers): by signals, as SIGTERM to the supervisor
    would (it stops every server, the gateway and the log hub, and exits). A supervisor that does not exit
    in time is killed, and what state.json and pipes/hub.json record is stopped here: each server's group
    (SIGTERM, SIGKILL after its stop_timeout), the gateway and the log hub.

    Returns {name: "stopped" | "detached"} for the instances state.json names (none when it cannot be
    read); raises `unreachable` when neither a supervisor nor anything it recorded runs and the state
    cannot be read, since then nothing here can tell what runs."""
    import asyncio
    import signal

    from llmctl.control import state
    from llmctl.system.process import ProcessHandle

    saved, warning = state.load(paths.state_file)
    names = {
        record.name: "detached" if record.spec.get("backend") == "external" else "stopped"
        for record in saved.records
        if record.wanted or record.pid
    }
    stop_timeout = max([float(r.spec.get("stop_timeout") or 0) for r in saved.records] + [DOWN_GRACE])
    supervisor = _supervisor_process(paths)
    if supervisor is not None:
        os.kill(supervisor.pid, signal.SIGTERM)
        if _gone(supervisor, stop_timeout + DOWN_GRACE):
            return names
        os.kill(supervisor.pid, signal.SIGKILL)
        _gone(supervisor, DOWN_GRACE)
    handles = [
        (ProcessHandle(record.pid, record.create_time), record.pgid or record.pid, record.spec.get("stop_timeout"))
        for record in saved.records
        if record.pid
    ]
    if saved.gateway:
        gateway = saved.gateway
        gateway_handle = ProcessHandle(gateway["pid"], gateway["create_time"])
        handles.append((gateway_handle, gateway.get("pgid") or gateway["pid"], DOWN_GRACE))
    live = [entry for entry in handles if entry[0].is_alive()]
    hub = _recorded_hub(paths)
    if supervisor is None and not live and hub is None and warning is not None:
        raise unreachable
    asyncio.run(_stop_directly(live, hub))
    return names


def _supervisor_process(paths: StatePaths) -> Any:
    """The process supervising `paths` (psutil.Process), found by its lock or, when the lock file cannot
    be read, by its command line (`python -m llmctl.control.daemon --state-dir ROOT`) among this user's."""
    import psutil

    holder = lock_holder(paths)
    if holder is not None and holder > 0:
        try:
            return psutil.Process(holder)
        except psutil.Error:
            return None
    for candidate in psutil.process_iter(["cmdline", "uids"]):
        try:
            cmdline = candidate.info["cmdline"] or []
            uids = candidate.info["uids"]
            if uids is not None and uids.real != os.getuid():
                continue
            if "llmctl.control.daemon" in cmdline and _state_dir_of(cmdline) == str(paths.root):
                return candidate
        except psutil.Error:
            continue
    return None


def _state_dir_of(cmdline: list[str]) -> str | None:
    for index, part in enumerate(cmdline[:-1]):
        if part == "--state-dir":
            return cmdline[index + 1]
    return None


def _gone(candidate: Any, timeout: float) -> bool:
    import psutil

    try:
        candidate.wait(timeout)
    except psutil.TimeoutExpired:
        return False
    except psutil.Error:
        pass
    return True


def _recorded_hub(paths: StatePaths) -> Any:
    """The log hub pipes/hub.json names, if it still runs (a ProcessHandle), else None."""
    from llmctl.system.files import read_regular_file
    from llmctl.system.process import ProcessHandle

    try:
        record = json.loads(read_regular_file(paths.pipes / "hub.json", 4096))
        handle = ProcessHandle(int(record["pid"]), float(record["create_time"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return handle if handle.is_alive() else None


async def _stop_directly(live: list[tuple[Any, int, Any]], hub: Any) -> None:
    """Stop these server groups (SIGTERM, SIGKILL after each one's stop_timeout), then the log hub (after
    the servers, so it copies their last lines)."""
    import asyncio
    import signal

    from llmctl.system import process

    await asyncio.gather(
        *(process.stop_tree(handle, pgid, float(timeout or DOWN_GRACE)) for handle, pgid, timeout in live)
    )
    if hub is not None:
        process.signal_process(hub, signal.SIGTERM)
        await process.wait_until_gone(hub, None, timeout=5.0)
