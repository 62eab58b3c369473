"""What a starting server is doing, so a slow download is told apart from a stalled one.

A start is given time by progress, not by the clock: bytes added to the server's log, bytes added
to its model download (the Hugging Face cache for mlx_lm.server, Ollama's pull), and a change in
its readiness answer (no answer -> 503 "Loading model") each count. `start_timeout` is the time
allowed without any of them; `start_deadline`, when set, bounds the whole start.

Readiness probes report their answers through a context variable, so the backends' `wait_ready`
keeps its signature: the runner sets it before it creates the readiness task.
"""

from __future__ import annotations

import contextvars
import os
import re
import stat
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

# The download counts as going on while its folder grew within this many seconds.
DOWNLOAD_QUIET_S = 3.0
# A folder walk per check is cheap for a model's few files; a cap keeps a wrong folder cheap too.
MAX_FILES_WALKED = 10_000
# A progress bar's `1.20G/2.68G [` (tqdm, as huggingface_hub prints it): sizes with units, not `7/7 [` files.
_TQDM = re.compile(r"(\d+(?:\.\d+)?)\s*([kMGT]i?B?|B)/(\d+(?:\.\d+)?)\s*([kMGT]i?B?|B)\s*\[")
_DOWNLOAD_WORDS = re.compile(r"download|fetching|pulling", re.IGNORECASE)
_UNITS = {"B": 1, "k": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
TAIL_BYTES = 4096
T = TypeVar("T")

current: contextvars.ContextVar[StartProgress | None] = contextvars.ContextVar("llmctl_start_progress", default=None)


@dataclass
class StartProgress:
    """The signs of life of one start, checked by the runner about once a second."""

    log_path: Path
    download_dirs: tuple[Path, ...] = ()
    started: float = field(default_factory=time.monotonic)
    phase: str = "starting"
    last_progress: float = field(default_factory=time.monotonic)
    downloaded: int = 0
    total: int | None = None
    rate: float = 0.0
    _log_mark: tuple[int, int] | None = None
    _dir_bytes: int | None = None
    _checked_at: float = field(default_factory=time.monotonic)
    _download_seen: float | None = None
    _answer: str | None = None
    _answer_changed: bool = False
    _bar: tuple[int, int] | None = None  # the last progress bar read in the log: (done, total) bytes

    def __post_init__(self) -> None:
        self._log_mark = _file_mark(self.log_path)
        self._dir_bytes = folder_bytes(self.download_dirs) if self.download_dirs else None

    # -- a report from the readiness probe ------------------------------------------------

    def answered(self, status: int | None, body: str = "") -> None:
        """A readiness probe's answer. Only a change counts: a load stuck at 503 is no progress."""
        answer = "none" if status is None else f"{status} {body[:200]}"
        if answer != self._answer:
            self._answer, self._answer_changed = answer, True
            if status is not None and self.phase == "starting":
                self.phase = "loading"  # it answers: the program is up, its model is what it waits for

    # -- the runner's check --------------------------------------------------------------

    def check(self, now: float | None = None) -> bool:
        """Look for progress since the last check; True when there was some."""
        now = time.monotonic() if now is None else now
        moved = False
        mark = _file_mark(self.log_path)
        if mark != self._log_mark:
            self._log_mark, moved = mark, True
            if self.phase == "starting":
                self.phase = "loading"
            self._read_log_bar(now)
        if self.download_dirs:
            size = folder_bytes(self.download_dirs)
            if self._dir_bytes is not None and size > self._dir_bytes:
                moved = True
                if self._bar is None:  # a progress bar in the log, when there is one, has the better figures
                    self._note_download(size - self._dir_bytes, now - self._checked_at, now)
                    self.downloaded += size - self._dir_bytes
                else:
                    self._download_seen, self.phase = now, "downloading"
            self._dir_bytes = size
        self._checked_at = now
        if self._answer_changed:
            self._answer_changed, moved = False, True
        if self.phase == "downloading" and self._download_seen and now - self._download_seen > DOWNLOAD_QUIET_S:
            self.phase, self.rate = "loading", 0.0
        if moved:
            self.last_progress = now
        return moved

    def idle_for(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.last_progress

    def describe(self, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        return {
            "phase": self.phase,
            "elapsed_s": round(now - self.started, 1),
            "idle_s": round(now - self.last_progress, 1),
            "downloaded_bytes": self.downloaded or None,
            "total_bytes": self.total,
            "rate_bytes_per_s": round(self.rate) if self.phase == "downloading" else None,
        }

    # -- helpers -------------------------------------------------------------------------

    def _note_download(self, added: int, seconds: float, now: float) -> None:
        if seconds > 0:
            sample = added / seconds
            self.rate = sample if not self.rate else 0.5 * self.rate + 0.5 * sample  # smooth the jitter
        self._download_seen = now
        self.phase = "downloading"

    def _read_log_bar(self, now: float) -> None:
        """A progress bar in the log's tail (`model.safetensors: 45%|... 1.20G/2.68G [`) says the server
        is downloading, and how far it got, even where no cache folder is watched."""
        tail = _tail(self.log_path)
        found = _TQDM.findall(tail)
        if not found:
            last = tail.replace("\r", "\n").rstrip().rsplit("\n", 1)[-1]
            if _DOWNLOAD_WORDS.search(last):  # "Downloading model...", "pulling manifest": no figures, the phase
                self._download_seen, self.phase = now, "downloading"
            return
        done_text, done_unit, total_text, total_unit = found[-1]
        done, total = int(float(done_text) * _UNITS[done_unit[0]]), int(float(total_text) * _UNITS[total_unit[0]])
        if (done, total) == self._bar:
            return
        if self._bar is not None and total == self._bar[1] and done > self._bar[0]:
            self._note_download(done - self._bar[0], now - self._checked_at, now)
        else:
            self._note_download(0, 0.0, now)
        self._bar = (done, total)
        self.downloaded, self.total = done, total


async def tracking(progress: StartProgress, readiness: Awaitable[T]) -> T:
    """Run a backend's readiness check with its probes reporting to `progress` (in this task only)."""
    current.set(progress)
    return await readiness


def report_answer(status: int | None, body: str = "") -> None:
    """Called by readiness probes: counts for the start in progress, if there is one."""
    progress = current.get()
    if progress is not None:
        progress.answered(status, body)


def folder_bytes(folders: Iterable[Path]) -> int:
    """Bytes in the files under these folders, partial downloads included; symlinks not followed."""
    total, walked = 0, 0
    for folder in folders:
        for root, _dirs, files in os.walk(folder):
            for name in files:
                walked += 1
                if walked > MAX_FILES_WALKED:
                    return total
                try:
                    info = os.lstat(os.path.join(root, name))
                except OSError:
                    continue
                if not os.path.islink(os.path.join(root, name)):
                    total += info.st_size
    return total


def huggingface_cache(env: dict[str, str]) -> Path:
    """Where huggingface_hub keeps downloads for a process with this environment."""
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    home = Path(env["HF_HOME"]).expanduser() if env.get("HF_HOME") else Path.home() / ".cache" / "huggingface"
    return home / "hub"


def huggingface_repo_folder(repo_id: str, env: dict[str, str]) -> Path:
    return huggingface_cache(env) / f"models--{repo_id.replace('/', '--')}"


def phase_text(progress: dict[str, Any] | None) -> str:
    """`downloading 1.2/1.8 GiB 14 MB/s 35s`, `loading 12s`: the phase as people read it."""
    if not progress:
        return ""
    parts = [str(progress["phase"])]
    done, total, rate = progress.get("downloaded_bytes"), progress.get("total_bytes"), progress.get("rate_bytes_per_s")
    if progress["phase"] == "downloading" and done:
        parts.append(f"{done / (1 << 30):.1f}/{total / (1 << 30):.1f} GiB" if total else _size(done))
        if rate:
            parts.append(f"{_size(rate, 1000)}/s".replace("iB/s", "B/s"))
    parts.append(f"{progress['elapsed_s']:.0f}s")
    return " ".join(parts)


def _size(value: float, base: int = 1024) -> str:
    units = ["B", "KiB", "MiB", "GiB", "TiB"] if base == 1024 else ["B", "kB", "MB", "GB", "TB"]
    for unit in units:
        if value < base or unit == units[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= base
    raise AssertionError("unreachable")


def _file_mark(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_size


def _tail(path: Path) -> str:
    """The log's last TAIL_BYTES, read without following a planted link or hanging on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return ""
        return os.pread(fd, TAIL_BYTES, max(0, info.st_size - TAIL_BYTES)).decode("utf-8", "replace")
    except OSError:
        return ""
    finally:
        os.close(fd)
