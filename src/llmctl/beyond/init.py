"""`llmctl init`: a commented starter instances.yaml from what this machine already has.

It looks for the servers (llama-server, mlx_lm.server, ollama) and for models where people keep
them: GGUF files and MLX model folders in the current folder (where a newcomer just downloaded one),
under ~/models, the Hugging Face cache and LM Studio's models folder; MLX models in the Hugging Face
cache; Ollama's pulled models. Each becomes an instance on a free port.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llmctl.backends import backend_for
from llmctl.errors import BinaryNotFound
from llmctl.system.ports import port_is_free

FIRST_PORT = 8081
GATEWAY_PORT = 8080
MAX_INSTANCES = 6  # a starter file, not an inventory: the rest is listed in a comment
MAX_ENTRIES_WALKED = 20_000
MAX_DEPTH = 6
_NOT_A_NAME = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class FoundModel:
    backend: str
    model: str  # a path, a hub id or an Ollama name
    where: str  # which folder it was found in, for the comment
    size: int = 0


@dataclass
class Discovery:
    programs: dict[str, str | None] = field(default_factory=dict)
    models: list[FoundModel] = field(default_factory=list)


def model_folders(home: Path, env: dict[str, str], cwd: Path | None = None) -> list[tuple[str, Path]]:
    """(label, folder) pairs where GGUF and MLX models usually live, the current folder `cwd` first."""
    hf_home = Path(env["HF_HOME"]).expanduser() if env.get("HF_HOME") else home / ".cache" / "huggingface"
    return [
        *([("the current folder", cwd)] if cwd is not None else []),
        ("~/models", home / "models"),
        ("the Hugging Face cache", hf_home / "hub"),
        ("LM Studio", home / ".lmstudio" / "models"),
        ("LM Studio (older)", home / ".cache" / "lm-studio" / "models"),
    ]


def discover(home: Path | None = None, env: dict[str, str] | None = None, cwd: Path | None = None) -> Discovery:
    """The servers installed and the models found (`cwd`: the current folder unless given); a model
    found in two places (a link, the current folder inside ~/models) is listed once."""
    home = home or Path.home()
    cwd = Path.cwd() if cwd is None else cwd
    env = dict(os.environ if env is None else env)
    found = Discovery()
    for name in ("llama.cpp", "mlx", "ollama"):
        try:
            found.programs[name] = backend_for(name).find_program(None)[0]
        except BinaryNotFound:
            found.programs[name] = None
    seen: set[str] = set()
    for label, folder in model_folders(home, env, cwd):
        for model in _models_in(folder, label):
            key = model.model if model.backend == "mlx" else os.path.realpath(model.model)
            if key not in seen:
                seen.add(key)
                found.models.append(model)
    found.models += _ollama_models(home, env)
    return found


def _models_in(folder: Path, label: str) -> Iterator[FoundModel]:
    for path in _walk(folder):
        name = path.name
        if name.endswith(".gguf") and "mmproj" not in name.lower() and not _later_split_part(name):
            yield FoundModel("llama.cpp", str(path), label, _size(path))
        elif name == "config.json" and any(path.parent.glob("*.safetensors")):
            # Every file of the folder, as doctor and /api/tags count it (not deeper: the walk is bounded).
            size = sum(_size(item) for item in path.parent.iterdir() if item.is_file())
            yield FoundModel("mlx", _hub_id(path.parent) or str(path.parent), label, size)


def _walk(folder: Path) -> Iterator[Path]:
    """Files under `folder` (links followed: the Hugging Face cache is links), bounded in depth and count."""
    walked = 0
    base_depth = len(folder.parts)
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        walked += 1  # folders count too: a tree of links pointing back up must not be walked for ever
        if len(Path(root).parts) - base_depth >= MAX_DEPTH or walked > MAX_ENTRIES_WALKED:
            dirs.clear()
        for name in sorted(files):
            walked += 1
            if walked > MAX_ENTRIES_WALKED:
                return
            yield Path(root) / name


def _hub_id(folder: Path) -> str | None:
    """`.../hub/models--mlx-community--NAME/snapshots/HASH` is `mlx-community/NAME`."""
    for part in folder.parts:
        if part.startswith("models--") and part.count("--") >= 2:
            return part.removeprefix("models--").replace("--", "/", 1)
    return None


def _later_split_part(name: str) -> bool:
    """`model-00002-of-00003.gguf`: llama-server is given the first part only."""
    match = re.search(r"-(\d{5})-of-\d{5}\.gguf$", name)
    return bool(match and match.group(1) != "00001")


def _ollama_models(home: Path, env: dict[str, str]) -> list[FoundModel]:
    root = Path(env["OLLAMA_MODELS"]).expanduser() if env.get("OLLAMA_MODELS") else home / ".ollama" / "models"
    library = root / "manifests" / "registry.ollama.ai" / "library"
    if not library.is_dir():
        return []
    return [
        FoundModel("ollama", f"{tag.parent.name}:{tag.name}", "Ollama's library")
        for tag in sorted(library.glob("*/*"))
        if tag.is_file()
    ]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# -- writing the file ----------------------------------------------------------------------


def render(found: Discovery, host: str = "127.0.0.1") -> str:
    """The starter config's text: valid as written, commented for the person who reads it."""
    from llmctl.memory.budget import format_bytes

    ports: set[int] = set()  # the gateway's and each instance's: free now, and free of each other
    lines = [
        "# llmctl config, written by `llmctl init`. Edit freely; `llmctl check` validates it,",
        "# `llmctl doctor` checks the machine against it, `llmctl up` starts it.",
        "#",
        "# Servers found: "
        + ", ".join(f"{name} ({path})" if path else f"{name} (not found)" for name, path in found.programs.items()),
        "",
        "# One port for every model: requests name an instance (or an alias) in their `model` field.",
        f"gateway: {{port: {_free_port(GATEWAY_PORT, ports, host)}}}",
        "",
        "defaults:",
        "  restart: {policy: on-failure}",
        "  health: {start_timeout: 120}   # seconds without progress (downloads and loading count as progress)",
        "",
    ]
    usable = [model for model in found.models if found.programs.get(model.backend)]
    chosen, rest = usable[:MAX_INSTANCES], usable[MAX_INSTANCES:]
    if not chosen:
        lines += [
            "# No model was found in the current folder, ~/models, the Hugging Face cache, LM Studio's",
            "# folder or Ollama's library (or no server to run it). An instance looks like this:",
            "#",
            "#  - name: chat",
            "#    backend: llama.cpp          # or mlx, ollama, command",
            "#    model: ~/models/some-model.Q4_K_M.gguf",
            f"#    port: {FIRST_PORT}",
            "#    args: [-c, '8192']",
            "instances: []",
        ]
        return "\n".join(lines) + "\n"
    lines.append("instances:")
    names: set[str] = set()
    for index, model in enumerate(chosen):
        name = _name_for(model, names)
        port = _free_port(FIRST_PORT + index, ports, host)
        size = f", {format_bytes(model.size)}" if model.size else ""
        lines += [
            f"  # found in {model.where}{size}",
            f"  - name: {name}",
            f"    backend: {model.backend}",
            f"    model: {json.dumps(model.model.replace('$', '$$'))}",  # `$` is the config's variable sign
            f"    port: {port}",
        ]
        if model.backend == "llama.cpp":
            lines.append('    args: ["-c", "4096"]        # context size; see `llama-server --help`')
        if index > 0:
            lines.append("    on_demand: true   # started by its first request through the gateway, stopped when idle")
            lines.append("    ttl: 600")
        lines.append("")
    if rest:
        lines.append("# Also found (add them as instances above):")
        lines += [f"#   {model.backend}: {model.model}" for model in rest]
    return "\n".join(lines).rstrip("\n") + "\n"


