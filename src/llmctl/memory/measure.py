"""Memory a user can trust, per instance and for the machine.

Per instance, the whole process tree is counted (Ollama's runners, a command that forks), with the
figure chosen per platform and named:

- Linux: PSS from /proc/PID/smaps_rollup (never the whole smaps: it costs far more), so N servers
  mapping one GGUF share its pages fairly; USS and RSS beside it.
- macOS: the physical footprint from libproc's proc_pid_rusage (what Activity Monitor shows, Metal
  buffers included; RSS misses them and psutil does not offer it), RSS as the fallback.
- NVIDIA GPUs: per-process memory through NVML (nvidia-ml-py, optional).

Sampling reads the kernel, so the supervisor does it every few seconds and `status` reads the cache.
PSS is the dear part: the kernel walks every resident page for smaps_rollup (~0.4 ms for a small
Python server, far more for a loaded model), so a tree's PSS is read again only when its members or
its RSS moved since the last read, or when the caller asks (llmctl.control.sampler decides when).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import sys
import time
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import psutil

from llmctl.system.process import ProcessHandle, tree

IS_LINUX = sys.platform.startswith("linux")
IS_MACOS = sys.platform == "darwin"
RUSAGE_INFO_V2 = 2
_RUSAGE_V2_SIZE = 160
_FOOTPRINT_OFFSET = 72
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")
# A tree's last PSS stands while its RSS stays within this of the RSS it had when PSS was read.
PSS_RSS_DRIFT = 1 << 20
PSS_RSS_DRIFT_RATIO = 0.01


@dataclass
class TreeMemory:
    """One sample of a process tree. `value`/`kind` is the figure to show: pss, footprint or rss."""

    rss: int = 0
    pss: int | None = None
    uss: int | None = None
    footprint: int | None = None
    gpu: int | None = None
    cpu_percent: float = 0.0
    pids: list[int] = field(default_factory=list)
    pss_rss: int = 0  # the tree's RSS when its PSS was read (the PSS may be carried over from a sample before)
    pss_at: float = 0.0  # when its PSS was read (time.monotonic())

    @property
    def kind(self) -> str:
        if self.pss is not None:
            return "pss"
        if self.footprint is not None:
            return "footprint"
        return "rss"

    @property
    def value(self) -> int:
        if self.pss is not None:
            return self.pss
        if self.footprint is not None:
            return self.footprint
        return self.rss


def parse_size(text: str | int | float, total: int | None = None) -> int:
    """'24GiB', '512 MB', 1073741824, or '80%' (of `total`) as bytes."""
    if isinstance(text, bool):
        raise ValueError("must be a size like 24GiB, 512MB, a number of bytes, or a percentage like 80%")
    if isinstance(text, (int, float)):
        if text <= 0:
            raise ValueError("must be positive")
        return int(text)
    stripped = text.strip()
    if stripped.endswith("%"):
        percent = float(stripped[:-1])
        if not 0 < percent <= 100:
            raise ValueError(f"a percentage must be between 0 and 100 (got {text!r})")
        return int((total if total is not None else total_memory()) * percent / 100)
    match = _SIZE.match(stripped)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"{text!r} is not a size like 24GiB, 512MB, a number of bytes, or a percentage like 80%")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise ValueError("must be positive")
    return value


def total_memory() -> int:
    return int(psutil.virtual_memory().total)


def smaps_rollup(pid: int) -> dict[str, int] | None:
    """Rss, Pss, Private_Clean, Private_Dirty... in bytes, or None where the kernel has no rollup."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
            text = rollup.read().decode("ascii", errors="replace")
    except OSError:
        return None
    values = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            values[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return values


@cache
def _libproc() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("System") or "libSystem.dylib", use_errno=True)


