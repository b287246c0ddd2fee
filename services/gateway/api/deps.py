"""Dependencies of the routes: settings, the gateway service, and who the caller is.

Every API client authenticates with a bearer token (``Authorization: Bearer <token>``);
the token names the client, and a client sees only its own tasks and results. Browsers
cannot set headers on WebSockets or ``EventSource``: those endpoints also accept the token
as a ``token`` query parameter or a ``colmena_token`` cookie.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request, WebSocket, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..service import GatewayService
from ..settings import GatewaySettings

TOKEN_COOKIE = "colmena_token"
"""Cookie that may carry the API token (for browsers)."""

ANONYMOUS = "anonymous"
"""The client of every caller in development mode without tokens."""

_bearer = HTTPBearer(
    auto_error=False,
    description="API token of the client: `Authorization: Bearer <token>`",
)


def get_gateway(request: Request) -> GatewayService:
    """The gateway service of the app."""
    gateway: GatewayService = request.app.state.gateway
    return gateway


def get_settings(request: Request) -> GatewaySettings:
    """The settings of the app."""
    return get_gateway(request).settings


Gateway = Annotated[GatewayService, Depends(get_gateway)]
Settings = Annotated[GatewaySettings, Depends(get_settings)]


def client_for_token(settings: GatewaySettings, token: str | None) -> str | None:
    """The client a token belongs to, or ``None`` (compared in constant time)."""
    tokens = settings.tokens
    if not tokens and settings.env == "development":
        return ANONYMOUS
    if not token:
        return None
    found = None
    for known, client in tokens.items():
        if hmac.compare_digest(known.encode(), token.encode()):
            found = client
    return found


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"}
    )


def _check(settings: GatewaySettings, token: str | None) -> str:
    client = client_for_token(settings, token)
    if client is None:
        raise _unauthorized("Missing bearer token" if not token else "Invalid token")
    return client


def require_client(
    settings: Settings,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The client of the bearer token (HTTP 401 without a valid one)."""
    return _check(settings, credentials.credentials if credentials else None)


def require_stream_client(
    request: Request,
    settings: Settings,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    token: Annotated[
        str | None,
        Query(description="API token, for clients that cannot set headers (browsers)"),
    ] = None,
) -> str:
    """The client of the bearer token, the ``token`` query parameter or the cookie."""
    given = credentials.credentials if credentials else token or request.cookies.get(TOKEN_COOKIE)
    return _check(settings, given)


Client = Annotated[str, Depends(require_client)]
StreamClient = Annotated[str, Depends(require_stream_client)]


def require_monitor(client: Client, gateway: Gateway) -> str:
    """The client, if it may watch the whole campaign (HTTP 403 otherwise)."""
    if not gateway.is_monitor(client):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"Client {client!r} may not watch the whole campaign "
            "(see COLMENA_GATEWAY_MONITORS)",
        )
    return client


MonitorClient = Annotated[str, Depends(require_monitor)]


def websocket_client(websocket: WebSocket) -> str | None:
    """The client of a WebSocket's token (header, ``token`` query parameter or cookie)."""
    settings: GatewaySettings = websocket.app.state.gateway.settings
    header = websocket.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    token = value.strip() if scheme.lower() == "bearer" else None
    token = token or websocket.query_params.get("token") or websocket.cookies.get(TOKEN_COOKIE)
    return client_for_token(settings, token)
