"""Issue 19: a state folder that turns unwritable under a running supervisor, `logs -f` under a flood,
and external servers that die. Real processes throughout (a supervisor, the log hub, fake servers)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import psutil
import pytest

from .helpers import (
    LLMCTL,
    by_name,
    command_instance,
    fake_server_command,
    free_port,
    llmctl,
    processes_mentioning,
    supervisor_pid,
    wait_for,
    write_config,
)

# -- a state folder that cannot be written -------------------------------------------------------

# Root writes through any mode: the commands of these tests run without the capabilities that let it
# (setpriv drops them from the bounding set, so the supervisor they start lacks them too).
UNPRIVILEGED = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner"] if os.geteuid() == 0 else []
needs_mode_checks = pytest.mark.skipif(
    os.geteuid() == 0 and shutil.which("setpriv") is None, reason="root without setpriv: modes do not bind root"
)


def run(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`llmctl ARGS` as a user whom a folder's mode binds (a hang guard, not a figure, as timeout)."""
    return subprocess.run(
        [*UNPRIVILEGED, LLMCTL, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _fleet(tmp_path: Path) -> int:
    port = free_port()
    write_config(tmp_path, "instances:" + command_instance("web", port, "--tick", "0.1"))
    up = run("up", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    return port


def _everything_gone(state_dir: Path, port: int) -> None:
    """No supervisor, log hub (both name the state folder) or server (its port) is left."""
    wait_for(lambda: not processes_mentioning(str(state_dir)) and not processes_mentioning(str(port)), timeout=30)


def _one_error_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("llmctl: error:"), result.stderr
    assert all(word in lines[0] for word in words), lines[0]


@contextlib.contextmanager
def mode(folder: Path, bits: int):
    folder.chmod(bits)
    try:
        yield
    finally:
        folder.chmod(0o700)


@needs_mode_checks
def test_a_folder_made_read_only_is_reported_and_down_still_stops_everything(tmp_path, state_dir):
    port = _fleet(tmp_path)
    with mode(state_dir, 0o500):
        status = run("status", cwd=tmp_path)
        assert status.returncode == 3 and "web" in status.stdout  # the servers are still shown
        _one_error_line(status, str(state_dir), "Permission denied")
        up = run("up", cwd=tmp_path)
        assert up.returncode == 3
        _one_error_line(up, str(state_dir), "Permission denied", "chmod 700")
        down = run("down", cwd=tmp_path)
        assert down.returncode == 0, down.stderr
        assert "web: stopped" in down.stdout
        _everything_gone(state_dir, port)
    assert "Traceback" not in (state_dir / "supervisor.log").read_text()  # it ended as asked, not by a crash


@needs_mode_checks
def test_a_supervisor_killed_in_a_read_only_folder_is_not_waited_for(tmp_path, state_dir):
    port = _fleet(tmp_path)
    pid = supervisor_pid(state_dir)
    with mode(state_dir, 0o500):
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
        up = run("up", cwd=tmp_path)
        assert up.returncode == 3
        _one_error_line(up, str(state_dir), "Permission denied")
        assert not [p for p in processes_mentioning(str(state_dir)) if "llmctl.control.daemon" in p.cmdline()]
        down = run("down", cwd=tmp_path)  # no supervisor can start here: the recorded server and the hub go
        assert down.returncode == 0, down.stderr
        assert "web: stopped" in down.stdout
        _everything_gone(state_dir, port)


@needs_mode_checks
def test_a_folder_made_unsearchable_is_reported_and_down_still_stops_everything(tmp_path, state_dir):
    port = _fleet(tmp_path)
    with mode(state_dir, 0o000):
        status = run("status", cwd=tmp_path)
        assert status.returncode == 3
        _one_error_line(status, str(state_dir), "Permission denied")
        down = run("down", cwd=tmp_path)  # the socket cannot be reached: the supervisor is signalled
        assert down.returncode == 0, down.stderr
        _everything_gone(state_dir, port)


@pytest.fixture
def small_disk(state_dir):
    """The state folder on a 2 MiB tmpfs (root only), unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    state_dir.mkdir(mode=0o700, parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(state_dir)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield state_dir
    subprocess.run([LLMCTL, "down"], capture_output=True, timeout=120)
    subprocess.run(["umount", "-l", str(state_dir)])


def test_a_full_disk_is_reported_and_down_still_stops_everything(tmp_path, small_disk):
    port = _fleet(tmp_path)
    with open(small_disk / "filler", "wb") as filler, contextlib.suppress(OSError):
        while True:
            filler.write(b"\0" * 65536)
            filler.flush()
    status = run("status", cwd=tmp_path)
    assert status.returncode == 3 and "web" in status.stdout
    _one_error_line(status, str(small_disk), "No space left on device")
    up = run("up", cwd=tmp_path)
    assert up.returncode == 3
    _one_error_line(up, str(small_disk), "No space left on device")
    down = run("down", cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    _everything_gone(small_disk, port)


# -- external servers ------------------------------------------------------------------------------


@pytest.fixture
def outside_fake():
    """A fake llama-server started outside llmctl (as a desktop app would run its own); killed at the end."""
    started: list[subprocess.Popen] = []

    def start(port: int) -> subprocess.Popen:
        server = subprocess.Popen(fake_server_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(server)
        wait_for(lambda: _answers(port), timeout=30)
        return server

    yield start
    for server in started:
        server.kill()
        server.wait()


def status_json(cwd: Path) -> dict:
    """`llmctl status --json`, with all it said when it fails."""
    result = llmctl("status", "--json", cwd=cwd)
    assert result.returncode == 0, (result.returncode, result.stdout[-2000:], result.stderr)
    return json.loads(result.stdout)


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", trust_env=False, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _external(name: str, port: int, health: str) -> str:
    return f"\n  - name: {name}\n    backend: external\n    kind: llama.cpp\n    url: http://127.0.0.1:{port}\n    health: {health}\n"


def test_an_external_server_whose_process_dies_is_seen_dead_at_once(tmp_path, state_dir, outside_fake):
    port = free_port()
    server = outside_fake(port)
    # Probes alone would need 1000 failures a second apart (17 minutes) to call it down.
    write_config(tmp_path, "instances:" + _external("desk", port, "{interval: 1, timeout: 1, failure_threshold: 1000}"))
    up = llmctl("up", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    assert by_name(status_json(cwd=tmp_path))["desk"]["pid"] == server.pid
    server.kill()
    server.wait()
    desk = wait_for(lambda: (i := by_name(status_json(cwd=tmp_path))["desk"])["state"] == "unhealthy" and i, timeout=30)
    assert f"pid {server.pid}" in desk["reason"] and "exited" in desk["reason"], desk["reason"]
    assert desk["pid"] is None and desk["restarts"] == 0

    back = outside_fake(port)  # its app starts it again: healthy, and watched again
    desk = wait_for(lambda: (i := by_name(status_json(cwd=tmp_path))["desk"])["state"] == "healthy" and i, timeout=30)
    assert desk["pid"] == back.pid


def test_a_request_for_an_external_server_that_is_down_is_refused_with_503(tmp_path, state_dir, outside_fake):
    port, gateway_port = free_port(), free_port()
    server = outside_fake(port)
    write_config(
        tmp_path,
        f"gateway: {{port: {gateway_port}, max_wait: 600}}\ninstances:"
        + _external("desk", port, "{interval: 0.2, timeout: 1, failure_threshold: 1}"),
    )
    assert llmctl("up", cwd=tmp_path).returncode == 0
    server.kill()
    server.wait()
    wait_for(lambda: by_name(status_json(cwd=tmp_path))["desk"]["state"] == "unhealthy", timeout=30)
    reply = httpx.post(  # max_wait is 600 s: a request that waited for it would outlast this hang guard
        f"http://127.0.0.1:{gateway_port}/v1/chat/completions",
        json={"model": "desk", "messages": [{"role": "user", "content": "hi"}]},
        trust_env=False, timeout=120,
    )  # fmt: skip
    assert reply.status_code == 503, reply.text
    assert "desk" in reply.text and "own app" in reply.text
    assert reply.headers.get("Retry-After") == "5"


# -- `logs -f` under a flood ---------------------------------------------------------------------

NUMBERED = re.compile(r"^line (\d+)$")
MISSED = re.compile(r"^\[llmctl\] (\d+) lines missed: ")


def _followed(text: str) -> list[int | tuple[str, int]]:
    """The follower's output: each numbered line's number, and ("missed", N) for each notice."""
    items: list[int | tuple[str, int]] = []
    for line in text.splitlines():
        if match := NUMBERED.match(line):
            items.append(int(match.group(1)))
        elif match := MISSED.match(line):
            items.append(("missed", int(match.group(1))))
    return items


def _written(state_dir: Path) -> int:
    """The number of the last line the flood's live log holds (0 before any); 1 KiB files hold ~90."""
    try:
        lines = (state_dir / "logs" / "flood.log").read_text().splitlines()
    except OSError:
        return 0
    found = [int(match.group(1)) for line in lines[-3:] if (match := NUMBERED.match(line))]
    return found[-1] if found else 0


def _flood(tmp_path: Path, state_dir: Path, per_second: int, backups: int) -> None:
    port = free_port()
    config = f"logs: {{max_bytes: 1024, backups: {backups}}}\ninstances:" + command_instance(
        "flood", port, "--flood", str(per_second)
    )
    write_config(tmp_path, config)
    assert llmctl("up", cwd=tmp_path).returncode == 0
    wait_for(lambda: _written(state_dir) > 0)


def test_a_follower_that_keeps_up_sees_every_line_once_in_order_across_rotations(tmp_path, state_dir):
    # 1 KiB files: a rotation every ~90 lines; 100 backups: a follower may lag ~9 s and still keep up.
    _flood(tmp_path, state_dir, 1000, backups=100)
    seen_file = tmp_path / "seen.txt"
    with seen_file.open("w") as out:
        follower = subprocess.Popen([LLMCTL, "logs", "flood", "-f", "-n", "0"], cwd=tmp_path, stdout=out)
        start = _written(state_dir)
        wait_for(lambda: _written(state_dir) >= start + 4000, timeout=60)  # ~45 rotations while it follows
        follower.terminate()
        follower.wait(timeout=10)
    items = _followed(seen_file.read_text())
    assert all(isinstance(item, int) for item in items), "a follower that keeps up misses nothing"
    assert len(items) > 3000
    assert items == list(range(items[0], items[0] + len(items)))  # each line once, in order, no gap


def test_a_follower_that_falls_behind_says_how_many_lines_it_missed(tmp_path, state_dir):
    _flood(tmp_path, state_dir, 2000, backups=1)
    seen_file = tmp_path / "seen.txt"
    with seen_file.open("w") as out:
        follower = subprocess.Popen([LLMCTL, "logs", "flood", "-f", "-n", "0"], cwd=tmp_path, stdout=out)
        wait_for(lambda: NUMBERED.match(seen_file.read_text().split("\n", 1)[0]))  # it follows
        follower.send_signal(signal.SIGSTOP)  # it falls behind: several rotations while it cannot read
        start = _written(state_dir)
        wait_for(lambda: _written(state_dir) >= start + 1000, timeout=60)  # ~11 rotations; 1 backup kept
        follower.send_signal(signal.SIGCONT)
        wait_for(lambda: "lines missed" in seen_file.read_text(), timeout=30)
        follower.terminate()
        follower.wait(timeout=10)
    items = _followed(seen_file.read_text())
    notices = [item for item in items if isinstance(item, tuple)]
    assert notices, "no notice of the lines it missed"
    for before, notice, after in zip(items, items[1:], items[2:], strict=False):
        if isinstance(notice, tuple):
            assert isinstance(before, int) and isinstance(after, int)
            assert after - before - 1 == notice[1], (before, notice, after)  # exactly the lines it did not see
    numbers = [item for item in items if isinstance(item, int)]
    gaps = [(a, b) for a, b in itertools.pairwise(numbers) if b != a + 1]
    assert len(gaps) == len(notices)  # no line lost without a notice, none seen twice
