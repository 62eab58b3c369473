"""What Ollama's listings say of a model, read from a GGUF header (llmctl.memory.gguf) or an MLX folder
(model_details: the package's only file reads), and the entries of /api/tags, /api/ps and the /api/show reply
[A][T][R]."""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from llmctl.gateway.ollama.names import _MAX_NS, display_name
from llmctl.gateway.ollama.replies import _int, rfc3339
from llmctl.memory.gguf import GgufError, read_gguf

# llama.cpp's llama_ftype numbers -> names, as Ollama's fs/ggml FileType.String [T]; bits per weight for a
# parameter estimate when the file has no size label.
_FILE_TYPES: dict[int, tuple[str, float]] = {
    0: ("F32", 32.0), 1: ("F16", 16.0), 2: ("Q4_0", 4.5), 3: ("Q4_1", 5.0), 7: ("Q8_0", 8.5),
    8: ("Q5_0", 5.5), 9: ("Q5_1", 6.0), 10: ("Q2_K", 3.0), 11: ("Q3_K_S", 3.5), 12: ("Q3_K_M", 3.9),
    13: ("Q3_K_L", 4.3), 14: ("Q4_K_S", 4.6), 15: ("Q4_K_M", 4.9), 16: ("Q5_K_S", 5.5), 17: ("Q5_K_M", 5.7),
    18: ("Q6_K", 6.6), 19: ("IQ2_XXS", 2.1), 20: ("IQ2_XS", 2.3), 21: ("Q2_K_S", 2.7), 22: ("IQ3_XS", 3.3),
    23: ("IQ3_XXS", 3.1), 24: ("IQ1_S", 1.6), 25: ("IQ4_NL", 4.5), 26: ("IQ3_S", 3.4), 27: ("IQ3_M", 3.7),
    28: ("IQ2_S", 2.5), 29: ("IQ2_M", 2.7), 30: ("IQ4_XS", 4.3), 31: ("IQ1_M", 1.8), 32: ("BF16", 16.0),
    36: ("TQ1_0", 1.7), 37: ("TQ2_0", 2.1), 38: ("MXFP4_MOE", 4.3),
}  # fmt: skip
_ARRAY_KEYS = ("tokens", "token_type", "merges", "scores", "languages", "tags", "datasets")
_SAFETENSOR_BITS = {"F64": 64, "F32": 32, "BF16": 16, "F16": 16, "I64": 64, "I32": 32, "U32": 32, "I8": 8, "U8": 8}


def human_number(count: int) -> str:
    """A parameter count as Ollama prints it (format.HumanNumber): 134515008 -> "134.52M", 7e9 -> "7B",
    7.6e9 -> "7.6B", 1500 -> "2K" [T]."""
    for limit, suffix, places in ((1e9, "B", 1), (1e6, "M", 2), (1e3, "K", 0)):
        if count >= limit:
            number = count / limit
            whole = number == math.floor(number) or not places  # no decimals for a whole number, none for K
            return f"{number:.0f}{suffix}" if whole else f"{number:.{places}f}{suffix}"
    return str(count)


def _stat_identity(path: Path) -> tuple[int, float, str]:
    """(size in bytes, mtime in epoch seconds, digest): a stable sha256 of path, size and mtime (no hashing of
    gigabytes: the digest names this file at this version, as Ollama's digest names a manifest)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    size, mtime_ns = 0, 0
    for file in files:
        info = file.stat()
        size += info.st_size
        mtime_ns = max(mtime_ns, info.st_mtime_ns)
    digest = hashlib.sha256(f"{path.resolve()}\0{size}\0{mtime_ns}".encode()).hexdigest()
    return size, mtime_ns / 1e9, digest


def model_details(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What Ollama's listings say of a model, read from a GGUF file (its header, through llmctl.memory.gguf,
    never the tensors) or an MLX folder (config.json, tokenizer_config.json, safetensors headers).

    Returns a dict with any of: path, format ("gguf" | "safetensors"), family, families, architecture,
    parameter_count (int), parameter_size ("135M", "7.6B"), quantization_level ("Q4_K_M", "int4", "BF16"),
    size (bytes on disk), modified_at (epoch seconds), digest (64 hex), context_length, embedding_length,
    template (the chat template), capabilities (completion | embedding, tools, thinking, vision, insert) and
    model_info (for /api/show). Never raises: what cannot be read is left out. Cached per (path, size, mtime).
    """
    location = Path(path)
    try:
        info = location.stat()
    except OSError:
        return {"path": str(location)}
    return dict(_details_cached(str(location), info.st_size, info.st_mtime_ns))


