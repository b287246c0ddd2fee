"""Tests for the resource counter and the reallocation thread."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import pytest

from colmena_core.thinker.resources import ReallocatorThread, ResourceCounter

WAIT = 10.0
"""Upper bound, in seconds, on any wait that is expected to succeed."""


def wait_for_state(
    rec: ResourceCounter, predicate: Callable[[], bool], timeout: float = WAIT
) -> None:
    """Block until ``predicate`` holds; it is evaluated under the counter's lock."""
    with rec._cond:
        assert rec._cond.wait_for(predicate, timeout=timeout), (
            "counter never reached the expected state"
        )


def waiting(rec: ResourceCounter, pool: str | None) -> int:
    """Number of requests queued on a pool (call with the counter's lock held)."""
    return len(rec._waiters[pool])


def start_thread(target: Callable[..., object], *args: object) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def join(thread: threading.Thread) -> None:
    thread.join(timeout=WAIT)
    assert not thread.is_alive(), "thread did not finish in time"


def check_invariants(rec: ResourceCounter) -> None:
    state = rec._snapshot()
    assert sum(allocated for allocated, _ in state.values()) == rec.total_slots
    for pool, (allocated, available) in state.items():
        assert 0 <= available <= allocated, (pool, allocated, available)


# ----------------------------------------------------------------------------- construction
def test_initial_state() -> None:
    rec = ResourceCounter(8, ["ml", "sim"])
    assert rec.total_slots == 8
    assert rec.task_types == ["ml", "sim"]
    assert rec.unallocated_slots == 8
    assert rec.available_slots(None) == 8
    assert rec.allocated_slots(None) == 8
    for task in ("ml", "sim"):
        assert rec.allocated_slots(task) == 0
        assert rec.available_slots(task) == 0
    assert "ResourceCounter(total_slots=8" in repr(rec)


@pytest.mark.parametrize(
    ("total", "types"),
    [(-1, ["a"]), (1.5, ["a"]), (True, ["a"]), (2, [None]), (2, ["a", "a"]), (2, "ab"), (2, [1])],
)
def test_bad_construction(total: object, types: object) -> None:
    with pytest.raises(ValueError):
        ResourceCounter(total, types)  # type: ignore[arg-type]


def test_unknown_task_type() -> None:
    rec = ResourceCounter(2, ["a"])
    for call in (
        lambda: rec.allocated_slots("b"),
        lambda: rec.available_slots("b"),
        lambda: rec.acquire("b", 1),
        lambda: rec.release("b", 1),
        lambda: rec.reallocate(None, "b", 1),
        lambda: rec.reallocate("b", None, 1),
    ):
        with pytest.raises(ValueError, match="Unknown task type"):
            call()


@pytest.mark.parametrize("n_slots", [-1, 3, 1.0, True, "two"])
def test_bad_counts(n_slots: object) -> None:
    rec = ResourceCounter(2, ["a"])
    with pytest.raises(ValueError):
        rec.acquire("a", n_slots)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        rec.release("a", n_slots)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        rec.reallocate(None, "a", n_slots)  # type: ignore[arg-type]


def test_bad_timeout_and_same_pool() -> None:
    rec = ResourceCounter(2, ["a"])
    with pytest.raises(ValueError):
        rec.acquire(None, 1, timeout="soon")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="within one pool"):
        rec.reallocate("a", "a", 1)


# -------------------------------------------------------------------- acquire and release
def test_acquire_release_cycle() -> None:
    rec = ResourceCounter(4, ["a"])
    assert rec.reallocate(None, "a", 3)
    assert rec.allocated_slots("a") == 3 and rec.unallocated_slots == 1
    assert rec.acquire("a", 2)
    assert rec.available_slots("a") == 1
    assert rec.allocated_slots("a") == 3
    assert rec.release("a", 2) is None
    assert rec.available_slots("a") == 3
    assert rec.acquire("a", 0)  # A request for nothing always succeeds
    check_invariants(rec)


