"""RELIABILITY.md #21: backoff, crash-loop windows and uptime run on the monotonic clock, so a wall
clock that jumps an hour either way changes nothing. The supervisor runs in-process here so the
test can move the wall clock under it."""

from __future__ import annotations

import asyncio
import json
import sys
import time

from llmctl.config.load import parse_config
from llmctl.control.states import State
from llmctl.control.supervisor import Supervisor
from llmctl.paths import StatePaths

from .helpers import FAKE_SERVER, free_port


def config(tmp_path, name: str, *flags: str, restart: str):
    port = free_port()
    command = json.dumps([sys.executable, FAKE_SERVER, "--port", str(port), *flags])
    text = f"instances:\n  - name: {name}\n    backend: command\n    command: {command}\n    port: {port}\n"
    text += f"    health: {{path: /health, interval: 0.2}}\n    restart: {restart}\n"
    return parse_config(text, tmp_path / "instances.yaml")


def test_wall_clock_jumps_change_neither_backoff_nor_crash_loop_nor_uptime(tmp_path, monkeypatch):
    real_time = time.time
    offsets = iter([3600.0, -3600.0] * 10_000)
    monkeypatch.setattr(time, "time", lambda: real_time() + next(offsets))  # jumps ±1 h on every read

    async def scenario() -> tuple[dict, dict, float]:
        paths = StatePaths(tmp_path / "state").ensure()
        async with Supervisor(paths) as supervisor:
            crashing = config(
                tmp_path,
                "crashy",
                "--exit-at-once",
                "1",
                restart="{policy: on-failure, backoff: 0.4, max_starts: 3, window: 60}",
            )
            started = time.monotonic()
            await supervisor.up(crashing, [])
            while supervisor.runners["crashy"].state is not State.FAILED:
                assert time.monotonic() - started < 20, "stuck in backoff"
                await asyncio.sleep(0.05)
            took = time.monotonic() - started
            crashed = supervisor.status()["instances"][0]
            await supervisor.stop([])
            steady = config(tmp_path, "steady", restart="{policy: on-failure}")
            await supervisor.up(steady, [])
            await asyncio.sleep(1.0)
            healthy = next(i for i in supervisor.status()["instances"] if i["name"] == "steady")
            await supervisor.stop([])
            return crashed, healthy, took

    crashed, healthy, took = asyncio.run(scenario())
    assert crashed["restarts"] == 2 and "crash loop: 3 starts within 60s" in crashed["last_error"]
    assert took >= 0.4 * 0.8 + 0.8 * 0.8  # the two backoffs really were waited for, not skipped
    assert healthy["state"] == "healthy" and 0.9 <= healthy["uptime_s"] < 5
