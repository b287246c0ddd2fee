"""What every request passes before it reaches a route: identity, size, shape, headers.

:class:`Guard` is a pure ASGI middleware, so that it decides before anything reads or
parses the body:

* API routes need a valid token, checked from the headers alone: a caller without one
  gets 401 and its body is never read. A token carried by the ``colmena_token`` cookie is
  taken only from the gateway's own pages (and :attr:`GatewaySettings.allowed_origins`),
  so that another site cannot open a stream in its visitor's name (403).
* A body larger than ``max_request_bytes`` gets 413 (from its ``Content-Length``, or while
  it arrives); a JSON body nested deeper than ``max_json_depth``, or a batch of more than
  ``max_batch`` tasks, gets 422 before the JSON parser sees it (:func:`scan_json`, which
  works on the raw bytes without recursion).
* Every answer gets the security headers; its latency goes to the metrics, and every
  refusal is counted by reason.

:class:`TokenRedactor` keeps API tokens out of the log (uvicorn logs WebSocket paths
with their query, where browsers put the token).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .api.deps import TOKEN_COOKIE, client_for_token
from .metrics import GatewayMetrics
from .settings import GatewaySettings

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"

PUBLIC_API_PATHS = frozenset(
    {f"{API_PREFIX}/openapi.json", f"{API_PREFIX}/docs", f"{API_PREFIX}/docs/oauth2-redirect"}
)
"""Paths under the API prefix that need no token (the API's own description)."""

QUERY_TOKEN_PATHS = frozenset({f"{API_PREFIX}/results/sse", f"{API_PREFIX}/monitor/sse"})
"""HTTP paths that also take the token from the query or the cookie (``EventSource``)."""

BATCH_PATH = f"{API_PREFIX}/tasks/batch"

DASHBOARD_POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
"""Content security policy of every answer: the dashboard loads only its own files."""

DOCS_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'"
)
"""Policy of the interactive API documentation: Swagger UI's files are the gateway's own,
but its page starts it with an inline script and styles some elements inline."""

SECURITY_HEADERS = (
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("permissions-policy", "camera=(), microphone=(), geolocation=()"),
)
"""Headers every answer carries (besides the content security policy)."""

_SCAN_CHUNK = 1 << 20
"""Bytes of a body scanned at once (bounds the scan's memory)."""

_SCAN_IN_THREAD = 64 * 1024
"""Bodies at least this large are scanned outside the event loop."""


# ------------------------------------------------------------------ JSON
@dataclass(frozen=True)
class JsonShape:
    """What :func:`scan_json` tells of a JSON document without parsing it."""

    depth: int
    """Deepest nesting of arrays and objects (a scalar document has depth 0)"""
    items: int
    """Items of the arrays and objects at depth 2 (``{"tasks": [...]}``: the tasks)"""


def scan_json(body: bytes) -> JsonShape:
    """The nesting of a JSON document, from its bytes: no parser, no recursion.

    Brackets inside strings do not count. The document need not be valid: for invalid
    JSON the figures hold up to the first error, as far as a parser would go.
    """
    # Escaped backslashes, then escaped quotes: what is left of a string is its quotes
    text = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    data = np.frombuffer(text, dtype=np.uint8)
    depth, inside, deepest, commas = 0, 0, 0, 0
    for start in range(0, len(data), _SCAN_CHUNK):
        part = data[start : start + _SCAN_CHUNK]
        in_string = (np.cumsum(part == ord('"'), dtype=np.int64) + inside) & 1
        outside = in_string == 0
        opens = (part == ord("[")) | (part == ord("{"))
        closes = (part == ord("]")) | (part == ord("}"))
        steps = (opens & outside).astype(np.int64) - (closes & outside).astype(np.int64)
        levels = np.cumsum(steps) + depth
        deepest = max(deepest, int(levels.max()))
        commas += int(np.count_nonzero((part == ord(",")) & outside & (levels == 2)))
        depth, inside = int(levels[-1]), int(in_string[-1])
    return JsonShape(depth=deepest, items=commas + 1 if deepest >= 2 else 0)