def _name_for(model: FoundModel, taken: set[str]) -> str:
    stem = Path(model.model).name if model.backend != "ollama" else model.model.split(":", 1)[0]
    stem = stem.removesuffix(".gguf").split("--")[-1]
    base = _NOT_A_NAME.sub("-", stem).strip("-_").lower()[:40] or "model"
    if not base[0].isalnum():
        base = "m" + base
    name, counter = base, 2
    while name in taken:
        name, counter = f"{base}-{counter}", counter + 1
    taken.add(name)
    return name


def _free_port(start: int, taken: set[int], host: str) -> int:
    """The first port from `start` not in `taken` and unused on this machine (then added to `taken`)."""
    port = start
    while port in taken or not _unused(host, port):
        port += 1
    taken.add(port)
    return port


def _unused(host: str, port: int) -> bool:
    """Free on `host` and on no other address either: a server on [::1]:PORT would answer clients of
    `localhost:PORT` (tried first there) in place of ours, though 127.0.0.1:PORT binds."""
    if not port_is_free(host, port):
        return False
    for wildcard, family in (("0.0.0.0", socket.AF_INET), ("::", socket.AF_INET6)):
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind((wildcard, port))
            except OSError as exc:  # another error (no IPv6 on this machine): nothing listens there
                if exc.errno == errno.EADDRINUSE:
                    return False
    return True


def write(path: Path, text: str, force: bool) -> None:
    """Write the file; an existing one only with `force`. Raises FileExistsError otherwise."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(path, flags, 0o644)
    with os.fdopen(fd, "w") as file:
        file.write(text)
