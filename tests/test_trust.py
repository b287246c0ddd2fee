"""Trust at the edges: names within the broker's limits, signed messages, bounded retries.

What a user relies on: a name the broker cannot carry is refused where it enters (settings,
``send_inputs``, a message's header) with an error naming the field and the limit; with a
campaign secret, a message that is unsigned, badly signed or addressed to the wrong client
is dropped before anything in it is unpickled, and ordinary work goes on.
"""

from __future__ import annotations

import json
import pickle
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from colmena_core.exceptions import (
    KillSignalException,
    MessageAuthenticationError,
    MessageDecodeError,
    TimeoutException,
)
from colmena_core.models import Result
from colmena_core.models.heartbeat import (
    MAX_HEARTBEAT_BYTES,
    MAX_HEARTBEAT_TTL,
    Heartbeat,
    decode_heartbeat,
    encode_heartbeat,
)
from colmena_core.models.results import MAX_RETRIES
from colmena_core.models.wire import (
    MAGIC,
    decode_kill,
    decode_result,
    encode_kill,
    encode_result,
    peek_header,
)
from colmena_core.names import METHOD_PATTERN, NAME_MAX_LENGTH, NAME_PATTERN, check_name
from colmena_core.queue.python import PipeQueues
from colmena_core.queue.redis import RedisQueues
from colmena_core.security import (
    SECRET_FILE_VARIABLE,
    SECRET_VARIABLE,
    MessageSigner,
    load_secret,
    new_secret,
)
from colmena_services.gateway.settings import GatewaySettings
from colmena_services.taskserver.settings import TaskServerSettings
from colmena_services.thinker.settings import ThinkerSettings

WAIT = 30.0
SECRET = "a campaign secret for the tests"
ROOT = Path(__file__).resolve().parents[1]


