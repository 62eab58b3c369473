"""RELIABILITY.md #21: backoff, crash-loop windows and uptime run on the monotonic clock, so a wall
clock that jumps an hour either way changes nothing. The supervisor runs in-process here so the
test can move the wall clock under it."""

from __future__ import annotations

import asyncio
import json
import sys
import time

from llmctl.config.load import parse_config
from llmctl.control.runner import Runner
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
    """Judged on the supervisor's own monotonic stamps, never on how long the test took: each restart
    comes no earlier than the backoff it announced, the announced delays are the configured ones, and
    uptime lies between zero and the time since `up` (a wall-clock uptime would be off by an hour)."""
    real_time = time.time
    offsets = iter([3600.0, -3600.0] * 10_000)
    monkeypatch.setattr(time, "time", lambda: real_time() + next(offsets))  # jumps ±1 h on every read
    moves: list[tuple[str, State, float, float | None]] = []
    real_move = Runner._move

    def recording_move(self: Runner, target: State, reason: str) -> None:
        real_move(self, target, reason)
        moves.append((self.name, target, self.state_since, self.next_start_at))

    monkeypatch.setattr(Runner, "_move", recording_move)

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
            await supervisor.up(crashing, [])
            while supervisor.runners["crashy"].state is not State.FAILED:
                await asyncio.sleep(0.05)
            crashed = supervisor.status()["instances"][0]
            await supervisor.stop([])
            steady = config(tmp_path, "steady", restart="{policy: on-failure}")
            since_up = time.monotonic()
            await supervisor.up(steady, [])
            while supervisor.runners["steady"].state is not State.HEALTHY:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            healthy = next(i for i in supervisor.status()["instances"] if i["name"] == "steady")
            bound = time.monotonic() - since_up
            await supervisor.stop([])
            return crashed, healthy, bound

    # A hang guard only: a backoff computed on the jumping wall clock would wait an hour.
    crashed, healthy, bound = asyncio.run(asyncio.wait_for(scenario(), timeout=120))
    assert crashed["restarts"] == 2 and "crash loop: 3 starts within 60s" in crashed["last_error"]
    crashy = [(state, since, next_at) for name, state, since, next_at in moves if name == "crashy"]
    backoffs = [(since, next_at) for state, since, next_at in crashy if state is State.BACKOFF]
    restarts = [since for state, since, _ in crashy if state is State.STARTING][1:]  # the first is the plain start
    assert len(backoffs) == 2 and len(restarts) == 2
    for (entered, due), (low, high), restarted in zip(backoffs, [(0.32, 0.48), (0.64, 0.96)], restarts, strict=True):
        assert due is not None and low <= due - entered <= high  # 0.4 s then 0.8 s, each ±20 %
        # The backoff was waited for, not skipped (asyncio may wake one clock tick early: 1 ms of slack).
        assert restarted >= due - 0.001
    assert healthy["state"] == "healthy" and 0 < healthy["uptime_s"] <= bound
