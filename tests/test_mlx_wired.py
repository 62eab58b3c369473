"""MLX wired-limit shares (issue 18): the arithmetic, the launcher that applies a share inside
mlx_lm.server's Python, the adapter's command, the config key and doctor's warning.

There is no Mac here: the launcher runs against stub `mlx.core`/`mlx_lm` packages that record every
`set_wired_limit` call and report a recorded recommended working set, doctor against a recorded
`iogpu.wired_limit_mb`; and once against the real mlx_lm.server on Linux, where there is no Metal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from llmctl.backends import backend_for, backend_names
from llmctl.backends import mlx_launch as launch
from llmctl.backends.mlx import LAUNCHER, script_python
from llmctl.config.load import parse_config
from llmctl.errors import StartError
from llmctl.memory.wired import ENV_VAR, share_env, shares_on, shares_problem, system_limit, wired_shares
from llmctl.spec import Config, InstanceSpec

from .helpers import by_name, free_port, llmctl, status_json, write_config

GIB = 1 << 30
MIB = 1 << 20

# -- the arithmetic ---------------------------------------------------------------------------


def test_needs_that_fit_get_their_need_and_a_proportional_part_of_what_is_spare():
    shares = wired_shares({"a": 10 * GIB, "b": 30 * GIB}, 80 * GIB)
    assert shares == {"a": 20 * GIB, "b": 60 * GIB}


def test_needs_over_the_limit_are_scaled_down_and_never_add_up_to_more():
    needs = {"a": 40 * GIB, "b": 30 * GIB, "c": 7 * GIB + 3}
    limit = 48 * GIB
    shares = wired_shares(needs, limit)
    assert sum(shares.values()) <= limit
    assert shares["a"] == limit * needs["a"] // sum(needs.values())
    assert shares["a"] > shares["b"] > shares["c"] > 0


def test_one_instance_gets_the_whole_limit():
    assert wired_shares({"only": 5 * GIB}, 48 * GIB) == {"only": 48 * GIB}
    assert wired_shares({"only": 90 * GIB}, 48 * GIB) == {"only": 48 * GIB}


def test_an_unknown_need_counts_as_an_equal_part_and_every_share_is_a_real_cap():
    assert wired_shares({"a": 0, "b": 0}, 48 * GIB) == {"a": 24 * GIB, "b": 24 * GIB}
    shares = wired_shares({"known": 8 * GIB, "unknown": 0}, 48 * GIB)
    assert shares["unknown"] > 0 and sum(shares.values()) <= 48 * GIB
    assert wired_shares({}, 48 * GIB) == {}
    with pytest.raises(ValueError, match="positive"):
        wired_shares({"a": GIB}, 0)


def test_shares_problem_names_each_need_the_limit_and_the_fix():
    assert shares_problem({"a": 10 * GIB, "b": 0}, 48 * GIB) is None
    line = shares_problem({"chat": 40 * GIB, "code": 30 * GIB, "unknown": 0}, 48 * GIB)
    assert line is not None and "\n" not in line
    assert "70.0 GiB" in line and "chat ~40.0 GiB" in line and "code ~30.0 GiB" in line and "48.0 GiB" in line
    assert "unknown" not in line
    assert "fewer MLX models" in line and "sudo sysctl iogpu.wired_limit_mb=71680" in line


def test_share_env_and_when_shares_are_on():
    assert share_env(3 * GIB) == {ENV_VAR: str(3 * GIB)} and share_env(None) == {}
    assert ENV_VAR == launch.ENV_VAR  # the launcher cannot import llmctl: the two must agree
    assert shares_on(None, macos=True) and not shares_on(None, macos=False)
    assert shares_on(True, macos=False) and not shares_on(False, macos=True)
    assert system_limit(96 * GIB, 128 * GIB) == 96 * GIB
    assert system_limit(None, 128 * GIB) == 96 * GIB  # iogpu.wired_limit_mb=0: macOS's default


# -- the launcher, in process with fakes ------------------------------------------------------


def fake_mx(metal: bool, recommended: int | None, refuse: bool = False) -> SimpleNamespace:
    calls: list[int] = []

    def set_wired_limit(limit: int) -> int:
        if refuse:
            raise ValueError("[set_wired_limit] Setting a wired limit larger than the system limit")
        previous = calls[-1] if calls else 0
        calls.append(limit)
        return previous

    info = {"max_recommended_working_set_size": recommended} if recommended else {}
    return SimpleNamespace(
        metal=SimpleNamespace(is_available=lambda: metal),
        device_info=lambda: info,
        set_wired_limit=set_wired_limit,
        calls=calls,
    )


def test_apply_share_replaces_the_function_in_every_mlx_lm_module_that_holds_it():
    mx = fake_mx(metal=True, recommended=8 * GIB)

    def original() -> int:
        return mx.set_wired_limit(8 * GIB)

    utils = SimpleNamespace(maybe_set_recommended_wired_limit=original)
    server = SimpleNamespace(maybe_set_recommended_wired_limit=original)
    other = SimpleNamespace(maybe_set_recommended_wired_limit=original)  # not mlx_lm's: left alone
    modules = {"mlx_lm.utils": utils, "mlx_lm.server": server, "mlx_lm": SimpleNamespace(), "other": other}
    line = launch.apply_share(3 * GIB, mx, modules)
    assert mx.calls == [3 * GIB] and "3.00 GiB" in line
    assert utils.maybe_set_recommended_wired_limit is server.maybe_set_recommended_wired_limit is not original
    assert other.maybe_set_recommended_wired_limit is original
    assert server.maybe_set_recommended_wired_limit() == 3 * GIB  # returns the previous limit, as mlx_lm's does
    assert mx.calls == [3 * GIB, 3 * GIB]


@pytest.mark.parametrize(
    ("mx", "share", "said"),
    [
        (fake_mx(metal=False, recommended=None), 3 * GIB, "no Metal GPU here"),
        (fake_mx(metal=True, recommended=None), 3 * GIB, "cannot set a wired limit"),
        (fake_mx(metal=True, recommended=8 * GIB), 0, "no share given"),
        (fake_mx(metal=True, recommended=8 * GIB, refuse=True), 3 * GIB, "could not set the wired limit"),
        (SimpleNamespace(), 3 * GIB, "no Metal GPU here"),  # an mlx with none of the calls
    ],
)
def test_apply_share_leaves_the_server_alone_when_it_cannot_cap(mx, share, said):
    utils = SimpleNamespace(maybe_set_recommended_wired_limit=lambda: None)
    before = utils.maybe_set_recommended_wired_limit
    assert said in launch.apply_share(share, mx, {"mlx_lm.utils": utils})
    assert utils.maybe_set_recommended_wired_limit is before
    assert getattr(mx, "calls", []) == []


@pytest.mark.parametrize(
    ("value", "share"),
    [(None, 0), ("", 0), ("0", 0), ("-5", 0), ("lots", 0), (" 1073741824 ", GIB)],
)
def test_parse_share(value, share):
    assert launch.parse_share({} if value is None else {ENV_VAR: value})[0] == share


def test_the_launcher_is_no_backend_and_importing_it_does_nothing():
    assert "mlx_launch" not in backend_names()
    code = "import sys, llmctl.backends.mlx_launch as m; print(sorted(n for n in sys.modules if n.split('.')[0] in ('mlx', 'mlx_lm')), hasattr(m, 'BACKEND'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["[]", "False"] and result.stderr == ""


# -- the launcher, run as mlx_lm.server would be, against stub packages -----------------------

STUB_CORE = """
import json, os

