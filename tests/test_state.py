"""State writes: atomic under kill -9 mid-write and on a full disk; Ctrl-C during `up`."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from llmctl.state import load_records, save_records

from .helpers import LLMCTL, by_name, command_instance, free_port, status_json, wait_for, write_config

WRITER = """
import sys, time
from pathlib import Path
from llmctl.state import InstanceRecord, save_records
path = Path(sys.argv[1])
spec = {"name": "x", "backend": "command", "command": ["x" * 4000], "port": 9000}
n = 0
while True:
    n += 1
    save_records(path, "c.yaml", [InstanceRecord(f"i{k}", n, 1.0, n, 2.0, spec, n) for k in range(20)])
"""


def test_kill_9_in_the_middle_of_writes_never_leaves_a_broken_file(tmp_path):
    path = tmp_path / "state.json"
    save_records(path, "c.yaml", [])
    for _ in range(60):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
        time.sleep(random.uniform(0.05, 0.25))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        _, records, warning = load_records(path)
        assert warning is None
        assert len(records) in (0, 20)
    assert not [p for p in tmp_path.iterdir() if p.name != "state.json" and not p.name.endswith(".tmp")]


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare to mount a tiny tmpfs")
def test_full_disk_keeps_the_previous_state(tmp_path):
    script = f"""
set -e
mount -t tmpfs -o size=64k tmpfs {tmp_path}
{sys.executable} - <<'PY'
import json
from pathlib import Path
from llmctl.state import InstanceRecord, load_records, save_records
path = Path("{tmp_path}") / "state.json"
save_records(path, "c.yaml", [InstanceRecord("old", 1, 1.0, 1, 1.0, {{}}, 0)])
Path("{tmp_path}/filler").write_bytes(b"x" * (64 * 1024 - 8192))
try:
    save_records(path, "c.yaml", [InstanceRecord("new", 2, 1.0, 2, 1.0, {{"pad": "y" * 20000}}, 0)])
    print("WROTE")
except OSError as exc:
    print("ENOSPC" if exc.errno == 28 else exc)
print(json.dumps([r.name for r in load_records(path)[1]]))
PY
"""
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True)
    if "Operation not permitted" in result.stderr:
        pytest.skip("mount namespaces are not allowed here")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["ENOSPC", json.dumps(["old"])]


def test_ctrl_c_during_up_leaves_the_instance_supervised(tmp_path):
    port = free_port()
    write_config(tmp_path, "instances:" + command_instance("slow", port, "--load-seconds", "3"))
    up = subprocess.Popen([LLMCTL, "up"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (tmp_path / "state" / "supervisor.sock").exists(), timeout=20)
    wait_for(lambda: by_name(status_json(cwd=tmp_path))["slow"]["state"] == "starting", timeout=20)
    time.sleep(0.3)  # `up` is now in its wait loop
    up.send_signal(signal.SIGINT)
    _, err = up.communicate(timeout=20)
    assert up.returncode == 130, err
    assert "keep starting under the supervisor" in err
    assert "Traceback" not in err
    instance = wait_for(
        lambda: (i := by_name(status_json(cwd=tmp_path))["slow"])["state"] == "healthy" and i, timeout=20
    )
    assert instance["restarts"] == 0
