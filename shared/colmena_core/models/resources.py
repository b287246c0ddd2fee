"""Resource requirements that travel with a task request."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ResourceRequirements(BaseModel):
    """Resource requirements for tasks, used by some backends to allocate resources.

    Follows the naming conventions of RADICAL-Pilot.
    """

    model_config = ConfigDict(extra="forbid")

    node_count: int = Field(default=1, ge=1, description="Total number of nodes to use")
    cpu_processes: int = Field(default=1, ge=1, description="Number of MPI ranks per node")
    cpu_threads: int = Field(default=1, ge=1, description="Number of threads per process")

    @property
    def total_ranks(self) -> int:
        """Total number of MPI ranks."""
        return self.node_count * self.cpu_processes
