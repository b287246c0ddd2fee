"""Resource requirements that travel with a task request."""

from __future__ import annotations

import warnings
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ResourceRequirements(BaseModel):
    """Resource requirements for tasks, used by some backends to allocate resources.

    Follows the naming conventions of RADICAL-Pilot. As in the original Colmena, keys other
    than the fields below are accepted and dropped; a warning names them, so that a misspelt
    field does not go unnoticed.
    """

    model_config = ConfigDict(extra="ignore")

    node_count: int = Field(default=1, ge=1, description="Total number of nodes to use")
    cpu_processes: int = Field(default=1, ge=1, description="Number of MPI ranks per node")
    cpu_threads: int = Field(default=1, ge=1, description="Number of threads per process")

    @model_validator(mode="before")
    @classmethod
    def _warn_about_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = cls.model_fields  # a property: read once (every request and result runs this)
            unknown = [key for key in data if key not in known]
            if unknown:
                warnings.warn(
                    f"ResourceRequirements ignores unknown fields {sorted(map(str, unknown))}; "
                    f"it knows {sorted(known)}",
                    stacklevel=2,
                )
        return data

    @property
    def total_ranks(self) -> int:
        """Total number of MPI ranks."""
        return self.node_count * self.cpu_processes
