"""The task server for FuncX under its original module name.

FuncX became Globus Compute; the task server lives in
:mod:`colmena_core.task_server.globus`. This module keeps ``colmena.task_server.funcx``
imports working.
"""

from __future__ import annotations

from colmena_core.task_server.globus import FuncXTaskServer

__all__ = ["FuncXTaskServer"]
