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
        "import llmctl.daemon, llmctl.control",  # the supervisor process
        "import llmctl.client, llmctl.paths, llmctl.cli.render",  # the `status` fast path
        "import llmctl.backends, llmctl.memory, llmctl.spec",  # the core the supervisor uses
    ],
)
def test_heavy_libraries_stay_out(statement):
    assert imported_after(statement) == []


def test_the_core_imports_no_terminal_library():
    assert not {"typer", "rich"} & set(imported_after("import llmctl.config, llmctl.service, llmctl.supervisor"))
