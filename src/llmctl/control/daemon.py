"""The supervisor as a process: `python -m llmctl.control.daemon --state-dir DIR`.

`llmctl up` starts it detached; `llmctl up --foreground` runs the same loop in the terminal.
One supervisor per state folder, enforced by an flock held for the process's whole life.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from llmctl.control.lock import acquire_supervisor_lock
from llmctl.control.server import serve
from llmctl.control.supervisor import Supervisor
from llmctl.errors import SupervisorError
from llmctl.logs.ownlog import log_to
from llmctl.paths import StatePaths
from llmctl.system.files import write_problem


async def run_supervisor(
    paths: StatePaths, on_started: Callable[[Supervisor], Awaitable[None]] | None = None
) -> int | None:
    """Run until `down` (everything) or SIGTERM/SIGINT; then stop every instance.

    Returns the signal that ended it, or None when a `down` did. An exception from `on_started`
    (a foreground `up` that could not start) stops everything and is raised.
    """
    received: list[int] = []
    shutting_down: list[asyncio.Future[None]] = []

    def on_signal(sig: int) -> None:
        received.append(sig)
        shutting_down.append(asyncio.ensure_future(supervisor.shutdown()))

    async with Supervisor(paths) as supervisor:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        server = asyncio.ensure_future(serve(supervisor))
        extra = asyncio.ensure_future(on_started(supervisor)) if on_started else None
        try:
            waiting = {server} | ({extra} if extra else set())
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if extra is not None and extra in done and extra.exception() is not None:
                supervisor.shutdown_requested.set()
                raise extra.exception()  # type: ignore[misc]
            await server
        finally:
            if extra is not None:
                extra.cancel()
            supervisor.shutdown_requested.set()
            await asyncio.gather(server, return_exceptions=True)
            await supervisor.stop([], reason="the supervisor is stopping")
    return received[0] if received else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmctl-supervisor")
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    os.umask(0o077)
    paths = StatePaths(args.state_dir.absolute())
    log_to(paths.supervisor_log)
    try:
        lock = acquire_supervisor_lock(paths)
    except SupervisorError as exc:
        logging.getLogger("llmctl").info("%s; exiting", exc)
        return 0
    except OSError as exc:  # the PID could not be written into the lock file (a full disk)
        logging.getLogger("llmctl").error("cannot take the supervisor lock: %s; exiting", exc)
        return 1
    problem = write_problem(paths.root)
    if problem is not None:
        # Before adopting anything: servers a previous supervisor left keep running for the next one,
        # rather than for one that could not make its socket, and that no command could reach.
        logging.getLogger("llmctl").error("%s; the supervisor cannot run there, exiting", problem)
        lock.close()
        return 1
    try:
        asyncio.run(run_supervisor(paths))
    finally:
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
