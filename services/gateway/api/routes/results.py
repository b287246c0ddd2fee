"""Receive results: WebSocket, Server-Sent Events, or long-poll; acknowledge them.

Delivery semantics (the same on every channel):

* Results wait in the broker, in the client's durable queues, until they are delivered:
  a client that is away, or a gateway that restarts, loses nothing.
* ``ack=auto`` (the default): a result is acknowledged to the broker once it was written
  to the client's connection. A client whose connection breaks may miss the results that
  were written but not read yet.
* ``ack=client``: a result is acknowledged only when the client says it has it, with
  ``POST /results/ack`` (or an ``{"type": "ack", "task_ids": [...]}`` message on the
  WebSocket). Results not acknowledged when their stream ends, or ``ack_timeout`` seconds
  after a long-poll returned them, go back to the broker and come again.
* Delivery is therefore at least once: every result carries its ``task_id``, and clients
  drop duplicates (a stream never sends one task's result twice itself).
* A client's results are shared by its open streams: open one stream per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, WebSocket, status
from fastapi.responses import JSONResponse
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse, format_sse_event
from pydantic import BaseModel, Field
from starlette.types import Receive, Scope, Send

from ...broker import BrokerUnavailableError, Delivery, Subscription
from ...models import ErrorMessage, ResultList, TaskResult
from ...service import GatewayService, SeenTasks, TopicError, to_result
from ..deps import Client, Gateway, StreamClient, websocket_client

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/results", tags=["results"])

Topics = Annotated[
    list[str] | None,
    Query(description="Only results of these topics (repeat the parameter; default: all)"),
]
AckMode = Annotated[
    Literal["auto", "client"],
    Query(
        description="'auto': acknowledged once written; 'client': once the client "
        "acknowledges it (POST /api/v1/results/ack)"
    ),
]

KEEPALIVE_SECONDS = 15.0
"""Idle seconds before an SSE stream sends a keep-alive comment."""

_LINGER = 0.02
"""Seconds a long-poll waits for more results once it has one."""

_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorMessage, "description": "No valid token"}
}
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorMessage, "description": "The broker is not reachable"}
}


def _topics_or_422(gateway: GatewayService, topics: list[str] | None) -> list[str]:
    try:
        return gateway.check_topics(topics)
    except TopicError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[{"loc": ["query", "topic"], "msg": str(exc), "type": "value_error"}],
        ) from None


async def _next_result(
    gateway: GatewayService, subscription: Subscription, seen: SeenTasks, timeout: float
) -> tuple[Delivery, TaskResult] | None:
    """The next result not delivered by this stream yet, or ``None`` after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        delivery = await subscription.get(max(deadline - loop.time(), 0.0))
        if delivery is None:
            return None
        summary = gateway.decode(delivery.body, delivery.routing_key)
        if summary is None:
            subscription.reject(delivery)  # to the dead letters, where it can be inspected
            continue
        if not seen.add(summary.task_id):
            subscription.ack(delivery)  # a duplicate of a result this stream delivered
            continue
        return delivery, to_result(summary)


def result_message(result: TaskResult) -> str:
    """A result as a WebSocket message."""
    return json.dumps({"type": "result", "result": result.model_dump(mode="json")})


# ------------------------------------------------------------ acknowledgements
class Acknowledgement(BaseModel):
    """Results the client has (``ack=client``)."""

    task_ids: list[str] = Field(min_length=1, max_length=10_000)


class Acknowledged(BaseModel):
    """What became of an acknowledgement."""

    acknowledged: list[str] = Field(description="Results removed from the broker")
    unknown: list[str] = Field(
        description="Not waiting for an acknowledgement of this client here (already "
        "acknowledged, or given back to the broker: they come again)"
    )


