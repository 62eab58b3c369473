"""`llmctl doctor`: what stands between this setup and a working `llmctl up`, each with its fix.

Every check only looks: nothing is started, created or removed. A finding is `ok`, a `warning`
(worth knowing, `up` may still work: a model that will be downloaded on first start) or a `problem`
(`up` will fail, or something is broken); doctor exits 1 when there is any problem.
"""

from __future__ import annotations

import os
import stat
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmctl.backends import backend_for
from llmctl.backends.base import resolve_model_path
from llmctl.control import client
from llmctl.control.lock import lock_holder
from llmctl.errors import BinaryNotFound, ConfigError, LlmctlError, StartError
from llmctl.memory.budget import format_bytes
from llmctl.paths import StatePaths, unsafe_folder
from llmctl.spec import Config, InstanceSpec
from llmctl.system.ports import port_holder, port_is_free

OK, WARNING, PROBLEM = "ok", "warning", "problem"
VERSION_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Finding:
    check: str  # config, program, port, model, memory, state_dir, supervisor
    subject: str
    status: str
    message: str
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def diagnose(config_path: Path, paths: StatePaths, load: Any) -> list[Finding]:
    """Every finding for this config and state folder; `load` validates a config path (service.load_config)."""
    findings = [*_state_folder(paths)]
    supervisor, running = _supervisor(paths)
    findings += supervisor
    try:
        config = load(config_path)
    except ConfigError as exc:
        fix = "edit the file (`llmctl check` lists every problem), or write a starter one with `llmctl init`"
        return [*(Finding("config", "", PROBLEM, line, fix) for line in exc.problems), *findings]
    findings.insert(0, Finding("config", config.path, OK, f"{len(config.instances)} instances, valid"))
    findings += _served_config(config, running)
    findings += _programs(config)
    findings += _ports(config, running)
    findings += [finding for spec in config.instances for finding in _model(spec)]
    findings += _memory(config)
    findings += _wired_shares(config)
    return findings


def healthy(findings: list[Finding]) -> bool:
    return not any(finding.status == PROBLEM for finding in findings)


# -- programs ------------------------------------------------------------------------------


def _programs(config: Config) -> list[Finding]:
    findings, seen = [], set()
    for spec in config.instances:
        backend = backend_for(spec.backend)
        if spec.external:
            continue  # its own app runs it
        try:
            argv = backend.find_program(config.binaries.get(spec.backend)) if spec.backend != "command" else []
            if spec.backend == "command":
                argv = backend.command(spec, [])[:1]
        except (BinaryNotFound, StartError) as exc:
            subject = spec.backend if spec.backend != "command" else f"{spec.name} (command)"
            findings.append(Finding("program", subject, PROBLEM, str(exc), backend.install_hint))
            continue
        key = tuple(argv)
        if key in seen:
            continue
        seen.add(key)
        version = program_version(backend.version_command(argv)) if spec.backend != "command" else None
        subject = spec.backend if spec.backend != "command" else f"{spec.name} (command)"
        findings.append(Finding("program", subject, OK, f"{argv[0]}" + (f" ({version})" if version else "")))
    return findings


def program_version(argv: list[str]) -> str | None:
    """The first line that names a version in what `argv` prints, or None."""
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=VERSION_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    for line in (done.stdout + "\n" + done.stderr).splitlines():
        if "version" in line.lower() and len(line) < 200:
            return line.strip()
    return None


# -- ports ---------------------------------------------------------------------------------


def _ports(config: Config, running: dict[str, Any]) -> list[Finding]:
    findings = [_external(spec) for spec in config.instances if spec.external]
    ours = {instance["port"]: instance for instance in running.get("instances", []) if instance.get("pid")}
    listeners = [(spec.name, spec.host, spec.port) for spec in config.instances if not spec.external]
    if config.gateway is not None:
        listeners.append(("gateway", config.gateway.host, config.gateway.port))
    for name, host, port in listeners:
        subject = f"{name} :{port}"
        if port in ours and ours[port]["name"] == name:
            findings.append(Finding("port", subject, OK, f"in use by this instance (pid {ours[port]['pid']})"))
        elif name == "gateway" and (running.get("gateway") or {}).get("url", "").endswith(f":{port}"):
            findings.append(Finding("port", subject, OK, "in use by llmctl's gateway"))
        elif port_is_free(host, port):
            findings.append(Finding("port", subject, OK, f"free on {host}"))
        else:
            holder = port_holder(port) or "another process (not visible to you)"
            fix = f"stop {holder}, or give {name} another port in {config.path}"
            findings.append(Finding("port", subject, PROBLEM, f"port {port} is held by {holder}", fix))
    return findings


