"""The logs llmctl's own long-lived processes keep (supervisor.log, gateway.log): rotated by size, so a
process that lives as long as the servers cannot fill the disk with its own lines."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 3
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_to(path: Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
    """Send this process's log lines (INFO and up) to `path`, rotated at `max_bytes` with `backups`
    old files kept. (What the interpreter itself writes to stderr, a crash's traceback, lands in the
    file stderr was opened on.)"""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