@router.post(
    "/ack",
    response_model=Acknowledged,
    responses=_UNAUTHORIZED,
    summary="Acknowledge results (ack=client)",
)
async def acknowledge(body: Acknowledgement, client: Client, gateway: Gateway) -> Acknowledged:
    """Tell the gateway the client has these results: they leave the broker."""
    done, unknown = gateway.held.release(client, body.task_ids)
    return Acknowledged(acknowledged=done, unknown=unknown)


# ----------------------------------------------------------------- long-poll
class _DeliveringResponse(JSONResponse):
    """A JSON answer that settles its results once written (or gives them back)."""

    def __init__(
        self, content: Any, finish: Callable[[bool], Awaitable[None]], **kwargs: Any
    ) -> None:
        super().__init__(content, **kwargs)
        self._finish = finish

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        written = False
        try:
            await super().__call__(scope, receive, send)
            written = True
        finally:
            await self._finish(written)


_lingering: set[asyncio.Task[None]] = set()
"""Long-polls whose results wait for the client's acknowledgement."""


async def _linger(gateway: GatewayService, subscription: Subscription) -> None:
    """Keep a long-poll's results until acknowledged or timed out, then give back the rest."""
    try:
        await gateway.held.wait_released(subscription, gateway.settings.ack_timeout)
    finally:
        gateway.held.drop(subscription)
        await subscription.close()


@router.get(
    "",
    response_model=ResultList,
    responses={**_UNAUTHORIZED, **_UNAVAILABLE},
    summary="Wait for results (long-poll)",
)
async def poll_results(
    request: Request,
    client: Client,
    gateway: Gateway,
    topic: Topics = None,
    timeout: Annotated[
        float, Query(ge=0, le=300, description="Longest wait in seconds (capped by the gateway)")
    ] = 20.0,
    max_results: Annotated[
        int, Query(alias="max", ge=1, le=1000, description="Most results to return")
    ] = 100,
    ack: AckMode = "auto",
) -> Any:
    """Results of this client: returns as soon as there is one (with any others ready), or
    an empty list after ``timeout`` seconds. With ``ack=auto`` the results are acknowledged
    once the answer is written; with ``ack=client`` they wait ``ack_timeout`` seconds for
    ``POST /results/ack``."""
    topics = _topics_or_422(gateway, topic)
    wait = min(timeout, gateway.settings.long_poll_timeout)
    subscription = await gateway.results(client, topics, prefetch=max_results)
    await subscription.__aenter__()
    try:
        await subscription.wait_subscribed(min(wait, 5.0) if wait else 1.0)
        seen = SeenTasks()
        taken: list[tuple[Delivery, TaskResult]] = []
        # Even without waiting, give the broker a moment to hand over what is ready
        first = await _next_result(gateway, subscription, seen, max(wait, 5 * _LINGER))
        if first is not None:
            taken.append(first)
            while len(taken) < max_results:
                more = await _next_result(gateway, subscription, seen, _LINGER)
                if more is None:
                    break
                taken.append(more)
    except BaseException:
        await subscription.close()
        raise

    async def finish(written: bool) -> None:
        if not written or not taken:
            await subscription.close()
            return
        gateway.delivered(client, "poll", len(taken))
        if ack == "auto":
            for delivery, _ in taken:
                subscription.ack(delivery)
            await subscription.close()
            return
        subscription.stop_consuming()  # later results go to the client's next poll
        for delivery, result in taken:
            gateway.held.hold(client, result.task_id, subscription, delivery)
        lingering = asyncio.create_task(_linger(gateway, subscription))
        _lingering.add(lingering)
        lingering.add_done_callback(_lingering.discard)

    if taken and await request.is_disconnected():
        await subscription.close()  # nobody to write to: the results stay in the broker
        return JSONResponse({"results": []})
    body = ResultList(results=[result for _, result in taken]).model_dump(mode="json")
    return _DeliveringResponse(body, finish)


# -------------------------------------------------------------------- SSE
_SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "An event stream: one `result` event per result (JSON data, id = task ID)",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **_UNAUTHORIZED,
    **_UNAVAILABLE,
}


