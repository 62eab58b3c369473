"""Everything `llmctl` prints about instances: a Rich table on a terminal, aligned plain text off
one (no colour, no box drawing: scripts read it), JSON when asked.

Rich is imported only when a terminal will see it, so scripts do not pay for it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from llmctl.memory import budget

TYPE_CHECKING = False  # not `from typing`: importing typing costs `llmctl status` 4 ms
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TextIO


COLUMNS = (
    "NAME",
    "BACKEND",
    "MODEL",
    "STATE",
    "PID",
    "URL",
    "UPTIME",
    "RESTARTS",
    "MEMORY",
    "ESTIMATE",
    "CPU",
    "HEALTH",
)
STATE_STYLES = {
    "healthy": "green",
    "starting": "yellow",
    "unhealthy": "red",
    "backoff": "yellow",
    "failed": "bold red",
    "stopped": "dim",
    "standby": "dim",
    "stopping": "yellow",
}
OUTCOME_MARKS = {"ok": ("✔", "green"), "failed": ("✘", "red"), "pending": ("…", "yellow")}


def end_by_sigpipe() -> None:
    """Our output went into a closed pipe (`llmctl status | head -1`): end as `ls` does there, killed
    by SIGPIPE (the shell says 141), with nothing on stderr. Python ignores SIGPIPE so that the
    supervisor survives a peer that left; this restores the default only on the way out."""
    import contextlib
    import signal

    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit flush must not fail again
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
    sys.exit(128 + signal.SIGPIPE)  # only where the signal could not end us


def phase_text(progress: dict[str, Any] | None) -> str:
    """A start's phase as people read it. llmctl.logs.progress (and dataclasses, which it needs) is
    imported only when a start is shown: `status --json` in a script loop would pay ~8 ms for it."""
    if not progress:
        return ""
    from llmctl.logs.progress import phase_text as words

    return words(progress)


def format_bytes(value: int | None) -> str:
    return "-" if value is None else budget.format_bytes(value)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def short_model(model: str | None) -> str:
    if not model:
        return "-"
    return Path(model).name if "/" in model and model.startswith(("/", ".", "~")) else model


def shown_state(instance: dict[str, Any]) -> str:
    """The STATE column: `standby` for an on-demand instance waiting for its first request (its JSON
    state stays `stopped`)."""
    return "standby" if instance.get("standby") else instance["state"]


def _demand_note(instance: dict[str, Any]) -> str | None:
    """An on-demand instance's last use and ttl countdown, where the supervisor knows them."""
    if instance.get("ttl_left_s") is not None:
        return f"idle; stops in {format_duration(instance['ttl_left_s'])} (ttl)"
    if instance.get("standby"):
        idle = instance.get("idle_s")
        used = f"; last used {format_duration(idle)} ago" if idle is not None else ""
        return f"on demand: the gateway starts it at its first request{used}"
    return None


def row(instance: dict[str, Any]) -> list[str]:
    cpu = instance.get("cpu_percent")
    health = instance.get("health") or "-"
    note = _demand_note(instance)
    if note is not None:
        health = note if health == "-" else f"{health}; {note}"
    if instance.get("state") in ("failed", "backoff") and instance.get("last_error"):
        health = instance["last_error"]
    elif instance.get("progress"):
        health = phase_text(instance["progress"])
    elif instance.get("restarts") and instance.get("last_exit"):
        health += f" (last exit: {instance['last_exit'].removeprefix('the server ').removeprefix('was ')})"
    return [
        instance["name"],
        instance["backend"],
        short_model(instance.get("model")),
        shown_state(instance),
        str(instance["pid"]) if instance.get("pid") else "-",
        instance.get("url") or "-",
        format_duration(instance.get("uptime_s")),
        str(instance.get("restarts", 0)),
        _memory_cell(instance),
        format_bytes(instance.get("memory_estimate_bytes")),
        f"{cpu:.1f}%" if cpu is not None else "-",
        health,
    ]


def _memory_cell(instance: dict[str, Any]) -> str:
    value = instance.get("memory_bytes")
    if value is None:
        return "-"
    text = f"{format_bytes(value)} {instance.get('memory_kind', '')}".strip()
    gpu = instance.get("gpu_memory_bytes")
    return text + (f" + {format_bytes(gpu)} GPU" if gpu else "")


