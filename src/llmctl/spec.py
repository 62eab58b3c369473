"""What a validated config says, as plain frozen dataclasses.

config.py validates instances.yaml with pydantic and hands back these; the supervisor, which lives
as long as the servers and should stay small, works with them alone and never imports pydantic.
They travel between the CLI, the supervisor and state.json as plain dicts (`to_dict`/`from_dict`).
Defaults and constraints live in config.py's schema, once: every field here is filled from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class HealthSpec:
    path: str | None
    url: str | None
    interval: float
    timeout: float
    start_timeout: float
    failure_threshold: int


@dataclass(frozen=True)
class RestartSpec:
    policy: str
    backoff: float
    max_backoff: float
    max_starts: int
    window: float


@dataclass(frozen=True)
class InstanceSpec:
    name: str
    backend: str
    model: str | None
    port: int
    host: str
    args: tuple[str, ...]
    env: dict[str, str]
    command: tuple[str, ...] | None
    health: HealthSpec
    restart: RestartSpec
    stop_timeout: float
    max_memory: int | None
    memory_grace: float
    workdir: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstanceSpec:
        return cls(
            **{
                **data,
                "args": tuple(data["args"]),
                "command": tuple(data["command"]) if data["command"] is not None else None,
                "health": HealthSpec(**data["health"]),
                "restart": RestartSpec(**data["restart"]),
            }
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["args"] = list(self.args)
        data["command"] = list(self.command) if self.command is not None else None
        return data

    @property
    def url(self) -> str:
        return f"http://{connect_host(self.host)}:{self.port}"

    def health_url(self, default_path: str) -> str:
        if self.health.url:
            return self.health.url
        return self.url + (self.health.path or default_path)


@dataclass(frozen=True)
class Config:
    path: str
    instances: tuple[InstanceSpec, ...]
    binaries: dict[str, str]
    log_max_bytes: int
    log_backups: int
    memory_budget: int | None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        return cls(**{**data, "instances": tuple(InstanceSpec.from_dict(entry) for entry in data["instances"])})

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "instances": [instance.to_dict() for instance in self.instances]}

    @property
    def names(self) -> list[str]:
        return [instance.name for instance in self.instances]

    def instance(self, name: str) -> InstanceSpec:
        for instance in self.instances:
            if instance.name == name:
                return instance
        raise ConfigError(f"no instance named {name!r} in {self.path} (instances: {', '.join(self.names) or 'none'})")

    def select(self, names: list[str] | None) -> list[InstanceSpec]:
        """The instances named (all when none are), in the order given; unknown names are an error."""
        if not names:
            return list(self.instances)
        return [self.instance(name) for name in dict.fromkeys(names)]


def connect_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host`."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "[::1]"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host
