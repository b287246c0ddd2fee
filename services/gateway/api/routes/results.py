"""Receive results: WebSocket, Server-Sent Events, or long-poll; acknowledge them.

Delivery semantics (the same on every channel):

* Results wait in the broker, in the client's durable queues, until they are delivered:
  a client that is away, or a gateway that restarts, loses nothing.
* ``ack=auto`` (the default): a result is acknowledged to the broker once it was written
  to the client's connection (the WebSocket send completed, the SSE event was handed to
  the socket, the long-poll's answer was built). A client whose connection breaks may miss
  the results that were written but not read yet.
* A client that stops reading is disconnected after ``send_timeout`` seconds without
  progress; what was not written to it waits in the broker for its next stream.
* A result the gateway cannot encode goes to the campaign's dead letters with the reason;
  the stream goes on.
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
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, WebSocket, status
from fastapi.responses import JSONResponse, Response
from fastapi.sse import KEEPALIVE_COMMENT, format_sse_event
from pydantic import BaseModel, Field
from starlette.types import Message, Receive, Scope, Send

from ...broker import BrokerUnavailableError, Delivery, Subscription
from ...models import ErrorMessage, ResultList
from ...service import GatewayService, LimitReachedError, SeenTasks, TopicError, to_result
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
    503: {
        "model": ErrorMessage,
        "description": "The broker is not reachable, or the gateway "
        "holds as many streams as it can",
    }
}
_LIMITED: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorMessage, "description": "The client holds as many as it may"}
}


def _topics_or_422(gateway: GatewayService, topics: list[str] | None) -> list[str]:
    try:
        return gateway.check_topics(topics)
    except TopicError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[{"loc": ["query", "topic"], "msg": str(exc), "type": "value_error"}],
        ) from None


@dataclass
class Outgoing:
    """A result ready to be written: its delivery, task ID and JSON text."""

    delivery: Delivery
    task_id: str
    text: str


async def _next_result(
    gateway: GatewayService, subscription: Subscription, seen: SeenTasks, timeout: float
) -> Outgoing | None:
    """The next result not delivered by this stream yet, encoded, or ``None`` after
    ``timeout``. Results that cannot be decoded or encoded go to the dead letters."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        delivery = await subscription.get(max(deadline - loop.time(), 0.0))
        if delivery is None:
            return None
        try:
            summary = gateway.decode(delivery.body, delivery.routing_key)
        except Exception as exc:
            await gateway.dead_letter(subscription, delivery, f"undecodable-result: {exc}")
            continue
        # Intermediate results share their task's ID: only final results are de-duplicated
        if summary.complete is not False and not seen.add(summary.task_id):
            subscription.ack(delivery)  # a duplicate of a result this stream delivered
            continue
        try:
            text = to_result(summary).model_dump_json()
        except Exception as exc:  # RecursionError and ValueError of odd values included
            await gateway.dead_letter(
                subscription, delivery, f"unencodable-result: {type(exc).__name__}: {exc}"
            )
            continue
        return Outgoing(delivery, summary.task_id, text)


def result_message(text: str) -> str:
    """A result (its JSON text) as a WebSocket message."""
    return '{"type": "result", "result": ' + text + "}"


def client_gone(receive: Receive) -> bool:
    """Whether the server already knows the HTTP client is gone, asked without waiting.

    An ASGI ``receive`` answers ``http.disconnect`` at once for a connection that is
    gone, and waits otherwise: it is started, and dropped if it would wait. After a write
    that did not have to wait, this says whether the write reached the connection (a
    server writes nothing to a connection it knows is gone).
    """
    probe = receive()
    if not inspect.iscoroutine(probe):  # not a coroutine: cannot ask without waiting
        return False
    try:
        probe.send(None)
    except StopIteration as done:
        return bool(done.value and done.value.get("type") == "http.disconnect")
    probe.close()
    return False


def _before_write(
    gateway: GatewayService, client: str, subscription: Subscription, out: Outgoing, ack: str
) -> None:
    """With ``ack=client``, hold a result before writing it: the client's acknowledgement
    may come back before the write returns."""
    if ack == "client":
        gateway.held.hold(client, out.task_id, subscription, out.delivery)