@router.get("/sse", responses=_SSE_DOC, summary="Stream results (SSE)")
async def stream_results_sse(
    client: StreamClient, gateway: Gateway, topic: Topics = None, ack: AckMode = "auto"
) -> EventSourceResponse:
    """Server-Sent Events: each result of this client as an event named ``result`` whose
    data is the result's JSON and whose ID is its task ID. With ``ack=auto`` each result is
    acknowledged once its event was written; with ``ack=client`` once the client posts it
    to ``/results/ack`` (at most ``result_prefetch`` wait unacknowledged)."""
    topics = _topics_or_422(gateway, topic)
    subscription = await gateway.results(client, topics, gateway.settings.result_prefetch)

    async def events() -> AsyncIterator[bytes]:
        with gateway.streams.open(client, "sse"):
            async with subscription:
                try:
                    seen = SeenTasks()
                    yield format_sse_event(comment="connected", retry=2000)
                    while True:
                        found = await _next_result(gateway, subscription, seen, KEEPALIVE_SECONDS)
                        if found is None:
                            yield KEEPALIVE_COMMENT
                            continue
                        delivery, result = found
                        yield format_sse_event(
                            data_str=result.model_dump_json(), event="result", id=result.task_id
                        )
                        # Resumed: the server has written the event
                        if ack == "auto":
                            subscription.ack(delivery)
                        else:
                            gateway.held.hold(client, result.task_id, subscription, delivery)
                        gateway.delivered(client, "sse")
                finally:
                    gateway.held.drop(subscription)

    return EventSourceResponse(events(), headers={"Cache-Control": "no-cache"})


# -------------------------------------------------------------- WebSocket
@router.websocket("/ws")
async def stream_results_websocket(
    websocket: WebSocket,
    ack: Annotated[Literal["auto", "client"], Query()] = "auto",
    topic: Topics = None,
) -> None:
    """WebSocket: ``{"type": "result", "result": {...}}`` for each result of this client.

    With ``ack=client`` the client acknowledges results with
    ``{"type": "ack", "task_ids": [...]}`` (or ``POST /results/ack``); unacknowledged ones
    are delivered again on the next connection. Closes with code 1008 when the token is
    missing or invalid.
    """
    gateway: GatewayService = websocket.app.state.gateway
    await websocket.accept()
    client = websocket_client(websocket)
    if client is None:
        gateway.metrics.errors.labels("1008").inc()
        await websocket.close(
            code=status.WS_1008_POLICY_VIOLATION, reason="Invalid or missing token"
        )
        return
    try:
        topics = gateway.check_topics(topic)
        subscription = await gateway.results(client, topics, gateway.settings.result_prefetch)
    except TopicError as exc:
        gateway.metrics.errors.labels("1008").inc()
        await websocket.close(code=status.WS_1008_POLICY_VIOLATION, reason=str(exc)[:120])
        return
    except BrokerUnavailableError:
        gateway.metrics.errors.labels("1011").inc()
        await websocket.close(code=status.WS_1011_INTERNAL_ERROR, reason="Broker unavailable")
        return

    async def receive_acks() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                data = json.loads(message.get("text") or message.get("bytes") or b"")
                if data.get("type") == "ack":
                    gateway.held.release(client, [str(t) for t in data.get("task_ids") or []])

    async def send_results() -> None:
        seen = SeenTasks()
        while True:
            found = await _next_result(gateway, subscription, seen, KEEPALIVE_SECONDS)
            if found is None:
                continue
            delivery, result = found
            await websocket.send_text(result_message(result))
            if ack == "client":
                gateway.held.hold(client, result.task_id, subscription, delivery)
            else:
                subscription.ack(delivery)
            gateway.delivered(client, "ws")

    with gateway.streams.open(client, "ws"):
        async with subscription:
            tasks = [asyncio.create_task(receive_acks()), asyncio.create_task(send_results())]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gateway.held.drop(subscription)
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
    with contextlib.suppress(Exception):
        await websocket.close()