class RunsCode:
    """Unpickling this creates a file: proof that a payload ran code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


# ------------------------------------------------------------------- names
def test_name_rule_names_the_field_and_the_limit() -> None:
    assert check_name("run-1_a", "campaign") == "run-1_a"
    for bad in ["", "a.b", "-a", "a b", "é", "x" * (NAME_MAX_LENGTH + 1), 12]:
        with pytest.raises(ValueError, match=rf"campaign must be 1-{NAME_MAX_LENGTH}"):
            check_name(bad, "campaign")


def test_a_campaign_with_a_dot_is_refused_by_the_settings() -> None:
    # It used to pass the settings and then crash the task server on the broker's names
    with pytest.raises(ValidationError, match=r"campaign(.|\n)*1-64 letters"):
        TaskServerSettings(methods="pkg:METHODS", campaign="my.campaign")
    with pytest.raises(ValidationError, match="campaign"):
        ThinkerSettings(thinker_factory="pkg:make", campaign="x" * 65)
    with pytest.raises(ValidationError, match="client ID"):
        ThinkerSettings(thinker_factory="pkg:make", client_id="a.b")
    with pytest.raises(ValidationError, match="each topic"):
        ThinkerSettings(thinker_factory="pkg:make", topics="ok,not.ok")
    with pytest.raises(ValidationError, match="each topic"):
        GatewaySettings(env="development", topics="default,a b")
    assert TaskServerSettings(methods="pkg:METHODS", campaign="my-campaign").campaign


def test_the_helm_schema_uses_the_same_name_rule() -> None:
    schema = json.loads((ROOT / "deploy/helm/colmena/values.schema.json").read_text())
    assert schema["properties"]["campaign"]["pattern"] == NAME_PATTERN
    thinker = schema["properties"]["thinker"]["properties"]
    assert thinker["clientId"]["pattern"] == NAME_PATTERN
    tokens = schema["properties"]["gateway"]["properties"]["auth"]["properties"]["tokens"]
    assert tokens["items"]["properties"]["clientId"]["pattern"] == NAME_PATTERN


def test_send_inputs_refuses_names_over_the_limits() -> None:
    queues = PipeQueues(topics=["ok"])
    with pytest.raises(ValueError, match="method must be 1-128"):
        queues.send_inputs(1, method="m" * 300)
    with pytest.raises(ValueError, match="method must be 1-128"):
        queues.send_inputs(1, method="")
    with pytest.raises(ValueError, match="topic must be 1-64"):
        PipeQueues(topics=["a.b"])
    assert re.match(METHOD_PATTERN, "package.module_function")
    assert queues.active_count == 0  # nothing half-sent


def _framed(header: dict[str, Any]) -> bytes:
    """A message with this header and empty payloads, framed as the wire format says."""
    data = json.dumps(header).encode()
    return struct.pack("!4sIQQ", MAGIC, len(data), 0, 2**64 - 1) + data


def test_a_header_over_the_limits_is_a_decode_error() -> None:
    header = json.loads(Result(((1,), {}), method="add").model_dump_json(exclude={"inputs"}))
    assert peek_header(_framed(header)).method == "add"
    for field, value in [("task_id", "t" * 300), ("method", ""), ("topic", "a.b")]:
        with pytest.raises(MessageDecodeError, match=field):
            peek_header(_framed({**header, field: value}))


def test_max_retries_has_a_ceiling() -> None:
    queues = PipeQueues()
    with pytest.raises(ValueError, match=f"between 0 and {MAX_RETRIES}"):
        queues.send_inputs(1, method="f", max_retries=10**9)
    with pytest.raises(ValidationError, match="max_retries"):
        Result(((), {}), max_retries=MAX_RETRIES + 1)
    with pytest.raises(ValidationError, match="max_retries"):
        TaskServerSettings(methods="pkg:METHODS", max_retries=MAX_RETRIES + 1)
    assert Result(((), {}), max_retries=MAX_RETRIES).max_retries == MAX_RETRIES


# ----------------------------------------------------------------- secrets
def test_secret_from_argument_environment_or_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_VARIABLE, raising=False)
    monkeypatch.delenv(SECRET_FILE_VARIABLE, raising=False)
    assert load_secret() is None
    assert load_secret(SECRET) == SECRET.encode()
    with pytest.raises(ValueError, match="at least 16"):
        load_secret("short")
    monkeypatch.setenv(SECRET_VARIABLE, SECRET)
    assert load_secret() == SECRET.encode()
    monkeypatch.delenv(SECRET_VARIABLE)
    secret_file = tmp_path / "secret"
    secret_file.write_text(new_secret() + "\n")
    monkeypatch.setenv(SECRET_FILE_VARIABLE, str(secret_file))
    assert load_secret() == secret_file.read_text().strip().encode()
    monkeypatch.setenv(SECRET_FILE_VARIABLE, str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="cannot be read"):
        load_secret()


def test_signed_messages_are_checked_before_decoding() -> None:
    signer = MessageSigner(SECRET)
    result = Result(((1, 2), {}), method="add")
    message = encode_result(result, signer)
    assert decode_result(message, signer).task_id == result.task_id
    assert peek_header(message).task_id == result.task_id  # for display, unchecked
    with pytest.raises(MessageAuthenticationError, match="not signed"):
        decode_result(encode_result(result), signer)
    with pytest.raises(MessageAuthenticationError, match="no campaign secret"):
        decode_result(message)
    with pytest.raises(MessageAuthenticationError, match="does not match"):
        decode_result(message, MessageSigner("another secret of a campaign"))
    tampered = bytearray(message)
    tampered[-3] ^= 1
    with pytest.raises(MessageAuthenticationError, match="does not match"):
        decode_result(bytes(tampered), signer)
    with pytest.raises(MessageAuthenticationError, match="kind"):
        decode_kill(message, signer)  # a signed task is not a kill signal
    decode_kill(encode_kill(signer), signer)
    with pytest.raises(MessageAuthenticationError):
        decode_kill(encode_kill(), signer)
    assert pickle.loads(pickle.dumps(signer)) == signer
    assert SECRET not in repr(signer)


# -------------------------------------------------------------- heartbeats
def test_heartbeats_are_validated() -> None:
    signer = MessageSigner(SECRET)
    good = Heartbeat(server_id="s1", ttl=15, methods=["add"], capacity=4, engine="parsl")
    decoded = decode_heartbeat(encode_heartbeat(good, signer), signer)
    assert decoded.server_id == "s1" and decoded.details == {"engine": "parsl"}
    plain = json.loads(encode_heartbeat(good))
    spoofed: list[bytes | str] = [
        json.dumps({**plain, "ttl": 1e308}),
        json.dumps({**plain, "ttl": MAX_HEARTBEAT_TTL + 1}),
        json.dumps({**plain, "ttl": 0}),
        '{"server_id": "s1", "ttl": 10, "capacity": Infinity}',
        '{"server_id": "s1", "ttl": NaN}',
        json.dumps({**plain, "methods": ["x" * 300]}),
        json.dumps({**plain, "in_flight": -1}),
        json.dumps({"ttl": 10}),
        "[" * 60_000,
        b"\xff\xfe",
        b"",
    ]
    for body in spoofed:
        message = body.encode() if isinstance(body, str) else body
        with pytest.raises(MessageDecodeError):
            decode_heartbeat(message)
    with pytest.raises(MessageAuthenticationError):
        decode_heartbeat(encode_heartbeat(good), signer)  # unsigned
    with pytest.raises(MessageDecodeError, match="over the limit"):
        decode_heartbeat(b" " * (MAX_HEARTBEAT_BYTES + 1))


# ------------------------------------------------------------------- Redis
@pytest.fixture
def redis_pair(
    redis_server: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[RedisQueues, RedisQueues, redis.Redis]]:
    """A thinker's and a task server's queues sharing a secret, and a plain client."""
    monkeypatch.delenv(SECRET_VARIABLE, raising=False)
    host, port = redis_server
    thinker = RedisQueues(["work"], hostname=host, port=port, secret=SECRET)
    server = RedisQueues(["work"], hostname=host, port=port, prefix=thinker.prefix, secret=SECRET)
    plain = redis.Redis(host=host, port=port)
    yield thinker, server, plain
    thinker.flush()
    for queues in (thinker, server):
        queues.disconnect()
    plain.close()


def _serve(server: RedisQueues) -> None:
    _, task = server.get_task(timeout=WAIT)
    task.deserialize()
    task.set_result(sum(task.args))
    server.send_result(task)


def test_redis_forged_requests_and_kill_signals_are_dropped(
    redis_pair: tuple[RedisQueues, RedisQueues, redis.Redis], tmp_path: Path
) -> None:
    thinker, server, plain = redis_pair
    marker = tmp_path / "ran"
    forged = Result(((RunsCode(marker),), {}), method="add", serialization_method="pickle")
    requests = f"{thinker.prefix}_requests"
    plain.rpush(requests, encode_result(forged))  # unsigned
    plain.rpush(requests, encode_result(forged, MessageSigner("not the campaign secret")))
    plain.rpush(requests, encode_kill())  # an unsigned kill signal
    plain.rpush(requests, b"")  # the old kill signal
    task_id = thinker.send_inputs(1, 2, method="add", topic="work")
    _serve(server)  # takes the genuine request behind the forged ones
    result = thinker.get_result("work", timeout=WAIT)
    assert result is not None and result.task_id == task_id and result.value == 3
    assert not marker.exists()
    thinker.send_kill_signal()
    with pytest.raises(KillSignalException):
        server.get_task(timeout=WAIT)


def test_redis_results_for_tasks_not_sent_here_are_dropped_unopened(
    redis_pair: tuple[RedisQueues, RedisQueues, redis.Redis], tmp_path: Path
) -> None:
    thinker, server, plain = redis_pair
    marker = tmp_path / "ran"
    results = f"{thinker.prefix}_result_work"
    forged = Result(((), {}), method="add", topic="work", serialization_method="pickle")
    forged.set_result(RunsCode(marker))
    plain.rpush(results, encode_result(forged))  # unsigned
    forged.reply_tag = "0" * 32
    plain.rpush(results, encode_result(forged, server.signer))  # signed, but not asked for
    other = RedisQueues(["work"], hostname=thinker.hostname, port=thinker.port, secret=SECRET)
    forged.reply_tag = server.signer.reply_tag(other.prefix, forged.task_id)  # another client's
    plain.rpush(results, encode_result(forged, server.signer))
    with pytest.raises(TimeoutException):
        thinker.get_result("work", timeout=0.5)
    assert not marker.exists()
    task_id = thinker.send_inputs(1, 2, method="add", topic="work")
    _serve(server)
    result = thinker.get_result("work", timeout=WAIT)
    assert result is not None and result.task_id == task_id and result.value == 3


def test_redis_queues_with_different_secrets_do_not_talk(
    redis_server: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_VARIABLE, raising=False)
    host, port = redis_server
    thinker = RedisQueues(hostname=host, port=port, topics=[], secret=SECRET)
    stranger = RedisQueues(hostname=host, port=port, topics=[], prefix=thinker.prefix)
    try:
        thinker.send_inputs(1, method="add")
        with pytest.raises(TimeoutException):
            stranger.get_task(timeout=0.5)  # dropped: it holds no secret
    finally:
        thinker.flush()
        thinker.disconnect()
        stranger.disconnect()


def test_a_restarted_client_accepts_the_results_of_its_tasks(
    redis_pair: tuple[RedisQueues, RedisQueues, redis.Redis],
) -> None:
    # The reply tag needs no memory of what was sent: a new client object with the same
    # address (a thinker restarted with the same client ID) takes the results
    thinker, server, _ = redis_pair
    task_id = thinker.send_inputs(1, 2, method="add", topic="work")
    thinker.disconnect()
    _serve(server)
    restarted = RedisQueues(
        ["work"], hostname=thinker.hostname, port=thinker.port, prefix=thinker.prefix, secret=SECRET
    )
    try:
        result = restarted.get_result("work", timeout=WAIT)
        assert result is not None and result.task_id == task_id and result.value == 3
    finally:
        restarted.disconnect()
