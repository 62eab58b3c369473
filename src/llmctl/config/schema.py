"""Step 4 of the config pipeline: the schema of instances.yaml, which validates the prepared document.

The pydantic models here hold every default and constraint; `ConfigModel.to_spec()` turns a valid
document into the plain dataclasses of llmctl.spec, which is all the rest of llmctl (the supervisor
above all) works with; `valid_instances` does it for each instance entry valid on its own. Messages
name what is wrong and what is valid; llmctl.config.locate adds the file, line, instance and field.

Relative model paths and `command` programs resolve against the config file's folder (`workdir`,
filled in by llmctl.config.prep), so the supervisor, which runs elsewhere, sees the same files the
user meant.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmctl.spec import Config, GatewaySpec, InstanceSpec

Problem = tuple[tuple[Any, ...], str]  # (location in the document, message): llmctl.config.locate places it

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Seconds = Annotated[float, Field(gt=0)]


class HealthModel(_Strict):
    """How readiness and liveness are checked. `url` overrides `path` (which is relative to the instance)."""

    path: str | None = None
    url: str | None = None
    interval: Seconds = 5.0
    timeout: Seconds = 5.0
    # Time allowed without progress (log output, download bytes, a new readiness answer), not in all.
    start_timeout: Seconds = 120.0
    start_deadline: Seconds | None = None  # an overall bound on one start, progress or not
    failure_threshold: Annotated[int, Field(ge=1)] = 3

    @field_validator("path")
    @classmethod
    def _path_starts_with_slash(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"must start with '/' (got {value!r})")
        return value

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL (got {value!r})")
        return value


class RestartModel(_Strict):
    """What happens when a server exits: `no`, `on-failure` (non-zero exit or signal), `always`."""

    policy: Literal["no", "on-failure", "always"] = "on-failure"
    backoff: Seconds = 1.0

    @field_validator("policy", mode="before")
    @classmethod
    def _yaml_no_is_false(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `no` as false; `restart: no` must still mean the policy "no".
        return "no" if value is False else value

    max_backoff: Seconds = 30.0
    max_starts: Annotated[int, Field(ge=1)] = 5
    window: Seconds = 60.0


class InstanceModel(_Strict):
    name: str
    backend: str
    model: str | None = None
    port: Annotated[int, Field(ge=1024, le=65535)]
    host: str = "127.0.0.1"
    args: list[str] = []
    env: dict[str, str] = {}
    command: list[str] | None = None
    health: HealthModel = HealthModel()
    restart: RestartModel = RestartModel()
    stop_timeout: Seconds = 10.0
    # Above this (bytes, "8GiB", "25%"): a warning at once, a restart per policy once it lasts memory_grace seconds.
    max_memory: int | None = None
    memory_grace: Seconds = 30.0
    # The gateway: other names this instance answers to, started by the first request (not by `up`),
    # stopped after `ttl` idle seconds, at most `max_queue` requests waiting for it.
    aliases: list[str] = []
    on_demand: bool = False
    ttl: Seconds | None = None
    max_queue: Annotated[int, Field(ge=0)] = 10
    # The key the gateway sends this upstream (llama-server --api-key, LM Studio with auth, a remote
    # server): the name of an environment variable, or a file of mode 0600; never the key itself.
    upstream_api_key_env: str | None = None
    upstream_api_key_file: str | None = None
    # backend `external`: the URL of a server llmctl attaches to (never starts), and what kind it is.
    url: str | None = None
    kind: Literal["lmstudio", "gpt4all", "localai", "ollama", "llama.cpp", "openai"] | None = None
    # Filled in by the loader, not by users: the folder relative paths resolve against.
    workdir: str = ""

    @model_validator(mode="before")
    @classmethod
    def _address_from_url(cls, data: Any) -> Any:
        """An external server's host and port come from its `url` (given, they must agree with it)."""
        if not isinstance(data, Mapping) or data.get("backend") != "external" or not isinstance(data.get("url"), str):
            return data
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(data["url"])
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise ValueError(f"url: {exc}") from None
        if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise ValueError(f"url: must be a server's base URL like http://127.0.0.1:1234 (got {data['url']!r})")
        if parts.username or parts.password:
            raise ValueError("url: no credentials in the URL (they would be written to state and logs)")
        if port < 1024:
            raise ValueError(f"url: llmctl attaches to servers on ports 1024-65535 (got {port})")
        filled = dict(data)
        filled.setdefault("port", port)
        filled.setdefault("host", parts.hostname)
        if (filled["port"], filled["host"]) != (port, parts.hostname):
            raise ValueError(f"url: {data['url']!r} disagrees with host/port {filled['host']}:{filled['port']}")
        return filled

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(
                f"{value!r} is not a plain name: use letters, digits, '-' and '_' (at most 64), "
                "since names become file names and URL parts"
            )
        return value

    @field_validator("aliases")
    @classmethod
    def _plain_aliases(cls, value: list[str]) -> list[str]:
        for alias in value:
            if not alias or len(alias) > 256 or not alias.isprintable() or alias != alias.strip():
                raise ValueError(
                    f"{alias!r} is not a usable model name (printable, no surrounding spaces, at most 256)"
                )
        return value

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        from llmctl.backends import backend_names

        if value not in backend_names():
            raise ValueError(f"unknown backend {value!r} (valid: {', '.join(backend_names())})")
        return value

    @field_validator("max_memory", mode="before")
    @classmethod
    def _memory_size(cls, value: Any) -> Any:
        return None if value is None else _size(value)

    @field_validator("args", mode="before")
    @classmethod
    def _args_are_strings(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError("must be a list of strings, one argument each (e.g. ['-c', '4096'])")
        if isinstance(value, list):
            return [_scalar_to_str(item) for item in value]
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env_values_are_strings(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {key: _scalar_to_str(item) for key, item in value.items()}
        return value

    @field_validator("command", mode="before")
    @classmethod
    def _split_command(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = shlex.split(value)
            except ValueError as exc:
                raise ValueError(f"cannot split the command line: {exc}") from None
        if isinstance(value, list) and not value:
            raise ValueError("must name a program to run")
        return value

    @model_validator(mode="after")
    def _backend_fields(self) -> InstanceModel:
        external = self.backend == "external"
        if external and self.url is None:
            raise ValueError("backend 'external' needs `url:` (where the server answers, e.g. http://127.0.0.1:1234)")
        if not external and (self.url is not None or self.kind is not None):
            raise ValueError("`url:` and `kind:` are for backend 'external' (a server llmctl does not start)")
        if external and (self.on_demand or self.args or self.env):
            raise ValueError("an external server is not started by llmctl: on_demand, args and env do not apply")
        if external:
            return self
        if self.backend == "command" and self.command is None:
            raise ValueError("backend 'command' needs `command:` (the server's command line)")
        if self.backend != "command" and self.command is not None:
            raise ValueError(f"`command:` is only for backend 'command'; backend {self.backend!r} builds its own")
        if self.backend != "command" and not self.model:
            raise ValueError(f"backend {self.backend!r} needs `model:`")
        return self


class DefaultsModel(_Strict):
    """Values every instance starts from; an instance's own keys win, mappings merge key by key."""

    host: str | None = None
    env: dict[str, str] | None = None
    health: dict[str, Any] | None = None
    restart: dict[str, Any] | None = None
    stop_timeout: Seconds | None = None
    max_memory: Any = None


class LogsModel(_Strict):
    """Each instance's log is rotated at `max_bytes`, keeping `backups` older files (NAME.log.1 ...)."""

    max_bytes: Annotated[int, Field(ge=1024)] = 10 * 1024 * 1024
    backups: Annotated[int, Field(ge=0, le=100)] = 3


class GatewayModel(_Strict):
    """One port for every model (absent: no gateway). Beyond loopback it needs an API key."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1024, le=65535)]
    api_key_env: str | None = None  # the name of an environment variable holding the key
    api_key_file: str | None = None  # a file holding the key (mode 0600), never the key itself
    cors_origins: list[str] = []
    max_body: int = 32 * 1024 * 1024
    max_wait: Seconds = 300.0  # how long a request may wait for its instance to start
    drain_timeout: Seconds = 60.0  # how long a start waits for a busy instance to finish before evicting fails
    # A start on demand goes on this long after its last waiting request left, so a client whose own
    # timeout is shorter than the load finds it further on when it retries; then it is abandoned.
    start_grace: Seconds = 60.0
    max_connections: Annotated[int, Field(ge=16)] = 4096  # client connections at once; the idlest go first
    header_timeout: Seconds = 10.0  # a connection that has not finished its request's headers by then is closed
    idle_timeout: Seconds = 60.0  # an idle keep-alive connection is closed after this long
    read_timeout: Seconds = 600.0  # an upstream silent this long mid-answer gets the client a 504
    pool_max: Annotated[int, Field(ge=1)] = 64  # upstream connections per instance at most
    pool_wait: Seconds = 30.0  # how long a request waits for one of them (then 503 with Retry-After)
    # A second listener (same host) that answers Ollama's API only, e.g. 11434: apps hard-wired to
    # Ollama's port need no change. None: Ollama's API is served on `port` only, beside /v1.
    ollama_port: Annotated[int, Field(ge=1024, le=65535)] | None = None

    @model_validator(mode="after")
    def _distinct_ports(self) -> GatewayModel:
        if self.ollama_port is not None and self.ollama_port == self.port:
            raise ValueError(f"ollama_port must differ from port (both {self.port})")
        return self

    @field_validator("max_body", mode="before")
    @classmethod
    def _body_size(cls, value: Any) -> Any:
        return _size(value)


class ConfigModel(_Strict):
    instances: list[InstanceModel]
    gateway: GatewayModel | None = None
    defaults: DefaultsModel = DefaultsModel()
    logs: LogsModel = LogsModel()
    # What all instances together may take (bytes, "48GiB", "80%"); None: the platform default.
    memory_budget: int | None = None
    # What instances may take on each NVIDIA GPU: bytes ("40GiB", applied to each device) or a share of
    # each device ("80%"); None: 90 % of each device (llmctl.memory.pools).
    gpu_memory_budget: int | float | None = None
    binaries: dict[str, str] = {}
    # Each MLX server gets its share of the GPU wired limit (llmctl.memory.wired); None: on macOS only.
    mlx_wired_shares: bool | None = None
    path: str = ""

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _budget_size(cls, value: Any) -> Any:
        return None if value is None else _size(value)

    @field_validator("gpu_memory_budget", mode="before")
    @classmethod
    def _gpu_budget(cls, value: Any) -> Any:
        """A percentage stays a share of each device (a float); anything else is a size in bytes."""
        if isinstance(value, str) and value.strip().endswith("%"):
            try:
                share = float(value.strip()[:-1]) / 100
            except ValueError:
                raise ValueError(f"not a percentage: {value!r}") from None
            if not 0 < share <= 1:
                raise ValueError(f"a share of each GPU must be above 0% and at most 100% (got {value!r})")
            return share
        if isinstance(value, float) and not value.is_integer():
            raise ValueError("a size like 40GiB, a number of bytes, or a percentage like 80%")
        return None if value is None else _size(value)

    @field_validator("binaries")
    @classmethod
    def _known_backends(cls, value: dict[str, str]) -> dict[str, str]:
        from llmctl.backends import backend_names

        for name in value:
            if name not in backend_names():
                raise ValueError(f"unknown backend {name!r} (valid: {', '.join(backend_names())})")
        return value

    def to_spec(self) -> Config:
        return Config(
            path=self.path,
            instances=tuple(
                InstanceSpec.from_dict({**instance.model_dump(exclude={"url"}), **self._top_level_for(instance)})
                for instance in self.instances
            ),
            binaries=dict(self.binaries),
            log_max_bytes=self.logs.max_bytes,
            log_backups=self.logs.backups,
            memory_budget=self.memory_budget,
            gpu_memory_budget=self.gpu_memory_budget,
            gateway=GatewaySpec(**self.gateway.model_dump()) if self.gateway else None,
            mlx_wired_shares=self.mlx_wired_shares,
        )

    def _top_level_for(self, instance: InstanceModel) -> dict[str, Any]:
        """The top-level settings an instance's adapter needs, copied into its spec: the adapter
        sees only the instance (Backend.command)."""
        return {"wired_shares": self.mlx_wired_shares} if instance.backend == "mlx" else {}


@dataclass(frozen=True)
class Verdict:
    """What step 4 found: the config (None when the schema refused it) or the schema's `error`; the
    instance entries valid on their own as (index, spec), for the backend checks; and the `problems`
    found across entries (clashes), as (location, message) pairs for llmctl.config.locate."""

    config: Config | None
    error: ValidationError | None
    valid: list[tuple[int, InstanceSpec]]
    problems: list[Problem]


def validate(prepared: dict[str, Any], path: str) -> Verdict:
    """The whole of step 4 in one call, so the pipeline passes through here once, whatever it finds."""
    try:
        config = ConfigModel.model_validate({**prepared, "path": path}).to_spec()
    except ValidationError as exc:
        valid = valid_instances(prepared)
        return Verdict(None, exc, valid, clashes(prepared, valid))
    valid = list(enumerate(config.instances))
    return Verdict(config, None, valid, clashes(prepared, valid))


def clashes(prepared: Any, valid: list[tuple[int, InstanceSpec]]) -> list[Problem]:
    """Every duplicate name or alias and every port used twice (by two instances, or by an instance
    and the gateway's port or ollama_port), each at the later entry. `valid` gives the ports of the
    entries valid on their own (an external server's comes from its url); an invalid entry's own
    integer `port:` counts too, so one bad field hides no clash."""
    entries = prepared.get("instances") if isinstance(prepared, Mapping) else None
    entries = entries if isinstance(entries, list) else []
    # An external server on another machine holds no port here: it clashes with nothing local.
    ports = {index: spec.port for index, spec in valid if not (spec.external and _remote(spec.host))}
    problems: list[Problem] = []
    seen_names: set[str] = set()
    for index, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, Mapping) else None
        if isinstance(name, str):
            if name in seen_names:
                problems.append((("instances", index, "name"), f"duplicate name {name!r}"))
            seen_names.add(name)
        raw_port = entry.get("port") if isinstance(entry, Mapping) else None
        host = entry.get("host") if isinstance(entry, Mapping) else None
        remote = isinstance(host, str) and entry.get("backend") == "external" and _remote(host)
        if index not in ports and not remote and isinstance(raw_port, int) and not isinstance(raw_port, bool):
            ports[index] = raw_port
    problems += _port_clashes(prepared, entries, ports)
    problems += _alias_clashes(entries, seen_names)
    return problems


def _remote(host: str) -> bool:
    """A host name or address that is not this machine's loopback or wildcard (where llmctl binds)."""
    if host.strip("[]").lower() in ("localhost", "0.0.0.0", "::", ""):
        return False
    import ipaddress

    try:
        return not ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return not host.lower().endswith(".localhost")


def _port_clashes(prepared: Mapping[str, Any], entries: list[Any], ports: dict[int, int]) -> list[Problem]:
    gateway = prepared.get("gateway")
    holders: dict[int, str] = {}
    if isinstance(gateway, Mapping):
        for key, what in (("port", "the gateway"), ("ollama_port", "the gateway's ollama_port")):
            value = gateway.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                holders.setdefault(value, what)
    problems: list[Problem] = []
    for index in sorted(ports):
        port, entry = ports[index], entries[index]
        name = entry.get("name") if isinstance(entry, Mapping) else None
        if port in holders:
            location = ("instances", index, "port") if "port" in entry else ("instances", index)
            problems.append((location, f"port {port} is already used by {holders[port]}"))
        else:
            holders[port] = f"instance {name!r}" if isinstance(name, str) else f"instance #{index + 1}"
    return problems


def _alias_clashes(entries: list[Any], names: set[str]) -> list[Problem]:
    owners: dict[str, str] = {}
    problems: list[Problem] = []
    for index, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, Mapping) else None
        aliases = entry.get("aliases") if isinstance(entry, Mapping) else None
        for position, alias in enumerate(aliases if isinstance(aliases, list) else []):
            if not isinstance(alias, str):
                continue
            clash = name if alias == name else owners.get(alias)
            if alias in names and alias != name:
                clash = alias
            if clash is not None:
                message = f"{alias!r} already names instance {clash!r}"
                problems.append((("instances", index, "aliases", position), message))
            owners.setdefault(alias, name if isinstance(name, str) else f"#{index + 1}")
    return problems


def valid_instances(prepared: Any) -> list[tuple[int, InstanceSpec]]:
    """(index, spec) of each instance entry that passes the schema on its own, for the checks that
    run beside a failed validation (so `llmctl check` lists every problem at once)."""
    entries = prepared.get("instances") if isinstance(prepared, Mapping) else None
    valid = []
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        spec = _instance_spec(entry)
        if spec is not None:
            valid.append((index, spec))
    return valid


def _instance_spec(entry: Any) -> InstanceSpec | None:
    """The spec of one entry; failing that, of the entry without its faulty keys (a misspelt key must
    not hide that the model file is missing); None when even that is invalid."""
    for attempt in range(2):
        try:
            return InstanceSpec.from_dict(InstanceModel.model_validate(entry).model_dump(exclude={"url"}))
        except ValidationError as exc:
            faulty = {error["loc"][0] for error in exc.errors() if error["loc"]}
            if attempt or not isinstance(entry, Mapping) or not faulty:
                return None
            entry = {key: value for key, value in entry.items() if key not in faulty}
        except (ValueError, TypeError):
            return None
    return None


def _size(value: Any) -> int:
    from llmctl.memory.measure import parse_size

    if not isinstance(value, (str, int, float)):
        raise ValueError("must be a size like 24GiB, 512MB, a number of bytes, or a percentage like 80%")
    return parse_size(value)


def _scalar_to_str(value: Any) -> Any:
    # YAML reads `OLLAMA_NUM_PARALLEL: 2` as an int; an environment only holds strings.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return value


# The model of each section, by its key: llmctl.config.locate names a section's valid keys from it.
SECTION_MODELS: dict[str, type[BaseModel]] = {
    "instances": InstanceModel,
    "defaults": DefaultsModel,
    "health": HealthModel,
    "restart": RestartModel,
    "logs": LogsModel,
    "gateway": GatewayModel,
}
