"""The gateway's edges on real processes (issue 17), one test per class of edge.

Real llama-server and mlx_lm.server behind the gateway, and small stand-ins for hostile upstreams
(tests/standins/hostile_upstream.py): a hostile web page (rebinding Host names, foreign Origins,
simple POSTs, one through a real headless browser), HTTP clients as they really are (curl with
`Expect: 100-continue`, the openai client, httpx, raw sockets), and upstreams that gzip, set their own
CORS headers and cookies, die mid-answer, hang, or close kept-alive connections. Each test asserts
what a client or the fleet sees, never how long it took."""

from __future__ import annotations

import gzip
import http.client
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from .helpers import STANDINS, by_name, command_instance, free_port, llmctl, status_json, wait_for, write_config

HOSTILE = str(STANDINS / "hostile_upstream.py")
ORIGIN = "http://app.example:3000"
ASK = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
LOG_LINE = re.compile(
    r' llmctl\.gateway: (\S+) "([^"]*)" model="[^"]*" status=(\d{3}) reason="([^"]*)" duration_ms=\d+$'
)


# -- fleets ------------------------------------------------------------------------------------------------------


def hostile(name: str, port: int, *flags: str, extra: str = "") -> str:
    command = json.dumps([sys.executable, HOSTILE, "--port", str(port), *flags])
    return (
        f"\n  - name: {name}\n    backend: command\n    command: {command}\n    port: {port}\n"
        f"    health: {{path: /health, interval: 0.2, timeout: 1}}\n{extra}"
    )


def llama(name: str, model: Path, *args: str, extra: str = "") -> str:
    argv = json.dumps(["-c", "256", "-np", "1", *args])
    return f"\n  - name: {name}\n    backend: llama.cpp\n    model: {model}\n    port: {free_port()}\n    args: {argv}\n{extra}"


def mlx(name: str, model: Path, extra: str = "") -> str:
    return (
        f"\n  - name: {name}\n    backend: mlx\n    model: {model}\n    port: {free_port()}\n"
        f"    args: ['--max-tokens', '8']\n{extra}"
    )


