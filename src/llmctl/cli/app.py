"""`llmctl` commands. Each one parses its options, calls llmctl.service, and renders the result.

Exit codes: 0 done; 1 an instance failed or timed out; 2 bad config or usage; 3 the supervisor
cannot be reached or started; 130 interrupted.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from .. import service
from ..errors import LlmctlError, SupervisorError
from ..paths import StatePaths, find_config_path
from . import render

if TYPE_CHECKING:
    from ..spec import Config

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
FAILURE_LOG_LINES = 20

app = typer.Typer(
    name="llmctl",
    help="Run several local LLM servers side by side, supervised.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

FileOption = Annotated[
    Optional[Path],
    typer.Option(
        "--file", "-f", help="Config file (default: $LLMCTL_CONFIG, then ./instances.yaml).", show_default=False
    ),
]
LongFileOption = Annotated[
    Optional[Path],
    typer.Option("--file", help="Config file (default: $LLMCTL_CONFIG, then ./instances.yaml).", show_default=False),
]
NamesArgument = Annotated[
    Optional[list[str]], typer.Argument(help="Instance names (default: all).", show_default=False)
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


class _Globals:
    config_file: Path | None = None


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        print(f"llmctl {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    file: FileOption = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Global options, accepted before the command too."""
    _Globals.config_file = file


def _config_path(local: Path | None) -> Path:
    return find_config_path(local or _Globals.config_file)


def _config(local: Path | None) -> Config:
    from ..config import load_config  # the schema is slow to import: only commands that need it pay

    return load_config(_config_path(local))


def _stdout_console() -> Any:
    from rich.console import Console

    return Console()


def _stderr(message: str) -> None:
    sys.stderr.write(message + "\n")


