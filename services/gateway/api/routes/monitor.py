"""Watch results as they arrive, read-only: copies that take nothing from anyone.

``GET /monitor/history`` gives monitoring clients the campaign's recent history (the
dashboard's charts and task table): see :mod:`services.gateway.history`.

``scope=own`` (the default) shows the results addressed to the calling client;
``scope=campaign`` shows every result of the campaign and needs a monitoring client
(``COLMENA_GATEWAY_MONITORS``). Copies are best-effort: a watcher that is slow or away
misses results, which stay in their clients' queues regardless.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, HTTPException, Query, WebSocket, status
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse, format_sse_event
from pydantic import BaseModel, Field

from colmena_core.exceptions import BrokerConnectionError, TransportError
from colmena_core.queue import rabbitmq as rabbitmq_admin
from colmena_core.queue.monitor import ResultSummary

from ...models import ErrorMessage, MonitoredResult, finite_json
from ...service import CLIENT_PREFIX, GatewayService, LimitReachedError
from ..deps import Gateway, MonitorClient, StreamClient, websocket_client
from .results import refuse_websocket

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/monitor", tags=["monitor"])

T = TypeVar("T")

Scope = Annotated[
    Literal["own", "campaign"],
    Query(description="'own': this client's results; 'campaign': every result (monitors only)"),
]

_BUFFER = 1000
"""Copies a slow watcher may lag behind before the oldest are dropped."""


class _Copies:
    """Copies of results for one watcher, handed from the monitor's thread to the loop."""

    def __init__(self, gateway: GatewayService, client: str, campaign_wide: bool) -> None:
        self._gateway = gateway
        self._client = client
        self._campaign_wide = campaign_wide
        self._loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[MonitoredResult] = asyncio.Queue(_BUFFER)

    def __call__(self, summary: ResultSummary) -> None:  # runs in the monitor's thread
        if self._gateway.visible_to(self._client, summary, self._campaign_wide):
            self._loop.call_soon_threadsafe(self._put, summary)

    def _put(self, summary: ResultSummary) -> None:
        if self.queue.full():
            self.queue.get_nowait()
        try:
            result = MonitoredResult.from_summary(summary)
        except Exception as exc:  # a value the API cannot show (nested too deep): no copy
            logger.warning("A result copy of task %s cannot be shown (%r)", summary.task_id, exc)
            return
        if summary.client_id:
            result.client = summary.client_id.removeprefix(CLIENT_PREFIX)
        self.queue.put_nowait(result)

    async def get(self, timeout: float) -> MonitoredResult | None:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None


def _allowed(gateway: GatewayService, client: str, scope: str) -> bool:
    return scope == "own" or gateway.is_monitor(client)


@router.get(
    "/sse",
    responses={
        200: {
            "description": "An event stream: one `result` event per result copy",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        401: {"model": ErrorMessage, "description": "No valid token"},
        403: {"model": ErrorMessage, "description": "scope=campaign needs a monitoring client"},
    },
    summary="Watch results (SSE)",
)
async def watch_results_sse(
    client: StreamClient, gateway: Gateway, scope: Scope = "own"
) -> EventSourceResponse:
    """Copies of results as Server-Sent Events named ``result``."""
    if not _allowed(gateway, client, scope):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail="scope=campaign needs a monitoring client"
        )
    copies = _Copies(gateway, client, scope == "campaign")
    release = gateway.admission.take(client, "stream")  # HTTP 429 beyond the client's limit

    async def events() -> AsyncIterator[bytes]:
        with gateway.streams.open(client, "monitor-sse"):
            unsubscribe = gateway.watch(copies)
            try:
                yield format_sse_event(comment="connected", retry=2000)
                while True:
                    result = await copies.get(15.0)
                    if result is None:
                        yield KEEPALIVE_COMMENT
                        continue
                    yield format_sse_event(
                        data_str=json.dumps(finite_json(result.model_dump(mode="json"))),
                        event="result",
                        id=result.task_id,
                    )
            finally:
                unsubscribe()
                release()

    return EventSourceResponse(events(), headers={"Cache-Control": "no-cache"})


