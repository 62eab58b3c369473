"""Shell completions are generated from the CLI (issue 11): the committed files must be what the
generator writes now, and bash completes instance names from the config in use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import LLMCTL, ROOT, free_port, llmctl, write_config

FILES = {"bash": "llmctl.bash", "zsh": "_llmctl", "fish": "llmctl.fish"}


@pytest.mark.parametrize("shell", sorted(FILES))
def test_committed_completions_are_not_stale(shell):
    generated = llmctl("completion", shell)
    assert generated.returncode == 0, generated.stderr
    committed = (ROOT / "completions" / FILES[shell]).read_text()
    assert generated.stdout == committed, (
        f"completions/{FILES[shell]} is stale: run `python scripts/gen_completions.py` and commit the result"
    )


def test_every_visible_command_and_option_is_in_the_scripts():
    from llmctl.cli.completion import model

    _, commands = model(_group())
    bash = (ROOT / "completions" / "llmctl.bash").read_text()
    fish = (ROOT / "completions" / "llmctl.fish").read_text()
    for command in commands:
        assert command.name in bash and f"-a {command.name}" in fish
        for option in command.options:
            assert all(name in bash for name in option.names)
    assert {c.name for c in commands} >= {"up", "status", "logs", "down", "wait", "url", "env", "doctor", "init"}
    assert "_names" not in {c.name for c in commands}  # the hidden helper is not offered


def test_a_changed_cli_makes_the_check_fail(tmp_path):
    """The staleness check compares whole files: an option added to the CLI shows up as a difference."""
    from llmctl.cli.completion import Option, _bash, model

    global_options, commands = model(_group())
    first = commands[0]
    changed = first.__class__(
        first.name, first.help, (*first.options, Option(("--brand-new",), "", False, False)), True
    )
    assert _bash(global_options, (changed, *commands[1:])) != (ROOT / "completions" / "llmctl.bash").read_text()


def bash_complete(line: str, cwd: Path, env: dict[str, str] | None = None) -> list[str]:
    script = (
        f"source {ROOT / 'completions' / 'llmctl.bash'}\n"
        f"COMP_LINE={line!r}\n"
        'read -ra COMP_WORDS <<< "$COMP_LINE"\n'
        '[[ $COMP_LINE == *" " ]] && COMP_WORDS+=("")\n'
        "COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n"
        "_llmctl\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    path = f"{Path(LLMCTL).parent}{os.pathsep}{os.environ['PATH']}"
    done = subprocess.run(
        ["bash", "--norc", "-c", script], cwd=cwd, capture_output=True, text=True,
        env={**os.environ, "PATH": path, **(env or {})}, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [word for word in done.stdout.splitlines() if word]


def test_bash_completes_commands_options_and_instance_names_from_the_config(tmp_path):
    port = free_port()
    entry = f"    backend: command\n    command: [{sys.executable}, -V]\n    port: {{port}}\n"
    write_config(
        tmp_path,
        "instances:\n"
        + f"  - name: alpha\n{entry.format(port=port)}"
        + f"  - name: beta\n{entry.format(port=port + 1)}",
    )
    other = tmp_path / "other.yaml"
    other.write_text(f"instances:\n  - name: gamma\n{entry.format(port=port + 2)}")

    assert "doctor" in bash_complete("llmctl do", tmp_path)
    assert set(bash_complete("llmctl logs ", tmp_path)) == {"alpha", "beta"}
    assert bash_complete("llmctl up b", tmp_path) == ["beta"]
    assert bash_complete(f"llmctl -f {other} restart ", tmp_path) == ["gamma"]
    assert bash_complete(f"llmctl logs --file {other} ", tmp_path) == ["gamma"]
    assert bash_complete("llmctl logs -f ", tmp_path) == ["alpha", "beta"]  # logs -f is --follow
    assert "--since" in bash_complete("llmctl logs --s", tmp_path)
    assert bash_complete("llmctl env ", tmp_path) == []
    assert bash_complete("llmctl service ", tmp_path) == ["install", "uninstall", "status"]
    assert bash_complete("llmctl export k", tmp_path) == ["kubernetes"]
    assert bash_complete("llmctl completion ", tmp_path) == ["bash", "zsh", "fish"]


def test_help_shows_no_python_types():
    """`--help` reads like a man page: no `<bool>` after a flag, no `<list[str]>` after an argument."""
    from llmctl.cli.completion import model

    _, commands = model(_group())
    for argv in [[], *([command.name] for command in commands), ["service", "install"]]:
        shown = llmctl(*argv, "--help", env={"COLUMNS": "120"})
        assert shown.returncode == 0, shown.stderr
        for word in ("<bool>", "<list", "<str>", "<path>", "<float", "<int"):
            assert word not in shown.stdout, (argv, word)


def _group():
    import typer

    from llmctl.cli.app import app

    return typer.main.get_command(app)
