"""The one wire format of Colmena messages, used by every transport and by the gateway.

A message is a fixed 24-byte prefix, a JSON header, then the two payloads as raw bytes::

    magic  b"CLM1"                       4 bytes
    header length   (unsigned, network order)  4 bytes
    inputs length   (2**64-1 when absent)      8 bytes
    value length    (2**64-1 when absent)      8 bytes
    header  JSON of every Result field except inputs and value
    inputs  serialized inputs (pickle bytes, or UTF-8 JSON)
    value   serialized value

Payloads are never re-encoded as text, so a 1 MiB pickled argument costs 1 MiB on the wire.
The kill signal is not a message: transports carry it out of band.
"""

from __future__ import annotations

import struct

from pydantic import ValidationError

from colmena_core.models.results import Result

__all__ = ["MAGIC", "MessageDecodeError", "decode_result", "encode_result", "peek_header"]

MAGIC = b"CLM1"
_PREFIX = struct.Struct("!4sIQQ")
_ABSENT = 2**64 - 1
_PAYLOADS = {"inputs", "value"}


class MessageDecodeError(ValueError):
    """The bytes are not a Colmena message."""


def _as_bytes(payload: str | bytes) -> bytes:
    return payload.encode() if isinstance(payload, str) else payload


def encode_result(result: Result) -> bytes:
    """Encode a result for the wire, serializing its payloads first if needed."""
    if not result.inputs_serialized or (result.value is not None and not result.value_serialized):
        elapsed, _ = result.serialize()
        if result.success is None:
            result.time_serialize_inputs = elapsed
    header = result.model_dump_json(exclude=_PAYLOADS, exclude_none=True).encode()
    assert isinstance(result.inputs, str | bytes)
    inputs = _as_bytes(result.inputs)
    value = _as_bytes(result.value) if result.value_serialized else None
    prefix = _PREFIX.pack(MAGIC, len(header), len(inputs), _ABSENT if value is None else len(value))
    return b"".join((prefix, header, inputs, value or b""))


def _split(
    message: bytes | bytearray | memoryview,
) -> tuple[memoryview, memoryview, memoryview | None]:
    view = memoryview(message)
    if len(view) < _PREFIX.size:
        raise MessageDecodeError(
            f"Message of {len(view)} bytes is too short to be a Colmena message"
        )
    magic, header_len, inputs_len, value_len = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise MessageDecodeError(f"Unknown message format (starts with {bytes(magic)!r})")
    start = _PREFIX.size
    value_size = 0 if value_len == _ABSENT else value_len
    if len(view) != start + header_len + inputs_len + value_size:
        raise MessageDecodeError("Message length does not match its header: truncated or corrupt")
    header = view[start : start + header_len]
    inputs = view[start + header_len : start + header_len + inputs_len]
    value = None if value_len == _ABSENT else view[start + header_len + inputs_len :]
    return header, inputs, value


def peek_header(message: bytes | bytearray | memoryview) -> Result:
    """Decode only the metadata of a message (payloads left empty)."""
    header, _, _ = _split(message)
    try:
        return Result.model_validate_json(bytes(header))
    except ValidationError as exc:
        raise MessageDecodeError(f"Invalid message header: {exc}") from exc


def decode_result(message: bytes | bytearray | memoryview) -> Result:
    """Decode a message made by :func:`encode_result`.

    Raises:
        MessageDecodeError: the bytes are not a valid message
    """
    header, inputs, value = _split(message)
    try:
        result = Result.model_validate_json(bytes(header))
    except ValidationError as exc:
        raise MessageDecodeError(f"Invalid message header: {exc}") from exc
    result.inputs = bytes(inputs)
    result.value = None if value is None else bytes(value)
    result.mark_serialized(inputs=True, value=value is not None)
    return result
