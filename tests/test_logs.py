"""Logs: bounded by size and count, rotated without losing a line a follower would see."""

from __future__ import annotations

import itertools
import re
import subprocess
import time

from .helpers import LLMCTL, command_instance, free_port, llmctl, write_config

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


def test_relay_keeps_draining_when_the_disk_is_full():
    """On a full disk the relay drops lines but keeps reading, so a server never blocks on output."""
    from llmctl.process import RELAY_COMMAND

    relay = subprocess.Popen(
        [*RELAY_COMMAND, "/dev/full", "--max-bytes", "100000", "--backups", "0"],
        stdin=subprocess.PIPE,
    )
    chunk = b"x" * 1023 + b"\n"
    started = time.monotonic()
    for _ in range(10 * 1024):  # 10 MiB, far more than a pipe buffer holds
        relay.stdin.write(chunk)
    relay.stdin.close()
    assert relay.wait(timeout=30) == 0
    assert time.monotonic() - started < 30


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
