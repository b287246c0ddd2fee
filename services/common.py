"""Pieces every service needs: loading user code by import path, settings shared by all
services, a check of the broker before starting, a health endpoint for probes, and clean
exits on configuration errors.

Nothing here knows about a particular service.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from colmena_core.names import check_name

logger = logging.getLogger(__name__)

DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672/"


class ServiceConfigError(Exception):
    """The service cannot start with the settings it was given; the message says why."""


class BrokerRefusedError(ServiceConfigError):
    """The broker answers but refuses the user, its password or the virtual host."""


class ServiceSettings(BaseSettings):
    """Settings every service shares: where the broker is and which campaign to join."""

    model_config = SettingsConfigDict(
        env_prefix="COLMENA_",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        extra="ignore",
    )

    broker_url: str = Field(
        default=DEFAULT_BROKER_URL,
        description="AMQP URL of the RabbitMQ broker (amqp:// or amqps://); the URLs of a "
        "cluster's nodes separated by commas, tried in turn",
    )
    campaign: str = Field(
        default="default",
        description="Campaign name; campaigns that share a broker never see each other's messages",
    )
    log_level: str = Field(
        default="INFO", description="Logging level (DEBUG, INFO, WARNING, ERROR)"
    )
    connect_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds to wait for the broker at start-up before giving up",
    )
    max_message_size: int = Field(
        default=128 * 1024 * 1024,
        gt=0,
        description="Largest message the broker takes, in bytes: its max_message_size "
        "(larger tasks and results are refused before they are sent)",
    )
    stall_timeout: float = Field(
        default=300.0,
        gt=0,
        description="Seconds without progress talking to the broker (no connection, messages "
        "unconfirmed, results unsent) after which the service reports not ready, saying why",
    )

    @field_validator("broker_url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        urls = [url.strip() for url in value.split(",")]
        if not all(url.startswith(("amqp://", "amqps://")) for url in urls):
            raise ValueError("must start with amqp:// or amqps:// (each, if comma-separated)")
        return ",".join(urls)

    @field_validator("campaign")
    @classmethod
    def _campaign(cls, value: str) -> str:
        return check_name(value, "the campaign name")

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    def configure_logging(self) -> None:
        """Log to stderr at the configured level, quieter for the engines we drive."""
        logging.basicConfig(
            level=self.log_level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
            force=True,
        )
        quiet_libraries(self.log_level)


class RecordingSettings(ServiceSettings):
    """Settings of the services that can keep a record of the results they handle."""

    results_file: Path | None = Field(
        default=None,
        description="Append every result this service handles to this file, one JSON object "
        "per line (draw it with 'colmena report FILE')",
    )


HealthHost = Annotated[str, Field(description="Address of the health endpoints")]
"""Type of the ``health_host`` setting of the services with health endpoints."""

HealthPort = Annotated[
    int,
    Field(
        ge=0,
        le=65535,
        description="Port of /healthz and /readyz (0: a free port, printed at start)",
    ),
]
"""Type of the ``health_port`` setting of the services with health endpoints."""


def quiet_libraries(level: str) -> None:
    """Keep the engines we drive at WARNING unless ``level`` is DEBUG."""
    if level == "DEBUG":
        return
    for noisy in ("parsl", "uvicorn.access", "asyncio", "httpx", "colmena_core.testing"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pika logs every failed connection attempt with a traceback; the queues report
    # connection trouble themselves, once, in plain words
    logging.getLogger("pika").setLevel(logging.CRITICAL)


def check_broker(url: str, timeout: float) -> None:
    """Connect to the broker once, before a service starts, and say plainly what is wrong.

    A broker that does not answer is tried again until ``timeout``; one that refuses the
    credentials or the virtual host is not (trying again would not help).

    Raises:
        BrokerRefusedError: the broker refused the user, its password or the virtual host
        ConnectionError: the broker did not answer within ``timeout`` seconds
    """
    import pika
    import pika.exceptions

    parts = urlsplit(url)
    user = unquote(parts.username or "guest")
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    where = redacted(url)
    deadline = time.monotonic() + timeout
    while True:
        parameters = pika.URLParameters(url)
        attempt = max(1.0, min(5.0, deadline - time.monotonic()))
        parameters.socket_timeout = parameters.stack_timeout = attempt
        parameters.blocked_connection_timeout = attempt
        parameters.connection_attempts = 1
        try:
            pika.BlockingConnection(parameters).close()
            return
        except pika.exceptions.ProbableAuthenticationError:
            raise BrokerRefusedError(
                f"The broker at {where} refused the login of user {user!r}: "
                "wrong user name or password"
            ) from None
        except pika.exceptions.ProbableAccessDeniedError:
            raise BrokerRefusedError(
                f"The broker at {where} refused access to the virtual host {vhost!r}: "
                f"it does not exist, or user {user!r} has no permission on it"
            ) from None
        except pika.exceptions.AMQPError as exc:
            reason = _plain_reason(exc)
        except OSError as exc:  # TLS set-up, name resolution
            reason = exc.strerror or str(exc) or type(exc).__name__
        if time.monotonic() >= deadline:
            raise ConnectionError(
                f"The broker at {where} is not reachable ({reason}; tried for {timeout:g} s)"
            )
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def _plain_reason(exc: Exception) -> str:
    """The cause of a pika connection error, without pika's nesting of exceptions."""
    cause: Any = exc
    while True:
        inner = getattr(cause, "exception", None)  # pika's connector errors wrap the OSError
        if not isinstance(inner, Exception) and cause.args and isinstance(cause.args[0], Exception):
            inner = cause.args[0]
        if not isinstance(inner, Exception):
            break
        cause = inner
    if isinstance(cause, OSError):
        return cause.strerror or str(cause) or type(cause).__name__
    text = str(cause) or type(cause).__name__
    return text if len(text) < 200 else text[:200] + "…"


