"""Memory pools: where an instance's bytes live, and what each pool may hold.

A pool is host memory ("ram": PSS on Linux; "unified" on a Mac: the physical footprint, in the
memory the GPU shares) or one NVIDIA GPU ("gpu:0", "gpu:1", ... by NVML's device index). An instance
counts against every pool it uses; a budget is kept per pool.

NVML stays behind a seam (`Nvml`): the real library where nvidia-ml-py and a driver are present,
a recorded stand-in in tests (CI has no GPU). Facts used: nvmlDeviceGetCount, nvmlDeviceGetHandleByIndex,
nvmlDeviceGetMemoryInfo (.total, .used, bytes), nvmlDeviceGetName, and the per-process lists
nvmlDeviceGetComputeRunningProcesses / nvmlDeviceGetGraphicsRunningProcesses (.pid, .usedGpuMemory in
bytes, None when the driver cannot tell) — NVIDIA's NVML API reference, "Device Queries".
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

HOST_POOL = "unified" if sys.platform == "darwin" else "ram"
GPU_PREFIX = "gpu:"
DEFAULT_GPU_SHARE = 0.9  # of each device, when no gpu_memory_budget is given


def gpu_pool(index: int) -> str:
    return f"{GPU_PREFIX}{index}"


def is_gpu_pool(pool: str) -> bool:
    return pool.startswith(GPU_PREFIX)


@dataclass(frozen=True)
class Device:
    """One GPU as NVML numbers it; bytes."""

    index: int
    name: str
    total_bytes: int
    used_bytes: int = 0


@dataclass
class Nvml:
    """NVIDIA's management library, or nothing: every method answers empty when it is not available.
    `library` is the pynvml module, or a stand-in with the same functions (tests)."""

    library: Any = None
    _tried: bool = field(default=False, repr=False)

    def _lib(self) -> Any:
        if self.library is None and not self._tried:
            self._tried = True
            try:
                import pynvml

                pynvml.nvmlInit()
                self.library = pynvml
            except Exception:  # no library, no driver, no GPU: all mean "no GPU pools"
                self.library = None
        return self.library

    def available(self) -> bool:
        """Is NVML there (a library, a driver)? Loaded on the first call, then remembered."""
        return self._lib() is not None

    def devices(self) -> list[Device]:
        lib = self._lib()
        if lib is None:
            return []
        try:
            found = []
            for index in range(lib.nvmlDeviceGetCount()):
                handle = lib.nvmlDeviceGetHandleByIndex(index)
                info = lib.nvmlDeviceGetMemoryInfo(handle)
                name = lib.nvmlDeviceGetName(handle)
                name = name.decode() if isinstance(name, bytes) else str(name)
                found.append(Device(index, name, int(info.total), int(info.used)))
            return found
        except Exception:  # a driver hiccup costs the figures, never the caller
            return []

    def used_by_pid(self) -> dict[int, dict[int, int]] | None:
        """{host pid: {device index: bytes}}, or None when NVML is not available."""
        lib = self._lib()
        if lib is None:
            return None
        usage: dict[int, dict[int, int]] = {}
        try:
            for index in range(lib.nvmlDeviceGetCount()):
                handle = lib.nvmlDeviceGetHandleByIndex(index)
                for entry in _processes(lib, handle):
                    if entry.usedGpuMemory is not None:
                        per_device = usage.setdefault(int(entry.pid), {})
                        per_device[index] = per_device.get(index, 0) + int(entry.usedGpuMemory)
        except Exception:
            return None
        return usage

    def lists(self, pids: set[int]) -> bool:
        """Does any GPU still list one of these processes (its memory not yet freed)?"""
        usage = self.used_by_pid()
        return bool(usage) and any(pid in usage for pid in pids)


NVML = Nvml()  # the process's one handle on the library (loaded on first use)


def _processes(lib: Any, handle: Any) -> list[Any]:
    """Compute and graphics processes of one device, each pid once (a process can be in both lists).
    Old drivers lack the calls pynvml makes by default (its _v3): then the _v2 ones."""
    seen: dict[int, Any] = {}
    for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        for name in (getter, f"{getter}_v2"):
            function = getattr(lib, name, None)
            if function is None:
                continue
            try:
                entries = function(handle)
            except Exception:  # NVMLError_FunctionNotFound on old drivers, or any driver hiccup: the next call
                continue
            for entry in entries:
                seen.setdefault(int(entry.pid), entry)
            break
    return list(seen.values())


def gpu_budgets(devices: list[Device], setting: int | float | None) -> dict[str, int]:
    """The budget of each GPU pool: `setting` as bytes (an int, applied to every device) or a share of
    each device (a float in (0, 1]: `gpu_memory_budget: 80%`); default 90 % of each device."""
    budgets = {}
    for device in devices:
        if isinstance(setting, int) and not isinstance(setting, bool):
            budgets[gpu_pool(device.index)] = min(setting, device.total_bytes)
        else:
            share = setting if isinstance(setting, float) and 0 < setting <= 1 else DEFAULT_GPU_SHARE
            budgets[gpu_pool(device.index)] = int(device.total_bytes * share)
    return budgets


@dataclass(frozen=True)
class Part:
    """One part of an estimate: what, in which pool, how many bytes."""

    pool: str
    what: str
    bytes: int


@dataclass(frozen=True)
class Estimate:
    """Bytes an instance will take once loaded, by pool, and the parts they add up from."""

    parts: tuple[Part, ...]

    @property
    def pools(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for part in self.parts:
            totals[part.pool] = totals.get(part.pool, 0) + part.bytes
        return totals

    @property
    def host(self) -> int:
        return self.pools.get(HOST_POOL, 0)

    @property
    def total(self) -> int:
        return sum(part.bytes for part in self.parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pools": self.pools,
            "total_bytes": self.total,
            "parts": [{"pool": p.pool, "what": p.what, "bytes": p.bytes} for p in self.parts],
        }


def host_only(total: int, what: str = "model, cache and process") -> Estimate:
    return Estimate((Part(HOST_POOL, what, int(total)),))


def pools_of(host_bytes: int, pids: list[int], per_device: dict[int, dict[int, int]] | None) -> dict[str, int]:
    """What a process tree takes, by pool: `host_bytes` (its PSS or footprint) and, per GPU, what NVML
    lists for any of `pids`."""
    pools = {HOST_POOL: host_bytes}
    for pid in pids:
        for index, size in (per_device or {}).get(pid, {}).items():
            pools[gpu_pool(index)] = pools.get(gpu_pool(index), 0) + size
    return pools


def add_pools(total: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    """`total` plus `more`, pool by pool (a new dict)."""
    summed = dict(total)
    for pool, size in more.items():
        summed[pool] = summed.get(pool, 0) + size
    return summed
