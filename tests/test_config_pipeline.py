"""The config package is a one-way pipeline: read -> parse -> prepare -> validate -> locate.

Two checks keep it so. Statically, no module imports one that comes after it. At run time, loading
a config walks each step once, in order: a profiler records which llmctl.config module each call
lands in, and the walk may switch modules only a few times, whatever the number of problems (the
flat layout this replaced switched 14 times for three problems, one more back and forth per problem).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import grimp
import pytest

from llmctl.config.cache import load_config_cached
from llmctl.config.load import load_config
from llmctl.errors import ConfigError

# The pipeline's order: each module may import only those before it.
ORDER = [
    "llmctl.config.read",
    "llmctl.config.yamlsource",
    "llmctl.config.prep",
    "llmctl.config.schema",
    "llmctl.config.locate",
    "llmctl.config.load",
    "llmctl.config.cache",
]
STEPS = ORDER[:5]  # what load runs; load and cache hand the data on, so they are passed through more than once

# A walk is "cache > read > cache > load > yamlsource > prep > schema > load > locate" at most: 8
# switches, the same with 1 problem or 10. The bound leaves one spare.
MAX_SWITCHES = 9

VALID = """\
defaults:
  restart: {policy: always}
  env: {SHARED: "1"}
instances:
  - name: chat
    backend: llama.cpp
    model: m.gguf
    port: ${CHAT_PORT}
    env: {OWN: 2}
  - name: code
    backend: command
    command: python3 -m http.server ${CODE_PORT:-8182}
    port: 8182
    restart: no
"""
# Schema problems in three instances, a model file missing in two that are otherwise valid.
PROBLEMS = """\
instances:
  - {name: a, backend: llama.cpp, model: nowhere.gguf, port: 8100}
  - {name: b, backend: llama.cpp, model: m.gguf, port: 80}
  - {name: c, backend: mlx, model: org/m, port: 8102, colour: red}
  - {name: d, backend: llama.cpp, model: m.gguf, port: 8103, restart: {policy: sometimes}}
  - {name: e, backend: llama.cpp, model: missing.gguf, port: 8104}
"""


def test_config_modules_import_only_earlier_steps():
    graph = grimp.build_graph("llmctl", exclude_type_checking_imports=True, cache_dir=None)
    modules = graph.find_children("llmctl.config")
    assert modules == set(ORDER), "place every module of llmctl.config in ORDER"
    backwards = [
        f"{earlier} imports {later}"
        for position, earlier in enumerate(ORDER)
        for later in ORDER[position + 1 :]
        if graph.direct_import_exists(importer=earlier, imported=later)
    ]
    assert backwards == []


def walk(load: Callable[[], object]) -> list[str]:
    """The llmctl.config modules that calls land in while `load` runs, repeats merged."""
    modules: list[str] = []

    def record(frame, event, _arg) -> None:
        if event == "call":
            module = frame.f_globals.get("__name__", "")
            if module.startswith("llmctl.config.") and (not modules or modules[-1] != module):
                modules.append(module)

    sys.setprofile(record)
    try:
        load()
    except ConfigError:
        pass
    finally:
        sys.setprofile(None)
    return modules


@pytest.mark.parametrize("text", [VALID, PROBLEMS], ids=["valid", "problems"])
@pytest.mark.parametrize("cached", [False, True], ids=["load_config", "load_config_cached"])
def test_loading_walks_each_step_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, cached: bool):
    monkeypatch.setenv("CHAT_PORT", "8181")
    (tmp_path / "m.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    path = tmp_path / "instances.yaml"
    path.write_text(text)
    runs = iter(range(2))

    def load() -> object:  # a fresh cache folder each time: the pipeline runs behind the cache
        return load_config_cached(path, tmp_path / f"cache-{next(runs)}") if cached else load_config(path)

    walk(load)  # the first run imports what the steps import lazily; modules run as they load
    modules = walk(load)
    if text is PROBLEMS:
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert len(caught.value.problems) == 5
    steps = [module for module in modules if module in STEPS]
    assert steps == sorted(set(steps), key=STEPS.index), " > ".join(modules)  # each once, in order
    assert len(modules) - 1 <= MAX_SWITCHES, " > ".join(modules)
