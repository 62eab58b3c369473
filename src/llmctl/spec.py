"""What a validated config says, as plain frozen dataclasses.

config.py validates instances.yaml with pydantic and hands back these; the supervisor, which lives
as long as the servers and should stay small, works with them alone and never imports pydantic.
They travel between the CLI, the supervisor and state.json as plain dicts (`to_dict`/`from_dict`).
Defaults and constraints live in llmctl.config's schema, once: every field here is filled from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from llmctl.errors import ConfigError


@dataclass(frozen=True)
class HealthSpec:
    path: str | None
    url: str | None
    interval: float
    timeout: float
    start_timeout: float
    failure_threshold: int
    start_deadline: float | None = None


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
    aliases: tuple[str, ...] = ()
    on_demand: bool = False
    ttl: float | None = None
    max_queue: int = 10
    kind: str | None = None  # backend `external`: what kind of server it is (its readiness path)
    upstream_api_key_env: str | None = None  # the gateway's key for this upstream: a variable's name
    upstream_api_key_file: str | None = None  # or a 0600 file
    # backend `mlx`: the config's top-level `mlx_wired_shares` (None: on macOS only; llmctl.memory.wired).
    # Not an instance key: the loader copies it into every mlx instance, so the adapter sees it.
    wired_shares: bool | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstanceSpec:
        return cls(
            **{
                **data,
                "args": tuple(data["args"]),
                "command": tuple(data["command"]) if data["command"] is not None else None,
                "health": HealthSpec(**data["health"]),
                "restart": RestartSpec(**data["restart"]),
                "aliases": tuple(data.get("aliases", ())),  # absent in specs saved before the gateway
            }
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["args"] = list(self.args)
        data["command"] = list(self.command) if self.command is not None else None
        data["aliases"] = list(self.aliases)
        return data

    @property
    def url(self) -> str:
        return f"http://{connect_host(self.host)}:{self.port}"

    @property
    def external(self) -> bool:
        """A server llmctl attaches to but never starts or signals."""
        return self.backend == "external"

    def health_url(self, default_path: str) -> str:
        if self.health.url:
            return self.health.url
        return self.url + (self.health.path or default_path)


@dataclass(frozen=True)
class GatewaySpec:
    host: str
    port: int
    api_key_env: str | None
    api_key_file: str | None
    cors_origins: tuple[str, ...]
    max_body: int
    max_wait: float
    drain_timeout: float
    start_grace: float = 60.0
    max_connections: int = 4096
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    read_timeout: float = 600.0
    pool_max: int = 64
    pool_wait: float = 30.0
    ollama_port: int | None = None  # a second listener answering Ollama's API only

    def __post_init__(self) -> None:
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))

    @property
    def url(self) -> str:
        return f"http://{connect_host(self.host)}:{self.port}"

    @property
    def ollama_url(self) -> str | None:
        """The Ollama-only listener's URL (None without `ollama_port`)."""
        return None if self.ollama_port is None else f"http://{connect_host(self.host)}:{self.ollama_port}"


@dataclass(frozen=True)
class Config:
    path: str
    instances: tuple[InstanceSpec, ...]
    binaries: dict[str, str]
    log_max_bytes: int
    log_backups: int
    memory_budget: int | None
    gateway: GatewaySpec | None = None
    mlx_wired_shares: bool | None = None  # MLX servers' GPU wired-limit shares; None: on macOS only
    gpu_memory_budget: int | float | None = None  # bytes per GPU, or a share of each (float); None: 90 %

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        gateway = data.get("gateway")
        return cls(
            **{
                **data,
                "instances": tuple(InstanceSpec.from_dict(entry) for entry in data["instances"]),
                "gateway": GatewaySpec(**gateway) if gateway else None,
            }
        )

    def to_dict(self) -> dict[str, Any]:
        gateway = {**asdict(self.gateway), "cors_origins": list(self.gateway.cors_origins)} if self.gateway else None
        return {**asdict(self), "instances": [instance.to_dict() for instance in self.instances], "gateway": gateway}

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
