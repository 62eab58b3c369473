"""What the commands do, without any terminal: the CLI calls these and renders what they return."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import client, state
from .errors import ConfigError
from .paths import StatePaths

if TYPE_CHECKING:
    from .spec import Config, InstanceSpec

WAIT_POLL = 0.03
# While waiting in `up`: an instance is settled when healthy, or failed, or retrying after a failed start.
OK, FAILED, PENDING = "ok", "failed", "pending"


def instance_placeholder(spec: InstanceSpec, estimate: int | None, paths: StatePaths) -> dict[str, Any]:
    """A configured instance no supervisor knows: described exactly as the supervisor would, stopped."""
    from .instance import Instance, describe

    return describe(Instance(spec=spec, estimate=estimate), str(paths.log_file(spec.name)))


def has_adoptable_records(paths: StatePaths) -> bool:
    """Did a killed supervisor leave servers running? Then the next command starts one to adopt them."""
    from .process import ProcessHandle

    _, records, _ = state.load_records(paths.state_file)
    return any(ProcessHandle(record.pid, record.create_time).is_alive() for record in records)


def status(paths: StatePaths, config_path: Path, names: list[str]) -> dict[str, Any]:
    if client.is_running(paths) or has_adoptable_records(paths):
        client.ensure_supervisor(paths)
        answer = client.request(paths, {"op": "status"})
        return {
            "supervisor": answer["supervisor"],
            "system": answer.get("system"),
            "instances": select(answer["instances"], names),
        }
    from .backends import backend_for
    from .config import load_config  # only here: the schema costs a few hundred ms to import
    from .memory import system_summary

    config = load_config(config_path)
    specs = config.select(names)
    instances = [instance_placeholder(spec, backend_for(spec.backend).estimate_memory(spec), paths) for spec in specs]
    return {"supervisor": None, "system": system_summary(instances, config.memory_budget), "instances": instances}


def select(instances: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    if not names:
        return instances
    by_name = {instance["name"]: instance for instance in instances}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ConfigError(f"unknown instance {unknown[0]!r} (known: {', '.join(by_name) or 'none'})")
    return [by_name[name] for name in dict.fromkeys(names)]


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


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def exposure_warnings(specs: list[InstanceSpec]) -> list[str]:
    """Instances listening beyond this machine: the user asked for it, but should know."""
    return [
        f"{spec.name} listens on {spec.host}: other machines can reach it"
        + (" (consider llama-server's --api-key-file)" if spec.backend == "llama.cpp" else "")
        for spec in specs
        if spec.host not in LOOPBACK_HOSTS and not spec.host.startswith("127.")
    ]


def _validated(config_path: Path, names: list[str]) -> Config:
    from .config import load_config

    config = load_config(config_path)
    config.select(names)  # unknown names fail here, before anything starts
    return config


def settle(instance: dict[str, Any]) -> str:
    if instance["state"] == "healthy":
        return OK
    if instance["state"] in ("failed", "stopped"):
        return FAILED
    if instance["state"] == "backoff" and instance.get("start_failures"):
        return FAILED
    return PENDING


def current(paths: StatePaths, names: list[str]) -> list[dict[str, Any]]:
    """The named instances as the running supervisor sees them now."""
    return select(client.request(paths, {"op": "status"})["instances"], names)


def wait_until_settled(
    paths: StatePaths,
    names: list[str],
    timeout: float | None,
    on_update: Callable[[list[dict[str, Any]]], None] | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Poll until every named instance is healthy or one failed; (instances, timed_out)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        instances = current(paths, names)
        if on_update:
            on_update(instances)
        outcomes = [settle(instance) for instance in instances]
        if FAILED in outcomes or all(outcome == OK for outcome in outcomes):
            return instances, False
        if deadline is not None and time.monotonic() >= deadline:
            return instances, True
        time.sleep(WAIT_POLL)


def down(paths: StatePaths, names: list[str]) -> list[str]:
    """Stop the named instances (all, and the supervisor, when none are named)."""
    if not client.is_running(paths):
        if not has_adoptable_records(paths):
            return []
        client.ensure_supervisor(paths)  # adopts what a killed supervisor left, so it can be stopped
    supervisor_pid = client.request(paths, {"op": "ping"})["pid"]
    answer = client.request(paths, {"op": "down", "names": names}, timeout=None)
    if not names:
        _wait_for_exit(supervisor_pid)
    return answer["stopped"]


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
