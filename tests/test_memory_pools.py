"""Memory per pool (issue 18): estimates by pool and part, NVML behind a seam (recorded values: CI has
no GPU), budgets per GPU, and "stopped means freed" on real processes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from llmctl.backends import backend_for
from llmctl.config.load import parse_config
from llmctl.memory import pools
from llmctl.memory.pools import HOST_POOL, Device, Nvml, gpu_budgets

from .helpers import command_instance, free_port, llmctl, status_json, write_config

GIB = 1 << 30


class RecordedNvml:
    """pynvml's functions over recorded figures: two H200s as NVML reported them on the device run."""

    def __init__(self, processes: dict[int, list[tuple[int, int | None]]] | None = None) -> None:
        self.totals = [150_754_820_096, 150_754_820_096]
        self.processes = processes or {}

    def nvmlDeviceGetCount(self) -> int:
        return len(self.totals)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        used = sum(size or 0 for _, size in self.processes.get(handle, []))
        return SimpleNamespace(total=self.totals[handle], used=used, free=self.totals[handle] - used)

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA H200"

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=pid, usedGpuMemory=size) for pid, size in self.processes.get(handle, [])]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        return self.nvmlDeviceGetComputeRunningProcesses(handle)  # the same process in both lists counts once


def llama_spec(model: Path, *args: str, env: dict[str, str] | None = None):
    entry = {"name": "a", "backend": "llama.cpp", "model": str(model), "port": 9000, "args": list(args)}
    if env:
        entry["env"] = env
    config = parse_config(json.dumps({"instances": [entry]}), model.parent / "x.yaml", check_backends=False)
    return config.instances[0]


H200S = [Device(0, "NVIDIA H200", 140 * GIB), Device(1, "NVIDIA H200", 140 * GIB)]


def test_nvml_seam_reads_devices_and_per_process_use_per_device():
    nvml = Nvml(RecordedNvml({0: [(11, 2 * GIB), (12, None)], 1: [(11, GIB)]}))
    assert [(d.index, d.name, d.total_bytes) for d in nvml.devices()] == [
        (0, "NVIDIA H200", 150_754_820_096),
        (1, "NVIDIA H200", 150_754_820_096),
    ]
    assert nvml.used_by_pid() == {11: {0: 2 * GIB, 1: GIB}}  # None (driver cannot tell) is not 0
    assert nvml.lists({11}) and not nvml.lists({99})
    assert Nvml(None, _tried=True).devices() == [] and Nvml(None, _tried=True).used_by_pid() is None


def test_gpu_budgets_default_to_ninety_percent_of_each_device_or_follow_the_setting():
    assert gpu_budgets(H200S, None) == {"gpu:0": int(140 * GIB * 0.9), "gpu:1": int(140 * GIB * 0.9)}
    assert gpu_budgets(H200S, 0.5) == {"gpu:0": 70 * GIB, "gpu:1": 70 * GIB}
    assert gpu_budgets(H200S, 10 * GIB) == {"gpu:0": 10 * GIB, "gpu:1": 10 * GIB}
    assert gpu_budgets(H200S, 500 * GIB) == {"gpu:0": 140 * GIB, "gpu:1": 140 * GIB}  # never over the device


def test_a_cpu_machine_keeps_everything_on_the_host(gguf_model):
    estimate = backend_for("llama.cpp").estimate(llama_spec(gguf_model, "-c", "256"), [])
    assert set(estimate.pools) == {HOST_POOL}
    assert {part.what for part in estimate.parts} >= {"weights", "KV cache", "compute buffers"}
    assert estimate.total == backend_for("llama.cpp").estimate_memory(llama_spec(gguf_model, "-c", "256"))


@pytest.mark.parametrize(
    ("args", "env", "pools_used"),
    [
        ((), None, {"gpu:0", "gpu:1"}),  # -ngl auto, -sm layer: both visible devices
        (("-sm", "none", "-mg", "1"), None, {"gpu:1"}),
        (("--device", "CUDA1"), None, {"gpu:1"}),
        ((), {"CUDA_VISIBLE_DEVICES": "1"}, {"gpu:1"}),
        (("--device", "none"), None, set()),
        (("-ngl", "0"), None, set()),
    ],
)
def test_placement_follows_the_flags_that_choose_devices(gguf_model, args, env, pools_used):
    estimate = backend_for("llama.cpp").estimate(llama_spec(gguf_model, "-c", "256", *args, env=env), H200S)
    assert {p.pool for p in estimate.parts if p.what == "weights" and pools.is_gpu_pool(p.pool)} == pools_used
    if pools_used:  # each GPU it uses pays a CUDA context (the figures measured on the H200s)
        assert sum(p.bytes for p in estimate.parts if p.what == "CUDA context") == len(pools_used) * (642 << 20)
        assert any(p.pool == HOST_POOL and p.what == "CUDA runtime (host side)" for p in estimate.parts)
    first_touched = any(p.what == "CUDA context (first visible device)" for p in estimate.parts)
    assert first_touched == (pools_used == {"gpu:1"} and "CUDA_VISIBLE_DEVICES" not in (env or {}))