async def scan_json_async(body: bytes) -> JsonShape:
    """:func:`scan_json`, outside the event loop for large bodies."""
    if len(body) < _SCAN_IN_THREAD:
        return scan_json(body)
    return await asyncio.to_thread(scan_json, body)


# ---------------------------------------------------------------- origins
def same_origin(connection: HTTPConnection, settings: GatewaySettings) -> bool:
    """Whether the request comes from the gateway's own pages or an allowed origin (or
    from no page at all: only browsers send ``Origin``)."""
    origin = connection.headers.get("origin")
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if origin in settings.origin_list:
        return True
    host = connection.headers.get("host", "")
    return bool(host) and urlsplit(origin).netloc.lower() == host.lower()


def presented_token(connection: HTTPConnection, query_allowed: bool) -> tuple[str | None, bool]:
    """The token a request presents, and whether it came from the cookie.

    The ``Authorization: Bearer`` header first; where ``query_allowed`` (streams), then the
    ``token`` query parameter and the cookie.
    """
    scheme, _, value = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip(), False
    if not query_allowed:
        return None, False
    token = connection.query_params.get("token")
    if token:
        return token, False
    cookie = connection.cookies.get(TOKEN_COOKIE)
    return (cookie, True) if cookie else (None, False)


# ---------------------------------------------------------------- the guard
def _error(status: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _unprocessable(message: str) -> JSONResponse:
    """A 422 shaped like FastAPI's validation errors."""
    return _error(422, [{"loc": ["body"], "msg": message, "type": "value_error"}])


class Guard:
    """Authenticate, bound and measure every request before the app sees it.

    Args:
        app: The app
        settings: Settings of the gateway
        metrics: Where latencies and refusals are counted
    """

    def __init__(self, app: ASGIApp, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        connection = HTTPConnection(scope)
        _, via_cookie = presented_token(connection, query_allowed=True)
        if via_cookie and not same_origin(connection, self.settings):
            self.metrics.refuse("origin")
            logger.info("Refused a WebSocket with the token cookie from another origin")
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008, "reason": "Cross-origin"})
            return
        await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        path: str = scope["path"]

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    headers.setdefault(name, value)
                docs = path == f"{API_PREFIX}/docs"
                headers.setdefault(
                    "content-security-policy", DOCS_POLICY if docs else DASHBOARD_POLICY
                )
                if path.startswith(API_PREFIX):
                    headers.setdefault("cache-control", "no-store")
                status = int(message["status"])
                if status >= 400:
                    self.metrics.errors.labels(str(status)).inc()
                route = scope.get("route")
                label = getattr(route, "path", None) or "unmatched"
                self.metrics.request_seconds.labels(label).observe(time.perf_counter() - started)
            await send(message)

        refusal = self._authenticate(scope, path)
        if refusal is not None:
            await refusal(scope, receive, guarded_send)
            return
        headers = dict(scope.get("headers") or [])
        if b"content-length" not in headers and b"transfer-encoding" not in headers:
            await self.app(scope, receive, guarded_send)  # no body
            return
        body, refusal = await self._read_body(headers, receive)
        if refusal is None and body and path.startswith(API_PREFIX):
            refusal = await self._check_shape(
                body, path, b"json" in headers.get(b"content-type", b"")
            )
        if refusal is not None:
            await refusal(scope, receive, guarded_send)
            return
        if body is None:
            return  # the client went away while sending

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, guarded_send)

    def _authenticate(self, scope: Scope, path: str) -> JSONResponse | None:
        """A refusal when an API path lacks a valid token (``None`` when it may pass)."""
        if not (path == API_PREFIX or path.startswith(f"{API_PREFIX}/")):
            return None
        if path in PUBLIC_API_PATHS:
            return None
        connection = HTTPConnection(scope)
        token, via_cookie = presented_token(connection, query_allowed=path in QUERY_TOKEN_PATHS)
        client = client_for_token(self.settings, token)
        if client is None:
            self.metrics.refuse("unauthorized")
            return _error(
                401,
                "Missing bearer token" if not token else "Invalid token",
                {"WWW-Authenticate": "Bearer"},
            )
        if via_cookie and not same_origin(connection, self.settings):
            self.metrics.refuse("origin")
            return _error(
                403,
                "The token cookie is accepted only from the gateway's own pages "
                "(see COLMENA_ALLOWED_ORIGINS)",
            )
        return None

    async def _read_body(
        self, headers: dict[bytes, bytes], receive: Receive
    ) -> tuple[bytes | None, JSONResponse | None]:
        """The whole body, or a 413 as soon as it is known to be too large."""
        limit = self.settings.max_request_bytes
        too_large = _error(413, f"Request body larger than the {limit} bytes this gateway accepts")
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            self.metrics.refuse("invalid")
            return None, _error(400, "Invalid Content-Length")
        if declared > limit:
            self.metrics.refuse("too_large")
            return None, too_large
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None, None  # http.disconnect
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                self.metrics.refuse("too_large")
                return None, too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None

    async def _check_shape(self, body: bytes, path: str, is_json: bool) -> JSONResponse | None:
        """A 422 for JSON that is not UTF-8 text, nested too deep, or a batch too large,
        before any parsing."""
        if is_json:
            try:
                body.decode()
            except UnicodeDecodeError as exc:
                self.metrics.refuse("invalid")
                return _unprocessable(
                    f"The body is not UTF-8 text, as JSON must be (byte {exc.start} is not)"
                )
        shape = await scan_json_async(body)
        limit = self.settings.max_json_depth
        if shape.depth > limit:
            self.metrics.refuse("too_deep")
            return _unprocessable(
                f"JSON nested {shape.depth} levels deep; the gateway accepts at most {limit}"
            )
        if path == BATCH_PATH and shape.items > self.settings.max_batch:
            self.metrics.refuse("batch_too_large")
            return _error(
                422,
                [
                    {
                        "loc": ["body", "tasks"],
                        "msg": f"A batch holds at most {self.settings.max_batch} tasks, "
                        f"not {shape.items}",
                        "type": "value_error",
                    }
                ],
            )
        return None