_limit = 0


def _record(*event):
    with open(os.environ["STUB_RECORD"], "a") as out:
        out.write(json.dumps(event) + "\\n")


class metal:
    @staticmethod
    def is_available():
        return os.environ.get("STUB_METAL") == "1"


def device_info():
    if os.environ.get("STUB_METAL") != "1":
        return {"architecture": "x86_64"}
    return {"max_recommended_working_set_size": int(os.environ["STUB_RECOMMENDED"])}


def set_wired_limit(limit):
    global _limit
    previous, _limit = _limit, limit
    _record("set_wired_limit", limit)
    return previous
"""
STUB_UTILS = """
import mlx.core as mx


def maybe_set_recommended_wired_limit():  # as mlx_lm 0.32's
    max_rec_size = mx.device_info().get("max_recommended_working_set_size")
    if max_rec_size is None:
        return None
    return mx.set_wired_limit(max_rec_size)
"""
STUB_GENERATE = """
import mlx.core as mx
from mlx_lm.utils import maybe_set_recommended_wired_limit


def generate_once():  # as mlx_lm.generate.wired_limit: raise, generate, restore
    old_limit = maybe_set_recommended_wired_limit()
    if old_limit is not None:
        mx.set_wired_limit(old_limit)
"""
STUB_SERVER = """
import sys
import mlx.core as mx
from mlx_lm.generate import generate_once
from mlx_lm.utils import maybe_set_recommended_wired_limit


