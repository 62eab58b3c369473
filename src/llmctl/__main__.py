"""Entry point of the `llmctl` command.

`llmctl status` runs in script loops, so its common forms are answered here with the standard
library, the control socket and json alone; anything else (help, --watch, no supervisor yet,
errors) goes to the full Typer CLI, which gives the same output more slowly.
"""

from __future__ import annotations

import sys


def _fast_status(argv: list[str]) -> int | None:
    """Exit code if `status [--json] [NAMES]` could be answered by a running supervisor, else None."""
    if not argv or argv[0] != "status":
        return None
    names: list[str] = []
    as_json = False
    for arg in argv[1:]:
        if arg == "--json":
            as_json = True
        elif arg.startswith("-"):
            return None  # options the fast path does not handle: -f, --watch, --help, ...
        else:
            names.append(arg)
    if not as_json and sys.stdout.isatty():
        return None  # a terminal gets the Rich table
    from . import client
    from .errors import LlmctlError
    from .paths import StatePaths

    try:
        answer = client.request(StatePaths.default(), {"op": "status"}, timeout=10.0)
    except LlmctlError:
        return None
    instances = answer["instances"]
    if names:
        by_name = {instance["name"]: instance for instance in instances}
        if any(name not in by_name for name in names):
            return None
        instances = [by_name[name] for name in dict.fromkeys(names)]
    from .cli.render import write_status

    status = {"supervisor": answer["supervisor"], "system": answer.get("system"), "instances": instances}
    write_status(status, as_json=as_json)
    return 0


def main() -> None:
    code = _fast_status(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from .cli.app import run

    run()


if __name__ == "__main__":
    main()
