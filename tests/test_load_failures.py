"""A model that cannot load fails its start within seconds, in the server's own words, on the real
servers: mlx_lm.server keeps running with a dead generation thread (its /health says 503), and
llama-server exits saying why."""

from __future__ import annotations

import shutil

from .helpers import by_name, free_port, llmctl, status_json, write_config


def test_mlx_with_corrupt_weights_fails_at_once_with_its_error(tmp_path, state_dir, mlx_model):
    broken = tmp_path / "broken-mlx"
    shutil.copytree(mlx_model, broken)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"\x07" * 100)
    write_config(
        tmp_path,
        f"instances:\n  - name: bad\n    backend: mlx\n    model: {broken}\n    port: {free_port()}\n"
        "    restart: {policy: on-failure, backoff: 30}\n",
    )
    result = llmctl("up", cwd=tmp_path, timeout=120)  # a hang guard below start_timeout (300 s by default)
    assert result.returncode == 1
    assert "failed to load" in result.stderr and "load_safetensors" in result.stderr, result.stderr
    instance = by_name(status_json(cwd=tmp_path))["bad"]
    assert "load_safetensors" in instance["last_error"]


def test_readiness_is_polled_at_a_growing_interval_so_a_long_load_keeps_its_log_readable():
    """How many probes a load costs follows from the schedule alone (no clock): a minute of loading
    costs about two a second, not the hundred a second of the first interval. (The real-server test
    above used to count the probes in its log, a figure that depends on how busy the machine was.)"""
    from itertools import accumulate, islice, pairwise

    from llmctl.backends.base import READY_POLL_FIRST, READY_POLL_MAX, poll_delays

    delays = list(islice(poll_delays(), 1000))
    assert delays[0] == READY_POLL_FIRST and max(delays) == READY_POLL_MAX
    assert all(a <= b for a, b in pairwise(delays))  # never shrinks
    probes_in_a_minute = sum(1 for waited in accumulate(delays) if waited <= 60)
    assert probes_in_a_minute <= 150  # 20 a second throughout would be 1200 lines of "GET /health"


def test_llama_server_with_a_broken_gguf_fails_with_its_error(tmp_path, state_dir, gguf_model, llama_server):
    broken = tmp_path / "broken.gguf"
    data = gguf_model.read_bytes()
    broken.write_bytes(data[: len(data) // 3])  # a valid header, tensors cut short
    write_config(
        tmp_path,
        f"instances:\n  - name: bad\n    backend: llama.cpp\n    model: {broken}\n    port: {free_port()}\n"
        "    restart: {policy: on-failure, backoff: 30}\n",
    )
    result = llmctl("up", cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    assert "while starting" in result.stderr
    assert "model" in by_name(status_json(cwd=tmp_path))["bad"]["last_error"]
