"""The gateway application: a FastAPI app over one campaign, and the uvicorn server that runs it.

``create_app(settings)`` builds the app; its lifespan connects to the broker (in the
background: the gateway answers, and ``/readyz`` says 503, while the broker is away) and
disconnects at shutdown after pending confirmations. ``serve(settings)`` runs it with
uvicorn until SIGTERM or SIGINT.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from colmena_core.queue.rabbitmq import BrokerConnectionError

from ..common import ServiceConfigError, check_port, redacted
from .api.router import API_PREFIX, api_router
from .api.routes import health
from .broker import BrokerUnavailableError
from .guard import Guard, install_redactor
from .models import finite_json
from .service import GatewayService, LimitReachedError
from .serving import GatewayServer, add_api_docs, record_results
from .settings import GatewaySettings

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
"""The dashboard's files (served from the package: no CDN)."""


def _client_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Validation errors as the client may see them: location, message and type, and the
    offending input only when it is a short scalar (never bytes that are not text)."""
    shown = []
    for error in errors:
        entry: dict[str, Any] = {
            "loc": [str(part) if not isinstance(part, int) else part for part in error["loc"]],
            "msg": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        value = error.get("input")
        if isinstance(value, bytes):
            value = value[:200].decode("utf-8", "replace")
        if (
            value is None
            or isinstance(value, bool | int | float)
            or (isinstance(value, str) and len(value) <= 200)
        ):
            entry["input"] = value
        shown.append(entry)
    result: list[dict[str, Any]] = finite_json(shown)
    return result


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
        stop_recording = (
            record_results(gateway, settings.results_file) if settings.results_file else None
        )
        try:
            yield
        finally:
            if stop_recording is not None:
                stop_recording()
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
        docs_url=None,  # add_api_docs serves them without a CDN
        redoc_url=None,
    )
    app.state.gateway = gateway

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        gateway.metrics.refuse("invalid")
        return JSONResponse({"detail": _client_errors(exc.errors())}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        cause = exc.__cause__
        if exc.status_code == 400 and isinstance(cause, ValueError):
            # FastAPI's answer to a body its JSON parser refused with something else than
            # a decode error (an integer of more digits than Python converts, say)
            gateway.metrics.refuse("invalid")
            return JSONResponse({"detail": f"The body is not valid JSON: {cause}"}, 400)
        if exc.status_code == 403:  # a campaign-wide view asked by an ordinary client
            gateway.metrics.refuse("forbidden")
        return await http_exception_handler(request, exc)

    @app.exception_handler(LimitReachedError)
    async def limit_reached(request: Request, exc: LimitReachedError) -> JSONResponse:
        gateway.metrics.refuse(exc.reason)
        return JSONResponse(
            {"detail": str(exc)},
            status_code=exc.status,
            headers={"Retry-After": str(exc.retry_after)},
        )

    @app.exception_handler(BrokerUnavailableError)
    @app.exception_handler(BrokerConnectionError)
    async def broker_unavailable(request: Request, exc: Exception) -> JSONResponse:
        gateway.metrics.refuse("broker_unavailable")
        return JSONResponse(
            {"detail": f"The broker is not available: {exc}"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    app.include_router(api_router)
    app.include_router(health.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    add_api_docs(app, API_PREFIX)

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.add_middleware(Guard, settings=settings, metrics=gateway.metrics)
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
    install_redactor(settings.tokens)
    check_port(settings.host, settings.port, "the gateway", "--port")
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # keep the service's logging configuration
        access_log=settings.log_level == "DEBUG",
        timeout_graceful_shutdown=5,
        proxy_headers=False,
        server_header=False,
        ws_max_size=max(settings.max_request_bytes, 1 << 20),
    )
    server = GatewayServer(config, f"{API_PREFIX}/docs")
    server.run()
    return 0 if server.started else 1