def system_line(status: dict[str, Any]) -> str | None:
    """`memory: 9.1 GiB used of 32.0 GiB (22.9 GiB available), swap 0 B · instances 6.2 GiB pss · budget 28.8 GiB`"""
    system = status.get("system")
    if not system:
        return None
    parts = [
        f"memory: {format_bytes(system['used_bytes'])} used of {format_bytes(system['total_bytes'])} "
        f"({format_bytes(system['available_bytes'])} available), swap {format_bytes(system['swap_used_bytes'])}",
        f"instances {format_bytes(system['instances_bytes'])} {system.get('memory_kind', '')}".rstrip(),
        f"budget {format_bytes(system.get('memory_budget_bytes'))}",
    ]
    if system.get("gpu_wired_limit_bytes"):
        parts.append(f"GPU wired limit {format_bytes(system['gpu_wired_limit_bytes'])}")
    gateway = status.get("gateway")
    line = " · ".join(parts)
    gpus = [pool for pool in system.get("pools") or [] if str(pool.get("pool", "")).startswith("gpu:")]
    if gpus:  # one line for the GPUs: what the instances use of each one's budget
        line += "\n" + " · ".join(
            f"{pool['pool']} {pool.get('device', 'GPU')}: instances {format_bytes(pool['used_bytes'])}"
            f" of budget {format_bytes(pool['budget_bytes'])}"
            + (
                f" ({format_bytes(pool['device_used_bytes'])} used of {format_bytes(pool['total_bytes'])})"
                if pool.get("total_bytes")
                else ""
            )
            for pool in gpus
        )
    if gateway:
        line += (
            f"\ngateway: {gateway['url']} · {gateway['requests']} requests · {gateway['in_flight']} in flight"
            f" · {gateway['queued']} waiting"
        )
    return line


def write_json(payload: dict[str, Any], out: TextIO = sys.stdout) -> None:
    json.dump(payload, out, indent=2)  # in pieces: one large write into a pipe closed midway may end silently
    out.write("\n")


def write_plain_table(instances: list[dict[str, Any]], out: TextIO = sys.stdout, footer: str | None = None) -> None:
    rows = [list(COLUMNS)] + [row(instance) for instance in instances]
    widths = [max(len(cells[i]) for cells in rows) for i in range(len(COLUMNS) - 1)]
    for cells in rows:
        out.write(
            "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=False)) + "  " + cells[-1] + "\n"
        )
    if footer:
        out.write(footer + "\n")


# Dropped first when the terminal is narrow; NAME, STATE and HEALTH (where reasons show) never are.
DROP_ORDER = ("ESTIMATE", "CPU", "BACKEND", "PID", "RESTARTS", "UPTIME", "MODEL", "URL", "MEMORY")
KEPT = ("NAME", "STATE", "HEALTH")
HEALTH_MIN_WIDTH = 24
BAR_WIDTH = 8
RIGHT_ALIGNED = ("PID", "RESTARTS", "MEMORY", "ESTIMATE", "CPU", "UPTIME")


def fitting_columns(rows: list[list[str]], width: int) -> list[str]:
    """The columns a table of `width` characters shows: all when they fit, else without the least
    useful ones, in DROP_ORDER, until the kept ones and a readable HEALTH fit (it wraps)."""
    shown = list(COLUMNS)

    def natural(column: str) -> int:
        return max(len(column), *(len(cells[COLUMNS.index(column)]) for cells in rows))

    def needed(columns: list[str]) -> int:
        widths = [min(HEALTH_MIN_WIDTH, natural(c)) if c == "HEALTH" else natural(c) for c in columns]
        return sum(widths) + 3 * len(columns) + 1  # Rich's padding and borders

    for column in DROP_ORDER:
        if needed(shown) <= width:
            break
        shown.remove(column)
    return shown


def memory_bar(instance: dict[str, Any], scale: int | None) -> str:
    """`███░░░░░ 1.2 GiB pss`: the instance's memory against the budget (or the machine)."""
    value = instance.get("memory_bytes")
    if value is None or not scale:
        return _memory_cell(instance)
    filled = min(BAR_WIDTH, round(BAR_WIDTH * value / scale))
    return "█" * filled + "░" * (BAR_WIDTH - filled) + " " + format_bytes(value)