def _external(spec: InstanceSpec) -> Finding:
    """An attached server must be up already: llmctl cannot start it."""
    url = backend_for(spec.backend).liveness_url(spec)
    try:
        import httpx

        answer = httpx.get(url, timeout=2.0, trust_env=False).status_code
    except Exception as exc:  # any failure to connect is the finding
        answer = None
        detail = str(exc) or type(exc).__name__
    if answer is not None and 200 <= answer < 300:
        return Finding("external", f"{spec.name} {spec.url}", OK, f"answers at {url}")
    said = f"HTTP {answer}" if answer is not None else detail
    fix = f"start its server in its own app (kind {spec.kind or 'openai'}), or fix `url:` in the config"
    return Finding("external", f"{spec.name} {spec.url}", WARNING, f"no answer at {url} ({said})", fix)


# -- models --------------------------------------------------------------------------------


def _model(spec: InstanceSpec) -> list[Finding]:
    if not spec.model or spec.external:
        return []
    subject = f"{spec.name}: {spec.model}"
    problem = backend_for(spec.backend).check_spec(spec)
    if problem:
        return [Finding("model", subject, PROBLEM, problem[1], "fix the path in the config, or download the model")]
    path = resolve_model_path(spec, spec.model)
    if path.exists():
        if not os.access(path, os.R_OK):
            return [Finding("model", subject, PROBLEM, f"{path} is not readable by you", f"`chmod u+r {path}`")]
        return [Finding("model", subject, OK, f"{_kind(spec, path)}, {format_bytes(_size(path))}")]
    if spec.backend in ("mlx", "ollama") or spec.model.count("/") == 1:
        estimate = backend_for(spec.backend).estimate_memory(spec)
        if estimate:  # a hub id already in the local cache
            return [Finding("model", subject, OK, "in the local download cache")]
        note = "not on this machine yet: the first `llmctl up` downloads it (progress shows in `llmctl status`)"
        return [Finding("model", subject, WARNING, note)]
    return [Finding("model", subject, OK, "not a local path (the server resolves it)")]


def _kind(spec: InstanceSpec, path: Path) -> str:
    if path.is_dir():
        return "MLX folder" if (path / "config.json").is_file() else "folder"
    return "GGUF" if spec.backend == "llama.cpp" else "file"


def _size(path: Path) -> int:
    """Bytes on disk of a model file, or of every file in a model folder, links followed: a Hugging Face
    snapshot folder is links to its blobs (the size `init` and Ollama's /api/tags give the same model)."""
    if path.is_file():
        return path.stat().st_size
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


# -- memory --------------------------------------------------------------------------------


def _memory(config: Config) -> list[Finding]:
    """The estimates of what `up` starts against the budget `up` enforces (the config's, else the default)."""
    from llmctl.backends import safe_estimate
    from llmctl.memory.measure import default_budget

    estimates = {spec.name: safe_estimate(spec) for spec in config.instances if not spec.on_demand}
    known = sum(value for value in estimates.values() if value)
    unknown = sorted(name for name, value in estimates.items() if not value)
    budget = config.memory_budget if config.memory_budget is not None else default_budget()
    subject = "budget" if config.memory_budget is not None else "budget (default)"
    detail = f"instances started by `up` need about {format_bytes(known)}"
    if unknown:
        detail += f" (no estimate for {', '.join(unknown)})"
    if known > budget:
        fix = "raise memory_budget, make some instances on_demand (the gateway starts them), or use smaller models"
        return [Finding("memory", subject, PROBLEM, f"{detail}, over the budget of {format_bytes(budget)}", fix)]
    return [Finding("memory", subject, OK, f"{detail}, within the budget of {format_bytes(budget)}")]


