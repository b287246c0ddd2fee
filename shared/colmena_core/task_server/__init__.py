"""Task servers: processes that run the methods of a campaign on an execution engine.

The engines are optional dependencies (Parsl: ``colmena-core[parsl]``; Globus Compute:
``colmena-core[globus]``), so the task servers are imported on first use: importing this
package never needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from colmena_core.task_server.base import (
    BaseTaskServer,
    FutureBasedTaskServer,
    run_and_record_timing,
)

if TYPE_CHECKING:
    from colmena_core.task_server.globus import FuncXTaskServer, GlobusComputeTaskServer
    from colmena_core.task_server.local import LocalTaskServer
    from colmena_core.task_server.parsl import ParslTaskServer

__all__ = [
    "BaseTaskServer",
    "FuncXTaskServer",
    "FutureBasedTaskServer",
    "GlobusComputeTaskServer",
    "LocalTaskServer",
    "ParslTaskServer",
    "run_and_record_timing",
]

_LAZY = {
    "FuncXTaskServer": "colmena_core.task_server.globus",
    "GlobusComputeTaskServer": "colmena_core.task_server.globus",
    "LocalTaskServer": "colmena_core.task_server.local",
    "ParslTaskServer": "colmena_core.task_server.parsl",
}


def __getattr__(name: str) -> Any:
    """Import a task server when it is first used."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