def test_release_more_than_in_use() -> None:
    rec = ResourceCounter(2, ["a"])
    rec.reallocate(None, "a", 2)
    with pytest.raises(ValueError, match="only 0 are in use"):
        rec.release("a", 1)
    assert rec.acquire("a", 1)
    with pytest.raises(ValueError, match="only 1 are in use"):
        rec.release("a", 2)
    check_invariants(rec)


def test_unallocated_pool_default() -> None:
    rec = ResourceCounter(2)
    assert rec.acquire(None, 2)
    assert rec.available_slots(None) == 0
    assert rec.release() is None  # task=None, n_slots=1
    assert rec.available_slots(None) == 1


def test_acquire_timeout_subsecond() -> None:
    rec = ResourceCounter(1, ["a"])
    start = time.monotonic()
    assert not rec.acquire("a", 1, timeout=0.2)
    elapsed = time.monotonic() - start
    assert 0.15 <= elapsed < 2.0
    # A zero timeout only succeeds when the slots can be taken at once
    assert not rec.acquire("a", 1, timeout=0)
    rec.reallocate(None, "a", 1)
    assert rec.acquire("a", 1, timeout=0)
    with rec._cond:
        assert waiting(rec, "a") == 0  # Failed requests left the line


def test_acquire_waits_for_release() -> None:
    rec = ResourceCounter(2, ["a"])
    rec.reallocate(None, "a", 2)
    assert rec.acquire("a", 2)
    outcome: list[bool] = []
    thread = start_thread(lambda: outcome.append(rec.acquire("a", 2, timeout=WAIT)))
    wait_for_state(rec, lambda: waiting(rec, "a") == 1)
    rec.release("a", 1)
    # Half of the request is available: the waiter must not take it
    wait_for_state(rec, lambda: rec._available["a"] == 1)
    assert outcome == []
    rec.release("a", 1)
    join(thread)
    assert outcome == [True]
    assert rec.available_slots("a") == 0


def test_acquire_cancel_if() -> None:
    rec = ResourceCounter(1, ["a"])
    cancel = threading.Event()
    outcome: list[bool] = []
    thread = start_thread(lambda: outcome.append(rec.acquire("a", 1, cancel_if=cancel)))
    wait_for_state(rec, lambda: waiting(rec, "a") == 1)
    cancel.set()
    join(thread)
    assert outcome == [False]
    # An already-set event cancels the request even if slots are available
    rec.reallocate(None, "a", 1)
    assert not rec.acquire("a", 1, cancel_if=cancel)
    assert rec.available_slots("a") == 1


def test_cancelled_waiter_hands_turn_to_next() -> None:
    rec = ResourceCounter(2, ["a"])
    rec.reallocate(None, "a", 1)
    cancel = threading.Event()
    first: list[bool] = []
    second: list[bool] = []
    t1 = start_thread(lambda: first.append(rec.acquire("a", 2, cancel_if=cancel)))
    wait_for_state(rec, lambda: waiting(rec, "a") == 1)
    t2 = start_thread(lambda: second.append(rec.acquire("a", 1, timeout=WAIT)))
    wait_for_state(rec, lambda: waiting(rec, "a") == 2)
    # The single slot is free, but the second request waits behind the first
    assert second == []
    cancel.set()
    join(t1)
    join(t2)
    assert first == [False] and second == [True]


def test_release_rerequest() -> None:
    rec = ResourceCounter(2, ["a"])
    rec.reallocate(None, "a", 2)
    assert rec.acquire("a", 2)
    assert rec.release("a", 2, rerequest=True) is True
    assert rec.available_slots("a") == 0
    # A re-request waits its turn behind earlier requests
    outcome: list[bool] = []
    thread = start_thread(lambda: outcome.append(rec.acquire("a", 2, timeout=WAIT)))
    wait_for_state(rec, lambda: waiting(rec, "a") == 1)
    assert rec.release("a", 2, rerequest=True, timeout=0.1) is False
    join(thread)
    assert outcome == [True]
    assert rec.available_slots("a") == 0
    check_invariants(rec)


