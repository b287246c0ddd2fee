"""Campaign status: queues, live task servers, tasks in flight, dead letters."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ...models import CampaignStatus, DeadLetterList, ErrorMessage
from ..deps import Client, Gateway, MonitorClient

router = APIRouter(prefix="/status", tags=["status"])


@router.get(
    "",
    response_model=CampaignStatus,
    responses={401: {"model": ErrorMessage, "description": "No valid bearer token"}},
    summary="Campaign status",
)
async def campaign_status(client: Client, gateway: Gateway) -> CampaignStatus:
    """Requests waiting by method, live task servers with their methods, capacity and tasks
    in flight, the results waiting for this client, and the number of dead letters."""
    return await gateway.status(client)


@router.get(
    "/dead-letters",
    response_model=DeadLetterList,
    responses={
        401: {"model": ErrorMessage, "description": "No valid bearer token"},
        403: {"model": ErrorMessage, "description": "Only monitoring clients see dead letters"},
    },
    summary="Dead letters of the campaign",
)
async def dead_letters(
    client: MonitorClient,
    gateway: Gateway,
    limit: Annotated[int, Query(ge=1, le=1000, description="Most dead letters to list")] = 100,
) -> DeadLetterList:
    """The oldest messages the campaign could not deliver, left in place (monitoring
    clients only: they belong to every client of the campaign)."""
    return DeadLetterList(dead_letters=await gateway.dead_letters(limit))
