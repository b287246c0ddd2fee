"""Raw pika request/reply between two processes: the floor under Colmena's RabbitMQ queues.

A client publishes requests to one queue and consumes replies from another; an echo server
in another process consumes the requests and publishes each body back to the queue named
in ``reply_to``. Both sides are callback-driven (``SelectConnection``), so publishing never
waits for a confirm and many requests can be in flight.

With ``confirm=True`` the baseline gives what Colmena guarantees: durable quorum queues,
persistent messages, publisher confirms on both sides, manual acknowledgements, and the
server acknowledges a request only once the broker confirmed its reply. With
``confirm=False`` the same runs without publisher confirms (the server acknowledges a
request as soon as it published the reply).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from typing import Any

import pika


@dataclass(frozen=True)
class RawSetup:
    """Where a raw request/reply pair talks, and how."""

    url: str
    confirm: bool
    prefetch: int
    body: bytes
    queue_type: str = "quorum"
    """``quorum`` (as Colmena's queues) or ``classic``"""
    prefix: str = field(default_factory=lambda: f"colmena-bench-raw-{uuid.uuid4().hex[:10]}")

    @property
    def request_queue(self) -> str:
        return f"{self.prefix}.requests"

    @property
    def reply_queue(self) -> str:
        return f"{self.prefix}.replies"


CpuProbe = Callable[[], tuple[float, float, float]]
"""CPU seconds used so far by the client, by the server, and by every process of the run."""


@dataclass
class RawFigures:
    """What one client run measured."""

    round_trips_ms: list[float] = field(default_factory=list)
    throughput: float = float("nan")
    cpu_ms: tuple[float, float] = (float("nan"), float("nan"))
    """CPU milliseconds per task of the client and the server in the pipelined run"""
    run_cpu_ms: float = float("nan")
    """CPU milliseconds per task of every process of the run (broker included), pipelined"""


def _parameters(url: str, timeout: float = 10.0) -> pika.URLParameters:
    parameters = pika.URLParameters(url)
    parameters.socket_timeout = timeout
    parameters.stack_timeout = timeout
    parameters.connection_attempts = 1
    return parameters


def declare(setup: RawSetup) -> None:
    """Declare the two durable queues of a pair (of type ``setup.queue_type``)."""
    connection = pika.BlockingConnection(_parameters(setup.url))
    try:
        channel = connection.channel()
        for queue in (setup.request_queue, setup.reply_queue):
            channel.queue_declare(queue, durable=True, arguments={"x-queue-type": setup.queue_type})
    finally:
        connection.close()


def delete(setup: RawSetup) -> None:
    """Delete the queues of a pair, with any message left in them."""
    connection = pika.BlockingConnection(_parameters(setup.url))
    try:
        channel = connection.channel()
        for queue in (setup.request_queue, setup.reply_queue):
            channel.queue_delete(queue)
    finally:
        with contextlib.suppress(Exception):
            connection.close()


class _Peer:
    """A callback-driven connection with one channel, run until ``stop`` or a deadline."""

    def __init__(self, setup: RawSetup, timeout: float) -> None:
        self.setup = setup
        self.timeout = timeout
        self.channel: Any = None
        self.error: str | None = None
        self.connection = pika.SelectConnection(
            _parameters(setup.url),
            on_open_callback=self._opened,
            on_open_error_callback=self._failed,
            on_close_callback=self._closed,
        )

    def run(self) -> None:
        self.connection.ioloop.call_later(self.timeout, self._expired)
        self.connection.ioloop.start()
        if self.error:
            raise RuntimeError(self.error)

    def stop(self) -> None:
        if self.connection.is_open:
            self.connection.close()
        elif not self.connection.is_closing:
            self.connection.ioloop.stop()

    def fail(self, error: str) -> None:
        self.error = self.error or error
        self.stop()

    def _expired(self) -> None:
        self.fail(f"{type(self).__name__} did not finish within {self.timeout} s")

    def _failed(self, connection: Any, error: BaseException) -> None:
        self.error = f"Could not connect: {error!r}"
        connection.ioloop.stop()

    def _closed(self, connection: Any, reason: BaseException) -> None:
        connection.ioloop.stop()

    def _opened(self, connection: Any) -> None:
        connection.channel(on_open_callback=self._channel_opened)

    def _channel_opened(self, channel: Any) -> None:
        self.channel = channel
        channel.add_on_close_callback(self._channel_closed)
        if self.setup.confirm:
            channel.confirm_delivery(ack_nack_callback=self._confirmed, callback=self._ready)
        else:
            self._ready(None)

    def _channel_closed(self, channel: Any, reason: BaseException) -> None:
        if not self.connection.is_closing and not self.connection.is_closed:
            self.fail(f"The broker closed the channel: {reason!r}")

    def _ready(self, _: Any) -> None:
        raise NotImplementedError

    def _confirmed(self, frame: Any) -> None:
        raise NotImplementedError


class _EchoServer(_Peer):
    """Echo every request to its ``reply_to`` queue; acknowledge once the reply is confirmed."""

    def __init__(self, setup: RawSetup, ready: Event, timeout: float) -> None:
        super().__init__(setup, timeout)
        self.ready = ready
        self.sequence = 0
        self.unconfirmed: dict[int, int] = {}  # publish sequence -> delivery tag of the request

    def _ready(self, _: Any) -> None:
        def consuming(_: Any) -> None:
            self.ready.set()

        def qos_set(_: Any) -> None:
            self.channel.basic_consume(
                self.setup.request_queue, self._on_request, callback=consuming
            )

        self.channel.basic_qos(prefetch_count=self.setup.prefetch, callback=qos_set)

    def _on_request(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        if properties.type == "stop":
            channel.basic_ack(method.delivery_tag)
            self.stop()
            return
        channel.basic_publish(
            "",
            properties.reply_to,
            body,
            pika.BasicProperties(delivery_mode=2, correlation_id=properties.correlation_id),
        )
        if self.setup.confirm:
            self.sequence += 1
            self.unconfirmed[self.sequence] = method.delivery_tag
        else:
            channel.basic_ack(method.delivery_tag)

    def _confirmed(self, frame: Any) -> None:
        method = frame.method
        if not isinstance(method, pika.spec.Basic.Ack):
            self.fail("The broker refused a reply")
            return
        tag = method.delivery_tag
        numbers = [n for n in self.unconfirmed if n <= tag] if method.multiple else [tag]
        for number in numbers:
            request = self.unconfirmed.pop(number, None)
            if request is not None:
                self.channel.basic_ack(request)


def serve(setup: RawSetup, ready: Event, timeout: float) -> None:
    """Run an echo server until a ``stop`` request or ``timeout`` seconds (process target)."""
    _EchoServer(setup, ready, timeout).run()


class _Client(_Peer):
    """Round trips one at a time, then a pipelined run with ``in_flight`` requests."""

    def __init__(
        self,
        setup: RawSetup,
        warmup: int,
        round_trips: int,
        tasks: int,
        in_flight: int,
        timeout: float,
        cpu_probe: CpuProbe | None,
    ) -> None:
        super().__init__(setup, timeout)
        self.figures = RawFigures()
        self.tasks = tasks
        self.cpu_probe = cpu_probe
        self.cpu_started = (0.0, 0.0, 0.0)
        # (requests, in flight, record round trips, when done)
        self.phases: list[tuple[int, int, bool, Callable[[], None]]] = [
            (warmup, 1, False, lambda: None),
            (round_trips, 1, True, lambda: None),
            (tasks, in_flight, False, self._throughput_done),
        ]
        self.sent_at: dict[str, float] = {}
        self.remaining_to_send = 0
        self.remaining_to_receive = 0
        self.phase_done: Callable[[], None] = lambda: None
        self.phase_started = 0.0
        self.record = False

    def _ready(self, _: Any) -> None:
        def qos_set(_: Any) -> None:
            self.channel.basic_consume(
                self.setup.reply_queue, self._on_reply, callback=lambda _: self._next_phase()
            )

        self.channel.basic_qos(prefetch_count=self.setup.prefetch, callback=qos_set)

    def _confirmed(self, frame: Any) -> None:
        if not isinstance(frame.method, pika.spec.Basic.Ack):
            self.fail("The broker refused a request")

    def _next_phase(self) -> None:
        if not self.phases:
            self.channel.basic_publish(
                "", self.setup.request_queue, b"", pika.BasicProperties(type="stop")
            )
            self.stop()
            return
        count, in_flight, self.record, self.phase_done = self.phases.pop(0)
        self.remaining_to_send = self.remaining_to_receive = count
        if self.cpu_probe is not None:
            self.cpu_started = self.cpu_probe()
        self.phase_started = time.perf_counter()
        for _ in range(min(in_flight, count)):
            self._publish()
        if count == 0:
            self._next_phase()

    def _publish(self) -> None:
        self.remaining_to_send -= 1
        correlation = uuid.uuid4().hex
        self.sent_at[correlation] = time.perf_counter()
        self.channel.basic_publish(
            "",
            self.setup.request_queue,
            self.setup.body,
            pika.BasicProperties(
                delivery_mode=2, reply_to=self.setup.reply_queue, correlation_id=correlation
            ),
        )

    def _on_reply(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        sent = self.sent_at.pop(properties.correlation_id, None)
        channel.basic_ack(method.delivery_tag)
        if sent is None:
            return
        if self.record:
            self.figures.round_trips_ms.append((time.perf_counter() - sent) * 1000)
        self.remaining_to_receive -= 1
        if self.remaining_to_send > 0:
            self._publish()
        elif self.remaining_to_receive == 0:
            self.phase_done()
            self._next_phase()

    def _throughput_done(self) -> None:
        self.figures.throughput = self.tasks / (time.perf_counter() - self.phase_started)
        if self.cpu_probe is not None and self.tasks:
            client, server, machine = self.cpu_probe()
            self.figures.cpu_ms = (
                1000 * (client - self.cpu_started[0]) / self.tasks,
                1000 * (server - self.cpu_started[1]) / self.tasks,
            )
            self.figures.run_cpu_ms = 1000 * (machine - self.cpu_started[2]) / self.tasks


def measure(
    setup: RawSetup,
    warmup: int,
    round_trips: int,
    tasks: int,
    in_flight: int,
    timeout: float,
    cpu_probe: CpuProbe | None = None,
) -> RawFigures:
    """Run the client side against a server started with :func:`serve` (in this process).

    ``cpu_probe``, if given, is read when the pipelined run starts and ends.
    """
    client = _Client(setup, warmup, round_trips, tasks, in_flight, timeout, cpu_probe)
    client.run()
    return client.figures