def test_fifo_order() -> None:
    """Requests on a pool are served in arrival order, even when a later one could fit."""
    rec = ResourceCounter(3, ["a"])
    rec.reallocate(None, "a", 3)
    assert rec.acquire("a", 3)
    order: list[str] = []
    lock = threading.Lock()

    def request(name: str, n_slots: int) -> None:
        assert rec.acquire("a", n_slots, timeout=WAIT)
        with lock:
            order.append(name)

    threads = []
    for i, (name, n_slots) in enumerate([("big", 3), ("small1", 1), ("small2", 1)]):
        threads.append(start_thread(request, name, n_slots))
        queued = i + 1
        wait_for_state(rec, lambda: waiting(rec, "a") == queued)  # noqa: B023 - evaluated at once

    rec.release("a", 1)
    rec.release("a", 1)
    # Two slots are free, enough for both small requests, but "big" is first in line
    wait_for_state(rec, lambda: rec._available["a"] == 2 and waiting(rec, "a") == 3)
    assert order == []
    rec.release("a", 1)
    join(threads[0])
    assert order == ["big"]
    rec.release("a", 3)
    for thread in threads[1:]:
        join(thread)
    assert order == ["big", "small1", "small2"]
    check_invariants(rec)


# ------------------------------------------------------------------------------ reallocate
def test_reallocate_moves_available_slots() -> None:
    rec = ResourceCounter(5, ["a", "b"])
    assert rec.reallocate(None, "a", 4)
    assert rec.reallocate("a", "b", 3)
    assert rec.allocated_slots("a") == 1 and rec.available_slots("a") == 1
    assert rec.allocated_slots("b") == 3 and rec.available_slots("b") == 3
    assert rec.reallocate("b", None, 1)
    assert rec.unallocated_slots == 2
    assert rec.reallocate("a", "b", 0)
    check_invariants(rec)


def test_reallocate_waits_for_slots_in_use() -> None:
    rec = ResourceCounter(2, ["a", "b"])
    rec.reallocate(None, "a", 2)
    assert rec.acquire("a", 1)
    # Only one slot is free: a transfer of two waits
    assert not rec.reallocate("a", "b", 2, timeout=0.1)
    assert rec.allocated_slots("a") == 2
    outcome: list[bool] = []
    thread = start_thread(lambda: outcome.append(rec.reallocate("a", "b", 2)))
    wait_for_state(rec, lambda: waiting(rec, "a") == 1)
    assert outcome == []
    rec.release("a", 1)
    join(thread)
    assert outcome == [True]
    assert rec.allocated_slots("b") == 2 and rec.available_slots("b") == 2


def test_reallocate_all_waits_until_all_free() -> None:
    rec = ResourceCounter(4, ["a", "b"])
    rec.reallocate(None, "a", 3)
    assert rec.acquire("a", 2)
    outcome: list[bool] = []
    thread = start_thread(lambda: outcome.append(rec.reallocate("a", "b", "all", timeout=WAIT)))
    wait_for_state(rec, lambda: waiting(rec, "a") == 1)
    rec.release("a", 1)
    wait_for_state(rec, lambda: rec._available["a"] == 2)
    assert outcome == []  # One slot of "a" is still in use
    rec.release("a", 1)
    join(thread)
    assert outcome == [True]
    assert rec.allocated_slots("a") == 0
    assert rec.allocated_slots("b") == 3 and rec.available_slots("b") == 3
    assert rec.unallocated_slots == 1
    # "all" of an empty pool moves nothing and succeeds
    assert rec.reallocate("a", None, "all")
    check_invariants(rec)


