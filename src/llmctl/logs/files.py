"""Read instance logs: the last lines, or follow them as they grow, across every rotation, in order.

The log hub rotates NAME.log -> NAME.log.1 -> ... by renaming, so a file keeps its identity (device,
inode) as it moves: a follower that finishes its file goes on with the one written after it, however
many rotations happened since it last looked, and loses nothing that still exists. Lines longer than
MAX_LINE are split with a visible marker, so neither `logs` nor `logs -f` holds an unbounded line.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

FOLLOW_POLL = 0.1
MAX_LINE = 64 * 1024
CHUNK = 64 * 1024
MAX_BACKUPS = 100  # as the config allows
SPLIT_MARKER = " [llmctl: line continues]"


def _open_log(path: Path) -> BinaryIO:
    """Open a log for reading without following a symlink someone planted in its place, nor hanging
    on a FIFO: only a regular file is read."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    return os.fdopen(fd, "rb")


def split_long(line: bytes) -> list[bytes]:
    if len(line) <= MAX_LINE:
        return [line]
    pieces = [line[start : start + MAX_LINE] for start in range(0, len(line), MAX_LINE)]
    return [piece + SPLIT_MARKER.encode() for piece in pieces[:-1]] + [pieces[-1]]


def _decode(lines: list[bytes]) -> list[str]:
    # surrogateescape: bytes that are not UTF-8 survive the round trip, so off a terminal they pass unchanged
    return [piece.decode("utf-8", errors="surrogateescape") for line in lines for piece in split_long(line)]


def last_lines(path: Path, count: int, keep: Callable[[str], bool] | None = None) -> list[str]:
    """The last `count` lines of a log and, when it holds fewer, of its rotations (of those `keep`
    accepts, when given), read from the end so a large log costs little: about count × MAX_LINE bytes,
    however long its lines, read again over a window four times wider while too few lines were kept
    and more of the file is left."""
    if count <= 0:
        return []
    shown: list[str] = []
    for file in reversed(_chain(path)):  # the live log, then NAME.log.1, ...: a fresh rotation hides nothing
        shown = _last_kept(file, count - len(shown), keep) + shown
        if len(shown) >= count:
            break
    return shown[-count:]


def _last_kept(path: Path, count: int, keep: Callable[[str], bool] | None) -> list[str]:
    """The last `count` lines `keep` accepts of one file (fewer when the file has fewer)."""
    window = count
    while True:
        lines, whole = _tail(path, window)
        kept = lines if keep is None else [line for line in lines if keep(line)]
        if keep is None or len(kept) >= count or whole:
            return kept[-count:]
        window *= 4


def _tail(path: Path, count: int) -> tuple[list[str], bool]:
    """The last `count` lines of a log, and whether they are all of it."""
    budget = (count + 1) * MAX_LINE
    try:
        with _open_log(path) as log:
            end = log.seek(0, os.SEEK_END)
            position, data = end, b""
            while position > 0 and data.count(b"\n") <= count and end - position < budget:
                position = max(0, position - CHUNK, end - budget)
                log.seek(position)
                data = log.read(end - position)
    except OSError:  # missing, a symlink (ELOOP), a FIFO: nothing to show
        return [], True
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    if position > 0 and len(lines) > 1:
        lines = lines[1:]  # the first is only the end of a line
    return _decode(lines)[-count:], position == 0 and len(lines) <= count


def lines_since(path: Path, since: float) -> list[str]:
    """The lines of a log and its rotations written at or after `since` (epoch seconds), oldest
    first, to within a second: the relay's marks (NAME.marks) say where each file stood when."""
    marks = _marks(path)
    lines: list[str] = []
    for file in _chain(path):
        try:
            with _open_log(file) as log:
                info = os.fstat(log.fileno())
                if info.st_mtime < since:
                    continue  # nothing in it was written after `since`
                known = sorted((when, offset) for when, inode, offset in marks if inode == info.st_ino)
                before = [offset for when, offset in known if when <= since]
                start = before[-1] if before else 0
                log.seek(start)
                data = log.read()
        except OSError:
            continue
        chunk = data.split(b"\n")
        if data.endswith(b"\n"):
            chunk.pop()
        lines += _decode(chunk)
    return lines


