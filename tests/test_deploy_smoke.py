"""Deployment smoke test: real containers, from the images' build to a task's result.

Runs deploy/smoke.py (see its docstring): it starts a container engine when none runs, makes
base images from Debian packages when no registry can be reached (RabbitMQ 4 from Debian
trixie's packages, the major version compose ships), builds the three service
images offline, brings deploy/compose.yaml up, submits one task through the gateway, waits
for the demo campaign to complete and removes everything it created. A few minutes the first
time on a machine, about one and a half after that (its cache is ~/.cache/colmena-deploy).

Part of the default suite; COLMENA_DEPLOY_SMOKE=0 leaves it out, and
COLMENA_DEPLOY_SMOKE_STAGE=images|infra|full (default full) stops it earlier. A machine that
cannot run it (no engine and not root) skips it, except in CI (CI=true), where that fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from colmena_core.testing.redis import in_ci

SMOKE = Path(__file__).resolve().parent.parent / "deploy" / "smoke.py"
EXIT_CANNOT_RUN = 3
# The script has its own limit (--timeout); this one only guards against a hang.
LIMIT = 1800

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("COLMENA_DEPLOY_SMOKE") == "0" and not in_ci(),
        reason="COLMENA_DEPLOY_SMOKE=0 leaves the deployment smoke test out",
    ),
]


@pytest.mark.timeout(LIMIT + 300)
def test_compose_stack_runs_a_task_end_to_end() -> None:
    stage = os.environ.get("COLMENA_DEPLOY_SMOKE_STAGE", "full")
    process = subprocess.Popen(
        [sys.executable, str(SMOKE), "--stage", stage, "--timeout", str(LIMIT - 120)]
    )
    try:
        returncode = process.wait(timeout=LIMIT)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the script then removes its containers and stops its engine.
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=240)
        pytest.fail(f"deploy/smoke.py did not finish within {LIMIT} s")
    if returncode == EXIT_CANNOT_RUN and not in_ci():
        pytest.skip("this machine cannot run containers (see the output above)")
    assert returncode == 0, "deploy/smoke.py failed: its output above says where"
