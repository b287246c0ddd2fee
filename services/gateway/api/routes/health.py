"""Probes and metrics, outside the versioned API; no token needed.

Without a token they tell nothing of the clients or the broker: ``/readyz`` omits the
broker's last error and ``/metrics`` sums the client label away. A valid bearer token (or
``COLMENA_PUBLIC_DETAILS``) shows everything.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from ...metrics import CONTENT_TYPE
from ..deps import Gateway, client_for_token


def _private(request: Request, gateway: Gateway) -> bool:
    """Whether the caller may see client names and broker errors."""
    if gateway.settings.public_details:
        return True
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return (
        scheme.lower() == "bearer" and client_for_token(gateway.settings, token.strip()) is not None
    )


router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    """200 while the process serves requests."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness",
    responses={
        503: {"description": "Not connected to the broker, or no room for another result stream"}
    },
)
async def readyz(request: Request, gateway: Gateway) -> Any:
    """200 when connected to the broker, watching the campaign and able to open another
    result stream; 503 otherwise."""
    ready, details = gateway.ready(private=_private(request, gateway))
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", **details}, status_code=200 if ready else 503
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request, gateway: Gateway) -> Response:
    """Counters, gauges and histograms in the Prometheus text format (per client with a
    token)."""
    return Response(
        gateway.metrics.render(with_clients=_private(request, gateway)), media_type=CONTENT_TYPE
    )