def _chain(path: Path) -> list[Path]:
    """The live log and its rotations, oldest first."""
    rotated = [path.with_name(f"{path.name}.{n}") for n in range(MAX_BACKUPS, 0, -1)]
    return [*(file for file in rotated if file.exists()), path]


def _marks_text(path: Path) -> str:
    """NAME.marks beside NAME.log (the hub's time marks and rotation records), at most 4 MiB; "" if none."""
    try:
        with _open_log(path.with_name(path.name.removesuffix(".log") + ".marks")) as file:
            return file.read(4 * 1024 * 1024).decode("ascii", errors="replace")
    except OSError:
        return ""


def _marks(path: Path) -> list[tuple[float, int, int]]:
    text = _marks_text(path)
    marks = []
    for line in text.splitlines():
        parts = line.split()
        try:
            marks.append((float(parts[0]), int(parts[1]), int(parts[2])))
        except (IndexError, ValueError):
            continue  # a line cut short by a crash
    return marks


def parse_since(text: str, now: float | None = None) -> float:
    """`--since`: a duration back from now (`90s`, `10m`, `1h30m`, `2d`) or a local time
    (`2026-11-27 07:30`, `2026-11-27T07:30:00`, `07:30` today). Raises ValueError with the forms."""
    import datetime
    import re

    now = time.time() if now is None else now
    text = text.strip()
    match = re.fullmatch(r"(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", text)
    if text and match and any(match.groups()):
        days, hours, minutes, seconds = (float(group or 0) for group in match.groups())
        return now - (days * 86400 + hours * 3600 + minutes * 60 + seconds)
    for form in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return datetime.datetime.strptime(text, form).timestamp()
        except ValueError:
            pass
    for form in ("%H:%M:%S", "%H:%M"):
        try:
            clock = datetime.datetime.strptime(text, form).time()
        except ValueError:
            continue
        return datetime.datetime.combine(datetime.date.fromtimestamp(now), clock).timestamp()
    raise ValueError(f"--since {text!r}: give a duration (90s, 10m, 1h30m, 2d) or a time (07:30, 2026-11-27 07:30)")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return info.st_dev, info.st_ino


