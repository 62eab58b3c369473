"""The supervisor's memory on disk: which process serves which instance.

Written atomically (temp file, fsync, rename) so a kill -9 or a full disk mid-write leaves the
previous file intact; read forgivingly, so a stale or corrupt file costs a warning, never a crash.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class InstanceRecord:
    """What a new supervisor needs to adopt a running server after the old one died."""

    name: str
    pid: int
    create_time: float
    pgid: int
    started_at: float  # wall clock, for uptime across supervisors
    spec: dict[str, Any]  # the instance's config as it was started, so adoption needs no config file
    restarts: int = 0
    relay_pid: int = 0  # the process writing the server's log (llmctl.logrelay), if any
    relay_create_time: float = 0.0


def write_atomically(path: Path, data: str) -> None:
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as temp:
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())
        os.chmod(temp_name, 0o600)
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise


def save_records(path: Path, config_path: str | None, records: list[InstanceRecord]) -> None:
    payload = {
        "version": SCHEMA_VERSION,
        "config": config_path,
        "instances": [asdict(record) for record in records],
    }
    write_atomically(path, json.dumps(payload, indent=1))


def remove_stale_temps(path: Path) -> None:
    """Temp files of writes that a kill -9 interrupted: the real file never depended on them."""
    for temp in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            temp.unlink()


def load_records(path: Path) -> tuple[str | None, list[InstanceRecord], str | None]:
    """(config path, records, warning). A missing file is no warning; a broken one is."""
    try:
        raw = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None, [], None
    except OSError as exc:
        return None, [], f"cannot read state file {path}: {exc}; starting with no adopted instances"
    try:
        payload = json.loads(raw)
        if payload.get("version") != SCHEMA_VERSION:
            raise ValueError(f"unknown state version {payload.get('version')!r}")
        records = [InstanceRecord(**entry) for entry in payload["instances"]]
        config = payload.get("config")
        return (config if isinstance(config, str) else None), records, None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return None, [], f"state file {path} is corrupt ({exc}); starting with no adopted instances"