@lru_cache(maxsize=256)
def _details_cached(path: str, _size: int, _mtime_ns: int) -> dict[str, Any]:
    location = Path(path)
    details: dict[str, Any] = {"path": path}
    try:
        details["size"], details["modified_at"], details["digest"] = _stat_identity(location)
        details.update(_mlx_details(location) if location.is_dir() else _gguf_details(location))
    except (OSError, ValueError, GgufError, KeyError, TypeError, struct.error):
        pass  # partial details: a listing must never fail on one unreadable model
    return details


def _capabilities(template: str, embedding: bool, vision: bool, insert: bool) -> list[str]:
    """Ollama's rules (server/images.go): tools when the template mentions "tools" or "tool_call", thinking when
    it has `<think>` and `</think>` (or another sign of reasoning, _THINKING_MARKS), embedding instead of
    completion for pooling models [R]."""
    capabilities = ["embedding" if embedding else "completion"]
    if "tools" in template or "tool_call" in template:
        capabilities.append("tools")
    if insert:
        capabilities.append("insert")
    if vision:
        capabilities.append("vision")
    if ("<think>" in template and "</think>" in template) or any(mark in template for mark in _THINKING_MARKS):
        capabilities.append("thinking")
    return capabilities


# Signs of reasoning in a Jinja chat template besides <think> tags, so that `think` is not refused (400) for a
# model that can: Qwen3/DeepSeek's `enable_thinking` switch, llama.cpp's `reasoning_content`, gpt-oss's harmony
# channels and `message.thinking`, Mistral's [THINK], Seed's <seed:think>.
_THINKING_MARKS = ("enable_thinking", "reasoning_content", "<|channel|>", ".thinking", "[THINK]", "<seed:think>")


def _gguf_details(path: Path) -> dict[str, Any]:
    info = read_gguf(path)
    meta = info.metadata
    arch = str(meta.get("general.architecture", ""))
    out: dict[str, Any] = {"format": "gguf", "family": arch, "families": [arch] if arch else None, "architecture": arch}
    name, bits = _FILE_TYPES.get(_int(meta.get("general.file_type", -1)), ("", 0.0))
    if "general.file_type" in meta:
        out["quantization_level"] = name or "unknown"
    label = meta.get("general.size_label")
    if isinstance(label, str) and label:
        out["parameter_size"] = label
    elif bits:
        estimate = info.tensor_bytes * 8 / bits
        rounded = round(estimate, 1 - math.floor(math.log10(estimate))) if estimate >= 1 else 0
        out["parameter_count"] = int(rounded)
        out["parameter_size"] = human_number(int(rounded))
    for key in ("context_length", "embedding_length"):
        if isinstance(info.arch_value(key), int):
            out[key] = info.arch_value(key)
    template = meta.get("tokenizer.chat_template")
    out["template"] = template if isinstance(template, str) else ""
    insert = any(f"tokenizer.ggml.{part}_token_id" in meta for part in ("fim_pre", "fim_suf", "prefix", "suffix"))
    embedding = f"{arch}.pooling_type" in meta
    out["capabilities"] = _capabilities(out["template"], embedding, "vision.block_count" in meta, insert)
    model_info: dict[str, Any] = {}
    for key, value in meta.items():
        if key in ("general.name", "tokenizer.chat_template"):
            continue  # Ollama's show leaves these out [R]
        long_array = key.rsplit(".", 1)[-1] in _ARRAY_KEYS or (isinstance(value, list) and len(value) > 5)
        model_info[key] = [] if long_array else value  # Ollama empties long arrays unless verbose [R]
    if out.get("parameter_count"):
        model_info["general.parameter_count"] = out["parameter_count"]
    out["model_info"] = model_info
    return out


