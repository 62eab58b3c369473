"""Beyond one terminal (issue 12): the login service files, the exports, the examples, the CI workflow.

Each output is checked by the tool its consumer trusts: `systemd-analyze verify` for the unit,
plistlib and launchd's needs for the agent, kubernetes-validate for the manifests, the compose
specification's schema (check-jsonschema's vendor.compose-spec) for the compose file, and the GitHub
workflow schema for the CI workflow.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .helpers import ROOT, command_instance, free_port, llmctl, write_config

CHECK_JSONSCHEMA = str(Path(sys.executable).parent / "check-jsonschema")


def test_systemd_unit_is_written_and_verified(tmp_path, state_dir):
    config = write_config(tmp_path, "instances:" + command_instance("a", free_port()))
    home = tmp_path / "home"
    result = llmctl("service", "install", "--no-start", "--platform", "linux", cwd=tmp_path, env={"HOME": str(home)})
    assert result.returncode == 0, result.stderr
    unit = home / ".config" / "systemd" / "user" / "llmctl.service"
    text = unit.read_text()
    assert f"--file {config}" in text and "up --foreground" in text
    assert "Restart=on-failure" in text and "StartLimitBurst=" in text and "StartLimitIntervalSec=" in text
    assert f"LLMCTL_STATE_DIR={state_dir}" in text
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    assert "llmctl.service" not in verified.stderr  # no warning about the unit itself

    status = llmctl("service", "status", "--platform", "linux", cwd=tmp_path, env={"HOME": str(home)})
    assert "installed at" in status.stdout
    no_bus = {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent", "XDG_RUNTIME_DIR": "/nonexistent"}
    removed = llmctl("service", "uninstall", "--platform", "linux", cwd=tmp_path, env={"HOME": str(home), **no_bus})
    assert not unit.exists() and f"removed {unit}" in removed.stdout
    # No service manager answered the unload: said, with the command, and exit 1 (it may still be loaded).
    assert removed.returncode == 1 and "systemctl --user disable --now llmctl.service" in removed.stderr
    after = llmctl("service", "status", "--platform", "linux", cwd=tmp_path, env={"HOME": str(home)})
    assert after.returncode == 1 and "not installed" in after.stdout


def test_launchd_agent_parses_and_has_what_launchd_needs(tmp_path, state_dir):
    """Recorded expectations from launchd.plist(5): Label, ProgramArguments, RunAtLoad, KeepAlive
    restarting after a crash only, ThrottleInterval, logs in the state folder."""
    config = write_config(tmp_path, "instances:" + command_instance("a", free_port()))
    home = tmp_path / "home"
    result = llmctl("service", "install", "--no-start", "--platform", "macos", cwd=tmp_path, env={"HOME": str(home)})
    assert result.returncode == 0, result.stderr
    agent = plistlib.loads((home / "Library" / "LaunchAgents" / "dev.llmctl.supervisor.plist").read_bytes())
    assert agent["Label"] == "dev.llmctl.supervisor"
    assert agent["ProgramArguments"][-4:] == ["--file", str(config), "up", "--foreground"]
    assert Path(agent["ProgramArguments"][0]).name == "llmctl" and os.access(agent["ProgramArguments"][0], os.X_OK)
    assert agent["RunAtLoad"] is True and agent["KeepAlive"] == {"SuccessfulExit": False}
    assert isinstance(agent["ThrottleInterval"], int) and agent["ThrottleInterval"] >= 10
    assert agent["StandardOutPath"].startswith(str(state_dir)) and agent["StandardErrorPath"].startswith(str(state_dir))
    assert agent["EnvironmentVariables"]["LLMCTL_STATE_DIR"] == str(state_dir)
    assert agent["WorkingDirectory"] == str(tmp_path)
    assert "load it with: launchctl bootstrap gui/" in result.stdout


def test_service_for_a_broken_config_is_refused(tmp_path, state_dir):
    write_config(tmp_path, "instances:\n  - name: a\n")
    result = llmctl("service", "install", "--no-start", cwd=tmp_path, env={"HOME": str(tmp_path / "home")})
    assert result.returncode == 2 and not (tmp_path / "home").exists()


def example_config(tmp_path, gguf_model) -> Path:
    return write_config(
        tmp_path,
        f"""
