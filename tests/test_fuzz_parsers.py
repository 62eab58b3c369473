"""Arbitrary bytes into every parser that reads what others wrote: the probe client (a server's
answer), the state reader (state.json), the log reader (a server's output). Only the documented
errors come out, within bounded time and memory."""

from __future__ import annotations

import asyncio
import tracemalloc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmctl.control import state
from llmctl.logs.files import MAX_LINE, SPLIT_MARKER, _Follower, last_lines
from llmctl.system.http import HttpError, request

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

HTTP_PIECES = st.one_of(
    st.binary(max_size=2048),
    st.sampled_from(
        [
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 503 Service Unavailable\r\n",
            b"Content-Length: 5\r\n",
            b"Content-Length: -1\r\n",
            b"Content-Length: 99999999999\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"\r\n",
            b"zz\r\n",
            b"ffffffffff\r\n",
            b"-5\r\n",
            b"0\r\n\r\n",
            b"X: " + b"y" * 9000 + b"\r\n",
        ]
    ),
)


@FUZZ
@given(st.lists(HTTP_PIECES, max_size=12))
def test_the_probe_client_survives_any_answer(pieces):
    answer = b"".join(pieces)

    async def serve(reader, writer) -> None:
        await reader.readline()
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            response = await request("GET", f"http://127.0.0.1:{port}/health", None, timeout=2)
            assert isinstance(response.status_code, int)
        except HttpError:
            pass
        finally:
            server.close()

    tracemalloc.start()
    asyncio.run(scenario())  # the request's own 2 s timeout bounds it
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 * 1024 * 1024


@FUZZ
@given(st.one_of(st.binary(max_size=4096), st.text(max_size=2048).map(str.encode)))
def test_the_state_reader_turns_any_bytes_into_state_or_a_warning(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("state") / "state.json"
    path.write_bytes(content)
    saved, warning = state.load(path)
    assert isinstance(saved, state.SavedState)
    assert warning is None or warning.startswith("state file") or warning.startswith("cannot read")


@FUZZ
@given(st.binary(max_size=3 * MAX_LINE), st.integers(min_value=0, max_value=50))
def test_the_log_reader_reads_any_bytes_in_bounded_pieces(tmp_path_factory, content, count):
    path = tmp_path_factory.mktemp("logs") / "x.log"
    path.write_bytes(content)
    tail = last_lines(path, count)
    assert len(tail) <= count
    followed = list(_Follower(path, from_end=False).read_lines())
    for line in [*tail, *followed]:
        assert len(line) <= MAX_LINE + len(SPLIT_MARKER)
    whole = "".join(
        line.removesuffix(SPLIT_MARKER) + ("" if line.endswith(SPLIT_MARKER) else "\n") for line in followed
    )
    assert content.startswith(whole.encode("utf-8", errors="surrogateescape"))  # nothing lost, nothing made up
