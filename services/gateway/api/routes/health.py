"""Probes and metrics, outside the versioned API and without authentication."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from ...metrics import CONTENT_TYPE
from ..deps import Gateway

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    """200 while the process serves requests."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness",
    responses={503: {"description": "Not connected to the broker"}},
)
async def readyz(gateway: Gateway) -> Any:
    """200 when connected to the broker and watching the campaign, 503 otherwise."""
    ready, details = gateway.ready()
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", **details}, status_code=200 if ready else 503
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}},
)
async def metrics(gateway: Gateway) -> Response:
    """Counters and gauges in the Prometheus text format."""
    return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)