def rich_table(status: dict[str, Any], width: int | None = None, bars: bool = False) -> Any:
    """The status table, fitted to `width` columns (the terminal's by default); `bars` draws each
    instance's memory as a bar against the budget, as `status --watch` does."""
    from rich.table import Table
    from rich.text import Text

    if width is None:
        from rich.console import Console

        width = Console().width
    supervisor = status.get("supervisor")
    caption = Text(
        f"supervisor pid {supervisor['pid']} · {supervisor.get('config') or 'no config'}"
        if supervisor
        else "no supervisor running"
    )
    memory = system_line(status)
    if memory:
        for line in memory.splitlines():  # a narrow terminal gets one part a line, never a word cut in two
            caption.append("\n" + (line if len(line) <= width else line.replace(" · ", "\n  ")))
    system = status.get("system") or {}
    scale = system.get("memory_budget_bytes") or system.get("total_bytes")
    rows = []
    for instance in status.get("instances", []):
        cells = row(instance)
        if bars:
            cells[COLUMNS.index("MEMORY")] = memory_bar(instance, scale)
        rows.append(cells)
    shown = fitting_columns(rows, width)
    table = Table(caption=caption, caption_justify="left", header_style="bold", width=None)
    for column in shown:
        table.add_column(
            column,
            no_wrap=column != "HEALTH",
            overflow="fold",
            min_width=min(HEALTH_MIN_WIDTH, max(len(cells[-1]) for cells in rows))
            if column == "HEALTH" and rows
            else None,
            justify="right" if column in RIGHT_ALIGNED and not (bars and column == "MEMORY") else "left",
        )
    for instance, cells in zip(status.get("instances", []), rows, strict=True):
        # Text, never a markup string: a model path or a server's error may hold "[/]".
        texts = [Text(cells[COLUMNS.index(column)]) for column in shown]
        texts[shown.index("STATE")].stylize(STATE_STYLES.get(shown_state(instance), ""))
        table.add_row(*texts)
    return table


def progress_table(instances: list[dict[str, Any]]) -> Any:
    """`up` on a terminal: one line per instance, updated as the supervisor reports changes."""
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=False, box=None)
    for instance in instances:
        mark, style = OUTCOME_MARKS.get(instance["outcome"], ("?", ""))
        state = Text(shown_state(instance), style=STATE_STYLES.get(shown_state(instance), ""))
        phase = Text(phase_text(instance.get("progress")), style="dim")
        table.add_row(Text(mark, style=style), Text(instance["name"]), state, Text(instance["url"]), phase)
    return table


def write_status(status: dict[str, Any], *, as_json: bool, out: TextIO = sys.stdout) -> None:
    for warning in (status.get("supervisor") or {}).get("warnings", []):
        sys.stderr.write(f"llmctl: warning: {warning}\n")
    if as_json:
        write_json(status, out)
    elif out.isatty() or os.environ.get("FORCE_COLOR"):
        from rich.console import Console  # Rich itself honours NO_COLOR

        console = Console(file=out, force_terminal=True if os.environ.get("FORCE_COLOR") else None)
        console.print(rich_table(status, console.width))
    else:
        write_plain_table(status.get("instances", []), out, footer=system_line(status))


FINDING_MARKS = {"ok": ("✔", "green"), "warning": ("!", "yellow"), "problem": ("✘", "bold red")}


