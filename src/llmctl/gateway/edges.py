"""Who may ask the gateway, and what: every check parses its input, none matches a pattern.

The attacks these close (GATEWAY.md §4 pitfall 5, RELIABILITY.md §3):

- DNS rebinding: a web page at evil.example re-points its name to 127.0.0.1, and the browser then sends
  `Host: evil.example` to the gateway. Without a key the gateway answers only a Host that *is* loopback:
  `is_loopback_host` parses the name as an IP address with `ipaddress`, so `127.0.0.1.nip.io` or
  `localhost.evil.com` (names that resolve to loopback but are not loopback) are refused.
- Cross-site requests from a browser: `origin_allowed` compares the serialised Origin (RFC 6454 §6.2) exactly
  against an allowlist; `content_type_allowed` refuses the content types a browser may send cross-site without
  a CORS preflight (text/plain, application/x-www-form-urlencoded; the Fetch standard's "CORS-safelisted
  request-header"), so such a request never reaches a model.
- Path tricks: `normalise_path` refuses dot segments and encoded separators in the raw path before any
  decoding, so `/v1/%2e%2e/slots` can never become `/slots` at an upstream that decodes; `upstream_path_allowed`
  lets only the OpenAI API (and, once enabled, Ollama's inference API) through to a server.
- Keys: `api_key_from` never raises on odd header bytes; `key_matches` compares in constant time.

Nothing here imports the control plane: these are pure functions over strings, tested table by table.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping

from llmctl.gateway.problems import Refused

_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789+-.")
# A host name outside brackets: letters, digits, hyphen, dot (RFC 1123), and "_", which real names hold.
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")
# A host[:port] in a Host or Origin header never holds these: userinfo, paths, queries, escapes, spaces.
_NOT_IN_AUTHORITY = frozenset("@/\\?#%; \t,")
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

# OpenAI's endpoints that take multipart/form-data (platform.openai.com/docs/api-reference: audio
# transcriptions and translations, image edits and variations, file and upload-part uploads).
MULTIPART_PATHS = frozenset(
    {"/v1/audio/transcriptions", "/v1/audio/translations", "/v1/images/edits", "/v1/images/variations", "/v1/files"}
)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

# What may reach an upstream server. The OpenAI API under /v1/, except vLLM's runtime LoRA loaders, which change
# what the server serves (vLLM docs, "Dynamically serving LoRA adapters"; on only with
# VLLM_ALLOW_RUNTIME_LORA_UPDATING, but the gateway cannot know).
UPSTREAM_PREFIXES = ("/v1/",)
UPSTREAM_DENIED = frozenset({"/v1/load_lora_adapter", "/v1/unload_lora_adapter"})
# Ollama's inference and read-only endpoints (ollama docs/api.md), for when the gateway speaks Ollama's API.
# Listed one by one, not as the /api/ prefix: /api/pull, /api/push, /api/create, /api/copy, /api/delete and
# /api/blobs/* download, upload or delete models.
OLLAMA_PATHS = frozenset(
    {"/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/api/show", "/api/tags", "/api/ps", "/api/version"}
)

CORS_ALLOW_METHODS = "GET, POST, OPTIONS"
CORS_ALLOW_HEADERS = "Authorization, Content-Type, X-Api-Key"
CORS_EXPOSE_HEADERS = "Retry-After, X-Request-Id"
# Ten minutes: long enough to spare a preflight per request, short enough that a narrowed allowlist takes
# effect soon. Browsers cap it anyway (Chromium at 2 hours, Firefox at 24 hours).
CORS_MAX_AGE = "600"


# -- Host ------------------------------------------------------------------------------------------------------


def is_loopback_host(host_header: str | None) -> bool:
    """True only if a Host header names this machine's loopback interface, with an optional port.

    Accepted: a dotted-quad IPv4 address in 127.0.0.0/8 that `ipaddress.IPv4Address` parses (so never
    `2130706433`, `0x7f.1`, `127.1` or `0127.0.0.1`, which some resolvers read as 127.0.0.1); a bracketed IPv6
    loopback address (`[::1]`, `[0:0:0:0:0:0:0:1]`) or IPv4-mapped loopback (`[::ffff:127.0.0.1]`); and the name
    `localhost` in any case (RFC 6761 §6.3 reserves it for loopback). A port, when present, is 1 to 5 ASCII
    digits in 1..65535.

    Refused: a missing or empty header (ollama PR #17721 was a bypass through an empty Host), any other name,
    including `localhost.` with a trailing dot and `*.localhost` (RFC 6761 asks resolvers to keep those on
    loopback, but not every resolver does, and no client of ours needs them), userinfo, IPv6 without brackets,
    zone ids and other percent-escapes, spaces and anything not ASCII. Never raises.
    """
    split = _split_authority(host_header)
    if split is None:
        return False
    name, _port = split
    if name.lower() == "localhost":
        return True
    address = _ip_address(name)
    if address is None:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _split_authority(value: str | None) -> tuple[str, int | None] | None:
    """(host, port or None) from `host[:port]` or `[v6]:port`, or None when it is not one."""
    if not value or not value.isascii() or not value.isprintable() or _NOT_IN_AUTHORITY.intersection(value):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[: end + 1], value[end + 1 :]
    else:
        name, colon, port_text = value.partition(":")
        rest = colon + port_text
        if ":" in port_text or not _NAME_CHARS.issuperset(name):
            return None  # IPv6 without brackets, two ports, or characters no host name holds
    if not name or name == "[]":
        return None
    if not rest:
        return name, None
    port = _port(rest[1:]) if rest.startswith(":") else None
    return None if port is None else (name, port)


def _port(text: str) -> int | None:
    if not 1 <= len(text) <= 5 or not _DIGITS.issuperset(text):
        return None
    port = int(text)
    return port if 1 <= port <= 65535 else None


def _ip_address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a bracketed IPv6 or plain dotted-quad IPv4 name spells, or None for any other name."""
    try:
        if name.startswith("[") and name.endswith("]"):
            return ipaddress.IPv6Address(name[1:-1])
        return ipaddress.IPv4Address(name)
    except ValueError:
        return None


# -- Origin ----------------------------------------------------------------------------------------------------


def normalise_origin(origin: str) -> str | None:
    """The serialised origin (RFC 6454 §6.2) `scheme://host[:port]`, lowercased, default port dropped; or None.

    None for anything that is not one origin: paths, userinfo, a list of origins, escapes, spaces, non-ASCII
    (browsers send IDNA names as punycode), a bad port. `null` is not an origin and gives None too. Works for
    any scheme (`app://`, `vscode-webview://`, `chrome-extension://`), as Ollama's OLLAMA_ORIGINS does.
    """
    scheme, sep, authority = origin.partition("://")
    scheme = scheme.lower()
    if not sep or not scheme or not scheme[0].isalpha() or not _SCHEME_CHARS.issuperset(scheme):
        return None
    split = _split_authority(authority)
    if split is None:
        return None
    host, port = split
    if host.startswith("[") and _ip_address(host) is None:
        return None
    host = host.lower()
    if port is None or port == DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a request with this Origin header may be served: absent (None) yes; otherwise only if listed.

    A request without Origin comes from a program (curl, an SDK), not from a web page: browsers send Origin on
    every cross-origin request and every POST (Fetch standard, "append a request `Origin` header"). `null`
    (sandboxed iframes, file:// pages, redirects) is allowed only if the allowlist holds `null` itself. Other
    values are compared after `normalise_origin` on both sides, so `HTTP://LocalHost:80` matches
    `http://localhost`. An empty or unparsable Origin is refused.

    `*` in the allowlist is ignored, never a wildcard: the gateway has no key on loopback, so `*` would let any
    web page the user opens drive and read every model (llama-swap answers preflights with `*`, GATEWAY.md §4.5;
    RELIABILITY.md §3 "CORS off by default, never *"). List each origin instead.
    """
    if origin is None:
        return True
    if origin == "null":
        return "null" in allowed
    mine = normalise_origin(origin)
    if mine is None:
        return False
    return any(entry != "*" and normalise_origin(entry) == mine for entry in allowed)


def same_origin(origin: str | None, host_header: str | None) -> bool:
    """Whether a request comes from a page this gateway served itself (its /ui): Origin equal to
    `http://` + the Host the request was sent to, both normalised (RFC 6454 §5). False when either is missing.

    Safe without an allowlist entry because the Host rule still holds: without a key only a loopback Host is
    served (a rebound DNS name fails there), and with a key every API call still needs it.
    """
    if not origin or not host_header:
        return False
    mine = normalise_origin("http://" + host_header)
    return mine is not None and normalise_origin(origin) == mine


def cors_headers(origin: str, preflight: bool) -> dict[str, str]:
    """The gateway's own Access-Control-* headers for an Origin that `origin_allowed` accepted.

    `origin` is echoed exactly as the browser sent it (the browser compares it byte for byte); Vary: Origin
    keeps caches from serving one origin's answer to another. A preflight (OPTIONS with
    Access-Control-Request-Method) also gets the methods and request headers the gateway takes, and a Max-Age.
    Retry-After is exposed so a page can honour a 429/503. No Allow-Credentials: the gateway reads keys from
    headers, never from cookies.
    """
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if preflight:
        headers["Access-Control-Allow-Methods"] = CORS_ALLOW_METHODS
        headers["Access-Control-Allow-Headers"] = CORS_ALLOW_HEADERS
        headers["Access-Control-Max-Age"] = CORS_MAX_AGE
    else:
        headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS
    return headers


# -- Content-Type ----------------------------------------------------------------------------------------------


def media_type(content_type: str) -> str:
    """The `type/subtype` of a Content-Type value, lowercased, parameters dropped ("" when absent)."""
    return content_type.partition(";")[0].strip().lower()


def is_multipart_path(path: str) -> bool:
    """Whether OpenAI's API takes this path as multipart/form-data (MULTIPART_PATHS, /v1/uploads/{id}/parts)."""
    path = path.rstrip("/")
    if path in MULTIPART_PATHS:
        return True
    parts = path.split("/")
    return len(parts) == 5 and parts[:3] == ["", "v1", "uploads"] and parts[3] != "" and parts[4] == "parts"


def content_type_allowed(method: str, path: str, content_type: str) -> bool:
    """Whether a request's Content-Type suits its endpoint: False means answer 415.

    Only POST, PUT and PATCH are checked (others carry no body the gateway reads). Multipart endpoints
    (`is_multipart_path`) take multipart/form-data; every other path takes application/json or a
    `application/*+json` type (RFC 6839 §3.1), with any parameters (charset). Missing, text/plain and
    application/x-www-form-urlencoded are refused: with multipart/form-data these are the types a browser sends
    cross-site without a preflight (Fetch standard, CORS-safelisted request-header), so on JSON endpoints this
    check alone stops a hostile page's blind POST. Multipart endpoints stay reachable that way: there, the
    Origin and Host checks and the key are what stop it.
    """
    if method.upper() not in BODY_METHODS:
        return True
    kind = media_type(content_type)
    if is_multipart_path(path):
        return kind == "multipart/form-data"
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


# -- Paths -----------------------------------------------------------------------------------------------------


def normalise_path(raw_path: str) -> str:
    """Check a request's raw path (percent-escapes still in it, query string stripped) and return it unchanged.

    The server must pass aiohttp's `request.raw_path` with everything from "?" removed, never `request.path`:
    that one is already decoded, so `%2e%2e` would look like a name and `%2f` like a separator. Refused(400,
    code "bad_path") for: no leading "/", "?" or "#" (a query the caller forgot to strip), characters outside
    visible ASCII (RFC 9112 §3.2 request-target), backslashes, empty segments ("//"), dot segments "." and ".."
    whether written plainly or percent-encoded (RFC 3986 §2.3/§6.2.2.2 lets a server decode `%2E` to "."),
    malformed escapes, and escapes for "/", "\\", "%" (a double encoding meant for a server that decodes twice)
    and control characters. A trailing "/" is kept: it is the client's choice and harmless.
    """
    if not raw_path.startswith("/"):
        raise _bad_path("the path must start with /")
    if not raw_path.isascii() or any(not 0x21 <= ord(char) <= 0x7E for char in raw_path):
        raise _bad_path("the path holds a space, a control character or non-ASCII")
    if "?" in raw_path or "#" in raw_path or "\\" in raw_path:
        raise _bad_path("the path holds ?, # or a backslash")
    for segment in raw_path[1:].split("/")[:-1]:
        if segment == "":
            raise _bad_path("the path holds an empty segment (//)")
    for segment in raw_path[1:].split("/"):
        # "..;x" is ".." to servers that strip path parameters (RFC 3986 §3.3 allows them in a segment).
        if _decode_segment(segment).partition(";")[0] in (".", ".."):
            raise _bad_path("the path holds a . or .. segment")
    return raw_path


_FORBIDDEN_ESCAPES = frozenset(range(0x20)) | {0x7F, ord("/"), ord("\\"), ord("%")}


def _decode_segment(segment: str) -> str:
    """The segment with its escapes decoded (Latin-1, one char per byte); Refused for a forbidden escape."""
    out: list[str] = []
    i = 0
    while i < len(segment):
        if segment[i] != "%":
            out.append(segment[i])
            i += 1
            continue
        pair = segment[i + 1 : i + 3]
        if len(pair) != 2 or not _HEX.issuperset(pair):
            raise _bad_path("the path holds a malformed %-escape")
        byte = int(pair, 16)
        if byte in _FORBIDDEN_ESCAPES:
            raise _bad_path("the path holds an encoded separator, % or control character")
        out.append(chr(byte))
        i += 3
    return "".join(out)


def _bad_path(why: str) -> Refused:
    return Refused(400, f"bad request path: {why}", "bad_path")


def upstream_path_allowed(path: str, *, ollama: bool = False) -> bool:
    """Whether a (checked, raw) path may be forwarded to an instance's server.

    Only the OpenAI API under /v1/ with something after it, minus UPSTREAM_DENIED; with `ollama`, also the exact
    OLLAMA_PATHS. Never `/v1` alone, nor the servers' own endpoints: llama-server's /health, /props (POST,
    where enabled, changes settings), /slots (POST, where enabled, saves, restores and erases slot files),
    /metrics, /tokenize; mlx_lm.server's /health. The path is the raw one `normalise_path` accepted.
    """
    if any(path.startswith(prefix) and len(path) > len(prefix) for prefix in UPSTREAM_PREFIXES):
        return path.rstrip("/") not in UPSTREAM_DENIED
    return ollama and path in OLLAMA_PATHS


# -- Keys ------------------------------------------------------------------------------------------------------


def api_key_from(headers: Mapping[str, str]) -> str | None:
    """The key a client sent: `Authorization: Bearer KEY` (scheme in any case) or `X-Api-Key: KEY`.

    None when the client sent neither header. "" (a key that matches nothing) when it sent one that cannot be a
    key: another scheme (Basic), an empty or malformed value, characters outside visible ASCII (aiohttp hands
    undecodable bytes over as lone surrogates), a header repeated, or both headers with different keys (one
    intermediary could check one and the upstream the other). `headers` is aiohttp's CIMultiDictProxy or any
    case-insensitive mapping; with a plain dict, names must match case. Never raises.
    """
    authorization = _one(headers, "Authorization")
    x_api_key = _one(headers, "X-Api-Key")
    if authorization is None and x_api_key is None:
        return None
    bearer = _bearer(authorization) if authorization is not None else None
    plain = _visible(x_api_key.strip()) if x_api_key is not None else None
    if bearer is not None and plain is not None and bearer != plain:
        return ""
    return bearer if bearer is not None else plain


def _one(headers: Mapping[str, str], name: str) -> str | None:
    """The header's single value; "" when it is repeated (ambiguous); None when absent."""
    getall = getattr(headers, "getall", None)
    values = getall(name, []) if getall is not None else ([headers[name]] if name in headers else [])
    if not values:
        return None
    return values[0] if len(values) == 1 else ""


def _bearer(value: str) -> str:
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return _visible(token.strip(" "))


def _visible(value: str) -> str:
    """The value if every character is visible ASCII (0x21..0x7E), else "": no key holds anything else."""
    return value if value and all(0x21 <= ord(char) <= 0x7E for char in value) else ""


def key_matches(given: str | None, expected: str) -> bool:
    """Whether the client's key is the gateway's, compared in constant time; never raises.

    Both sides are hashed (SHA-256) first and the digests compared with `hmac.compare_digest`, so neither the
    content nor the length of the expected key leaks through timing. Strings are encoded as UTF-8 with
    "surrogatepass", which encodes any str (lone surrogates included). An empty expected key matches nothing.
    """
    if given is None or not given or not expected:
        return False
    mine = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
    theirs = hashlib.sha256(expected.encode("utf-8", "surrogatepass")).digest()
    return hmac.compare_digest(mine, theirs)
