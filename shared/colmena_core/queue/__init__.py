"""Queues that carry task requests and results between thinkers and task servers.

Transports that need optional packages are imported on first access, so that
``import colmena_core.queue`` works without them: ``from colmena_core.queue import
RedisQueues`` needs the ``redis`` extra only when it runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from colmena_core.proxy import register_store
from colmena_core.queue.base import ColmenaQueues, QueueRole
from colmena_core.queue.python import PipeQueues

if TYPE_CHECKING:  # for type checkers only; at run time see __getattr__ below
    from colmena_core.queue.rabbitmq import RabbitMQQueues as RabbitMQQueues
    from colmena_core.queue.redis import RedisQueues as RedisQueues

# Optional transports stay out of __all__ so that a star import never needs their extras.
__all__ = ["ColmenaQueues", "PipeQueues", "QueueRole", "register_store"]

_OPTIONAL_TRANSPORTS: dict[str, str] = {
    # class name -> module that defines it (imported on first access)
    "RedisQueues": "colmena_core.queue.redis",
    "RabbitMQQueues": "colmena_core.queue.rabbitmq",
}


def __getattr__(name: str) -> Any:
    module = _OPTIONAL_TRANSPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_OPTIONAL_TRANSPORTS})
