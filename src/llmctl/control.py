"""The control API: one JSON request per connection on a Unix socket only this user can open.

    -> {"op": "status"}                              <- {"ok": true, ...}
    -> {"op": "up", "config": {validated config}, "names": [...], "force": false}  <- {"ok": true, "actions": {...}}
    -> {"op": "down", "names": [...]}                 (no names: everything, then the supervisor exits)
    -> {"op": "restart", "names": [...]}
    -> {"op": "ping"}

Fixed verbs only: nothing here runs a command a client names.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import ConfigError, LlmctlError
from .spec import Config

if TYPE_CHECKING:
    from .supervisor import Supervisor

log = logging.getLogger("llmctl.control")
MAX_REQUEST_BYTES = 1 << 20


async def serve(supervisor: Supervisor) -> None:
    path = supervisor.paths.socket
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
    try:
        async with server:
            await supervisor.shutdown_requested.wait()
    finally:
        server.close()
        if path.exists():
            path.unlink()


async def _handle(supervisor: Supervisor, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request: Any = None
    try:
        line = await reader.readline()
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("not an object")
            response = await _dispatch(supervisor, request)
        except ValueError as exc:
            response = {"ok": False, "error": f"bad request: {exc}", "exit_code": 2}
        except Exception as exc:  # every failure becomes an answer, never a dead supervisor
            response = as_error(exc)
        writer.write(json.dumps(response).encode() + b"\n")
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
    # After answering: the client waits for this reply before the supervisor goes away.
    if request_is_full_shutdown(request):
        supervisor.shutdown_requested.set()


def request_is_full_shutdown(request: Any) -> bool:
    return isinstance(request, dict) and request.get("op") == "down" and not request.get("names")


def _config(request: dict[str, Any]) -> Config:
    """The config the client validated (the supervisor never imports the schema: it stays small)."""
    try:
        return Config.from_dict(request["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"the request carries no valid config ({exc})") from None


async def _dispatch(supervisor: Supervisor, request: dict[str, Any]) -> dict[str, Any]:
    op = request.get("op")
    names = request.get("names") or []
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ConfigError("names must be a list of instance names")
    if op == "ping":
        return {"ok": True, "pid": os.getpid(), "version": __version__}
    if op == "status":
        return {"ok": True, **supervisor.status()}
    if op == "up":
        return {"ok": True, **await supervisor.up(_config(request), names, force=bool(request.get("force")))}
    if op == "down":
        return {"ok": True, **await supervisor.stop(names)}
    if op == "restart":
        config = _config(request) if request.get("config") is not None else None
        return {"ok": True, **await supervisor.restart(names, config)}
    raise ConfigError(f"unknown operation {op!r}")


def as_error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, LlmctlError):
        return {"ok": False, "error": str(exc), "exit_code": exc.exit_code}
    log.exception("internal error")
    return {"ok": False, "error": f"internal error in the supervisor: {exc!r}", "exit_code": 1}
