"""Hostile input on a campaign's exchanges, on the real broker: nothing wedges or runs code.

Someone who can publish on the broker sends fuzzed wire headers (unsigned, signed with
another secret, or with the campaign's: every field at and over its limit), arbitrary bytes
on every exchange, and results signed for another client. After each, ordinary work must
still complete through the same thinker, task server and monitor. Examples are bounded
(hypothesis, no database) to keep this quick. Forged kill signals and spoofed heartbeats
are in ``test_rabbitmq_hostile.py``.
"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from colmena_core.models import Result
from colmena_core.models.wire import MAGIC, encode_result, sign
from colmena_core.names import METHOD_MAX_LENGTH, NAME_MAX_LENGTH
from colmena_core.queue.monitor import CampaignMonitor
from colmena_core.queue.rabbitmq import CampaignNames, RabbitMQQueues
from colmena_core.security import MessageSigner
from colmena_core.task_server.local import LocalTaskServer
from colmena_core.testing.brokers import ThrowawayCampaign

WAIT = 30.0
SECRET = "the secret of the hostile-input campaign"
STRANGER = MessageSigner("a secret that is not the campaign's")
FUZZ = settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def add(a: int, b: int) -> int:
    return a + b


class RunsCode:
    """Unpickling this creates a file: proof that a payload ran code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


@dataclass
class Campaign:
    names: CampaignNames
    thinker: RabbitMQQueues
    server: LocalTaskServer
    monitor: CampaignMonitor
    channel: Any

    def publish(self, exchange: str, routing_key: str, body: bytes, **properties: Any) -> None:
        """Publish as an outsider would, confirmed by the broker."""
        self.channel.basic_publish(
            exchange, routing_key, body, pika.BasicProperties(**properties), mandatory=False
        )

    def round_trip(self) -> None:
        """Ordinary work through the same processes."""
        task_id = self.thinker.send_inputs(2, 3, method="add")
        result = self.thinker.get_result(timeout=WAIT)
        assert result is not None and result.task_id == task_id and result.value == 5


@pytest.fixture(scope="module")
def campaign(rabbitmq_url: str) -> Iterator[Campaign]:
    with ThrowawayCampaign(rabbitmq_url, "hostile") as throwaway:
        thinker = throwaway.queues(methods=["add"], client_id="thinker", secret=SECRET)
        thinker.set_role("client")
        server_queues = throwaway.queues(methods=["add"], secret=SECRET)
        server = LocalTaskServer([add], server_queues, num_workers=1, pool="thread")
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        assert server.ready.wait(WAIT)
        monitor = CampaignMonitor(rabbitmq_url, throwaway.name, secret=SECRET).start()
        assert monitor.wait_connected(WAIT)
        connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
        channel = connection.channel()
        channel.confirm_delivery()
        try:
            yield Campaign(thinker.names, thinker, server, monitor, channel)
            thinker.send_kill_signal()  # the genuine kill signal still works, at the end
            thread.join(WAIT)
            assert not thread.is_alive()
        finally:
            connection.close()
            monitor.stop()
            server.request_stop()
            thread.join(WAIT)


# ------------------------------------------------------------------ headers
_HEADER_FIELDS = sorted(Result.model_fields.keys() - {"inputs", "value"})
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=300),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=8,
)
_OVER_LIMITS = {
    "task_id": "t" * (NAME_MAX_LENGTH + 1),
    "method": "m" * (METHOD_MAX_LENGTH + 1),
    "topic": "default.#",
    "max_retries": 10**9,
    "reply_tag": "r" * 300,
}


def _framed(header: dict[str, Any], payload: bytes = b"") -> bytes:
    data = json.dumps(header, allow_nan=True).encode()
    return struct.pack("!4sIQQ", MAGIC, len(data), len(payload), 2**64 - 1) + data + payload


@FUZZ
@given(
    changes=st.dictionaries(st.sampled_from(_HEADER_FIELDS), _JSON, max_size=4),
    over=st.sampled_from(sorted(_OVER_LIMITS)),
    signer=st.sampled_from([None, STRANGER, MessageSigner(SECRET)]),
    routing_key=st.sampled_from(["add", "no_such_method", ""]),
)
def test_fuzzed_wire_headers_on_requests(
    campaign: Campaign,
    changes: dict[str, Any],
    over: str,
    signer: MessageSigner | None,
    routing_key: str,
) -> None:
    header = json.loads(Result(((1, 2), {}), method="add").model_dump_json(exclude={"inputs"}))
    header |= changes
    header[over] = _OVER_LIMITS[over]  # every example breaks at least one limit
    body = _framed(header, b"[[1, 2], {}]")
    if signer is not None:
        body = sign(b"M", (body,), signer)
    campaign.publish(campaign.names.requests_exchange, routing_key, body, reply_to="thinker")
    campaign.round_trip()


