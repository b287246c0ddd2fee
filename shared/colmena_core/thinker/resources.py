"""Bookkeeping of the compute slots a thinker may use, split into pools per task type.

A :class:`ResourceCounter` tracks a fixed number of *slots* (nodes, GPUs, workers, ...).
Each slot belongs to exactly one pool: a named task type, or the *unallocated* pool, named
``None``, where every slot starts. Within a pool a slot is either *available* or *in use*.
Agents take available slots with :meth:`ResourceCounter.acquire`, give them back with
:meth:`ResourceCounter.release`, and move slots between pools with
:meth:`ResourceCounter.reallocate`.

Design notes:

- One lock and one condition guard all counts, so every operation sees a consistent state
  and the invariants hold at all times: the allocations of all pools sum to the total, and
  ``0 <= available <= allocated`` for every pool.
- Requests on a pool are served strictly first-come-first-served: a request waits until it
  is the oldest request on its pool *and* enough slots are available, then takes all its
  slots at once. A waiting request never holds part of its slots, so two requests cannot
  each hold what the other needs (no reallocation deadlock).
- Waits are bounded by the timeout; a ``cancel_if`` event is checked every
  ``_CANCEL_POLL`` seconds while waiting (threading events cannot wake a condition).

:class:`ReallocatorThread` moves slots into a pool in the background for as long as some
work needs them, then hands them all to another pool.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Literal

__all__ = ["ReallocatorThread", "ResourceCounter"]

logger = logging.getLogger(__name__)

_CANCEL_POLL = 0.05
"""Seconds between checks of a ``cancel_if`` event while a request waits."""


def _deadline(timeout: float | None) -> float | None:
    """Convert a timeout (``None`` or negative: forever) into a monotonic deadline."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ValueError(f"timeout must be a number of seconds or None, not {timeout!r}")
    if timeout < 0:
        return None
    return time.monotonic() + timeout