def _written(subscription: Subscription, out: Outgoing, ack: str) -> None:
    """A result was written: with ``ack=auto``, it leaves the broker."""
    if ack == "auto":
        subscription.ack(out.delivery)


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
class _DeliveringResponse(Response):
    """A JSON answer that settles its results once written (or gives them back)."""

    media_type = "application/json"

    def __init__(
        self, content: bytes, finish: Callable[[bool], Awaitable[None]], timeout: float
    ) -> None:
        super().__init__(content)
        self._finish = finish
        self._timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        written = False
        try:
            if not client_gone(receive):  # a server writes nothing to a gone client
                async with asyncio.timeout(self._timeout):  # a client that does not read
                    await super().__call__(scope, receive, send)
                written = True
        except TimeoutError:
            logger.info("Gave up a long-poll answer: the client does not read it")
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
    responses={**_UNAUTHORIZED, **_LIMITED, **_UNAVAILABLE},
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
    ``POST /results/ack`` (and count among the client's long-polls until then)."""
    topics = _topics_or_422(gateway, topic)
    wait = min(timeout, gateway.settings.long_poll_timeout)
    subscription = await gateway.results(client, topics, prefetch=max_results, kind="poll")
    taken: list[Outgoing] = []
    try:
        await subscription.__aenter__()
        await subscription.wait_subscribed(min(wait, 5.0) if wait else 1.0)
        seen = SeenTasks()
        # Even without waiting, give the broker a moment to hand over what is ready
        first = await _next_result(gateway, subscription, seen, max(wait, 5 * _LINGER))
        if first is not None:
            taken.append(first)
            while len(taken) < max_results:
                more = await _next_result(gateway, subscription, seen, _LINGER)
                if more is None:
                    break
                taken.append(more)
        if taken and await request.is_disconnected():
            await subscription.close()  # nobody to write to: the results stay in the broker
            return JSONResponse({"results": []})
        body = ('{"results": [' + ", ".join(out.text for out in taken) + "]}").encode()
    except BaseException:
        await subscription.close()  # every exit path: the results go back to the broker
        raise

    async def finish(written: bool) -> None:
        if not written or not taken:
            await subscription.close()
            return
        gateway.delivered(client, "poll", len(taken))
        if ack == "auto":
            for out in taken:
                subscription.ack(out.delivery)
            await subscription.close()
            return
        subscription.stop_consuming()  # later results go to the client's next poll
        for out in taken:
            gateway.held.hold(client, out.task_id, subscription, out.delivery)
        lingering = asyncio.create_task(_linger(gateway, subscription))
        _lingering.add(lingering)
        lingering.add_done_callback(_lingering.discard)

    return _DeliveringResponse(body, finish, gateway.settings.send_timeout)


# -------------------------------------------------------------------- SSE
_SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "An event stream: one `result` event per result (JSON data, id = task ID)",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **_UNAUTHORIZED,
    **_LIMITED,
    **_UNAVAILABLE,
}


