"""`llmctl check` lists every problem of a file in one run, each with file:line (issue 19): schema
errors, duplicate names and aliases, missing model files, ports used twice (by two instances, or by
an instance and the gateway), unset variables. Exit 2 when there is any problem."""

from __future__ import annotations

import json

import pytest

from llmctl.config.load import parse_config
from llmctl.errors import ConfigError

from .helpers import llmctl, write_config

# Line numbers matter: each expected problem below names the line it is on.
EVERY_KIND = """\
gateway: {{port: 9100}}
instances:
  - name: a
    backend: llama.cpp
    model: missing-a.gguf
    port: 9101
  - name: a
    backend: llama.cpp
    model: {gguf}
    port: 9101
  - name: c
    backend: llama.cpp
    model: missing-c.gguf
    port: 9100
    prot: 3
  - name: d
    backend: vllm
    model: x
    port: 70000
  - name: e
    backend: llama.cpp
    model: {gguf}
    port: 9105
    aliases: [a, chat, chat]
"""


def expected(path) -> list[str]:
    return [
        f"{path}:15: instance 'c', prot: unknown key 'prot'",
        f"{path}:17: instance 'd', backend: unknown backend 'vllm'",
        f"{path}:19: instance 'd', port: must be between 1024 and 65535 (got 70000)",
        f"{path}:7: instance 'a', name: duplicate name 'a'",
        f"{path}:10: instance 'a', port: port 9101 is already used by instance 'a'",
        f"{path}:14: instance 'c', port: port 9100 is already used by the gateway",
        f"{path}:24: instance 'e', aliases.0: 'a' already names instance 'a'",
        f"{path}:24: instance 'e', aliases.2: 'chat' already names instance 'e'",
        f"{path}:5: instance 'a', model: GGUF file not found:",
        f"{path}:13: instance 'c', model: GGUF file not found:",  # beside its misspelt key
    ]


def test_check_lists_every_problem_of_every_kind_with_file_and_line(tmp_path, gguf_model):
    path = write_config(tmp_path, EVERY_KIND.format(gguf=gguf_model))
    result = llmctl("check", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert all(line.startswith("llmctl: error: ") for line in lines), lines
    for wanted in expected(path):
        assert any(line.removeprefix("llmctl: error: ").startswith(wanted) for line in lines), (wanted, lines)
    assert len(lines) == len(expected(path))  # each problem once, nothing else


def test_clashes_are_all_reported_when_the_rest_is_valid(tmp_path, gguf_model):
    """No schema error at all: the clashes used to stop at the first one."""
    text = f"""\
gateway: {{port: 9200}}
instances:
  - {{name: x, backend: llama.cpp, model: {gguf_model}, port: 9200}}
  - {{name: y, backend: llama.cpp, model: {gguf_model}, port: 9201, aliases: [x]}}
  - {{name: y, backend: llama.cpp, model: {gguf_model}, port: 9201}}
  - {{name: z, backend: external, kind: llama.cpp, url: "http://127.0.0.1:9201"}}
"""
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, path)
    assert caught.value.problems == [
        f"{path}:5: instance 'y', name: duplicate name 'y'",
        f"{path}:3: instance 'x', port: port 9200 is already used by the gateway",
        f"{path}:5: instance 'y', port: port 9201 is already used by instance 'y'",
        f"{path}:6: instance 'z': port 9201 is already used by instance 'y'",  # an external server's, from its url
        f"{path}:4: instance 'y', aliases.0: 'x' already names instance 'x'",
    ]
    assert "(and 4 more problems: `llmctl check` lists them)" in str(caught.value)


def test_an_unset_variable_is_one_problem_among_the_others(tmp_path, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    text = """\
instances:
  - name: a
    backend: llama.cpp
    model: ${NOT_SET_ANYWHERE}
    port: 9301
  - name: b
    backend: llama.cpp
    model: also-missing.gguf
    port: ${NOT_SET_ANYWHERE}
  - name: c
    backend: mlx
    model: org/m
    port: 9303
    colour: red
"""
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, path)
    problems = caught.value.problems
    assert problems[:2] == [
        f"{path}:4: instance 'a', model: environment variable ${{NOT_SET_ANYWHERE}} is not set"
        " (or write ${NOT_SET_ANYWHERE:-default})",
        f"{path}:9: instance 'b', port: environment variable ${{NOT_SET_ANYWHERE}} is not set"
        " (or write ${NOT_SET_ANYWHERE:-default})",
    ]
    assert any(line.startswith(f"{path}:14: instance 'c', colour: unknown key") for line in problems), problems
    assert not [line for line in problems[2:] if f"{path}:4:" in line or f"{path}:9:" in line]  # nothing follows on


def test_check_json_lists_the_same_problems_and_exits_2(tmp_path, gguf_model):
    path = write_config(tmp_path, EVERY_KIND.format(gguf=gguf_model))
    result = llmctl("check", "--json", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr == ""
    document = json.loads(result.stdout)
    assert document["ok"] is False and document["path"] == str(path)
    found = [(problem["file"], problem["line"], problem["message"]) for problem in document["problems"]]
    assert len(found) == len(expected(path))
    for wanted in expected(path):
        assert any(f"{file}:{line}: {message}".startswith(wanted) for file, line, message in found), wanted


def test_check_json_on_a_good_file_is_ok(tmp_path, gguf_model):
    path = write_config(tmp_path, f"instances:\n  - {{name: a, backend: llama.cpp, model: {gguf_model}, port: 9401}}\n")
    result = llmctl("check", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "ok": True,
        "path": str(path),
        "instances": ["a"],
        "problems": [],
        "warnings": [],
    }


def test_check_json_on_a_file_that_cannot_be_read_still_answers_in_json(tmp_path):
    result = llmctl("check", "--json", "-f", str(tmp_path / "nowhere.yaml"))
    assert result.returncode == 2
    document = json.loads(result.stdout)
    assert document["ok"] is False and document["problems"][0]["line"] is None
    assert "config file not found" in document["problems"][0]["message"]


def test_a_duplicate_key_is_one_problem_among_the_others(tmp_path):
    text = """gateway: {port: 18080}
instances:
  - name: a
    backend: command
    command: ["x"]
    port: 18081
    port: 18082
  - name: b
    backend: command
    command: ["x"]
    port: 18081
    bogus: 2
"""
    path = tmp_path / "instances.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        parse_config(text, path)
    problems = error.value.problems
    assert f"{path}:7: duplicate key 'port' (first on line 6)" in problems
    assert any(line.startswith(f"{path}:12:") and "bogus" in line for line in problems)
    assert any(line.startswith(f"{path}:11:") and "18081" in line for line in problems)  # the first port is kept
