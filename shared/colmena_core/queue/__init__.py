"""Queues that carry task requests and results between thinkers and task servers."""

from colmena_core.proxy import register_store
from colmena_core.queue.base import ColmenaQueues, QueueRole
from colmena_core.queue.python import PipeQueues

__all__ = ["ColmenaQueues", "PipeQueues", "QueueRole", "register_store"]
