"""The gateway's edges, one class of problem at a time: who may ask (Host, Origin, Content-Type, key), which
paths and headers cross, how much body is read and decoded, and what the gateway answers when it refuses.

No model servers: pure functions, table by table, hostile inputs first; a tiny real aiohttp server where the
claim is about aiohttp itself (raw header bytes, a compressed upload on a real socket); hypothesis where the
claim is "never anything but Refused"."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import json
import logging
import os
import subprocess
import sys
import tracemalloc
import zlib

import aiohttp
import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from llmctl.gateway import body as bodymod
from llmctl.gateway.body import LARGE_BODY, MAX_PARTS, model_of, parse_body, read_body, with_model
from llmctl.gateway.edges import (
    api_key_from,
    content_type_allowed,
    cors_headers,
    is_loopback_host,
    key_matches,
    normalise_origin,
    normalise_path,
    origin_allowed,
    upstream_path_allowed,
)
from llmctl.gateway.headers import HOP_BY_HOP, request_headers, response_headers
from llmctl.gateway.problems import Refused, error_body, error_response, log_refusal, sanitize

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def refusal(call, *args, **kwargs) -> Refused:
    with pytest.raises(Refused) as caught:
        call(*args, **kwargs)
    return caught.value


# -- problems: the answers the gateway gives itself ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "invalid_request_error"),
        (403, "invalid_request_error"),
        (404, "invalid_request_error"),
        (408, "invalid_request_error"),
        (413, "invalid_request_error"),
        (415, "invalid_request_error"),
        (429, "invalid_request_error"),
        (500, "server_error"),
        (502, "server_error"),
        (503, "server_error"),
        (504, "server_error"),
    ],
)
def test_error_body_is_openais_shape(status, kind):
    assert error_body(status, "why", "a_code") == {
        "error": {"message": "why", "type": kind, "param": None, "code": "a_code"}
    }


@pytest.mark.parametrize(("retry_after", "header"), [(None, None), (5, "5"), (0, "0")])
def test_error_response_carries_retry_after_and_is_never_cached(retry_after, header):
    response = error_response(Refused(429, "too many requests for 'x'", "queue_full", retry_after))
    assert response.status == 429
    assert response.content_type == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers.get("Retry-After") == header
    assert json.loads(response.body)["error"]["code"] == "queue_full"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("plain-model", "plain-model"),
        ("a\nINFO forged line", "a\\x0aINFO forged line"),
        ("a\r\nb", "a\\x0d\\x0ab"),
        ("tab\there", "tab\\x09here"),
        ("esc\x1b[31mred", "esc\\x1b[31mred"),
        ("nel\x85", "nel\\x85"),
        ("line\u2028sep", "line\\u2028sep"),
        ("bidi\u202eevil", "bidi\\u202eevil"),
        ("nbsp\u00a0", "nbsp\\xa0"),
        ("surrogate\udcff", "surrogate\\udcff"),
        ('quote" model=x', 'quote\\" model=x'),
        ("back\\slash", "back\\\\slash"),
        ("émoji 🦙", "émoji 🦙"),
        ("tag\U000e0041", "tag\\U000e0041"),
    ],
)
def test_sanitize_escapes_what_could_forge_or_hide_a_line(value, shown):
    assert sanitize(value) == shown


def test_sanitize_cuts_long_fields():
    assert sanitize("x" * 10_000) == "x" * 200 + "..."
    assert sanitize("\n" * 100, limit=12) == "\\x0a\\x0a\\x0a..."  # never half an escape


@FUZZ
@given(st.text(max_size=500), st.integers(min_value=4, max_value=300))
def test_sanitize_is_always_one_printable_bounded_field(value, limit):
    shown = sanitize(value, limit)
    assert shown.isprintable() and len(shown) <= limit + 3


def test_log_refusal_writes_one_line_a_client_cannot_forge(caplog):
    logger = logging.getLogger("llmctl.gateway.test")
    with caplog.at_level(logging.INFO, logger=logger.name):
        log_refusal(logger, "POST", "/v1/chat/completions", "m\nPOST /v1/x status=200", 404, "model_not_found", 0.0123)
        log_refusal(logger, "POST", "/v1/x", None, 502, "upstream_error", 1.5)
        log_refusal(logger, "POST", "/v1/x", "y" * 5000, 413, "too_large", 0)
    first, second, third = caplog.records
    assert first.getMessage() == (
        'POST "/v1/chat/completions" model="m\\x0aPOST /v1/x status=200" status=404 reason="model_not_found" '
        "duration_ms=12"
    )
    assert first.levelno == logging.INFO and second.levelno == logging.WARNING
    assert 'model="-"' in second.getMessage() and "duration_ms=1500" in second.getMessage()
    assert len(third.getMessage()) < 400 and "\n" not in third.getMessage()


# -- Host: DNS rebinding -----------------------------------------------------------------------------------------

LOOPBACK_HOSTS = [
    "127.0.0.1",
    "127.0.0.1:8080",
    "127.255.255.254:65535",
    "127.0.0.1:1",
    "localhost",
    "LocalHost:11434",
    "[::1]",
    "[::1]:4000",
    "[0:0:0:0:0:0:0:1]:80",
    "[::ffff:127.0.0.1]",
    "[::ffff:127.0.0.1]:8080",
    "[::ffff:7f00:1]",
    "127.0.0.1:08080",
]
FOREIGN_HOSTS = [
    None,
    "",
    " ",
    "127.0.0.1.evil.com",
    "127.1.2.3.nip.io",
    "localhost.evil.com",
    "evil.localhost",
    "localhost.",
    "127.0.0.1.",
    "127.0.0.1:abc",
    "127.0.0.1:99999",
    "127.0.0.1:0",
    "127.0.0.1:",
    "127.0.0.1: 80",
    "127.0.0.1 :80",
    "127.0.0.1:80:80",
    " 127.0.0.1",
    "a@127.0.0.1",
    "user:pw@localhost",
    "::1",
    "::1:80",
    "[::1",
    "[::1]x",
    "[::1]:",
    "[::1]:abc",
    "[]",
    "[::1%25lo]",
    "[::1%lo]",
    "127.0.0.1%2f",
    "127%2e0.0.1",
    "2130706433",
    "0x7f.1",
    "0x7f000001",
    "017700000001",
    "0177.0.0.1",
    "0127.0.0.1",
    "127.1",
    "127.0.1",
    "127.000.000.001",
    "1.2.3.4",
    "0.0.0.0",
    "[::]",
    "[::127.0.0.1]",
    "[::ffff:1.2.3.4]",
    "[fe80::1]",
    "１２７.0.0.1",
    "127.0.0.1\u200b",
    "lоcalhost",
    "localhost\x00",
    "localhost\r\nX: y",
    "127.0.0.1/x",
    "127.0.0.1\\@evil.com",
    "127.0.0.1#",
    "127.0.0.1?",
    "localhost,evil.com",
    "http://127.0.0.1",
]


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_loopback_hosts_are_answered(host):
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
def test_rebinding_and_odd_host_forms_are_refused(host):
    assert not is_loopback_host(host)


def _parses_as_loopback(host: str) -> bool:
    """The oracle: the name before any port is `localhost` or an address ipaddress calls loopback."""
    name = host[: host.index("]") + 1] if host.startswith("[") else host.partition(":")[0]
    if name.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name[1:-1] if name.startswith("[") else name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


HOST_TEXT = st.one_of(
    st.text(max_size=60),
    st.text(alphabet="0123456789abcdefxX.:[]%@ lLoOcChHsStT/", max_size=40),
    st.builds(
        lambda ip, port: f"[{ip}]{port}" if ip.version == 6 else f"{ip}{port}",
        st.ip_addresses(),
        st.sampled_from(["", ":80", ":0", ":65536", ":x", ":8080"]),
    ),
)


@FUZZ
@given(HOST_TEXT)
def test_is_loopback_host_never_raises_and_accepts_only_what_parses_as_loopback(host):
    if is_loopback_host(host):
        assert _parses_as_loopback(host), host


@FUZZ
@given(st.ip_addresses(), st.integers(min_value=1, max_value=65535))
def test_every_address_ipaddress_calls_loopback_is_answered(address, port):
    mapped = getattr(address, "ipv4_mapped", None)
    expected = (mapped or address).is_loopback
    name = f"[{address}]" if address.version == 6 else str(address)
    assert is_loopback_host(f"{name}:{port}") == expected


# -- Origin and CORS ------------------------------------------------------------------------------------------------

ALLOWED = ("http://localhost:3000", "HTTPS://App.Example.com:443", "vscode-webview://abc", "*")


@pytest.mark.parametrize(
    ("origin", "allowed", "expected"),
    [
        (None, ALLOWED, True),  # curl, SDKs: no browser, no Origin
        (None, (), True),
        ("http://localhost:3000", ALLOWED, True),
        ("HTTP://LOCALHOST:3000", ALLOWED, True),
        ("https://app.example.com", ALLOWED, True),  # default port normalised on both sides
        ("https://app.example.com:443", ALLOWED, True),
        ("vscode-webview://abc", ALLOWED, True),
        ("http://localhost:3001", ALLOWED, False),
        ("https://localhost:3000", ALLOWED, False),
        ("http://localhost", ALLOWED, False),
        ("http://app.example.com", ALLOWED, False),
        ("https://evil.example", ALLOWED, False),  # "*" is listed and still not honoured
        ("http://localhost:3000.evil.com", ALLOWED, False),
        ("http://localhost.evil.com:3000", ALLOWED, False),
        ("http://localhost:3000/", ALLOWED, False),
        ("http://localhost:3000/path", ALLOWED, False),
        ("http://user@localhost:3000", ALLOWED, False),
        ("http://localhost:3000 http://evil", ALLOWED, False),
        ("http://localhost:3000, https://evil", ALLOWED, False),
        ("http://localhost:3000\r\n", ALLOWED, False),
        ("http://lоcalhost:3000", ALLOWED, False),  # Cyrillic o
        ("", ALLOWED, False),
        ("localhost:3000", ALLOWED, False),
        ("null", ALLOWED, False),
        ("null", ("null",), True),
        ("NULL", ("null",), False),
        ("https://evil.example", ("*",), False),
        ("http://localhost:3000", ("bad entry", "http://localhost:3000"), True),
    ],
)
def test_origin_allowlist(origin, allowed, expected):
    assert origin_allowed(origin, allowed) is expected


@pytest.mark.parametrize(
    ("origin", "normal"),
    [
        ("HTTP://LocalHost:80", "http://localhost"),
        ("https://a.b:8443", "https://a.b:8443"),
        ("http://[::1]:8080", "http://[::1]:8080"),
        ("ws://x:80", "ws://x"),
        ("wss://x:443", "wss://x"),
        ("app://x:80", "app://x:80"),
        ("http://[nothost]", None),
        ("1http://x", None),
        ("ht tp://x", None),
        ("http://", None),
        ("http://x:99999", None),
    ],
)
def test_normalise_origin(origin, normal):
    assert normalise_origin(origin) == normal


def test_cors_headers_for_a_preflight_and_for_an_answer():
    preflight = cors_headers("http://localhost:3000", preflight=True)
    assert preflight["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert preflight["Vary"] == "Origin"
    assert preflight["Access-Control-Allow-Methods"] == "GET, POST, OPTIONS"
    assert preflight["Access-Control-Allow-Headers"] == "Authorization, Content-Type, X-Api-Key"
    assert int(preflight["Access-Control-Max-Age"]) > 0
    answer = cors_headers("http://localhost:3000", preflight=False)
    assert "Retry-After" in answer["Access-Control-Expose-Headers"]
    assert "Access-Control-Allow-Methods" not in answer
    assert all("Credentials" not in name for name in {**preflight, **answer})


# -- Content-Type: no "simple" cross-site POSTs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "content_type", "expected"),
    [
        ("POST", "/v1/chat/completions", "application/json", True),
        ("POST", "/v1/chat/completions", "application/json; charset=utf-8", True),
        ("POST", "/v1/chat/completions", "Application/JSON ; charset=UTF-8", True),
        ("POST", "/v1/chat/completions", "application/merge-patch+json", True),
        ("PUT", "/v1/x", "application/json", True),
        ("POST", "/v1/chat/completions", "text/plain", False),
        ("POST", "/v1/chat/completions", "text/plain; charset=utf-8", False),
        ("POST", "/v1/chat/completions", "application/x-www-form-urlencoded", False),
        ("POST", "/v1/chat/completions", "multipart/form-data; boundary=x", False),
        ("POST", "/v1/chat/completions", "", False),
        ("POST", "/v1/chat/completions", "application/jsonx", False),
        ("POST", "/v1/chat/completions", "text/json", False),
        ("POST", "/v1/chat/completions", "application/json+evil", False),
        ("PATCH", "/v1/chat/completions", "text/plain", False),
        ("post", "/v1/chat/completions", "text/plain", False),
        ("POST", "/v1/audio/transcriptions", "multipart/form-data; boundary=abc", True),
        ("POST", "/v1/audio/translations", "multipart/form-data; boundary=abc", True),
        ("POST", "/v1/images/edits", "multipart/form-data; boundary=abc", True),
        ("POST", "/v1/images/variations", "multipart/form-data; boundary=abc", True),
        ("POST", "/v1/files", "multipart/form-data; boundary=abc", True),
        ("POST", "/v1/files/", "multipart/form-data; boundary=abc", True),
        ("POST", "/v1/uploads/upload_abc/parts", "multipart/form-data; boundary=abc", True),
        ("POST", "/v1/uploads/upload_abc/parts", "application/json", False),
        ("POST", "/v1/uploads//parts", "multipart/form-data; boundary=abc", False),
        ("POST", "/v1/uploads/upload_abc", "application/json", True),
        ("POST", "/v1/audio/transcriptions", "application/json", False),
        ("POST", "/v1/audio/transcriptions", "text/plain", False),
        ("POST", "/v1/audio/transcriptions", "application/x-www-form-urlencoded", False),
        ("POST", "/v1/audio/transcriptions", "multipart/mixed; boundary=abc", False),
        ("GET", "/v1/models", "", True),
        ("OPTIONS", "/v1/chat/completions", "", True),
    ],
)
def test_content_type_suits_the_endpoint(method, path, content_type, expected):
    assert content_type_allowed(method, path, content_type) is expected


# -- Paths --------------------------------------------------------------------------------------------------------

GOOD_PATHS = [
    "/",
    "/v1/models",
    "/v1/models/",
    "/v1/chat/completions",
    "/v1/models/llama-3.1-8b",
    "/v1/models/caf%C3%A9",
    "/v1/models/a%20b",
    "/v1/...",
    "/v1/.hidden",
    "/v1/a.b",
    "/v1/%2e%2e%2e",
    "/v1/x;y",
]
BAD_PATHS = [
    "",
    "v1/models",
    "*",
    "http://evil/v1/models",
    "/v1/../tokenize",
    "/v1/./models",
    "/v1/%2e%2e/tokenize",
    "/v1/%2E%2e/slots",
    "/v1/.%2e/slots",
    "/v1/%2e/models",
    "/v1/..",
    "/v1/.",
    "/..",
    "/v1/..;/slots",
    "/v1/%2e%2e;x/slots",
    "/v1//models",
    "//v1/models",
    "/v1/models//",
    "/v1/a%2fb",
    "/v1/a%2Fb",
    "/v1/a%5cb",
    "/v1/a%5Cb",
    "/v1/a\\b",
    "/v1\\..\\slots",
    "/v1/%00",
    "/v1/a%0a",
    "/v1/a%0D%0A",
    "/v1/%7f",
    "/v1/%252e%252e",
    "/v1/%25",
    "/v1/%",
    "/v1/%2",
    "/v1/%zz",
    "/v1/%2g",
    "/v1/a b",
    "/v1/a\tb",
    "/v1/a\x00",
    "/v1/é",
    "/v1/models?x=1",
    "/v1/models#frag",
    "/v1/\x7f",
]


@pytest.mark.parametrize("path", GOOD_PATHS)
def test_clean_paths_come_back_unchanged(path):
    assert normalise_path(path) == path


@pytest.mark.parametrize("path", BAD_PATHS)
def test_dot_segments_encoded_separators_and_control_characters_are_refused(path):
    refused = refusal(normalise_path, path)
    assert (refused.status, refused.code) == (400, "bad_path")


PATH_TEXT = st.one_of(
    st.text(max_size=80),
    st.lists(
        st.sampled_from(["/", ".", "..", "%2e", "%2E", "%2f", "%5c", "%25", "%", "v1", "a", ";", "%00", "\\"]),
        max_size=12,
    ).map("".join),
)


def _fully_decoded_segments(path: str) -> list[str]:
    from urllib.parse import unquote

    return [unquote(segment, errors="strict").partition(";")[0] for segment in path.split("/")]


@FUZZ
@given(PATH_TEXT)
def test_normalise_path_only_raises_refused_and_lets_no_dot_segment_through(path):
    try:
        checked = normalise_path(path)
    except Refused as refused:
        assert refused.status == 400
        return
    assert checked == path and checked.startswith("/")
    assert not {".", ".."} & set(_fully_decoded_segments(checked[1:]))
    assert "//" not in checked and "\\" not in checked


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/chat/completions", True),
        ("/v1/completions", True),
        ("/v1/embeddings", True),
        ("/v1/audio/transcriptions", True),
        ("/v1/models", True),
        ("/v1", False),
        ("/v1/", False),
        ("/v1x/chat", False),
        ("/health", False),
        ("/tokenize", False),
        ("/detokenize", False),
        ("/props", False),
        ("/slots", False),
        ("/slots/0", False),
        ("/metrics", False),
        ("/", False),
        ("/completion", False),
        ("/infill", False),
        ("/api/generate", False),
        ("/api/pull", False),
        ("/V1/chat/completions", False),
        ("/v1/load_lora_adapter", False),
        ("/v1/unload_lora_adapter/", False),
    ],
)
def test_only_the_openai_api_reaches_an_upstream(path, expected):
    assert upstream_path_allowed(path) is expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/chat", True),
        ("/api/generate", True),
        ("/api/tags", True),
        ("/api/pull", False),
        ("/api/push", False),
        ("/api/create", False),
        ("/api/delete", False),
        ("/api/copy", False),
        ("/api/blobs/sha256:00", False),
        ("/api/chat/", False),
        ("/v1/chat/completions", True),
    ],
)
def test_ollamas_api_passes_only_its_inference_endpoints(path, expected):
    assert upstream_path_allowed(path, ollama=True) is expected


# -- Keys ---------------------------------------------------------------------------------------------------------


def headers_of(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


@pytest.mark.parametrize(
    ("pairs", "key"),
    [
        ((), None),
        ((("Content-Type", "application/json"),), None),
        ((("Authorization", "Bearer sk-abc"),), "sk-abc"),
        ((("authorization", "bearer sk-abc"),), "sk-abc"),
        ((("Authorization", "BEARER   sk-abc  "),), "sk-abc"),
        ((("X-Api-Key", "sk-abc"),), "sk-abc"),
        ((("x-api-key", " sk-abc "),), "sk-abc"),
        ((("Authorization", "Bearer sk-abc"), ("X-Api-Key", "sk-abc")), "sk-abc"),
        ((("Authorization", "Bearer sk-abc"), ("X-Api-Key", "sk-other")), ""),
        ((("Authorization", "Bearer a"), ("Authorization", "Bearer a")), ""),
        ((("Authorization", "Basic dXNlcjpwdw=="),), ""),
        ((("Authorization", "Bearer"),), ""),
        ((("Authorization", "Bearer "),), ""),
        ((("Authorization", ""),), ""),
        ((("Authorization", "sk-abc"),), ""),
        ((("Authorization", "Bearer sk abc"),), ""),
        ((("Authorization", "Bearer sk-\udcff\udcfe"),), ""),  # aiohttp's view of non-UTF-8 bytes
        ((("Authorization", "Bearer sk-é"),), ""),
        ((("Authorization", "Bearer sk-\x00"),), ""),
        ((("X-Api-Key", "\udcc3\udca9"),), ""),
        ((("X-Api-Key", ""),), ""),
    ],
)
def test_the_key_a_client_sent(pairs, key):
    assert api_key_from(headers_of(*pairs)) == key


def test_api_key_from_a_plain_dict():
    assert api_key_from({"Authorization": "Bearer k"}) == "k"
    assert api_key_from({}) is None


@pytest.mark.parametrize(
    ("given", "expected", "match"),
    [
        ("sk-abc", "sk-abc", True),
        ("sk-abd", "sk-abc", False),
        ("sk-ab", "sk-abc", False),
        (None, "sk-abc", False),
        ("", "sk-abc", False),
        ("", "", False),
        ("x", "", False),
        ("\udcff", "sk-abc", False),
        ("é", "é", True),
        ("sk-abc\x00", "sk-abc", False),
        ("\ud800", "\ud800", True),
    ],
)
def test_key_matches_in_constant_time_without_raising(given, expected, match):
    assert key_matches(given, expected) is match


@FUZZ
@given(st.text(max_size=40), st.text(max_size=40))
def test_key_matches_never_raises(given, expected):
    assert key_matches(given, expected) is bool(given and expected and given == expected)


def test_non_utf8_key_bytes_on_a_real_socket_are_a_wrong_key():
    """aiohttp hands undecodable header bytes over as lone surrogates; the check must answer, not crash."""

    async def handler(request: web.Request) -> web.Response:
        given = api_key_from(request.headers)
        return web.Response(status=200 if key_matches(given, "sk-right") else 401, text=repr(given))

    async def scenario() -> list[bytes]:
        app = web.Application()
        app.router.add_get("/", handler)
        async with TestServer(app) as server:
            answers = []
            for value in (b"Bearer sk-right", b"Bearer sk-\xff\xfe\x80", b"Bearer \xc3\xa9", b"sk-\xe9"):
                reader, writer = await asyncio.open_connection(server.host, server.port)
                writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " + value + b"\r\n\r\n")
                await writer.drain()
                answers.append(await reader.readline())
                writer.close()
            return answers

    answers = asyncio.run(scenario())
    assert answers[0].startswith(b"HTTP/1.1 200")
    for line in answers[1:]:  # 401 from the handler: never 500 (UnicodeEncodeError), never 200
        assert line.startswith(b"HTTP/1.1 401"), line


# -- Headers ------------------------------------------------------------------------------------------------------

BASE_REQUEST = [("Content-Type", "application/json"), ("Accept", "text/event-stream"), ("User-Agent", "sdk/1")]


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
@pytest.mark.parametrize("spell", [str.lower, str.upper, str.title])
def test_every_hop_by_hop_header_stops_at_the_gateway(name, spell):
    sent = request_headers([*BASE_REQUEST, (spell(name), "x")], gateway_has_key=False, upstream_key=None)
    back = response_headers([("Content-Type", "application/json"), (spell(name), "x")])
    assert name not in {key.lower() for key in sent}
    assert name not in {key.lower() for key, _ in back}


@pytest.mark.parametrize(
    "name",
    [
        "Host",
        "Content-Length",
        "Expect",
        "Content-Encoding",
        "Origin",
        "Referer",
        "Cookie",
        "Forwarded",
        "X-Forwarded-For",
        "X-Forwarded-Host",
        "X-Forwarded-Proto",
        "X-Real-IP",
        "Access-Control-Request-Method",
        "Access-Control-Request-Headers",
    ],
)
def test_request_headers_the_upstream_never_sees(name):
    sent = request_headers([*BASE_REQUEST, (name, "v")], gateway_has_key=False, upstream_key=None)
    assert name.lower() not in {key.lower() for key in sent}


def test_request_headers_keep_the_rest_and_ask_for_identity():
    sent = request_headers(
        [*BASE_REQUEST, ("Accept-Encoding", "gzip, br"), ("X-Request-Id", "r1"), ("Accept", "application/json")],
        gateway_has_key=False,
        upstream_key=None,
    )
    assert sent == {
        "Content-Type": "application/json",
        "Accept": "text/event-stream, application/json",
        "User-Agent": "sdk/1",
        "X-Request-Id": "r1",
        "Accept-Encoding": "identity",
    }


def test_names_listed_in_connection_are_dropped_both_ways():
    sent = request_headers(
        [*BASE_REQUEST, ("Connection", "keep-alive, X-Secret , close"), ("X-Secret", "s"), ("x-secret", "t")],
        gateway_has_key=False,
        upstream_key=None,
    )
    assert {key.lower() for key in sent} == {"content-type", "accept", "user-agent", "accept-encoding"}
    back = response_headers(
        [
            ("Content-Type", "application/json"),
            ("Connection", "X-Upstream-Only"),
            ("Connection", "x-other"),
            ("X-Upstream-Only", "1"),
            ("X-Other", "2"),
            ("X-Kept", "3"),
        ]
    )
    assert back == [("Content-Type", "application/json"), ("X-Kept", "3")]


@pytest.mark.parametrize(
    ("gateway_has_key", "upstream_key", "expected"),
    [
        (True, None, {}),  # consumed: the client's key was for the gateway
        (True, "up-key", {"Authorization": "Bearer up-key"}),  # injected
        (False, "up-key", {"Authorization": "Bearer up-key"}),
        (False, None, {"Authorization": "Bearer client-key", "X-Api-Key": "client-key"}),  # passed through
    ],
)
def test_keys_consumed_injected_or_passed_through(gateway_has_key, upstream_key, expected):
    sent = request_headers(
        [*BASE_REQUEST, ("Authorization", "Bearer client-key"), ("X-Api-Key", "client-key")],
        gateway_has_key=gateway_has_key,
        upstream_key=upstream_key,
    )
    keys = {name: value for name, value in sent.items() if name.lower() in ("authorization", "x-api-key")}
    assert keys == expected


@pytest.mark.parametrize("bad", ["", "a b", "k\r\nX-Evil: 1", "k\n", "é"])
def test_an_upstream_key_that_would_break_the_header_is_refused(bad):
    with pytest.raises(ValueError):
        request_headers(BASE_REQUEST, gateway_has_key=True, upstream_key=bad)


@pytest.mark.parametrize(
    "name",
    [
        "Content-Length",
        "Server",
        "Set-Cookie",
        "set-cookie",
        "Set-Cookie2",
        "Alt-Svc",
        "Access-Control-Allow-Origin",
        "Access-Control-Allow-Credentials",
        "Access-Control-Allow-Headers",
        "Access-Control-Expose-Headers",
    ],
)
def test_response_headers_the_client_never_sees(name):
    back = response_headers([("Content-Type", "application/json"), (name, "v"), (name, "w")])
    assert back == [("Content-Type", "application/json")]


def test_response_keeps_content_encoding_with_its_bytes_and_repeats():
    upstream = CIMultiDict(
        [
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
            ("Cache-Control", "no-cache"),
            ("X-Request-Id", "abc"),
            ("Retry-After", "3"),
            ("Link", "<a>"),
            ("Link", "<b>"),
            ("Vary", "Accept"),
        ]
    )
    back = response_headers(upstream)
    assert back == list(upstream.items())  # nothing dropped, nothing merged, order kept
    assert ("X-Accel-Buffering", "no") not in back


@pytest.mark.parametrize("content_type", ["text/event-stream", "text/event-stream; charset=utf-8", "Text/Event-Stream"])
def test_event_streams_are_never_buffered_by_a_proxy_in_front(content_type):
    back = response_headers({"Content-Type": content_type, "X-Accel-Buffering": "yes"})
    assert back == [("Content-Type", content_type), ("X-Accel-Buffering", "no")]


def test_mlx_style_wildcard_cors_from_an_upstream_is_dropped():
    back = response_headers(
        [("Content-Type", "application/json"), ("Access-Control-Allow-Origin", "*"), ("Server", "BaseHTTP/0.6")]
    )
    assert back == [("Content-Type", "application/json")]


# -- Body: size, time, encodings ----------------------------------------------------------------------------------


class FakeStream:
    """request.content, given as chunks; optionally stalls after them (a slow client)."""

    def __init__(self, chunks: list[bytes], stall: bool = False) -> None:
        self.chunks = list(chunks)
        self.stall = stall
        self.reads = 0

    async def read(self, n: int = -1) -> bytes:
        self.reads += 1
        if self.chunks:
            chunk = self.chunks.pop(0)
            assert len(chunk) <= n
            return chunk
        if self.stall:
            await asyncio.sleep(3600)
        return b""


def request_with(
    data: bytes | list[bytes], encoding: str | None = None, length: bool = True, stall: bool = False
) -> tuple[web.Request, FakeStream]:
    chunks = data if isinstance(data, list) else [data[i : i + 65536] for i in range(0, len(data), 65536)]
    headers = {"Content-Type": "application/json"}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    if length:
        headers["Content-Length"] = str(sum(map(len, chunks)))
    stream = FakeStream(chunks, stall)
    return make_mocked_request("POST", "/v1/chat/completions", headers=headers, payload=stream), stream


def read(data, encoding=None, limit=1 << 20, timeout=5.0, **kwargs) -> bytes:
    request, _ = request_with(data, encoding, **kwargs)
    return asyncio.run(read_body(request, limit, timeout))


PAYLOAD = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi " * 1000}]}).encode()


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        (None, lambda data: data),
        ("identity", lambda data: data),
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("GZIP", gzip.compress),
        ("deflate", zlib.compress),  # RFC 9110: zlib-wrapped
        ("deflate", raw_deflate),  # what some clients send instead
    ],
)
def test_bodies_are_decoded(encoding, encode):
    assert read(encode(PAYLOAD), encoding) == PAYLOAD


@pytest.mark.parametrize("encode", [gzip.compress, zlib.compress, raw_deflate])
def test_decoding_survives_one_byte_chunks(encode):
    encoded = encode(PAYLOAD[:2000])
    encoding = "gzip" if encode is gzip.compress else "deflate"
    assert read([encoded[i : i + 1] for i in range(len(encoded))], encoding) == PAYLOAD[:2000]


def test_a_gzip_bomb_stops_at_the_limit_in_bounded_memory():
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    bomb = b"".join(compressor.compress(zeros) for _ in range(50)) + compressor.flush()  # 50 MB of zeros
    assert len(bomb) < 100_000
    tracemalloc.start()
    try:
        refused = refusal(read, bomb, "gzip", limit=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (refused.status, refused.code) == (413, "too_large")
    assert peak < 8 << 20  # decoding stopped at limit + 1 bytes, never near 50 MB


def test_a_body_just_at_the_limit_passes_and_one_byte_more_does_not():
    assert read(gzip.compress(b"x" * 1000), "gzip", limit=1000) == b"x" * 1000
    assert refusal(read, gzip.compress(b"x" * 1001), "gzip", limit=1000).status == 413
    assert read(b"x" * 1000, limit=1000) == b"x" * 1000


def test_content_length_over_the_limit_is_refused_before_reading():
    request, stream = request_with(b"x" * 2000)
    refused = refusal(asyncio.run, read_body(request, 1000, 5.0))
    assert refused.status == 413 and stream.reads == 0


@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_more_bytes_than_the_limit_without_content_length_are_refused(encoding):
    data = os.urandom(5000)  # incompressible: its gzip is larger than the limit too
    encoded = gzip.compress(data) if encoding else data
    assert refusal(read, [encoded[:3000], encoded[3000:]], encoding, limit=4000, length=False).status == 413


@pytest.mark.parametrize(
    "encoding",
    [
        "br",
        "zstd",
        "compress",
        "x-compress",
        "gzip, gzip",
        "gzip, br",
        "deflate,gzip",
        "pack200-gzip",
        "chunked",
        "*",
        "gzip;q=1",
    ],
)
def test_unsupported_or_stacked_encodings_are_refused(encoding):
    refused = refusal(read, gzip.compress(PAYLOAD), encoding)
    assert (refused.status, refused.code) == (415, "unsupported_encoding")


@pytest.mark.parametrize(
    ("encoding", "data"),
    [
        ("gzip", gzip.compress(PAYLOAD)[:-8]),  # truncated: no trailer
        ("gzip", gzip.compress(PAYLOAD)[:40]),
        ("gzip", b"not gzip at all"),
        ("gzip", gzip.compress(PAYLOAD) + b"trailing"),
        ("gzip", gzip.compress(b"a") + gzip.compress(b"b")),  # a second member is refused, not half-read
        ("gzip", b""),
        ("deflate", zlib.compress(PAYLOAD)[:-4]),
        ("deflate", b"\x78"),
        ("deflate", b"\x78\x9c" + b"\xff" * 50),
        ("x-gzip", zlib.compress(PAYLOAD)),  # zlib sent as gzip
    ],
)
def test_corrupt_compressed_bodies_are_bad_requests(encoding, data):
    refused = refusal(read, data, encoding)
    assert (refused.status, refused.code) == (400, "corrupt_body")


def test_a_slow_body_hits_the_deadline():
    request, _ = request_with([b'{"model":'], length=False, stall=True)
    refused = refusal(asyncio.run, read_body(request, 1000, 0.05))
    assert (refused.status, refused.code) == (408, "body_timeout")


async def _read_body_handler(request: web.Request) -> web.Response:
    try:
        data = await read_body(request, 1 << 20, 5.0)
    except Refused as refused:
        return error_response(refused)
    return web.json_response({"model": model_of(request.content_type, data)[1], "size": len(data)})


async def _body_server(**runner_options) -> TestServer:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _read_body_handler)
    server = TestServer(app)
    await server.start_server(**runner_options)  # TestServer(app, **options) would drop them
    return server


def test_a_compressed_upload_on_a_real_server_with_auto_decompress_off():
    """The wiring the module assumes: aiohttp hands over the raw bytes, read_body decodes and bounds them."""

    async def scenario() -> tuple[int, dict, int, dict]:
        server = await _body_server(auto_decompress=False)
        async with server, aiohttp.ClientSession() as client:
            url = server.make_url("/v1/chat/completions")
            headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
            async with client.post(url, data=gzip.compress(PAYLOAD), headers=headers) as good:
                first = (good.status, await good.json())

            async def chunks():  # a bomb streamed without Content-Length (chunked)
                compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
                for _ in range(20):
                    yield compressor.compress(bytes(1 << 20))
                yield compressor.flush()

            async with client.post(url, data=chunks(), headers=headers) as bomb:
                second = (bomb.status, await bomb.json())
        return (*first, *second)

    good_status, good, bomb_status, bomb = asyncio.run(scenario())
    assert (good_status, good) == (200, {"model": "m", "size": len(PAYLOAD)})
    assert (bomb_status, bomb["error"]["code"]) == (413, "too_large")


def test_a_server_left_decompressing_fails_closed():
    """Wired with aiohttp's default auto_decompress=True, a gzip body is refused (400), never decoded twice."""

    async def scenario() -> int:
        server = await _body_server()
        async with server, aiohttp.ClientSession() as client:
            headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
            url = server.make_url("/v1/chat/completions")
            async with client.post(url, data=gzip.compress(PAYLOAD), headers=headers) as answer:
                return answer.status

    assert asyncio.run(scenario()) == 400


