"""Which headers cross the gateway, each way: one explicit table, tested name by name.

A proxy must drop hop-by-hop headers, which describe one connection and not the message (RFC 9110 §7.6.1;
RFC 2616 §13.5.1 listed them by name), and also every header the message's own `Connection` header names.
Beyond that, the gateway is not a transparent proxy: it owns the client's side of the conversation (the key,
CORS, the encoding of the body it re-wrote), so it drops what belongs to that side and says so here.

    request_headers(request.headers, gateway_has_key=True, upstream_key=None) -> dict for the upstream call
    response_headers(upstream.headers) -> [(name, value), ...] for the client's response

Names compare case-insensitively (RFC 9110 §5.1). The input is aiohttp's CIMultiDict(Proxy), any mapping, or an
iterable of (name, value) pairs; repeated request headers are joined with ", " (RFC 9110 §5.3).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Union

HeaderInput = Union[Mapping[str, str], Iterable[tuple[str, str]]]

# RFC 9110 §7.6.1 names Connection, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding and Upgrade; RFC 2616
# §13.5.1 adds Proxy-Authenticate, Proxy-Authorization and "Trailers" (the header is spelt Trailer: both go).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)

# Never forwarded to an upstream, beyond HOP_BY_HOP. Why, one line each:
REQUEST_DROPPED = frozenset(
    {
        "host",  # the upstream's own; aiohttp's client writes it from the URL
        "content-length",  # the body may be rewritten; the client library counts it again
        "expect",  # the gateway answered 100-continue itself (aiohttp's server does)
        "content-encoding",  # read_body hands the upstream a decoded body
        "accept-encoding",  # replaced by "identity": the gateway never re-encodes an answer
        "origin",  # no browser context upstream: a server that echoes Origin (mlx_lm's CORS) then has none
        "referer",
        "cookie",
        "forwarded",  # the client's claims about proxies are not the gateway's (RFC 7239)
        "x-real-ip",
    }
)
REQUEST_DROPPED_PREFIXES = ("x-forwarded-", "access-control-")
KEY_HEADERS = frozenset({"authorization", "x-api-key"})

# Never passed back to the client, beyond HOP_BY_HOP. Content-Encoding stays: the body's bytes pass untouched
# (the upstream session must not decompress: `auto_decompress=False`), so the header must stay with them.
RESPONSE_DROPPED = frozenset(
    {
        "content-length",  # aiohttp's server sets it, or streams chunked
        "server",  # the upstream's name and version are nobody's business
        "set-cookie",  # the gateway's origin is shared by every model: no upstream sets cookies on it
        "set-cookie2",
        "alt-svc",  # would send the client to the upstream's own port or protocol, around the gateway
    }
)
RESPONSE_DROPPED_PREFIXES = ("access-control-",)  # the gateway owns CORS (edges.cors_headers)
EVENT_STREAM = "text/event-stream"


def header_pairs(headers: HeaderInput) -> list[tuple[str, str]]:
    """Every (name, value) of a CIMultiDict, mapping or iterable of pairs, repeated names kept, in order."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(name), str(value)) for name, value in items]


def connection_tokens(pairs: Iterable[tuple[str, str]]) -> frozenset[str]:
    """The lowercased header names listed in every Connection header (RFC 9110 §7.6.1: "close" among them)."""
    tokens: set[str] = set()
    for name, value in pairs:
        if name.lower() == "connection":
            tokens.update(token.strip().lower() for token in value.split(","))
    tokens.discard("")
    return frozenset(tokens)


def _dropped(name: str, table: frozenset[str], prefixes: tuple[str, ...], listed: frozenset[str]) -> bool:
    lower = name.lower()
    return lower in HOP_BY_HOP or lower in listed or lower in table or lower.startswith(prefixes)


def request_headers(client_headers: HeaderInput, *, gateway_has_key: bool, upstream_key: str | None) -> dict[str, str]:
    """The headers the gateway sends an upstream for a client's request.

    Drops HOP_BY_HOP, the names the client's Connection header lists, REQUEST_DROPPED and
    REQUEST_DROPPED_PREFIXES, and sets `Accept-Encoding: identity`. The key headers (Authorization, X-Api-Key):
    with `upstream_key`, both are dropped and `Authorization: Bearer <upstream_key>` is sent; else with
    `gateway_has_key` they are dropped (the client's key was for the gateway and is consumed, never forwarded);
    with neither, they pass unchanged, so a client can talk to a keyed upstream through a keyless gateway.
    Repeated names are joined with ", ". ValueError if `upstream_key` is empty or holds anything but visible
    ASCII (it would make a broken or split header).
    """
    pairs = header_pairs(client_headers)
    listed = connection_tokens(pairs)
    drop_keys = gateway_has_key or upstream_key is not None
    out: dict[str, str] = {}
    names: dict[str, str] = {}  # lowercase -> the spelling first seen, so repeats join under one name
    for name, value in pairs:
        lower = name.lower()
        if _dropped(name, REQUEST_DROPPED, REQUEST_DROPPED_PREFIXES, listed) or (drop_keys and lower in KEY_HEADERS):
            continue
        spelt = names.setdefault(lower, name)
        out[spelt] = f"{out[spelt]}, {value}" if spelt in out else value
    out["Accept-Encoding"] = "identity"
    if upstream_key is not None:
        out["Authorization"] = f"Bearer {_checked_key(upstream_key)}"
    return out


def _checked_key(key: str) -> str:
    if not key or any(not 0x21 <= ord(char) <= 0x7E for char in key):
        raise ValueError("the upstream API key must be visible ASCII characters, without spaces")
    return key


def response_headers(upstream_headers: HeaderInput) -> list[tuple[str, str]]:
    """The headers the gateway passes back to the client from an upstream's response, as (name, value) pairs.

    A list, not a dict: repeated headers (Link, Vary, WWW-Authenticate) stay as they came. Drops HOP_BY_HOP, the
    names the upstream's Connection header lists, RESPONSE_DROPPED and any Access-Control-*. Keeps the rest:
    Content-Type, Content-Encoding, Cache-Control, Retry-After, X-Request-Id and the like. For a
    text/event-stream answer, `X-Accel-Buffering: no` replaces any the upstream sent, so nginx in front of the
    gateway flushes each event (llama-swap does the same, after llama-swap#236; GATEWAY.md §4.4).
    """
    pairs = header_pairs(upstream_headers)
    listed = connection_tokens(pairs)
    kept = [pair for pair in pairs if not _dropped(pair[0], RESPONSE_DROPPED, RESPONSE_DROPPED_PREFIXES, listed)]
    content_type = next((value for name, value in kept if name.lower() == "content-type"), "")
    if content_type.partition(";")[0].strip().lower() == EVENT_STREAM:
        kept = [pair for pair in kept if pair[0].lower() != "x-accel-buffering"]
        kept.append(("X-Accel-Buffering", "no"))
    return kept
