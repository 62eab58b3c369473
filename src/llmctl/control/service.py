"""What the commands do, without any terminal: the CLI calls these and renders what they return.

Every answer is (or contains) the status document of llmctl.control.statusdoc; nothing here interprets
state strings: the supervisor computes each instance's outcome.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmctl.control import client, state, statusdoc
from llmctl.errors import ConfigError, SupervisorError
from llmctl.paths import StatePaths

if TYPE_CHECKING:
    from llmctl.spec import Config, InstanceSpec


def has_adoptable_records(paths: StatePaths) -> bool:
    """Did a killed supervisor leave servers running, or waiting to start again (in backoff)? Then a
    supervisor is started to adopt (or resume) them."""
    from llmctl.system.process import ProcessHandle

    saved, _ = state.load(paths.state_file)
    return any(
        ProcessHandle(record.pid, record.create_time).is_alive() if record.pid else record.wanted
        for record in saved.records
    )


def supervisor_is_needed(paths: StatePaths) -> bool:
    if client.is_running(paths):
        return True
    if has_adoptable_records(paths):
        client.ensure_supervisor(paths)
        return True
    return False


def status(paths: StatePaths, config_path: Path, names: list[str]) -> dict[str, Any]:
    if supervisor_is_needed(paths):
        answer = client.request(paths, {"op": "status"})
        return _selected(answer, names, config_path)
    from llmctl.control.instancestatus import describe
    from llmctl.memory.measure import system_summary

    config = load_config(config_path)
    specs = config.select(names)
    instances = [describe(spec, None, str(paths.log_file(spec.name))) for spec in specs]
    return statusdoc.document(None, system_summary(instances, config.memory_budget), instances)


def _selected(answer: dict[str, Any], names: list[str], config_path: Path) -> dict[str, Any]:
    """The named instances of a supervisor's answer; one the config names but the supervisor never
    ran is shown stopped, as the supervisor would show it."""
    instances, unknown = statusdoc.select(answer["instances"], names)
    if unknown:
        from llmctl.control.instancestatus import describe

        config = _config_or_none(config_path)
        for name in unknown:
            if config is None or name not in config.names:
                known = sorted({i["name"] for i in answer["instances"]} | set(config.names if config else []))
                raise ConfigError(f"unknown instance {name!r} (known: {', '.join(known) or 'none'})")
        shown = {i["name"]: i for i in answer["instances"]}
        for name in unknown:
            shown[name] = describe(config.instance(name), None, str(StatePaths.default().log_file(name)))  # type: ignore[union-attr]
        instances = [shown[name] for name in dict.fromkeys(names)]
    return statusdoc.document(answer.get("supervisor"), answer.get("system"), instances, answer.get("gateway"))


def _config_or_none(config_path: Path | None) -> Config | None:
    if config_path is None:
        return None
    try:
        return load_config(config_path)
    except ConfigError:
        return None


def load_config(config_path: Path) -> Config:
    from llmctl.config.cache import load_config_cached

    return load_config_cached(config_path)


def up(paths: StatePaths, config_path: Path, names: list[str], force: bool = False) -> tuple[dict[str, str], list[str]]:
    """Ask the supervisor (started if needed) to start what is not running: (its actions, warnings).

    The config is validated here, before any supervisor starts, and sent validated: the supervisor
    never imports the schema.
    """
    config = _validated(config_path, names)
    client.ensure_supervisor(paths)
    request = {"op": "up", "config": config.to_dict(), "names": names, "force": force}
    answer = client.request(paths, request, timeout=None)
    return answer["actions"], exposure_warnings(config.select(names))


def wait(
    paths: StatePaths,
    names: list[str],
    timeout: float | None,
    on_progress: Callable[[list[dict[str, Any]]], None] | None = None,
) -> dict[str, Any]:
    """Block until every named instance has settled (the supervisor says when), or `timeout`."""
    request: dict[str, Any] = {"op": "wait", "names": names, "timeout": timeout, "progress": on_progress is not None}
    on_event = (lambda event: on_progress(event["instances"])) if on_progress else None
    return client.request(paths, request, timeout=None, on_event=on_event)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


SECRET_HINTS = {
    "llama.cpp": " (llama-server reads LLAMA_API_KEY and HF_TOKEN from its environment, or use --api-key-file)",
    "mlx": " (Hugging Face reads HF_TOKEN from the environment)",
}


def exposure_warnings(specs: list[InstanceSpec]) -> list[str]:
    """Instances listening beyond this machine, and secrets on command lines: the user asked for
    it, but should know."""
    from llmctl.system.redact import secret_flags

    warnings = [
        f"{spec.name} listens on {spec.host}: other machines can reach it"
        + (" (consider llama-server's --api-key-file)" if spec.backend == "llama.cpp" else "")
        for spec in specs
        # An external server's URL is where llmctl connects, not where it makes anything listen.
        if spec.host not in LOOPBACK_HOSTS and not spec.host.startswith("127.") and spec.backend != "external"
    ]
    for spec in specs:
        flags = secret_flags([*(spec.command or ()), *spec.args])
        if flags:
            warnings.append(
                f"{spec.name} passes a secret on its command line ({', '.join(dict.fromkeys(flags))}), where every "
                f"user's `ps` can read it: pass it through `env:` instead{SECRET_HINTS.get(spec.backend, '')}"
            )
    return warnings


def _validated(config_path: Path, names: list[str]) -> Config:
    config = load_config(config_path)
    config.select(names)  # unknown names fail here, before anything starts
    return config


def down(paths: StatePaths, names: list[str], config_path: Path | None) -> dict[str, str]:
    """Stop the named instances (all, and the supervisor, when none are named): what happened to each,
    `stopped`, or `detached` for an external server (its own app runs it; llmctl only lets go of it).

    A name neither the config nor the supervisor knows is an error (exit 2), whether or not
    anything runs; a known one that is not running is simply not in the answer.
    """
    try:
        running = supervisor_is_needed(paths)
        instances = client.request(paths, {"op": "status"})["instances"] if running else []
    except SupervisorError as unreachable:  # a folder made unsearchable, a supervisor that cannot answer
        if names:
            raise
        return client.stop_unreachable(paths, unreachable)
    supervised = [i["name"] for i in instances]
    external = {i["name"] for i in instances if i.get("backend") == "external"}
    if names:
        config = _config_or_none(config_path)
        known = set(supervised) | set(config.names if config else [])
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ConfigError(f"unknown instance {unknown[0]!r} (known: {', '.join(sorted(known)) or 'none'})")
        names = [name for name in names if name in supervised]
        if not names:
            return {}
    if not running:
        return {}
    supervisor_pid = client.request(paths, {"op": "ping"})["pid"]
    answer = client.request(paths, {"op": "down", "names": names}, timeout=None)
    if not names:
        _wait_for_exit(supervisor_pid)
    return {name: "detached" if name in external else "stopped" for name in answer["stopped"]}


def _wait_for_exit(pid: int, timeout: float = 10.0) -> None:
    """`down` returns when the supervisor has exited, so a script may start another at once."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.02)