def _safetensors_count(folder: Path, quantization: dict[str, Any]) -> tuple[int, str]:
    """(parameters, dtype of the largest unquantized tensor) from the safetensors headers (8-byte length, then
    JSON). A packed weight of a quantized MLX model holds `group_size` parameters per entry of its `.scales`
    (bits may differ per layer: mlx-lm puts per-layer settings under the layer's name in `quantization`);
    scales and biases are not parameters."""
    shapes: dict[str, tuple[str, list[int]]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with file.open("rb") as stream:
            length = struct.unpack("<Q", stream.read(8))[0]
            if length > 100 * 1024 * 1024:
                raise ValueError("implausible safetensors header")
            header = json.loads(stream.read(length))
        for name, tensor in header.items():
            if name != "__metadata__" and isinstance(tensor, dict):
                shapes[name] = (str(tensor.get("dtype", "")), list(tensor.get("shape") or []))
    count, dtype, largest = 0, "", 0
    for name, (kind, shape) in shapes.items():
        if name.endswith((".scales", ".biases")):
            continue
        stem = name.removesuffix(".weight")
        scales = shapes.get(f"{stem}.scales")
        if scales is not None:
            layer = quantization.get(stem)
            group = _int((layer if isinstance(layer, dict) else quantization).get("group_size")) or 64
            count += math.prod(scales[1]) * group
        else:
            count += math.prod(shape)
            if math.prod(shape) > largest:  # the weights' type, not a norm's
                dtype, largest = kind, math.prod(shape)
    return count, dtype


def _mlx_details(folder: Path) -> dict[str, Any]:
    config = json.loads((folder / "config.json").read_text())
    text_config = config.get("text_config") or {}
    arch = str(config.get("model_type") or text_config.get("model_type") or "")
    out: dict[str, Any] = {"format": "safetensors", "family": arch, "families": [arch] if arch else None}
    out["architecture"] = arch
    quantization = config.get("quantization") or config.get("quantization_config") or {}
    bits = _int(quantization.get("bits")) or None
    count, dtype = _safetensors_count(folder, quantization)
    if bits:
        mode = quantization.get("mode") or "affine"
        out["quantization_level"] = f"int{bits}" if mode == "affine" else str(mode)  # Ollama's lower-case names
    elif dtype:
        out["quantization_level"] = dtype
    if count:
        out["parameter_count"] = count
        out["parameter_size"] = human_number(count)
    context = config.get("max_position_embeddings") or text_config.get("max_position_embeddings")
    if isinstance(context, int):
        out["context_length"] = context
    if isinstance(config.get("hidden_size"), int):
        out["embedding_length"] = config["hidden_size"]
    out["template"] = _mlx_template(folder)
    vision = "vision_config" in config
    out["capabilities"] = _capabilities(out["template"], False, vision, False)
    info: dict[str, Any] = {"general.architecture": arch}
    if count:
        info["general.parameter_count"] = count
    for key in ("context_length", "embedding_length"):
        if key in out:
            info[f"{arch}.{key}"] = out[key]
    out["model_info"] = info
    return out


def _mlx_template(folder: Path) -> str:
    """The chat template: chat_template.jinja (newer transformers) or tokenizer_config.json's chat_template."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(errors="replace")
    config_path = folder / "tokenizer_config.json"
    if not config_path.is_file():
        return ""
    template = json.loads(config_path.read_text()).get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        template = next((t.get("template") for t in template if t.get("name") == "default"), "")
    return template if isinstance(template, str) else ""


# --- listings -----------------------------------------------------------------------------------------------


def ollama_details(details: dict[str, Any]) -> dict[str, Any]:
    """model_details -> Ollama's `details` object {parent_model, format, family, families, parameter_size,
    quantization_level} [A][T]; unknown values are empty strings, as Ollama's are."""
    return {
        "parent_model": "",
        "format": details.get("format", ""),
        "family": details.get("family", ""),
        "families": details.get("families"),
        "parameter_size": details.get("parameter_size", ""),
        "quantization_level": details.get("quantization_level", ""),
    }


