"""What each entry point imports: the supervisor lives as long as the servers and must stay small,
and `llmctl status` runs in script loops and must stay fast. Heavy libraries stay out of both."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("pydantic", "yaml", "httpx", "typer", "rich", "numpy")


def imported_after(statement: str) -> list[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return result.stdout.split()


@pytest.mark.parametrize(
    "statement",
    [
        "import llmctl.control.daemon, llmctl.control.server",  # the supervisor process
        "import llmctl.gateway.__main__",  # the gateway process
        "import llmctl.control.client, llmctl.paths, llmctl.cli.render",  # the `status` fast path
        "import llmctl.backends, llmctl.memory.measure, llmctl.spec",  # the core the supervisor uses
        "import llmctl.control.service, llmctl.config.cache, llmctl.cli.report",  # the `up` fast path
    ],
)
def test_heavy_libraries_stay_out(statement):
    assert imported_after(statement) == []


def test_the_core_imports_no_terminal_library():
    statement = "import llmctl.config.load, llmctl.control.service, llmctl.control.supervisor, llmctl.gateway.server"
    assert not {"typer", "rich"} & set(imported_after(statement))


def test_the_up_fast_path_reuses_a_validated_config_without_the_schema(tmp_path, monkeypatch):
    """A cached config is read back without importing pydantic or YAML; an edit is validated again."""
    config = tmp_path / "instances.yaml"
    config.write_text("instances:\n  - {name: a, backend: command, command: [x], port: 9001}\n")
    code = f"""
import sys
from pathlib import Path
from llmctl.config.cache import load_config_cached
config = load_config_cached(Path({str(config)!r}), Path({str(tmp_path / "cache")!r}))
print(config.names, "pydantic" in sys.modules)
"""
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert first == ["['a']", "True"] and second == ["['a']", "False"]
    config.write_text("instances:\n  - {name: b, backend: command, command: [x], port: 9001}\n")
    third = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert third == ["['b']", "True"]
    monkeypatch.setenv("PORT_FROM_ENV", "9002")
    config.write_text("instances:\n  - {name: c, backend: command, command: [x], port: '${PORT_FROM_ENV}'}\n")
    env_code = code.replace("print(config.names", "print(config.instances[0].port, config.names")

    def run() -> list[str]:
        return subprocess.run(
            [sys.executable, "-c", env_code], capture_output=True, text=True, check=True
        ).stdout.split()

    assert run()[0] == "9002"
    monkeypatch.setenv("PORT_FROM_ENV", "9003")
    assert run()[0] == "9003"  # a referenced variable changed: not the cached config


def test_the_supervisor_never_loads_the_data_plane():
    """The gateway is a process of its own: the supervisor imports neither it nor its HTTP library."""
    code = (
        "import sys, llmctl.control.daemon, llmctl.control.supervisor, llmctl.control.gatewayproc\n"
        "print(sorted(m for m in sys.modules if m.startswith('llmctl.gateway') or m == 'aiohttp'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_help_imports_only_the_cli_libraries():
    """`llmctl --help` must stay well under 0.5 s (bench/run.py's help_time measures it): it loads
    Typer and Rich to print, and none of the libraries only the commands need."""
    code = (
        "import sys\nsys.argv = ['llmctl', '--help']\nfrom llmctl.__main__ import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = ('pydantic', 'yaml', 'httpx', 'numpy', 'aiohttp', 'psutil', 'llmctl.config.schema')\n"
        "print(' '.join(sorted(m for m in heavy if m in sys.modules)), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Usage" in result.stdout and result.stderr.strip() == ""