def restart(paths: StatePaths, config_path: Path, names: list[str]) -> dict[str, str]:
    config = _validated(config_path, names)
    client.ensure_supervisor(paths)
    request = {"op": "restart", "names": names, "config": config.to_dict()}
    return client.request(paths, request, timeout=None)["actions"]


def env_name(instance: str, suffix: str = "URL") -> str:
    """`LLMCTL_<NAME>_URL`: the name upper-cased, every character a shell variable cannot hold as `_`."""
    return (
        "LLMCTL_"
        + "".join(char if char.isalnum() and char.isascii() else "_" for char in instance.upper())
        + "_"
        + suffix
    )


def openai_url(url: str) -> str:
    """The OpenAI-compatible base URL (what OpenAI clients take as base_url) of a server at `url`."""
    return url.rstrip("/") + "/v1"


def urls(config: Config) -> dict[str, str]:
    """What `llmctl env` exports, from the config alone (no supervisor needed): each instance's base URL
    as LLMCTL_<NAME>_URL and its OpenAI base URL (…/v1) as LLMCTL_<NAME>_OPENAI_URL, the gateway's as
    LLMCTL_GATEWAY_URL and LLMCTL_GATEWAY_OPENAI_URL, OPENAI_BASE_URL: the gateway's /v1, else the
    first instance's, and OLLAMA_HOST when the gateway has an `ollama_port`. Two names that map to one
    variable are a config error."""
    found: dict[str, str] = {}
    owners: dict[str, str] = {}
    for spec in config.instances:
        for variable, value in (
            (env_name(spec.name), spec.url),
            (env_name(spec.name, "OPENAI_URL"), openai_url(spec.url)),
        ):
            if variable in owners:
                raise ConfigError(f"instances {owners[variable]!r} and {spec.name!r} would both export ${variable}")
            owners[variable], found[variable] = spec.name, value
    if config.gateway is not None:
        found["LLMCTL_GATEWAY_URL"] = config.gateway.url
        found["LLMCTL_GATEWAY_OPENAI_URL"] = openai_url(config.gateway.url)
        if config.gateway.ollama_port is not None:
            # Ollama's clients read OLLAMA_HOST (default 127.0.0.1:11434): set only when the config gives
            # llmctl an Ollama port, since `ollama serve` would also bind whatever it names.
            found["OLLAMA_HOST"] = config.gateway.ollama_url
    first = config.gateway.url if config.gateway is not None else config.instances[0].url if config.instances else None
    if first is not None:
        found["OPENAI_BASE_URL"] = openai_url(first)
    return found


