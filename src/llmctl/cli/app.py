"""`llmctl` commands. Each one parses its options, calls llmctl.service, and renders the result.

Exit codes: 0 done; 1 an instance failed or timed out; 2 bad config or usage; 3 the supervisor
cannot be reached or started; 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from llmctl.cli import activity, benchcmd, render
from llmctl.cli.report import report_error, report_settled
from llmctl.control import service, statusdoc
from llmctl.control.state import find_config_path
from llmctl.errors import ConfigError, InternalError, LlmctlError, SupervisorError
from llmctl.paths import StatePaths

if TYPE_CHECKING:
    from llmctl.spec import Config

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
FAILURE_LOG_LINES = 20

app = typer.Typer(
    name="llmctl",
    help="Run several local LLM servers side by side, supervised.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

FILE_HELP = "Config file (default: $LLMCTL_CONFIG, then ./instances.yaml, then the running supervisor's)."
FileOption = Annotated[Optional[Path], typer.Option("--file", "-f", help=FILE_HELP, show_default=False, metavar="FILE")]
LongFileOption = Annotated[Optional[Path], typer.Option("--file", help=FILE_HELP, show_default=False, metavar="FILE")]
NamesArgument = Annotated[
    Optional[list[str]], typer.Argument(help="Instance names (default: all).", show_default=False, metavar="NAME")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


class _Globals:
    config_file: Path | None = None


def _print_version(value: bool) -> None:
    if value:
        from llmctl import __version__

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
    return find_config_path(local or _Globals.config_file, StatePaths.default())


def _config(local: Path | None) -> Config:
    return service.load_config(_config_path(local))


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
        typer.Option(
            "--timeout", help="Give up waiting after this many seconds.", min=0, show_default=False, metavar="SECONDS"
        ),
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
    if not json_output:
        for name, action in actions.items():
            if action == "recreated":
                _stderr(f"llmctl: {name}: its config changed; recreated")
    selected = wanted or list(actions)
    raise typer.Exit(report_settled(paths, selected, actions, json_output, wait=not no_wait, timeout=timeout))


@app.command()
def wait(
    names: NamesArgument = None,
    timeout: Annotated[
        Optional[float],
        typer.Option(
            "--timeout", help="Give up after this many seconds (exit 1).", min=0, show_default=False, metavar="SECONDS"
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Wait until the instances are healthy (exit 0), or one has failed or the timeout passed (exit 1)."""
    paths = StatePaths.default()
    if not service.supervisor_is_needed(paths):
        raise SupervisorError(f"no supervisor is running for {paths.root}; start instances with `llmctl up`")
    raise typer.Exit(report_settled(paths, list(names or []), None, json_output, wait=True, timeout=timeout))


