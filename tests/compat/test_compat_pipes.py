"""PipeQueues travel to other processes the way the original Colmena's do.

Applications hand their queues to ``multiprocessing.Pool`` workers, to processes of any
start method, and through ``pickle.dumps``; large messages sent at once by several threads
of several processes must each arrive whole.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import pickle
import threading
from collections.abc import Iterator

import pytest

from colmena_core.queue import PipeQueues

START_METHODS = ["fork", "spawn", "forkserver"]


@pytest.fixture(params=START_METHODS)
def pool(request: pytest.FixtureRequest) -> Iterator[mp.pool.Pool]:
    with mp.get_context(request.param).Pool(1) as pool:
        yield pool


def serve_one(queues: PipeQueues) -> str:
    """What a worker does with the queues it was given: answer one task."""
    topic, task = queues.get_task(timeout=60)
    task.deserialize()
    task.set_result(sum(task.args))
    queues.send_result(task)
    return topic


def test_queues_as_pool_arguments(pool: mp.pool.Pool) -> None:
    queues = PipeQueues(topics=["sums"])
    queues.send_inputs(1, 2, method="add", topic="sums")
    assert pool.apply(serve_one, (queues,)) == "sums"
    assert queues.get_result("sums", timeout=60).value == 3

    # The bound methods of the queues pickle too, as do asynchronous calls
    queues.send_inputs(4, method="add")
    topic, task = pool.apply(queues.get_task, (60,))
    assert (topic, task.method) == ("default", "add")
    pending = pool.apply_async(serve_one, (queues,))
    queues.send_inputs(5, 6, method="add")
    assert pending.get(timeout=60) == "default"
    assert queues.get_result(timeout=60).value == 11


def load_and_serve(serialized: bytes) -> None:
    serve_one(pickle.loads(serialized))


@pytest.mark.parametrize("start_method", START_METHODS)
def test_pickled_bytes_work_in_a_child(start_method: str) -> None:
    queues = PipeQueues()
    serialized = pickle.dumps(queues)
    child = mp.get_context(start_method).Process(target=load_and_serve, args=(serialized,))
    child.start()
    try:
        queues.send_inputs(2, 3, method="add")
        assert queues.get_result(timeout=60).value == 5
    finally:
        child.join(timeout=60)
    assert child.exitcode == 0

    # and in this process too, next to the original
    copy = pickle.loads(serialized)
    copy.send_inputs(7, method="add")
    assert queues.get_task(timeout=10)[1].method == "add"


MESSAGE_SIZE = 1_500_000  # far beyond the pipe's buffer: every write is split
PER_THREAD = 3


def payload(sender: str, index: int) -> bytes:
    seed = hashlib.sha256(f"{sender}-{index}".encode()).digest()
    return seed * (MESSAGE_SIZE // len(seed))


def send_large(queues: PipeQueues, name: str, threads: int) -> None:
    def sender(thread: int) -> None:
        for index in range(PER_THREAD):
            who = f"{name}-{thread}"
            queues.send_inputs(who, index, payload(who, index), method="check")

    workers = [threading.Thread(target=sender, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_large_messages_from_many_processes_arrive_whole(start_method: str) -> None:
    queues = PipeQueues()
    context = mp.get_context(start_method)
    children = [context.Process(target=send_large, args=(queues, f"child{c}", 2)) for c in range(3)]
    for child in children:
        child.start()
    here = threading.Thread(target=send_large, args=(queues, "parent", 2))
    here.start()

    received = set()
    try:
        for _ in range((len(children) + 1) * 2 * PER_THREAD):
            _, task = queues.get_task(timeout=120)
            task.deserialize()
            who, index, data = task.args
            assert data == payload(who, index), f"message {index} of {who} was garbled"
            received.add((who, index))
    finally:
        here.join(timeout=60)
        for child in children:
            child.join(timeout=60)
    assert len(received) == (len(children) + 1) * 2 * PER_THREAD
    assert all(child.exitcode == 0 for child in children)