def _modified(details: dict[str, Any]) -> str:
    return rfc3339(int(float(details.get("modified_at") or 0) * 1e9))


def _digest(name: str, details: dict[str, Any]) -> str:
    return details.get("digest") or hashlib.sha256(name.encode()).hexdigest()


def tag_entry(name: str, details: dict[str, Any]) -> dict[str, Any]:
    """One `/api/tags` entry: `{name, model (both "NAME:latest"), modified_at, size, digest, details}` [A][T]."""
    shown = display_name(name)
    return {
        "name": shown,
        "model": shown,
        "modified_at": _modified(details),
        "size": _int(details.get("size")),
        "digest": _digest(name, details),
        "details": ollama_details(details),
    }


def ps_entry(
    name: str,
    details: dict[str, Any],
    size: int,
    size_vram: int,
    expires_at: float | None,
    context_length: int | None,
) -> dict[str, Any]:
    """One `/api/ps` entry [T][R]: `size` the measured bytes, `size_vram` GPU memory (or the footprint on a
    Mac), `expires_at` epoch seconds of the ttl's end (None: never, shown far in the future as Ollama shows
    a negative keep_alive), `context_length` tokens (falls back to the model's)."""
    shown = display_name(name)
    expires_ns = time.time_ns() + _MAX_NS if expires_at is None else int(expires_at * 1e9)
    return {
        "name": shown,
        "model": shown,
        "size": int(size),
        "digest": _digest(name, details),
        "details": ollama_details(details),
        "expires_at": rfc3339(expires_ns),
        "size_vram": int(size_vram),
        "context_length": _int(context_length or details.get("context_length")),
    }


def _parameter_lines(parameters: dict[str, Any]) -> str:
    """Modelfile PARAMETER text as Ollama's show prints it: `name` padded to 30, then the Go-quoted value [R]."""
    lines = []
    for key, value in parameters.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{key:<30} {json.dumps(item) if isinstance(item, str) else item}")
    return "\n".join(lines)


def show_response(
    name: str,
    details: dict[str, Any],
    *,
    parameters: dict[str, Any] | None = None,
    system: str = "",
    vision: bool = False,
    context_length: int | None = None,
) -> dict[str, Any]:
    """The `/api/show` reply [A][R]: modelfile, parameters (text), template, system, details, model_info (with
    `general.architecture` and `<arch>.context_length`, which clients read for the window), capabilities and
    modified_at. `vision` adds the capability (e.g. llama-server started with an mmproj); `context_length`
    (the instance's, when set) overrides the model's trained length; `parameters` are Modelfile-style
    settings to show (e.g. {"num_ctx": 8192, "stop": [...]})."""
    arch = details.get("architecture") or details.get("family") or ""
    model_info = dict(details.get("model_info") or {})
    if arch:
        model_info.setdefault("general.architecture", arch)
        window = context_length or details.get("context_length")
        if window:
            model_info[f"{arch}.context_length"] = int(window)
    capabilities = list(details.get("capabilities") or ["completion"])
    if vision and "vision" not in capabilities:
        capabilities.append("vision")
    template = details.get("template") or ""
    parameter_text = _parameter_lines(parameters or {})
    modelfile = [f"# Modelfile generated by llmctl for {display_name(name)}", f"FROM {details.get('path', name)}"]
    if template:
        modelfile.append(f'TEMPLATE """{template}"""')
    if system:
        modelfile.append(f'SYSTEM """{system}"""')
    modelfile += [f"PARAMETER {line}" for line in parameter_text.splitlines()]
    out = {
        "modelfile": "\n".join(modelfile) + "\n",
        "parameters": parameter_text,
        "template": template,
        "details": ollama_details(details),
        "model_info": model_info,
        "capabilities": capabilities,
        "modified_at": _modified(details),
    }
    if system:
        out["system"] = system
    return out
