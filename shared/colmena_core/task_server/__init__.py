"""Task servers: processes that run the methods of a campaign on an execution engine."""

from colmena_core.task_server.base import BaseTaskServer, FutureBasedTaskServer, run_and_record_timing

__all__ = ["BaseTaskServer", "FutureBasedTaskServer", "run_and_record_timing"]
