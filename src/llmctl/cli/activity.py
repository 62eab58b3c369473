"""`llmctl activity`: the requests the gateway served, with their tokens and speed (from the state folder's
activity file; no supervisor or gateway needs to run). Registered on the app in llmctl.cli.app."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional, TextIO

import typer

COLUMNS = (
    "TIME",
    "INSTANCE",
    "API",
    "STATUS",
    "TTFT_MS",
    "PROMPT_TOK",
    "COMPL_TOK",
    "PROMPT_TOK/S",
    "COMPL_TOK/S",
    "DURATION_MS",
)
MIN_WIDTHS = (19, 12, 6, 6, 7, 10, 9, 12, 11, 11)  # room for what -f prints after the first rows
DEFAULT_ROWS = 20


def activity(
    ctx: typer.Context,
    names: Annotated[
        Optional[list[str]], typer.Argument(help="Instance names (default: all).", show_default=False, metavar="NAME")
    ] = None,
    lines: Annotated[
        int, typer.Option("--lines", "-n", help="How many of the last requests to show.", min=0, metavar="N")
    ] = DEFAULT_ROWS,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing requests as they come.")] = False,
    file: Annotated[
        Optional[Path],
        typer.Option("--file", help="Config file (for the instance names).", show_default=False, metavar="FILE"),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help='Print {"version": 1, "requests": [...]} (with -f: one row a line).')
    ] = False,
) -> None:
    """Show the last requests through the gateway: time, instance, API, status, time to first token,
    prompt and completion tokens, tokens/s. The upstream's own figures (usage, llama.cpp timings) when it
    gives them; else measured by the gateway on the stream."""
    from llmctl.logs.activity_file import RowFollower, last_rows
    from llmctl.paths import StatePaths

    path = StatePaths.default().activity_log
    wanted = set(names) if names else None
    if wanted:
        given = file or ctx.find_root().params.get("file")  # `llmctl -f FILE activity` gives it to the group
        _check_names(list(dict.fromkeys(names or [])), path, given)
    out = sys.stdout
    if not follow:
        rows = last_rows(path, lines, wanted)
        if json_output:
            from llmctl.cli import render

            render.write_json({"version": 1, "requests": rows}, out)
        else:
            write_table(rows, out)
        return
    follower = RowFollower(path, lines, wanted)
    widths = _widths(follower.backlog)
    try:
        _write_rows(follower.backlog, out, widths, json_output, header=True)
        for row in follower:
            _write_rows([row], out, widths, json_output, header=False)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def _write_rows(rows: list[dict[str, Any]], out: TextIO, widths: list[int], as_json: bool, header: bool) -> None:
    """Rows as they are followed: JSON, one a line, or table lines under a header printed once."""
    import json

    if as_json:
        out.writelines(json.dumps(row) + "\n" for row in rows)
    else:
        if header:
            out.write(_line(list(COLUMNS), widths) + "\n")
        out.writelines(_line(_cells(row), widths) + "\n" for row in rows)
    out.flush()


def _check_names(names: list[str], path: Path, file: Path | None) -> None:
    """Every name must be an instance of the config in use, or have rows in the file: else exit 2."""
    from llmctl.control.state import find_config_path
    from llmctl.errors import ConfigError
    from llmctl.logs.activity_file import instances_seen
    from llmctl.paths import StatePaths

    known = instances_seen(path)
    config_path = find_config_path(file, StatePaths.default())
    if config_path.exists():
        from llmctl.control import service

        known |= set(service.load_config(config_path).names)
    for name in names:
        if name not in known:
            listed = ", ".join(sorted(known)) or "none"
            raise ConfigError(f"no instance named {name!r} in the config or the activity (instances: {listed})")


def _number(value: object, digits: int) -> str:
    """A figure with `digits` decimals; `-` for null (unknown)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    return str(value) if isinstance(value, int) and not digits else f"{value:.{digits}f}"


def _cells(row: dict[str, Any]) -> list[str]:
    return [
        _when(row.get("time")),
        _text(row.get("instance")),
        _text(row.get("api")),
        _number(row.get("status"), 0),
        _number(row.get("ttft_ms"), 0),
        _number(row.get("prompt_tokens"), 0),
        _number(row.get("completion_tokens"), 0),
        _number(row.get("prompt_tokens_per_s"), 1),
        _number(row.get("completion_tokens_per_s"), 1),
        _number(row.get("duration_ms"), 0),
    ]


def _when(moment: object) -> str:
    """Epoch seconds as local `YYYY-MM-DD HH:MM:SS`; `-` for what is not a time the platform can show
    (a corrupt row: a string, NaN, 1e300 or a year before 1 raise in time.localtime or strftime)."""
    if isinstance(moment, bool) or not isinstance(moment, (int, float)):
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))
    except (OverflowError, ValueError, OSError):
        return "-"


def _text(value: object) -> str:
    """A text cell: control characters as escapes; `-` for what is not text (a corrupt row)."""
    from llmctl.cli.render import visible

    return visible(value) if isinstance(value, str) else "-"


def _widths(rows: list[dict[str, Any]]) -> list[int]:
    table = [list(COLUMNS)] + [_cells(row) for row in rows]
    return [max(MIN_WIDTHS[i], *(len(cells[i]) for cells in table)) for i in range(len(COLUMNS))]


def _line(cells: list[str], widths: list[int]) -> str:
    # Text columns left, figures right, as `ps` aligns them.
    aligned = [
        cell.ljust(width) if i < 3 else cell.rjust(width)
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
    ]
    return "  ".join(aligned).rstrip()


def write_table(rows: list[dict[str, Any]], out: TextIO, widths: list[int] | None = None) -> None:
    """A header and one line a row; `-` where a figure is unknown."""
    widths = widths or _widths(rows)
    out.write(_line(list(COLUMNS), widths) + "\n")
    for row in rows:
        out.write(_line(_cells(row), widths) + "\n")
