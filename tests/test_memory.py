"""Memory figures on real llama-server instances, the budget, and (mocked, since they cannot run
here) the macOS libproc and NVML paths."""

from __future__ import annotations

import ctypes
import os
import types

import psutil
import pytest

from llmctl.memory import measure as memory
from llmctl.system.process import ProcessHandle

from .helpers import by_name, command_instance, free_port, llmctl, status_json, wait_for, write_config


def rollup_pss(pid: int) -> int:
    total = 0
    process = psutil.Process(pid)
    for member in [process, *process.children(recursive=True)]:
        total += memory.smaps_rollup(member.pid)["Pss"]
    return total


def llama_instance(name: str, model, port: int) -> str:
    return f"""
  - name: {name}
    backend: llama.cpp
    model: {model}
    port: {port}
    args: ["-c", "512", "-np", "1"]
    health: {{interval: 1}}
"""


def warm_up(url: str) -> None:
    import httpx

    reply = httpx.post(url + "/v1/completions", json={"prompt": "hi", "n_predict": 2}, timeout=60, trust_env=False)
    assert reply.status_code == 200


def test_pss_shares_one_mapped_gguf_fairly_and_the_estimate_is_close(tmp_path, big_gguf_model, llama_server):
    names = ["a", "b", "c"]
    write_config(tmp_path, "instances:" + "".join(llama_instance(n, big_gguf_model, free_port()) for n in names))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    for instance in status_json(cwd=tmp_path)["instances"]:
        warm_up(instance["url"])  # every page of the weights is touched by a completion

    def settled():
        instances = status_json(cwd=tmp_path)["instances"]
        return instances if all(i["memory_pss_bytes"] and i["memory_pss_bytes"] > 100e6 for i in instances) else None

    wait_for(settled, timeout=20, interval=0.5, message="memory samples after warm-up")
    import time

    time.sleep(2.5)  # one more sampling round, so the cached figures are fresh
    instances = status_json(cwd=tmp_path)["instances"]
    reported = sum(i["memory_bytes"] for i in instances)
    measured = sum(rollup_pss(i["pid"]) for i in instances)
    rss = sum(i["memory_rss_bytes"] for i in instances)
    assert {i["memory_kind"] for i in instances} == {"pss"}
    assert abs(reported - measured) <= 0.10 * measured, (reported, measured)
    assert rss > 2 * reported, (rss, reported)  # RSS counts the shared file three times
    system = status_json(cwd=tmp_path)["system"]
    assert system["total_bytes"] > system["available_bytes"] > 0
    assert system["memory_kind"] == "pss"

    # Alone, an instance's PSS is its whole footprint: the estimate must be within 25 % of it.
    assert llmctl("down", "b", "c", cwd=tmp_path).returncode == 0
    time.sleep(2.5)
    alone = by_name(status_json(cwd=tmp_path))["a"]
    assert abs(alone["memory_estimate_bytes"] - alone["memory_bytes"]) <= 0.25 * alone["memory_bytes"], alone