def test_reallocate_all_timeout_and_cancel() -> None:
    rec = ResourceCounter(2, ["a"])
    rec.reallocate(None, "a", 2)
    assert rec.acquire("a", 1)
    start = time.monotonic()
    assert not rec.reallocate("a", None, "all", timeout=0.25)
    assert 0.2 <= time.monotonic() - start < 2.0
    cancel = threading.Event()
    outcome: list[bool] = []
    thread = start_thread(
        lambda: outcome.append(rec.reallocate("a", None, "all", cancel_if=cancel))
    )
    wait_for_state(rec, lambda: waiting(rec, "a") == 1)
    cancel.set()
    join(thread)
    assert outcome == [False]
    assert rec.allocated_slots("a") == 2 and rec.available_slots("a") == 1
    check_invariants(rec)


def test_reallocate_non_blocking_with_callback() -> None:
    rec = ResourceCounter(2, ["a", "b"])
    rec.reallocate(None, "a", 2)
    assert rec.acquire("a", 2)
    called = threading.Event()
    assert rec.reallocate("a", "b", 2, block=False, callback=called.set) is True
    wait_for_state(rec, lambda: waiting(rec, "a") == 1)
    assert not called.is_set()
    rec.release("a", 2)
    assert called.wait(WAIT)
    assert rec.allocated_slots("b") == 2


def test_reallocate_non_blocking_callback_after_timeout() -> None:
    rec = ResourceCounter(1, ["a"])
    called = threading.Event()
    assert rec.reallocate("a", None, 1, block=False, callback=called.set, timeout=0.05)
    assert called.wait(WAIT)
    assert rec.allocated_slots("a") == 0
    # Bad arguments are reported to the caller, not to the background thread
    with pytest.raises(ValueError):
        rec.reallocate("a", "a", 1, block=False)


def test_reallocation_feeds_waiting_acquire() -> None:
    rec = ResourceCounter(2, ["a"])
    outcome: list[bool] = []
    thread = start_thread(lambda: outcome.append(rec.acquire("a", 2, timeout=WAIT)))
    wait_for_state(rec, lambda: waiting(rec, "a") == 1)
    rec.reallocate(None, "a", 1)
    rec.reallocate(None, "a", 1)
    join(thread)
    assert outcome == [True]


# ------------------------------------------------------------------------- concurrency
def test_concurrent_stress() -> None:
    """Many threads acquire, release and reallocate at random; invariants always hold."""
    pools: list[str | None] = ["a", "b", "c", None]
    rec = ResourceCounter(12, ["a", "b", "c"])
    stop = threading.Event()
    errors: list[BaseException] = []
    operations = [0]
    count_lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(300):
                pool = rng.choice(pools)
                n_slots = rng.randint(1, 4)
                if rng.random() < 0.7:
                    if rec.acquire(pool, n_slots, timeout=rng.choice([0, 0.001, 0.01])):
                        if rng.random() < 0.2:
                            if rec.release(pool, n_slots, rerequest=True, timeout=0.005):
                                rec.release(pool, n_slots)
                        else:
                            rec.release(pool, n_slots)
                else:
                    target = rng.choice([p for p in pools if p != pool])
                    amount: int | str = "all" if rng.random() < 0.1 else n_slots
                    rec.reallocate(pool, target, amount, timeout=0.01, cancel_if=stop)  # type: ignore[arg-type]
                with count_lock:
                    operations[0] += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def checker() -> None:
        while not stop.is_set():
            try:
                check_invariants(rec)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
                return
            stop.wait(0.001)

    check_thread = start_thread(checker)
    workers = [start_thread(worker, seed) for seed in range(24)]
    for thread in workers:
        thread.join(timeout=60)
    hung = [t for t in workers if t.is_alive()]
    stop.set()
    join(check_thread)
    assert not hung, "deadlock: some workers never finished"
    assert not errors, errors[0]
    assert operations[0] == 24 * 300
    check_invariants(rec)
    # Every slot is free again, wherever it ended up
    for pool, (allocated, available) in rec._snapshot().items():
        assert allocated == available, pool
    with rec._cond:
        assert all(not line for line in rec._waiters.values())


