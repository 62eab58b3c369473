"""Write completions/ from the CLI itself: `python scripts/gen_completions.py` after changing a command."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from llmctl.cli.app import app
from llmctl.cli.completion import generate

FILES = {"bash": "llmctl.bash", "zsh": "_llmctl", "fish": "llmctl.fish"}


def main() -> int:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "completions"
    folder.mkdir(exist_ok=True)
    for shell, name in FILES.items():
        (folder / name).write_text(generate(shell, typer.main.get_command(app)))
    print(f"wrote {', '.join(FILES.values())} in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
