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

When the campaign has a secret (:mod:`colmena_core.security`), every message is signed::

    magic  b"CLS1"                       4 bytes
    kind   b"M" (task or result), b"K" (kill signal), b"H" (heartbeat)   1 byte
    HMAC-SHA256 of kind + body           32 bytes
    body   the unsigned message (b"CLM1"..., b"CLK1"..., or heartbeat JSON)

The signature is checked before anything of the body is parsed; a reader with a secret
refuses unsigned messages and a reader without one refuses signed messages, both with
:class:`~colmena_core.exceptions.MessageAuthenticationError`. The kill signal is
``b"CLK1"`` followed by a small JSON object.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Sequence

from pydantic import ValidationError

from colmena_core.exceptions import MessageAuthenticationError, MessageDecodeError
from colmena_core.models.results import Result
from colmena_core.security import TAG_BYTES, MessageSigner

__all__ = [
    "KIND_CONTROL",
    "KIND_HEARTBEAT",
    "KIND_MESSAGE",
    "MAGIC",
    "SIGNED_MAGIC",
    "MessageAuthenticationError",
    "MessageDecodeError",
    "decode_kill",
    "decode_result",
    "encode_kill",
    "encode_result",
    "open_signed",
    "peek_header",
    "sign",
]

MAGIC = b"CLM1"
SIGNED_MAGIC = b"CLS1"
KILL_MAGIC = b"CLK1"
KIND_MESSAGE = b"M"
KIND_CONTROL = b"K"
KIND_HEARTBEAT = b"H"
_PREFIX = struct.Struct("!4sIQQ")
_SIGNED_PREFIX = len(SIGNED_MAGIC) + 1 + TAG_BYTES
_ABSENT = 2**64 - 1
_PAYLOADS = {"inputs", "value"}
_MAX_KILL_BYTES = 1024


def sign(kind: bytes, parts: Sequence[bytes], signer: MessageSigner | None) -> bytes:
    """The message made of ``parts``, signed as ``kind`` (unchanged when ``signer`` is None)."""
    if signer is None:
        return b"".join(parts)
    return b"".join((SIGNED_MAGIC, kind, signer.tag(kind, parts), *parts))


def is_signed(message: bytes | bytearray | memoryview) -> bool:
    """Whether ``message`` carries a signature (checked or not)."""
    return bytes(memoryview(message)[: len(SIGNED_MAGIC)]) == SIGNED_MAGIC


def open_signed(
    message: bytes | bytearray | memoryview, kind: bytes, signer: MessageSigner | None
) -> memoryview:
    """The body of ``message`` once its signature is checked.

    Args:
        message: The bytes received
        kind: The kind of message expected (:data:`KIND_MESSAGE`, ...)
        signer: The campaign's signer; ``None`` accepts unsigned messages only
    Raises:
        MessageAuthenticationError: unsigned while a secret is set, signed while none is,
            of another kind, or badly signed
    """
    view = memoryview(message)
    signed = is_signed(view)
    if signer is None:
        if signed:
            raise MessageAuthenticationError(
                "The message is signed but no campaign secret is configured here "
                "(set COLMENA_CAMPAIGN_SECRET)"
            )
        return view
    if not signed:
        raise MessageAuthenticationError("The message is not signed with the campaign secret")
    if len(view) < _SIGNED_PREFIX:
        raise MessageAuthenticationError("The signed message is truncated")
    found = bytes(view[len(SIGNED_MAGIC) : len(SIGNED_MAGIC) + 1])
    if found != kind:
        raise MessageAuthenticationError(
            f"The message is signed as kind {found!r}, expected {kind!r}"
        )
    tag = bytes(view[len(SIGNED_MAGIC) + 1 : _SIGNED_PREFIX])
    body = view[_SIGNED_PREFIX:]
    if not signer.verify(kind, (body,), tag):
        raise MessageAuthenticationError(
            "The signature of the message does not match the campaign secret"
        )
    return body