# -- Body: which model ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "model"),
    [
        (b'{"model": "llama"}', "llama"),
        (b'{"model": "a/b:c@d"}', "a/b:c@d"),
        ('{"model": "caf\u00e9"}'.encode(), "caf\u00e9"),
        (b'\xef\xbb\xbf{"model": "bom"}', "bom"),
        ('{"model": "x"}'.encode("utf-16"), "x"),
        (b'{"model": "first", "model": "last"}', "last"),
        (json.dumps({"model": "m" * 256}).encode(), "m" * 256),
    ],
)
def test_json_names_its_model(body, model):
    assert model_of("application/json", body) == (True, model)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "invalid_json"),
        (b"not json", "invalid_json"),
        (b"[]", "invalid_json"),
        (b"null", "invalid_json"),
        (b'"model"', "invalid_json"),
        (b'{"model": "x"', "invalid_json"),
        (b'{"model": "\xff"}', "invalid_json"),
        (b"\xff\xfe\xfd", "invalid_json"),
        (b"9" * 5000, "invalid_json"),
        (b"{}", "missing_model"),
        (b'{"model": ""}', "missing_model"),
        (b'{"model": null}', "missing_model"),
        (b'{"model": 7}', "missing_model"),
        (b'{"model": ["x"]}', "missing_model"),
        (json.dumps({"model": "m" * 257}).encode(), "model_too_long"),
        (b"[" * 100_000, "nesting_too_deep"),
        (b'{"model": "x", "a": ' + b"[" * 100_000, "nesting_too_deep"),
        (b'{"a":' * 100_000, "nesting_too_deep"),
    ],
)
def test_json_without_a_usable_model_is_a_bad_request(body, code):
    refused = refusal(model_of, "application/json", body)
    assert (refused.status, refused.code) == (400, code)


