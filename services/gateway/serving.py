"""How the gateway presents itself to an operator: its API documentation, served from a
package (no CDN: it works offline), one log line when it starts and when it stops, and the
record of its clients' results (``--results-file``)."""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from ..common import wind_down_quietly
from ..record import ResultsFile

if TYPE_CHECKING:
    from .service import GatewayService

logger = logging.getLogger(__name__)

DOCS_ASSETS = "/api-docs-assets"
"""Where the gateway serves the files of Swagger UI (those of the fastapi-offline package)."""


def swagger_ui_assets() -> Path:
    """The folder of Swagger UI's script, style sheet and icon, as installed with the gateway."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).resolve().parent / "static"


def add_api_docs(app: FastAPI, prefix: str) -> None:
    """Serve Swagger UI for the app's OpenAPI document at ``{prefix}/docs``, with its assets.

    Create the app with ``docs_url=None`` (FastAPI's own page loads them from a CDN).
    """
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_assets()), name="api-docs-assets")

    @app.get(f"{prefix}/docs", include_in_schema=False)
    async def api_docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=f"{prefix}/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        )


class GatewayServer(uvicorn.Server):
    """uvicorn's server, saying in one line where it listens and in one line that it stops
    (uvicorn's own lines about both are below WARNING unless the log level is DEBUG)."""

    def __init__(self, config: uvicorn.Config, docs_path: str) -> None:
        super().__init__(config)
        self.docs_path = docs_path
        if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
            logging.getLogger("uvicorn.error").setLevel(logging.WARNING)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            host = self.config.host
            shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
            port = self.config.port
            for server in getattr(self, "servers", []):  # the port taken when asked for 0
                for sock in server.sockets:
                    port = sock.getsockname()[1]
            logger.info(
                "Gateway listening on http://%s:%d (API documentation: http://%s:%d%s)",
                shown,
                port,
                shown,
                port,
                self.docs_path,
            )

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            logger.info(
                "Received %s: closing the connections, then stopping", signal.Signals(sig).name
            )
            wind_down_quietly()
        super().handle_exit(sig, frame)


def record_results(gateway: GatewayService, path: Path) -> Callable[[], None]:
    """Append the results for the gateway's API clients to ``path`` as they arrive (from
    the copies its monitor sees); returns the function that stops and closes the file."""
    from colmena_core.queue.monitor import ResultSummary

    from .service import CLIENT_PREFIX

    results = ResultsFile(path, recorder="gateway")

    def record(summary: ResultSummary) -> None:
        if (summary.client_id or "").startswith(CLIENT_PREFIX):
            results.record_summary(summary)

    unsubscribe = gateway.watch(record)

    def stop() -> None:
        unsubscribe()
        results.close()

    return stop
