"""Result, its serialization and the wire format; resources and failure records."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest

from colmena_core.models import (
    FailureInformation,
    ResourceRequirements,
    Result,
    SerializationMethod,
    WorkerInformation,
)
from colmena_core.models.wire import MessageDecodeError, decode_result, encode_result, peek_header


def test_star_import_names_only_existing_classes() -> None:
    namespace: dict[str, object] = {}
    exec("from colmena_core.models import *", namespace)
    assert {"Result", "ResourceRequirements", "ExecutableTask", "SerializationMethod"} <= set(
        namespace
    )


@pytest.mark.parametrize("method", list(SerializationMethod))
def test_serialization_round_trip(method: SerializationMethod) -> None:
    result = Result(((1, "a"), {"b": [1.5, None]}), serialization_method=method, method="f")
    elapsed, proxies = result.serialize()
    assert elapsed >= 0 and proxies == []
    assert result.inputs_serialized
    with pytest.raises(ValueError, match="deserialize"):
        _ = result.args
    result.deserialize()
    assert result.args == (1, "a")
    assert result.kwargs == {"b": [1.5, None]}


def test_pickled_inputs_are_raw_bytes_not_text() -> None:
    payload = np.random.default_rng(0).random(128 * 1024)  # 1 MiB
    result = Result(((payload,), {}), serialization_method="pickle")
    result.serialize()
    assert isinstance(result.inputs, bytes)
    # No hex or base64: the message is the pickle plus a small header
    message = encode_result(result)
    assert len(message) < payload.nbytes * 1.01 + 2048
    assert result.message_sizes["inputs"] == len(result.inputs)


def test_json_values_stay_text_that_other_languages_can_read() -> None:
    result = Result((([1, 2],), {"x": "y"}), serialization_method="json")
    result.serialize()
    assert json.loads(result.inputs) == [[[1, 2]], {"x": "y"}]


def test_string_value_survives_json_serialization() -> None:
    # A value that is itself a string must not be mistaken for serialized data
    result = Result(((), {}), serialization_method="json")
    result.set_result("hello", runtime=0.1)
    result.serialize()
    decoded = decode_result(encode_result(result))
    decoded.deserialize()
    assert decoded.value == "hello"


def test_wire_round_trip_keeps_every_field() -> None:
    result = Result(
        ((1,), {"k": 2}),
        method="simulate",
        topic="sim",
        serialization_method="pickle",
        task_info={"batch": 3},
        resources=ResourceRequirements(node_count=2, cpu_processes=4),
        keep_inputs=False,
        max_retries=2,
    )
    result.serialize()
    decoded = decode_result(encode_result(result))
    for field in (
        "task_id",
        "method",
        "topic",
        "task_info",
        "resources",
        "keep_inputs",
        "max_retries",
    ):
        assert getattr(decoded, field) == getattr(result, field), field
    assert decoded.time_created == result.time_created
    decoded.deserialize()
    assert decoded.args == (1,) and decoded.kwargs == {"k": 2}
    assert decoded.value is None


def test_wire_carries_failures_and_worker_info() -> None:
    result = Result(((), {}), serialization_method="pickle")
    try:
        raise KeyError("missing")
    except KeyError as exc:
        result.set_failure(exc)
    result.worker_info = WorkerInformation(hostname="node-1", rank=3)
    decoded = decode_result(encode_result(result))
    assert decoded.success is False
    assert decoded.failure_info is not None
    assert "KeyError" in decoded.failure_info.exception
    assert decoded.failure_info.traceback and "raise KeyError" in decoded.failure_info.traceback
    assert decoded.worker_info is not None and decoded.worker_info.model_extra == {"rank": 3}


@pytest.mark.parametrize(
    "garbage",
    [b"", b"null", b"CLM1", b"\x00" * 40, b"CLM1" + b"\x00" * 20 + b"{}"],
)
def test_undecodable_messages_raise_a_clear_error(garbage: bytes) -> None:
    with pytest.raises(MessageDecodeError):
        decode_result(garbage)


def test_truncated_message_is_detected() -> None:
    result = Result(((b"x" * 1000,), {}), serialization_method="pickle")
    message = encode_result(result)
    with pytest.raises(MessageDecodeError, match="truncated"):
        decode_result(message[:-10])


def test_peek_header_reads_metadata_only() -> None:
    result = Result(((1,), {}), method="f", topic="t")
    header = peek_header(encode_result(result))
    assert header.method == "f" and header.topic == "t" and header.task_id == result.task_id


def test_set_result_drops_inputs_unless_kept() -> None:
    kept = Result(((1,), {}), keep_inputs=True)
    kept.set_result(2, runtime=0.5)
    assert kept.args == (1,) and kept.value == 2 and kept.success and kept.time_running == 0.5
    assert kept.time_compute_ended is not None

    dropped = Result(((1,), {}), keep_inputs=False)
    dropped.set_result(2)
    assert dropped.args == () and dropped.value == 2


def test_life_cycle_marks_are_ordered() -> None:
    result = Result(((), {}))
    for mark in (
        result.mark_input_received,
        result.mark_start_task_submission,
        result.mark_compute_started,
        result.mark_compute_ended,
        result.mark_task_received,
        result.mark_result_sent,
        result.mark_result_received,
    ):
        mark()
    times = [
        result.time_created,
        result.time_input_received,
        result.time_start_task_submission,
        result.time_compute_started,
        result.time_compute_ended,
        result.time_task_received,
        result.time_result_sent,
        result.time_result_received,
    ]
    assert all(t is not None for t in times)
    assert times == sorted(times)  # type: ignore[type-var]


def test_result_pickles_with_its_serialization_state() -> None:
    # Engines such as Parsl pickle the Result to ship it to a worker
    result = Result(((1,), {}), serialization_method="pickle")
    result.serialize()
    clone = pickle.loads(pickle.dumps(result))
    assert clone.inputs_serialized
    clone.deserialize()
    assert clone.args == (1,)


def test_json_of_a_plain_result() -> None:
    result = Result(((1,), {"a": 2}), method="f")
    assert json.loads(result.json())["inputs"] == [[1], {"a": 2}]
    result.serialize()
    with pytest.raises(ValueError, match="serialized"):
        result.json()


def test_resource_requirements_total_ranks() -> None:
    assert ResourceRequirements(node_count=2, cpu_processes=3).total_ranks == 6
    with pytest.raises(ValueError):
        ResourceRequirements(node_count=0)


def test_failure_information_from_exception() -> None:
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError as exc:
        info = FailureInformation.from_exception(exc)
    assert "ZeroDivisionError" in info.exception
    assert info.traceback is not None and "1 / 0" in info.traceback


def test_serialization_method_static_helpers() -> None:
    assert SerializationMethod.deserialize("json", SerializationMethod.serialize("json", [1])) == [
        1
    ]
    blob = SerializationMethod.serialize(SerializationMethod.PICKLE, {"a": 1})
    assert isinstance(blob, bytes)
    assert SerializationMethod.deserialize("pickle", blob) == {"a": 1}
    with pytest.raises(TypeError):
        SerializationMethod.deserialize("pickle", "text")


# ------------------------------------------------------------- Colmena 0.7 spellings
def test_timestamp_and_time_views_read_and_write_the_flat_fields() -> None:
    result = Result.from_args_and_kwargs([1, 2], {"scale": 3}, method="f")
    assert result.args == (1, 2) and result.kwargs == {"scale": 3} and result.method == "f"
    assert result.timestamp.created == result.time_created is not None

    result.mark_compute_started()
    assert result.timestamp.compute_started == result.time_compute_started is not None
    result.time.running = 2.5  # a 0.7 app writing through the view ...
    result.timestamp.result_sent = 100.0
    assert result.time_running == 2.5 and result.time_result_sent == 100.0  # ... a seed app reads
    result.time_deserialize_results = 0.25  # and the other way round
    assert result.time.deserialize_results == 0.25
    result.time.additional["exec_execution"] = 1.0
    assert result.additional_timing == {"exec_execution": 1.0}
    assert result.time.proxy is result.proxy_timing

    result.time = {"serialize_inputs": 0.5}  # assigning a group sets the values it names
    assert result.time_serialize_inputs == 0.5 and result.time_running == 2.5

    # As in 0.7, a time not recorded reads as NaN through the views (None in the flat field)
    assert result.time_result_received is None and math.isnan(result.timestamp.result_received)
    assert math.isnan(result.time.model_dump()["serialize_results"])
    result.time.running = math.nan  # writing NaN leaves it unrecorded
    assert result.time_running is None
    with pytest.raises(AttributeError, match="running"):
        result.time.runing = 1.0  # a typo is an error, not a silently lost value
    with pytest.raises(AttributeError):
        _ = result.timestamp.finished


def test_the_wire_carries_the_flat_times_only_and_both_views_survive_it() -> None:
    result = Result(((1,), {}), timestamp={"compute_started": 10.0}, time={"running": 1.5})
    assert result.time_compute_started == 10.0 and result.time_running == 1.5
    header = json.loads(result.model_dump_json(exclude={"inputs", "value"}))
    assert "time" not in header and "timestamp" not in header
    assert header["time_running"] == 1.5

    copy = decode_result(encode_result(result))
    assert copy.time.running == 1.5 and copy.timestamp.compute_started == 10.0
    assert pickle.loads(pickle.dumps(result)).time.running == 1.5
    assert copy.time == result.time and copy.timestamp.model_dump()["compute_started"] == 10.0


def test_complete_is_false_only_for_intermediate_results() -> None:
    result = Result(((), {}), keep_inputs=False)
    assert result.complete is None  # a request
    result.set_result(1, intermediate=True)
    assert result.complete is False and result.success is True
    assert decode_result(encode_result(result)).complete is False
    result.set_result(2)
    assert result.complete is True
    failed = Result(((), {}))
    failed.set_failure(ValueError("x"))
    assert failed.complete is True and failed.success is False