def main():
    _ = maybe_set_recommended_wired_limit()
    mx._record("main", sys.argv)
    generate_once()
"""


@pytest.fixture
def stubs(tmp_path) -> Path:
    root = tmp_path / "stubs"
    for name, text in {
        "mlx/__init__.py": "",
        "mlx/core.py": STUB_CORE,
        "mlx_lm/__init__.py": "",
        "mlx_lm/utils.py": STUB_UTILS,
        "mlx_lm/generate.py": STUB_GENERATE,
        "mlx_lm/server.py": STUB_SERVER,
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


def run_launcher(stubs: Path, *args: str, metal: bool, share: str | None, recommended: int = 8 * GIB):
    record = stubs / "record.jsonl"
    record.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(stubs), "STUB_RECORD": str(record), "STUB_RECOMMENDED": str(recommended)}
    env["STUB_METAL"] = "1" if metal else "0"
    env.pop(ENV_VAR, None)
    if share is not None:
        env[ENV_VAR] = share
    done = subprocess.run([sys.executable, str(LAUNCHER), *args], env=env, capture_output=True, text=True, timeout=60)
    events = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return done, [value for kind, value in events if kind == "set_wired_limit"], [v for k, v in events if k == "main"]


def test_the_launcher_caps_at_the_share_at_start_and_inside_mlx_lm(stubs):
    done, limits, mains = run_launcher(stubs, "--", "--model", "m", "--port", "8080", metal=True, share=str(3 * GIB))
    assert done.returncode == 0, done.stderr
    # Once by the launcher, once by the server's start, twice around the generation: never above the share.
    assert limits == [3 * GIB] * 4
    assert mains == [["mlx_lm.server", "--model", "m", "--port", "8080"]]
    assert f"[llmctl mlx_launch] wired limit set to {3 * GIB} bytes (3.00 GiB)" in done.stderr


def test_the_launcher_caps_at_the_recommended_size_when_the_share_is_larger(stubs):
    done, limits, _ = run_launcher(stubs, "--", metal=True, share=str(20 * GIB), recommended=8 * GIB)
    assert done.returncode == 0 and limits == [8 * GIB] * 4


@pytest.mark.parametrize(
    ("metal", "share", "said", "limits"),
    [
        (False, str(3 * GIB), "no Metal GPU here", []),  # Linux: nothing set, by anyone
        (True, None, "no share given", [8 * GIB, 8 * GIB, 8 * GIB]),  # mlx_lm's own behaviour
        (True, "0", "no share given", [8 * GIB, 8 * GIB, 8 * GIB]),
    ],
)
def test_the_launcher_runs_the_server_untouched_without_metal_or_a_share(stubs, metal, share, said, limits):
    done, set_limits, mains = run_launcher(stubs, "--", "--model", "m", metal=metal, share=share)
    assert done.returncode == 0, done.stderr
    assert set_limits == limits and mains == [["mlx_lm.server", "--model", "m"]]
    assert f"[llmctl mlx_launch] {said}" in done.stderr


def test_the_launcher_wants_its_separator(stubs):
    done, _, mains = run_launcher(stubs, "--model", "m", metal=True, share=None)
    assert done.returncode == 2 and "usage" in done.stderr and mains == []


# -- the adapter and the config ---------------------------------------------------------------


def mlx_spec(folder: Path, wired_shares: bool | None) -> InstanceSpec:
    data = {
        "name": "m", "backend": "mlx", "model": str(folder), "port": 9000, "host": "127.0.0.1", "args": ["--x"],
        "env": {}, "command": None, "stop_timeout": 10.0, "max_memory": None, "memory_grace": 30.0,
        "workdir": str(folder), "wired_shares": wired_shares,
        "health": {"path": None, "url": None, "interval": 5.0, "timeout": 5.0, "start_timeout": 120.0, "failure_threshold": 3},
        "restart": {"policy": "no", "backoff": 1.0, "max_backoff": 30.0, "max_starts": 5, "window": 60.0},
    }  # fmt: skip
    return InstanceSpec.from_dict(data)


def script(folder: Path, text: str) -> str:
    path = folder / "mlx_lm.server"
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def test_the_command_runs_the_launcher_under_the_scripts_python_when_shares_are_on(tmp_path, monkeypatch):
    from llmctl.memory import measure

    program = [script(tmp_path, "#!/opt/mlx/bin/python3.12\nfrom mlx_lm.server import main\n")]
    backend = backend_for("mlx")
    tail = ["--model", str(tmp_path), "--host", "127.0.0.1", "--port", "9000", "--x"]
    launched = ["/opt/mlx/bin/python3.12", str(LAUNCHER), "--", *tail]
    assert backend.command(mlx_spec(tmp_path, True), program) == launched
    assert backend.command(mlx_spec(tmp_path, False), program) == [*program, *tail]
    monkeypatch.setattr(measure, "IS_MACOS", True)  # not set in the config: on on macOS only
    assert backend.command(mlx_spec(tmp_path, None), program) == launched
    monkeypatch.setattr(measure, "IS_MACOS", False)
    assert backend.command(mlx_spec(tmp_path, None), program) == [*program, *tail]


def test_a_program_that_is_not_a_python_script_cannot_take_a_share(tmp_path):
    program = [script(tmp_path, '#!/bin/sh\nexec mlx_lm.server "$@"\n')]
    with pytest.raises(StartError, match="mlx_wired_shares: false"):
        backend_for("mlx").command(mlx_spec(tmp_path, True), program)
    assert backend_for("mlx").command(mlx_spec(tmp_path, False), program)[0] == program[0]


@pytest.mark.parametrize(
    ("text", "python"),
    [
        ("#!/usr/bin/python3\n", ["/usr/bin/python3"]),
        ("#!/usr/bin/env python3\n", ["/usr/bin/env", "python3"]),
        ("#!/bin/sh\n'''exec' \"/Users/a b/venv/bin/python\" \"$0\" \"$@\"\n' '''\n", ["/Users/a b/venv/bin/python"]),
        ("#!/bin/sh\nexec python3 -m mlx_lm.server\n", None),
        ("import sys\n", None),
    ],
)
def test_script_python_reads_the_interpreter(tmp_path, text, python):
    assert script_python(script(tmp_path, text)) == python
    assert script_python(str(tmp_path / "missing")) is None


def test_the_top_level_key_reaches_every_mlx_instance_and_round_trips(tmp_path, mlx_model, gguf_model):
    text = f"""
