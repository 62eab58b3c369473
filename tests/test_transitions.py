"""The state table (llmctl.states) is the truth: every edge in it happens on real processes, an edge
not in it raises, and the diagram in docs/supervision.md is the one the table generates.

One fleet of purpose-built servers is driven through every edge; the instance logs, where every
transition is written as `[llmctl ...] FROM -> TO: reason`, are then read back and compared with the
table.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

from llmctl.control import states
from llmctl.control.states import TRANSITIONS, IllegalTransition, State

from .helpers import ROOT, by_name, fake_server_command, free_port, llmctl, status_json, wait_for, write_config

EDGE = re.compile(r"^\[llmctl [^\]]+\] (\w+) -> (\w+): ")


def test_every_edge_outside_the_table_raises():
    for source, target in itertools.product(State, State):
        if target in TRANSITIONS[source]:
            states.check_edge(source, target)
        else:
            with pytest.raises(IllegalTransition):
                states.check_edge(source, target)


def test_the_documented_diagram_is_the_table():
    page = (ROOT / "docs" / "supervision.md").read_text()
    assert states.mermaid() in page


def _instance(name: str, tmp_path: Path, *flags: str, extra: str) -> tuple[str, Path, Path]:
    sick, exit_file = tmp_path / f"{name}.sick", tmp_path / f"{name}.exit"
    port = free_port()
    command = json.dumps(fake_server_command(port, "--sick-file", str(sick), "--exit-file", str(exit_file), *flags))
    entry = f"\n  - name: {name}\n    backend: command\n    command: {command}\n    port: {port}\n{extra}"
    return entry, sick, exit_file


def test_every_edge_of_the_table_happens_on_real_processes(tmp_path, state_dir):
    probe = "    health: {path: /health, interval: 0.15, timeout: 1, failure_threshold: %d, start_timeout: %s}\n"
    quick = "    restart: {policy: %s, backoff: %s, max_backoff: %s, max_starts: %d, window: 60}\n"
    entries, sick, exits = {}, {}, {}
    for name, flags, extra in [
        ("p", (), probe % (6, 30) + quick % ("on-failure", 0.1, 0.1, 50)),
        ("q", (), probe % (1000, 30) + quick % ("on-failure", 0.1, 0.1, 50)),
        ("r", (), probe % (1000, 30) + quick % ("no", 0.1, 0.1, 50)),
        ("w", (), probe % (2, 30) + quick % ("no", 0.1, 0.1, 50)),
        ("s", ("--never-ready",), probe % (3, 0.5) + quick % ("on-failure", 0.1, 0.1, 2)),
        ("t", ("--exit-at-once", "1"), probe % (3, 30) + quick % ("on-failure", 30, 30, 5)),
        ("u", ("--load-seconds", "60"), probe % (3, 90) + quick % ("on-failure", 0.1, 0.1, 5)),
    ]:
        entries[name], sick[name], exits[name] = _instance(name, tmp_path, *flags, extra=extra)
    missing = (
        f"\n  - name: v\n    backend: command\n    command: [{tmp_path}/no-such-server]\n    port: {free_port()}\n"
    )
    write_config(tmp_path, "instances:" + "".join(entries.values()) + missing)

    def state_of(name: str) -> str:
        return by_name(status_json(cwd=tmp_path))[name]["state"]

    def until(name: str, *wanted: str, timeout: float = 20) -> None:
        wait_for(lambda: state_of(name) in wanted, timeout=timeout, interval=0.02, message=f"{name} {wanted}")

    assert llmctl("up", "p", "q", "r", "w", cwd=tmp_path).returncode == 0  # stopped -> starting -> healthy
    llmctl("up", "--no-wait", "s", "t", "u", "v", cwd=tmp_path)

    sick["p"].touch()  # healthy -> unhealthy -> healthy
    until("p", "unhealthy")
    sick["p"].unlink()
    until("p", "healthy")
    sick["p"].touch()  # unhealthy -> stopping -> backoff -> starting (not ready while sick) -> healthy
    until("p", "backoff", "starting")
    sick["p"].unlink()
    until("p", "healthy")
    exits["p"].write_text("3")  # healthy -> backoff
    until("p", "backoff", "starting")
    until("p", "healthy")
    exits["p"].write_text("0")  # healthy -> stopped (on-failure, clean exit)
    until("p", "stopped")
    assert llmctl("restart", "q", cwd=tmp_path).returncode == 0  # healthy -> stopping -> starting

    sick["q"].touch()  # unhealthy -> backoff
    until("q", "unhealthy")
    exits["q"].write_text("3")
    until("q", "backoff", "starting")
    sick["q"].unlink()
    until("q", "healthy")
    sick["q"].touch()  # unhealthy -> stopped
    until("q", "unhealthy")
    exits["q"].write_text("0")
    until("q", "stopped")
    sick["q"].unlink()

    exits["r"].write_text("3")  # healthy -> failed (policy no)
    until("r", "failed")
    assert llmctl("up", "r", cwd=tmp_path).returncode == 0  # failed -> starting
    sick["r"].touch()  # unhealthy -> failed
    until("r", "unhealthy")
    exits["r"].write_text("3")
    until("r", "failed")

    sick["w"].touch()  # unhealthy -> stopping -> failed (policy no)
    until("w", "failed")

    until("s", "failed", timeout=30)  # starting -> stopping (start_timeout) -> backoff ... -> failed (crash loop)
    until("t", "backoff")  # starting -> backoff
    until("v", "failed")  # starting -> failed (no such program)
    assert (
        llmctl("down", "s", "t", "u", cwd=tmp_path).returncode == 0
    )  # failed/backoff -> stopped; starting -> stopping
    assert llmctl("down", cwd=tmp_path).returncode == 0  # healthy -> stopping -> stopped

    seen = set()
    for log in (state_dir / "logs").glob("*.log*"):
        for line in log.read_text(errors="replace").splitlines():
            if match := EDGE.match(line):
                seen.add((State(match.group(1)), State(match.group(2))))
    table = {(source, target) for source, targets in TRANSITIONS.items() for target in targets}
    assert seen <= table
    assert table - seen == set(), f"edges never exercised: {sorted(table - seen)}"
