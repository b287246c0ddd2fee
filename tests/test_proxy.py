"""ProxyStore helpers: finding stores, JSON encoding of proxies, async resolution, stats."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proxystore.connectors.file import FileConnector
from proxystore.proxy import Proxy, is_resolved
from proxystore.store import Store, unregister_store
from proxystore.store.utils import get_key

from colmena_core.models import Result
from colmena_core.proxy import (
    ProxyJSONSerializationWarning,
    get_store,
    proxy_json_encoder,
    resolve_proxies_async,
    store_proxy_stats,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store[Any]]:
    name = f"test-{uuid.uuid4().hex[:8]}"
    with Store(
        name, FileConnector(str(tmp_path / "store"), clear=True), register=True, metrics=True
    ) as s:
        yield s
    unregister_store(name)


def test_get_store_by_name_and_from_config(store: Store[Any]) -> None:
    assert get_store(store.name) is store
    assert get_store("never-registered") is None
    config = store.config().model_dump()
    unregister_store(store.name)
    rebuilt = get_store(store.name, config)
    assert rebuilt is not None and rebuilt.name == store.name
    assert get_store(store.name) is rebuilt


def test_json_encoder_uses_resolved_values_and_warns_for_unresolved(store: Store[Any]) -> None:
    resolved: Proxy[list[int]] = store.proxy([1, 2], populate_target=True)
    assert json.loads(json.dumps({"x": resolved}, default=proxy_json_encoder)) == {"x": [1, 2]}

    unresolved: Proxy[list[int]] = store.proxy([3], populate_target=False)
    with pytest.warns(ProxyJSONSerializationWarning):
        placeholder = proxy_json_encoder(unresolved)
    assert "Unresolved Proxy" in placeholder
    assert not is_resolved(unresolved)

    with pytest.raises(TypeError):
        proxy_json_encoder(object())  # type: ignore[arg-type]


def test_resolve_proxies_async_finds_nested_proxies(store: Store[Any]) -> None:
    first: Proxy[str] = store.proxy("a", populate_target=False)
    second: Proxy[str] = store.proxy("b", populate_target=False)
    found = resolve_proxies_async(((first, 1), {"k": [second]}))
    assert found == [first, second] or set(map(id, found)) == {id(first), id(second)}
    assert first == "a" and second == "b"


def test_store_proxy_stats_records_timings(store: Store[Any]) -> None:
    proxy: Proxy[bytes] = store.proxy(b"x" * 1000, populate_target=False)
    timing: dict[str, dict[str, Any]] = {}
    store_proxy_stats(proxy, timing)  # created: the store measured the put
    start = time.perf_counter()
    assert proxy == b"x" * 1000
    elapsed_ms = (time.perf_counter() - start) * 1000
    store_proxy_stats(proxy, timing)  # resolved: merged into the same entry

    # One entry per proxy, shaped as ProxyStore's metrics (as the original Colmena)
    assert list(timing) == [str(get_key(proxy))]
    (entry,) = timing.values()
    assert set(entry) == {"attributes", "counters", "times"}
    assert {"store.put", "factory.resolve"} <= set(entry["times"])
    resolve = entry["times"]["factory.resolve"]
    assert resolve["count"] == 1
    # ProxyStore 1.x records factory times in nanoseconds: they are reported in ms
    assert 0 < resolve["avg_time_ms"] <= elapsed_ms
    assert resolve["last_time_ms"] == resolve["avg_time_ms"]


def test_store_proxy_stats_without_metrics(tmp_path: Path) -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"
    with Store(name, FileConnector(str(tmp_path / "plain"), clear=True), register=True) as plain:
        proxy: Proxy[int] = plain.proxy(1)
        timing: dict[str, dict[str, Any]] = {}
        store_proxy_stats(proxy, timing)
    unregister_store(name)
    assert timing == {str(get_key(proxy)): {"attributes": {}, "counters": {}, "times": {}}}


def _child_resolves(message: bytes, out: Any) -> None:
    from colmena_core.models.wire import decode_result

    result = decode_result(message)
    result.deserialize()
    out.put(bytes(result.args[0][:3]) + str(len(result.args[0])).encode())


def test_large_input_travels_by_proxy_to_another_process(store: Store[Any]) -> None:
    from colmena_core.models.wire import encode_result

    big = b"abc" + b"z" * 2_000_000
    result = Result(
        ((big,), {}),
        serialization_method="pickle",
        proxystore_name=store.name,
        proxystore_threshold=10_000,
        proxystore_config=store.config().model_dump(),
    )
    _, proxies = result.serialize()
    assert len(proxies) == 1
    message = encode_result(result)
    assert len(message) < 10_000

    context = mp.get_context("spawn")
    out = context.Queue()
    child = context.Process(target=_child_resolves, args=(message, out))
    child.start()
    try:
        assert out.get(timeout=60) == b"abc" + str(len(big)).encode()
    finally:
        child.join(timeout=30)
    assert child.exitcode == 0


def _resolve_asynchronously(proxy: Proxy[bytes], out: Any) -> None:
    resolve_proxies_async([proxy])
    out.put(bytes(proxy[:3]))


def test_asynchronous_resolution_in_a_forked_child(store: Store[Any]) -> None:
    """A task server forked from a process that resolved proxies asynchronously still can."""
    first: Proxy[bytes] = store.proxy(b"one", populate_target=False)
    resolve_proxies_async([first])  # starts ProxyStore's pool of resolver threads here
    assert first == b"one"

    context = mp.get_context("fork")
    out = context.Queue()
    child = context.Process(
        target=_resolve_asynchronously, args=(store.proxy(b"two", populate_target=False), out)
    )
    child.start()
    try:
        assert out.get(timeout=30) == b"two"
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0


def test_small_inputs_and_json_tasks_do_not_use_proxies(store: Store[Any]) -> None:
    for method, payload in (("pickle", b"small"), ("json", "x" * 50_000)):
        result = Result(
            ((payload,), {}),
            serialization_method=method,
            proxystore_name=store.name,
            proxystore_threshold=10_000,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _, proxies = result.serialize()
        assert proxies == []


def test_proxied_inputs_are_evicted_once_the_result_arrives(store: Store[Any]) -> None:
    from colmena_core.queue import PipeQueues
    from colmena_core.task_server.base import run_and_record_timing

    queues = PipeQueues(proxystore_name=store.name, proxystore_threshold=10_000, keep_inputs=False)
    kept = PipeQueues(proxystore_name=store.name, proxystore_threshold=10_000, keep_inputs=True)
    for q in (queues, kept):
        q.send_inputs(b"x" * 50_000, method="size")
        _, task = q.get_task(timeout=10)
        q.send_result(run_and_record_timing(len, task))

    # keep_inputs=False: the client evicts the input once the task is done
    result = queues.get_result(timeout=10)
    assert result is not None and result.value == 50_000
    # keep_inputs=True: the result hands the proxy back, so it must still resolve
    returned = kept.get_result(timeout=10)
    assert returned is not None and returned.args[0] == b"x" * 50_000
    stored = [f for f in Path(store.connector.store_dir).iterdir() if f.suffix != ".ready"]
    assert len(stored) == 1, "only the input handed back to the client stays in the store"