def macos_footprint(pid: int, lib: Any = None) -> int | None:
    """phys_footprint of a process (same user, no root needed), from rusage_info_v2."""
    buffer = ctypes.create_string_buffer(_RUSAGE_V2_SIZE)
    try:
        status = (lib or _libproc()).proc_pid_rusage(pid, RUSAGE_INFO_V2, buffer)
    except (OSError, AttributeError):
        return None
    if status != 0:
        return None
    return int.from_bytes(buffer.raw[_FOOTPRINT_OFFSET : _FOOTPRINT_OFFSET + 8], "little")


def macos_wired_limit(lib: Any = None) -> int | None:
    """iogpu.wired_limit_mb in bytes (0 means the macOS default, reported as None)."""
    value = ctypes.c_int64(0)
    size = ctypes.c_size_t(ctypes.sizeof(value))
    try:
        status = (lib or _libproc()).sysctlbyname(
            b"iogpu.wired_limit_mb", ctypes.byref(value), ctypes.byref(size), None, 0
        )
    except (OSError, AttributeError):
        return None
    if status != 0 or value.value <= 0:
        return None
    return value.value * 1024 * 1024


class GpuMemory:
    """Per-process GPU memory summed over every GPU (llmctl.memory.pools.Nvml has it per device)."""

    def __init__(self, nvml: Any = None) -> None:
        from llmctl.memory.pools import Nvml

        self._nvml = Nvml(nvml)

    def by_pid(self) -> dict[int, int] | None:
        """{host pid: bytes} summed over every GPU, or None when NVML is not available."""
        usage = self._nvml.used_by_pid()
        return None if usage is None else {pid: sum(per_device.values()) for pid, per_device in usage.items()}


def children_map() -> dict[int, list[int]]:
    """Parent PID -> child PIDs for the whole machine, read once for many trees (psutil's
    children() reads the whole process table on every call)."""
    if IS_LINUX:
        return _linux_children_map()
    children: dict[int, list[int]] = {}
    for process in psutil.process_iter(["ppid"]):
        children.setdefault(process.info["ppid"], []).append(process.pid)
    return children


def _linux_children_map() -> dict[int, list[int]]:
    """The same from one read of each /proc/PID/stat: a quarter of psutil's cost, which opens each
    file through a buffered reader and builds a Process for every PID on the machine."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fd = os.open(f"/proc/{entry.name}/stat", os.O_RDONLY)
            try:
                stat = os.read(fd, 4096)
            finally:
                os.close(fd)
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after its last ")"
            ppid = int(stat[stat.rindex(b")") + 2 :].split(b" ", 2)[1])
        except (OSError, ValueError, IndexError):
            continue  # gone since the listing, or not ours to read
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def tree_from_map(handle: ProcessHandle, children: dict[int, list[int]]) -> list[psutil.Process]:
    root = handle.process()
    if root is None:
        return []
    members, pending = [root], list(children.get(root.pid, ()))
    while pending:
        pid = pending.pop()
        with contextlib.suppress(psutil.Error):
            members.append(psutil.Process(pid))
            pending.extend(children.get(pid, ()))
    return members


def forget_exited(cache: dict[int, psutil.Process], live: set[int]) -> None:
    """Drop the CPU-% readings of processes no sampled tree holds any more."""
    for pid in [pid for pid in cache if pid not in live]:
        del cache[pid]


def sample_tree(
    handle: ProcessHandle,
    cache: dict[int, psutil.Process],
    gpu_by_pid: dict[int, int] | None = None,
    children: dict[int, list[int]] | None = None,
    previous: TreeMemory | None = None,
) -> TreeMemory | None:
    """Memory and CPU of a process tree. CPU % needs two readings of one psutil.Process, so those
    are kept in `cache` between calls (the caller prunes it with forget_exited).

    `previous`, a sample of the same tree, lends its PSS and USS when the tree has the same members
    and about the same RSS (PSS_RSS_DRIFT): then no smaps_rollup is read. None reads them all."""
    members = tree(handle) if children is None else tree_from_map(handle, children)
    if not members:
        return None
    sample = TreeMemory(gpu=0 if gpu_by_pid is not None else None)
    for member in members:
        known = cache.get(member.pid)
        if known is None or known.create_time() != member.create_time():
            cache[member.pid] = known = member
        try:
            sample.rss += known.memory_info().rss
            sample.cpu_percent += known.cpu_percent(interval=None)
        except psutil.Error:
            continue
        sample.pids.append(member.pid)
        if gpu_by_pid is not None and sample.gpu is not None:
            sample.gpu += gpu_by_pid.get(member.pid, 0)
    if IS_LINUX and previous is not None and _pss_still_holds(previous, sample):
        sample.pss, sample.uss = previous.pss, previous.uss
        sample.pss_rss, sample.pss_at = previous.pss_rss, previous.pss_at
    elif IS_LINUX:
        _read_pss(sample)
    if IS_MACOS:
        footprints = [macos_footprint(pid) for pid in sample.pids]
        sample.footprint = None if None in footprints else sum(footprint or 0 for footprint in footprints)
    sample.cpu_percent = round(sample.cpu_percent, 1)
    return sample


def _pss_still_holds(previous: TreeMemory, sample: TreeMemory) -> bool:
    """Whether `previous`'s PSS may stand for `sample`'s: the same processes, about the same RSS."""
    if previous.pss is None or previous.pids != sample.pids:
        return False
    return abs(sample.rss - previous.pss_rss) <= max(PSS_RSS_DRIFT, previous.pss_rss * PSS_RSS_DRIFT_RATIO)


def _read_pss(sample: TreeMemory) -> None:
    """PSS and USS of the sample's members from smaps_rollup; left None if any member has none."""
    pss_total, uss_total = 0, 0
    for pid in sample.pids:
        rollup = smaps_rollup(pid)
        if rollup is None or "Pss" not in rollup:
            return
        pss_total += rollup["Pss"]
        uss_total += rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0)
    sample.pss, sample.uss, sample.pss_rss, sample.pss_at = pss_total, uss_total, sample.rss, time.monotonic()