def _unsigned(message: bytes | bytearray | memoryview) -> memoryview:
    """The body of ``message`` with any signature stripped, unchecked (for display only)."""
    view = memoryview(message)
    return view[_SIGNED_PREFIX:] if is_signed(view) else view


def _as_bytes(payload: str | bytes) -> bytes:
    return payload.encode() if isinstance(payload, str) else payload


def encode_result(result: Result, signer: MessageSigner | None = None) -> bytes:
    """Encode a result for the wire, serializing its payloads first if needed.

    Args:
        result: The task request or result
        signer: Signs the message with the campaign secret (``None``: unsigned)
    """
    if not result.inputs_serialized or (result.value is not None and not result.value_serialized):
        elapsed, _ = result.serialize()
        if result.success is None:
            result.time_serialize_inputs = elapsed
    header = result.model_dump_json(exclude=_PAYLOADS, exclude_none=True).encode()
    assert isinstance(result.inputs, str | bytes)
    inputs = _as_bytes(result.inputs)
    value = _as_bytes(result.value) if result.value_serialized else None
    prefix = _PREFIX.pack(MAGIC, len(header), len(inputs), _ABSENT if value is None else len(value))
    return sign(KIND_MESSAGE, (prefix, header, inputs, value or b""), signer)


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
    """Decode only the metadata of a message (payloads left empty).

    Its signature, if any, is not checked: use it to describe a message, never to act on it.
    """
    header, _, _ = _split(_unsigned(message))
    try:
        return Result.model_validate_json(bytes(header))
    except ValidationError as exc:
        raise MessageDecodeError(f"Invalid message header: {exc}") from exc


def decode_result(
    message: bytes | bytearray | memoryview, signer: MessageSigner | None = None
) -> Result:
    """Decode a message made by :func:`encode_result`, checking its signature first.

    Payloads stay serialized: nothing is unpickled here.

    Args:
        message: The bytes received
        signer: The campaign's signer; ``None`` accepts unsigned messages only
    Raises:
        MessageAuthenticationError: the signature is missing or wrong (see :func:`open_signed`)
        MessageDecodeError: the bytes are not a valid message
    """
    header, inputs, value = _split(open_signed(message, KIND_MESSAGE, signer))
    try:
        result = Result.model_validate_json(bytes(header))
    except ValidationError as exc:
        raise MessageDecodeError(f"Invalid message header: {exc}") from exc
    result.inputs = bytes(inputs)
    result.value = None if value is None else bytes(value)
    result.mark_serialized(inputs=True, value=value is not None)
    return result


def encode_kill(signer: MessageSigner | None = None) -> bytes:
    """The kill signal: stop the campaign's task servers once their tasks are done."""
    body = json.dumps({"signal": "kill", "time": time.time()}).encode()
    return sign(KIND_CONTROL, (KILL_MAGIC, body), signer)


def decode_kill(message: bytes | bytearray | memoryview, signer: MessageSigner | None) -> None:
    """Check that ``message`` is a kill signal made by :func:`encode_kill`.

    Raises:
        MessageAuthenticationError: the signature is missing or wrong
        MessageDecodeError: the bytes are not a kill signal
    """
    if len(message) > _MAX_KILL_BYTES + _SIGNED_PREFIX:
        raise MessageDecodeError(f"A kill signal has at most {_MAX_KILL_BYTES} bytes")
    body = bytes(open_signed(message, KIND_CONTROL, signer))
    if not body.startswith(KILL_MAGIC):
        raise MessageDecodeError("The message is not a kill signal")
    try:
        content = json.loads(body[len(KILL_MAGIC) :])
    except ValueError as exc:
        raise MessageDecodeError(f"The kill signal is not valid JSON: {exc}") from exc
    if not isinstance(content, dict) or content.get("signal") != "kill":
        raise MessageDecodeError("The message is not a kill signal")
