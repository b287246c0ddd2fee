"""Utilities for moving large objects through ProxyStore instead of the task queues.

Large task inputs and results are put in a ProxyStore ``Store`` and only a small proxy
(a few hundred bytes) travels through the queue; the proxy resolves itself where the
object is used. This module must not import any queue or task server code.
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import proxystore.store.factory as factory_module
from proxystore.proxy import Proxy, extract, get_factory, is_resolved
from proxystore.store import Store, register_store
from proxystore.store import get_store as _registered_store
from proxystore.store.config import StoreConfig
from proxystore.store.factory import StoreFactory
from proxystore.store.utils import get_key, resolve_async

__all__ = [
    "ProxyJSONSerializationWarning",
    "get_store",
    "merge_proxy_timing",
    "proxy_json_encoder",
    "register_store",
    "resolve_proxies_async",
    "store_proxy_stats",
]


def _fresh_resolver_pool() -> None:
    # ProxyStore resolves proxies asynchronously on a thread pool made when it is imported.
    # A child made by fork (a task server started from a thinker) inherits that pool
    # without its threads, and its asynchronous resolutions would wait forever: give the
    # child a pool of its own.
    factory_module._default_pool = ThreadPoolExecutor()


os.register_at_fork(after_in_child=_fresh_resolver_pool)


class ProxyJSONSerializationWarning(Warning):
    """An unresolved proxy was replaced by a placeholder while encoding JSON."""


def get_store(name: str, config: dict[str, Any] | None = None) -> Store[Any] | None:
    """Get a Store by name, or create and register it from its configuration.

    Args:
        name: Name of the store.
        config: Output of ``store.config()`` (as a model or a plain dict), used to build the
            store when no store of that name is registered in this process.

    Returns:
        The registered store, a newly built one, or ``None`` when it is unknown and no
        configuration was given.
    """
    store = _registered_store(name)
    if store is not None or config is None:
        return store
    store_config = config if isinstance(config, StoreConfig) else StoreConfig.model_validate(config)
    store = Store.from_config(store_config)
    register_store(store, exist_ok=True)
    return _registered_store(name) or store


def proxy_json_encoder(proxy: Proxy[Any]) -> Any:
    """``default=`` hook for :func:`json.dumps` that tolerates proxies.

    A resolved proxy is replaced by its target. An unresolved one is replaced by a
    placeholder string and a :class:`ProxyJSONSerializationWarning`, so that encoding never
    triggers an expensive, surprising resolution.

    Raises:
        TypeError: if ``proxy`` is not a proxy.
    """
    if not isinstance(proxy, Proxy):
        raise TypeError(f"Object of type {type(proxy).__name__} is not JSON serializable")
    if is_resolved(proxy):
        return extract(proxy)
    warnings.warn(
        "Encoding an unresolved proxy as a placeholder string; resolve it first to encode "
        "its value",
        ProxyJSONSerializationWarning,
        stacklevel=2,
    )
    return f"<Unresolved Proxy at {id(proxy)}>"


def _walk_proxies(obj: Any) -> list[Proxy[Any]]:
    if isinstance(obj, Proxy):
        return [obj]
    if isinstance(obj, dict):
        return [p for value in obj.values() for p in _walk_proxies(value)]
    if isinstance(obj, list | tuple):
        return [p for value in obj for p in _walk_proxies(value)]
    return []


def resolve_proxies_async(
    args: object | list[Any] | tuple[Any, ...] | dict[str, Any],
) -> list[Proxy[Any]]:
    """Start resolving, in the background, every unresolved proxy inside ``args``.

    Returns:
        The proxies found, resolved or not.
    """
    proxies = _walk_proxies(args)
    for proxy in proxies:
        if not is_resolved(proxy):
            resolve_async(proxy)
    return proxies


_NANOSECOND_TIMES = ("factory.",)
"""Prefixes of the events ProxyStore 1.x times in nanoseconds, though under ``*_ms`` names."""

_TIME_FIELDS = ("avg_time_ms", "min_time_ms", "max_time_ms", "last_time_ms")


def _stats_in_ms(name: str, stats: dict[str, Any]) -> dict[str, Any]:
    """The statistics of one event, with every ``*_time_ms`` field in milliseconds."""
    if not name.startswith(_NANOSECOND_TIMES):
        return stats
    return {
        field: value / 1e6 if field in _TIME_FIELDS and value != math.inf else value
        for field, value in stats.items()
    }


def store_proxy_stats(proxy: Proxy[Any], proxy_timing: dict[str, dict[str, Any]]) -> None:
    """Record what ProxyStore measured about ``proxy`` in ``proxy_timing``, as the original.

    ``proxy_timing`` gets one entry per proxy, under the string form of its key, shaped as
    ProxyStore's metrics: ``{"attributes": {...}, "counters": {...}, "times": {event:
    {"count", "avg_time_ms", "min_time_ms", "max_time_ms", "last_time_ms", ...}}}``. Calling
    it again for the same proxy (e.g. once created, once resolved) merges the new figures in.
    All times are in milliseconds (ProxyStore 1.x reports its ``factory.*`` events in
    nanoseconds; they are converted). Only stores created with ``metrics=True`` measure
    anything: for other proxies the entry stays empty.
    """
    key = str(get_key(proxy))
    entry = proxy_timing.setdefault(key, {})
    for part in ("attributes", "counters", "times"):
        entry.setdefault(part, {})
    factory = get_factory(proxy)
    if not isinstance(factory, StoreFactory):
        return
    store = _registered_store(factory.store_config.name)
    if store is None or store.metrics is None:
        return
    metrics = store.metrics.get_metrics(proxy)
    if metrics is None:
        return
    entry["attributes"].update(metrics.attributes)
    entry["counters"].update(metrics.counters)
    entry["times"].update(
        {name: _stats_in_ms(name, stats.as_dict()) for name, stats in metrics.times.items()}
    )


def merge_proxy_timing(
    proxy_timing: dict[str, dict[str, Any]], other: dict[str, dict[str, Any]]
) -> None:
    """Add the entries of ``other`` (from another process) to ``proxy_timing``.

    The entries of a proxy seen in both (created by the client, resolved by the worker) are
    merged part by part, so neither side's figures are lost.
    """
    for key, entry in other.items():
        mine = proxy_timing.setdefault(key, {})
        for part, values in entry.items():
            if isinstance(values, dict) and isinstance(mine.get(part), dict):
                mine[part].update(values)
            else:
                mine[part] = values


class _Presized:
    """A serializer that hands ProxyStore bytes we already produced (no second pickle)."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __call__(self, obj: Any) -> bytes:
        return self.payload


def proxy_serialized(store: Store[Any], obj: Any, payload: bytes, evict: bool) -> Proxy[Any]:
    """Put an object whose pickle is already known into ``store`` and return its proxy."""
    proxy: Proxy[Any] = store.proxy(
        obj, evict=evict, serializer=_Presized(payload), deserializer=pickle.loads
    )
    return proxy
