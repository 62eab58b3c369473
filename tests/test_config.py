"""Config validation: every mistake is one clear line naming file, line, instance and field."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmctl.config.load import load_config, parse_config
from llmctl.errors import ConfigError

from .helpers import llmctl, write_config


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 64)
    return model


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, tmp_path / "instances.yaml")
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_valid_config_with_defaults_and_variables(tmp_path, gguf, monkeypatch):
    monkeypatch.setenv("CHAT_PORT", "8181")
    config = parse_config(
        f"""
defaults:
  restart: {{policy: always}}
  env: {{SHARED: "1"}}
instances:
  - name: chat
    backend: llama.cpp
    model: {gguf.name}
    port: ${{CHAT_PORT}}
    env: {{OWN: 2}}
  - name: code
    backend: command
    command: python3 -m http.server ${{CODE_PORT:-8182}}
    port: 8182
    restart: no
""",
        tmp_path / "instances.yaml",
    )
    chat, code = config.instances
    assert chat.port == 8181 and chat.host == "127.0.0.1"
    assert chat.restart.policy == "always"
    assert chat.env == {"SHARED": "1", "OWN": "2"}
    assert chat.workdir == str(tmp_path)
    assert code.command == ("python3", "-m", "http.server", "8182")
    assert code.restart.policy == "no"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "  - name: a\n    backend: llama.cpp\n    model: M\n    port: 70000\n",
            ":5: instance 'a', port: must be between 1024 and 65535",
        ),
        ("  - name: a\n    backend: llama.cpp\n    model: M\n    port: abc\n", ":5: instance 'a', port:"),
        ("  - name: a\n    backend: llama.cpp\n    model: M\n    port: 0\n", "port: must be between 1024 and 65535"),
        (
            "  - name: a\n    backend: llama.cpp\n    model: M\n    port: 8080\n    prot: 1\n",
            ":6: instance 'a', prot: unknown key 'prot'",
        ),
        (
            "  - name: a\n    backend: vllm\n    model: M\n    port: 8080\n",
            ":3: instance 'a', backend: unknown backend 'vllm'",
        ),
        (
            "  - name: ../etc\n    backend: llama.cpp\n    model: M\n    port: 8080\n",
            ":2: instance '../etc', name: '../etc' is not a plain name",
        ),
        ("  - name: a/b\n    backend: llama.cpp\n    model: M\n    port: 8080\n", "is not a plain name"),
        (
            "  - name: a\n    backend: llama.cpp\n    model: missing.gguf\n    port: 8080\n",
            ":4: instance 'a', model: GGUF file not found",
        ),
        ("  - name: a\n    backend: llama.cpp\n    port: 8080\n", "instance 'a': backend 'llama.cpp' needs `model:`"),
        ("  - name: a\n    backend: llama.cpp\n    model: M\n", "missing required key 'port'"),
        ("  - name: a\n    backend: command\n    port: 8080\n", "backend 'command' needs `command:`"),
        (
            "  - name: a\n    backend: llama.cpp\n    model: M\n    port: 8080\n    args: -c 4096\n",
            "args: must be a list of strings",
        ),
        (
            "  - name: a\n    backend: llama.cpp\n    model: M\n    port: 8080\n    restart: {policy: sometimes}\n",
            "restart.policy: Input should be 'no', 'on-failure' or 'always'",
        ),
        (
            "  - name: a\n    backend: llama.cpp\n    model: M\n    port: 8080\n    health: {start_timeout: -1}\n",
            "health.start_timeout:",
        ),
        (
            "  - name: a\n    backend: llama.cpp\n    model: M\n    port: ${NOT_SET_ANYWHERE}\n",
            ":5: instance 'a', port: environment variable ${NOT_SET_ANYWHERE} is not set",
        ),
        (
            "  - name: a\n    backend: llama.cpp\n    model: M\n    port: 8080\n  - name: a\n    backend: llama.cpp\n    model: M\n    port: 8081\n",
            ":6: instance 'a', name: duplicate name 'a'",
        ),
        (
            "  - name: a\n    backend: llama.cpp\n    model: M\n    port: 8080\n  - name: b\n    backend: llama.cpp\n    model: M\n    port: 8080\n",
            ":9: instance 'b', port: port 8080 is already used by instance 'a'",
        ),
        ("  - name: a\n    name: b\n", ":3: duplicate key 'name' (first on line 2)"),
        ("  - name: a\n\tbackend: x\n", "tabs"),
        ("  - [unclosed\n", "instances.yaml:"),
    ],
)
def test_bad_config_gives_one_located_line(tmp_path, gguf, body, expected):
    message = config_error(tmp_path, "instances:\n" + body.replace("model: M", f"model: {gguf.name}"))
    assert expected in message
    assert str(tmp_path / "instances.yaml") in message


def test_top_level_mistakes(tmp_path):
    assert "is empty" in config_error(tmp_path, "")
    assert "top level must be a mapping" in config_error(tmp_path, "- a\n- b\n")
    assert "instances: Input should be a valid list" in config_error(tmp_path, "instances: 3\n")
    assert "unknown key 'instanses'" in config_error(tmp_path, "instanses: []\n")
    # Found by hypothesis: a key holding a newline must not break the one-line error.
    assert "defaults.\\n: unknown key" in config_error(tmp_path, 'defaults: {"\\n": 1}\ninstances: []\n')


def test_missing_config_file_names_the_ways_to_give_one(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found .*-f/--file"):
        load_config(tmp_path / "nope.yaml")


def test_mlx_model_may_be_a_hub_id_or_must_exist_locally(tmp_path):
    base = "instances:\n  - name: a\n    backend: mlx\n    port: 8080\n    model: "
    assert parse_config(base + "mlx-community/Qwen2.5-3B-Instruct-4bit\n", tmp_path / "i.yaml").instances[0].model
    assert "MLX model folder not found" in config_error(tmp_path, base + "./nowhere\n")


def test_cli_reports_config_errors_with_exit_2_and_no_traceback(tmp_path):
    write_config(tmp_path, "instances:\n  - name: a\n    backend: llama.cpp\n    model: x.gguf\n    port: 99999\n")
    for command in (["up"], ["status"], ["check"], ["restart", "a"], ["logs", "a"]):
        result = llmctl(*command, cwd=tmp_path)
        assert result.returncode == 2, (command, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith("llmctl: error: ") and result.stderr.count("\n") == 1, result.stderr


def test_config_found_by_flag_before_or_after_command_then_env(tmp_path, gguf, monkeypatch):
    other = tmp_path / "elsewhere.yaml"
    other.write_text(f"instances:\n  - name: z\n    backend: llama.cpp\n    model: {gguf}\n    port: 8089\n")
    for args in (["-f", str(other), "check"], ["check", "-f", str(other)], ["--file", str(other), "check"]):
        result = llmctl(*args, cwd=tmp_path)
        assert result.returncode == 0 and "1 instance: z" in result.stdout, result.stderr
    result = llmctl("check", cwd=tmp_path, env={"LLMCTL_CONFIG": str(other)})
    assert result.returncode == 0 and "z" in result.stdout


YAML_SCALARS = st.one_of(
    st.integers(-5, 70000), st.text(max_size=12), st.booleans(), st.none(), st.floats(allow_nan=False)
)
FIELDS = st.sampled_from(
    ["name", "backend", "model", "port", "host", "args", "env", "command", "health", "restart", "stop_timeout", "bogus"]
)
VALUES = st.recursive(
    YAML_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    instances=st.lists(st.dictionaries(FIELDS, VALUES, max_size=6), max_size=3),
    top=st.dictionaries(st.sampled_from(["instances", "defaults", "binaries", "x"]), VALUES, max_size=2),
)
def test_generated_configs_never_raise_anything_but_a_config_error(tmp_path, instances, top):
    import yaml

    text = yaml.safe_dump({**top, "instances": instances})
    try:
        parse_config(text, tmp_path / "instances.yaml")
    except ConfigError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_arbitrary_text_never_raises_anything_but_a_config_error(tmp_path, text):
    try:
        parse_config(text, tmp_path / "instances.yaml")
    except ConfigError as exc:
        assert "\n" not in str(exc)


def test_version_and_help_answer_without_a_config(tmp_path):
    version = llmctl("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("llmctl ")
    assert llmctl("--help", cwd=tmp_path).returncode == 0
    assert llmctl("no-such-command", cwd=tmp_path).returncode == 2


def test_check_lists_every_problem_at_once(tmp_path):
    """Schema problems and a missing model of another instance, all in one `check` (not the first and a count)."""
    (tmp_path / "instances.yaml").write_text(
        "instances:\n"
        "  - name: a\n    backend: llama.cpp\n    model: nowhere.gguf\n    port: 8100\n"
        "  - name: b\n    backend: llama.cpp\n    model: x.gguf\n    port: 80\n"
        "  - name: c\n    backend: mlx\n    model: org/m\n    port: 8102\n    colour: red\n"
    )
    result = llmctl("check", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 3 and all(line.startswith("llmctl: error: ") for line in lines)
    assert any("colour" in line for line in lines) and any("port" in line and "80" in line for line in lines)
    assert any("nowhere.gguf" in line for line in lines)
    up = llmctl("up", cwd=tmp_path)  # other commands: one line, the first problem and how many more
    assert up.returncode == 2 and up.stderr.count("\n") == 1 and "2 more problems" in up.stderr
