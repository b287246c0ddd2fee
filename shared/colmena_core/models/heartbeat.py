"""The heartbeat a task server publishes to advertise itself, and its limits.

A heartbeat says who the server is, which methods it serves, how busy it is and how long
the advertisement lasts. Anyone who can publish on a campaign's heartbeat exchange can send
one, so a monitor accepts only heartbeats within these limits (finite numbers, a bounded
lifetime, bounded sizes), signed with the campaign secret when there is one
(:func:`encode_heartbeat`, :func:`decode_heartbeat`). Publishing and watching are in
:mod:`colmena_core.queue.monitor`.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from colmena_core.exceptions import MessageDecodeError
from colmena_core.models.wire import KIND_HEARTBEAT, open_signed, sign
from colmena_core.names import MethodName
from colmena_core.security import MessageSigner

__all__ = [
    "MAX_HEARTBEAT_BYTES",
    "MAX_HEARTBEAT_TTL",
    "Heartbeat",
    "decode_heartbeat",
    "encode_heartbeat",
]

MAX_HEARTBEAT_TTL = 3600.0
"""Longest time, in seconds, a heartbeat keeps its server listed without another one."""

MAX_HEARTBEAT_BYTES = 64 * 1024
"""Largest heartbeat accepted, in bytes."""

_MAX_COUNT = 10**9


class Heartbeat(BaseModel):
    """What a task server advertises. Fields it does not know are kept as details."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    server_id: str = Field(min_length=1, max_length=255, description="Name of the server")
    ttl: float = Field(
        gt=0, le=MAX_HEARTBEAT_TTL, description="Seconds the server stays listed (bounded)"
    )
    hostname: str | None = Field(default=None, max_length=255, description="Its host")
    methods: list[MethodName] = Field(
        default_factory=list, max_length=10_000, description="Methods it serves"
    )
    capacity: int | None = Field(default=None, ge=0, le=_MAX_COUNT, description="Tasks at once")
    in_flight: int | None = Field(
        default=None, ge=0, le=_MAX_COUNT, description="Tasks running at the heartbeat"
    )
    started: float | None = Field(default=None, ge=0, description="When it started (Unix time)")
    stopping: bool = Field(default=False, description="The server is stopping: forget it")

    @property
    def details(self) -> dict[str, Any]:
        """Everything else the heartbeat said."""
        return dict(self.model_extra or {})


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def encode_heartbeat(heartbeat: Heartbeat, signer: MessageSigner | None = None) -> bytes:
    """The heartbeat as a message: JSON, signed with the campaign secret if given."""
    return sign(KIND_HEARTBEAT, (heartbeat.model_dump_json().encode(),), signer)


def decode_heartbeat(message: bytes, signer: MessageSigner | None = None) -> Heartbeat:
    """Check and parse a heartbeat made by :func:`encode_heartbeat`.

    Raises:
        MessageAuthenticationError: the signature is missing or wrong
        MessageDecodeError: not a heartbeat within the limits (the message says which)
    """
    if len(message) > MAX_HEARTBEAT_BYTES:
        raise MessageDecodeError(
            f"A heartbeat of {len(message)} bytes is over the limit of {MAX_HEARTBEAT_BYTES}"
        )
    body = bytes(open_signed(message, KIND_HEARTBEAT, signer))
    try:
        data = json.loads(body, parse_constant=_refuse_constant)
        return Heartbeat.model_validate(data)
    except (ValueError, RecursionError) as exc:  # ValidationError is a ValueError
        raise MessageDecodeError(f"Invalid heartbeat: {exc}") from exc
