"""Small behaviours of the original Colmena's models that applications rely on."""

from __future__ import annotations

import pytest

from colmena_core.models import ResourceRequirements
from colmena_core.queue import PipeQueues


def test_resource_requirements_accept_unknown_keys() -> None:
    # The original accepts keys it does not know and drops them; we also name them
    with pytest.warns(UserWarning, match=r"ignores unknown fields \['gpus'\]"):
        resources = ResourceRequirements(node_count=2, cpu_processes=4, gpus=1)
    assert resources.total_ranks == 8
    assert "gpus" not in resources.model_dump()

    # ... also when they come as the dictionary of send_inputs
    queues = PipeQueues()
    with pytest.warns(UserWarning, match="gpus"):
        queues.send_inputs(1, method="f", resources={"cpu_processes": 3, "gpus": 1})
    _, task = queues.get_task(timeout=10)
    assert task.resources == ResourceRequirements(cpu_processes=3)

    # Known fields are still checked
    with pytest.raises(ValueError, match="node_count"):
        ResourceRequirements(node_count=0)