@app.command()
def up(
    names: NamesArgument = None,
    file: FileOption = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once the starts are requested.")] = False,
    timeout: Annotated[
        Optional[float],
        typer.Option("--timeout", help="Give up waiting after this many seconds.", min=0, show_default=False),
    ] = None,
    foreground: Annotated[
        bool,
        typer.Option("--foreground", help="Supervise in this terminal with a live table; Ctrl-C stops everything."),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Start even if the memory budget says it will not fit.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Start the instances that are not running yet, and wait until they are healthy."""
    paths = StatePaths.default()
    wanted = list(names or [])
    if foreground:
        raise typer.Exit(_run_foreground(paths, _config(file), wanted, force))
    actions, warnings = service.up(paths, _config_path(file), wanted, force)
    for warning in warnings:
        _stderr(f"llmctl: warning: {warning}")
    selected = wanted or list(actions)
    if no_wait:
        _report_up(paths, selected, actions, json_output, wait=False, timeout=None)
        return
    raise typer.Exit(_report_up(paths, selected, actions, json_output, wait=True, timeout=timeout))


def _report_up(
    paths: StatePaths,
    names: list[str],
    actions: dict[str, str],
    json_output: bool,
    *,
    wait: bool,
    timeout: float | None,
) -> int:
    progress = _UpProgress(names, actions, enabled=wait and not json_output)
    try:
        if wait:
            instances, timed_out = service.wait_until_settled(paths, names, timeout, progress.update)
        else:
            instances, timed_out = service.current(paths, names), False
    except KeyboardInterrupt:
        progress.close()
        _stderr("llmctl: interrupted; the instances keep starting under the supervisor (`llmctl down` stops them)")
        return EXIT_INTERRUPTED
    progress.close()
    failed = [instance for instance in instances if service.settle(instance) == service.FAILED]
    ok = not failed and not timed_out
    if json_output:
        render.write_json({"ok": ok, "timed_out": timed_out, "actions": actions, "instances": instances})
    elif not wait:
        for name, action in actions.items():
            print(f"{name}: {action}")
    for instance in failed:
        _explain_failure(instance)
    if timed_out:
        pending = [instance["name"] for instance in instances if service.settle(instance) == service.PENDING]
        _stderr(f"llmctl: timed out after {timeout:g}s waiting for {', '.join(pending)} (they keep starting)")
    return 0 if ok else EXIT_FAILED


def _explain_failure(instance: dict[str, Any]) -> None:
    from ..logfiles import last_lines

    reason = instance.get("last_error") or instance.get("last_exit") or instance["state"]
    retry = " (retrying per its restart policy)" if instance["state"] == "backoff" else ""
    _stderr(f"llmctl: {instance['name']} failed: {reason}{retry}")
    if instance.get("log"):
        lines = last_lines(Path(instance["log"]), FAILURE_LOG_LINES)
        if lines:
            _stderr(f"--- last {len(lines)} lines of {instance['log']} ---")
            for line in lines:
                _stderr("  " + line)


class _UpProgress:
    """One line per instance, updated in place on a terminal; one line as each settles otherwise."""

    def __init__(self, names: list[str], actions: dict[str, str], enabled: bool) -> None:
        self.reported: set[str] = set()
        self.actions = actions
        self.enabled = enabled
        self.live: Any = None
        if enabled and sys.stdout.isatty():
            from rich.live import Live

            self.live = Live(console=_stdout_console(), transient=False, refresh_per_second=12)
            self.live.start()

    def update(self, instances: list[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        if self.live is not None:
            self.live.update(self._table(instances))
            return
        for instance in instances:
            outcome = service.settle(instance)
            if outcome != service.PENDING and instance["name"] not in self.reported:
                self.reported.add(instance["name"])
                word = instance["state"] if outcome == service.OK else "failed"
                print(f"{instance['name']}: {word} {instance['url']}", flush=True)

    def _table(self, instances: list[dict[str, Any]]) -> Any:
        from rich.table import Table

        table = Table(show_header=False, box=None)
        for instance in instances:
            state = instance["state"]
            mark = {"healthy": "[green]✔[/]", "failed": "[red]✘[/]"}.get(state, "[yellow]…[/]")
            if service.settle(instance) == service.FAILED:
                mark = "[red]✘[/]"
            table.add_row(mark, instance["name"], f"[{render.STATE_STYLES.get(state, '')}]{state}[/]", instance["url"])
        return table

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def _run_foreground(paths: StatePaths, config: Config, names: list[str], force: bool) -> int:
    import asyncio
    import logging

    from .. import client
    from ..daemon import acquire_supervisor_lock, run_supervisor

    if client.is_running(paths):
        raise SupervisorError(f"a background supervisor already runs for {paths.root}; `llmctl down` it first")
    lock = acquire_supervisor_lock(paths)
    logging.basicConfig(
        filename=paths.supervisor_log, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    interrupted = False

    async def supervise(supervisor: Any) -> None:
        from rich.live import Live

        await supervisor.up(config, names, force=force)
        with Live(console=_stdout_console(), refresh_per_second=4) as live:
            while True:
                live.update(render.rich_table(supervisor.status()))
                await asyncio.sleep(0.25)

    try:
        asyncio.run(run_supervisor(paths, supervise))
        interrupted = True  # it only returns after SIGINT/SIGTERM or a `down` from elsewhere
    finally:
        lock.close()
    return EXIT_INTERRUPTED if interrupted else 0


@app.command()
def status(
    names: NamesArgument = None,
    file: FileOption = None,
    json_output: JsonOption = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[
        float, typer.Option("--interval", help="Seconds between refreshes with --watch.", min=0.1)
    ] = 1.0,
) -> None:
    """Show each instance: state, PID, URL, uptime, restarts, memory, CPU, health."""
    paths = StatePaths.default()
    config_path = _config_path(file)
    wanted = list(names or [])
    if not watch:
        render.write_status(service.status(paths, config_path, wanted), as_json=json_output)
        return
    import time

    try:
        if sys.stdout.isatty() and not json_output:
            from rich.live import Live

            with Live(console=_stdout_console(), refresh_per_second=4) as live:
                while True:
                    live.update(render.rich_table(service.status(paths, config_path, wanted)))
                    time.sleep(interval)
        while True:
            render.write_status(service.status(paths, config_path, wanted), as_json=json_output)
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@app.command()
def logs(
    names: Annotated[list[str], typer.Argument(help="Instance names.", show_default=False)],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many of the last lines to show.", min=0)] = 50,
    file: LongFileOption = None,
) -> None:
    """Print the last lines of instance logs, or follow them; several interleave with a name prefix."""
    from ..logfiles import follow as follow_logs
    from ..logfiles import last_lines

    paths = StatePaths.default()
    config = _config(file)
    specs = config.select(names)
    files = {spec.name: paths.log_file(spec.name) for spec in specs}
    prefix = len(files) > 1
    width = max(len(name) for name in files)

    def emit(name: str, line: str) -> None:
        sys.stdout.write(f"{name.ljust(width)} | {line}\n" if prefix else line + "\n")

    if not follow:
        for name, path in files.items():
            for line in last_lines(path, lines):
                emit(name, line)
        return
    try:
        for name, line in follow_logs(files, lines):
            emit(name, line)
            sys.stdout.flush()
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    except BrokenPipeError:
        raise typer.Exit(0) from None


@app.command()
def down(names: NamesArgument = None, file: FileOption = None, json_output: JsonOption = False) -> None:
    """Stop instances (SIGTERM to the group, SIGKILL after stop_timeout); no names: all, and the supervisor."""
    paths = StatePaths.default()
    stopped = service.down(paths, list(names or []))
    if json_output:
        render.write_json({"stopped": stopped})
    elif not stopped:
        print("nothing is running")
    else:
        for name in stopped:
            print(f"{name}: stopped")


@app.command()
def restart(names: Annotated[list[str], typer.Argument(help="Instance names.")], file: FileOption = None) -> None:
    """Stop and start instances again (with their current config), and wait until healthy."""
    paths = StatePaths.default()
    actions = service.restart(paths, _config_path(file), names)
    raise typer.Exit(_report_up(paths, names, actions, json_output=False, wait=True, timeout=None))


@app.command()
def check(file: FileOption = None) -> None:
    """Validate the config file without starting anything."""
    config = _config(file)
    print(f"{config.path}: ok ({len(config.instances)} instances: {', '.join(config.names)})")


def run() -> None:
    """The console script: the one place errors become a line on stderr and an exit code."""
    try:
        app(prog_name="llmctl")
    except LlmctlError as exc:
        _stderr(f"llmctl: error: {exc}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _stderr("llmctl: interrupted")
        sys.exit(EXIT_INTERRUPTED)