class _Follower:
    """One followed log and the rotated files behind it.

    What it guarantees (the README's `logs -f`): it reads each file by its open descriptor to its end
    before going on to the file written after it, so a follower that keeps up loses no line across
    rotations, and prints none twice. One that falls more than `backups` rotations behind finds files
    already deleted; it says how many lines they held (the hub's `rotated INODE LINES` records in
    NAME.marks), in one line, and goes on with the oldest file left.
    """

    def __init__(self, path: Path, from_end: bool) -> None:
        self.path = path
        self.handle: BinaryIO | None = None
        self.identity: tuple[int, int] | None = None
        self.partial = b""
        self.consumed = 0  # newlines read from the current file, from its start
        self._open(path, seek_end=from_end)

    def _open(self, path: Path, seek_end: bool, expected: tuple[int, int] | None = None) -> bool:
        """Open `path` (only if it is still the file `expected` names, when given)."""
        try:
            handle = _open_log(path)
        except OSError:
            return False
        info = os.fstat(handle.fileno())
        if expected is not None and (info.st_dev, info.st_ino) != expected:
            handle.close()  # rotated again between the listing and the open: list again
            return False
        if self.handle is not None:
            self.handle.close()
        self.handle, self.identity, self.partial = handle, (info.st_dev, info.st_ino), b""
        self.consumed = 0
        if seek_end:
            self.consumed = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(CHUNK), b""))
        return True

    def read_lines(self) -> Iterator[str]:
        if self.handle is None and not self._open(self.path, seek_end=False):
            return
        for _ in range(4 * (MAX_BACKUPS + 2)):
            yield from self._drain()
            current = _identity(self.path)
            if current is None or current == self.identity:
                yield from self._after_truncation(current)
                return
            # Rotated: the hub closed our file before renaming it, so what it holds now is all it will
            # ever hold. Read it to its end (lines written between the drain above and the rename).
            yield from self._drain()
            moved = self._next_file()
            if moved is None:
                continue  # it rotated again while we looked: list again
            if not moved:
                return
            missed = self._missed(moved)
            if missed:
                yield f"[llmctl] {missed} lines missed: this follower fell more than logs.backups rotations behind"

    def _after_truncation(self, current: tuple[int, int] | None) -> Iterator[str]:
        """With `backups: 0` the hub empties the file in place: read it again from its start."""
        assert self.handle is not None
        if current is None or os.stat(self.path).st_size >= self.handle.tell():
            return
        records = [count for inode, count in _rotations(self.path) if inode == self.identity[1]]  # type: ignore[index]
        missed = records[-1] - self.consumed if records else 0
        self.handle.seek(0)
        self.partial, self.consumed = b"", 0
        if missed > 0:
            yield f"[llmctl] {missed} lines missed: the log was emptied (logs.backups is 0) before they were read"
        yield from self._drain()

    def _next_file(self) -> tuple[tuple[int, int] | None, tuple[int, int]] | bool | None:
        """Open the file written after ours: (our old identity, the new one) when it is the oldest left
        and ours is gone (files may have been missed), True when it directly follows ours, False when
        there is nothing to open, None when the files moved meanwhile."""
        chain = [self.path.with_name(f"{self.path.name}.{n}") for n in range(MAX_BACKUPS, 0, -1)] + [self.path]
        existing = [(path, identity) for path in chain if (identity := _identity(path)) is not None]
        if not existing:
            return False
        identities = [identity for _, identity in existing]
        if self.identity in identities:
            index = identities.index(self.identity) + 1
            if index >= len(existing):
                return None  # ours is the live file again: the listing raced a rotation
            return True if self._open(existing[index][0], False, existing[index][1]) else None
        old = self.identity
        path, identity = existing[0]  # ours was deleted: on with the oldest left
        return (old, identity) if self._open(path, False, identity) else None

    def _missed(self, moved: tuple[tuple[int, int] | None, tuple[int, int]] | bool) -> int:
        """How many lines the files between ours and the one now open held (0 when none was skipped)."""
        if moved is True or moved is False:
            return 0
        old, new = moved
        records = _rotations(self.path)
        inodes = [inode for inode, _ in records]
        ours = _last_index(inodes, old[1] if old else -1)
        if ours is None:
            return 0  # no record of ours (an older hub, trimmed marks): nothing to count from
        if new == _identity(self.path):
            upto = len(records)  # the live file: every file rotated after ours was skipped
        else:
            found = _last_index(inodes, new[1])
            upto = found if found is not None and found > ours else len(records)
        return sum(count for _, count in records[ours + 1 : upto])

    def _drain(self) -> Iterator[str]:
        assert self.handle is not None
        while chunk := self.handle.read(CHUNK):
            self.consumed += chunk.count(b"\n")
            *complete, self.partial = (self.partial + chunk).split(b"\n")
            yield from _decode(complete)
            while len(self.partial) > MAX_LINE:  # no newline in sight: hand it on in pieces
                yield self.partial[:MAX_LINE].decode("utf-8", errors="surrogateescape") + SPLIT_MARKER
                self.partial = self.partial[MAX_LINE:]


def _rotations(path: Path) -> list[tuple[int, int]]:
    """(inode, lines) of each file the hub rotated out, oldest first, from NAME.marks."""
    text = _marks_text(path)
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "rotated" and parts[1].isdigit() and parts[2].isdigit():
            found.append((int(parts[1]), int(parts[2])))
    return found


def _last_index(values: list[int], wanted: int) -> int | None:
    for index in range(len(values) - 1, -1, -1):
        if values[index] == wanted:
            return index
    return None


def follow(paths: dict[str, Path], backlog: int) -> Iterator[tuple[str, str]]:
    """(name, line) pairs: the last `backlog` lines of each log, then new lines as they are written."""
    for name, path in paths.items():
        for line in last_lines(path, backlog):
            yield name, line
    tail = Tail(paths)
    while True:
        lines = tail.read()
        yield from lines
        if not lines:
            time.sleep(FOLLOW_POLL)


class Tail:
    """New lines of several logs, from now on, each time `read` is called (it never waits)."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self.followers = {name: _Follower(path, from_end=True) for name, path in paths.items()}

    def read(self) -> list[tuple[str, str]]:
        return [(name, line) for name, follower in self.followers.items() for line in follower.read_lines()]
