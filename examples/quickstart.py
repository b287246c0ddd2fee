"""The quickstart campaign: two agents search for the minimum of f(x) = x**2.

The functions and the thinker live in :mod:`colmena_services.demo` (the services run the
same campaign); this script wires them to a task server. By default it runs on Python pipes
with a local Parsl executor (nothing to install); give ``--broker-url amqp://...`` (or set
COLMENA_BROKER_URL) to run the same thinker through RabbitMQ.

Every result the thinker reads is recorded in a JSON Lines file (``--results-file``; by
default a new file under ``results/``); ``colmena report FILE`` draws the campaign from it.
Ctrl-C or SIGTERM stops the campaign: the agents stop, the task server finishes the tasks
it is running and shuts Parsl down.

    python -m examples.quickstart [--guesses 40] [--broker-url URL] [--results-file FILE]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from colmena_core.task_server import ParslTaskServer
from colmena_core.task_server.signals import ignoring_interrupts
from colmena_services.demo import METHODS, TOPICS, Thinker
from colmena_services.record import RecordError, ResultsFile
from examples.common import configure_logging, local_parsl_config, make_queues


def default_results_file() -> Path:
    return Path("results") / time.strftime("quickstart-%Y%m%d-%H%M%S.jsonl")


def open_results_file(path: Path | None) -> ResultsFile:
    """The file asked for, else the default one; where the working directory cannot be
    written (a read-only container), the default moves to the temporary directory."""
    if path is not None:
        return ResultsFile(path, recorder="quickstart")
    default = default_results_file()
    try:
        return ResultsFile(default, recorder="quickstart")
    except RecordError:
        return ResultsFile(Path(tempfile.gettempdir()) / default, recorder="quickstart")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guesses", type=int, default=40, help="evaluations to run")
    parser.add_argument("--broker-url", default=os.environ.get("COLMENA_BROKER_URL"))
    parser.add_argument(
        "--results-file",
        type=Path,
        default=None,
        help="JSON Lines file to record the results in (default: results/quickstart-TIME.jsonl)",
    )
    parser.add_argument("--verbose", action="store_true", help="show engine and queue logs")
    args = parser.parse_args()
    configure_logging(args.verbose)
    try:
        results = open_results_file(args.results_file)
    except RecordError as exc:
        print(f"quickstart: {exc}", file=sys.stderr)
        return 2

    queues = make_queues(TOPICS, args.broker_url, keep_inputs=True)
    doer = ParslTaskServer(METHODS, queues, local_parsl_config())
    thinker = Thinker(queues, guesses=args.guesses, results_file=results)
    where = "RabbitMQ" if args.broker_url else "Python pipes"
    logging.info(
        "Searching for the minimum of x**2 with %d evaluations over %s", args.guesses, where
    )
    stopped: list[str] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        if not stopped:
            stopped.append(signal.Signals(signum).name)
            print(
                f"Stopping ({stopped[0]}): {results.written} results recorded in {results.path}",
                file=sys.stderr,
                flush=True,
            )
            logging.disable(logging.INFO)  # that line says it all: quiet while winding down
        thinker.done.set()

    try:
        # The task server process (and Parsl's processes) ignore the terminal's Ctrl-C: the
        # kill signal below stops them once their in-flight tasks are done
        with ignoring_interrupts():
            doer.start()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, stop)
        thinker.start()
        while thinker.is_alive():
            thinker.join(timeout=0.2)
    finally:
        queues.send_kill_signal()
        doer.join()
        results.close()
    if stopped:
        return 0
    print(thinker.summary())
    print(f"Results recorded in {results.path} (draw them: colmena report {results.path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
