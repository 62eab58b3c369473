"""The gateway as a process: `python -m llmctl.gateway --state-dir DIR`, started by the supervisor.

It lives in a session of its own: a supervisor killed with -9 takes nothing of it along, and the next
supervisor adopts it. It ends on SIGTERM (the supervisor stops it on `down` or when the gateway leaves
the config), closing its listener, then its connections.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import signal
import sys
from pathlib import Path

from llmctl.gateway.server import Gateway
from llmctl.logs.ownlog import log_to
from llmctl.paths import StatePaths


def raise_open_file_limit() -> int:
    """Raise the soft limit on open files to the hard limit: every client connection costs one.
    Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


async def serve(paths: StatePaths) -> None:
    gateway = Gateway(paths, dict(os.environ))
    await gateway.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    link = asyncio.ensure_future(gateway.link.run_forever())
    try:
        await stop.wait()
    finally:
        link.cancel()
        await gateway.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmctl-gateway")
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    os.umask(0o077)
    paths = StatePaths(args.state_dir.absolute())
    log_to(paths.gateway_log)
    limit = raise_open_file_limit()
    logging.getLogger("llmctl.gateway").info("gateway process %s (open files: %s)", os.getpid(), limit)
    asyncio.run(serve(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