def _check_count(value: Any, name: str, maximum: int) -> int:
    """Check that ``value`` is an integer between 0 and ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    if value > maximum:
        raise ValueError(f"{name}={value} exceeds the {maximum} slots the counter tracks")
    return value


class ResourceCounter:
    """Shares a fixed number of compute slots between task pools, safely across threads.

    Every slot sits in one pool at a time. A pool is a task type or, for slots not yet
    handed out, the unallocated pool ``None`` (where all slots start). Per pool the counter
    knows its size (``allocated_slots``) and how many of its slots are free
    (``available_slots``).

    - :meth:`acquire` takes free slots of a pool for some work, waiting if needed;
    - :meth:`release` returns them to the same pool;
    - :meth:`reallocate` changes pool sizes by moving free slots between pools.

    Waiting requests on a pool are served in arrival order, and a request for several
    slots gets them in a single step: it never sits on part of them while it waits.

    Args:
        total_slots: Total number of slots (e.g., nodes) available
        task_types: Names of the task types, one pool each

    Raises:
        ValueError: If ``total_slots`` is not a non-negative integer, or ``task_types``
            holds ``None``, duplicates or non-strings
    """

    def __init__(self, total_slots: int, task_types: Iterable[str] = ()) -> None:
        if isinstance(total_slots, bool) or not isinstance(total_slots, int) or total_slots < 0:
            raise ValueError(f"total_slots must be a non-negative integer, not {total_slots!r}")
        if isinstance(task_types, str):
            raise ValueError("task_types must be a list of names, not a single string")
        names = list(task_types)
        if None in names:
            raise ValueError("None is reserved as the name of the unallocated pool")
        for name in names:
            if not isinstance(name, str):
                raise ValueError(f"Task types must be strings, not {name!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"Task types must be unique: {names}")

        self._total_slots = total_slots
        self._task_types = names
        pools: list[str | None] = [*names, None]
        self._allocated: dict[str | None, int] = dict.fromkeys(pools, 0)
        self._available: dict[str | None, int] = dict.fromkeys(pools, 0)
        self._allocated[None] = self._available[None] = total_slots
        self._waiters: dict[str | None, deque[object]] = {pool: deque() for pool in pools}
        self._cond = threading.Condition(threading.Lock())
        logger.info(
            "Created a resource counter with %d slots and %d task types: %s",
            total_slots,
            len(names),
            ", ".join(names),
        )

    # ------------------------------------------------------------------ queries
    @property
    def total_slots(self) -> int:
        """Total number of slots tracked by the counter."""
        return self._total_slots

    @property
    def task_types(self) -> list[str]:
        """Names of the task pools (the unallocated pool, ``None``, is not listed)."""
        return list(self._task_types)

    @property
    def unallocated_slots(self) -> int:
        """Slots that belong to no task pool."""
        with self._cond:
            return self._allocated[None]

    def allocated_slots(self, task: str | None) -> int:
        """Slots assigned to a pool, whether in use or not.

        Args:
            task: Name of the pool (``None`` for the unallocated pool)
        Returns:
            Slot count of the pool
        Raises:
            ValueError: If the task type is unknown
        """
        self._check_pool(task)
        with self._cond:
            return self._allocated[task]

    def available_slots(self, task: str | None) -> int:
        """Slots of a pool that are not in use.

        Args:
            task: Name of the pool (``None`` for the unallocated pool)
        Returns:
            Free slot count of the pool
        Raises:
            ValueError: If the task type is unknown
        """
        self._check_pool(task)
        with self._cond:
            return self._available[task]

    def _snapshot(self) -> dict[str | None, tuple[int, int]]:
        """Consistent copy of ``{pool: (allocated, available)}``, for tests and debugging."""
        with self._cond:
            return {
                pool: (self._allocated[pool], self._available[pool]) for pool in self._allocated
            }

    def __repr__(self) -> str:
        state = ", ".join(
            f"{pool!r}: {alloc - avail}/{alloc} in use"
            for pool, (alloc, avail) in self._snapshot().items()
        )
        return f"ResourceCounter(total_slots={self._total_slots}, {{{state}}})"

    def _check_pool(self, task: str | None) -> None:
        if task not in self._allocated:
            raise ValueError(
                f"Unknown task type {task!r}; the counter knows {self._task_types} and None"
            )

    # ---------------------------------------------------------------- requests
    def _take(
        self,
        pool: str | None,
        n_slots: int | None,
        deadline: float | None,
        cancel_if: threading.Event | None,
    ) -> int | None:
        """Wait for our turn on ``pool`` and take slots from its available count.

        The caller must hold ``self._cond``.

        Args:
            pool: Pool to draw from
            n_slots: Number of slots, or ``None`` for every slot allocated to the pool
                (which waits until none of them is in use)
            deadline: Monotonic time after which to give up, ``None`` for never
            cancel_if: Give up once this event is set
        Returns:
            Number of slots taken, or ``None`` if the request timed out or was cancelled
        """
        ticket = object()
        waiters = self._waiters[pool]
        waiters.append(ticket)
        self._cond.notify_all()  # Lets observers waiting on the condition see the new request
        try:
            while True:
                if cancel_if is not None and cancel_if.is_set():
                    return None
                if waiters[0] is ticket:
                    available = self._available[pool]
                    if n_slots is None and available == self._allocated[pool]:
                        self._available[pool] = 0
                        return available
                    if n_slots is not None and available >= n_slots:
                        self._available[pool] = available - n_slots
                        return n_slots
                wait: float | None = None
                if deadline is not None:
                    wait = deadline - time.monotonic()
                    if wait <= 0:
                        return None
                if cancel_if is not None:
                    wait = _CANCEL_POLL if wait is None else min(wait, _CANCEL_POLL)
                self._cond.wait(wait)
        finally:
            # Leaving the line may let the next request in: wake everyone to re-check
            if waiters[0] is ticket:
                waiters.popleft()
            else:
                waiters.remove(ticket)
            self._cond.notify_all()

    def acquire(
        self,
        task: str | None,
        n_slots: int,
        timeout: float = -1.0,
        cancel_if: threading.Event | None = None,
    ) -> bool:
        """Mark slots of one pool as in use, waiting until they are free.

        Only slots of the named pool count. The call returns once every earlier request on
        the pool has been served and ``n_slots`` slots are free together; it then takes
        them all in one step.

        Args:
            task: Name of the pool (``None`` for the unallocated pool)
            n_slots: How many slots to take
            timeout: Longest wait in seconds (fractions honoured); negative or ``None``
                waits without limit, ``0`` succeeds only if the slots can be taken now
            cancel_if: Give up as soon as this event is set
        Returns:
            Whether the slots were taken
        Raises:
            ValueError: For an unknown task type, or a negative or too large ``n_slots``
        """
        self._check_pool(task)
        _check_count(n_slots, "n_slots", self._total_slots)
        deadline = _deadline(timeout)
        if n_slots == 0:
            return True
        with self._cond:
            return self._take(task, n_slots, deadline, cancel_if) is not None

    def release(
        self,
        task: str | None = None,
        n_slots: int = 1,
        rerequest: bool = False,
        timeout: float = -1,
    ) -> bool | None:
        """Mark slots of one pool as free again; optionally ask for as many right after.

        The new request (``rerequest=True``) queues behind requests already waiting on the
        pool, which gives them a chance to run first.

        Args:
            task: Name of the pool (``None`` for the unallocated pool)
            n_slots: How many slots to free
            rerequest: Whether to take ``n_slots`` slots of the pool again afterwards
            timeout: Longest wait for the new request, as in :meth:`acquire`
        Returns:
            Whether the new request got its slots; ``None`` when there was none
        Raises:
            ValueError: For an unknown task type, a negative ``n_slots``, or releasing more
                slots than are in use for the task
        """
        self._check_pool(task)
        _check_count(n_slots, "n_slots", self._total_slots)
        deadline = _deadline(timeout)
        with self._cond:
            in_use = self._allocated[task] - self._available[task]
            if n_slots > in_use:
                raise ValueError(
                    f"Cannot release {n_slots} slots of {task!r}: only {in_use} are in use"
                )
            self._available[task] += n_slots
            self._cond.notify_all()
        if not rerequest:
            return None
        if n_slots == 0:
            return True
        with self._cond:
            return self._take(task, n_slots, deadline, None) is not None

    def reallocate(
        self,
        task_from: str | None,
        task_to: str | None,
        n_slots: int | Literal["all"],
        block: bool = True,
        callback: Callable[[], Any] | None = None,
        timeout: float = -1,
        cancel_if: threading.Event | None = None,
    ) -> bool:
        """Move slots from one pool to another.

        The slots must be free in ``task_from``: the call queues like :meth:`acquire` and,
        once the slots are free, moves them in one step into ``task_to``, where they arrive
        free. The call waits for the move unless ``block`` is ``False``.

        Args:
            task_from: Source pool (``None``: the unallocated slots)
            task_to: Destination pool (``None``: give the slots back to the unallocated pool)
            n_slots: How many slots to move, or ``"all"`` to move every slot of
                ``task_from`` (which waits until none of them is in use)
            block: Whether to wait for the move; if ``False``, it happens in a daemon thread
            callback: Called without arguments once a non-blocking move ends, successful or
                not; ignored when ``block`` is ``True``
            timeout: Longest wait for the slots, as in :meth:`acquire`
            cancel_if: Give up as soon as this event is set
        Returns:
            Whether the slots were moved; ``True`` right away when ``block`` is ``False``
        Raises:
            ValueError: For unknown task types, identical pools, or a bad ``n_slots``
        """
        self._check_pool(task_from)
        self._check_pool(task_to)
        if task_from == task_to:
            raise ValueError(
                f"Slots cannot be moved within one pool: task_from = task_to = {task_from!r}"
            )
        if n_slots != "all":
            _check_count(n_slots, "n_slots", self._total_slots)
        _deadline(timeout)  # Validate now, so errors surface in the caller's thread

        if not block:

            def _transfer() -> None:
                try:
                    success = self.reallocate(
                        task_from, task_to, n_slots, timeout=timeout, cancel_if=cancel_if
                    )
                    logger.debug(
                        "Non-blocking transfer from %r to %r ended, success=%s",
                        task_from,
                        task_to,
                        success,
                    )
                finally:
                    if callback is not None:
                        callback()

            thread = threading.Thread(
                target=_transfer, daemon=True, name=f"reallocate-{task_from}-to-{task_to}"
            )
            thread.start()
            return True

        deadline = _deadline(timeout)
        with self._cond:
            moved = self._take(
                task_from, None if n_slots == "all" else n_slots, deadline, cancel_if
            )
            if moved is None:
                return False
            self._allocated[task_from] -= moved
            self._allocated[task_to] += moved
            self._available[task_to] += moved
            self._cond.notify_all()
        logger.info("Transferred %d slots from %s to %s", moved, task_from, task_to)
        return True


class ReallocatorThread(threading.Thread):
    """Thread that gathers slots into a pool until an event is set, then disperses them.

    The thread moves ``slot_step`` slots at a time from ``gather_from`` to ``gather_to``
    until ``gather_to`` holds ``max_slots`` slots or the stop event is set. Once the stop
    event is set, it moves *all* slots allocated to ``gather_to`` into ``disperse_to``
    (waiting until none of them is in use) and exits.

    Setting :attr:`stop_event` (given to the constructor or created by it) stops the
    gathering. The thread is a daemon.

    Args:
        resource_counter: Counter whose slots are moved
        gather_from: Pool the slots are taken from
        gather_to: Pool the slots are moved into
        disperse_to: Pool that receives every slot of ``gather_to`` once stopped
        max_slots: Most slots ``gather_to`` should hold; ``None`` for no limit
        stop_event: Event that ends the gathering; a new one is made if not given
        logger_name: Logger to report to (default: this module's logger)
        slot_step: Slots moved per transfer

    Raises:
        ValueError: If ``gather_from`` equals ``gather_to``, a pool is unknown, or a count
            is not a valid number of slots
    """

    def __init__(
        self,
        resource_counter: ResourceCounter,
        gather_from: str | None,
        gather_to: str | None,
        disperse_to: str | None,
        max_slots: int | None = None,
        stop_event: threading.Event | None = None,
        logger_name: str | None = None,
        slot_step: int = 1,
    ) -> None:
        super().__init__(daemon=True, name=f"reallocator-{gather_from}-to-{gather_to}")
        if gather_from == gather_to:
            raise ValueError(f"Slots must be gathered into another pool than {gather_from!r}")
        for pool in (gather_from, gather_to, disperse_to):
            resource_counter._check_pool(pool)
        if max_slots is not None:
            _check_count(max_slots, "max_slots", resource_counter.total_slots)
        _check_count(slot_step, "slot_step", resource_counter.total_slots)
        if slot_step == 0:
            raise ValueError("slot_step must be at least 1")

        self.resource_counter = resource_counter
        self.gather_from = gather_from
        self.gather_to = gather_to
        self.disperse_to = disperse_to
        self.max_slots = max_slots
        self.slot_step = slot_step
        self.stop_event = threading.Event() if stop_event is None else stop_event
        self.logger = logger if logger_name is None else logging.getLogger(logger_name)

    def run(self) -> None:
        """Gather slots until the cap is reached or the thread is stopped, then disperse them."""
        rec = self.resource_counter
        self.logger.info(
            "Gathering up to %s slots into %s from %s, %d at a time",
            self.max_slots,
            self.gather_to,
            self.gather_from,
            self.slot_step,
        )
        while not self.stop_event.is_set():
            step = self.slot_step
            if self.max_slots is not None:
                room = self.max_slots - rec.allocated_slots(self.gather_to)
                if room <= 0:
                    self.logger.info(
                        "Pool %s holds %d slots: reached the cap", self.gather_to, self.max_slots
                    )
                    break
                step = min(step, room)
            rec.reallocate(self.gather_from, self.gather_to, step, cancel_if=self.stop_event)

        self.stop_event.wait()
        if self.gather_to != self.disperse_to:
            self.logger.info(
                "Stop requested: moving all slots of %s to %s", self.gather_to, self.disperse_to
            )
            rec.reallocate(self.gather_to, self.disperse_to, "all")
        self.logger.info("Resource reallocation thread exiting")
