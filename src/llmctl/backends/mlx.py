"""Apple MLX's `mlx_lm.server`: a local model folder or a Hugging Face id.

Its /health says ok as soon as the port is bound, while the model may still be loading (or have
failed to load, which leaves the process alive). Since mlx-lm 0.31.3 the model loads in the
generation thread, and requests queue behind the load; so readiness is proven by one real
one-token completion, while /health turning 503 (generation thread died) means it never will be.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from llmctl.backends.base import (
    READY_POLL_MAX,
    Backend,
    NotReady,
    get_status,
    load_timeout,
    poll_delays,
    resolve_model_path,
)
from llmctl.errors import StartError
from llmctl.logs.progress import huggingface_repo_folder
from llmctl.system.files import read_regular_file

if TYPE_CHECKING:
    from llmctl.spec import InstanceSpec
    from llmctl.system.http import HttpClient

_LOCAL_PREFIXES = ("/", "./", "../", "~")
# Run by file path under mlx_lm.server's own Python: it applies the instance's wired-limit share.
LAUNCHER = Path(__file__).with_name("mlx_launch.py")
# Python, MLX and the tokenizer stack before any weights: about 90 MiB measured on Linux.
PROCESS_BASE_BYTES = 100 * 1024 * 1024
# mlx_lm.server has no context flag; size the KV cache for a typical long chat.
ESTIMATE_CONTEXT = 4096


class MlxBackend(Backend):
    name = "mlx"
    program = "mlx_lm.server"
    install_hint = (
        'Install it with `pip install mlx-lm` (on Linux: `pip install "mlx[cpu]" mlx-lm`), or set binaries.mlx.'
    )
    load_failure_markers = ("generation thread died", "Traceback (most recent call last)")
    # http.server's access log, one line a probe: a third of a quiet server's log.
    probe_log_markers = ('"GET /health HTTP/1.1" 200',)

    def check_spec(self, spec: InstanceSpec) -> tuple[str, str] | None:
        model = spec.model or ""
        local = resolve_model_path(spec, model)
        if self._is_local(spec):
            if not (local / "config.json").is_file():
                return "model", f"MLX model folder not found (no config.json): {local}"
        elif model.count("/") != 1:
            return "model", f"{model!r} is neither a local folder nor a Hugging Face id like 'mlx-community/NAME'"
        return None

    def find_program(self, configured: str | None) -> list[str]:
        if configured:
            return super().find_program(configured)
        # The one installed beside llmctl's own Python first: that is the environment `pip install` used.
        beside = Path(sys.executable).parent / self.program
        if beside.is_file():
            return [str(beside)]
        return super().find_program(None)

    def upstream_model(self, spec: InstanceSpec) -> str | None:
        """None: mlx_lm.server reads any name but its own as a repository to download and swap to."""
        return None

    def version_command(self, program: list[str]) -> list[str]:
        """mlx_lm.server has no --version: ask the Python that runs it (its script's #! line)."""
        code = "import importlib.metadata as m; print('mlx-lm version', m.version('mlx-lm'))"
        return [*(script_python(program[0]) or [sys.executable]), "-c", code]

    def command(self, spec: InstanceSpec, program: list[str]) -> list[str]:
        """`mlx_lm.server ARGS`, or with wired-limit shares on (llmctl.memory.wired.shares_on), the
        same ARGS through mlx_launch.py under the script's Python, which applies the share given in
        the instance's environment; StartError when that Python cannot be read from the program."""
        from llmctl.memory.measure import IS_MACOS
        from llmctl.memory.wired import shares_on

        model = spec.model or ""
        local = resolve_model_path(spec, model)
        target = str(local) if local.exists() else model
        args = ["--model", target, "--host", spec.host, "--port", str(spec.port), *spec.args]
        if not shares_on(spec.wired_shares, IS_MACOS):
            return [*program, *args]
        python = script_python(program[0])
        if python is None:
            raise StartError(
                f"{program[0]} is not a Python script, so its wired-limit share cannot be applied: point "
                "binaries.mlx at the mlx_lm.server script, or set `mlx_wired_shares: false` in the config"
            )
        return [*python, str(LAUNCHER), "--", *args]

    def estimate_memory(self, spec: InstanceSpec) -> int | None:
        """Weights (the safetensors files) + an fp16 KV cache of ESTIMATE_CONTEXT tokens + the process."""
        folder = self._local_folder(spec)
        if folder is None:
            return None
        try:
            config = json.loads(read_regular_file(folder / "config.json", 1 << 20, follow_symlinks=True))
            weights = sum(path.stat().st_size for path in folder.glob("*.safetensors"))
        except (OSError, ValueError):
            return None
        config = config.get("text_config", config)
        layers = int(config.get("num_hidden_layers", 0))
        heads = int(config.get("num_attention_heads", 1)) or 1
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or int(config.get("hidden_size", 0)) // heads)
        kv_cache = 2 * layers * ESTIMATE_CONTEXT * kv_heads * head_dim * 2
        return weights + kv_cache + PROCESS_BASE_BYTES

    def _local_folder(self, spec: InstanceSpec) -> Path | None:
        """The model's folder: a local path, or a hub id's snapshot in the Hugging Face cache."""
        model = spec.model or ""
        local = resolve_model_path(spec, model)
        if local.is_dir():
            return local
        repo = huggingface_repo_folder(model, {**os.environ, **spec.env})
        snapshots = sorted((repo / "snapshots").glob("*/config.json"))
        return snapshots[-1].parent if snapshots else None

    def download_folders(self, spec: InstanceSpec, env: dict[str, str]) -> list[Path]:
        """A hub id is fetched into the Hugging Face cache by mlx_lm.server itself, before it loads."""
        if self._is_local(spec):
            return []
        return [huggingface_repo_folder(spec.model or "", env)]

    def _is_local(self, spec: InstanceSpec) -> bool:
        model = spec.model or ""
        return model.startswith(_LOCAL_PREFIXES) or resolve_model_path(spec, model).exists()

    def liveness_url(self, spec: InstanceSpec) -> str:
        return spec.health_url("/health")

    async def wait_ready(self, spec: InstanceSpec, http: HttpClient) -> None:
        import asyncio  # here, not at the top: see base.py's docstring

        # Since mlx-lm 0.31.3 /health answers 503 only once the generation thread has died (the model
        # failed to load): not "still loading", so a 503 fails the start at once.
        for delay in poll_delays():
            status = await get_status(http, self.liveness_url(spec), spec.health.timeout)
            if status == 200:
                break
            if status == 503:
                raise NotReady("the model failed to load (mlx_lm.server's generation thread died)")
            await asyncio.sleep(delay)
        completion = asyncio.ensure_future(self._first_token(spec, http))
        try:
            while not completion.done():
                if await get_status(http, self.liveness_url(spec), spec.health.timeout) == 503:
                    raise NotReady("the model failed to load (mlx_lm.server's generation thread died)")
                await asyncio.wait({completion}, timeout=READY_POLL_MAX)
            completion.result()
        finally:
            completion.cancel()

    async def _first_token(self, spec: InstanceSpec, http: HttpClient) -> None:
        """One-token completion of the default model (no `model` field: naming one may swap models)."""
        response = await http.post(
            spec.url + "/v1/completions",
            json={"prompt": "hi", "max_tokens": 1},
            timeout=load_timeout(spec),
        )
        if response.status_code != 200 or "choices" not in response.text:
            raise NotReady(f"a test completion answered HTTP {response.status_code}: {response.text[:200]}")


# pip writes this second line under `#!/bin/sh` when the interpreter's path is too long for a #!
# line or has spaces: `'''exec' "/path/to/python" "$0" "$@"`.
_SH_EXEC = "'''exec' "


def script_python(script: str) -> list[str] | None:
    """The interpreter command of a Python console script such as `mlx_lm.server`: its #! line,
    split (`/usr/bin/env python3` is two words), or the Python of pip's `#!/bin/sh` form; None
    when the file cannot be read or runs something other than Python."""
    try:
        with open(script, "rb") as file:
            head = file.read(1024).decode(errors="replace").splitlines()
    except OSError:
        return None
    if not head or not head[0].startswith("#!"):
        return None
    words = head[0][2:].split()
    if words == ["/bin/sh"] and len(head) > 1 and head[1].startswith(_SH_EXEC):
        try:
            words = shlex.split(head[1])[1:2]  # ['exec', PYTHON, '$0', '$@']
        except ValueError:
            return None
    names = [Path(word).name for word in words[:2]]  # the interpreter, or `env`'s argument
    return words if any(name.startswith(("python", "pypy")) for name in names) else None


BACKEND = MlxBackend()
