"""The control API: one JSON request per connection on a Unix socket only this user can open.

    -> {"op": "ping"}                                   <- {"ok": true, "pid": ..., "version": ...}
    -> {"op": "status"}                                 <- {"ok": true, <status document>}
    -> {"op": "up", "config": {...}, "names": [...], "force": false}     <- {"ok": true, "actions": {...}}
    -> {"op": "down", "names": [...]}                   (no names: everything, then the supervisor exits)
    -> {"op": "restart", "names": [...], "config": {...}}
    -> {"op": "subscribe", "pid": PID}                 the gateway's link: JSON lines both ways (llmctl.planes)
    -> {"op": "wait", "names": [...], "timeout": S, "progress": false}
       <- {"ok": true, "timed_out": false, "instances": [...]} once every named instance has settled;
          with "progress": true, first one {"event": "progress", "instances": [...]} line per change.

A failure answers {"ok": false, "error": {"kind": ..., "message": ..., "exit_code": ...}}; the kind
names the error class (llmctl.errors), so the client raises what the supervisor raised. Only a
request the supervisor cannot read is a `bad_request`. Fixed verbs only: nothing here runs a command
a client names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmctl import __version__
from llmctl.errors import BadRequest, InternalError, LlmctlError, as_payload
from llmctl.spec import Config

if TYPE_CHECKING:
    from llmctl.control.supervisor import Supervisor

log = logging.getLogger("llmctl.control.server")
MAX_REQUEST_BYTES = 1 << 20


SOCKET_CHECK_EVERY = 1.0


async def serve(supervisor: Supervisor) -> None:
    """Serve until shutdown. A socket someone deleted (a cleanup script, `rm -rf` of the folder) is
    noticed within a second and made again: without it no command could reach the servers."""
    path = supervisor.paths.socket
    identity = None
    last_error = None
    while not supervisor.shutdown_requested.is_set():
        if identity is not None and not _still_owner(supervisor):
            log.error("another supervisor took over %s; not making the socket again", supervisor.paths.root)
            await supervisor.shutdown_requested.wait()  # the servers stay supervised, only not reachable
            break
        try:
            server, identity = await _listen(supervisor, path)
        except (OSError, LlmctlError) as exc:  # e.g. a folder someone replaced: the servers run on regardless
            if str(exc) != last_error:  # once, not every second for as long as it lasts
                log.error("cannot make the control socket %s: %s; trying again every second", path, exc)
                last_error = str(exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(supervisor.shutdown_requested.wait(), SOCKET_CHECK_EVERY)
            continue
        last_error = None
        try:
            while not supervisor.shutdown_requested.is_set() and _identity(path) in (identity, UNKNOWN):
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(supervisor.shutdown_requested.wait(), SOCKET_CHECK_EVERY)
        finally:
            server.close()
        if not supervisor.shutdown_requested.is_set():
            log.warning("the control socket %s was removed or replaced; making it again", path)
    if identity is not None and _identity(path) == identity:
        with contextlib.suppress(OSError):  # a folder made read-only: the stale socket is replaced next time
            path.unlink()


def _still_owner(supervisor: Supervisor) -> bool:
    """Is this state folder still ours? If its lock file went with the socket (the folder was deleted),
    take a new one; if another supervisor holds it now, the folder is no longer ours: never fight it."""
    from llmctl.control.lock import acquire_supervisor_lock, lock_holder

    holder = lock_holder(supervisor.paths)
    if holder == os.getpid():
        return True
    if holder is not None:
        return False
    try:
        supervisor.extra_locks.append(acquire_supervisor_lock(supervisor.paths))
    except LlmctlError:
        return False
    return True


UNKNOWN = (-1, -1)


def _identity(path: Path) -> tuple[int, int] | None:
    """The socket file's (device, inode); None when it is gone; UNKNOWN when it cannot be looked at
    (a folder made unsearchable, chmod 000): then it is not replaced, clients reach it again as soon
    as the mode allows, and nothing is torn down meanwhile."""
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return UNKNOWN
    return info.st_dev, info.st_ino


async def _listen(supervisor: Supervisor, path: Path) -> tuple[asyncio.AbstractServer, tuple[int, int] | None]:
    supervisor.paths.ensure()  # the folder may have gone with the socket
    if path.exists() or path.is_symlink():
        path.unlink()  # the caller holds the supervisor lock, so any socket here is a stale one
    previous_umask = os.umask(0o177)  # created 0600: no window in which others could connect
    try:
        server = await asyncio.start_unix_server(
            lambda r, w: _handle(supervisor, r, w), path=str(path), limit=MAX_REQUEST_BYTES
        )
    finally:
        os.umask(previous_umask)
    os.chmod(path, 0o600)
    return server, _identity(path)


async def _handle(supervisor: Supervisor, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request: Any = None

    async def send(payload: dict[str, Any]) -> None:
        writer.write(json.dumps(payload).encode() + b"\n")
        await writer.drain()

    if not _same_user(writer):
        writer.close()
        return
    try:
        try:
            request = _parse(await reader.readline())
            if request.get("op") == "subscribe":  # the gateway: this connection becomes its link (llmctl.planes)
                await supervisor.gateways.serve_link(request, reader, writer)
                return
            response = {"ok": True, **await _dispatch(supervisor, request, send)}
        except LlmctlError as exc:
            response = {"ok": False, "error": as_payload(exc)}
        except (ConnectionError, asyncio.IncompleteReadError):
            raise
        except Exception as exc:  # every failure becomes an answer, never a dead supervisor
            log.exception("internal error")
            response = {"ok": False, "error": as_payload(InternalError(f"internal error in the supervisor: {exc!r}"))}
        await send(response)
    except (ConnectionError, asyncio.IncompleteReadError):
        pass  # the client went away (Ctrl-C): what it asked for goes on
    finally:
        writer.close()
    # After answering: the client waits for this reply before the supervisor goes away.
    if request_is_full_shutdown(request):
        supervisor.shutdown_requested.set()


def _same_user(writer: asyncio.StreamWriter) -> bool:
    """Only this user's processes may drive the supervisor (root included only when it is root's)."""
    from llmctl.system.peercred import peer_uid

    connection = writer.get_extra_info("socket")
    try:
        uid = peer_uid(connection)
    except OSError:
        return False
    if uid is not None and uid != os.getuid():
        log.warning("refused a control connection from uid %s", uid)
        return False
    return True


def _parse(line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except ValueError as exc:
        raise BadRequest(f"bad request: not JSON ({exc})") from None
    if not isinstance(request, dict):
        raise BadRequest("bad request: not a JSON object")
    names = request.get("names") or []
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise BadRequest("bad request: names must be a list of instance names")
    return request


def request_is_full_shutdown(request: Any) -> bool:
    return isinstance(request, dict) and request.get("op") == "down" and not request.get("names")


def _config(request: dict[str, Any]) -> Config:
    """The config the client validated (the supervisor never imports the schema: it stays small)."""
    try:
        return Config.from_dict(request["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BadRequest(f"bad request: the request carries no valid config ({exc})") from None


def _timeout(request: dict[str, Any]) -> float | None:
    timeout = request.get("timeout")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
        raise BadRequest("bad request: timeout must be a number of seconds")
    return timeout


async def _dispatch(supervisor: Supervisor, request: dict[str, Any], send: Any) -> dict[str, Any]:
    op = request.get("op")
    names: list[str] = request.get("names") or []
    supervisor.requests[str(op)] = supervisor.requests.get(str(op), 0) + 1
    if op == "ping":
        return {"pid": os.getpid(), "version": __version__}
    if op == "status":
        return supervisor.status()
    if op == "up":
        return await supervisor.up(_config(request), names, force=bool(request.get("force")))
    if op == "down":
        return await supervisor.stop(names)
    if op == "restart":
        config = _config(request) if request.get("config") is not None else None
        return await supervisor.restart(names, config)
    if op == "wait":

        async def progress(instances: list[dict[str, Any]]) -> None:
            await send({"event": "progress", "instances": instances})

        return await supervisor.wait(names, _timeout(request), progress if request.get("progress") else None)
    raise BadRequest(f"bad request: unknown operation {op!r}")