def write_findings(findings: list[dict[str, Any]], out: TextIO = sys.stdout) -> None:
    """`doctor`'s findings: a mark, the check, the subject and what was found; the fix beneath."""
    styled = out.isatty() or bool(os.environ.get("FORCE_COLOR"))
    console = None
    if styled:
        from rich.console import Console

        console = Console(file=out, force_terminal=True if os.environ.get("FORCE_COLOR") else None, highlight=False)
    width = max((len(finding["check"]) for finding in findings), default=0)
    for finding in findings:
        mark, style = FINDING_MARKS.get(finding["status"], ("?", ""))
        word = mark if styled else finding["status"].ljust(7)
        subject = f"{visible(finding['subject'])}: " if finding["subject"] else ""
        line = f"{finding['check'].ljust(width)}  {subject}{visible(finding['message'])}"
        fix = f"{' ' * (len(word) + width + 3)}fix: {visible(finding['fix'])}" if finding.get("fix") else None
        if console is not None:
            from rich.text import Text

            console.print(Text(word, style=style) + Text(" " + line))
            if fix:
                console.print(Text(fix, style="dim"))
        else:
            out.write(f"{word} {line}\n" + (f"{fix}\n" if fix else ""))
    problems = sum(finding["status"] == "problem" for finding in findings)
    warnings = sum(finding["status"] == "warning" for finding in findings)
    summary = "all is well" if not problems else f"{problems} problem{'s' if problems != 1 else ''}"
    out.write(f"{summary}" + (f", {warnings} warning{'s' if warnings != 1 else ''}" if warnings else "") + "\n")


def visible(text: str) -> str:
    """Control characters as escapes (ESC as \\x1b, ...), so what a server printed cannot write the
    clipboard (OSC 52), retitle the window or clear the screen; bytes that were not UTF-8 as \\xNN."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() or char == "\t" else _escape(char) for char in text)


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return repr(char)[1:-1] if code < 0x10000 else char


PREFIX_STYLES = ("36", "33", "32", "35", "34", "96", "93", "92", "95", "94")  # ANSI colours, as compose cycles them


def log_emitter(stream: TextIO, names: list[str], *, prefix: bool, raw: bool) -> Callable[[str, str], None]:
    """(name, line) -> the line, after a `NAME |` prefix when several logs interleave; the prefix is
    coloured per instance on a terminal (unless NO_COLOR), never off one."""
    write = line_writer(stream, raw)
    width = max((len(name) for name in names), default=0)
    colour = (stream.isatty() or bool(os.environ.get("FORCE_COLOR"))) and not os.environ.get("NO_COLOR")
    prefixes = {}
    for index, name in enumerate(names):
        text = f"{name.ljust(width)} | "
        prefixes[name] = f"\x1b[{PREFIX_STYLES[index % len(PREFIX_STYLES)]}m{text}\x1b[0m" if colour else text

    def emit(name: str, line: str) -> None:
        if not prefix:
            write(line)
        elif colour:  # the prefix is ours: only the line is made safe
            stream.write(prefixes[name])
            write(line)
        else:
            write(prefixes[name] + line)

    return emit


def log_text(name: str, line: str, names: list[str]) -> Any:
    """A log line as Rich Text under `up --foreground`'s live table: coloured prefix, line made safe."""
    from rich.text import Text

    index = names.index(name) if name in names else 0
    colours = ("cyan", "yellow", "green", "magenta", "blue", "bright_cyan", "bright_yellow", "bright_green")
    width = max((len(each) for each in names), default=len(name))
    return Text(f"{name.ljust(width)} | ", style=colours[index % len(colours)]) + Text(visible(line))


def line_writer(stream: TextIO, raw: bool) -> Callable[[str], None]:
    """Write outside text: shown safely on a terminal (unless `raw`); off one, its bytes unchanged."""
    terminal = stream.isatty() and not raw
    buffer = getattr(stream, "buffer", None)

    def write(line: str) -> None:
        if terminal:
            stream.write(visible(line) + "\n")
        elif buffer is not None:
            stream.flush()
            buffer.write(line.encode("utf-8", errors="surrogateescape") + b"\n")
        else:
            stream.write(line + "\n")

    return write


def write_estimate(answer: dict[str, Any], out: TextIO = sys.stdout) -> None:
    """`llmctl estimate`: each part by pool, then each pool's total."""
    devices = answer.get("devices") or []
    where = ", ".join(f"gpu:{d['index']} {d['name']} ({format_bytes(d['total_bytes'])})" for d in devices)
    out.write(f"{answer['model']} ({answer['backend']}) on {where or 'the host only (no NVIDIA GPU)'}\n")
    width = max((len(part["what"]) for part in answer["parts"]), default=10)
    for part in answer["parts"]:
        out.write(f"  {part['pool']:<8} {part['what']:<{width}}  {format_bytes(part['bytes']):>10}\n")
    for pool, size in answer["pools"].items():
        out.write(f"{pool:<10} {'total':<{width}}  {format_bytes(size):>10}\n")
