"""A server llmctl does not start: a desktop app's (LM Studio, GPT4All), LocalAI or Ollama run as a
system service, a llama-server started by hand. llmctl attaches to it by URL: it checks health the
way that kind of server answers, measures the process that listens on the port, routes to it, and
never spawns or signals it (llmctl.external)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmctl.backends.base import Backend, NotReady, poll_until_ok
from llmctl.errors import StartError

if TYPE_CHECKING:
    from llmctl.spec import InstanceSpec
    from llmctl.system.http import HttpClient

# What each kind of server answers 2xx on once it can serve, from their documentation:
# LM Studio and GPT4All serve the OpenAI API (/v1/models); LocalAI has /readyz; Ollama /api/version;
# llama-server /health (503 while loading); any other OpenAI-compatible server /v1/models.
READINESS_PATHS = {
    "lmstudio": "/v1/models",
    "gpt4all": "/v1/models",
    "localai": "/readyz",
    "ollama": "/api/version",
    "llama.cpp": "/health",
    "openai": "/v1/models",
}
KINDS = tuple(READINESS_PATHS)


class ExternalBackend(Backend):
    name = "external"
    program = ""
    install_hint = "An external server is started by its own app: start it there (e.g. LM Studio's server switch)."

    def find_program(self, configured: str | None) -> list[str]:
        return []

    def command(self, spec: InstanceSpec, program: list[str]) -> list[str]:
        raise StartError(f"{spec.name}: an external server is never started by llmctl")

    def upstream_model(self, spec: InstanceSpec) -> str | None:
        return spec.model or spec.name  # the name the server itself serves, when the config gives one

    def liveness_url(self, spec: InstanceSpec) -> str:
        return spec.health_url(READINESS_PATHS.get(spec.kind or "openai", "/v1/models"))

    async def wait_ready(self, spec: InstanceSpec, http: HttpClient) -> None:
        """Raises NotReady at once when no host takes the connection (unroutable, or a firewall drops it),
        rather than retrying for start_timeout (120 s by default): `up` answers within health.timeout.
        A refused connection is polled on, as any server that is still starting."""
        await _reachable(spec.host, spec.port, spec.health.timeout)
        await poll_until_ok(http, self.liveness_url(spec), spec.health.timeout, accept=tuple(range(200, 300)))


async def _reachable(host: str, port: int, timeout: float) -> None:
    """Raises NotReady when a TCP connection to host:port neither opens nor is refused within `timeout`
    seconds, or the network says the host cannot be reached (EHOSTUNREACH, ENETUNREACH)."""
    import asyncio  # here, not at the top: see llmctl.backends.base
    import errno

    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), port), timeout)
    except asyncio.TimeoutError:
        raise NotReady(
            f"no connection to {host}:{port} within {timeout:g}s: the host is unreachable or drops it"
        ) from None
    except OSError as error:
        if error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            raise NotReady(f"{host}:{port} cannot be reached: {error.strerror}") from None
        return  # refused, for one: nothing listens yet, polled on
    writer.close()


BACKEND = ExternalBackend()
