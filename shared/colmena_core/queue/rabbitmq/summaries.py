"""What a monitor can show of a result without trusting it: a summary that never unpickles.

:func:`summarize_result` decodes the header of a result and its JSON payloads; pickled
values are reported as not displayable. This module must not unpickle anything.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from colmena_core.models import SerializationMethod
from colmena_core.models.wire import SIGNED_MAGIC, decode_result, is_signed
from colmena_core.queue.rabbitmq.names import unescape_word
from colmena_core.security import TAG_BYTES, MessageSigner

__all__ = ["TIMING_FIELDS", "ResultSummary", "client_of_routing_key", "summarize_result"]

TIMING_FIELDS = (
    "time_created",
    "time_input_received",
    "time_compute_started",
    "time_compute_ended",
    "time_result_sent",
    "time_running",
)
"""The timings of a result reported by :func:`summarize_result`."""


# ------------------------------------------------------------------ results
@dataclass(frozen=True)
class ResultSummary:
    """What can be shown of a result without trusting its payloads.

    Attributes:
        task_id: ID of the task
        client_id: Client the result is addressed to (from its routing key), when known
        method: Method that ran
        topic: Topic of the task
        success: Whether the task completed (``None``: no outcome recorded)
        value: The value, decoded when it was serialized as JSON, else ``None``
        value_format: ``json``, ``pickle`` or ``none`` (the task produced no value)
        displayable: Whether :attr:`value` holds the value (``False`` for pickled values,
            which are never unpickled here)
        failure: The exception of a failed task, as text
        inputs: ``{"args": [...], "kwargs": {...}}`` when the inputs were kept and are JSON
        task_info: The user's tracking data
        timings: The life-cycle timestamps and durations of :data:`TIMING_FIELDS` that are set
        complete: ``False`` for an intermediate result of a running task (its final result
            follows), else ``True`` or ``None``
    """

    task_id: str
    client_id: str | None
    method: str | None
    topic: str
    success: bool | None
    value: Any
    value_format: str
    displayable: bool
    failure: str | None
    inputs: dict[str, Any] | None
    task_info: dict[str, Any]
    timings: dict[str, float]
    complete: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain JSON-compatible data."""
        return asdict(self)


def client_of_routing_key(routing_key: str | None) -> str | None:
    """The client ID a result routing key (``<client_id>.<topic>``) addresses."""
    if not routing_key or "." not in routing_key:
        return None
    return unescape_word(routing_key.split(".", 1)[0])


def _json_or_none(payload: Any) -> tuple[Any, bool]:
    try:
        return json.loads(bytes(payload)), True
    except (ValueError, TypeError):
        return None, False


def summarize_result(
    message: bytes, routing_key: str | None = None, signer: MessageSigner | None = None
) -> ResultSummary:
    """Describe an encoded result (see :mod:`colmena_core.models.wire`), never unpickling it.

    Args:
        message: The bytes of the message
        routing_key: Routing key it was published with, to tell the client it is for
        signer: The campaign's signer: the signature is checked first (``None``: a signature
            is ignored, for display only)
    Raises:
        MessageAuthenticationError: unsigned or badly signed, with a signer
        MessageDecodeError: the bytes are not a Colmena message
    """
    if signer is None and is_signed(message):
        message = message[len(SIGNED_MAGIC) + 1 + TAG_BYTES :]
    result = decode_result(message, signer)
    is_json = result.serialization_method is SerializationMethod.JSON
    value: Any = None
    displayable = False
    if result.value is None:
        value_format, displayable = "none", True
    elif is_json:
        value_format = "json"
        value, displayable = _json_or_none(result.value)
    else:
        value_format = "pickle"
    inputs = None
    if is_json and isinstance(result.inputs, bytes | str) and result.inputs:
        decoded, ok = _json_or_none(
            result.inputs.encode() if isinstance(result.inputs, str) else result.inputs
        )
        if ok and isinstance(decoded, list) and len(decoded) == 2:
            args, kwargs = decoded
            if args or kwargs:
                inputs = {"args": list(args), "kwargs": dict(kwargs)}
    timings = {}
    for name in TIMING_FIELDS:
        moment = getattr(result, name)
        if isinstance(moment, int | float) and math.isfinite(moment):
            timings[name] = float(moment)
    return ResultSummary(
        task_id=result.task_id,
        client_id=client_of_routing_key(routing_key),
        method=result.method,
        topic=result.topic,
        success=result.success,
        value=value,
        value_format=value_format,
        displayable=displayable,
        failure=None if result.failure_info is None else result.failure_info.exception,
        inputs=inputs,
        task_info=dict(result.task_info),
        timings=timings,
        complete=result.complete,
    )