def system_memory() -> dict[str, int | None]:
    memory = psutil.virtual_memory()
    return {
        "total_bytes": int(memory.total),
        "used_bytes": int(memory.total - memory.available),
        "available_bytes": int(memory.available),
        "swap_used_bytes": int(psutil.swap_memory().used),
        "gpu_wired_limit_bytes": macos_wired_limit() if IS_MACOS else None,
    }


def default_budget() -> int:
    """On a Mac, what the GPU may wire (the wired limit, else macOS's default of about 75 % of
    memory); elsewhere 90 % of memory."""
    total = total_memory()
    if IS_MACOS:
        return macos_wired_limit() or int(total * 0.75)
    return int(total * 0.9)


def platform_memory_kind() -> str:
    return "pss" if IS_LINUX else "footprint" if IS_MACOS else "rss"


def memory_fields(sample: TreeMemory | None, estimate: int | None) -> dict[str, Any]:
    """The memory keys of one instance in `status --json`."""
    return {
        "memory_bytes": sample.value if sample else None,
        "memory_kind": sample.kind if sample else platform_memory_kind(),
        "memory_rss_bytes": sample.rss if sample else None,
        "memory_pss_bytes": sample.pss if sample else None,
        "memory_uss_bytes": sample.uss if sample else None,
        "memory_footprint_bytes": sample.footprint if sample else None,
        "gpu_memory_bytes": sample.gpu if sample else None,
        "memory_estimate_bytes": estimate,
        "cpu_percent": sample.cpu_percent if sample else None,
    }


def system_summary(instances: list[dict[str, Any]], budget: int | None) -> dict[str, Any]:
    """The machine's memory, the sum over instances, and the budget `up` checks against."""
    return {
        **system_memory(),
        "instances_bytes": sum(instance.get("memory_bytes") or 0 for instance in instances),
        "memory_kind": platform_memory_kind(),
        "memory_budget_bytes": budget if budget is not None else default_budget(),
    }


def own_rss() -> int:
    return int(psutil.Process().memory_info().rss)
