"""Find or start a Redis server for tests.

The server is chosen in this order:

1. the URL in the ``COLMENA_TEST_REDIS_URL`` environment variable (``redis://host:port``
   or ``host:port``), which must answer;
2. a server already answering on ``127.0.0.1:6379``;
3. a throwaway ``redis-server`` started on a free local port, with persistence off, and
   stopped afterwards.

Tests only use keys under their own random prefixes and never flush a whole database, so
sharing a developer's server is safe.

When no server can be found, pytest tests are skipped with the reason, except in CI
(``CI`` set to ``true``), where a missing service must fail the run rather than hide it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_ADDRESS",
    "URL_VARIABLE",
    "RedisServer",
    "RedisUnavailableError",
    "acquire_redis_server",
    "in_ci",
    "parse_redis_url",
    "redis_answers",
    "redis_server_for_pytest",
    "skip_or_fail",
    "start_redis_server",
]

URL_VARIABLE = "COLMENA_TEST_REDIS_URL"
"""Environment variable naming the Redis server to test against."""

DEFAULT_ADDRESS = ("127.0.0.1", 6379)
"""Where a Redis server is looked for when no URL is given."""


class RedisUnavailableError(RuntimeError):
    """No Redis server could be found or started."""


def in_ci() -> bool:
    """Whether we run in continuous integration (``CI`` set to a true value)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the current pytest test with ``reason``, or fail it when running in CI."""
    import pytest  # only needed when running under pytest

    if in_ci():
        pytest.fail(f"{reason} (in CI a missing service is an error, not a skip)", pytrace=False)
    pytest.skip(reason)


def parse_redis_url(url: str) -> tuple[str, int]:
    """Host and port of a ``redis://host[:port][/0]`` URL (a bare ``host:port`` works too).

    Raises:
        ValueError: the URL is not a plain Redis URL that the queues can use
    """
    parsed = urlsplit(url if "://" in url else f"redis://{url}")
    if parsed.scheme != "redis":
        raise ValueError(f"Expected a redis:// URL, got {url!r}")
    if parsed.username or parsed.password:
        raise ValueError(f"Redis URLs with credentials are not supported: {url!r}")
    if parsed.path not in ("", "/", "/0"):
        raise ValueError(f"Only database 0 is supported: {url!r}")
    if not parsed.hostname:
        raise ValueError(f"No host in Redis URL {url!r}")
    return parsed.hostname, parsed.port or 6379


def redis_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a Redis server at ``host:port`` answers ``PING`` (needing no password)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n") and len(reply) < 256:
                chunk = sock.recv(256)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return False
    return reply.startswith(b"+PONG")


@dataclass
class RedisServer:
    """A Redis server used by tests, and the process we started for it, if any."""

    host: str
    port: int
    process: subprocess.Popen[bytes] | None = None
    workdir: Path | None = field(default=None, repr=False)

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` of the server."""
        return self.host, self.port

    def stop(self) -> None:
        """Stop the server if we started it (a server found running is left alone)."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=10)
            self.process = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis_server(
    executable: str = "redis-server", startup_timeout: float = 15.0, attempts: int = 3
) -> RedisServer:
    """Start a throwaway Redis server on a free local port, without persistence.

    Args:
        executable: Name or path of the ``redis-server`` program
        startup_timeout: Seconds to wait for the server to answer
        attempts: How many ports to try (another process may take the port we picked)
    Raises:
        RedisUnavailableError: the program is missing or the server did not start
    """
    program = shutil.which(executable)
    if program is None:
        raise RedisUnavailableError(f"{executable!r} is not installed")
    errors: list[str] = []
    for _ in range(attempts):
        workdir = Path(tempfile.mkdtemp(prefix="colmena-redis-"))
        port = _free_port()
        log = workdir / "redis.log"
        command = [
            program,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
            "--logfile", str(log),
        ]  # fmt: skip
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        server = RedisServer("127.0.0.1", port, process, workdir)
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline and process.poll() is None:
            if redis_answers("127.0.0.1", port, timeout=0.5):
                return server
            time.sleep(0.05)
        output = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        errors.append(f"port {port}: exit code {process.poll()}; log: {output.strip()}")
        server.stop()
    raise RedisUnavailableError(
        f"Could not start {program} after {attempts} attempts:\n" + "\n".join(errors)
    )


def acquire_redis_server() -> RedisServer:
    """Find a Redis server for tests, or start one (see the module documentation).

    Call :meth:`RedisServer.stop` when done with it.

    Raises:
        RedisUnavailableError: no server could be found or started
    """
    url = os.environ.get(URL_VARIABLE)
    if url:
        try:
            host, port = parse_redis_url(url)
        except ValueError as exc:
            raise RedisUnavailableError(f"{URL_VARIABLE} is not usable: {exc}") from exc
        if not redis_answers(host, port):
            raise RedisUnavailableError(f"No Redis answers at {URL_VARIABLE}={url}")
        return RedisServer(host, port)
    if redis_answers(*DEFAULT_ADDRESS):
        return RedisServer(*DEFAULT_ADDRESS)
    if shutil.which("redis-server") is None:
        raise RedisUnavailableError(
            f"No Redis server: none answers on {DEFAULT_ADDRESS[0]}:{DEFAULT_ADDRESS[1]}, "
            f"{URL_VARIABLE} is not set, and redis-server is not installed"
        )
    return start_redis_server()


def redis_server_for_pytest() -> Iterator[tuple[str, int]]:
    """Body of a pytest fixture that yields the ``(host, port)`` of a Redis server.

    Skips the tests that use it when no server is available (fails them in CI), and when
    the redis client library is not installed.
    """
    if importlib.util.find_spec("redis") is None:
        skip_or_fail("The redis package is not installed: pip install 'colmena-core[redis]'")
    try:
        server = acquire_redis_server()
    except RedisUnavailableError as exc:
        skip_or_fail(str(exc))
    try:
        yield server.address
    finally:
        server.stop()
