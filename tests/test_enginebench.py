"""`llmctl bench` (issue 21): one workload through the gateway against the same real model on llama.cpp and MLX,
token counts as the upstream reports them, a PNG chart, a failing instance that leaves the others benched, and
bad input answered with one line.

The model is the `real_model` fixture of tests/conftest.py (scripts/fetch_model.py, skipped without a network);
the servers are real. Nothing here asserts a duration: only shapes, counts and which fields are measured."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from llmctl.beyond.enginebench import chat_body
from llmctl.cli.benchcmd import parse_levels

from .helpers import command_instance, free_port, llmctl, write_config

ROW_KEYS = {
    "instance",
    "backend",
    "model",
    "error",
    "cold_start_s",
    "ttft_ms",
    "prompt_tokens",
    "completion_tokens",
    "prompt_tokens_per_s",
    "completion_tokens_per_s",
    "rates_from",
    "concurrency",
    "peak_memory_bytes",
    "prompt_words",
    "runs",
}
RUN_KEYS = {
    "nonce",
    "ttft_ms",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "prompt_tokens_per_s",
    "completion_tokens_per_s",
    "finish_reason",
}
SMALL = ("--prompt-tokens", "32", "--max-tokens", "8", "--runs", "1", "--concurrency", "1,2")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def upstream_usage(port: int, backend: str, row: dict, run: dict, max_tokens: int) -> dict:
    """The same request as the bench's run, sent straight to the instance (not through the gateway, not streamed):
    the usage the upstream itself reports for it. No `model`: mlx_lm.server would take it for a repository."""
    body = chat_body(backend, row["prompt_words"], run["nonce"], max_tokens, stream=False)
    answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    return answer.json()["usage"]


def assert_png(path: Path) -> None:
    """A PNG whose chunks all check (signature, IHDR first with a real size, CRCs, IEND last)."""
    import struct
    import zlib

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    offset, kinds = 8, []
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        content = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + content) == crc, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            width, height = struct.unpack(">II", content[:8])
            assert width > 100 and height > 100
        kinds.append(kind)
        offset += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds


@pytest.mark.timeout(400)
def test_bench_compares_one_real_model_on_llama_cpp_and_mlx(tmp_path, real_model, llama_server):
    gguf, mlx = real_model
    gateway, chat_port, mlx_port, broken_port = free_port(), free_port(), free_port(), free_port()
    write_config(
        tmp_path,
        f"""gateway: {{port: {gateway}}}
instances:
  - name: chat
    backend: llama.cpp
    model: {gguf}
    port: {chat_port}
    args: ["-c", "1024", "-np", "2", "-ngl", "0"]
    on_demand: true
  - name: mlx-chat
    backend: mlx
    model: {mlx}
    port: {mlx_port}
