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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from llmctl.paths import CONFIG_ENV, DEFAULT_CONFIG_NAME, StatePaths
from llmctl.system.files import read_regular_file, write_atomically

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
    gateway: dict[str, Any] | None = None  # the gateway process: {"pid", "create_time", "pgid", "started_at"}


def save(
    path: Path, config: dict[str, Any] | None, records: list[InstanceRecord], gateway: dict[str, Any] | None = None
) -> None:
    """Write the whole state atomically; `gateway` names the running gateway process (None: none)."""
    payload = {
        "version": SCHEMA_VERSION,
        "config": config,
        "instances": [vars(record) for record in records],  # not asdict(): it deep-copies every spec
        "gateway": gateway,
    }
    # No indent: json's C encoder serves only compact output, and the supervisor writes this on every
    # start and stop of every instance.
    write_atomically(path, json.dumps(payload, separators=(",", ":")))


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
        gateway = payload.get("gateway")
        return SavedState(config if isinstance(config, dict) else None, records, _gateway(gateway)), None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return SavedState(), f"state file {path} is corrupt ({exc}); starting with no adopted instances"


_RECORD_FIELDS = {item.name for item in fields(InstanceRecord)}


def _record(entry: dict[str, Any]) -> InstanceRecord:
    record = InstanceRecord(**{key: value for key, value in entry.items() if key in _RECORD_FIELDS})
    if not isinstance(record.name, str) or not isinstance(record.spec, dict):
        raise ValueError("a record without a name or spec")
    return record


def _gateway(entry: Any) -> dict[str, Any] | None:
    """The gateway's record, if it has the fields adoption needs (a broken one is ignored, not fatal)."""
    if not isinstance(entry, dict):
        return None
    if not all(isinstance(entry.get(key), (int, float)) and entry.get(key) for key in ("pid", "create_time")):
        return None
    return entry


def _from_version_1(payload: dict[str, Any]) -> SavedState:
    """Version 1 recorded running processes only, and the config's path."""
    path = payload.get("config")
    config = {"path": path} if isinstance(path, str) else None
    return SavedState(config, [_record({**entry, "wanted": True}) for entry in payload["instances"]])


def find_config_path(explicit: str | os.PathLike[str] | None, paths: StatePaths | None = None) -> Path:
    """`-f/--file`, then $LLMCTL_CONFIG, then ./instances.yaml, then the config of the fleet
    running in `paths` (so `logs`, `up` and `restart` work from any folder, as `docker compose -p` does)."""
    if explicit:
        return Path(explicit).expanduser().absolute()
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return Path(from_env).expanduser().absolute()
    local = Path.cwd() / DEFAULT_CONFIG_NAME
    if paths is not None and not local.exists():
        return running_config_path(paths) or local
    return local


def running_config_path(paths: StatePaths) -> Path | None:
    """The config file the supervisor of `paths` was last given, if it still exists."""
    saved, _ = load(paths.state_file)
    recorded = (saved.config or {}).get("path")
    if isinstance(recorded, str) and recorded and Path(recorded).is_file():
        return Path(recorded)
    return None
