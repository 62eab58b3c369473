"""The status contract and the control API: versioned JSON everywhere, errors that keep their class,
`wait` that the supervisor answers when things settle (no client polls it)."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from llmctl import errors
from llmctl.control import statusdoc
from llmctl.control.client import request
from llmctl.paths import StatePaths

from .helpers import LLMCTL, by_name, command_instance, free_port, llmctl, status_json, write_config


def test_every_json_carries_the_version_and_each_instance_its_outcome(tmp_path, state_dir):
    write_config(tmp_path, "instances:" + command_instance("fake", free_port()))
    offline = status_json(cwd=tmp_path)
    assert offline["version"] == statusdoc.VERSION and offline["instances"][0]["outcome"] == "failed"
    up = json.loads(llmctl("up", "--json", cwd=tmp_path).stdout)
    assert up["version"] == statusdoc.VERSION and up["ok"] and up["instances"][0]["outcome"] == "ok"
    status = status_json(cwd=tmp_path)
    assert status["version"] == statusdoc.VERSION
    assert set(statusdoc.INSTANCE_KEYS) <= set(status["instances"][0])
    assert set(statusdoc.INSTANCE_KEYS) <= set(offline["instances"][0])  # the placeholder has the same shape
    restart = json.loads(llmctl("restart", "fake", "--json", cwd=tmp_path).stdout)
    assert restart["version"] == statusdoc.VERSION and restart["actions"] == {"fake": "restarting"}
    down = json.loads(llmctl("down", "--json", cwd=tmp_path).stdout)
    assert down == {"version": statusdoc.VERSION, "ok": True, "stopped": ["fake"]}


@pytest.mark.parametrize(
    ("args", "code", "kind"),
    [
        (("up", "nope", "--json"), 2, "config"),
        (("status", "nope", "--json"), 2, "config"),
        (("down", "nope", "--json"), 2, "config"),
    ],
)
def test_errors_under_json_are_json_on_stdout(tmp_path, state_dir, args, code, kind):
    write_config(tmp_path, "instances:" + command_instance("fake", free_port()))
    result = llmctl(*args, cwd=tmp_path)
    assert result.returncode == code
    document = json.loads(result.stdout)
    assert document["version"] == statusdoc.VERSION and document["ok"] is False
    assert document["error"]["kind"] == kind and document["error"]["exit_code"] == code
    assert "nope" in document["error"]["message"]


def test_a_budget_refusal_keeps_its_class_across_the_socket(tmp_path, state_dir, big_gguf_model):
    write_config(
        tmp_path,
        f"memory_budget: 1MiB\ninstances:\n  - name: big\n    backend: llama.cpp\n    model: {big_gguf_model}\n"
        f"    port: {free_port()}\n",
    )
    result = llmctl("up", "--json", cwd=tmp_path)
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"]["kind"] == "budget"


def raw_request(paths: StatePaths, line: bytes) -> dict:
    with socket.socket(socket.AF_UNIX) as connection:
        connection.connect(str(paths.socket))
        connection.sendall(line)
        return json.loads(connection.makefile("rb").readline())


def test_only_an_unreadable_request_is_a_bad_request(tmp_path, state_dir):
    write_config(tmp_path, "instances:" + command_instance("fake", free_port()))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    paths = StatePaths(state_dir)
    for line in (b"not json\n", b"[1]\n", b'{"op": "dance"}\n', b'{"op": "down", "names": "fake"}\n'):
        answer = raw_request(paths, line)
        assert answer["error"]["kind"] == "bad_request" and answer["error"]["exit_code"] == 2
    with pytest.raises(errors.ConfigError) as raised:
        request(paths, {"op": "down", "names": ["nope"]})
    assert type(raised.value) is errors.ConfigError  # the class the supervisor raised, not a generic error
    assert by_name(status_json(cwd=tmp_path))["fake"]["state"] == "healthy"


def test_errors_map_to_kinds_and_back():
    for kind, cls in errors._all_kinds().items():
        rebuilt = errors.from_kind(kind, "message")
        assert type(rebuilt) is cls and rebuilt.exit_code == cls.exit_code
    assert type(errors.from_kind("from-the-future", "x")) is errors.LlmctlError


def test_up_asks_the_supervisor_to_wait_and_never_polls_status(tmp_path, state_dir):
    write_config(
        tmp_path,
        "instances:" + command_instance("a", free_port(), "--load-seconds", "1") + command_instance("b", free_port()),
    )
    assert llmctl("up", cwd=tmp_path).returncode == 0
    requests = status_json(cwd=tmp_path)["supervisor"]["requests"]
    assert requests.get("status") == 1  # this status alone
    assert requests["up"] == 1 and requests["wait"] == 1


def test_wait_returns_when_settled_or_at_its_timeout(tmp_path, state_dir):
    write_config(
        tmp_path,
        "instances:"
        + command_instance("slow", free_port(), "--load-seconds", "1.5")
        + command_instance("stuck", free_port(), "--never-ready"),
    )
    assert llmctl("wait", "slow", cwd=tmp_path).returncode == 3  # no supervisor: nothing to wait for
    assert llmctl("up", "--no-wait", cwd=tmp_path).returncode == 0
    result = llmctl("wait", "slow", "--json", cwd=tmp_path, timeout=60)
    assert result.returncode == 0  # it waited: the answer is the settled state, not "starting"
    assert json.loads(result.stdout)["instances"][0]["state"] == "healthy"
    result = llmctl("wait", "stuck", "--timeout", "0.5", cwd=tmp_path, timeout=60)  # a hang guard only
    assert result.returncode == 1 and "timed out after 0.5s waiting for stuck" in result.stderr
    assert by_name(status_json(cwd=tmp_path))["stuck"]["state"] == "starting"  # it gave up waiting, not the start
    assert llmctl("wait", "nope", cwd=tmp_path).returncode == 2


def test_wait_streams_progress_lines_before_its_answer(tmp_path, state_dir):
    write_config(tmp_path, "instances:" + command_instance("slow", free_port(), "--load-seconds", "0.5"))
    subprocess.run([LLMCTL, "up", "--no-wait"], cwd=tmp_path, check=True, capture_output=True)
    events = []
    answer = request(
        StatePaths(state_dir), {"op": "wait", "names": [], "timeout": 10, "progress": True}, on_event=events.append
    )
    assert answer["timed_out"] is False and answer["instances"][0]["outcome"] == "ok"
    assert events and events[0]["instances"][0]["outcome"] == "pending"
