"""What signing messages with the campaign secret costs (``--suite signing``, a few seconds).

For a task message of each size: the time to encode it for the wire and to decode it,
unsigned and signed (HMAC-SHA256, :mod:`colmena_core.security`). A round trip through a
broker encodes and decodes twice (request and result), so twice the difference is what
signing adds to a round trip of that size. No broker is involved.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from benchmarks.report import table
from colmena_core.models import Result
from colmena_core.models.wire import decode_result, encode_result
from colmena_core.security import MessageSigner, new_secret

SIZES = (1024, 64 * 1024, 1024 * 1024, 16 * 1024 * 1024)


def _per_call(function: Callable[[], Any], budget: float) -> float:
    """Median seconds per call over batches filling about ``budget`` seconds."""
    function()
    start = time.perf_counter()
    function()
    once = max(time.perf_counter() - start, 1e-7)
    batch = max(1, int(budget / 5 / once))
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(batch):
            function()
        samples.append((time.perf_counter() - start) / batch)
    return statistics.median(samples)


def run(repeats: int, quick: bool) -> dict[int, dict[str, float]]:
    """Microseconds to encode and decode a task message of each size, unsigned and signed."""
    signer = MessageSigner(new_secret())
    budget = 0.2 if quick else 1.0
    results: dict[int, dict[str, float]] = {}
    for size in SIZES:
        task = Result(((b"x" * size,), {}), method="echo", serialization_method="pickle")
        task.serialize()
        plain, signed = encode_result(task), encode_result(task, signer)
        results[size] = {
            "encode": _per_call(partial(encode_result, task), budget) * 1e6,
            "encode_signed": _per_call(partial(encode_result, task, signer), budget) * 1e6,
            "decode": _per_call(partial(decode_result, plain), budget) * 1e6,
            "decode_signed": _per_call(partial(decode_result, signed, signer), budget) * 1e6,
        }
    return results


def _size(size: int) -> str:
    return f"{size // 1024 // 1024} MiB" if size >= 1024 * 1024 else f"{size // 1024} KiB"


def section(results: dict[int, dict[str, float]]) -> str:
    """The Markdown table of :func:`run`."""
    rows = []
    for size, m in results.items():
        added = (m["encode_signed"] - m["encode"]) + (m["decode_signed"] - m["decode"])
        rows.append(
            [
                _size(size),
                f"{m['encode']:,.1f} / {m['encode_signed']:,.1f}",
                f"{m['decode']:,.1f} / {m['decode_signed']:,.1f}",
                f"{added:,.1f}",
                f"{2 * added / 1000:,.3f}",
            ]
        )
    return table(
        rows,
        [
            "message (pickled argument)",
            "encode, unsigned / signed (µs)",
            "decode, unsigned / signed (µs)",
            "signing adds per message (µs)",
            "per round trip (ms)",
        ],
    )
