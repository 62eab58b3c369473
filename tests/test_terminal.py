"""The views a person sees, in a real terminal: tmux at 80 columns, read back with capture-pane."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import uuid

import pytest

from .helpers import LLMCTL, command_instance, free_port, llmctl, wait_for, write_config

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Terminal:
    def __init__(self, cwd, state_dir, width: int = 80, height: int = 30) -> None:
        self.server = f"llmctl-test-{uuid.uuid4().hex[:8]}"
        self.cwd, self.state_dir, self.width, self.height = cwd, state_dir, width, height

    def tmux(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.server, *args], capture_output=True, text=True, timeout=20)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def start(self, command: str) -> None:
        environment = {"LLMCTL_STATE_DIR": str(self.state_dir), "TERM": "xterm-256color", "PATH": os.environ["PATH"]}
        exports = " ".join(f"{key}={shlex.quote(value)}" for key, value in environment.items())
        script = f"cd {shlex.quote(str(self.cwd))} && export {exports} && {command}; echo EXITED $?; sleep 600"
        self.tmux("new-session", "-d", "-x", str(self.width), "-y", str(self.height), "bash", "--norc", "-c", script)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p")

    def wait_for_text(self, text: str, timeout: float = 60) -> str:
        def shown() -> str | None:
            screen = self.screen()
            return screen if text in screen else None

        return wait_for(shown, timeout=timeout, interval=0.2, message=f"{text!r} on screen")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", *keys)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.server, "kill-server"], capture_output=True)


@pytest.fixture
def terminal(tmp_path, state_dir):
    opened = Terminal(tmp_path, state_dir)
    yield opened
    opened.close()


def fleet(tmp_path) -> tuple[int, int]:
    good, bad = free_port(), free_port()
    write_config(
        tmp_path,
        "instances:"
        + command_instance("web-assistant", good, "--allocate-mb", "20")
        + command_instance("broken", bad, "--exit-at-once", "3", extra="    restart: {policy: no}\n"),
    )
    result = llmctl("up", cwd=tmp_path)
    assert result.returncode == 1  # `broken` failed; `web-assistant` is up
    return good, bad


def test_status_fits_80_columns_and_keeps_state_and_reason(tmp_path, terminal):
    fleet(tmp_path)
    terminal.start(f"{LLMCTL} status")
    screen = terminal.wait_for_text("EXITED 0")
    lines = screen.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert any("web-assistant" in line and "healthy" in line for line in lines)
    assert any("broken" in line and "failed" in line for line in lines)
    flat = " ".join(line.strip("│ ") for line in lines)
    assert "exited with code 3" in flat  # the reason is shown (wrapped if it must), never dropped
    assert "HEALTH" in screen and "STATE" in screen


def test_status_watch_draws_memory_bars_and_leaves_a_clean_terminal(tmp_path, terminal):
    fleet(tmp_path)
    terminal.start(f"{LLMCTL} status --watch --interval 0.5")
    screen = terminal.wait_for_text("░", timeout=30)
    assert "memory:" in screen and "budget" in screen
    bar_line = next(line for line in screen.splitlines() if "web-assistant" in line)
    assert "░" in bar_line and "MiB" in bar_line
    assert all(len(line) <= 80 for line in screen.splitlines())
    time.sleep(1.2)  # a refresh or two: the table is redrawn in place, not appended
    assert terminal.screen().count("web-assistant") == 1
    terminal.keys("C-c")
    after = terminal.wait_for_text("EXITED 0", timeout=15)
    exited = next(line for line in after.splitlines() if "EXITED" in line)
    assert exited.startswith("EXITED 0")  # on a line of its own: the cursor was left at a clean start
    assert "Traceback" not in after and "KeyboardInterrupt" not in after


def test_up_on_a_terminal_shows_one_live_line_per_instance_with_its_phase(tmp_path, terminal):
    port = free_port()
    write_config(tmp_path, "instances:" + command_instance("slowpoke", port, "--load-seconds", "6", "--tick", "0.5"))
    terminal.start(f"{LLMCTL} up")
    loading = terminal.wait_for_text("loading", timeout=30)
    assert sum("slowpoke" in line for line in loading.splitlines()) == 1
    done = terminal.wait_for_text("EXITED 0", timeout=60)
    assert any("slowpoke" in line and "healthy" in line for line in done.splitlines())


def test_up_foreground_streams_logs_above_the_live_table(tmp_path, terminal):
    port = free_port()
    write_config(tmp_path, "instances:" + command_instance("ticker", port, "--tick", "0.3"))
    terminal.start(f"{LLMCTL} up --foreground")
    terminal.wait_for_text("ticker | tick 5", timeout=60)
    screen = terminal.screen()
    table_top = next(index for index, line in enumerate(screen.splitlines()) if "NAME" in line and "STATE" in line)
    log_lines = [index for index, line in enumerate(screen.splitlines()) if "ticker | tick" in line]
    assert log_lines and max(log_lines) < table_top  # the logs scroll above, the table stays below
    assert all(len(line) <= 80 for line in screen.splitlines())
    terminal.keys("C-c")
    terminal.wait_for_text("EXITED 130", timeout=30)


def test_up_foreground_off_a_terminal_prints_prefixed_logs(tmp_path, state_dir):
    import signal

    port = free_port()
    write_config(tmp_path, "instances:" + command_instance("ticker", port, "--tick", "0.2"))
    foreground = subprocess.Popen(
        [LLMCTL, "up", "--foreground"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        seen = []
        while not any(line.startswith("ticker | tick 3") for line in seen):
            seen.append(foreground.stdout.readline().rstrip("\n"))
            assert seen[-1] or foreground.poll() is None
        foreground.send_signal(signal.SIGINT)
        assert foreground.wait(timeout=30) == 130
    finally:
        foreground.kill()
    assert "\x1b[" not in "".join(seen)