def _run_foreground(paths: StatePaths, config: Config, names: list[str], force: bool) -> int:
    """Supervise in this terminal. Exit 130 after Ctrl-C, 143 after SIGTERM, 0 after a `down` from
    elsewhere; an error while starting (a budget refusal, say) is reported, and stops everything."""
    import asyncio
    import logging
    import signal

    from llmctl.control import client
    from llmctl.control.daemon import run_supervisor
    from llmctl.control.lock import acquire_supervisor_lock

    if client.is_running(paths):
        raise SupervisorError(f"a background supervisor already runs for {paths.root}; `llmctl down` it first")
    lock = acquire_supervisor_lock(paths)
    logging.basicConfig(
        filename=paths.supervisor_log, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    async def supervise(supervisor: Any) -> None:
        from llmctl.backends import backend_for
        from llmctl.logs.files import Tail

        specs = config.select(names)
        tail = Tail({spec.name: paths.log_file(spec.name) for spec in specs})
        noise = {spec.name: backend_for(spec.backend).is_probe_noise for spec in specs}  # hidden, as `logs` does

        def shown() -> list[tuple[str, str]]:
            return [(name, line) for name, line in tail.read() if not noise[name](line)]

        await supervisor.up(config, names, force=force)
        if not sys.stdout.isatty():  # a pipe or a file: the logs, as `docker compose up` prints them
            emit = render.log_emitter(sys.stdout, [spec.name for spec in specs], prefix=True, raw=False)
            while True:
                for name, line in shown():
                    emit(name, line)
                sys.stdout.flush()
                await asyncio.sleep(0.25)
        from rich.live import Live

        console = _stdout_console()
        with Live(console=console, refresh_per_second=4) as live:  # logs scroll above, the table stays below
            while True:
                for name, line in shown():
                    live.console.print(render.log_text(name, line, [spec.name for spec in specs]))
                live.update(render.rich_table(supervisor.status(), console.width))
                await asyncio.sleep(0.25)

    try:
        ended_by = asyncio.run(run_supervisor(paths, supervise))
    finally:
        lock.close()
    return {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED}.get(ended_by, 0)  # type: ignore[call-overload]


@app.command()
def status(
    names: NamesArgument = None,
    file: FileOption = None,
    json_output: JsonOption = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[
        float, typer.Option("--interval", help="Seconds between refreshes with --watch.", min=0.1, metavar="SECONDS")
    ] = 1.0,
) -> None:
    """Show each instance: state, PID, URL, uptime, restarts, memory, CPU, health."""
    paths = StatePaths.default()
    config_path = _config_path(file)
    wanted = list(names or [])
    if not watch:
        document = service.status(paths, config_path, wanted)
        render.write_status(document, as_json=json_output)
        _exit_on_state_error(document)
        return
    import time

    try:
        if sys.stdout.isatty() and not json_output:
            from rich.live import Live

            console = _stdout_console()
            with Live(console=console, refresh_per_second=4, transient=False) as live:
                while True:
                    document = service.status(paths, config_path, wanted)
                    live.update(render.rich_table(document, console.width, bars=True))
                    time.sleep(interval)
        while True:
            render.write_status(service.status(paths, config_path, wanted), as_json=json_output)
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def _exit_on_state_error(document: dict[str, Any]) -> None:
    """A state folder the supervisor cannot write (a full disk, a changed mode): after the status, one
    line on stderr with the path and the reason, and exit 3 (the document carries it as
    supervisor.state_error)."""
    error = (document.get("supervisor") or {}).get("state_error")
    if error:
        _stderr(f"llmctl: error: {error}")
        raise typer.Exit(SupervisorError.exit_code)


LINES_HELP = "How many of the last lines to show (default: 50; with --since, all)."
SINCE_HELP = "Only lines written since a duration ago (10m, 1h30m) or a time (07:30, 2026-11-27 07:30)."


@app.command()
def logs(
    names: Annotated[
        Optional[list[str]], typer.Argument(help="Instance names (default: all).", show_default=False, metavar="NAME")
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    lines: Annotated[
        Optional[int], typer.Option("--lines", "-n", help=LINES_HELP, min=0, show_default=False, metavar="N")
    ] = None,
    since: Annotated[
        Optional[str], typer.Option("--since", help=SINCE_HELP, show_default=False, metavar="WHEN")
    ] = None,
    no_prefix: Annotated[bool, typer.Option("--no-prefix", help="No `NAME |` before each line.")] = False,
    probes: Annotated[
        bool, typer.Option("--probes", help="Show the health-check requests servers log (hidden by default).")
    ] = False,
    file: LongFileOption = None,
    raw: Annotated[
        bool, typer.Option("--raw", help="Pass control characters to the terminal as the server printed them.")
    ] = False,
) -> None:
    """Print the last lines of instance logs, or follow them; several interleave with a name prefix.

    On a terminal, control characters a server printed are shown as escapes (\\x1b...), never obeyed."""
    from llmctl.backends import backend_for
    from llmctl.logs.files import follow as follow_logs
    from llmctl.logs.files import last_lines, lines_since, parse_since

    try:
        since_epoch = parse_since(since) if since is not None else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    paths = StatePaths.default()
    config = _config(file)
    specs = config.select(list(names or []))  # no names: every instance, as `docker compose logs`
    files = {spec.name: paths.log_file(spec.name) for spec in specs}
    if not files:
        return
    noise = {spec.name: backend_for(spec.backend).is_probe_noise for spec in specs}
    emit = render.log_emitter(sys.stdout, list(files), prefix=len(files) > 1 and not no_prefix, raw=raw)

    def kept(name: str) -> Any:
        """Whether a line of this instance is shown: -n counts the lines shown, after this filter."""
        return None if probes else lambda line: not noise[name](line)

    try:
        for name, path in files.items():
            keep = kept(name)
            if since_epoch is not None:
                chosen = [line for line in lines_since(path, since_epoch) if keep is None or keep(line)]
                backlog = chosen if lines is None else chosen[-lines:] if lines else []
            else:
                backlog = last_lines(path, 50 if lines is None else lines, keep)
            for line in backlog:
                emit(name, line)
        if follow:
            sys.stdout.flush()
            for name, line in follow_logs(files, 0):
                if probes or not noise[name](line):
                    emit(name, line)
                sys.stdout.flush()
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@app.command()
def down(names: NamesArgument = None, file: FileOption = None, json_output: JsonOption = False) -> None:
    """Stop instances (SIGTERM to the group, SIGKILL after stop_timeout); no names: all, and the supervisor.

    An external server (backend: external) is detached, never stopped: its own app runs it."""
    paths = StatePaths.default()
    wanted = list(names or [])
    stopped = service.down(paths, wanted, _config_path(file))
    if json_output:  # `stopped` lists the detached external servers too: llmctl no longer watches them
        render.write_json(statusdoc.with_version({"ok": True, "stopped": list(stopped)}))
    elif not stopped:
        print("nothing is running" if not wanted else f"not running: {', '.join(wanted)}")
    else:
        for name, done in stopped.items():
            print(f"{name}: {done}" + (" (left as it is; its own app stops it)" if done == "detached" else ""))


@app.command()
def restart(
    names: Annotated[list[str], typer.Argument(help="Instance names.", metavar="NAME")],
    file: FileOption = None,
    json_output: JsonOption = False,
) -> None:
    """Stop and start instances again (with their current config), and wait until healthy."""
    paths = StatePaths.default()
    actions = service.restart(paths, _config_path(file), names)
    raise typer.Exit(report_settled(paths, names, actions, json_output, wait=True, timeout=None))


@app.command()
def url(
    name: Annotated[str, typer.Argument(help="Instance name, or `gateway`.", show_default=False, metavar="NAME")],
    file: FileOption = None,
    bare: Annotated[bool, typer.Option("--bare", help="The server's root URL, without /v1.")] = False,
) -> None:
    """Print an instance's OpenAI base URL, ending in /v1 (from the config: no supervisor needed)."""
    config = _config(file)
    if name == "gateway" and config.gateway is not None and "gateway" not in config.names:
        root = config.gateway.url
    else:
        root = config.instance(name).url
    print(root if bare else service.openai_url(root))


@app.command()
def env(file: FileOption = None) -> None:
    """Print `export` lines for `eval "$(llmctl env)"`: LLMCTL_<NAME>_URL (the server's root URL) and
    LLMCTL_<NAME>_OPENAI_URL (…/v1) for every instance, the same for the gateway as LLMCTL_GATEWAY_*, and
    OPENAI_BASE_URL (the gateway's /v1 when there is one, else the first instance's)."""
    import shlex

    for variable, value in service.urls(_config(file)).items():
        print(f"export {variable}={shlex.quote(value)}")


@app.command()
def check(file: FileOption = None, json_output: JsonOption = False) -> None:
    """Validate the config file without starting anything; every problem is listed, each with file:line
    (exit 2 when there is any). --json: {"ok", "path", "instances", "problems": [{"file", "line",
    "message"}], "warnings"} on stdout."""
    if json_output:
        _check_json(_config_path(file))
        return
    try:
        config = _config(file)
    except ConfigError as exc:
        for problem in exc.problems[:-1]:
            _stderr(f"llmctl: error: {problem}")
        raise ConfigError(exc.problems[-1]) from None
    for warning in service.start_warnings(config):
        _stderr(f"llmctl: warning: {warning}")
    count = len(config.instances)
    listed = f"{count} instance{'' if count == 1 else 's'}: {', '.join(config.names)}" if count else "no instances"
    print(f"{config.path}: ok ({listed})")


def _check_json(path: Path) -> None:
    """`check --json`: the verdict as one JSON document on stdout; exit 2 when any problem was found."""
    import json
    import re

    try:
        config = service.load_config(path)
    except ConfigError as exc:
        problems = []
        for line in exc.problems:  # "FILE:LINE: message" or "FILE: message" (llmctl.config.locate)
            rest = line.removeprefix(f"{path}:") if line.startswith(f"{path}:") else None
            where = re.match(r"(\d+): ", rest) if rest is not None else None
            message = rest[where.end() :] if where else (rest.lstrip() if rest is not None else line)
            problems.append({"file": str(path), "line": int(where.group(1)) if where else None, "message": message})
        print(json.dumps({"ok": False, "path": str(path), "instances": [], "problems": problems, "warnings": []}))
        raise typer.Exit(ConfigError.exit_code) from None
    warnings = list(service.start_warnings(config))
    document = {"ok": True, "path": config.path, "instances": list(config.names), "problems": [], "warnings": warnings}
    print(json.dumps(document))


@app.command()
def init(
    file: FileOption = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    stdout: Annotated[bool, typer.Option("--stdout", help="Print the config instead of writing it.")] = False,
) -> None:
    """Write a commented starter instances.yaml from the servers and models found on this machine."""
    from llmctl.beyond import init as starter

    text = starter.render(starter.discover())
    if stdout:
        sys.stdout.write(text)
        return
    path = (file or _Globals.config_file or Path("instances.yaml")).expanduser().absolute()
    try:
        starter.write(path, text, force)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; llmctl init never overwrites it without --force") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    count = text.count("\n  - name: ")
    print(f"wrote {path} ({count} instance{'' if count == 1 else 's'}); next: `llmctl doctor`, then `llmctl up`")


@app.command()
def doctor(file: FileOption = None, json_output: JsonOption = False) -> None:
    """Check programs, ports, models, memory, the state folder and the supervisor; each finding with its fix.

    Exit 0 when nothing is wrong (warnings allowed), 1 when there is a problem.
    """
    from llmctl.beyond import doctor as checks
    from llmctl.config.load import load_config

    paths = StatePaths.default()
    findings = checks.diagnose(_config_path(file), paths, lambda path: load_config(path, check_backends=False))
    well = checks.healthy(findings)
    if json_output:
        render.write_json(statusdoc.with_version({"ok": well, "findings": [f.to_dict() for f in findings]}))
    else:
        render.write_findings([f.to_dict() for f in findings])
    raise typer.Exit(0 if well else EXIT_FAILED)


@app.command()
def completion(
    shell: Annotated[str, typer.Argument(help="bash, zsh or fish.", show_default=False, metavar="SHELL")],
) -> None:
    """Print the shell completion script (instance names complete from the config in use)."""
    from llmctl.cli.completion import SHELLS, generate

    if shell not in SHELLS:
        raise ConfigError(f"unknown shell {shell!r}: llmctl completes in {', '.join(SHELLS)}")
    sys.stdout.write(generate(shell, typer.main.get_command(app)))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def estimate(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Argument(help="A GGUF file (llama.cpp) or an MLX model folder.", show_default=False, metavar="MODEL")
    ],
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend", help="llama.cpp or mlx (default: from the model).", show_default=False, metavar="BACKEND"
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Print what a model would take, by memory pool and part: `llmctl estimate MODEL -- -c 8192 -ngl 20`."""
    answer = service.estimate(model, list(ctx.args), backend)
    if json_output:
        render.write_json({"version": 1, **answer})
        return
    render.write_estimate(answer)


@app.command("_names", hidden=True)
def _names(file: FileOption = None) -> None:
    """Instance names of the config in use, one a line (for shell completion)."""
    for name in _config(file).names:
        print(name)


@app.command("export")
def export_config(
    kind: Annotated[str, typer.Argument(help="kubernetes or compose.", show_default=False, metavar="KIND")],
    file: FileOption = None,
    out: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Write into this folder (default: print).", metavar="DIR")
    ] = None,
    image: Annotated[
        Optional[list[str]],
        typer.Option("--image", help="NAME=IMAGE for an instance or a backend (repeatable).", metavar="NAME=IMAGE"),
    ] = None,
) -> None:
    """Render the config as Kubernetes manifests or a compose file (what it cannot say is marked REPLACE-ME)."""
    from llmctl.beyond import export

    if kind not in ("kubernetes", "compose"):
        raise ConfigError(f"unknown export {kind!r}: llmctl exports kubernetes or compose")
    images = {}
    for item in image or []:
        name, _, value = item.partition("=")
        if not name or not value:
            raise ConfigError(f"--image {item!r}: give NAME=IMAGE (an instance or backend name)")
        images[name] = value
    config = _config(file)
    files = export.render(kind, config, images)
    for note in export.left_out(config):  # on stderr: stdout stays a clean manifest to pipe into kubectl
        _stderr(f"llmctl: note: {note}")
    if out is None:
        for text in files.values():
            sys.stdout.write(text)
        return
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {out}: not a folder (export writes {', '.join(files)} into a folder)")
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")


service_app = typer.Typer(
    help="Start the fleet at login: a launchd agent (macOS) or a systemd user unit (Linux).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(service_app, name="service")
PlatformOption = Annotated[
    Optional[str],
    typer.Option("--platform", help="macos or linux (default: this machine's).", show_default=False, metavar="OS"),
]


def _service_plan(file: Path | None, platform: str | None) -> Any:
    from llmctl.beyond import loginservice

    _known_platform(platform)
    config = _config(file)  # a service for a config that does not load would only fail at login
    return loginservice.plan(platform or loginservice.current_platform(), Path(config.path), StatePaths.default().root)


def _known_platform(platform: str | None) -> None:
    if platform not in (None, "macos", "linux"):
        raise ConfigError(
            f"--platform {platform!r}: llmctl installs login services on macos (launchd) and linux (systemd)"
        )


@service_app.command("install")
def service_install(
    file: FileOption = None,
    no_start: Annotated[bool, typer.Option("--no-start", help="Write the file only; load it yourself.")] = False,
    platform: PlatformOption = None,
) -> None:
    """Write the agent or unit for this config and load it: the servers start now and at each login."""
    from llmctl.beyond import loginservice

    target = _service_plan(file, platform)
    try:
        ran = loginservice.install(target, start=not no_start)
    except loginservice.ManagerUnreachable as exc:
        # Written, not loaded: a machine (a container, an SSH session) with no user service manager.
        print(f"wrote {target.path}")
        _stderr(f"llmctl: error: not loaded, no service manager answers here ({exc})")
        print("load it in your login session with: " + " && ".join(" ".join(c) for c in target.load))
        raise typer.Exit(EXIT_FAILED) from None  # asked to load it and it is not loaded: a script must see that
    print(f"wrote {target.path}")
    for command in ran:
        print(f"ran: {command}")
    if no_start:
        print("load it with: " + " && ".join(" ".join(command) for command in target.load))


@service_app.command("uninstall")
def service_uninstall(platform: PlatformOption = None) -> None:
    """Stop the service (and so its servers) and remove its file."""
    from llmctl.beyond import loginservice

    _known_platform(platform)
    target = loginservice.plan(platform or loginservice.current_platform(), Path("/"), StatePaths.default().root)
    existed, ran, failed = loginservice.uninstall(target)
    for command in ran:
        print(f"ran: {command}")
    if existed and not target.path.exists():
        print(f"removed {target.path}")
    elif not existed:
        print(f"not installed ({target.path} does not exist)")
    for reason in failed:  # e.g. the manager did not answer: the service may still be loaded
        _stderr(f"llmctl: error: {reason}")
    if failed:
        raise typer.Exit(EXIT_FAILED)


@service_app.command("status")
def service_status(platform: PlatformOption = None) -> None:
    """Whether the login service is installed, and what the service manager says of it (exit 1: not installed)."""
    from llmctl.beyond import loginservice

    _known_platform(platform)
    target = loginservice.plan(platform or loginservice.current_platform(), Path("/"), StatePaths.default().root)
    installed, said = loginservice.status(target)
    print(said)
    raise typer.Exit(0 if installed else EXIT_FAILED)


app.command("bench")(benchcmd.bench)  # llmctl.cli.benchcmd: `llmctl bench`
app.command("activity")(activity.activity)  # llmctl.cli.activity: `llmctl activity`


class _Command(typer.core.TyperCommand):
    """Help that reads like a man page: a flag shows no `<bool>`, a value its metavar only. Output into
    a closed pipe ends the command as SIGPIPE ends other Unix tools (before click makes it exit 1)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            try:
                return super().invoke(ctx)
            finally:
                sys.stdout.flush()  # a write the pipe took only part of fails here, not at exit
        except BrokenPipeError:
            render.end_by_sigpipe()

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        """`--help` is printed while the context is made, before invoke: a closed pipe ends it quietly too
        (click's and Rich's own handling would exit 1)."""
        try:
            return super().make_context(*args, **kwargs)
        except BrokenPipeError:
            render.end_by_sigpipe()
        except SystemExit as exc:  # Rich (which prints the help) exits 1 on a closed pipe
            if isinstance(exc.__context__, BrokenPipeError):
                render.end_by_sigpipe()
            raise

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:
            if param.param_type_name == "argument":
                param.display_type_rich = lambda ctx: None  # its name (NAME...) says it all
            elif getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class _Group(typer.core.TyperGroup, _Command):  # type: ignore[misc]
    pass


for _typer in (app, service_app):
    _typer.info.cls = _Group
    for _info in _typer.registered_commands:
        _info.cls = _Command


def run() -> None:
    """The console script: the one place errors become a line on stderr (JSON on stdout under
    --json) and an exit code."""
    try:
        app(prog_name="llmctl")
    except LlmctlError as exc:
        report_error(exc, "--json" in sys.argv[1:])
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _stderr("llmctl: interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except OSError as exc:  # a file or folder the command was pointed at: its name and the system's reason
        where = f"{exc.filename}: " if exc.filename else ""
        report_error(LlmctlError(f"{where}{exc.strerror or exc}"), "--json" in sys.argv[1:])
        sys.exit(EXIT_FAILED)
    except Exception as exc:  # a bug: one line that says so; LLMCTL_DEBUG=1 shows the traceback
        if os.environ.get("LLMCTL_DEBUG"):
            raise
        report_error(InternalError(f"internal error in llmctl: {exc!r} (LLMCTL_DEBUG=1 shows where)"), False)
        sys.exit(EXIT_FAILED)
