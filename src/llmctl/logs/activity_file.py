"""Read the gateway's activity file (StatePaths.activity_log): the last rows, or follow them as they come.

The gateway (llmctl.gateway.activity.Activity) appends one JSON object a line to activity.jsonl and rotates
it by renaming, activity.jsonl -> .1 -> .2 ..., as the log hub rotates instance logs: so the readers of
llmctl.logs.files serve here too, across every rotation. A line that is not a JSON object (one cut short by
a full disk, say) is skipped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmctl.logs.files import FOLLOW_POLL, Tail, last_lines


def parse_row(line: str) -> dict[str, Any] | None:
    """One line of the file as a row, or None when it is not a JSON object. A figure JSON cannot carry
    (NaN, Infinity, or a number too large for a float, such as 1e400) reads as null, so `--json` stays JSON.
    A line nested too deeply for the parser (RecursionError) is not a row either."""
    try:
        row = json.loads(line, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None
    if not isinstance(row, dict):
        return None
    return {key: None if isinstance(value, float) and not math.isfinite(value) else value for key, value in row.items()}


def _no_constant(name: str) -> None:
    """NaN, Infinity and -Infinity (which Python's json reads, but JSON has not) as null."""
    return None


def _wanted(row: dict[str, Any] | None, names: set[str] | None) -> bool:
    return row is not None and (names is None or row.get("instance") in names)


def last_rows(path: Path, count: int, names: set[str] | None = None) -> list[dict[str, Any]]:
    """The last `count` rows (of the instances in `names`, when given) of the file and its rotations,
    oldest first (llmctl.logs.files.last_lines reads into the rotations); a missing file has none."""
    if count <= 0:
        return []
    lines = last_lines(path, count, lambda line: _wanted(parse_row(line), names))
    return [row for row in map(parse_row, lines) if row is not None][-count:]


def instances_seen(path: Path) -> set[str]:
    """The instance names of every row the file and its rotations still hold."""
    seen: set[str] = set()
    for line in last_lines(path, 1_000_000):
        row = parse_row(line)
        if row is not None and isinstance(row.get("instance"), str):
            seen.add(row["instance"])
    return seen


class RowFollower:
    """The last `count` rows (`backlog`), then, iterated, the rows added after them (of the instances in
    `names`, when given) as the gateway writes them; never ends (the caller stops it). Rotations are
    followed. The file is watched before the backlog is read, so a row written meanwhile is not lost;
    it would come twice, so the first rows that follow are checked against the backlog."""

    def __init__(self, path: Path, count: int, names: set[str] | None = None) -> None:
        self.names = names
        self._tail = Tail({"activity": path})
        self.backlog = last_rows(path, count, names)
        self._shown: set[str] | None = {json.dumps(row, sort_keys=True) for row in self.backlog}

    def read(self) -> list[dict[str, Any]]:
        """The rows added since the last call (never waits)."""
        parsed = (parse_row(line) for _, line in self._tail.read())
        rows = [row for row in parsed if row is not None and _wanted(row, self.names)]
        if rows and self._shown is not None:
            rows = [row for row in rows if json.dumps(row, sort_keys=True) not in self._shown]
            self._shown = None  # only what was written while the backlog was read can come twice
        return rows

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            rows = self.read()
            yield from rows
            if not rows:
                time.sleep(FOLLOW_POLL)
