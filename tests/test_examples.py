"""The example applications run end to end on pipes and a local Parsl HighThroughputExecutor."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

EXAMPLES = {
    "quickstart": ["--guesses", "6"],
    "batch": ["--batches", "2", "--batch-size", "3"],
    "streaming": ["--budget", "6", "--parallel", "2"],
    "interleaved": ["--budget", "6", "--parallel", "2"],
    "reallocation": ["--slots", "2", "--budget", "6", "--retrain-every", "2"],
}


def run_example(name: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return subprocess.run(
        [sys.executable, "-m", f"examples.{name}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs_to_completion(name: str, tmp_path: Path) -> None:
    process = run_example(name, EXAMPLES[name], tmp_path)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    match = re.search(r"Best point found: x = (\S+), f\(x\) = (\S+)", process.stdout)
    assert match, process.stdout[-2000:]
    assert float(match.group(2)) >= 0


@pytest.mark.slow
def test_quickstart_shows_progress_and_improves(tmp_path: Path) -> None:
    process = run_example("quickstart", ["--guesses", "8"], tmp_path)
    assert process.returncode == 0, process.stderr[-3000:]
    progress = re.findall(
        r"\[(\d+)/8\] f\(\S+\) = \S+; best so far f\(\S+\) = (\S+)", process.stderr
    )
    assert [int(step) for step, _ in progress] == list(range(1, 9))
    best = [float(value) for _, value in progress]
    assert best == sorted(best, reverse=True), "the best value never gets worse"
    assert "Created a new guess" in process.stderr


def test_make_demo_stops_on_ctrl_c() -> None:
    """Ctrl-C on ``make demo``: one line from the demo (and make's own note), no traceback,
    the task server's Parsl interchange and workers gone with it."""
    import contextlib
    import queue
    import signal
    import threading
    import uuid

    from test_services import MARK, marked_processes, nothing_left_behind

    env = dict(os.environ)
    env[MARK] = uuid.uuid4().hex
    env.pop("COLMENA_BROKER_URL", None)
    process = subprocess.Popen(
        ["make", "--no-print-directory", "demo", f"VENV={sys.prefix}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as in a terminal
    )
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            log.append(line)
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while not re.search(r"\[1/40\]", lines.get(timeout=240)):
            pass
        seen = len(log)
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=120)
        reader.join(timeout=10)
        # A campaign line may still come out between the read above and the signal; from
        # the demo's "Stopping" line on, nothing else (make's own note aside)
        own = [line for line in log[seen:] if "Interrupt" not in line or "make" not in line]
        stopping = [i for i, line in enumerate(own) if line.startswith("Stopping (SIGINT)")]
        assert stopping, log[seen:]
        after = own[stopping[0] :]
        assert len(after) == 1, log[seen:]
        assert "Traceback" not in "".join(log), "".join(log)[-3000:]
        recorded = re.search(r"recorded in (\S+\.jsonl)", after[0])
        assert recorded, after
        (ROOT / recorded.group(1)).unlink(missing_ok=True)
        nothing_left_behind(env)
    finally:  # whatever a failure left running
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        for leftover in marked_processes(env[MARK]):
            with contextlib.suppress(Exception):  # it may have exited meanwhile
                leftover.kill()