def test_budget_below_the_estimate_refuses_up_and_starts_nothing(tmp_path, big_gguf_model, llama_server):
    small = free_port()
    text = (
        "memory_budget: 100MB\ninstances:"
        + command_instance("small", small)
        + llama_instance("big", big_gguf_model, free_port())
    )
    write_config(tmp_path, text)
    result = llmctl("up", cwd=tmp_path)
    assert result.returncode == 1
    message = result.stderr
    assert "not starting anything: the estimate is" in message and "big ~3" in message
    assert "memory budget is 95.4 MiB" in message and "--force" in message
    assert all(i["state"] == "stopped" for i in status_json(cwd=tmp_path)["instances"])
    assert result.stderr.count("\n") == 1

    forced = llmctl("up", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert all(i["state"] == "healthy" for i in status_json(cwd=tmp_path)["instances"])


def test_max_memory_warns_then_restarts_per_policy(tmp_path, state_dir):
    port = free_port()
    extra = "    max_memory: 40MiB\n    memory_grace: 1\n    restart: {policy: on-failure, backoff: 0.2}\n"
    write_config(tmp_path, "instances:" + command_instance("hog", port, "--allocate-mb", "64", extra=extra))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    first = by_name(status_json(cwd=tmp_path))["hog"]["pid"]
    restarted = wait_for(
        lambda: (i := by_name(status_json(cwd=tmp_path))["hog"])["restarts"] >= 1 and i, timeout=30, interval=0.5
    )
    assert restarted["last_exit"].startswith("memory: ") and "over max_memory 40.0 MiB" in restarted["last_exit"]
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
    assert "warning: memory" in (state_dir / "logs" / "hog.log").read_text()


def test_sizes_parse_with_units_and_percentages():
    assert memory.parse_size("24GiB") == 24 * 2**30
    assert memory.parse_size("512 MB") == 512_000_000
    assert memory.parse_size(1024) == 1024
    assert memory.parse_size("50%", total=1000) == 500
    for bad in ("lots", "0", "-1GB", "150%", True):
        with pytest.raises(ValueError):
            memory.parse_size(bad, total=1000)


# -- macOS: proc_pid_rusage and sysctl cannot run on Linux; a fake libSystem returns values
# recorded on an M2 Mac (a llama-server with Metal buffers: footprint 5.1 GiB, resident 1.2 GiB).

RECORDED_FOOTPRINT = 5_476_083_712
RECORDED_RESIDENT = 1_288_490_188


class FakeLibSystem:
    def __init__(self, wired_limit_mb: int = 0) -> None:
        self.wired_limit_mb = wired_limit_mb
        self.calls: list[tuple[int, int]] = []

    def proc_pid_rusage(self, pid: int, flavor: int, buffer) -> int:
        self.calls.append((pid, flavor))
        raw = bytearray(160)
        raw[64:72] = RECORDED_RESIDENT.to_bytes(8, "little")
        raw[72:80] = RECORDED_FOOTPRINT.to_bytes(8, "little")
        ctypes.memmove(buffer, bytes(raw), 160)
        return 0

    def sysctlbyname(self, name: bytes, value, size, new, new_size) -> int:
        assert name == b"iogpu.wired_limit_mb"
        ctypes.cast(value, ctypes.POINTER(ctypes.c_int64)).contents.value = self.wired_limit_mb
        return 0


def test_macos_footprint_reads_rusage_info_v2():
    lib = FakeLibSystem()
    assert memory.macos_footprint(4242, lib=lib) == RECORDED_FOOTPRINT
    assert lib.calls == [(4242, memory.RUSAGE_INFO_V2)]


def test_macos_wired_limit_and_default_budget(monkeypatch):
    assert memory.macos_wired_limit(lib=FakeLibSystem(wired_limit_mb=0)) is None  # 0: the macOS default
    assert memory.macos_wired_limit(lib=FakeLibSystem(wired_limit_mb=100_000)) == 100_000 * 2**20
    monkeypatch.setattr(memory, "IS_MACOS", True)
    monkeypatch.setattr(memory, "macos_wired_limit", lambda lib=None: None)
    assert memory.default_budget() == int(memory.total_memory() * 0.75)


def test_sample_tree_on_macos_uses_the_footprint(monkeypatch):
    monkeypatch.setattr(memory, "IS_LINUX", False)
    monkeypatch.setattr(memory, "IS_MACOS", True)
    monkeypatch.setattr(memory, "_libproc", lambda: FakeLibSystem())
    sample = memory.sample_tree(ProcessHandle.of(os.getpid()), {})
    assert sample.kind == "footprint" and sample.value == RECORDED_FOOTPRINT
    assert sample.pss is None and sample.rss > 0


# -- NVML without a GPU: a fake pynvml module shaped like nvidia-ml-py's.


def fake_nvml(processes_by_device: list[list[tuple[int, int | None]]], v3: bool = True):
    class FunctionNotFound(Exception):
        pass

    def processes(kind):
        def call(device):
            if kind == "v3" and not v3:
                raise FunctionNotFound
            return [types.SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in processes_by_device[device]]

        return call

    return types.SimpleNamespace(
        NVMLError_FunctionNotFound=FunctionNotFound,
        nvmlDeviceGetCount=lambda: len(processes_by_device),
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetComputeRunningProcesses=processes("v3"),
        nvmlDeviceGetComputeRunningProcesses_v2=processes("v2"),
    )


@pytest.mark.parametrize("v3", [True, False])
def test_gpu_memory_sums_over_devices_and_skips_unknown_figures(v3):
    nvml = fake_nvml([[(10, 1000), (11, None)], [(10, 500), (12, 7)]], v3=v3)
    assert memory.GpuMemory(nvml).by_pid() == {10: 1500, 12: 7}


def test_gpu_memory_of_a_tree_adds_its_children():
    me = ProcessHandle.of(os.getpid())
    sample = memory.sample_tree(me, {}, gpu_by_pid={os.getpid(): 123, 999999: 5})
    assert sample.gpu == 123


def test_no_nvml_means_no_gpu_figure():
    gpu = memory.GpuMemory()
    gpu._nvml._tried, gpu._nvml.library = True, None  # as after a failed load: no library, no driver
    assert gpu.by_pid() is None


def test_gguf_header_reader_agrees_with_the_gguf_package(big_gguf_model, gguf_model):
    """llmctl reads GGUF headers with the standard library (the supervisor stays free of numpy);
    the gguf package is the reference."""
    import gguf

    from llmctl.memory.gguf import read_gguf

    for path in (big_gguf_model, gguf_model):
        reference = gguf.GGUFReader(str(path))
        info = read_gguf(path)
        assert info.tensor_bytes == sum(int(tensor.n_bytes) for tensor in reference.tensors)
        assert info.arch_value("block_count") == int(reference.fields["llama.block_count"].parts[-1][0])
        assert info.metadata["tokenizer.ggml.tokens"] == len(reference.fields["tokenizer.ggml.tokens"].data)
