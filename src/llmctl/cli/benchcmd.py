"""`llmctl bench`: the terminal side of llmctl.beyond.enginebench (options, progress bar, table, JSON, chart).

Exit codes: 0 every instance benched; 1 one failed (its row says why; the others still ran); 2 bad options or
names, or no gateway; 3 no supervisor runs (as `llmctl wait`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llmctl.errors import ConfigError

EXIT_FAILED = 1
# Requests at once per level, at most: each is a task and a connection of this process; more is a typo
# (`--concurrency 10000000000`), not a workload a single machine's engines serve.
MAX_CONCURRENCY = 1024
FILE_HELP = "Config file (default: $LLMCTL_CONFIG, then ./instances.yaml, then the running supervisor's)."


def parse_levels(text: str) -> tuple[int, ...]:
    """`1,4` -> (1, 4): request counts from 1 to MAX_CONCURRENCY, duplicates dropped, in the order given.
    ConfigError otherwise (ASCII digits only: str.isdigit also takes `²`, which int() refuses)."""
    levels = []
    for part in text.split(","):
        word = part.strip()
        if not (word.isascii() and word.isdigit()) or not 1 <= int(word) <= MAX_CONCURRENCY:
            raise ConfigError(
                f"--concurrency {text!r}: give whole numbers from 1 to {MAX_CONCURRENCY} separated by commas, like 1,4"
            )
        levels.append(int(word))
    return tuple(dict.fromkeys(levels))


def _at_least_one(option: str, value: int) -> int:
    if value < 1:
        raise ConfigError(f"{option} {value}: give a whole number of at least 1")
    return value


def bench(
    ctx: typer.Context,
    names: Annotated[
        Optional[list[str]],
        typer.Argument(
            help="Instances (default: every llama.cpp, mlx and ollama one).", show_default=False, metavar="NAME"
        ),
    ] = None,
    file: Annotated[
        Optional[Path], typer.Option("--file", "-f", help=FILE_HELP, show_default=False, metavar="FILE")
    ] = None,
    prompt_tokens: Annotated[
        int, typer.Option("--prompt-tokens", help="About how long the prompt is, in tokens.", metavar="N")
    ] = 512,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Tokens to generate per request.", metavar="M")] = 128,
    concurrency: Annotated[
        str, typer.Option("--concurrency", help="Requests at once, per level, comma-separated.", metavar="LEVELS")
    ] = "1,4",
    runs: Annotated[
        int, typer.Option("--runs", help="Runs of each measurement (the median is shown).", metavar="K")
    ] = 3,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    chart: Annotated[
        Optional[Path], typer.Option("--chart", help="Also draw the results into this PNG file.", metavar="FILE")
    ] = None,
) -> None:
    """Send the same chat workload to each instance through the gateway, one instance at a time, and compare:
    cold start, time to first token, prompt and generation tokens/s, tokens/s at each concurrency, peak memory."""
    from llmctl.beyond import enginebench
    from llmctl.control import service
    from llmctl.control.state import find_config_path
    from llmctl.paths import StatePaths

    workload = enginebench.Workload(
        prompt_tokens=_at_least_one("--prompt-tokens", prompt_tokens),
        max_tokens=_at_least_one("--max-tokens", max_tokens),
        concurrency=parse_levels(concurrency),
        runs=_at_least_one("--runs", runs),
    )
    if chart is not None:
        _check_chart_target(chart, enginebench.chart_available())
    paths = StatePaths.default()
    given = file or ctx.find_root().params.get("file")  # `llmctl -f FILE bench` gives it to the group
    config = service.load_config(find_config_path(given, paths))
    with _ProgressBar(enabled=sys.stderr.isatty()) as bar:
        document = enginebench.run(paths, config, list(names or []), workload, on_step=bar.update)
    # The results first: a chart that cannot be written (a full disk, a folder made read-only meanwhile)
    # must not lose a bench that took minutes.
    if json_output:
        from llmctl.cli.render import write_json

        write_json(document)
    else:
        write_table(document)
    failed = [row for row in document["results"] if row["error"]]
    for row in failed:
        sys.stderr.write(f"llmctl: {row['instance']}: {row['error']}\n")
    if chart is not None and not _write_chart(enginebench, document, chart, json_output):
        raise typer.Exit(EXIT_FAILED)
    raise typer.Exit(EXIT_FAILED if failed else 0)


def _write_chart(enginebench: Any, document: dict[str, Any], chart: Path, quiet: bool) -> bool:
    """Draw the chart; False (and one line on stderr) when the file cannot be written."""
    try:
        enginebench.draw_chart(document, chart)
    except OSError as exc:
        sys.stderr.write(f"llmctl: --chart {chart}: {exc.strerror or exc}\n")
        return False
    if not quiet:
        print(f"wrote {chart}")
    return True


def _check_chart_target(chart: Path, available: bool) -> None:
    """Fail before the bench, not after it: no matplotlib, or a file that could never be written."""
    if not available:
        from llmctl.beyond.enginebench import ChartUnavailable

        raise ChartUnavailable('--chart needs matplotlib: pip install -e ".[bench]"')
    folder = chart.expanduser().absolute().parent
    if not folder.is_dir():
        raise ConfigError(f"--chart {chart}: no folder {folder}")
    if chart.is_dir():
        raise ConfigError(f"--chart {chart}: is a folder; give a file name ending in .png")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"--chart {chart}: cannot write in {folder}")


class _ProgressBar:
    """A Rich progress bar on stderr (a terminal only): one bar for the whole bench, the instance and phase as text."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress: Any = None
        self.task: Any = None

    def __enter__(self) -> _ProgressBar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.progress.start()
        return self

    def update(self, step: Any) -> None:
        if self.progress is None:
            return
        description = f"{step.instance}: {step.phase}"
        if self.task is None:
            self.task = self.progress.add_task(description, total=step.total)
        self.progress.update(self.task, completed=step.done, description=description)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _memory(pools: dict[str, int] | None) -> str:
    from llmctl.cli.render import format_bytes

    return ", ".join(f"{pool} {format_bytes(size)}" for pool, size in pools.items()) if pools else "-"