@router.websocket("/ws")
async def watch_results_websocket(websocket: WebSocket, scope: Scope = "own") -> None:
    """Copies of results as ``{"type": "result", "result": {...}}`` messages.

    Closes with code 1008 when the token is missing or invalid, or when ``scope=campaign``
    is asked by a client that may not watch the whole campaign.
    """
    gateway: GatewayService = websocket.app.state.gateway
    client = websocket_client(websocket)
    try:
        release = gateway.admission.take(client, "stream") if client else None
    except LimitReachedError as exc:
        await refuse_websocket(websocket, gateway, exc)
        return
    await websocket.accept()
    if client is None or release is None or not _allowed(gateway, client, scope):
        if release is not None:
            release()
        gateway.metrics.errors.labels("1008").inc()
        reason = "Invalid or missing token" if client is None else "Not a monitoring client"
        await websocket.close(code=status.WS_1008_POLICY_VIOLATION, reason=reason)
        return
    copies = _Copies(gateway, client, scope == "campaign")

    async def forward() -> None:
        while True:
            result = await copies.get(15.0)
            if result is not None:  # a watcher that stops reading is let go (bounded)
                async with asyncio.timeout(gateway.settings.send_timeout):
                    await websocket.send_text(
                        json.dumps({"type": "result", "result": result.model_dump(mode="json")})
                    )

    async def until_closed() -> None:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    with gateway.streams.open(client, "monitor-ws"):
        unsubscribe = gateway.watch(copies)
        tasks = [asyncio.create_task(forward()), asyncio.create_task(until_closed())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            unsubscribe()
            release()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
    with contextlib.suppress(Exception):  # a stuck socket takes no close frame
        await asyncio.wait_for(websocket.close(), 5.0)


class HistoryPoint(BaseModel):
    """What happened in the campaign during one interval, and its state at the end of it."""

    time: float = Field(description="End of the interval (Unix time)")
    succeeded: int = Field(description="Results of tasks that completed")
    failed: int = Field(description="Results of tasks that failed")
    latency_p50: float | None = Field(description="Median seconds from creation to result")
    latency_p95: float | None = Field(description="95th percentile of the same")
    running_p50: float | None = Field(description="Median seconds the tasks ran")
    servers: dict[str, dict[str, float | None]] = Field(
        description="Each live task server's tasks in flight (average over the interval, "
        "from its heartbeats) and capacity"
    )
    queues: dict[str, int] | None = Field(
        description="Messages waiting in each queue of the campaign (None: not readable)"
    )


class CampaignHistoryView(BaseModel):
    """The campaign's recent history as the gateway's monitor saw it."""

    started: float = Field(description="When the gateway started recording (Unix time)")
    now: float = Field(description="The gateway's clock")
    interval: float = Field(description="Seconds covered by each point")
    points: list[HistoryPoint]
    recent: list[dict[str, Any]] = Field(
        description="The latest results of every client (copies), oldest first, each with "
        "'seen', when the gateway saw it"
    )
    methods: dict[str, dict[str, int]] = Field(
        description="Results by method since the gateway started: success and failure counts"
    )


@router.get(
    "/history",
    response_model=CampaignHistoryView,
    responses={
        401: {"model": ErrorMessage, "description": "No valid bearer token"},
        403: {"model": ErrorMessage, "description": "Only monitoring clients see the campaign"},
    },
    summary="Recent history of the whole campaign",
)
async def campaign_history(
    client: MonitorClient,
    gateway: Gateway,
    since: Annotated[
        float | None,
        Query(description="Only points and results after this time (a previous 'now')"),
    ] = None,
) -> dict[str, Any]:
    """Throughput, latency, worker utilisation per task server and queue depths over the
    last hour, the latest results of every client, and results by method (monitoring
    clients only: the whole campaign, not only the gateway's clients)."""
    return gateway.history.snapshot(since)


class DeadLetterSelection(BaseModel):
    """Which dead letters to act on."""

    task_ids: list[str] | None = Field(
        default=None,
        max_length=1000,
        description="Only the dead letters of these tasks (default: every one)",
    )


class DeadLettersRequeued(BaseModel):
    """Dead letters sent back to be delivered again."""

    requeued: int = Field(description="How many were sent back")
    task_ids: list[str] = Field(description="Their tasks")
    remaining: int = Field(description="Dead letters left (those that cannot be decoded stay)")


class DeadLettersPurged(BaseModel):
    """Dead letters removed for good."""

    purged: int
    remaining: int = Field(description="Dead letters left")


_DEAD_LETTER_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorMessage, "description": "No valid bearer token"},
    403: {"model": ErrorMessage, "description": "Only monitoring clients handle dead letters"},
    502: {"model": ErrorMessage, "description": "The broker refused the operation"},
    503: {"model": ErrorMessage, "description": "The broker is not available"},
}


async def _admin(function: Callable[..., T], *args: Any) -> T:
    """Run a blocking admin call of the broker; what the broker refuses is a 502."""
    try:
        return await asyncio.to_thread(function, *args)
    except BrokerConnectionError:
        raise  # the app answers 503
    except (TransportError, TimeoutError) as exc:
        raise HTTPException(
            status.HTTP_502_BAD_GATEWAY, detail=f"The broker did not do it: {exc!r}"
        ) from exc


async def _remaining(gateway: GatewayService) -> int:
    depths = await _admin(gateway.monitor.queue_depths, [], None, 5.0)
    return depths.get(gateway.names.dead_letter_queue, 0)


@router.post(
    "/dead-letters/requeue",
    response_model=DeadLettersRequeued,
    responses=_DEAD_LETTER_ERRORS,
    summary="Requeue dead letters",
)
async def requeue_dead_letters(
    client: MonitorClient, gateway: Gateway, selection: DeadLetterSelection | None = None
) -> DeadLettersRequeued:
    """Send the campaign's dead letters (or those of some tasks) back where they came from:
    a request to its method's queue, a result to its client. Messages that cannot be
    decoded stay (monitoring clients only)."""
    settings = gateway.settings
    sent = await _admin(
        rabbitmq_admin.requeue_dead_letters,
        settings.broker_url,
        settings.campaign,
        selection.task_ids if selection else None,
    )
    return DeadLettersRequeued(
        requeued=len(sent),
        task_ids=[letter.task_id for letter in sent if letter.task_id],
        remaining=await _remaining(gateway),
    )


@router.post(
    "/dead-letters/purge",
    response_model=DeadLettersPurged,
    responses=_DEAD_LETTER_ERRORS,
    summary="Purge dead letters",
)
async def purge_dead_letters(
    client: MonitorClient, gateway: Gateway, selection: DeadLetterSelection | None = None
) -> DeadLettersPurged:
    """Remove the campaign's dead letters (or those of some tasks) for good (monitoring
    clients only)."""
    settings = gateway.settings
    purged = await _admin(
        rabbitmq_admin.purge_dead_letters,
        settings.broker_url,
        settings.campaign,
        selection.task_ids if selection else None,
    )
    return DeadLettersPurged(purged=purged, remaining=await _remaining(gateway))
