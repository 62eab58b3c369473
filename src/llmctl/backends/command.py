"""Any other OpenAI-compatible server (vLLM, LocalAI, LM Studio's server, ...).

The user gives the whole command line as `command:` and, usually, the readiness URL as
`health: {url: ...}`; without one, GET /v1/models on the instance's address must answer 2xx.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from llmctl.backends.base import Backend, poll_until_ok, resolve_model_path, resolve_program
from llmctl.errors import BinaryNotFound
from llmctl.logs.progress import huggingface_cache, huggingface_repo_folder

if TYPE_CHECKING:
    from llmctl.spec import InstanceSpec
    from llmctl.system.http import HttpClient


class CommandBackend(Backend):
    name = "command"
    program = ""
    install_hint = "Check the first word of `command:`."

    def command(self, spec: InstanceSpec, program: list[str]) -> list[str]:
        assert spec.command is not None  # the schema requires it for this backend
        found = resolve_program(spec.command[0], spec.workdir)
        if found is None:
            raise BinaryNotFound(f"command: program {spec.command[0]!r} not found. {self.install_hint}")
        return [found, *spec.command[1:], *spec.args]

    def find_program(self, configured: str | None) -> list[str]:
        return []  # the program is the first word of `command:`

    def download_folders(self, spec: InstanceSpec, env: dict[str, str]) -> list[Path]:
        """A `model:` that names a Hugging Face repo (vLLM, SGLang, TGI fetch it): its cache folder;
        without one, the whole cache when the instance sets its own (HF_HOME or HF_HUB_CACHE)."""
        model = spec.model or ""
        if (
            model.count("/") == 1
            and not model.startswith(("/", ".", "~"))
            and not resolve_model_path(spec, model).exists()
        ):
            return [huggingface_repo_folder(model, env)]
        if not model and ("HF_HOME" in spec.env or "HF_HUB_CACHE" in spec.env):
            return [huggingface_cache(env)]
        return []

    def upstream_model(self, spec: InstanceSpec) -> str | None:
        return spec.model or spec.name  # the name the server itself serves, when the config gives one

    def liveness_url(self, spec: InstanceSpec) -> str:
        return spec.health_url("/v1/models")

    async def wait_ready(self, spec: InstanceSpec, http: HttpClient) -> None:
        await poll_until_ok(http, self.liveness_url(spec), spec.health.timeout, accept=tuple(range(200, 300)))


BACKEND = CommandBackend()
