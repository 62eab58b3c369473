"""Check llmctl's NVML figures against known CUDA allocations (run on a machine with an NVIDIA GPU).

Starts worker processes that each allocate a known number of bytes with PyTorch (one worker does it
in a child, to check the process-tree sum), measures the CUDA context alone in another worker, then
compares llmctl.memory's per-tree figure with allocated + context.

    python bench/nvml_check.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from llmctl.memory.measure import GpuMemory, sample_tree
from llmctl.system.process import ProcessHandle

WORKER = """
import sys, time, torch
size = int(sys.argv[1])
torch.cuda.init()
block = torch.empty(size, dtype=torch.uint8, device="cuda") if size else torch.empty(1, device="cuda")
torch.cuda.synchronize()
print("ready", torch.cuda.memory_reserved(), flush=True)
time.sleep(600)
"""
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
time.sleep(600)
"""
MiB = 1024 * 1024


def start(size: int, in_child: bool = False) -> subprocess.Popen:
    argv = [sys.executable, "-c", PARENT, WORKER, str(size)] if in_child else [sys.executable, "-c", WORKER, str(size)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


def main() -> None:
    sizes = {"context only": 0, "1 GiB": 1024 * MiB, "4 GiB": 4096 * MiB, "8 GiB (in a child)": 8192 * MiB}
    workers = {label: start(size, in_child="child" in label) for label, size in sizes.items()}
    gpu = GpuMemory()
    deadline = time.monotonic() + 120
    results = {}
    try:
        while time.monotonic() < deadline:
            by_pid = gpu.by_pid()
            assert by_pid is not None, "NVML is not available"
            figures = {label: sample_tree(ProcessHandle.of(w.pid), {}, by_pid).gpu for label, w in workers.items()}
            if all(figures.values()) and len(by_pid) >= len(workers):
                time.sleep(2)  # let every allocation settle, then read once more
                by_pid = gpu.by_pid()
                figures = {label: sample_tree(ProcessHandle.of(w.pid), {}, by_pid).gpu for label, w in workers.items()}
                break
            time.sleep(0.5)
        context = figures["context only"]
        for label, size in sizes.items():
            expected = size + context
            error = (figures[label] - expected) / expected
            results[label] = {
                "allocated": size,
                "nvml_tree_bytes": figures[label],
                "expected": expected,
                "error": error,
            }
            print(
                f"{label:<20} allocated {size / MiB:8.0f} MiB   llmctl {figures[label] / MiB:8.0f} MiB   "
                f"allocated + context {expected / MiB:8.0f} MiB   error {error * 100:+.2f}%"
            )
        print(json.dumps({"context_bytes": context, "raw_by_pid": by_pid, "results": results}))
        smi = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv"]
        print(subprocess.run(smi, capture_output=True, text=True).stdout)  # the driver's own view, for comparison
    finally:
        for worker in workers.values():
            for process in [*__import__("psutil").Process(worker.pid).children(recursive=True)]:
                process.kill()
            worker.kill()


if __name__ == "__main__":
    main()
