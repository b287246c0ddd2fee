"""Checks shared by the tests of the queues: exactly-once delivery and a pickle alarm."""

from __future__ import annotations

import threading
from typing import Any

from colmena_core.models import Result

UNPICKLED = threading.Event()
"""Set if anything ever unpickles an :class:`Alarm`."""


def _raise_alarm() -> str:
    UNPICKLED.set()
    return "unpickled"


class Alarm:
    """An object whose unpickling is detected (as a forged payload's code would run)."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _raise_alarm, ()


def assert_exactly_once(results: list[Result], sent: set[str]) -> None:
    """Every task sent has one successful result, and there is no other."""
    ids = [result.task_id for result in results]
    assert len(ids) == len(set(ids)), "a result was delivered twice"
    assert set(ids) == sent
    assert all(result.success for result in results), [
        r.failure_info for r in results if not r.success
    ]