# ------------------------------------------------------------ any exchange
@FUZZ
@given(
    exchange=st.sampled_from(["requests", "unrouted", "control", "heartbeats", "results"]),
    body=st.binary(max_size=512)
    | st.builds(lambda tail: MAGIC + tail, st.binary(max_size=64))
    | st.builds(lambda tail: b"CLS1" + tail, st.binary(max_size=64)),
    routing_key=st.text(alphabet="abcdefghijklmnopqrstuvwxyz.#*-_", max_size=40),
)
def test_any_bytes_on_every_exchange(
    campaign: Campaign, exchange: str, body: bytes, routing_key: str
) -> None:
    names = campaign.names
    target = {
        "requests": names.requests_exchange,
        "unrouted": names.unrouted_exchange,
        "control": names.control_exchange,
        "heartbeats": names.heartbeats_exchange,
        "results": names.results_exchange,
    }[exchange]
    if exchange == "results":
        routing_key = "thinker.default"  # straight into the thinker's queue
    campaign.publish(target, routing_key, body, reply_to="thinker", type=routing_key[:50])
    campaign.round_trip()
    assert campaign.monitor.connected


def test_fields_at_and_over_their_limits(campaign: Campaign) -> None:
    at_limit = "m" * METHOD_MAX_LENGTH  # no task server serves it: a failure result
    task_id = campaign.thinker.send_inputs(1, method=at_limit)
    result = campaign.thinker.get_result(timeout=WAIT)
    assert result is not None and result.task_id == task_id and result.success is False
    for over in ({"method": at_limit + "m"}, {"method": ""}, {"max_retries": 101}):
        with pytest.raises(ValueError):
            campaign.thinker.send_inputs(1, **over)  # type: ignore[arg-type]
    campaign.round_trip()


# ------------------------------------------------------------------ forgery
def test_a_signed_result_for_another_client_is_dropped_unopened(
    campaign: Campaign, tmp_path: Path
) -> None:
    # Signed with the campaign secret, but its reply tag names another client: a result
    # moved from that client's queue, or made up by a holder of the secret
    marker = tmp_path / "ran"
    forged = Result(((), {}), method="add", serialization_method="pickle")
    forged.set_result(RunsCode(marker))
    key = campaign.names.result_routing_key("thinker", "default")
    signer = MessageSigner(SECRET)
    for client in ("another-client", None):
        forged.reply_tag = None if client is None else signer.reply_tag(client, forged.task_id)
        campaign.publish(campaign.names.results_exchange, key, encode_result(forged, signer))
    campaign.round_trip()
    assert not marker.exists()


def test_the_longest_names_work_on_the_broker(rabbitmq_url: str) -> None:
    # Campaign, client ID and topic at 64 characters and a method at 128 build the longest
    # queue names and routing keys there are: they stay within AMQP's 255 bytes
    def longest(a: int, b: int) -> int:
        return a + b

    longest.__name__ = "m" * METHOD_MAX_LENGTH
    with ThrowawayCampaign(rabbitmq_url, "h" * (NAME_MAX_LENGTH - 11)) as throwaway:
        assert len(throwaway.name) == NAME_MAX_LENGTH
        topic, client_id = "t" * NAME_MAX_LENGTH, "c" * NAME_MAX_LENGTH
        thinker = throwaway.queues([topic], client_id=client_id, methods=[longest.__name__])
        thinker.set_role("client")
        server = LocalTaskServer(
            [longest], throwaway.queues(methods=[longest.__name__]), num_workers=1, pool="thread"
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            assert server.ready.wait(WAIT)
            task_id = thinker.send_inputs(2, 3, method=longest.__name__, topic=topic)
            result = thinker.get_result(topic, timeout=WAIT)
            assert result is not None and result.task_id == task_id and result.value == 5
        finally:
            server.request_stop()
            thread.join(WAIT)
