"""Queues that carry Colmena messages through lists on a Redis server.

Thinkers and task servers may run on different hosts and there may be several of each:
they only need to reach the same Redis server and agree on a key ``prefix``. Every queue
object holds a redis-py client with a connection pool, which is safe to share between
threads: each blocking pop uses its own connection from the pool.

Keys used for a prefix ``p``:

- ``p_requests``: task requests, for every task server
- ``p_result_<topic>``: results of one topic, for the thinker

Messages are raw bytes (:mod:`colmena_core.models.wire`), signed with the campaign secret
when there is one (:mod:`colmena_core.security`); the kill signal is a small message of its
own kind on the requests list. Unsigned or badly signed messages are dropped with a warning
before anything in them is parsed.

Needs Redis 6.0 or newer (fractional timeouts of blocking pops) and the optional
``redis`` extra (``pip install 'colmena-core[redis]'``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Mapping
from typing import Any, NoReturn
from uuid import uuid4

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "RedisQueues needs the redis package: pip install 'colmena-core[redis]'"
    ) from exc

from colmena_core.exceptions import KillSignalException, MessageDecodeError, TimeoutException
from colmena_core.models import Result, SerializationMethod
from colmena_core.models.wire import decode_kill
from colmena_core.queue.base import ColmenaQueues

__all__ = ["RedisConnectionError", "RedisQueues"]

logger = logging.getLogger(__name__)

_MAX_BLOCK = 30.0
"""Longest single blocking pop, in seconds; longer waits are made of several pops."""

_SOCKET_TIMEOUT = 300.0
"""Client-side limit on one socket operation, far above :data:`_MAX_BLOCK`.

It must exceed the longest blocking pop: a pop abandoned by the client while the server
still serves it would lose the message. It also bounds the time to send one large message.
"""

_POLL_INTERVAL = 0.005
"""Pause between non-blocking pops during the last server tick of a timeout, in seconds."""

_DEFAULT_TICK = 0.1
"""Resolution of a Redis server's timers when it does not report its ``hz`` (10 per second)."""

_MIN_VERSION = (6, 0)
"""Oldest Redis server accepted: older ones reject fractional timeouts of BLPOP."""


class RedisConnectionError(redis.exceptions.ConnectionError, ConnectionError):
    """The Redis server of a queue cannot be reached or is not usable.

    Derives from both redis-py's ``ConnectionError`` and the built-in one, so either
    ``except`` clause catches it.
    """


def _server_tick(info: Mapping[str, Any]) -> float:
    """Timer resolution of a server, in seconds, from the ``server`` section of INFO."""
    try:
        hz = float(info.get("hz", 0))
    except (TypeError, ValueError):
        hz = 0.0
    return min(max(1.0 / hz, 0.001), 1.0) if hz > 0 else _DEFAULT_TICK


def _server_version(info: Mapping[str, Any]) -> tuple[int, ...] | None:
    """Version of a server from the ``server`` section of INFO, or None if unknown."""
    try:
        return tuple(int(part) for part in str(info["redis_version"]).split(".")[:2])
    except (KeyError, ValueError):
        return None


