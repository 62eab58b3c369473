"""Memory and CPU of a server's whole process tree (Ollama's runners, a command that forks)."""

from __future__ import annotations

from typing import Any

import psutil

from .process import ProcessHandle, tree


def sample_tree(handle: ProcessHandle, cache: dict[int, Any]) -> tuple[int | None, float | None]:
    """(resident bytes, CPU %) summed over the tree.

    CPU % needs two readings of the same psutil.Process, so those are kept in `cache` between calls.
    """
    members = tree(handle)
    if not members:
        return None, None
    rss = 0
    cpu = 0.0
    for member in members:
        known = cache.get(member.pid)
        if known is None or known.create_time() != member.create_time():
            cache[member.pid] = known = member
        try:
            rss += known.memory_info().rss
            cpu += known.cpu_percent(interval=None)
        except psutil.Error:
            continue
    live = {member.pid for member in members}
    for pid in [pid for pid in cache if pid not in live and not psutil.pid_exists(pid)]:
        del cache[pid]
    return rss, round(cpu, 1)
