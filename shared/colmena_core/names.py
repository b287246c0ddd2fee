"""The one rule for the names that travel as broker addresses.

Every value that ends up in an AMQP short string (a queue, exchange or routing-key name, a
reply address, a header) is at most 255 bytes, and a dot in a campaign or client name
would change which queues a message reaches. So names are checked where they enter (the
services' settings, ``send_inputs``, the headers of messages read from a broker, the Helm
chart's values schema) with the rules below, which are chosen so that every name built
from them fits the AMQP limit.

* :data:`NAME_PATTERN`: campaigns, client IDs, task-server IDs, topics and task IDs.
* :data:`METHOD_PATTERN`: method names (Python names, possibly dotted).

This module must stay free of imports from the rest of the library: the settings and the
models use it.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

__all__ = [
    "AMQP_SHORT_STRING_LIMIT",
    "METHOD_MAX_LENGTH",
    "METHOD_PATTERN",
    "NAME_MAX_LENGTH",
    "NAME_PATTERN",
    "MethodName",
    "Name",
    "check_method",
    "check_name",
]

AMQP_SHORT_STRING_LIMIT = 255
"""Bytes of an AMQP short string (names, routing keys, reply addresses, header names)."""

NAME_MAX_LENGTH = 64
"""Longest campaign, client, task-server, topic or task ID name, in characters (ASCII)."""

NAME_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9_-]{{0,{NAME_MAX_LENGTH - 1}}}$"
"""Campaigns, client IDs, task-server IDs, topics and task IDs: 1-64 letters, digits, ``-``
or ``_``, starting with a letter or digit. The Helm chart's values schema uses the same
pattern."""

METHOD_MAX_LENGTH = 128
"""Longest method name, in characters (ASCII)."""

METHOD_PATTERN = rf"^[A-Za-z_][A-Za-z0-9_.-]{{0,{METHOD_MAX_LENGTH - 1}}}$"
"""Method names: 1-128 letters, digits, ``_``, ``.`` or ``-``, starting with a letter or
``_``."""

_NAME = re.compile(NAME_PATTERN)
_METHOD = re.compile(METHOD_PATTERN)

# The longest names built from these parts stay within the AMQP limit
assert len("colmena.") + NAME_MAX_LENGTH + len(".results.") + 2 * NAME_MAX_LENGTH + 1 < 255
assert len("colmena.") + NAME_MAX_LENGTH + len(".requests.") + METHOD_MAX_LENGTH < 255


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(str(value))} characters)"


def check_name(value: object, field: str) -> str:
    """Return ``value`` if it is a valid name (see :data:`NAME_PATTERN`).

    Raises:
        ValueError: naming ``field`` and the rule
    """
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"{field} must be 1-{NAME_MAX_LENGTH} letters, digits, '-' or '_' starting with "
            f"a letter or digit, not {_describe(value)}"
        )
    return value


def check_method(value: object, field: str = "method") -> str:
    """Return ``value`` if it is a valid method name (see :data:`METHOD_PATTERN`).

    Raises:
        ValueError: naming ``field`` and the rule
    """
    if not isinstance(value, str) or not _METHOD.match(value):
        raise ValueError(
            f"{field} must be 1-{METHOD_MAX_LENGTH} letters, digits, '_', '.' or '-' "
            f"starting with a letter or '_', not {_describe(value)}"
        )
    return value


def _name_field(value: str) -> str:
    return check_name(value, "The name")


def _method_field(value: str) -> str:
    return check_method(value, "The method name")


Name = Annotated[str, AfterValidator(_name_field)]
"""A string field following :data:`NAME_PATTERN` (for pydantic models and settings)."""

MethodName = Annotated[str, AfterValidator(_method_field)]
"""A string field following :data:`METHOD_PATTERN` (for pydantic models and settings)."""