def fleet(folder: Path, instances: str, gateway: str = "", top: str = "", env: dict[str, str] | None = None) -> str:
    """Write the config, run `up`, and return the gateway's URL."""
    port = free_port()
    write_config(folder, f"{top}gateway: {{port: {port}{gateway}}}\ninstances:{instances}")
    result = llmctl("up", cwd=folder, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return f"http://127.0.0.1:{port}"


def post(url: str, body: dict, path: str = "/v1/chat/completions", **kwargs) -> httpx.Response:
    kwargs.setdefault("timeout", 60)
    return httpx.post(url + path, json=body, trust_env=False, **kwargs)


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    if code is not None:
        assert error["code"] == code, error
    return error


def gateway_lines(state_dir: Path) -> list[tuple[str, str, int, str]]:
    """(method, path, status, reason) of every refusal line the gateway logged."""
    text = (state_dir / "gateway.log").read_text(errors="replace")
    return [(m[1], m[2], int(m[3]), m[4]) for m in map(LOG_LINE.search, text.splitlines()) if m]


def instance_log(state_dir: Path, name: str) -> str:
    path = state_dir / "logs" / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def raw_exchange(port: int, data: bytes, timeout: float = 20) -> bytes:
    """Send bytes as they are, read until the gateway closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# -- a hostile web page: Host, Origin, content type ---------------------------------------------------------------


def test_foreign_hosts_origins_and_content_types_start_nothing_and_evict_nothing(
    tmp_path, state_dir, gguf_model, llama_server
):
    """Without a key the gateway is reachable by any page the user opens (DNS rebinding, simple POSTs).
    A budget that holds only one of the two on-demand instances: a start of `lazy` would evict `warm`."""
    gateway = fleet(
        tmp_path,
        llama("lazy", gguf_model, extra="    on_demand: true\n")
        # An instance of unknown size counts as its max_memory until measured (never 0, issue 18); this one
        # holds 30 MiB, so either way the two together pass the budget and each alone fits.
        + command_instance(
            "warm", free_port(), "--allocate-mb", "30", extra="    on_demand: true\n    max_memory: 64MiB\n"
        ),
        gateway=f", cors_origins: ['{ORIGIN}']",
        top="memory_budget: 64MiB\n",
    )
    assert post(gateway, {"model": "warm"}).status_code == 200
    warm_pid = by_name(status_json(cwd=tmp_path))["warm"]["pid"]
    body = json.dumps({"model": "lazy", **ASK}).encode()
    json_type = {"Content-Type": "application/json"}
    refusals = []
    for host in (
        "127.0.0.1.nip.io",
        "localtest.me",
        f"127.0.0.1.evil.example:{port_of(gateway)}",
        "2130706433",
        "127.1",
        "localhost.",
        "evil.localhost",
        "0x7f.0.0.1",
    ):
        refusals.append((403, "forbidden_host", {**json_type, "Host": host}))
    for origin in (
        "https://evil.example",
        "null",
        "http://app.example:3001",
        "http://app.example:3000.evil.example",
        # The gateway's own origin is its dashboard's (/ui) and is served; another port is another origin,
        # and the page's origin must be the very Host the request names.
        f"http://127.0.0.1:{port_of(gateway) + 1}",
        f"http://localhost:{port_of(gateway)}",
    ):
        refusals.append((403, "forbidden_origin", {**json_type, "Origin": origin}))
    for kind in (
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "",
    ):
        refusals.append((415, "unsupported_media_type", {"Content-Type": kind}))
    for status, code, headers in refusals:
        answer = httpx.post(gateway + "/v1/chat/completions", content=body, headers=headers, trust_env=False)
        assert_openai_error(answer, status, code)
        assert "access-control-allow-origin" not in answer.headers, headers
    preflight = httpx.options(
        gateway + "/v1/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        trust_env=False,
    )
    assert_openai_error(preflight, 403, "forbidden_origin")
    assert "access-control-allow-origin" not in preflight.headers
    allowed = httpx.options(
        gateway + "/v1/chat/completions",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
        trust_env=False,
    )
    assert allowed.status_code == 204 and allowed.headers["access-control-allow-origin"] == ORIGIN

    instances = by_name(status_json(cwd=tmp_path))
    assert instances["lazy"]["state"] == "stopped"
    assert instances["warm"]["state"] == "healthy" and instances["warm"]["pid"] == warm_pid
    counters = status_json(cwd=tmp_path)["gateway"]["instances"]
    assert counters["lazy"]["starts"] == 0 and counters["warm"]["evictions"] == 0
    assert "starting" not in instance_log(state_dir, "lazy")
    # The same request, sent the way a program sends it, does start it (and makes room): the refusals above
    # were the only thing that stopped it.
    assert post(gateway, {"model": "lazy", **ASK}).status_code == 200
    wait_for(
        lambda: by_name(status_json(cwd=tmp_path))["warm"]["state"] == "stopped",
        timeout=20,
        message="warm evicted for lazy, showing the budget forces an eviction on a start",
    )


# -- HTTP clients as they are ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["mlx", "llama"])
def test_curl_with_expect_and_a_body_over_one_mib(tmp_path, state_dir, gguf_model, mlx_model, llama_server, backend):
    """curl adds `Expect: 100-continue` to bodies over 1 MiB; mlx_lm.server never answers it, so the gateway
    must. `--expect100-timeout` keeps curl from sending the body anyway after its default second."""
    entry = mlx("m", mlx_model) if backend == "mlx" else llama("m", gguf_model)
    gateway = fleet(tmp_path, entry, gateway=", max_body: 3MiB")
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"model": "m", **ASK, "padding": "x" * (1 << 20) + "y" * 200_000}))
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({"model": "m", **ASK, "padding": "x" * (4 << 20)}))

    def curl(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "curl",
                "-sv",
                "--max-time",
                "90",
                "--expect100-timeout",
                "80",
                "--noproxy",
                "*",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                f"@{path}",
                "-w",
                "\n%{http_code}",
                gateway + "/v1/chat/completions",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )

    result = curl(big)
    assert "> Expect: 100-continue" in result.stderr  # curl's own doing: the case the issue names
    assert "< HTTP/1.1 100 Continue" in result.stderr
    answer, _, status = result.stdout.rpartition("\n")
    assert status == "200", result.stdout[-500:] + result.stderr[-2000:]
    assert json.loads(answer)["choices"]
    result = curl(huge)  # over max_body: refused instead of the 100, before a byte of the body
    answer, _, status = result.stdout.rpartition("\n")
    assert status == "413" and "100 Continue" not in result.stderr
    assert json.loads(answer)["error"]["code"] == "too_large"
    assert by_name(status_json(cwd=tmp_path))["m"]["state"] == "healthy"


def test_the_openai_client_retrieves_models_by_any_id(tmp_path, state_dir, gguf_model, llama_server):
    """openai-python percent-encodes a path parameter: `models.retrieve("org/model:7b")` sends
    GET /v1/models/org%2Fmodel:7b. Hugging Face style ids (with `/`) are the common case."""
    openai = pytest.importorskip("openai")
    ids = ["org/model:7b", "ns:tag", "modèle-ü", "mlx-community/Qwen2.5-0.5B-Instruct-4bit"]
    gateway = fleet(tmp_path, llama("chat", gguf_model, extra=f"    aliases: {json.dumps(ids)}\n"))
    client = openai.OpenAI(
        base_url=gateway + "/v1", api_key="unused", max_retries=0, http_client=httpx.Client(trust_env=False)
    )
    chunks = list(client.chat.completions.create(model="org/model:7b", stream=True, **ASK))
    assert chunks and any(chunk.choices and chunk.choices[0].finish_reason for chunk in chunks)
    assert {model.id for model in client.models.list()} == {"chat", *ids}
    found = {}
    for model_id in ["chat", *ids]:
        try:
            model = client.models.retrieve(model_id)
            found[model_id] = (model.id, getattr(model, "alias_of", None))
        except openai.APIStatusError as exc:
            found[model_id] = (exc.status_code, exc.message)
    assert found == {"chat": ("chat", None), **{model_id: (model_id, "chat") for model_id in ids}}
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("org/none:1b")
    assert missing.value.body["code"] == "model_not_found"


# -- odd upstreams -----------------------------------------------------------------------------------------------


def test_a_gzip_answering_upstream_reaches_httpx_readable_and_without_its_own_headers(tmp_path, state_dir):
    gateway = fleet(tmp_path, hostile("gz", free_port()))
    answer = post(gateway, {"model": "gz", "mode": "gzip"}, headers={"Accept-Encoding": "gzip"})
    assert answer.status_code == 200
    assert answer.headers["content-encoding"] == "gzip"  # the header stays with the bytes it describes
    assert answer.json() == {"object": "chat.completion", "content": "x" * 2000}  # httpx decodes it
    with httpx.stream(
        "POST", gateway + "/v1/chat/completions", json={"model": "gz", "mode": "gzip"}, trust_env=False, timeout=30
    ) as stream:
        raw = b"".join(stream.iter_raw())
    assert json.loads(gzip.decompress(raw)) == answer.json()  # the bytes are the compressed ones, whole
    plain = post(gateway, {"model": "gz", "mode": "echo"})
    assert plain.json()["headers"]["Accept-Encoding"] == "identity"  # asked for nothing it would re-encode
    for leaked in ("set-cookie", "alt-svc", "access-control-allow-origin", "access-control-allow-credentials"):
        assert leaked not in answer.headers and leaked not in plain.headers, leaked
    assert "hostile" not in answer.headers.get("server", "")


@pytest.mark.parametrize(
    "framing",
    [
        "chunked",  # HTTP/1.1 with Transfer-Encoding: chunked, as llama-server streams
        "close-delimited",  # HTTP/1.0, the body ends when the connection closes, as mlx_lm.server streams
    ],
)
def test_an_upstream_killed_mid_stream_never_looks_like_a_clean_end(tmp_path, state_dir, framing):
    """kill -9 of the upstream while it streams: the event stream carries an error event and ends, or the
    client's read fails; never [DONE], never a second response, never a clean end."""
    if framing == "chunked":
        entry, body = hostile("up", free_port()), {"mode": "stream", "n_events": 400}
    else:
        entry, body = command_instance("up", free_port()), {"n_events": 400, "event_interval": 0.05}
    gateway = fleet(tmp_path, entry)
    lines = []
    with httpx.stream(
        "POST",
        gateway + "/v1/chat/completions",
        json={"model": "up", "stream": True, **body},
        trust_env=False,
        timeout=30,
    ) as stream:
        assert stream.status_code == 200
        lines_iter = stream.iter_lines()
        for line in lines_iter:
            lines.append(line)
            if len([x for x in lines if x.startswith("data:")]) == 2:
                break
        os.kill(by_name(status_json(cwd=tmp_path))["up"]["pid"], signal.SIGKILL)
        try:
            lines.extend(lines_iter)
            raised = None
        except httpx.HTTPError as exc:
            raised = exc
    assert "data: [DONE]" not in lines
    assert not any(line.startswith("HTTP/") for line in lines), lines  # no second response inside the body
    if raised is None:  # ended the protocol's way: an error event, in OpenAI's shape, as the last event
        events = [line for line in lines if line]
        assert events[-2] == "event: error", f"the cut stream ended like a complete one: {events[-4:]}"
        assert json.loads(events[-1].removeprefix("data:").strip())["error"]["code"] == "upstream_error"
    assert "failed mid-answer" in (state_dir / "gateway.log").read_text()
    wait_for(lambda: by_name(status_json(cwd=tmp_path))["up"]["state"] == "healthy", timeout=20)


def test_an_upstream_failing_mid_answer_reaches_strict_clients(tmp_path, state_dir):
    """A plain answer cut short makes httpx raise; the openai client raises on a stream whose upstream died;
    a stream whose upstream went silent ends with an error event after read_timeout."""
    openai = pytest.importorskip("openai")
    gateway = fleet(tmp_path, hostile("odd", free_port()), gateway=", read_timeout: 3")
    with pytest.raises(httpx.HTTPError):  # a plain JSON answer cut short: a strict client must notice
        post(gateway, {"model": "odd", "mode": "die_plain"})
    wait_for(lambda: by_name(status_json(cwd=tmp_path))["odd"]["state"] == "healthy", timeout=20)
    client = openai.OpenAI(
        base_url=gateway + "/v1", api_key="x", max_retries=0, http_client=httpx.Client(trust_env=False)
    )
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(model="odd", stream=True, extra_body={"mode": "die"}, **ASK):
            pass
    wait_for(lambda: by_name(status_json(cwd=tmp_path))["odd"]["state"] == "healthy", timeout=20)
    with httpx.stream(
        "POST", gateway + "/v1/chat/completions", json={"model": "odd", "mode": "silent"}, trust_env=False, timeout=30
    ) as stream:
        silent = [line for line in stream.iter_lines() if line]
    assert silent[-2] == "event: error" and "read_timeout" in silent[-1]
    log = (state_dir / "gateway.log").read_text()
    assert log.count("failed mid-answer") >= 2 and "went silent" in log


def test_one_hung_instance_holds_only_its_own_pool(tmp_path, state_dir, gguf_model, llama_server):
    """A hundred requests to an instance that never answers: another instance is served meanwhile; the
    hung ones end with 503 (no connection within pool_wait) or 504 (read_timeout), each logged once."""
    gateway = fleet(
        tmp_path,
        hostile("stuck", free_port()) + llama("chat", gguf_model),
        gateway=", pool_wait: 4, read_timeout: 10",
    )
    with ThreadPoolExecutor(100) as pool:
        held = [pool.submit(post, gateway, {"model": "stuck", "mode": "hang"}) for _ in range(100)]
        wait_for(lambda: instance_log(state_dir, "stuck").count("hanging on a request") >= 4, timeout=20)
        for _ in range(5):
            assert post(gateway, {"model": "chat", **ASK}, timeout=20).status_code == 200
        assert httpx.get(gateway + "/v1/models", trust_env=False, timeout=10).status_code == 200
        assert not all(future.done() for future in held)  # served while `stuck` still held requests
        answers = [future.result() for future in held]
    statuses = sorted(answer.status_code for answer in answers)
    assert set(statuses) <= {503, 504} and 504 in statuses, statuses
    for answer in answers:
        code = "upstream_busy" if answer.status_code == 503 else "upstream_timeout"
        assert_openai_error(answer, answer.status_code, code)
        if answer.status_code == 503:
            assert int(answer.headers["retry-after"]) > 0
    logged = sorted(status for _, _, status, _ in gateway_lines(state_dir) if status in (503, 504))
    assert logged == statuses  # one line per gateway error, no more, no less
    assert by_name(status_json(cwd=tmp_path))["chat"]["state"] == "healthy"


def test_an_upstream_closing_idle_connections_costs_no_request(tmp_path, state_dir):
    """llama-server closes idle keep-alive connections; a reused one the server closed must not give 502,
    and no request may reach the upstream twice."""
    gateway = fleet(tmp_path, hostile("closer", free_port(), "--idle-close", "0.15"))
    statuses = []
    gaps = [0.05, 0.1, 0.14, 0.15, 0.16, 0.2, 0.3] * 4
    for gap in gaps:
        statuses.append(post(gateway, {"model": "closer", "mode": "echo"}).status_code)
        threading.Event().wait(gap)
    assert statuses == [200] * len(gaps)
    assert instance_log(state_dir, "closer").count("got a request: mode=echo") == len(gaps)


def test_a_request_the_upstream_drops_is_sent_at_most_twice(tmp_path, state_dir):
    """An upstream that reads a request and closes the connection without answering (a crash while it
    processes a prompt looks the same) gets 502; the gateway may retry once, not resend it again and again:
    a completion is not idempotent, and a poison prompt must not crash a server over and over."""
    gateway = fleet(tmp_path, hostile("dropper", free_port()))
    answer = post(gateway, {"model": "dropper", "mode": "drop"})
    assert_openai_error(answer, 502, "upstream_error")
    received = instance_log(state_dir, "dropper").count("got a request: mode=drop")
    assert 1 <= received <= 2, f"one client request reached the upstream {received} times"


# -- keys --------------------------------------------------------------------------------------------------------


def test_an_upstream_key_is_injected_and_a_clients_passes_through(tmp_path, state_dir, gguf_model, llama_server):
    """Two llama-servers started with --api-key-file (llama-server's key flag; the file keeps the key out of
    argv): one whose key the gateway injects (upstream_api_key_env), one whose key the client brings."""
    keys = {}
    for name in ("injected", "own"):
        path = tmp_path / f"{name}.key"
        path.write_text(f"{name}-key-123\n")
        path.chmod(0o600)
        keys[name] = path
    gateway = fleet(
        tmp_path,
        llama(
            "injected",
            gguf_model,
            "--api-key-file",
            str(keys["injected"]),
            extra="    upstream_api_key_env: LLMCTL_TEST_UPSTREAM_KEY\n",
        )
        + llama("own", gguf_model, "--api-key-file", str(keys["own"])),
        env={"LLMCTL_TEST_UPSTREAM_KEY": "injected-key-123"},
    )
    assert post(gateway, {"model": "injected", **ASK}).status_code == 200
    wrong = {"Authorization": "Bearer not-the-key"}
    assert post(gateway, {"model": "injected", **ASK}, headers=wrong).status_code == 200  # replaced, not added
    assert post(gateway, {"model": "own", **ASK}).status_code == 401  # llama-server's own refusal
    assert post(gateway, {"model": "own", **ASK}, headers=wrong).status_code == 401
    mine = {"Authorization": "Bearer own-key-123"}
    assert post(gateway, {"model": "own", **ASK}, headers=mine).status_code == 200  # no gateway key: it passes
    assert "injected-key-123" not in (state_dir / "gateway.log").read_text()


def test_the_gateways_key_is_consumed_and_hop_headers_stop_at_the_gateway(tmp_path, state_dir):
    key_file = tmp_path / "gateway.key"
    key_file.write_text("gateway-key-123\n")
    key_file.chmod(0o600)
    gateway = fleet(
        tmp_path,
        hostile("plain", free_port())
        + hostile("keyed", free_port(), "--key", "upstream-key-9", extra="    upstream_api_key_env: LLMCTL_TEST_UP\n"),
        gateway=f", api_key_file: {key_file}",
        env={"LLMCTL_TEST_UP": "upstream-key-9"},
    )
    headers = {
        "Authorization": "Bearer gateway-key-123",
        "Cookie": "session=1",
        "X-Forwarded-For": "6.6.6.6",
        "Forwarded": "for=6.6.6.6",
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "secret",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "X-Kept": "yes",
    }
    seen = post(gateway, {"model": "plain", "mode": "echo"}, headers=headers).json()["headers"]
    lowered = {name.lower(): value for name, value in seen.items()}
    for gone in (
        "authorization",
        "x-api-key",
        "cookie",
        "x-forwarded-for",
        "forwarded",
        "x-hop",
        "proxy-authorization",
        "expect",
    ):
        assert gone not in lowered, (gone, seen)
    assert lowered["x-kept"] == "yes"
    seen = post(gateway, {"model": "keyed", "mode": "echo"}, headers={"X-Api-Key": "gateway-key-123"}).json()
    assert seen["headers"]["Authorization"] == "Bearer upstream-key-9"
    assert post(gateway, {"model": "keyed", "mode": "echo"}).status_code == 401  # the gateway's key first
    assert "upstream-key-9" not in (state_dir / "gateway.log").read_text()


# -- CORS --------------------------------------------------------------------------------------------------------


def test_the_gateway_owns_every_cors_header(tmp_path, state_dir, gguf_model, mlx_model, llama_server):
    """llama-server echoes any Origin, mlx_lm.server sends `*`, the stand-in sends `*` with credentials:
    none of it passes; the gateway's own headers are on plain, streamed and error answers."""
    gateway = fleet(
        tmp_path,
        llama("chat", gguf_model) + mlx("mlx", mlx_model) + hostile("odd", free_port()),
        gateway=f", cors_origins: ['{ORIGIN}']",
    )
    requests = [
        {"model": "chat", **ASK},
        {"model": "chat", "stream": True, **ASK},
        {"model": "mlx", **ASK},
        {"model": "mlx", "stream": True, **ASK},
        {"model": "odd", "mode": "echo"},
        {"model": "odd", "mode": "stream"},
        {"model": "odd", "mode": "gzip"},
    ]
    for body in requests:
        for origin in (ORIGIN, None):
            headers = {"Origin": origin} if origin else {}
            with httpx.stream(
                "POST", gateway + "/v1/chat/completions", json=body, headers=headers, trust_env=False, timeout=60
            ) as answer:
                answer.read()
            assert answer.status_code == 200, (body, answer.text[:300])
            cors = {name: value for name, value in answer.headers.multi_items() if name.startswith("access-control-")}
            if origin is None:
                assert cors == {}, (body, cors)
                continue
            assert answer.headers.get_list("access-control-allow-origin") == [ORIGIN], (body, answer.headers)
            assert cors == {
                "access-control-allow-origin": ORIGIN,
                "access-control-expose-headers": "Retry-After, X-Request-Id",
            }, (body, cors)
            assert "origin" in answer.headers.get("vary", "").lower()
    missing = post(gateway, {"model": "nope"}, headers={"Origin": ORIGIN})  # a page can read the gateway's errors
    assert_openai_error(missing, 404, "model_not_found")
    assert missing.headers["access-control-allow-origin"] == ORIGIN


# -- errors: shape, log lines, exposure ----------------------------------------------------------------------------


def test_every_gateway_error_is_openai_shaped_and_one_log_line(tmp_path, state_dir):
    gateway = fleet(tmp_path, command_instance("a", free_port()), gateway=", max_body: 64KiB")
    port = port_of(gateway)
    good = json.dumps({"model": "a"})
    cases = [
        ("POST", "/v1/chat/completions", json.dumps({"model": "nope"}), {}, 404, "model_not_found"),
        ("GET", "/nope", None, {}, 404, "not_found"),
        ("GET", "/v1/chat/completions", None, {}, 405, "method_not_allowed"),
        ("POST", "/v1/../tokenize", good, {}, 400, "bad_path"),
        ("POST", "/v1/%2e%2e/props", good, {}, 400, "bad_path"),
        ("POST", "/v1/chat%2Fcompletions", good, {}, 400, "bad_path"),
        ("POST", "/v1", good, {}, 404, "not_found"),
        ("POST", "/v1/chat/completions", "{not json", {}, 400, "invalid_json"),
        (
            "POST",
            "/v1/chat/completions",
            '{"model":"a","x":' + "[" * 20000 + "]" * 20000 + "}",
            {},
            400,
            "nesting_too_deep",
        ),
        ("POST", "/v1/chat/completions", json.dumps({"x": 1}), {}, 400, "missing_model"),
        ("POST", "/v1/chat/completions", json.dumps({"model": "a", "pad": "x" * 70000}), {}, 413, "too_large"),
        ("POST", "/v1/chat/completions", good, {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ("POST", "/v1/chat/completions", good, {"Content-Encoding": "br"}, 415, "unsupported_encoding"),
        ("POST", "/v1/chat/completions", good, {"Content-Encoding": "gzip"}, 400, "corrupt_body"),
        ("POST", "/v1/chat/completions", good, {"Host": "rebind.example"}, 403, "forbidden_host"),
        ("POST", "/v1/chat/completions", good, {"Origin": "https://evil.example"}, 403, "forbidden_origin"),
        ("POST", "/v1/chat/completions", good, {"Expect": "chocolate"}, 417, "expectation_failed"),
        ("GET", "/v1/models/nope", None, {}, 404, "model_not_found"),
    ]
    for method, path, body, extra, status, code in cases:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Content-Type": "application/json", **extra} if body is not None else dict(extra)
        connection.request(method, path, body=body, headers=headers)  # http.client sends the path as written
        response = connection.getresponse()
        data = response.read()
        connection.close()
        assert response.status == status, (path, extra, response.status, data[:300])
        assert response.getheader("Content-Type", "").startswith("application/json"), (path, data[:200])
        error = json.loads(data)["error"]
        assert error["code"] == code and error["message"] and error["type"] == "invalid_request_error", error
    lines = gateway_lines(state_dir)
    assert [(method, status) for method, _, status, _ in lines] == [(c[0], c[4]) for c in cases], lines
    assert all(reason.startswith(case[5]) for (_, _, _, reason), case in zip(lines, cases, strict=True))
    assert "Traceback" not in (state_dir / "gateway.log").read_text()


def test_a_client_leaving_mid_body_leaves_no_traceback(tmp_path, state_dir):
    """A client that sends headers and part of its body, then goes away (a phone losing signal)."""
    gateway = fleet(tmp_path, command_instance("a", free_port()))
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port_of(gateway)), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"model": "a"'
            )
            threading.Event().wait(0.3)
    assert post(gateway, {"model": "a"}).status_code == 200  # a request after them, so their lines are written
    log = (state_dir / "gateway.log").read_text()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /v1/chat/\xff\xfe HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}",
        b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(300)) + b"\r\n",
        b"GET /v1/" + b"a" * 20000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    ],
    ids=["non-ascii-path", "huge-header", "many-headers", "huge-url", "two-content-lengths"],
)
def test_malformed_http_gets_an_openai_error_and_no_traceback(tmp_path, state_dir, request_bytes):
    gateway = fleet(tmp_path, command_instance("a", free_port()))
    answer = raw_exchange(port_of(gateway), request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400", answer[:300]
    assert json.loads(body)["error"]["type"] == "invalid_request_error", answer[:300]
    assert "Traceback" not in (state_dir / "gateway.log").read_text()


def test_a_503_names_the_instance_and_never_quotes_its_log(tmp_path, state_dir):
    secret = "hf_SECRETtoken0123456789"
    path = "/home/alice/private/model.gguf"
    crash = json.dumps(["sh", "-c", f"echo 'loading {path} with token {secret}'; echo 'fatal: {secret}' >&2; exit 1"])
    entries = "".join(
        f"\n  - name: {name}\n    backend: command\n    command: {crash}\n    port: {free_port()}\n"
        f"    restart: {{policy: 'no'}}\n    health: {{path: /health, interval: 0.2, timeout: 1}}\n{extra}"
        for name, extra in (("poison", "    on_demand: true\n"), ("broken", ""))
    )
    port = free_port()
    write_config(tmp_path, f"gateway: {{port: {port}}}\ninstances:{entries}")
    llmctl("up", cwd=tmp_path)  # `broken` fails its start: up says so; the gateway runs regardless
    gateway = f"http://127.0.0.1:{port}"
    wait_for(lambda: secret in instance_log(state_dir, "broken"), timeout=20)
    for name in ("poison", "broken"):
        answer = post(gateway, {"model": name})
        error = assert_openai_error(answer, 503)
        assert secret not in answer.text and path not in answer.text and "fatal" not in answer.text, answer.text
        assert name in error["message"] and f"llmctl logs {name}" in error["message"]
        wait_for(lambda n=name: secret in instance_log(state_dir, n), timeout=10)  # only its own log keeps it
    gateway_log = (state_dir / "gateway.log").read_text()
    assert secret not in gateway_log
    assert [(status, reason.split(":")[0]) for _, _, status, reason in gateway_lines(state_dir)] == [
        (503, "instance_failed"),
        (503, "instance_failed"),
    ]


# -- a real browser ----------------------------------------------------------------------------------------------


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><html><body><h1>a page on another origin</h1><pre id=out></pre></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


def _serve_page() -> tuple[http.server.ThreadingHTTPServer, int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


FOREIGN_PAGE_JS = """async ([gateway, model]) => {
  const out = {};
  const body = JSON.stringify({model, messages: [{role: 'user', content: 'hi'}]});
  try {
    const simple = await fetch(gateway + '/v1/chat/completions',
      {method: 'POST', mode: 'no-cors', headers: {'Content-Type': 'text/plain'}, body});
    out.simple = simple.type;
  } catch (e) { out.simple = 'error: ' + e; }
  try {
    const form = new FormData(); form.append('model', model);
    out.multipart = (await fetch(gateway + '/v1/audio/transcriptions', {method: 'POST', mode: 'no-cors', body: form})).type;
  } catch (e) { out.multipart = 'error: ' + e; }
  try {
    const json = await fetch(gateway + '/v1/chat/completions',
      {method: 'POST', headers: {'Content-Type': 'application/json'}, body});
    out.json = 'read ' + json.status + ' ' + await json.text();
  } catch (e) { out.json = 'blocked: ' + e.name; }
  try { out.models = 'read ' + (await (await fetch(gateway + '/v1/models')).text()); }
  catch (e) { out.models = 'blocked: ' + e.name; }
  document.getElementById('out').textContent = JSON.stringify(out, null, 2);
  return out;
}"""


FRIENDLY_PAGE_JS = """async ([gateway, model]) => {
  const out = {};
  const body = JSON.stringify({model, messages: [{role: 'user', content: 'hi'}]});
  try {
    const json = await fetch(gateway + '/v1/chat/completions',
      {method: 'POST', headers: {'Content-Type': 'application/json'}, body});
    out.json = 'read ' + json.status + ' ' + await json.text();
  } catch (e) { out.json = 'blocked: ' + e.name; }
  try { out.models = 'read ' + (await (await fetch(gateway + '/v1/models')).text()); }
  catch (e) { out.models = 'blocked: ' + e.name; }
  document.getElementById('out').textContent = JSON.stringify(out, null, 2);
  return out;
}"""


def test_a_page_in_a_real_browser(tmp_path, state_dir):
    """Chromium, headless: a page on a foreign origin posts to the gateway as any web page can. Its simple
    POSTs start nothing; its JSON fetch is blocked by CORS; a page whose origin is in cors_origins reads."""
    if not os.access("/usr/bin/chromium", os.X_OK):
        pytest.skip("no browser: /usr/bin/chromium is missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    foreign, foreign_port = _serve_page()
    friendly, friendly_port = _serve_page()
    friendly_origin = f"http://localhost:{friendly_port}"
    gateway = fleet(
        tmp_path,
        command_instance("lazy", free_port(), extra="    on_demand: true\n") + command_instance("a", free_port()),
        gateway=f", cors_origins: ['{friendly_origin}']",
    )
    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=args)
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{foreign_port}/")
                hostile_page = page.evaluate(FOREIGN_PAGE_JS, [gateway, "lazy"])
                page.screenshot(path=str(tmp_path / "foreign-page.png"))
                page.set_content(
                    f"<form id=f method=POST enctype=text/plain action='{gateway}/v1/chat/completions'>"
                    '<input name=\'{"model":"lazy","x":"\' value=\'"}\'></form>'
                )
                with page.expect_navigation():
                    page.evaluate("document.getElementById('f').submit()")
                form_answer = page.content()
                page.goto(f"{friendly_origin}/")
                friendly_page = page.evaluate(FRIENDLY_PAGE_JS, [gateway, "a"])
                page.screenshot(path=str(tmp_path / "friendly-page.png"))
            finally:
                browser.close()
    finally:
        foreign.shutdown()
        friendly.shutdown()
    assert hostile_page["simple"] == "opaque" and hostile_page["multipart"] == "opaque", hostile_page
    assert hostile_page["json"].startswith("blocked"), hostile_page
    assert hostile_page["models"].startswith("blocked"), hostile_page
    assert "forbidden_origin" in form_answer  # Chromium sends Origin with a form's POST: refused
    assert friendly_page["json"].startswith("read 200") and '"received_model": "a"' in friendly_page["json"]
    assert friendly_page["models"].startswith("read ") and '"lazy"' in friendly_page["models"]
    assert (tmp_path / "foreign-page.png").stat().st_size > 0
    assert by_name(status_json(cwd=tmp_path))["lazy"]["state"] == "stopped"
    assert status_json(cwd=tmp_path)["gateway"]["instances"]["lazy"]["starts"] == 0
    origins = [reason for method, _, status, reason in gateway_lines(state_dir) if status == 403]
    assert len(origins) >= 5 and all(reason.startswith("forbidden_origin") for reason in origins)