def multipart(*parts: bytes, boundary: bytes = b"XyZ", close: bool = True, preamble: bytes = b"") -> bytes:
    body = preamble + b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    return body + (b"--" + boundary + b"--\r\n" if close else b"")


def field(name: bytes, value: bytes, extra: bytes = b"") -> bytes:
    return b'Content-Disposition: form-data; name="' + name + b'"' + extra + b"\r\n\r\n" + value


AUDIO = b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n' + (
    b"RIFF\r\n--XY\r\n" * 100
)
MULTIPART = "multipart/form-data; boundary=XyZ"


@pytest.mark.parametrize(
    ("content_type", "body", "model"),
    [
        (MULTIPART, multipart(field(b"model", b"whisper")), "whisper"),
        (MULTIPART, multipart(AUDIO, field(b"model", b"whisper"), field(b"language", b"")), "whisper"),
        (MULTIPART, multipart(field(b"prompt", b""), field(b"model", b"w")), "w"),
        (MULTIPART, multipart(field(b"model", b"w"), preamble=b"ignored preamble\r\n"), "w"),
        ('multipart/form-data; boundary="XyZ"', multipart(field(b"model", b"w")), "w"),
        ("Multipart/Form-Data; charset=utf-8; Boundary=XyZ", multipart(field(b"model", b"w")), "w"),
        (MULTIPART, multipart(b"Content-Disposition: form-data; name=model\r\n\r\nbare"), "bare"),
        (MULTIPART, multipart(b'content-disposition:form-data;name="model"\r\nX-Other: 1\r\n\r\nw'), "w"),
        (MULTIPART, multipart(field(b"model", "caf\u00e9".encode())), "caf\u00e9"),
        (MULTIPART, multipart(field(b"model", b"w"), field(b"x", b"y"), boundary=b"XyZ") + b"epilogue", "w"),
    ],
)
def test_multipart_names_its_model(content_type, body, model):
    assert model_of(content_type, body) == (False, model)


