"""Ollama: `ollama serve` on the instance's address, with the instance's model preloaded.

Ready means the API answers and the model is loaded: llmctl asks for it through /api/generate
(no prompt: a pure load) and then sees it in /api/ps. The model's memory lives in runner child
processes of `ollama serve`, which the supervisor counts as part of the process tree.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from llmctl.backends.base import Backend, NotReady, load_timeout, poll_delays, poll_until_ok

if TYPE_CHECKING:
    from llmctl.spec import InstanceSpec
    from llmctl.system.http import HttpClient


class OllamaBackend(Backend):
    name = "ollama"
    program = "ollama"
    install_hint = "Install Ollama (see ollama.com/download), or set binaries.ollama."
    # Settings meant for another Ollama (a desktop app's OLLAMA_HOST, say) must not reach this one.
    scrubbed_env_prefixes = ("OLLAMA_",)

    def is_probe_noise(self, line: str) -> bool:
        """GIN's access line for a probe: `[GIN] ... | 200 | ... | GET      "/api/version"`."""
        return "| 200 |" in line and line.rstrip().endswith(('"/api/version"', '"/api/ps"'))

    def upstream_model(self, spec: InstanceSpec) -> str | None:
        return spec.model

    def command(self, spec: InstanceSpec, program: list[str]) -> list[str]:
        return [*program, "serve", *spec.args]

    def environment(self, spec: InstanceSpec, inherited: dict[str, str]) -> dict[str, str]:
        env = super().environment(spec, inherited)
        env["OLLAMA_HOST"] = f"{spec.host}:{spec.port}"
        return env

    def liveness_url(self, spec: InstanceSpec) -> str:
        return spec.health_url("/api/version")

    async def wait_ready(self, spec: InstanceSpec, http: HttpClient) -> None:
        import asyncio  # here, not at the top: see base.py's docstring

        # Ollama accepts connections before it serves them: short probe timeouts, retried.
        await poll_until_ok(http, self.liveness_url(spec), min(spec.health.timeout, 1.0))
        await self._preload(spec, http)
        for delay in poll_delays():
            if spec.model in await self.loaded_models(spec, http):
                return
            await asyncio.sleep(delay)

    async def _preload(self, spec: InstanceSpec, http: HttpClient) -> None:
        request: dict[str, object] = {"model": spec.model}
        if "OLLAMA_KEEP_ALIVE" not in spec.env:
            request["keep_alive"] = -1  # a supervised model stays loaded; the user can say otherwise
        response = await http.post(spec.url + "/api/generate", json=request, timeout=load_timeout(spec))
        if response.status_code == 404:
            await self._pull(spec, http)
            response = await http.post(spec.url + "/api/generate", json=request, timeout=load_timeout(spec))
        if response.status_code != 200:
            raise NotReady(f"loading {spec.model!r} answered HTTP {response.status_code}: {response.text[:200]}")

    async def _pull(self, spec: InstanceSpec, http: HttpClient) -> None:
        """Fetch a model this Ollama does not have yet, as `ollama pull` would; the blobs folder growing
        is the start's progress (download_folders)."""
        response = await http.post(
            spec.url + "/api/pull", json={"model": spec.model, "stream": False}, timeout=load_timeout(spec)
        )
        if response.status_code != 200 or '"error"' in response.text:
            raise NotReady(
                f"model {spec.model!r} is not in this Ollama's library and pulling it failed "
                f"(HTTP {response.status_code}: {response.text[:200]}); check the name, or run "
                f"`ollama pull {spec.model}` yourself"
            )

    def download_folders(self, spec: InstanceSpec, env: dict[str, str]) -> list[Path]:
        models = env.get("OLLAMA_MODELS")
        return [(Path(models).expanduser() if models else Path.home() / ".ollama" / "models") / "blobs"]

    async def reported_memory(self, spec: InstanceSpec, http: HttpClient) -> int | None:
        """The `size` /api/ps reports for this instance's model (the runner's own estimate)."""
        response = await http.get(spec.url + "/api/ps", timeout=spec.health.timeout)
        wanted = {spec.model, f"{spec.model}:latest"}
        for entry in response.json().get("models", []):
            if entry.get("name") in wanted or entry.get("model") in wanted:
                return int(entry.get("size") or 0) or None
        return None

    async def loaded_models(self, spec: InstanceSpec, http: HttpClient) -> set[str]:
        response = await http.get(spec.url + "/api/ps", timeout=spec.health.timeout)
        names: set[str] = set()
        for entry in response.json().get("models", []):
            names.update(str(entry.get(key)) for key in ("name", "model") if entry.get(key))
        # `llama3.2` is served as `llama3.2:latest`.
        names.update(name.removesuffix(":latest") for name in list(names))
        return names


BACKEND = OllamaBackend()
