"""The campaign secret and the signatures it makes.

The services of a campaign share a secret. Every message they exchange through a broker
carries an HMAC-SHA256 over its bytes (see :mod:`colmena_core.models.wire` for where it
sits), checked before anything in the message is parsed or unpickled, so that someone who
can publish on the broker but does not hold the secret cannot make a task server or a
thinker run code. Holders of the secret are trusted: they can send any task.

The secret comes from, in order: the argument given to the queues, the environment
variable :data:`SECRET_VARIABLE`, or the file named by :data:`SECRET_FILE_VARIABLE` (a
Kubernetes or compose secret mounted as a file). ``colmena launch`` makes one per campaign.

This module must not know about transports or message layouts.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "MIN_SECRET_BYTES",
    "SECRET_FILE_VARIABLE",
    "SECRET_VARIABLE",
    "MessageSigner",
    "load_secret",
    "new_secret",
    "signer_for",
]

SECRET_VARIABLE = "COLMENA_CAMPAIGN_SECRET"
"""Environment variable holding the campaign secret."""

SECRET_FILE_VARIABLE = "COLMENA_CAMPAIGN_SECRET_FILE"
"""Environment variable naming a file that holds the campaign secret."""

MIN_SECRET_BYTES = 16
"""Shortest secret accepted: anything shorter can be guessed."""

TAG_BYTES = 32
"""Length of a signature (HMAC-SHA256)."""

_KEY_LABEL = b"colmena campaign message signing v1"
_REPLY_LABEL = b"colmena reply tag v1\0"


def new_secret() -> str:
    """A new random campaign secret (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def load_secret(secret: str | bytes | None = None) -> bytes | None:
    """The campaign secret: ``secret`` if given, else from the environment, else ``None``.

    Raises:
        ValueError: the secret is shorter than :data:`MIN_SECRET_BYTES`, or the file named
            by :data:`SECRET_FILE_VARIABLE` cannot be read
    """
    origin = "The campaign secret"
    if secret is None:
        secret = os.environ.get(SECRET_VARIABLE) or None
        origin = SECRET_VARIABLE
    if secret is None and os.environ.get(SECRET_FILE_VARIABLE):
        path = Path(os.environ[SECRET_FILE_VARIABLE])
        origin = f"The file {path} named by {SECRET_FILE_VARIABLE}"
        try:
            secret = path.read_bytes().strip()
        except OSError as exc:
            raise ValueError(f"{origin} cannot be read: {exc}") from exc
    if secret is None:
        return None
    data = secret.encode() if isinstance(secret, str) else bytes(secret)
    if len(data) < MIN_SECRET_BYTES:
        raise ValueError(
            f"{origin} has {len(data)} bytes; a campaign secret needs at least "
            f"{MIN_SECRET_BYTES} (make one with `python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`)"
        )
    return data


class MessageSigner:
    """Signs and verifies messages with a key derived from the campaign secret.

    Picklable (it holds only the derived key), so queues carrying one can be sent to
    other processes.
    """

    def __init__(self, secret: str | bytes) -> None:
        data = secret.encode() if isinstance(secret, str) else bytes(secret)
        self._key = hmac.new(data, _KEY_LABEL, hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "MessageSigner(<secret>)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MessageSigner) and hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(self._key[:8])

    def tag(self, kind: bytes, parts: Iterable[bytes | bytearray | memoryview]) -> bytes:
        """The signature of the concatenation of ``parts`` as a message of ``kind``."""
        mac = hmac.new(self._key, kind, hashlib.sha256)
        for part in parts:
            mac.update(part)
        return mac.digest()

    def verify(
        self, kind: bytes, parts: Iterable[bytes | bytearray | memoryview], tag: bytes
    ) -> bool:
        """Whether ``tag`` is the signature of ``parts`` (compared in constant time)."""
        return hmac.compare_digest(self.tag(kind, parts), tag)

    def reply_tag(self, client_id: str, task_id: str) -> str:
        """The tag a result must carry to be accepted by ``client_id`` for ``task_id``.

        A client computes it again from the result, so it needs no memory of what it sent
        (it survives a restart), and a result moved to another client's queue fails it.
        """
        text = f"{client_id}\0{task_id}".encode()
        return hmac.new(self._key, _REPLY_LABEL + text, hashlib.sha256).hexdigest()[:32]


def signer_for(secret: str | bytes | None = None) -> MessageSigner | None:
    """A signer for ``secret`` or the campaign secret of the environment (``None``: none set).

    Raises:
        ValueError: see :func:`load_secret`
    """
    loaded = load_secret(secret)
    return None if loaded is None else MessageSigner(loaded)
