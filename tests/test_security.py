"""Hardened edges (issue 9): another local user can neither reach nor impersonate the supervisor; no
file, config or answer can hang or exhaust it; secrets stay masked; environment errors are exit 3.

Tests that need a second local user create one (`llmctl-intruder`) with useradd where the machine
allows it (CI runs as root), and run its part through `setpriv`.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from llmctl.control import client
from llmctl.errors import SupervisorError
from llmctl.paths import StatePaths
from llmctl.system.http import HttpError, request

from .helpers import (
    LLMCTL,
    by_name,
    command_instance,
    free_port,
    llmctl,
    processes_mentioning,
    status_json,
    wait_for,
    write_config,
)

INTRUDER = "llmctl-intruder"


@pytest.fixture(scope="session")
def intruder() -> pwd.struct_passwd:
    if os.getuid() != 0:
        pytest.skip("creating a second local user needs root")
    try:
        return pwd.getpwnam(INTRUDER)
    except KeyError:
        pass
    created = subprocess.run(["useradd", "--system", "--no-create-home", INTRUDER], capture_output=True, text=True)
    if created.returncode != 0:
        pytest.skip(f"cannot create a second user here: {created.stderr.strip()}")
    return pwd.getpwnam(INTRUDER)


def as_user(user: pwd.struct_passwd, *argv: str, **kwargs) -> subprocess.CompletedProcess[str]:
    command = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, **kwargs)


@pytest.fixture
def shared():
    """A world-writable sticky folder, like /tmp itself, both users can reach (pytest's tmp_path is 0700)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="llmctl-shared-", dir="/tmp"))
    folder.chmod(0o1777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_socket_folder_another_user_planted_is_refused(tmp_path, intruder, shared):
    """A long state path puts the socket under $TMPDIR/llmctl-UID; another user who makes that
    folder first (0777) must not get our socket, our config or our `down`."""
    tmpdir = shared
    planted = tmpdir / f"llmctl-{os.getuid()}"
    assert as_user(intruder, "mkdir", "-m", "0777", str(planted)).returncode == 0
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    write_config(tmp_path, "instances:" + command_instance("fake", free_port(), extra="    env: {HF_TOKEN: s3cret}\n"))
    result = llmctl("up", cwd=tmp_path, env={"TMPDIR": str(tmpdir), "LLMCTL_STATE_DIR": str(deep)})
    assert result.returncode == 3, result.stderr
    assert str(planted) in result.stderr and f"belongs to uid {intruder.pw_uid}" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(planted.iterdir()) == []  # nothing of ours landed there


LISTENER = """
import socket, sys
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen()
print("ready", flush=True)
connection, _ = server.accept()
connection.settimeout(2)
try:
    got = connection.recv(65536)
except OSError:
    got = b""
print("received", len(got), flush=True)
try:
    connection.sendall(b'{"ok": true, "stopped": []}\\n')
except OSError:
    pass
"""


def test_the_client_sends_nothing_to_another_users_socket(intruder, shared):
    folder = shared
    path = folder / "impostor.sock"
    impostor = subprocess.Popen(
        [
            "setpriv",
            f"--reuid={intruder.pw_uid}",
            f"--regid={intruder.pw_gid}",
            "--clear-groups",
            sys.executable,
            "-c",
            LISTENER,
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert impostor.stdout.readline().strip() == "ready"
        paths = type("Paths", (), {"socket": path, "root": folder})()
        with pytest.raises(SupervisorError) as refused:
            client.request(paths, {"op": "down", "names": [], "config": {"secret": "s3cret"}})
        assert f"runs as uid {intruder.pw_uid}" in str(refused.value)
        out, _ = impostor.communicate(timeout=10)
        assert "received 0" in out  # not one byte of the request reached it
    finally:
        impostor.kill()
        impostor.wait()


TRY_STATUS = """
import socket, sys
connection = socket.socket(socket.AF_UNIX)
connection.settimeout(5)
try:
    connection.connect(sys.argv[1])
except OSError as exc:
    print("refused", exc.errno)
    sys.exit()
received = b""
try:  # the supervisor may close on us before or after we send: either way it must say nothing
    connection.sendall(b'{"op": "status"}\\n')
    received = connection.recv(65536)
except OSError:
    pass
print("answer", len(received))
"""


def test_the_supervisor_serves_no_other_user(tmp_path, intruder, shared):
    write_config(tmp_path, "instances:" + command_instance("fake", free_port()))
    state = shared / "state"
    env = {"LLMCTL_STATE_DIR": str(state)}
    try:
        assert llmctl("up", cwd=tmp_path, env=env).returncode == 0
        sock = StatePaths(state).socket
        state.chmod(0o711)  # let the other user reach the socket's path: only the socket's own checks remain
        assert "refused 13" in as_user(intruder, sys.executable, "-c", TRY_STATUS, str(sock)).stdout  # it is 0600
        sock.chmod(0o666)  # even with a loosened mode, the supervisor checks who connects
        answer = as_user(intruder, sys.executable, "-c", TRY_STATUS, str(sock)).stdout
        assert answer.strip() == "answer 0", answer  # closed on it: not one byte of status
        state.chmod(0o700)
        assert (
            by_name(json.loads(llmctl("status", "--json", cwd=tmp_path, env=env).stdout))["fake"]["state"] == "healthy"
        )
    finally:
        state.chmod(0o700)
        llmctl("down", cwd=tmp_path, env=env)


def test_a_state_folder_of_another_user_or_one_others_can_write_is_refused(tmp_path):
    write_config(tmp_path, "instances:" + command_instance("fake", free_port()))
    open_folder = tmp_path / "open"
    open_folder.mkdir()
    open_folder.chmod(0o777)
    result = llmctl("up", cwd=tmp_path, env={"LLMCTL_STATE_DIR": str(open_folder)})
    assert result.returncode == 3 and "can be written by other users" in result.stderr
    assert f"chmod 700 {open_folder}" in result.stderr


def test_an_unwritable_state_folder_is_exit_3_with_the_path(intruder, shared):
    write_config(shared, "instances:" + command_instance("fake", free_port()))
    (shared / "instances.yaml").chmod(0o644)
    locked = shared / "rootonly"
    locked.mkdir(mode=0o755)
    result = as_user(
        intruder,
        LLMCTL,
        "up",
        cwd=shared,
        env={**os.environ, "LLMCTL_STATE_DIR": str(locked / "state"), "HOME": str(shared)},
    )
    assert result.returncode == 3, result.stderr
    assert str(locked / "state") in result.stderr and "Traceback" not in result.stderr


def test_home_pointing_nowhere_is_exit_3(tmp_path):
    """HOME under a file: no folder can be made there (as root, a missing HOME would simply be created)."""
    write_config(tmp_path, "instances:" + command_instance("fake", free_port()))
    (tmp_path / "a-file").write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("LLMCTL_STATE_DIR", "XDG_STATE_HOME")}
    env["HOME"] = str(tmp_path / "a-file" / "home")
    result = subprocess.run([LLMCTL, "up"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3 and str(tmp_path / "a-file" / "home") in result.stderr
    assert "Traceback" not in result.stderr


def test_a_fifo_in_place_of_the_state_file_hangs_nothing(tmp_path, state_dir):
    write_config(tmp_path, "instances:" + command_instance("fake", free_port()))
    state_dir.mkdir(mode=0o700)
    os.mkfifo(state_dir / "state.json", 0o600)
    # The timeouts are hang guards: a FIFO opened for reading would block these commands forever.
    assert llmctl("status", cwd=tmp_path, timeout=60).returncode == 0
    up = llmctl("up", cwd=tmp_path, timeout=60)
    assert up.returncode == 0, up.stderr
    status = llmctl("status", cwd=tmp_path, timeout=60)
    assert "state file" in status.stderr and "not a regular file" in status.stderr  # the user sees why


def test_a_fifo_or_a_huge_file_as_the_config_is_a_config_error(tmp_path):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    result = llmctl("check", "-f", str(fifo), timeout=60)  # a hang guard: reading a FIFO blocks forever
    assert result.returncode == 2 and "not a regular file" in result.stderr
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"#" * (5 * 1024 * 1024))
    result = llmctl("check", "-f", str(huge), timeout=60)
    assert result.returncode == 2 and "larger than" in result.stderr


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    text = 'a0: &a0 ["x","x","x","x","x","x","x","x","x"]\n'
    for level in range(1, 10):
        text += f"a{level}: &a{level} [" + ",".join([f"*a{level - 1}"] * 9) + "]\n"
    text += "instances: *a9\n"
    (tmp_path / "bomb.yaml").write_text(text)
    result = llmctl("check", "-f", str(tmp_path / "bomb.yaml"), timeout=60)  # a hang guard: 9**10 nodes otherwise
    assert result.returncode == 2 and "alias" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "bomb.yaml:" in result.stderr


async def endless_headers(reader, writer) -> None:
    await reader.readline()
    writer.write(b"HTTP/1.1 200 OK\r\n")
    try:
        for index in range(10**9):
            writer.write(f"X-Filler-{index}: {'y' * 1000}\r\n".encode())
            await writer.drain()
    except (ConnectionError, OSError):
        pass


async def endless_body(reader, writer) -> None:
    await reader.readline()
    writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
    try:
        while True:
            writer.write(b"z" * 65536)
            await writer.drain()
    except (ConnectionError, OSError):
        pass


@pytest.mark.parametrize(
    ("handler", "refusal"),
    [(endless_headers, "the answer's headers pass 100 lines"), (endless_body, "answer too large")],
)
def test_no_answer_can_exhaust_the_probe_client(handler, refusal):
    """The client stops at its own limits, not at the timeout (which here is only a hang guard)."""

    async def scenario() -> str:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(HttpError) as error:
            await request("GET", f"http://127.0.0.1:{port}/health", None, timeout=60)
        server.close()
        return str(error.value)

    tracemalloc.start()
    said = asyncio.run(scenario())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert refusal in said and "no answer within" not in said
    assert peak < 8 * 1024 * 1024


def test_a_deleted_socket_is_made_again(tmp_path, state_dir):
    write_config(tmp_path, "instances:" + command_instance("fake", free_port()))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    StatePaths(state_dir).socket.unlink()
    wait_for(lambda: StatePaths(state_dir).socket.exists(), timeout=5)
    assert by_name(status_json(cwd=tmp_path))["fake"]["state"] == "healthy"
    assert llmctl("down", cwd=tmp_path).returncode == 0


def test_a_second_supervisor_names_the_pid_holding_the_lock(tmp_path, state_dir):
    write_config(tmp_path, "instances:" + command_instance("fake", free_port()))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    holder = int((state_dir / "supervisor.lock").read_text())
    os.kill(holder, signal.SIGSTOP)  # holds the lock, answers nothing
    try:
        StatePaths(state_dir).socket.unlink()
        result = llmctl("up", cwd=tmp_path, timeout=60)
        assert result.returncode == 3 and f"pid {holder}" in result.stderr
    finally:
        os.kill(holder, signal.SIGCONT)


def test_secrets_are_masked_everywhere_and_warned_about_on_the_command_line(tmp_path, state_dir):
    port = free_port()
    extra = (
        "    env: {hf_token: tok1, Api_Key: tok2, MY_AUTH: tok3, db-password: tok4, PLAIN: visible}\n"
        "    args: ['--api_key=tok5', '-hft', 'tok6', '--apiKey', 'tok7']\n"
    )
    command = json.dumps(
        [sys.executable, str(Path(__file__).parent / "standins" / "fake_server.py"), "--port", str(port)]
    )
    write_config(
        tmp_path,
        f"instances:\n  - name: fake\n    backend: command\n    command: {command}\n    port: {port}\n"
        f"    health: {{path: /health}}\n{extra}",
    )
    up = llmctl("up", "--timeout", "10", cwd=tmp_path)
    assert "passes a secret on its command line (--api_key, -hft, --apiKey)" in up.stderr
    shown = llmctl("status", "--json", cwd=tmp_path).stdout + up.stdout + up.stderr
    for log in (state_dir / "logs").glob("*"):
        shown += log.read_text(errors="replace")
    shown += (state_dir / "supervisor.log").read_text(errors="replace")
    for secret in ("tok1", "tok2", "tok3", "tok4", "tok5", "tok6", "tok7"):
        assert secret not in shown, secret
    assert "visible" in shown


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare for a read-only mount")
def test_a_read_only_state_folder_is_exit_3(tmp_path):
    write_config(tmp_path, "instances:" + command_instance("fake", free_port()))
    readonly = tmp_path / "ro"
    readonly.mkdir()
    script = f"mount -t tmpfs -o ro,size=1m tmpfs {readonly} && exec {LLMCTL} up"
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LLMCTL_STATE_DIR": str(readonly / "state")},
    )
    if "mount:" in result.stderr and "permission denied" in result.stderr.lower():
        pytest.skip("mount namespaces are not allowed here")
    assert result.returncode == 3, result.stderr
    assert str(readonly / "state") in result.stderr and "Read-only file system" in result.stderr
    assert "Traceback" not in result.stderr


def test_one_endless_line_costs_the_log_hub_no_memory(tmp_path):
    """A 50 MB line without a newline used to grow the relay by 40 MB; the hub cuts it in pieces."""
    import psutil

    from llmctl.logs import relay as logrelay

    pipes, logs = tmp_path / "pipes", tmp_path / "logs"
    pipes.mkdir()
    logs.mkdir()
    os.mkfifo(pipes / "long.fifo", 0o600)
    (pipes / "limits").write_text(f"{1 << 30} 0\n")  # no rotation: the whole line stays in one file
    hub = subprocess.Popen([sys.executable, "-S", "-I", logrelay.__file__, str(pipes), str(logs)])
    try:
        writer = os.open(pipes / "long.fifo", os.O_WRONLY)
        peak = 0
        for _ in range(50):
            os.write(writer, b"x" * (1024 * 1024))
            peak = max(peak, psutil.Process(hub.pid).memory_info().rss)
        os.write(writer, b"\n")
        os.close(writer)
        wait_for(lambda: (logs / "long.log").exists() and (logs / "long.log").stat().st_size > 50 * 1024 * 1024)
        assert peak < 30 * 1024 * 1024
        first = (logs / "long.log").open("rb").readline()
        assert first.endswith(b"[llmctl: line continues]\n") and len(first) < 70 * 1024
    finally:
        hub.terminate()
        hub.wait(timeout=10)


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("HF_TOKEN", True),
        ("api_key", True),
        ("--apiKey", True),
        ("X-Auth", True),
        ("Authorization", True),
        ("db-password", True),
        ("MY_SECRET", True),
        ("credentials", True),
        ("--api_key", True),
        ("--max-tokens", False),
        ("--tokenizer", False),
        ("OLLAMA_KEEP_ALIVE", False),
        ("AUTHOR", False),
        ("--api-key-file", False),
        ("PATH", False),
    ],
)
def test_what_counts_as_a_secret_name(name, secret):
    from llmctl.system.redact import is_secret_name

    assert is_secret_name(name) is secret


def test_a_deleted_state_folder_is_made_again_and_never_fought_over(tmp_path, state_dir):
    port = free_port()
    write_config(tmp_path, "instances:" + command_instance("fake", port))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    holder = int((state_dir / "supervisor.lock").read_text())
    shutil.rmtree(state_dir)
    wait_for(lambda: StatePaths(state_dir).socket.exists(), timeout=5)
    time.sleep(0.5)
    status = status_json(cwd=tmp_path)
    assert status["supervisor"]["pid"] == holder  # the same supervisor: no second one was started
    assert by_name(status)["fake"]["state"] == "healthy"
    assert int((state_dir / "supervisor.lock").read_text()) == holder
    assert llmctl("down", cwd=tmp_path).returncode == 0
    wait_for(lambda: not processes_mentioning(str(port)), timeout=10)


@pytest.mark.parametrize("key", ["my key", "k\u20acy", "abc\t", "tab\x7f"])
def test_a_key_no_client_could_send_is_a_config_error(tmp_path, key):
    from llmctl.errors import ConfigError
    from llmctl.system.secrets import read_secret

    with pytest.raises(ConfigError, match="visible ASCII"):
        read_secret("gateway.api_key", "K", None, {"K": key})
    path = tmp_path / "key"
    path.write_text(key + "x\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="visible ASCII"):
        read_secret("gateway.api_key", None, str(path), {})
    assert read_secret("gateway.api_key", "K", None, {"K": "s3cret-key_~!"}) == "s3cret-key_~!"