def _wired_shares(config: Config) -> list[Finding]:
    """On a Mac with wired-limit shares on: whether the MLX instances' estimates fit the GPU wired
    limit together (when they do not, each share is smaller than its need)."""
    from llmctl.backends import safe_estimate
    from llmctl.memory import measure
    from llmctl.memory.wired import shares_on, shares_problem, system_limit

    mlx = [spec for spec in config.instances if spec.backend == "mlx"]
    if not measure.IS_MACOS or not mlx or not shares_on(config.mlx_wired_shares, measure.IS_MACOS):
        return []
    limit = system_limit(measure.macos_wired_limit(), measure.total_memory())
    # All of them, on_demand ones too: the gateway may have them running at once.
    needs = {spec.name: safe_estimate(spec) or 0 for spec in mlx}
    problem = shares_problem(needs, limit)
    if problem:
        message, _, fix = problem.partition("; ")
        return [Finding("memory", "mlx wired shares", WARNING, message, fix or None)]
    unknown = sorted(name for name, need in needs.items() if not need)
    detail = f"the MLX instances' estimates fit the GPU wired limit of {format_bytes(limit)}"
    if unknown:
        detail += f" (no estimate for {', '.join(unknown)}: each counts as an equal part)"
    return [Finding("memory", "mlx wired shares", OK, detail)]


# -- the state folder and the supervisor ---------------------------------------------------


def _state_folder(paths: StatePaths) -> list[Finding]:
    findings = []
    for folder in (paths.root, paths.logs):
        try:
            info = os.lstat(folder)
        except FileNotFoundError:
            findings.append(Finding("state_dir", str(folder), OK, "not created yet (the first `up` makes it, 0700)"))
            continue
        except OSError as exc:
            findings.append(Finding("state_dir", str(folder), PROBLEM, f"cannot look at it: {exc.strerror}",
                                    "set $LLMCTL_STATE_DIR to a folder of yours"))  # fmt: skip
            continue
        problem = unsafe_folder(folder, info)
        if problem:
            message, _, fix = problem.partition("; ")
            findings.append(Finding("state_dir", str(folder), PROBLEM, message, fix or None))
        else:
            findings.append(Finding("state_dir", str(folder), OK, f"yours, mode {stat.S_IMODE(info.st_mode):o}"))
    return findings


def _served_config(config: Config, running: dict[str, Any]) -> list[Finding]:
    """The running supervisor serves another config file than the one checked (its status document's
    supervisor.config): what doctor says of ports and memory is then not what runs. A problem while
    that file's servers run (`up` with this one would be refused), a warning otherwise."""
    served = (running.get("supervisor") or {}).get("config")
    if not isinstance(served, str) or not served or _same_file(served, config.path):
        return []
    live = [instance["name"] for instance in running.get("instances", []) if instance.get("pid")]
    message = f"the running supervisor serves {served}, not this file" + (
        f" ({', '.join(live)} running)" if live else ""
    )
    fix = f"check that file with `llmctl -f {served} doctor`, or `llmctl down` before `llmctl up` with this one"
    return [Finding("supervisor", config.path, PROBLEM if live else WARNING, message, fix)]


def _same_file(one: str, other: str) -> bool:
    try:
        return os.path.samefile(one, other)
    except OSError:
        return os.path.realpath(one) == os.path.realpath(other)


def _supervisor(paths: StatePaths) -> tuple[list[Finding], dict[str, Any]]:
    """The supervisor's health, and its status document when it answers."""
    holder = lock_holder(paths)
    socket_exists = paths.socket.exists() or paths.socket.is_symlink()
    if holder is None:
        if socket_exists:
            fix = f"harmless (the next `llmctl up` replaces it); or remove it: `rm {paths.socket}`"
            return [
                Finding("supervisor", str(paths.socket), PROBLEM, "a stale socket: no supervisor holds it", fix)
            ], {}
        return [Finding("supervisor", str(paths.root), OK, "none running")], {}
    try:
        answer = client.request(paths, {"op": "status"}, timeout=5.0)
    except LlmctlError as exc:
        fix = f"it may be stuck: look at {paths.root / 'supervisor.log'}, then `kill {holder}` (servers are adopted)"
        return [Finding("supervisor", f"pid {holder}", PROBLEM, f"holds the lock but does not answer: {exc}", fix)], {}
    return [Finding("supervisor", f"pid {holder}", OK, "running and answering")], answer