def start_warnings(config: Config) -> list[str]:
    """What would stop an instance from starting that no config error covers: a program that is not
    installed (yet). Warnings, since it may be installed before `up`."""
    from llmctl.backends import command_line
    from llmctl.errors import StartError

    found = []
    for spec in config.instances:
        if spec.external:
            continue  # its own app starts it
        try:
            command_line(spec, config.binaries)
        except StartError as exc:
            found.append(f"{spec.name}: {exc}")
    return found + exposure_warnings(list(config.instances))


def estimate(model: str, args: list[str], backend: str | None = None) -> dict[str, Any]:
    """What `model` (a GGUF file or an MLX folder) with these server `args` would take, by memory pool
    and part, on this machine's GPUs (NVML; none: all on the host).

    {"model", "backend", "devices": [{"index", "name", "total_bytes"}], "pools": {pool: bytes},
     "total_bytes", "parts": [{"pool", "what", "bytes"}]}. Raises ConfigError for a model that is
    missing or of no known kind, or args the config would refuse."""
    import json
    from pathlib import Path

    from llmctl.backends import backend_for
    from llmctl.config.load import parse_config
    from llmctl.memory.pools import Nvml

    path = Path(model).expanduser()
    if not path.exists():
        raise ConfigError(f"{model}: no such file or folder")
    kind = backend or ("mlx" if path.is_dir() else "llama.cpp")
    entry = {"name": "estimate", "backend": kind, "model": str(path.absolute()), "port": 65000, "args": args}
    config = parse_config(json.dumps({"instances": [entry]}), Path.cwd() / "estimate.yaml", check_backends=False)
    devices = Nvml().devices()
    found = backend_for(kind).estimate(config.instances[0], devices)
    if found is None:
        raise ConfigError(f"{model}: cannot read what {kind} would load (not a GGUF file or an MLX model folder?)")
    return {
        "model": str(path),
        "backend": kind,
        "devices": [{"index": d.index, "name": d.name, "total_bytes": d.total_bytes} for d in devices],
        **found.to_dict(),
    }