@pytest.mark.parametrize(
    ("content_type", "body", "code"),
    [
        (MULTIPART, multipart(AUDIO), "missing_model"),
        (MULTIPART, multipart(), "missing_model"),
        (MULTIPART, multipart(field(b"model", b"")), "missing_model"),
        (MULTIPART, multipart(field(b"model", b"w", b'; filename="model.txt"')), "missing_model"),
        (MULTIPART, multipart(field(b"modelx", b"w"), field(b"xmodel", b"w")), "missing_model"),
        (MULTIPART, multipart(b'Content-Disposition: attachment; name="model"\r\n\r\nw'), "missing_model"),
        (MULTIPART, multipart(b'X-Name: name="model"\r\n\r\nw'), "missing_model"),
        (MULTIPART, multipart(field(b"model", b"a"), field(b"model", b"b")), "bad_multipart"),
        (MULTIPART, multipart(field(b"model", b"w"), close=False), "bad_multipart"),
        (MULTIPART, multipart(field(b"model", b"w"))[:-9], "bad_multipart"),
        (MULTIPART, b"no boundary here", "bad_multipart"),
        (MULTIPART, b"", "bad_multipart"),
        (MULTIPART, multipart(b'Content-Disposition: form-data; name="model"\r\nw'), "bad_multipart"),
        (MULTIPART, multipart(field(b"model", b"\xff\xfe")), "bad_multipart"),
        (MULTIPART, b"--XyZjunk\r\n" + field(b"model", b"w") + b"\r\n--XyZ--", "bad_multipart"),
        (MULTIPART, multipart(b"X: " + b"y" * 9000 + b"\r\n" + field(b"model", b"w")), "bad_multipart"),
        (MULTIPART, multipart(field(b"model", b"m" * 257)), "model_too_long"),
        (MULTIPART, multipart(field(b"model", b"m" * 5000)), "model_too_long"),
        (MULTIPART, multipart(*[field(b"f", b"v")] * (MAX_PARTS + 1), field(b"model", b"w")), "bad_multipart"),
        ("multipart/form-data", multipart(field(b"model", b"w")), "bad_multipart"),
        ("multipart/form-data; boundary=", multipart(field(b"model", b"w")), "bad_multipart"),
        (
            "multipart/form-data; boundary=" + "b" * 71,
            multipart(field(b"model", b"w"), boundary=b"b" * 71),
            "bad_multipart",
        ),
        ('multipart/form-data; boundary="a\r\nb"', multipart(field(b"model", b"w")), "bad_multipart"),
    ],
)
def test_multipart_without_one_clean_model_is_a_bad_request(content_type, body, code):
    refused = refusal(model_of, content_type, body)
    assert (refused.status, refused.code) == (400, code)