def test_no_deadlock_between_opposite_reallocations() -> None:
    """Transfers a->b and b->a that each need more than is free never lock each other out."""
    rec = ResourceCounter(4, ["a", "b"])
    rec.reallocate(None, "a", 2)
    rec.reallocate(None, "b", 2)
    barrier = threading.Barrier(4)
    results: list[bool] = []
    lock = threading.Lock()

    def move(source: str, target: str) -> None:
        barrier.wait(timeout=WAIT)
        for _ in range(200):
            ok = rec.reallocate(source, target, 2, timeout=WAIT)
            with lock:
                results.append(ok)

    def use(pool: str) -> None:
        barrier.wait(timeout=WAIT)
        for _ in range(200):
            if rec.acquire(pool, 1, timeout=0.01):
                rec.release(pool, 1)

    threads = [
        start_thread(lambda: move("a", "b")),
        start_thread(lambda: move("b", "a")),
        start_thread(lambda: use("a")),
        start_thread(lambda: use("b")),
    ]
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert len(results) == 400 and all(results)
    check_invariants(rec)
    assert rec.allocated_slots("a") + rec.allocated_slots("b") == 4


# ------------------------------------------------------------------------ reallocator thread
def test_reallocator_gathers_to_cap_then_disperses() -> None:
    rec = ResourceCounter(6, ["sim", "ml"])
    rec.reallocate(None, "sim", 6)
    thread = ReallocatorThread(
        rec, gather_from="sim", gather_to="ml", disperse_to="sim", max_slots=4, slot_step=3
    )
    assert thread.daemon
    thread.start()
    wait_for_state(rec, lambda: rec._allocated["ml"] == 4)
    # The cap is respected: the second step only takes the one slot left under the cap
    assert rec.allocated_slots("sim") == 2
    assert rec.acquire("ml", 2)
    thread.stop_event.set()
    # The slots in use must come back before all of "ml" moves to "sim"
    wait_for_state(rec, lambda: waiting(rec, "ml") == 1)
    assert rec.allocated_slots("ml") == 4
    rec.release("ml", 2)
    join(thread)
    assert rec.allocated_slots("ml") == 0
    assert rec.allocated_slots("sim") == 6 and rec.available_slots("sim") == 6


def test_reallocator_without_cap_waits_for_slots() -> None:
    rec = ResourceCounter(3, ["sim", "ml"])
    rec.reallocate(None, "sim", 3)
    assert rec.acquire("sim", 2)
    stop = threading.Event()
    thread = ReallocatorThread(
        rec, "sim", "ml", None, stop_event=stop, logger_name="test.reallocator"
    )
    assert thread.stop_event is stop
    thread.start()
    wait_for_state(rec, lambda: rec._allocated["ml"] == 1 and waiting(rec, "sim") == 1)
    rec.release("sim", 1)
    wait_for_state(rec, lambda: rec._allocated["ml"] == 2)
    stop.set()  # Cancels the pending request for the last slot
    join(thread)
    assert rec.unallocated_slots == 2  # Dispersed to the unallocated pool
    assert rec.allocated_slots("sim") == 1 and rec.available_slots("sim") == 0
    check_invariants(rec)


def test_reallocator_keeps_slots_when_disperse_to_gather_to() -> None:
    rec = ResourceCounter(2, ["ml"])
    thread = ReallocatorThread(rec, None, "ml", "ml", max_slots=2)
    thread.start()
    wait_for_state(rec, lambda: rec._allocated["ml"] == 2)
    thread.stop_event.set()
    join(thread)
    assert rec.allocated_slots("ml") == 2


def test_reallocator_bad_arguments() -> None:
    rec = ResourceCounter(2, ["a", "b"])
    with pytest.raises(ValueError):
        ReallocatorThread(rec, "a", "a", "b")
    with pytest.raises(ValueError):
        ReallocatorThread(rec, "a", "c", "b")
    with pytest.raises(ValueError):
        ReallocatorThread(rec, "a", "b", "a", slot_step=0)
    with pytest.raises(ValueError):
        ReallocatorThread(rec, "a", "b", "a", max_slots=-1)