def test_the_estimate_matches_what_the_h200s_measured(gguf_model):
    """bench/gpu_check.json, recorded on two H200s: each model's GPU estimate within 10 % of NVML's
    figure for its process, the eviction decided by GPU memory, and the GPUs empty after `down`."""
    report = json.loads((Path(__file__).resolve().parent.parent / "bench" / "gpu_check.json").read_text())
    last = report["snapshots"][-1]
    for snapshot in report["snapshots"]:
        for name, instance in snapshot["instances"].items():
            if instance["memory_pools"] and "gpu:0" in instance["memory_pools"]:
                ratio = instance["memory_pools"]["gpu:0"] / instance["estimate_pools"]["gpu:0"]
                assert 0.9 <= ratio <= 1.1, (name, ratio)
    assert last["instances"]["m1"]["state"] == "stopped" and "evicted" in last["instances"]["m1"]["reason"]
    gpu0 = next(pool for pool in last["pools"] if pool["pool"] == "gpu:0")
    assert gpu0["used_bytes"] <= gpu0["budget_bytes"]
    assert report["after_down"]["listed"] == [] and report["after_down"]["device_used"] == report["device_used_before"]
    pinned = report["pinned"]["instances"]
    assert set(pinned["on0"]["nvml"]) == {"0"} and pinned["on1"]["nvml"]["1"] > pinned["on1"]["nvml"]["0"]


def test_partial_offload_splits_weights_and_kv_between_host_and_gpu(gguf_model):
    spec = llama_spec(gguf_model, "-c", "4096", "-sm", "none")
    layers = 2  # the tiny test GGUF has two blocks
    half = backend_for("llama.cpp").estimate(dataclasses.replace(spec, args=(*spec.args, "-ngl", "1")), H200S)
    full = backend_for("llama.cpp").estimate(spec, H200S)
    weights = {p.pool: p.bytes for p in half.parts if p.what == "weights"}
    assert weights[HOST_POOL] == pytest.approx(weights["gpu:0"], rel=0.01) and layers == 2
    assert half.pools[HOST_POOL] > full.pools[HOST_POOL]
    no_kv_offload = backend_for("llama.cpp").estimate(dataclasses.replace(spec, args=(*spec.args, "-nkvo")), H200S)
    assert any(p.pool == HOST_POOL and p.what == "KV cache" for p in no_kv_offload.parts)


def test_the_draft_model_and_the_projector_are_counted(gguf_model, tmp_path):
    projector = tmp_path / "mmproj.gguf"
    projector.write_bytes(b"\0" * 3_000_000)
    plain = backend_for("llama.cpp").estimate(llama_spec(gguf_model, "-c", "256"), [])
    more = backend_for("llama.cpp").estimate(
        llama_spec(gguf_model, "-c", "256", "-md", str(gguf_model), "--mmproj", str(projector)), []
    )
    whats = {part.what for part in more.parts}
    assert {"draft model weights", "multimodal projector"} <= whats
    assert more.total >= plain.total + 3_000_000


def test_llmctl_estimate_prints_the_parts_and_says_what_is_wrong(gguf_model, tmp_path):
    shown = llmctl("estimate", str(gguf_model), "--", "-c", "2048", "-ngl", "0")
    assert shown.returncode == 0, shown.stderr
    assert "KV cache" in shown.stdout and "total" in shown.stdout
    as_json = json.loads(llmctl("estimate", str(gguf_model), "--json", "--", "-c", "2048").stdout)
    assert as_json["version"] == 1 and as_json["pools"][HOST_POOL] == as_json["total_bytes"]
    more_context = json.loads(llmctl("estimate", str(gguf_model), "--json", "--", "-c", "8192").stdout)
    assert more_context["total_bytes"] > as_json["total_bytes"]
    missing = llmctl("estimate", str(tmp_path / "nope.gguf"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr
    not_gguf = tmp_path / "text.gguf"
    not_gguf.write_text("hello")
    wrong = llmctl("estimate", str(not_gguf))
    assert wrong.returncode == 2 and "cannot read" in wrong.stderr


def test_a_stop_waits_until_nvml_no_longer_lists_the_server(monkeypatch):
    from llmctl.control import serverprocess

    listed = {"until": 3}

    class FadingNvml:
        def lists(self, pids: set[int]) -> bool:
            listed["until"] -= 1
            return listed["until"] > 0

    monkeypatch.setattr(serverprocess, "NVML", FadingNvml())
    assert asyncio.run(serverprocess._until_gpu_freed({123}, timeout=5)) is True
    assert listed["until"] == 0
    monkeypatch.setattr(serverprocess, "NVML", SimpleNamespace(lists=lambda pids: True))
    assert asyncio.run(serverprocess._until_gpu_freed({123}, timeout=0.2)) is False  # bounded


def test_down_returns_only_once_a_zombie_leaders_threads_are_gone(tmp_path, state_dir):
    """The server's main thread exits on SIGTERM while another thread lives 2 s more (holding its
    memory): `down` returns after that thread, not when the leader turned zombie."""
    port = free_port()
    write_config(tmp_path, "instances:" + command_instance("z", port, "--zombie-leader", "2"))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    pid = next(i for i in status_json(cwd=tmp_path)["instances"] if i["name"] == "z")["pid"]
    assert llmctl("down", cwd=tmp_path).returncode == 0
    assert not psutil.pid_exists(pid)  # reaped: no zombie, no live thread
    log = (state_dir / "logs" / "z.log").read_text()
    assert "main thread exits" in log and "last thread done" in log


def test_the_recorded_nvml_answers_like_pynvml():
    """The stand-in has the functions llmctl calls, with pynvml's names (a rename would be caught)."""
    needed = {
        "nvmlDeviceGetCount",
        "nvmlDeviceGetHandleByIndex",
        "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetName",
        "nvmlDeviceGetComputeRunningProcesses",
        "nvmlDeviceGetGraphicsRunningProcesses",
    }
    source = Path(pools.__file__).read_text()
    assert all(name in source for name in needed)
    assert all(hasattr(RecordedNvml(), name) for name in needed)
    assert sys.modules.get("pynvml") is None or hasattr(sys.modules["pynvml"], "nvmlInit")
