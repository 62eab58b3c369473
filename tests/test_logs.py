"""Logs: bounded by size and count, rotated without losing a line a follower would see."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import threading
import time

import pytest

from .helpers import LLMCTL, command_instance, free_port, llmctl, wait_for, write_config

NUMBERED = re.compile(r"^line (\d+)$")


def numbers(lines: list[str]) -> list[int]:
    return [int(match.group(1)) for line in lines if (match := NUMBERED.match(line.split(" | ", 1)[-1]))]


def test_flooding_server_is_rotated_and_a_follower_loses_no_line(tmp_path, state_dir):
    port = free_port()
    config = "logs: {max_bytes: 65536, backups: 2}\ninstances:" + command_instance("flood", port, "--flood", "20000")
    write_config(tmp_path, config)
    assert llmctl("up", cwd=tmp_path).returncode == 0
    seen_file = tmp_path / "seen.txt"
    with seen_file.open("w") as out:  # a file, not a pipe nobody reads while we wait
        follower = subprocess.Popen([LLMCTL, "logs", "flood", "-f", "-n", "0"], cwd=tmp_path, stdout=out)
        time.sleep(4)  # about 80,000 lines: several rotations
        follower.terminate()
        follower.wait(timeout=10)
    seen = numbers(seen_file.read_text().splitlines())
    assert llmctl("down", cwd=tmp_path).returncode == 0

    assert len(seen) > 20000
    gaps = [(a, b) for a, b in itertools.pairwise(seen) if b != a + 1]
    assert gaps == []

    logs = state_dir / "logs"
    files = sorted(logs.glob("flood.log*"))
    assert [f.name for f in files] == ["flood.log", "flood.log.1", "flood.log.2"]
    for file in files:
        assert file.stat().st_size <= 65536 + 4096, file
    kept = []
    for file in reversed(files):  # oldest first
        kept += numbers(file.read_text().splitlines())
    assert kept == list(range(kept[0], kept[0] + len(kept)))  # contiguous across the rotated files


HUB_WITH_A_FULL_DISK = """
import resource, signal, sys, runpy
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))  # past 100 kB every write fails, like a full disk
sys.argv = ["logrelay.py", *sys.argv[1:]]
runpy.run_path({hub!r}, run_name="__main__")
"""


def test_log_hub_keeps_draining_when_the_disk_is_full(tmp_path):
    """On a full disk the hub drops lines but keeps reading, so a server never blocks on output."""
    from llmctl.logs import relay as logrelay

    pipes, logs = tmp_path / "pipes", tmp_path / "logs"
    pipes.mkdir()
    logs.mkdir()
    os.mkfifo(pipes / "flood.fifo", 0o600)
    hub = subprocess.Popen(
        [sys.executable, "-c", HUB_WITH_A_FULL_DISK.format(hub=logrelay.__file__), str(pipes), str(logs)]
    )
    try:
        writer = os.open(pipes / "flood.fifo", os.O_WRONLY)  # blocks until the hub opened it
        chunk = b"x" * 1023 + b"\n"
        written = []

        def flood() -> None:
            for _ in range(10 * 1024):  # 10 MiB, far more than a pipe buffer holds
                written.append(os.write(writer, chunk))
            os.close(writer)

        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        flooder.join(timeout=300)  # a hang guard: a hub that stopped reading leaves the writer blocked for good
        assert sum(written) == 10 * 1024 * 1024, f"the writer is blocked after {sum(written)} bytes"
        assert hub.poll() is None  # still serving
        assert 0 < (logs / "flood.log").stat().st_size <= 100_000
    finally:
        hub.terminate()
        hub.wait(timeout=10)


def test_over_long_lines_are_split_with_a_marker():
    from llmctl.logs.relay import SPLIT_MARKER, split_lines

    out, rest = split_lines(b"", b"short\n" + b"y" * 25 + b"\nz" + b"w" * 30, max_line=10)
    pieces = (
        (b"y" * 10 + SPLIT_MARKER) * 2 + b"yyyyy\n" + b"z" + b"w" * 9 + SPLIT_MARKER + (b"w" * 10 + SPLIT_MARKER) * 2
    )
    assert out == b"short\n" + pieces
    assert rest == b"w"  # an unfinished line waits for its end, never longer than max_line
    assert all(len(line) <= 10 + len(SPLIT_MARKER) for line in out.splitlines(keepends=True))


def test_a_planted_symlink_is_not_followed(tmp_path, state_dir):
    port = free_port()
    write_config(tmp_path, "instances:" + command_instance("fake", port))
    logs = state_dir / "logs"
    logs.mkdir(parents=True)
    target = tmp_path / "elsewhere.txt"
    (logs / "fake.log").symlink_to(target)
    result = llmctl("up", cwd=tmp_path)
    assert result.returncode == 1 and "fake failed: cannot start" in result.stderr
    assert not target.exists()


def rotate(log, backups: int) -> None:
    """What the log hub does: NAME.log -> NAME.log.1 -> ... -> NAME.log.K, by renaming."""
    for index in range(backups - 1, 0, -1):
        older = log.with_name(f"{log.name}.{index}")
        if older.exists():
            older.rename(log.with_name(f"{log.name}.{index + 1}"))
    log.rename(log.with_name(f"{log.name}.1"))


def test_a_follower_goes_through_every_rotation_in_order(tmp_path):
    """Three rotations between two looks, as under a 20 MB/s flood: every line, in order."""
    from llmctl.logs.files import _Follower

    log = tmp_path / "x.log"
    log.write_text("line 1\n")
    follower = _Follower(log, from_end=False)
    assert list(follower.read_lines()) == ["line 1"]
    number = 1
    for _ in range(3):
        with log.open("a") as out:
            for _ in range(5):
                number += 1
                out.write(f"line {number}\n")
        rotate(log, backups=3)
        log.write_text("")
    with log.open("a") as out:
        out.write(f"line {number + 1}\n")
    assert numbers(list(follower.read_lines())) == list(range(2, number + 2))


def test_logs_splits_an_over_long_line_and_holds_no_more_than_a_piece(tmp_path):
    from llmctl.logs.files import MAX_LINE, SPLIT_MARKER, _Follower, last_lines

    log = tmp_path / "x.log"
    log.write_bytes(b"short\n" + b"y" * (3 * MAX_LINE + 10) + b"\nend\n")
    lines = last_lines(log, 10)
    assert lines[0] == "short" and lines[-1] == "end"
    assert [len(line) for line in lines[1:-1]] == [MAX_LINE + len(SPLIT_MARKER)] * 3 + [10]
    follower = _Follower(log, from_end=False)
    assert list(follower.read_lines()) == lines
    with log.open("ab") as out:
        out.write(b"z" * (2 * MAX_LINE + 5))  # no newline yet
    pieces = list(follower.read_lines())
    assert len(pieces) == 2 and all(piece.endswith(SPLIT_MARKER) for piece in pieces)
    assert len(follower.partial) == 5


HOSTILE = b"clip\x1b]52;c;aGVsbG8=\x07 title\x1b]0;pwned\x07 clear\x1b[2J bad\xff utf8\n"


def run_on_a_terminal(*args: str, cwd) -> bytes:
    """Run llmctl with a pseudo-terminal as its stdout; what it wrote there."""
    import os
    import pty

    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "300"}  # wide enough that no cell is cut
    process = subprocess.Popen([LLMCTL, *args], cwd=cwd, stdout=follower, stderr=subprocess.PIPE, env=env)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO once the other side is closed
            break
        if not chunk:
            break
        output += chunk
    process.wait(timeout=30)
    os.close(leader)
    return output


def test_server_output_never_reaches_a_terminal_raw(tmp_path, state_dir):
    port = free_port()
    write_config(tmp_path, "instances:" + command_instance("loud", port, "--say-hex", HOSTILE.hex()))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    shown = run_on_a_terminal("logs", "loud", cwd=tmp_path)
    assert b"\x1b" not in shown and b"\x07" not in shown
    assert b"clip\\x1b]52;c;aGVsbG8=\\x07" in shown and b"bad\\xff utf8" in shown
    assert b"\x1b]52" in run_on_a_terminal("logs", "--raw", "loud", cwd=tmp_path)  # asked for
    piped = subprocess.run([LLMCTL, "logs", "loud"], cwd=tmp_path, capture_output=True, env=None).stdout
    assert HOSTILE in piped  # off a terminal the bytes pass unchanged


def test_rich_markup_in_outside_text_is_shown_not_obeyed(tmp_path, state_dir):
    port = free_port()
    write_config(tmp_path, "instances:" + command_instance("odd", port, extra="    model: 'weird[/]name[bold]x'\n"))
    for args in (("status",), ("up",), ("status",)):
        shown = run_on_a_terminal(*args, cwd=tmp_path)
        assert b"Traceback" not in shown
    assert b"weird[/]name[bold]x" in shown


def test_logs_since_a_duration_shows_only_recent_lines(tmp_path, state_dir):
    """Judged on what the files held when, never on how fast the machine is: ticks on disk before the
    relay's mark that precedes the cut are left out, a tick written after the cut is shown, and what is
    shown runs without a gap to the end. The cut is an absolute time, so the moment the command starts
    changes nothing."""
    import datetime
    import math

    port = free_port()
    write_config(tmp_path, "instances:" + command_instance("ticker", port, "--tick", "0.1"))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    log, marks = state_dir / "logs" / "ticker.log", state_dir / "logs" / "ticker.marks"

    def ticks_on_disk() -> list[int]:
        return [int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("tick ")]

    early = wait_for(lambda: (t := ticks_on_disk()) and t[-1] >= 5 and t, timeout=60)
    read_at = time.time()
    mark = wait_for(lambda: next((w for w in _mark_times(marks) if w > read_at), None), timeout=60)
    cut = math.ceil(mark)  # a mark at or before the cut, after `early` was on disk
    wait_for(lambda: time.time() > cut + 0.01, timeout=60)
    then = ticks_on_disk()
    later = wait_for(lambda: (t := ticks_on_disk())[-1] > then[-1] and t[-1], timeout=60)  # written after the cut

    since = datetime.datetime.fromtimestamp(cut).strftime("%Y-%m-%dT%H:%M:%S")
    recent = llmctl("logs", "ticker", "--since", since, cwd=tmp_path)
    assert recent.returncode == 0, recent.stderr
    ticks = [int(line.split()[1]) for line in recent.stdout.splitlines() if line.startswith("tick ")]
    assert ticks and ticks[0] > early[-1]  # the first seconds are left out
    assert ticks == list(range(ticks[0], ticks[-1] + 1)) and ticks[-1] >= later  # nothing after the cut is lost
    everything = llmctl("logs", "ticker", "--since", "1h", cwd=tmp_path).stdout
    all_ticks = [int(line.split()[1]) for line in everything.splitlines() if line.startswith("tick ")]
    assert all_ticks[0] == 1 and all_ticks[-1] >= later  # --since alone shows all of them, not the last 50
    limited = llmctl("logs", "ticker", "--since", "1h", "-n", "3", cwd=tmp_path).stdout.splitlines()
    assert len(limited) == 3


def _mark_times(marks) -> list[float]:
    """The times in the relay's NAME.marks file (`EPOCH INODE OFFSET` lines)."""
    try:
        return [float(line.split()[0]) for line in marks.read_text().splitlines() if line.strip()]
    except (OSError, ValueError, IndexError):
        return []


