"""Entry point of the `llmctl` command.

`llmctl status` runs in script loops and `llmctl up` at the top of every dev script, so their
common forms are answered here without Typer (whose import alone costs ~100 ms): the standard
library, the control socket, the config cache and the plain renderer. Anything else (help,
--watch, --foreground, an option these parsers do not know) goes to the full Typer CLI, which
gives the same output more slowly.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not `from typing`: importing typing costs `llmctl status` 4 ms
if TYPE_CHECKING:
    from typing import Any


def _parse(argv: list[str], flags: set[str], valued: dict[str, str]) -> dict[str, Any] | None:
    """{"names": [...], flag: True, option: value}, or None for anything unusual."""
    parsed: dict[str, Any] = {"names": []}
    args = iter(argv)
    for arg in args:
        name, has_value, value = arg.partition("=")
        if arg in flags:
            parsed[arg] = True
        elif name in valued:
            value = value if has_value else next(args, None)
            if value is None:
                return None
            parsed[valued[name]] = value
        elif arg.startswith("-"):
            return None
        else:
            parsed["names"].append(arg)
    return parsed


def _fast_status(argv: list[str]) -> int | None:
    """Exit code if `status [--json] [NAMES]` could be answered by a running supervisor, else None."""
    parsed = _parse(argv, {"--json"}, {})
    if parsed is None or (not parsed.get("--json") and sys.stdout.isatty()):
        return None  # a terminal gets the Rich table
    from llmctl.control import client
    from llmctl.errors import LlmctlError
    from llmctl.paths import StatePaths

    try:
        answer = client.request(StatePaths.default(), {"op": "status"}, timeout=10.0)
    except LlmctlError:
        return None
    from llmctl.control.statusdoc import document, select

    instances, unknown = select(answer["instances"], parsed["names"])
    if unknown:
        return None  # the full path shows a configured instance the supervisor never ran, or the error
    from llmctl.cli.render import write_status

    status = document(answer["supervisor"], answer.get("system"), instances, answer.get("gateway"))
    write_status(status, as_json=bool(parsed.get("--json")))
    error = (answer["supervisor"] or {}).get("state_error")
    if error:  # a state folder the supervisor cannot write: as llmctl.cli.app's status says it
        sys.stderr.write(f"llmctl: error: {error}\n")
        return 3
    return 0


def _fast_up(argv: list[str]) -> int | None:
    parsed = _parse(argv, {"--json", "--no-wait", "--force"}, {"--timeout": "timeout", "--file": "file", "-f": "file"})
    if parsed is None:
        return None
    try:
        timeout = float(parsed["timeout"]) if "timeout" in parsed else None
    except ValueError:
        return None  # Typer words the error
    if timeout is not None and timeout < 0:
        return None
    from llmctl.cli.report import report_error, report_settled
    from llmctl.control import service
    from llmctl.control.state import find_config_path
    from llmctl.errors import LlmctlError
    from llmctl.paths import StatePaths

    as_json = bool(parsed.get("--json"))
    names: list[str] = parsed["names"]
    try:
        paths = StatePaths.default()
        actions, warnings = service.up(
            paths, find_config_path(parsed.get("file"), paths), names, bool(parsed.get("--force"))
        )
        for warning in warnings:
            sys.stderr.write(f"llmctl: warning: {warning}\n")
        if not as_json:
            for name in (name for name, action in actions.items() if action == "recreated"):
                sys.stderr.write(f"llmctl: {name}: its config changed; recreated\n")
        wait = not parsed.get("--no-wait")
        return report_settled(paths, names or list(actions), actions, as_json, wait=wait, timeout=timeout)
    except LlmctlError as exc:
        report_error(exc, as_json)
        return exc.exit_code


FAST_COMMANDS = {"status": _fast_status, "up": _fast_up}


def main() -> None:
    argv = sys.argv[1:]
    fast = FAST_COMMANDS.get(argv[0]) if argv else None
    try:
        code = fast(argv[1:]) if fast else None
        sys.stdout.flush()  # a write the pipe took only part of fails here, not at exit
    except KeyboardInterrupt:
        sys.stderr.write("llmctl: interrupted\n")
        code = 130
    except BrokenPipeError:  # `llmctl status | head -1`: ended as SIGPIPE ends `ls` there
        from llmctl.cli.render import end_by_sigpipe

        end_by_sigpipe()
    except OSError as exc:  # as the full CLI reports it: the file and the system's reason, one line
        sys.stderr.write(f"llmctl: error: {exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}\n")
        code = 1
    if code is not None:
        sys.exit(code)
    from llmctl.cli.app import run

    run()


if __name__ == "__main__":
    main()