class _ResultEvents(Response):
    """The event stream of one client's results, settling each once it was written.

    Each write waits at most ``send_timeout`` seconds for the client to take it; a client
    that does not is disconnected, and what was not written stays in the broker.
    """

    media_type = "text/event-stream"

    def __init__(
        self, gateway: GatewayService, client: str, subscription: Subscription, ack: str
    ) -> None:
        super().__init__(headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self._gateway = gateway
        self._client = client
        self._subscription = subscription
        self._ack = ack

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway, client, subscription = self._gateway, self._client, self._subscription

        async def until_gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        async def write(chunk: bytes) -> bool:
            """Write a chunk; ``False`` if it did not reach the connection (the client is
            gone, or does not read)."""
            message: Message = {"type": "http.response.body", "body": chunk, "more_body": True}
            try:
                async with asyncio.timeout(gateway.settings.send_timeout):  # in this task
                    await send(message)
            except TimeoutError:
                gateway.metrics.refuse("slow_client")
                logger.info("Closed an SSE stream of %r: the client stopped reading", client)
                return False
            # Known gone now: it was before the write, or while the write waited for room
            return not client_gone(receive)

        async def stream() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            if not await write(format_sse_event(comment="connected", retry=2000)):
                return
            seen = SeenTasks()
            while True:
                out = await _next_result(gateway, subscription, seen, KEEPALIVE_SECONDS)
                if out is None:
                    if not await write(KEEPALIVE_COMMENT):
                        return
                    continue
                event = format_sse_event(data_str=out.text, event="result", id=out.task_id)
                _before_write(gateway, client, subscription, out, self._ack)
                if not await write(event):
                    return  # not written: back to the broker with the channel
                _written(subscription, out, self._ack)
                gateway.delivered(client, "sse")

        tasks: list[asyncio.Task[None]] = []
        try:
            with gateway.streams.open(client, "sse"):
                async with subscription:
                    # Until the stream ends, or the client goes (which ends the stream)
                    tasks = [asyncio.create_task(stream()), asyncio.create_task(until_gone())]
                    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gateway.held.drop(subscription)
            await subscription.close()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


@router.get("/sse", responses=_SSE_DOC, summary="Stream results (SSE)")
async def stream_results_sse(
    client: StreamClient, gateway: Gateway, topic: Topics = None, ack: AckMode = "auto"
) -> Response:
    """Server-Sent Events: each result of this client as an event named ``result`` whose
    data is the result's JSON and whose ID is its task ID. With ``ack=auto`` each result is
    acknowledged once its event was written; with ``ack=client`` once the client posts it
    to ``/results/ack`` (at most ``result_prefetch`` wait unacknowledged)."""
    topics = _topics_or_422(gateway, topic)
    subscription = await gateway.results(client, topics, gateway.settings.result_prefetch)
    return _ResultEvents(gateway, client, subscription, ack)


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
    missing or invalid; answers HTTP 429 (or 503) with ``Retry-After`` instead of opening
    when the client (or the gateway) holds as many streams as it may.
    """
    gateway: GatewayService = websocket.app.state.gateway
    client = websocket_client(websocket)
    if client is None:
        gateway.metrics.refuse("unauthorized")
        gateway.metrics.errors.labels("1008").inc()
        await websocket.accept()
        await websocket.close(
            code=status.WS_1008_POLICY_VIOLATION, reason="Invalid or missing token"
        )
        return
    try:
        topics = gateway.check_topics(topic)
        subscription = await gateway.results(client, topics, gateway.settings.result_prefetch)
    except TopicError as exc:
        gateway.metrics.errors.labels("1008").inc()
        await websocket.accept()
        await websocket.close(code=status.WS_1008_POLICY_VIOLATION, reason=str(exc)[:120])
        return
    except LimitReachedError as exc:
        await refuse_websocket(websocket, gateway, exc)
        return
    except BrokerUnavailableError:
        gateway.metrics.refuse("broker_unavailable")
        gateway.metrics.errors.labels("1011").inc()
        await websocket.accept()
        await websocket.close(code=status.WS_1011_INTERNAL_ERROR, reason="Broker unavailable")
        return
    stuck = False

    async def receive_acks() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            with contextlib.suppress(ValueError, TypeError, AttributeError, RecursionError):
                data = json.loads(message.get("text") or message.get("bytes") or b"")
                if data.get("type") == "ack":
                    gateway.held.release(client, [str(t) for t in data.get("task_ids") or []])

    async def send_results() -> None:
        nonlocal stuck
        seen = SeenTasks()
        while True:
            out = await _next_result(gateway, subscription, seen, KEEPALIVE_SECONDS)
            if out is None:
                continue
            _before_write(gateway, client, subscription, out, ack)
            try:
                async with asyncio.timeout(gateway.settings.send_timeout):  # in this task
                    await websocket.send_text(result_message(out.text))
            except TimeoutError:
                stuck = True
                gateway.metrics.refuse("slow_client")
                logger.info("Closed a WebSocket of %r: the client stopped reading", client)
                return  # not written: back to the broker with the channel
            _written(subscription, out, ack)
            gateway.delivered(client, "ws")

    try:
        await websocket.accept()
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
    finally:
        await subscription.close()
    if not stuck:  # a stuck socket takes no close frame; the server closes it once we return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(websocket.close(), 5.0)


async def refuse_websocket(
    websocket: WebSocket, gateway: GatewayService, refusal: LimitReachedError
) -> None:
    """Answer a WebSocket handshake with the refusal's HTTP status and ``Retry-After``
    (or, where the server cannot, accept and close with code 1013, try again later)."""
    gateway.metrics.refuse(refusal.reason)
    gateway.metrics.errors.labels(str(refusal.status)).inc()
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(
            JSONResponse(
                {"detail": str(refusal)},
                status_code=refusal.status,
                headers={"Retry-After": str(refusal.retry_after)},
            )
        )
        return
    await websocket.accept()
    await websocket.close(code=status.WS_1013_TRY_AGAIN_LATER, reason=str(refusal)[:120])
