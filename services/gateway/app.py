"""The gateway application: a FastAPI app over one campaign, and the uvicorn server that runs it.

``create_app(settings)`` builds the app; its lifespan connects to the broker (in the
background: the gateway answers, and ``/readyz`` says 503, while the broker is away) and
disconnects at shutdown after pending confirmations. ``serve(settings)`` runs it with
uvicorn until SIGTERM or SIGINT.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from colmena_core.queue.rabbitmq import BrokerConnectionError

from ..common import ServiceConfigError, redacted
from .api.router import API_PREFIX, api_router
from .api.routes import health
from .broker import BrokerUnavailableError
from .metrics import GatewayMetrics
from .models import finite_json
from .service import GatewayService
from .settings import GatewaySettings

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
"""The dashboard's files (served from the package: no CDN)."""

DASHBOARD_POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; frame-ancestors 'none'"
)


class BodySizeLimit:
    """Answers 413 to request bodies larger than ``max_bytes`` (declared or streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> str:
        return f"Request body larger than the {self.max_bytes} bytes this gateway accepts"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    response = JSONResponse({"detail": self._too_large()}, status_code=413)
                    await response(scope, receive, send)
                    return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, detail=self._too_large())
            return message

        await self.app(scope, counting_receive, send)


class ErrorCounter:
    """Counts error responses (status 400 and above) in the metrics."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                self.metrics.errors.labels(str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


def create_app(settings: GatewaySettings) -> FastAPI:
    """The gateway app for the campaign of ``settings``."""
    gateway = GatewayService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        logger.info(
            "Gateway for campaign %r on %s (topics %s)",
            settings.campaign,
            redacted(settings.broker_url),
            gateway.topics,
        )
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(
        title="Colmena gateway",
        summary="Submit tasks to a Colmena campaign and receive their results",
        description=(
            "Authenticate with `Authorization: Bearer <token>` (WebSocket and SSE also take "
            "`?token=`). Each API client sees only its own tasks and results. Results stay "
            "in the broker until written to their client and are delivered at least once: "
            "de-duplicate them by `task_id`."
        ),
        version="1.0.0",
        lifespan=lifespan,
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
    )
    app.state.gateway = gateway

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # As FastAPI answers, with the offending input made valid UTF-8 JSON
        return JSONResponse(
            {"detail": finite_json(jsonable_encoder(exc.errors()))}, status_code=422
        )

    @app.exception_handler(BrokerUnavailableError)
    @app.exception_handler(BrokerConnectionError)
    async def broker_unavailable(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"detail": f"The broker is not available: {exc}"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    app.include_router(api_router)
    app.include_router(health.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(
            STATIC / "index.html", headers={"Content-Security-Policy": DASHBOARD_POLICY}
        )

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(ErrorCounter, metrics=gateway.metrics)
    return app


def serve(settings: GatewaySettings) -> int:
    """Run the gateway with uvicorn until SIGTERM or SIGINT; return the exit code.

    Raises:
        ServiceConfigError: the settings name an impossible campaign or topic
    """
    try:
        app = create_app(settings)
    except ValueError as exc:
        raise ServiceConfigError(str(exc)) from exc
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # keep the service's logging configuration
        access_log=settings.log_level == "DEBUG",
        timeout_graceful_shutdown=5,
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
