"""`llmctl service install|uninstall|status`: the fleet back after login, without typing `llmctl up`.

On macOS a launchd agent (~/Library/LaunchAgents), on Linux a systemd user unit
(~/.config/systemd/user). Either runs `llmctl --file CONFIG up --foreground`: the supervisor in the
foreground, so the service manager sees it, restarts it on a crash (with a limit: launchd's
ThrottleInterval, systemd's StartLimitBurst), and stops it (and so every server) at logout. Its
output (the instances' logs) goes to the state folder (launchd) or the journal (systemd).
"""

from __future__ import annotations

import os
import plistlib
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from llmctl.errors import LlmctlError

LABEL = "dev.llmctl.supervisor"
UNIT = "llmctl.service"
RESTART_THROTTLE_S = 10  # launchd: at most one start per this many seconds
START_LIMIT_BURST = 5  # systemd: at most this many starts ...
START_LIMIT_INTERVAL_S = 300  # ... in this many seconds, then it stays failed
STOP_TIMEOUT_S = 90  # every server's stop_timeout fits in it


class ServiceError(LlmctlError):
    """The service manager refused, or is not there."""


@dataclass(frozen=True)
class Plan:
    """What `install` writes and runs: the file, its text, and the commands that load it."""

    platform: str  # "macos" or "linux"
    path: Path
    text: str
    load: list[list[str]]
    unload: list[list[str]]
    status: list[str]


def llmctl_command() -> list[str]:
    """How the service starts llmctl: the installed script beside this Python, else `python -m llmctl`."""
    script = Path(sys.executable).parent / "llmctl"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "llmctl"]


def plan(platform: str, config: Path, state_dir: Path, home: Path | None = None) -> Plan:
    home = home or Path.home()
    argv = [*llmctl_command(), "--file", str(config), "up", "--foreground"]
    if platform == "macos":
        path = home / "Library" / "LaunchAgents" / f"{LABEL}.plist"
        domain = f"gui/{os.getuid()}"
        return Plan(
            "macos",
            path,
            launchd_plist(argv, config, state_dir),
            load=[["launchctl", "bootstrap", domain, str(path)]],
            unload=[["launchctl", "bootout", f"{domain}/{LABEL}"]],
            status=["launchctl", "print", f"{domain}/{LABEL}"],
        )
    if platform == "linux":
        path = home / ".config" / "systemd" / "user" / UNIT
        return Plan(
            "linux",
            path,
            systemd_unit(argv, config, state_dir),
            load=[["systemctl", "--user", "daemon-reload"], ["systemctl", "--user", "enable", "--now", UNIT]],
            unload=[["systemctl", "--user", "disable", "--now", UNIT]],
            status=["systemctl", "--user", "status", "--no-pager", UNIT],
        )
    raise ServiceError(f"no login service for {platform!r}: llmctl knows macos (launchd) and linux (systemd)")


def current_platform() -> str:
    return "macos" if sys.platform == "darwin" else "linux"