# ------------------------------------------------------------------ logs
class TokenRedactor(logging.Filter):
    """Replaces API tokens in log records by ``[redacted]``: the configured tokens
    wherever they appear, and the value of any ``token`` query parameter."""

    _QUERY = re.compile(r"([?&](?:access_)?token=)[^&\s\"']*")

    def __init__(self, tokens: Iterable[str]) -> None:
        super().__init__()
        self._tokens = sorted((t for t in tokens if t), key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler
            return True
        cleaned = self._QUERY.sub(r"\1[redacted]", message)
        for token in self._tokens:
            cleaned = cleaned.replace(token, "[redacted]")
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


CLIENT_CAUSED = {
    "Invalid UTF-8 sequence received from client.": "A WebSocket client sent text that is "
    "not UTF-8: closed with code 1007",
    "ASGI callable returned without completing response.": "An answer was cut short: its "
    "client stopped reading it",
}
"""uvicorn's error lines about what a client did (and its traceback), as the gateway says them."""


class ClientErrorsAsInfo(logging.Filter):
    """uvicorn logs some client errors as server errors, one with a traceback: they become
    one line at INFO (see :data:`CLIENT_CAUSED`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        said = CLIENT_CAUSED.get(str(record.msg))
        if said is not None:
            record.msg, record.args = said, None
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def install_redactor(tokens: Iterable[str]) -> TokenRedactor:
    """Filter tokens out of uvicorn's loggers and every handler of the root logger, and
    tell client errors that uvicorn logs as server errors for what they are."""
    redactor = TokenRedactor(tokens)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(redactor)
    logging.getLogger("uvicorn.error").addFilter(ClientErrorsAsInfo())
    for handler in logging.getLogger().handlers:
        handler.addFilter(redactor)
    return redactor
