"""The quickstart campaign: two agents search for the minimum of f(x) = x**2.

The functions and the thinker live in :mod:`colmena_services.demo` (the services run the
same campaign); this script wires them to a task server. By default it runs on Python pipes
with a local Parsl executor (nothing to install); give ``--broker-url amqp://...`` (or set
COLMENA_BROKER_URL) to run the same thinker through RabbitMQ.

    python -m examples.quickstart [--guesses 40] [--broker-url URL]
"""

from __future__ import annotations

import argparse
import logging
import os

from colmena_core.task_server import ParslTaskServer
from colmena_services.demo import METHODS, TOPICS, Thinker
from examples.common import configure_logging, local_parsl_config, make_queues, run_campaign


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guesses", type=int, default=40, help="evaluations to run")
    parser.add_argument("--broker-url", default=os.environ.get("COLMENA_BROKER_URL"))
    parser.add_argument("--verbose", action="store_true", help="show engine and queue logs")
    args = parser.parse_args()
    configure_logging(args.verbose)

    queues = make_queues(TOPICS, args.broker_url, keep_inputs=True)
    doer = ParslTaskServer(METHODS, queues, local_parsl_config())
    thinker = Thinker(queues, guesses=args.guesses)
    where = "RabbitMQ" if args.broker_url else "Python pipes"
    logging.info(
        "Searching for the minimum of x**2 with %d evaluations over %s", args.guesses, where
    )
    run_campaign(queues, doer, thinker)
    print(thinker.summary())


if __name__ == "__main__":
    main()