def launchd_plist(argv: list[str], config: Path, state_dir: Path) -> str:
    agent = {
        "Label": LABEL,
        "ProgramArguments": argv,
        "WorkingDirectory": str(config.parent),
        "EnvironmentVariables": {"LLMCTL_STATE_DIR": str(state_dir), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        "RunAtLoad": True,
        # Started again after a crash, not after a clean exit (`llmctl down` from a terminal).
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": RESTART_THROTTLE_S,
        "ExitTimeOut": STOP_TIMEOUT_S,
        "ProcessType": "Interactive",  # the models serve a person at the keyboard: no background throttling
        "StandardOutPath": str(state_dir / "service.log"),
        "StandardErrorPath": str(state_dir / "service.log"),
    }
    return plistlib.dumps(agent, sort_keys=False).decode()


def systemd_unit(argv: list[str], config: Path, state_dir: Path) -> str:
    # `%` starts a systemd specifier (%h, %u): a literal one in a path is `%%`.
    argv = [arg.replace("%", "%%") for arg in argv]
    config = Path(str(config).replace("%", "%%"))
    state_dir = Path(str(state_dir).replace("%", "%%"))
    return "\n".join(
        [
            "[Unit]",
            f"Description=llmctl: the local LLM servers of {config}",
            "After=network.target",
            f"StartLimitIntervalSec={START_LIMIT_INTERVAL_S}",
            f"StartLimitBurst={START_LIMIT_BURST}",
            "",
            "[Service]",
            "Type=simple",
            f"ExecStart={shlex.join(argv)}",
            f"WorkingDirectory={config.parent}",
            f"Environment={shlex.quote(f'LLMCTL_STATE_DIR={state_dir}')}",
            "Restart=on-failure",
            "RestartSec=5",
            # SIGTERM to llmctl, which stops every server's group; then whatever is left gets SIGKILL.
            "KillMode=mixed",
            f"TimeoutStopSec={STOP_TIMEOUT_S}",
            "SuccessExitStatus=130 143",  # stopped by a signal it handled: not a failure
            "",
            "[Install]",
            "WantedBy=default.target",
            "",
        ]
    )


class ManagerUnreachable(ServiceError):
    """No service manager to talk to here (no user session bus, no launchctl): the file is written,
    and loads at the next login where the manager runs, or by hand."""


UNREACHABLE_SIGNS = ("Failed to connect to bus", "No medium found", "not been booted with systemd", "$DBUS_SESSION")


def install(target: Plan, start: bool) -> list[str]:
    """Write the file (atomically) and, with `start`, load it; the commands run are returned.
    Raises ManagerUnreachable (the file is written) when no service manager answers."""
    from llmctl.system.files import write_atomically

    target.path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target.path, target.text)
    return _run(target.load) if start else []


# launchctl bootout of an agent that is not loaded (written with --no-start): nothing to unload.
NOT_LOADED_SIGNS = ("No such process", "Could not find specified service")


def uninstall(target: Plan) -> tuple[bool, list[str], list[str]]:
    """Unload (if loaded) and remove: (whether a file was there, the commands run, what failed, one
    line each: a service manager that refused or did not answer leaves the service loaded)."""
    if not target.path.exists():
        return False, [], []
    ran, failed = _run_each(target.unload)
    try:
        target.path.unlink()
    except OSError as exc:
        failed.append(f"cannot remove {target.path}: {exc.strerror or exc}")
    if target.platform == "linux" and not failed:
        more_ran, more_failed = _run_each([["systemctl", "--user", "daemon-reload"]])
        ran, failed = ran + more_ran, failed + more_failed
    return True, ran, failed


def _run_each(commands: list[list[str]]) -> tuple[list[str], list[str]]:
    """Run every command whatever the one before did: (those that ran, why each failed one failed)."""
    ran: list[str] = []
    failed: list[str] = []
    for command in commands:
        try:
            ran += _run([command])
        except ServiceError as exc:
            if any(sign in str(exc) for sign in NOT_LOADED_SIGNS):
                ran.append(shlex.join(command))
                continue
            failed.append(str(exc))
    return ran, failed


def status(target: Plan) -> tuple[bool, str]:
    """(installed, what the service manager says)."""
    if not target.path.exists():
        return False, f"not installed ({target.path} does not exist)"
    try:
        done = subprocess.run(target.status, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return True, f"installed at {target.path}; {target.status[0]} cannot tell more: {exc}"
    said = (done.stdout or done.stderr).strip().splitlines()
    return True, f"installed at {target.path}\n" + "\n".join(said[:12])


def _run(commands: list[list[str]], check: bool = True) -> list[str]:
    ran = []
    for command in commands:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            if check:
                raise ManagerUnreachable(f"`{command[0]}` is not installed here") from None
            continue
        except (OSError, subprocess.TimeoutExpired) as exc:
            if check:
                raise ServiceError(f"`{shlex.join(command)}` failed: {exc}") from None
            continue
        ran.append(shlex.join(command))
        if check and done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()
            reason = said[-1] if said else f"exit {done.returncode}"
            if any(sign in (done.stderr or "") for sign in UNREACHABLE_SIGNS):
                raise ManagerUnreachable(f"`{shlex.join(command)}`: {reason}")
            raise ServiceError(f"`{shlex.join(command)}` failed: {reason}")
    return ran