def redacted(url: str) -> str:
    """A broker URL (or comma-separated URLs) with passwords hidden, for logs and messages."""
    return ",".join(_redacted_one(part) for part in url.split(","))


def _redacted_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


def load_object(path: str, what: str = "object") -> Any:
    """Load ``module:attribute`` (or ``file.py:attribute``) and return the attribute.

    Raises:
        ServiceConfigError: the path is malformed, the module cannot be imported, or it has
            no such attribute
    """
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ServiceConfigError(f"The {what} {path!r} must look like 'package.module:NAME'")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            if not file.is_file():
                raise ServiceConfigError(f"The {what} {path!r} names a file that does not exist")
            spec = importlib.util.spec_from_file_location(file.stem, file)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[file.stem] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ServiceConfigError:
        raise
    except Exception as exc:
        raise ServiceConfigError(
            f"Cannot import the module of the {what} {path!r}: {exc!r}"
        ) from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ServiceConfigError(
                f"The module {module_name!r} has no attribute {attribute!r} (the {what})"
            ) from None
    return target


Check = Callable[[], tuple[bool, dict[str, Any]]]


class HealthServer:
    """A tiny HTTP server for probes: ``GET /healthz`` (liveness) and ``GET /readyz``.

    Each check returns whether the service is healthy (ready) and details shown as JSON;
    the status is 200 or 503. Port 0 picks a free port (see :attr:`port`).
    """

    def __init__(self, host: str, port: int, liveness: Check, readiness: Check) -> None:
        checks = {"/healthz": liveness, "/livez": liveness, "/readyz": readiness}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                check = checks.get(self.path.split("?", 1)[0])
                if check is None:
                    self.send_error(404, "Not found: use /healthz or /readyz")
                    return
                try:
                    ok, details = check()
                except Exception as exc:  # a failing check is an unhealthy service
                    ok, details = False, {"error": repr(exc)}
                body = json.dumps({"status": "ok" if ok else "unavailable", **details}).encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("health: " + format, *args)

        self._server = ThreadingHTTPServer((host, port), Handler, bind_and_activate=False)
        self._server.daemon_threads = True
        bind(self._server, host, port, "the health endpoints", "--health-port")
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        logger.info("Health endpoints on http://%s:%d/healthz and /readyz", *self.address)
        return self

    @property
    def address(self) -> tuple[str, int]:
        """Host and port to reach the endpoints at (loopback when listening everywhere)."""
        host = str(self._server.server_address[0])
        return ("127.0.0.1" if host in ("0.0.0.0", "::", "") else host), self.port

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def bind(server: ThreadingHTTPServer, host: str, port: int, what: str, flag: str) -> None:
    """Bind and activate ``server``, or fail with one line that says what to do."""
    try:
        server.server_bind()
        server.server_activate()
    except OSError as exc:
        server.server_close()
        raise ServiceConfigError(port_error(exc, host, port, what, flag)) from None


def port_error(exc: OSError, host: str, port: int, what: str, flag: str) -> str:
    """A one-line explanation of a failure to listen on ``host:port``."""
    if exc.errno == errno.EADDRINUSE:
        return (
            f"Port {port} on {host} is in use (another service?): give {what} another "
            f"port with {flag}, or {flag}=0 for a free one"
        )
    if exc.errno == errno.EACCES:
        return f"Not allowed to listen on port {port} for {what}: choose a port above 1023"
    return f"Cannot listen on {host}:{port} for {what}: {exc.strerror or exc}"


def check_port(host: str, port: int, what: str, flag: str) -> None:
    """Fail with one line now if ``host:port`` cannot be listened on (port 0 always can)."""
    if port == 0:
        return
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ServiceConfigError(port_error(exc, host, port, what, flag)) from None


def wind_down_quietly() -> None:
    """After the one line a service logs when told to stop, log nothing below WARNING (at
    DEBUG everything still shows): stopping prints one line, or the problems it meets."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.disable(logging.INFO)


@contextmanager
def supervised(
    host: str, port: int, liveness: Check, readiness: Check, on_signal: Callable[[str], None]
) -> Iterator[None]:
    """Serve the health endpoints and turn SIGTERM and SIGINT into ``on_signal(name)`` for
    the duration of the block; the previous handlers come back afterwards.

    ``on_signal`` logs one line saying what the service does about it; after it, the
    service logs nothing below WARNING (one line of output for a stop).
    """
    health = HealthServer(host, port, liveness, readiness)
    health.start()

    def handler(signum: int, frame: Any) -> None:
        on_signal(signal.Signals(signum).name)
        wind_down_quietly()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, earlier in previous.items():
            signal.signal(sig, earlier)
        health.stop()