mlx_wired_shares: false
instances:
  - {{name: a, backend: mlx, model: {mlx_model}, port: 9001}}
  - {{name: b, backend: mlx, model: {mlx_model}, port: 9002}}
  - {{name: c, backend: llama.cpp, model: {gguf_model}, port: 9003}}
"""
    config = parse_config(text, tmp_path / "instances.yaml")
    assert config.mlx_wired_shares is False
    assert [spec.wired_shares for spec in config.instances] == [False, False, None]
    assert Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    unset = parse_config(text.replace("mlx_wired_shares: false\n", ""), tmp_path / "instances.yaml")
    assert unset.mlx_wired_shares is None and unset.instances[0].wired_shares is None
    # A spec saved before the field existed still loads.
    saved = config.instances[0].to_dict()
    del saved["wired_shares"]
    assert InstanceSpec.from_dict(saved).wired_shares is None
    old_config = config.to_dict()
    del old_config["mlx_wired_shares"]
    assert Config.from_dict(old_config).mlx_wired_shares is None


# -- doctor, with recorded macOS values -------------------------------------------------------


def two_mlx_config(tmp_path: Path, mlx_model: Path, top: str = "") -> Config:
    text = f"""{top}
instances:
  - {{name: chat, backend: mlx, model: {mlx_model}, port: 9001}}
  - {{name: code, backend: mlx, model: {mlx_model}, port: 9002, on_demand: true}}
