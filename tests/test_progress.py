"""A start is given time by its progress, not by the clock (issue 11): a download or a load that
keeps moving outlives start_timeout; a start that stops moving fails after it; start_deadline
bounds a start whatever it does."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .helpers import LLMCTL, STANDINS, by_name, free_port, llmctl, status_json, wait_for, write_config

SLOW_START = str(STANDINS / "slow_start.py")


def slow_instance(name: str, port: int, *flags: str, health: str = "start_timeout: 2", model: str = "") -> str:
    command = json.dumps([sys.executable, SLOW_START, "--port", str(port), *flags])
    model_line = f"    model: {model}\n" if model else ""
    return (
        f"  - name: {name}\n    backend: command\n    command: {command}\n    port: {port}\n{model_line}"
        f"    env: {{HF_HOME: '{{HF_HOME}}'}}\n"
        f"    health: {{interval: 0.5, timeout: 1, {health}}}\n    restart: {{policy: no}}\n"
    )


def test_a_download_longer_than_start_timeout_is_progress_and_shows_in_status(tmp_path, state_dir):
    """Only the cache folder grows (the server prints nothing) for 6 s; start_timeout is 2 s."""
    port = free_port()
    home = tmp_path / "hf"
    entry = slow_instance("dl", port, "--download-seconds", "6", "--repo", "org/big", model="org/big")
    write_config(tmp_path, "instances:\n" + entry.replace("{HF_HOME}", str(home)))
    up = subprocess.Popen([LLMCTL, "up"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = wait_for(
        lambda: (
            (p := by_name(status_json(cwd=tmp_path)).get("dl", {}).get("progress"))
            and p["phase"] == "downloading"
            and (p["downloaded_bytes"] or 0) > 1 << 20
            and p
        ),
        timeout=20,
    )
    assert seen["rate_bytes_per_s"] > 0 and seen["idle_s"] >= 0
    table = llmctl("status", cwd=tmp_path).stdout
    assert "downloading" in table and "MB/s" in table
    out, err = up.communicate(timeout=60)
    assert up.returncode == 0, err
    assert "dl: healthy" in out
    assert "llmctl: dl: downloading" in err  # off a terminal: one line per phase change, on stderr
    dl = by_name(status_json(cwd=tmp_path))["dl"]
    assert dl["restarts"] == 0 and dl["progress"] is None
    assert "serving" in (state_dir / "logs" / "dl.log").read_text()  # the one start lasted the whole download


def test_a_load_that_keeps_logging_outlives_start_timeout(tmp_path, state_dir):
    port = free_port()
    entry = slow_instance("load", port, "--log-seconds", "5")
    write_config(tmp_path, "instances:\n" + entry.replace("{HF_HOME}", str(tmp_path / "hf")))
    result = llmctl("up", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "llmctl: load: loading" in result.stderr
    log = (state_dir / "logs" / "load.log").read_text()
    # Ten half-second steps outlast the 2 s start_timeout; the one start saw every step, then served.
    assert "loading tensors 9" in log and "serving" in log
    assert by_name(status_json(cwd=tmp_path))["load"]["restarts"] == 0


def test_a_stalled_start_fails_after_start_timeout_without_progress(tmp_path, state_dir):
    port = free_port()
    entry = slow_instance("stuck", port, "--stall", health="start_timeout: 1.5")
    write_config(tmp_path, "instances:\n" + entry.replace("{HF_HOME}", str(tmp_path / "hf")))
    result = llmctl("up", cwd=tmp_path, timeout=120)  # a hang guard only: the message says what ended it
    assert result.returncode == 1
    assert "no progress for 1.5s" in result.stderr
    stuck = by_name(status_json(cwd=tmp_path))["stuck"]
    assert stuck["state"] == "failed" and stuck["pid"] is None


def test_start_deadline_bounds_a_start_that_keeps_moving(tmp_path, state_dir):
    port = free_port()
    entry = slow_instance("forever", port, "--log-seconds", "60", health="start_timeout: 2, start_deadline: 3")
    write_config(tmp_path, "instances:\n" + entry.replace("{HF_HOME}", str(tmp_path / "hf")))
    result = llmctl("up", cwd=tmp_path, timeout=50)  # a hang guard below the 60 s of logging
    assert result.returncode == 1
    assert "not healthy within start_deadline (3s)" in result.stderr
    assert "serving" not in (state_dir / "logs" / "forever.log").read_text()  # ended mid-load, as it moved


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_start_deadline_must_be_a_positive_number(tmp_path, value):
    entry = slow_instance("x", free_port(), health=f"start_deadline: {value}")
    write_config(tmp_path, "instances:\n" + entry.replace("{HF_HOME}", str(tmp_path / "hf")))
    result = llmctl("check", cwd=tmp_path)
    assert result.returncode == 2
    assert "health.start_deadline" in result.stderr and "Traceback" not in result.stderr


def test_ollama_pulls_a_missing_model_and_the_pull_is_progress(tmp_path, state_dir):
    """The STAND-IN Ollama (tests/standins/fake_ollama.py) pulls `pullme` in 4 s, printing nothing
    meanwhile: its blobs folder growing keeps a 1.5 s start_timeout from failing the start."""
    from .helpers import FAKE_OLLAMA

    port = free_port()
    models = tmp_path / "ollama-models"
    write_config(
        tmp_path,
        f"binaries: {{ollama: {FAKE_OLLAMA}}}\ninstances:\n  - name: pulled\n    backend: ollama\n"
        f"    model: pullme\n    port: {port}\n"
        f"    env: {{OLLAMA_MODELS: '{models}', STANDIN_PULL_SECONDS: '4'}}\n"
        "    health: {interval: 0.5, start_timeout: 1.5}\n",
    )
    result = llmctl("up", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (models / "blobs").is_dir() and any((models / "blobs").iterdir())
    assert by_name(status_json(cwd=tmp_path))["pulled"]["state"] == "healthy"


def test_mlx_loading_a_local_folder_shows_its_phase(tmp_path, state_dir, mlx_model):
    """The tiny model loads in about a second once Python's imports are warm: the phases seen are
    those of a real start, and a short start_timeout does not fail it."""
    port = free_port()
    write_config(
        tmp_path,
        f"instances:\n  - name: mlx\n    backend: mlx\n    model: {mlx_model}\n    port: {port}\n"
        "    health: {interval: 1, start_timeout: 5}\n",
    )
    up = subprocess.Popen([LLMCTL, "up"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    phases = set()

    def healthy() -> bool:
        mlx = by_name(status_json(cwd=tmp_path))["mlx"]
        if mlx["progress"]:
            phases.add(mlx["progress"]["phase"])
        return mlx["state"] == "healthy"

    wait_for(healthy, timeout=120, interval=0.1)
    assert up.wait(timeout=30) == 0
    assert phases and phases <= {"starting", "loading"}
    assert by_name(status_json(cwd=tmp_path))["mlx"]["progress"] is None


def test_progress_signs_one_by_one(tmp_path):
    """StartProgress on its own: each sign of life counts once; nothing, for long, is a stall."""
    from llmctl.logs.progress import StartProgress, phase_text

    log, cache = tmp_path / "server.log", tmp_path / "cache"
    log.write_text("start\n")
    cache.mkdir()
    progress = StartProgress(log, (cache,), started=100.0, last_progress=100.0)
    assert not progress.check(101.0) and progress.idle_for(105.0) == 5.0 and progress.phase == "starting"

    progress.answered(None)  # connection refused: a change from no answer at all, but not "up"
    assert progress.check(106.0) and progress.phase == "starting"
    progress.answered(None)
    assert not progress.check(107.0)

    (cache / "blob.incomplete").write_bytes(b"x" * 4_000_000)
    assert progress.check(108.0) and progress.phase == "downloading"
    assert progress.downloaded == 4_000_000 and progress.rate == 4_000_000  # one second since the last check
    with log.open("a") as file:
        file.write("model.safetensors:  45%|####5     | 1.20G/2.68G [00:10<00:12, 120MB/s]\r")
    assert progress.check(109.0)
    assert progress.total == int(2.68 * (1 << 30)) and progress.downloaded == int(1.20 * (1 << 30))
    assert phase_text(progress.describe(109.0)).startswith("downloading 1.2/2.7 GiB")

    assert not progress.check(113.0) and progress.phase == "loading"  # the cache stopped growing
    progress.answered(503, '{"error":{"code":503,"message":"Loading model"}}')
    assert progress.check(114.0)
    for second in range(115, 130):
        progress.answered(503, '{"error":{"code":503,"message":"Loading model"}}')
        assert not progress.check(float(second))  # the same answer again is no progress
    assert progress.idle_for(130.0) == 16.0


def test_a_progress_bar_in_the_log_is_a_download_even_without_a_watched_folder(tmp_path):
    from llmctl.logs.progress import StartProgress

    log = tmp_path / "server.log"
    log.write_text("start\n")
    progress = StartProgress(log, (), started=0.0, last_progress=0.0)
    with log.open("a") as file:
        file.write("Fetching 4 files:  25%|##5       | 1/4 [00:01<00:03]\r")  # files, not bytes: no figures
    assert progress.check(1.0) and progress.phase == "downloading" and progress.total is None
    with log.open("a") as file:
        file.write("model.safetensors:  10%|#         | 200M/2.00G [00:02<00:18, 100MB/s]\r")
    assert progress.check(2.0) and progress.phase == "downloading"
    assert progress.downloaded == 200 << 20 and progress.total == 2 << 30
    with log.open("a") as file:
        file.write("model.safetensors:  20%|##        | 400M/2.00G [00:04<00:16, 100MB/s]\r")
    assert progress.check(3.0) and progress.downloaded == 400 << 20
    assert progress.rate == 200 << 20  # 200 MiB in the second since the last check


def test_a_silent_download_into_the_instances_own_cache_is_progress_without_a_model_key(tmp_path, state_dir):
    """No `model:` to name the repo: the instance's own HF_HOME is watched as a whole."""
    port = free_port()
    entry = slow_instance("quiet", port, "--download-seconds", "5", "--repo", "org/other")
    write_config(tmp_path, "instances:\n" + entry.replace("{HF_HOME}", str(tmp_path / "hf")))
    up = subprocess.Popen([LLMCTL, "up"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(
        lambda: (
            (p := by_name(status_json(cwd=tmp_path)).get("quiet", {}).get("progress")) and p["phase"] == "downloading"
        ),
        timeout=20,
    )
    _, err = up.communicate(timeout=60)
    assert up.returncode == 0, err


def test_download_words_in_the_log_mean_downloading(tmp_path):
    from llmctl.logs.progress import StartProgress

    log = tmp_path / "server.log"
    log.write_text("")
    progress = StartProgress(log, (), started=0.0, last_progress=0.0)
    log.write_text("llama_model_load_from_hf: Downloading model from https://huggingface.co/...\n")
    assert progress.check(1.0) and progress.phase == "downloading"
    with log.open("a") as file:
        file.write("load_tensors: loading model tensors\n")
    assert progress.check(2.0) and progress.phase == "downloading"  # until the download has been quiet a while
    with log.open("a") as file:
        file.write("load_tensors: ....\n")
    assert progress.check(5.0) and progress.phase == "loading"


def test_a_fifo_or_link_in_place_of_the_log_never_hangs_the_check(tmp_path):
    import os

    from llmctl.logs.progress import StartProgress

    fifo = tmp_path / "server.log"
    os.mkfifo(fifo)
    progress = StartProgress(fifo, (), started=0.0, last_progress=0.0)
    progress.check(1.0)  # returns: a FIFO is not read
    target, link = tmp_path / "elsewhere", tmp_path / "link.log"
    target.write_text("")
    link.symlink_to(target)
    through_link = StartProgress(link, (), started=0.0, last_progress=0.0)
    target.write_text("Downloading model\n")
    assert through_link.check(1.0) and through_link.phase == "loading"  # its text is not read through a link