def test_multipart_as_real_clients_write_it():
    """httpx (under OpenAI's Python SDK) and aiohttp's FormData, not only hand-built bodies."""
    request = httpx.Request(
        "POST",
        "http://x/v1/audio/transcriptions",
        data={"model": "whisper-1", "language": "en"},
        files={"file": ("a.wav", b"RIFF" + os.urandom(4000), "audio/wav")},
    )
    assert model_of(request.headers["Content-Type"], request.read()) == (False, "whisper-1")

    form = aiohttp.FormData()
    form.add_field("file", b"\x00" * 3000, filename="a.png", content_type="image/png")
    form.add_field("model", "dall-e-2")
    payload = form()

    class Sink:
        def __init__(self) -> None:
            self.data = b""

        async def write(self, chunk: bytes) -> None:
            self.data += chunk

    sink = Sink()
    asyncio.run(payload.write(sink))
    assert model_of(payload.content_type, sink.data) == (False, "dall-e-2")


def test_parse_body_returns_the_payload_once():
    parsed = parse_body("application/json", b'{"model": "m", "n": 1}')
    assert parsed.is_json and parsed.model == "m" and parsed.payload == {"model": "m", "n": 1}
    assert parse_body(MULTIPART, multipart(field(b"model", b"w"))).payload is None
    assert LARGE_BODY == 1 << 20