"""
        + command_instance("broken", broken_port),  # streams events with no text and no usage
    )
    up = llmctl("up", cwd=tmp_path)
    assert up.returncode == 0, up.stdout + up.stderr

    chart = tmp_path / "engines.png"
    result = llmctl("bench", "--json", *SMALL, "--chart", str(chart), cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert document["version"] == 1
    assert document["gateway"] == f"http://127.0.0.1:{gateway}"
    assert document["workload"] == {"prompt_tokens": 32, "max_tokens": 8, "concurrency": [1, 2], "runs": 1}
    assert {"system", "machine", "cpu", "cpus", "memory_bytes"} <= set(document["machine"])
    rows = {row["instance"]: row for row in document["results"]}
    assert list(rows) == ["chat", "mlx-chat"]  # by default the engines only: not the `command` instance
    assert {row["backend"] for row in rows.values()} == {"llama.cpp", "mlx"}
    for name, port in (("chat", chat_port), ("mlx-chat", mlx_port)):
        row = rows[name]
        assert set(row) == ROW_KEYS and row["error"] is None, row
        assert len(row["runs"]) == 1 and set(row["runs"][0]) == RUN_KEYS
        usage = upstream_usage(port, row["backend"], row, row["runs"][0], 8)
        assert row["prompt_tokens"] == row["runs"][0]["prompt_tokens"] == usage["prompt_tokens"]
        assert row["completion_tokens"] == row["runs"][0]["completion_tokens"] == usage["completion_tokens"]
        for key in ("ttft_ms", "prompt_tokens_per_s", "completion_tokens_per_s"):
            assert isinstance(row[key], float), (name, key, row[key])
        assert set(row["concurrency"]) == {"1", "2"}
        for level in row["concurrency"].values():
            assert isinstance(level["completion_tokens_per_s"], float) and len(level["runs"]) == 1
        assert isinstance(row["peak_memory_bytes"]["ram"], int) and row["peak_memory_bytes"]["ram"] > 0
    assert rows["chat"]["completion_tokens"] == 8  # llama-server honours ignore_eos: exactly max_tokens
    assert rows["chat"]["rates_from"] == "timings" and rows["mlx-chat"]["rates_from"] == "clock"
    assert isinstance(rows["chat"]["cold_start_s"], float)  # on demand and in standby: its start was measured
    assert rows["mlx-chat"]["cold_start_s"] is None  # running already: not stopped to measure one
    assert_png(chart)

    # One instance failing mid-bench: its row says why, the next one is still benched, the exit code is 1.
    mixed = llmctl("bench", "broken", "chat", "--json", *SMALL, cwd=tmp_path, timeout=120)
    assert mixed.returncode == 1, mixed.stdout + mixed.stderr
    rows = {row["instance"]: row for row in json.loads(mixed.stdout)["results"]}
    assert "no usage" in rows["broken"]["error"] and rows["broken"]["completion_tokens"] is None
    assert rows["chat"]["error"] is None and rows["chat"]["completion_tokens"] == 8
    assert rows["chat"]["cold_start_s"] is None  # running since the first bench
    assert mixed.stderr.strip() == f"llmctl: broken: {rows['broken']['error']}"

    # The table off a terminal: a header, a row per instance, the workload line.
    table = llmctl("bench", "chat", *SMALL, cwd=tmp_path, timeout=120)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["INSTANCE", "BACKEND"] and "2 AT ONCE TOK/S" in lines[0]
    assert lines[1].split()[:2] == ["chat", "llama.cpp"]
    assert re.search(r"counted: chat \d+\+8\)$", lines[2]), lines[2]

    unknown = llmctl("bench", "chat", "nope", cwd=tmp_path)
    assert unknown.returncode == 2
    assert unknown.stderr == "llmctl: error: unknown instance 'nope' (known: broken, chat, mlx-chat)\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--concurrency", "1,x"],
            "--concurrency '1,x': give whole numbers from 1 to 1024 separated by commas, like 1,4",
        ),
        (["--concurrency", "0"], "--concurrency '0': give whole numbers from 1 to 1024 separated by commas, like 1,4"),
        (["--concurrency", "²"], "--concurrency '²': give whole numbers from 1 to 1024 separated by commas, like 1,4"),
        (
            ["--concurrency", "1,1025"],
            "--concurrency '1,1025': give whole numbers from 1 to 1024 separated by commas, like 1,4",
        ),
        (["--runs", "0"], "--runs 0: give a whole number of at least 1"),
        (["--prompt-tokens", "-3"], "--prompt-tokens -3: give a whole number of at least 1"),
        (["--max-tokens", "0"], "--max-tokens 0: give a whole number of at least 1"),
        (["--chart", "/no/such/folder/x.png"], "--chart /no/such/folder/x.png: no folder /no/such/folder"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(tmp_path, args, message):
    result = llmctl("bench", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"llmctl: error: {message}\n"
    assert result.stdout == ""


def test_no_supervisor_is_one_line_and_exit_3(tmp_path):
    write_config(tmp_path, f"gateway: {{port: {free_port()}}}\n" + "instances:" + command_instance("a", free_port()))
    result = llmctl("bench", cwd=tmp_path)
    assert result.returncode == 3
    assert result.stderr.startswith("llmctl: error: no supervisor is running for ")
    assert result.stderr.count("\n") == 1
    as_json = llmctl("bench", "--json", cwd=tmp_path)
    assert as_json.returncode == 3 and json.loads(as_json.stdout)["error"]["kind"] == "supervisor"


def test_a_chart_without_matplotlib_says_how_to_install_it(tmp_path):
    """Checked before anything runs: matplotlib made unimportable, as where the `bench` extra is not installed."""
    code = (
        "import sys; sys.modules['matplotlib'] = None; "
        "sys.argv = ['llmctl', 'bench', '--chart', 'x.png']; "
        "from llmctl.cli.app import run; run()"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == 'llmctl: error: --chart needs matplotlib: pip install -e ".[bench]"\n'
    assert not (tmp_path / "x.png").exists()


def test_concurrency_levels_parse_in_order_without_duplicates():
    assert parse_levels("1,4") == (1, 4)
    assert parse_levels(" 4, 1,4 ") == (4, 1)
    assert parse_levels("8") == (8,)


def test_only_llama_server_is_asked_to_ignore_eos():
    """llama-server reads ignore_eos; mlx_lm.server and Ollama's /v1 do not, and are not sent it."""
    assert chat_body("llama.cpp", 3, 1, 8, model="chat")["ignore_eos"] is True
    for backend in ("mlx", "ollama"):
        body = chat_body(backend, 3, 1, 8, model="m")
        assert "ignore_eos" not in body
        assert body["stream_options"] == {"include_usage": True} and body["temperature"] == 0
    assert "model" not in chat_body("mlx", 3, 1, 8) and "stream_options" not in chat_body("mlx", 3, 1, 8, stream=False)
    first, second = (chat_body("mlx", 5, nonce, 8)["messages"][0]["content"] for nonce in (1, 2))
    assert first != second and first.split(".", 1)[1] == second.split(".", 1)[1]  # only the nonce differs
