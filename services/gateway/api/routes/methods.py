"""The methods served right now, from the heartbeats of the campaign's task servers."""

from __future__ import annotations

from fastapi import APIRouter

from ...models import ErrorMessage, MethodList
from ..deps import Client, Gateway

router = APIRouter(prefix="/methods", tags=["methods"])


@router.get(
    "",
    response_model=MethodList,
    responses={401: {"model": ErrorMessage, "description": "No valid bearer token"}},
    summary="List the methods served now",
)
async def list_methods(client: Client, gateway: Gateway) -> MethodList:
    """Methods that at least one live task server serves, with those servers' IDs.

    A task server is live while its heartbeats arrive; one that stops announces it, one
    that dies is forgotten when its last heartbeat expires.
    """
    return MethodList(methods=gateway.served_methods())