BODY_PIECES = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(
        [
            b"--XyZ",
            b"--XyZ--",
            b"\r\n",
            b"\r\n\r\n",
            b'Content-Disposition: form-data; name="model"',
            b"content-disposition: form-data; name=model; filename=x",
            b"name*=utf-8''model",
            b"; ",
            b"model",
            b'"',
            b"\xff",
            b"{",
            b"[",
            b'"model":',
            b"}",
            b"\x00",
        ]
    ),
)
CONTENT_TYPES = st.one_of(
    st.text(max_size=80),
    st.sampled_from(
        [
            MULTIPART,
            "multipart/form-data",
            "multipart/form-data; boundary=",
            'multipart/form-data; boundary="XyZ',
            "multipart/form-data; boundary*=utf-8''XyZ",
            "multipart/form-data; boundary=XyZ; boundary=abc",
            "application/json",
            "",
        ]
    ),
)


@FUZZ
@given(CONTENT_TYPES, st.lists(BODY_PIECES, max_size=25).map(b"".join))
def test_model_of_only_ever_raises_refused(content_type, body):
    try:
        is_json, model = model_of(content_type, body)
    except Refused as refused:
        assert refused.status == 400 and refused.code
        return
    assert isinstance(is_json, bool) and 0 < len(model) <= 256