"""
    return parse_config(text, tmp_path / "instances.yaml")


@pytest.fixture
def a_mac(monkeypatch):
    """A 16 GiB Mac whose iogpu.wired_limit_mb reads `limit` (set by the test; None: the default)."""
    from llmctl.memory import measure

    recorded: dict[str, int | None] = {"limit": None}
    monkeypatch.setattr(measure, "IS_MACOS", True)
    monkeypatch.setattr(measure, "macos_wired_limit", lambda lib=None: recorded["limit"])
    monkeypatch.setattr(measure, "total_memory", lambda: 16 * GIB)
    return recorded


def test_doctor_warns_when_the_mlx_estimates_exceed_the_wired_limit(tmp_path, mlx_model, a_mac):
    from llmctl.backends import safe_estimate
    from llmctl.beyond.doctor import WARNING, _wired_shares

    config = two_mlx_config(tmp_path, mlx_model)
    need = safe_estimate(config.instances[0])
    assert need and need > 100 * MIB  # the tiny model's estimate: the process base and the weights
    a_mac["limit"] = need  # iogpu.wired_limit_mb set to room for one of the two
    (finding,) = _wired_shares(config)
    assert finding.status == WARNING and finding.check == "memory"
    assert "chat ~" in finding.message and "code ~" in finding.message and "wired limit" in finding.message
    assert finding.fix and "sudo sysctl iogpu.wired_limit_mb=" in finding.fix


def test_doctor_is_content_when_they_fit_and_silent_off_a_mac_or_with_shares_off(
    tmp_path, mlx_model, a_mac, monkeypatch
):
    from llmctl.beyond.doctor import OK, _wired_shares
    from llmctl.memory import measure

    config = two_mlx_config(tmp_path, mlx_model)
    (finding,) = _wired_shares(config)  # the default limit: 12 GiB of 16
    assert finding.status == OK and "12.0 GiB" in finding.message
    a_mac["limit"] = 1 * MIB
    assert _wired_shares(two_mlx_config(tmp_path, mlx_model, "mlx_wired_shares: false")) == []
    monkeypatch.setattr(measure, "IS_MACOS", False)
    assert _wired_shares(config) == []


def test_doctor_shows_the_warning_among_its_findings(tmp_path, mlx_model, a_mac):
    from llmctl.beyond.doctor import diagnose
    from llmctl.config.load import load_config
    from llmctl.paths import StatePaths

    (tmp_path / "instances.yaml").write_text(
        f"instances:\n  - {{name: chat, backend: mlx, model: {mlx_model}, port: {free_port()}}}\n"
        f"  - {{name: code, backend: mlx, model: {mlx_model}, port: {free_port()}}}\n"
    )
    a_mac["limit"] = 64 * MIB
    findings = diagnose(tmp_path / "instances.yaml", StatePaths.default(), lambda path: load_config(path, False))
    assert [f.subject for f in findings if f.status == "warning"] == ["mlx wired shares"]


# -- the real mlx_lm.server, on Linux ---------------------------------------------------------


def test_the_real_mlx_server_runs_through_the_launcher(tmp_path, mlx_model):
    port = free_port()
    write_config(
        tmp_path,
        f"""
mlx_wired_shares: true
instances:
  - name: mlx
    backend: mlx
    model: {mlx_model}
    port: {port}
""",
    )
    result = llmctl("up", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    instance = by_name(status_json(cwd=tmp_path))["mlx"]
    assert instance["state"] == "healthy", instance
    import psutil

    server = psutil.Process(instance["pid"])
    assert server.cmdline()[1:3] == [str(LAUNCHER), "--"]
    share = int(server.environ()[ENV_VAR])  # the runner gave it its share: the only MLX instance, all of it
    assert 0 < share <= psutil.virtual_memory().total
    reply = httpx.post(
        instance["url"] + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4},
        timeout=120,
        trust_env=False,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["role"] == "assistant"
    logs = llmctl("logs", "mlx", "-n", "200", "--no-prefix", cwd=tmp_path)
    assert "[llmctl mlx_launch] no Metal GPU here: mlx_lm.server runs without a wired-limit share" in logs.stdout
