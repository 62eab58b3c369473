"""How long one memory sample takes for 1, 10 and 50 processes: llmctl's smaps_rollup reading
(PSS, USS, RSS) beside psutil's memory_full_info() (which reads the whole smaps) on the same
processes, in the same run. Each process holds 64 MiB of touched memory."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import psutil

from llmctl.memory.measure import sample_tree
from llmctl.system.process import ProcessHandle

HOLDER = "b = bytearray(64 * 1024 * 1024)\nfor i in range(0, len(b), 4096): b[i] = 1\nimport time; time.sleep(600)"
PARENT = "import subprocess, sys, time\n[subprocess.Popen([sys.executable, '-c', sys.argv[1]]) for _ in range(int(sys.argv[2]))]\ntime.sleep(600)"


def timed(function, runs: int = 20) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def measure(count: int) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, HOLDER, str(count - 1)])
    try:
        handle = ProcessHandle.of(parent.pid)
        while len(psutil.Process(parent.pid).children()) < count - 1:
            time.sleep(0.1)
        time.sleep(1.5)  # let every holder touch its memory
        members = [psutil.Process(parent.pid), *psutil.Process(parent.pid).children()]
        cache: dict = {}
        ours = timed(lambda: sample_tree(handle, cache))
        full = timed(lambda: [member.memory_full_info() for member in members])
        rss = timed(lambda: [member.memory_info() for member in members])
        sample = sample_tree(handle, cache)
        print(
            f"{count:3d} processes ({sample.rss / 2**20:6.0f} MiB RSS): llmctl sample {ours * 1000:7.2f} ms   "
            f"psutil memory_full_info {full * 1000:7.2f} ms   RSS only {rss * 1000:6.2f} ms   "
            f"ratio llmctl / full_info {ours / full:.2f}"
        )
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()


def main() -> None:
    for count in (1, 10, 50):
        measure(count)


if __name__ == "__main__":
    main()