# -- Body: what the upstream sees -----------------------------------------------------------------------------------


def test_with_model_replaces_or_removes_the_model():
    body = b'{"model": "alias", "messages": []}'
    assert json.loads(with_model(body, True, "served.gguf")) == {"model": "served.gguf", "messages": []}
    assert json.loads(with_model(body, True, None)) == {"messages": []}


def test_with_model_uses_the_parsed_payload_without_changing_it():
    parsed = parse_body("application/json", b'{"model": "routed", "model": "routed-too", "x": 1}')
    snapshot = dict(parsed.payload)
    out = with_model(b"ignored when parsed is given", True, "up", parsed.payload)
    assert json.loads(out) == {"model": "up", "x": 1} and out.count(b'"model"') == 1
    assert parsed.payload == snapshot


def test_with_model_keeps_what_json_can_hold_but_utf8_cannot():
    body = b'{"model": "m", "text": "\\ud800 lone, \\u00e9 and \\ud83e\\udd99"}'
    out = with_model(body, True, "up")
    assert out.isascii()
    assert json.loads(out)["text"] == "\ud800 lone, \u00e9 and \U0001f999"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(
    st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=6),
    st.text(min_size=1, max_size=256),
    st.one_of(st.none(), st.text(min_size=1, max_size=40)),
)
def test_the_upstream_reads_the_client_object_with_only_the_model_changed(payload, model, upstream):
    sent = {**payload, "model": model}
    parsed = parse_body("application/json", json.dumps(sent).encode())
    assert parsed.model == model
    expected = {key: value for key, value in sent.items() if key != "model" or upstream is not None}
    if upstream is not None:
        expected["model"] = upstream
    assert json.loads(with_model(b"", True, upstream, parsed.payload)) == expected


def test_with_model_leaves_multipart_alone():
    body = multipart(field(b"model", b"alias"), AUDIO)
    assert with_model(body, False, "served") is body


def test_with_model_refuses_what_it_cannot_serialise():
    deep: dict = {"model": "m"}
    inner = deep
    for _ in range(100_000):
        inner["a"] = {}
        inner = inner["a"]
    refused = refusal(with_model, b"", True, "up", deep)
    assert (refused.status, refused.code) == (400, "nesting_too_deep")


# -- Architecture -------------------------------------------------------------------------------------------------


def test_the_edge_modules_import_no_control_plane():
    code = (
        "import sys\n"
        "import llmctl.gateway.problems, llmctl.gateway.edges, llmctl.gateway.headers, llmctl.gateway.body\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('llmctl'))))"
    )
    loaded = set(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    allowed = {"llmctl", "llmctl.errors", "llmctl.spec", "llmctl.gateway"} | {
        f"llmctl.gateway.{name}" for name in ("problems", "edges", "headers", "body")
    }
    assert {name for name in loaded if not name.startswith("llmctl.system.")} <= allowed
    assert bodymod.__name__ in loaded
