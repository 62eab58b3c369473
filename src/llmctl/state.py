"""The supervisor's memory on disk: the config it serves and what each instance runs.

    {"version": 2, "config": {the whole validated config}, "instances": [InstanceRecord, ...]}

Version 2 keeps the whole validated config (binaries, log limits, memory budget), so an adopted
instance restarts exactly as it started, and a record for every instance the supervisor means to
keep running, with or without a process (one waiting in backoff when the supervisor was killed is
resumed by the next). Version 1 files (records of running processes only) are still read.

Written atomically (temp file, fsync, rename) so a kill -9 or a full disk mid-write leaves the
previous file intact; read forgivingly, so a stale or corrupt file costs a warning, never a crash.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .safefiles import read_regular_file

SCHEMA_VERSION = 2
MAX_STATE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class InstanceRecord:
    """What a new supervisor needs to adopt a running server, or resume one, after the old one died."""

    name: str
    spec: dict[str, Any]  # the instance's config as it was started
    wanted: bool = True  # the supervisor meant it to run (it may be waiting in backoff, without a process)
    pid: int = 0
    create_time: float = 0.0
    pgid: int = 0
    started_at: float = 0.0  # wall clock, for uptime across supervisors
    restarts: int = 0


@dataclass(frozen=True)
class SavedState:
    config: dict[str, Any] | None = None
    records: list[InstanceRecord] = field(default_factory=list)


def write_atomically(path: Path, data: str) -> None:
    import tempfile  # here: `llmctl status` and `up` read state, and only the supervisor writes it

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


def save(path: Path, config: dict[str, Any] | None, records: list[InstanceRecord]) -> None:
    payload = {"version": SCHEMA_VERSION, "config": config, "instances": [asdict(record) for record in records]}
    write_atomically(path, json.dumps(payload, indent=1))


def remove_stale_temps(path: Path) -> None:
    """Temp files of writes that a kill -9 interrupted: the real file never depended on them."""
    for temp in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            temp.unlink()


def load(path: Path) -> tuple[SavedState, str | None]:
    """(what was saved, a warning). A missing file is no warning; a broken one is."""
    try:
        raw = read_regular_file(path, MAX_STATE_BYTES).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return SavedState(), None
    except OSError as exc:
        reason = f"{exc.strerror}" if exc.strerror else str(exc)
        return SavedState(), f"cannot read state file {path}: {reason}; starting with no adopted instances"
    try:
        payload = json.loads(raw)
        version = payload.get("version")
        if version == 1:
            return _from_version_1(payload), None
        if version != SCHEMA_VERSION:
            raise ValueError(f"unknown state version {version!r}")
        config = payload.get("config")
        records = [_record(entry) for entry in payload["instances"]]
        return SavedState(config if isinstance(config, dict) else None, records), None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return SavedState(), f"state file {path} is corrupt ({exc}); starting with no adopted instances"


_RECORD_FIELDS = {item.name for item in fields(InstanceRecord)}


def _record(entry: dict[str, Any]) -> InstanceRecord:
    record = InstanceRecord(**{key: value for key, value in entry.items() if key in _RECORD_FIELDS})
    if not isinstance(record.name, str) or not isinstance(record.spec, dict):
        raise ValueError("a record without a name or spec")
    return record


def _from_version_1(payload: dict[str, Any]) -> SavedState:
    """Version 1 recorded running processes only, and the config's path."""
    path = payload.get("config")
    config = {"path": path} if isinstance(path, str) else None
    return SavedState(config, [_record({**entry, "wanted": True}) for entry in payload["instances"]])