@pytest.mark.parametrize("value", ["yesterday", "5 minutes", "-3m", "25:99", ""])
def test_logs_since_refuses_what_it_cannot_read(tmp_path, state_dir, value):
    write_config(tmp_path, "instances:" + command_instance("a", free_port()))
    result = llmctl("logs", "a", "--since", value, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--since" in result.stderr and "Traceback" not in result.stderr


def test_parse_since_forms():
    import datetime

    from llmctl.logs.files import parse_since

    now = 1_800_000_000.0
    assert parse_since("90s", now) == now - 90 and parse_since("90", now) == now - 90
    assert parse_since("1h30m", now) == now - 5400 and parse_since("2d", now) == now - 172800
    assert parse_since("2026-11-27 07:30", now) == datetime.datetime(2026, 11, 27, 7, 30).timestamp()
    assert parse_since("2026-11-27T07:30:05", now) == datetime.datetime(2026, 11, 27, 7, 30, 5).timestamp()
    today = datetime.date.fromtimestamp(now)
    assert parse_since("07:30", now) == datetime.datetime.combine(today, datetime.time(7, 30)).timestamp()


def test_logs_prefixes_colour_and_probe_noise(tmp_path, state_dir, mlx_model):
    write_config(
        tmp_path,
        f"instances:\n  - name: mlx\n    backend: mlx\n    model: {mlx_model}\n    port: {free_port()}\n"
        + command_instance("other", free_port()),
    )
    logs = state_dir / "logs"
    logs.mkdir(parents=True, mode=0o700)
    os.chmod(state_dir, 0o700)
    (logs / "mlx.log").write_text(
        "2026-11-27 07:33:58,797 - INFO - Starting httpd at 127.0.0.1 on port 50819...\n"
        '127.0.0.1 - - [27/Nov/2026 07:33:58] "GET /health HTTP/1.1" 200 -\n'
        '127.0.0.1 - - [27/Nov/2026 07:33:58] "POST /v1/completions HTTP/1.1" 200 -\n'
        '127.0.0.1 - - [27/Nov/2026 07:33:59] "GET /health HTTP/1.1" 503 -\n'
    )
    (logs / "other.log").write_text("hello from other\n")

    quiet = llmctl("logs", "mlx", cwd=tmp_path).stdout
    assert 'GET /health HTTP/1.1" 200' not in quiet  # probe noise hidden
    assert "POST /v1/completions" in quiet and "503" in quiet  # a failing probe is news, not noise
    assert llmctl("logs", "mlx", "--probes", cwd=tmp_path).stdout.count("GET /health") == 2

    both = llmctl("logs", cwd=tmp_path).stdout.splitlines()
    assert "other | hello from other" in both and "\x1b[" not in "".join(both)
    bare = llmctl("logs", "--no-prefix", cwd=tmp_path).stdout.splitlines()
    assert "hello from other" in bare and not any(" | " in line for line in bare)
    coloured = llmctl("logs", cwd=tmp_path, env={"FORCE_COLOR": "1"}).stdout
    assert "\x1b[33mother | \x1b[0mhello from other" in coloured
    no_colour = llmctl("logs", cwd=tmp_path, env={"FORCE_COLOR": "1", "NO_COLOR": "1"}).stdout
    assert "\x1b[" not in no_colour


def test_up_foreground_hides_health_probe_lines_as_logs_does(tmp_path, state_dir, mlx_model):
    """mlx_lm.server logs every probe; `up --foreground` shows the server's other lines, not those.
    A request made after probes were logged marks a point the output must reach: lines are shown in
    order, so every probe before it has been through the filter by then."""
    import signal
    import urllib.request

    port = free_port()
    write_config(
        tmp_path,
        f"instances:\n  - name: mlx-chat\n    backend: mlx\n    model: {mlx_model}\n    port: {port}\n"
        "    health: {interval: 0.2}\n",
    )
    log = state_dir / "logs" / "mlx-chat.log"
    up = subprocess.Popen([LLMCTL, "up", "--foreground"], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    shown: list[str] = []
    reader = threading.Thread(target=lambda: shown.extend(up.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: log.exists() and log.read_text().count('"GET /health HTTP/1.1" 200') >= 3, timeout=120)
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=30).read()
        wait_for(lambda: any("GET /v1/models" in line for line in list(shown)), timeout=60)
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(timeout=60)
        reader.join(timeout=10)
    assert not [line for line in shown if '"GET /health HTTP/1.1" 200' in line], shown
    assert log.read_text().count('"GET /health HTTP/1.1" 200') >= 3  # they were there to hide
