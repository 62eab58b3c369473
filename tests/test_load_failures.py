"""A model that cannot load fails its start within seconds, in the server's own words, on the real
servers: mlx_lm.server keeps running with a dead generation thread (its /health says 503), and
llama-server exits saying why."""

from __future__ import annotations

import shutil
import time

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
    started = time.monotonic()
    result = llmctl("up", cwd=tmp_path, timeout=120)
    took = time.monotonic() - started
    assert result.returncode == 1
    assert took < 30  # not start_timeout (300 s by default)
    assert "failed to load" in result.stderr and "load_safetensors" in result.stderr, result.stderr
    instance = by_name(status_json(cwd=tmp_path))["bad"]
    assert "load_safetensors" in instance["last_error"]
    log = (state_dir / "logs" / "bad.log").read_text()
    assert log.count("GET /health") < 40  # polled at a growing interval: the log stays readable


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