class RedisQueues(ColmenaQueues):
    """Queues that pass messages through lists on a Redis server.

    A queue is defined by its prefix and its topics: any number of thinkers and task
    servers that use the same server and prefix share the queues. Results are kept in one
    list per topic, so an agent can wait for the results of one topic only.

    The connection is made on first use (or by :meth:`connect`), and is not pickled: a copy
    sent to another process connects again when it is first used there.

    Args:
        topics: Names of topics that are known for this queue (``default`` is always added)
        hostname: Hostname of the Redis server
        port: Port on which to access Redis
        prefix: Prefix of the Redis keys of these queues; a new random one by default,
            so two queues made without a prefix never share keys
        serialization_method: Method used to serialize task inputs and results
        keep_inputs: Whether to return task inputs with the result object
        proxystore_name: Name of a registered ProxyStore store for all topics, or a mapping
            of topic to store name (topics left out do not use ProxyStore)
        proxystore_threshold: Size in bytes above which objects travel by proxy, for all
            topics or per topic (``None`` disables ProxyStore for that topic)
        secret: Campaign secret that signs the messages (default: ``COLMENA_CAMPAIGN_SECRET``
            or the file named by ``COLMENA_CAMPAIGN_SECRET_FILE``; none: unsigned)
    """

    max_message_size: int | None = 512 * 1024 * 1024
    """Largest message Redis accepts by default (its ``proto-max-bulk-len``), in bytes."""

    connect_timeout: float = 5.0
    """Seconds to wait for a TCP connection to the server."""

    _LOCAL_STATE = (*ColmenaQueues._LOCAL_STATE, "_client", "_connect_lock", "_tick")

    def __init__(
        self,
        topics: Collection[str],
        hostname: str = "127.0.0.1",
        port: int = 6379,
        prefix: str | None = None,
        serialization_method: str | SerializationMethod = SerializationMethod.PICKLE,
        keep_inputs: bool = True,
        proxystore_name: str | dict[str, str] | None = None,
        proxystore_threshold: int | dict[str, int] | None = None,
        secret: str | bytes | None = None,
    ) -> None:
        super().__init__(
            topics, serialization_method, keep_inputs, proxystore_name, proxystore_threshold
        )
        if prefix is not None and (not isinstance(prefix, str) or not prefix):
            raise ValueError("prefix must be a non-empty string")
        self._use_secret(secret)
        self.hostname = hostname
        self.port = int(port)
        self.prefix: str = str(uuid4()) if prefix is None else prefix

    def _init_local_state(self) -> None:
        super()._init_local_state()
        self._connect_lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._tick = _DEFAULT_TICK

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(hostname={self.hostname!r}, port={self.port}, "
            f"prefix={self.prefix!r}, topics={sorted(self.topics)})"
        )

    # ------------------------------------------------------------- connection
    @property
    def is_connected(self) -> bool:
        """Whether this object holds a connection to the server."""
        return self._client is not None

    def connect(self) -> None:
        """Connect to the Redis server (does nothing when already connected).

        Raises:
            RedisConnectionError: the server cannot be reached, or is older than Redis 6.0
        """
        with self._connect_lock:
            if self._client is not None:
                return
            client = redis.Redis(
                host=self.hostname,
                port=self.port,
                decode_responses=False,
                socket_timeout=_SOCKET_TIMEOUT,
                socket_connect_timeout=self.connect_timeout,
                socket_keepalive=True,
                # No automatic retries: a repeated push could run a task twice, and errors
                # should reach the caller promptly.
                retry=Retry(NoBackoff(), 0),
            )
            try:
                self._tick = self._check_server(client)
            except BaseException:
                client.close()
                raise
            self._client = client
            logger.debug("Connected to Redis at %s:%d", self.hostname, self.port)

    def _check_server(self, client: redis.Redis) -> float:
        """Check that the server answers and is recent enough; return its timer resolution."""
        try:
            try:
                info: Mapping[str, Any] = client.info("server")
            except redis.exceptions.ResponseError:  # INFO may be disabled on managed servers
                client.ping()
                return _DEFAULT_TICK
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            self._unreachable(exc)
        version = _server_version(info)
        if version is not None and version < _MIN_VERSION:
            raise RedisConnectionError(
                f"Redis at {self.hostname}:{self.port} is version {info.get('redis_version')}; "
                "RedisQueues needs Redis 6.0 or newer"
            )
        return _server_tick(info)

    def disconnect(self) -> None:
        """Close the connections to the server.

        The queue connects again when next used. Calls blocked waiting on the queue in
        other threads fail with :class:`RedisConnectionError`.
        """
        with self._connect_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    @property
    def _redis(self) -> redis.Redis:
        """The client, connecting first if needed."""
        client = self._client
        if client is None:
            self.connect()
            client = self._client
            assert client is not None
        return client

    def _unreachable(self, exc: BaseException) -> NoReturn:
        raise RedisConnectionError(
            f"Cannot reach the Redis server at {self.hostname}:{self.port}: {exc}"
        ) from exc

    @property
    def reply_scope(self) -> str:
        """Results are addressed to the key prefix of these queues."""
        return self.prefix

    # ------------------------------------------------------------------- keys
    @property
    def _requests_key(self) -> str:
        return f"{self.prefix}_requests"

    def _result_key(self, topic: str) -> str:
        return f"{self.prefix}_result_{topic}"

    # ------------------------------------------------------------- primitives
    def _push(self, key: str, message: bytes) -> None:
        try:
            self._redis.rpush(key, message)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            self._unreachable(exc)

    def _pop(self, key: str, timeout: float | None) -> bytes:
        """Pop the oldest value of a list, waiting up to ``timeout`` seconds.

        Redis checks the timeouts of blocking pops only once per server tick (100 ms by
        default), so the wait is a blocking pop until the last tick before the deadline,
        then non-blocking pops a few milliseconds apart. ``timeout=0`` pops without
        waiting; ``None`` waits forever.
        """
        client = self._redis
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        try:
            while True:
                if deadline is None:
                    block = _MAX_BLOCK
                else:
                    block = min(deadline - time.monotonic() - self._tick, _MAX_BLOCK)
                if block >= 0.001:  # Redis reads a block under 1 ms as "wait forever"
                    reply = client.blpop([key], timeout=block)
                    if reply is not None:
                        return bytes(reply[1])
                    continue
                assert deadline is not None
                value = client.lpop(key)
                if value is not None:
                    return bytes(value)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutException(f"Nothing arrived in {key!r} within {timeout} s")
                time.sleep(min(_POLL_INTERVAL, remaining))
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            self._unreachable(exc)

    # -------------------------------------------------------------- transport
    def _send_request(
        self, message: bytes, method: str | None, topic: str, task_id: str = ""
    ) -> None:
        self._push(self._requests_key, message)

    def _get_request(self, timeout: float | None) -> Result:
        message = self._pop(self._requests_key, timeout)
        try:
            decode_kill(message, self.signer)
        except MessageDecodeError:
            return self.decode_request(message)  # junk raises: the base class drops it
        raise KillSignalException()

    def _send_result(self, message: bytes, result: Result) -> None:
        self._check_topic(result.topic)  # a result for an unknown topic would never be read
        self._push(self._result_key(result.topic), message)

    def _get_result(self, topic: str, timeout: float | None) -> Result:
        return self.decode_result(self._pop(self._result_key(topic), timeout))

    def _send_kill_signal(self) -> None:
        self._push(self._requests_key, self.kill_message())

    def flush(self) -> None:
        """Remove all existing requests and results of these queues from the server."""
        keys = [self._requests_key, *(self._result_key(topic) for topic in sorted(self.topics))]
        try:
            self._redis.delete(*keys)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            self._unreachable(exc)