instances:
  - name: Chat_Model
    backend: llama.cpp
    model: {gguf_model}
    port: {free_port()}
    args: ["-c", "512"]
    max_memory: 2GiB
    health: {{interval: 2, timeout: 3, start_timeout: 60, failure_threshold: 4}}
  - name: embed
    backend: ollama
    model: nomic-embed-text
    port: {free_port()}
    restart: {{policy: always}}
  - name: vllm
    backend: command
    command: [vllm, serve, Qwen/Qwen2.5-7B-Instruct, --port, "{free_port()}"]
    port: {free_port()}
    health: {{path: /health}}
  - name: desk
    backend: external
    url: http://127.0.0.1:{free_port()}
""",
    )


def test_kubernetes_export_validates_and_carries_the_config(tmp_path, gguf_model):
    import kubernetes_validate

    example_config(tmp_path, gguf_model)
    result = llmctl("export", "kubernetes", "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    documents = list(yaml.safe_load_all((tmp_path / "out" / "llmctl.k8s.yaml").read_text()))
    for document in documents:
        kubernetes_validate.validate(document, "1.30", strict=True)
    kinds = [(d["kind"], d["metadata"]["name"]) for d in documents]
    assert ("Deployment", "chat-model") in kinds and ("Service", "vllm") in kinds
    assert not any(name == "desk" for _, name in kinds)  # an external server is not ours to deploy
    chat = next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "chat-model")
    container = chat["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["failureThreshold"] == 4 and container["livenessProbe"]["periodSeconds"] == 2
    assert container["resources"]["limits"]["memory"] == "2048Mi" and "requests" in container["resources"]
    assert "-c" in container["args"] and f"/models/{gguf_model.name}" in container["args"]
    assert "REPLACE-ME" in chat["metadata"]["annotations"]["llmctl.dev/model"]
    vllm = next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "vllm")
    assert vllm["spec"]["template"]["spec"]["containers"][0]["image"] == "REPLACE-ME"  # never invented


def test_compose_export_validates_against_the_compose_spec(tmp_path, gguf_model):
    example_config(tmp_path, gguf_model)
    result = llmctl("export", "compose", "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    compose_file = tmp_path / "out" / "compose.yaml"
    checked = subprocess.run(
        [CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", str(compose_file)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    services = yaml.safe_load(compose_file.read_text())["services"]
    assert set(services) == {"chat-model", "embed", "vllm"}
    assert services["embed"]["restart"] == "always" and services["chat-model"]["restart"] == "on-failure"
    assert services["chat-model"]["volumes"] == [f"{gguf_model.parent}:/models:ro"]
    assert services["vllm"]["image"] == "REPLACE-ME" and services["vllm"]["entrypoint"] == ["vllm"]
    assert services["embed"]["environment"]["OLLAMA_HOST"].startswith("0.0.0.0:")


def test_export_image_override_and_bad_input(tmp_path, gguf_model):
    example_config(tmp_path, gguf_model)
    shown = llmctl("export", "compose", "--image", "vllm=vllm/vllm-openai:v0.9", cwd=tmp_path)
    assert shown.returncode == 0 and "vllm/vllm-openai:v0.9" in shown.stdout
    for bad in (["export", "helm"], ["export", "compose", "--image", "novalue"]):
        result = llmctl(*bad, cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr and result.stderr.count("\n") == 1


def test_every_example_passes_check(tmp_path):
    """The examples are real configs: `llmctl check` accepts each (programs not installed here are warnings)."""
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "qwen2.5-coder-7b-instruct-q4_k_m.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert {path.stem for path in examples} >= {"lmstudio", "gpt4all", "localai", "ollama", "vllm", "mac"}
    for example in examples:
        result = llmctl("check", "-f", str(example), cwd=tmp_path, env={"HOME": str(home)})
        assert result.returncode == 0, f"{example.name}: {result.stderr}"


def test_ci_workflow_is_valid_and_runs_linux_and_apple_silicon():
    workflow = ROOT / ".github" / "workflows" / "ci.yml"
    checked = subprocess.run(
        [CHECK_JSONSCHEMA, "--builtin-schema", "vendor.github-workflows", str(workflow)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    jobs = yaml.safe_load(workflow.read_text())["jobs"]
    runners = {str(job["runs-on"]) for job in jobs.values()} | {
        str(os_name) for job in jobs.values() for os_name in job.get("strategy", {}).get("matrix", {}).get("os", [])
    }
    assert any("macos" in runner for runner in runners) and any("ubuntu" in runner for runner in runners)
    assert "bash .ci/run" in workflow.read_text()


def test_systemd_unit_for_a_path_with_spaces_and_percent_verifies(tmp_path, state_dir):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    folder = tmp_path / "my models 100%"
    folder.mkdir()
    write_config(folder, "instances:" + command_instance("a", free_port()))
    home = tmp_path / "home"
    result = llmctl("service", "install", "--no-start", "--platform", "linux", cwd=folder, env={"HOME": str(home)})
    assert result.returncode == 0, result.stderr
    unit = home / ".config" / "systemd" / "user" / "llmctl.service"
    assert "100%%" in unit.read_text()
    verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    exec_start = next(line for line in unit.read_text().splitlines() if line.startswith("ExecStart="))
    assert "'" in exec_start  # the path with spaces is quoted as one word


def test_exported_names_stay_unique(tmp_path):
    write_config(
        tmp_path,
        "instances:" + command_instance("a-", free_port()) + command_instance("a", free_port())
        + command_instance("A_x", free_port()),
    )  # fmt: skip
    result = llmctl("export", "compose", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert set(yaml.safe_load(result.stdout)["services"]) == {"a", "a-2", "a-x"}


def test_init_escapes_a_dollar_in_a_model_path(tmp_path, state_dir, gguf_model):
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    shutil.copy(gguf_model, home / "models" / "price$5.gguf")
    result = llmctl("init", "-f", str(tmp_path / "out.yaml"), cwd=tmp_path, env={"HOME": str(home), "HF_HOME": ""})
    assert result.returncode == 0, result.stderr
    check = llmctl("check", "-f", str(tmp_path / "out.yaml"), cwd=tmp_path)
    assert check.returncode == 0, check.stderr


def test_service_install_where_no_service_manager_answers_writes_the_file_and_says_so(tmp_path, state_dir):
    """A container or an SSH session has no user bus: the unit is written, not loaded, and the
    message says how to load it. (The bus is pointed nowhere, so no test ever starts a real service.)"""
    write_config(tmp_path, "instances:" + command_instance("a", free_port()))
    home = tmp_path / "home"
    env = {"HOME": str(home), "DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent", "XDG_RUNTIME_DIR": "/nonexistent"}
    result = llmctl("service", "install", "--platform", "linux", cwd=tmp_path, env=env)
    assert result.returncode == 1, result.stderr  # asked to load it, and it is not loaded
    assert (home / ".config" / "systemd" / "user" / "llmctl.service").is_file()
    assert "not loaded" in result.stderr and "systemctl --user enable --now llmctl.service" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "compose", "-o", "/etc/passwd"],
        ["service", "install", "--no-start", "--platform", "windows"],
        ["service", "status", "--platform", "bsd"],
        ["completion", "powershell"],
        ["init", "-f", "/nonexistent-folder/x.yaml"],
    ],
)
def test_bad_input_to_the_new_commands_is_one_line_and_exit_2(tmp_path, argv):
    write_config(tmp_path, "instances:" + command_instance("a", free_port()))
    result = llmctl(*argv, cwd=tmp_path, env={"HOME": str(tmp_path / "home")})
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("llmctl: error: ")


def test_export_says_what_it_leaves_out(tmp_path, gguf_model):
    """The gateway, start on demand with its ttl, an external server: not in a Deployment or a compose
    service, so said on stderr (stdout stays a clean manifest) and as comments in the file."""
    text = (
        f"gateway: {{port: {free_port()}}}\ninstances:\n"
        f"  - {{name: chat, backend: llama.cpp, model: {gguf_model}, port: {free_port()}, on_demand: true, ttl: 600}}\n"
        f"  - {{name: desk, backend: external, kind: llama.cpp, url: 'http://127.0.0.1:{free_port()}'}}\n"
    )
    write_config(tmp_path, text)
    for kind in ("kubernetes", "compose"):
        result = llmctl("export", kind, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        notes = result.stderr.splitlines()
        assert any(line.startswith("llmctl: note: the gateway") for line in notes), notes
        assert any("chat: on_demand, ttl 600s is not exported" in line for line in notes), notes
        assert any("desk: an external server" in line for line in notes), notes
        assert "# Left out: the gateway" in result.stdout and "# Left out: chat: on_demand" in result.stdout
        assert list(yaml.safe_load_all(result.stdout))  # still one valid YAML stream


def test_export_of_a_plain_config_says_nothing_on_stderr(tmp_path, gguf_model):
    write_config(tmp_path, f"instances:\n  - {{name: chat, backend: llama.cpp, model: {gguf_model}, port: 9000}}\n")
    result = llmctl("export", "compose", cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == "" and "Left out" not in result.stdout
