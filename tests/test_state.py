"""State writes: atomic under kill -9 mid-write and on a full disk; version 1 files still read;
Ctrl-C during `up`."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

from llmctl.control import state

from .helpers import LLMCTL, by_name, command_instance, free_port, status_json, wait_for, write_config

WRITER = """
import sys
from pathlib import Path
from llmctl.control.state import InstanceRecord, save
path = Path(sys.argv[1])
spec = {"name": "x", "backend": "command", "command": ["x" * 4000], "port": 9000}
n = 0
while True:
    n += 1
    save(path, {"path": "c.yaml"}, [InstanceRecord(f"i{k}", spec, True, n, 1.0, n, 2.0, n) for k in range(20)])
"""


def test_kill_9_in_the_middle_of_writes_never_leaves_a_broken_file(tmp_path):
    path = tmp_path / "state.json"
    state.save(path, None, [])
    for _ in range(60):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
        time.sleep(random.uniform(0.05, 0.25))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        saved, warning = state.load(path)
        assert warning is None
        assert len(saved.records) in (0, 20)
    assert not [p for p in tmp_path.iterdir() if p.name != "state.json" and not p.name.endswith(".tmp")]


FULL_DISK = """
import json, resource, signal, sys
from pathlib import Path
from llmctl.control.state import InstanceRecord, load, save
path = Path(sys.argv[1])
save(path, None, [InstanceRecord("old", {})])
# A file may not grow past 16 KiB: writes beyond fail with EFBIG, as they would with ENOSPC on a full disk.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))
try:
    save(path, None, [InstanceRecord("new", {"pad": "y" * 20000})])
    print("WROTE")
except OSError as exc:
    print("REFUSED", exc.errno)
print(json.dumps([record.name for record in load(path)[0].records]))
"""


def test_a_failed_write_keeps_the_previous_state(tmp_path):
    """Runs everywhere (no mount namespace needed): a file-size limit makes the write fail mid-way."""
    path = tmp_path / "state.json"
    result = subprocess.run([sys.executable, "-c", FULL_DISK, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("REFUSED") and lines[1] == json.dumps(["old"])
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left behind


def test_version_1_state_files_are_still_read(tmp_path):
    path = tmp_path / "state.json"
    spec = {"name": "old", "backend": "command"}
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "config": "/x/instances.yaml",
                "instances": [
                    {
                        "name": "old",
                        "pid": 42,
                        "create_time": 1.5,
                        "pgid": 42,
                        "started_at": 2.0,
                        "spec": spec,
                        "restarts": 3,
                        "relay_pid": 43,
                        "relay_create_time": 1.6,
                    }
                ],
            }
        )
    )
    saved, warning = state.load(path)
    assert warning is None
    assert saved.config == {"path": "/x/instances.yaml"}
    assert saved.records == [state.InstanceRecord("old", spec, True, 42, 1.5, 42, 2.0, 3)]


def test_unknown_versions_and_garbage_are_a_warning(tmp_path):
    path = tmp_path / "state.json"
    for content in ('{"version": 3, "instances": []}', "[1, 2]", '{"version": 2, "instances": [{"spec": {}}]}'):
        path.write_text(content)
        saved, warning = state.load(path)
        assert saved.records == [] and warning and "corrupt" in warning


def test_ctrl_c_during_up_leaves_the_instance_supervised(tmp_path):
    port = free_port()
    write_config(tmp_path, "instances:" + command_instance("slow", port, "--load-seconds", "3"))
    up = subprocess.Popen([LLMCTL, "up"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (tmp_path / "state" / "supervisor.sock").exists(), timeout=20)
    wait_for(lambda: by_name(status_json(cwd=tmp_path))["slow"]["state"] == "starting", timeout=20)
    time.sleep(0.3)  # `up` is now in its wait request
    up.send_signal(signal.SIGINT)
    _, err = up.communicate(timeout=20)
    assert up.returncode == 130, err
    assert "keep starting under the supervisor" in err
    assert "Traceback" not in err
    instance = wait_for(
        lambda: (i := by_name(status_json(cwd=tmp_path))["slow"])["state"] == "healthy" and i, timeout=20
    )
    assert instance["restarts"] == 0