def table_rows(document: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows (strings), one row per instance, a column per concurrency level."""
    levels = [str(level) for level in document["workload"]["concurrency"]]
    header = ["INSTANCE", "BACKEND", "COLD START", "TTFT", "PROMPT TOK/S", "GEN TOK/S"]
    header += [f"{level} AT ONCE TOK/S" for level in levels] + ["PEAK MEMORY"]
    rows = []
    for row in document["results"]:
        if row["error"]:
            rows.append([row["instance"], str(row["backend"]), "failed", *["-"] * (len(header) - 3)])
            continue
        cold = row["cold_start_s"]
        rows.append(
            [
                row["instance"],
                str(row["backend"]),
                "-" if cold is None else f"{cold:.2f} s",
                "-" if row["ttft_ms"] is None else f"{row['ttft_ms']:.0f} ms",
                _number(row["prompt_tokens_per_s"]),
                _number(row["completion_tokens_per_s"]),
                *[_number((row["concurrency"].get(level) or {}).get("completion_tokens_per_s")) for level in levels],
                _memory(row["peak_memory_bytes"]),
            ]
        )
    return header, rows


def write_table(document: dict[str, Any]) -> None:
    """A Rich table on a terminal, aligned plain text otherwise; the workload in a line below."""
    header, rows = table_rows(document)
    work = document["workload"]
    counted = [r for r in document["results"] if not r["error"]]
    sizes = ", ".join(f"{r['instance']} {r['prompt_tokens']}+{r['completion_tokens']}" for r in counted)
    footer = (
        f"median of {work['runs']} runs; prompt ~{work['prompt_tokens']} tokens, up to {work['max_tokens']} "
        f"generated" + (f" (prompt+generated as the servers counted: {sizes})" if sizes else "")
    )
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(*header, caption=footer)
        for index, column in enumerate(table.columns):
            column.justify = "left" if index < 2 else "right"
        for cells in rows:
            table.add_row(*cells)
        Console().print(table)
        return
    widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]
    for cells in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip())
    print(footer)
