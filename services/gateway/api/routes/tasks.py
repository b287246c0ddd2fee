"""Submit tasks: one, or a batch. Answered once the broker has every task (HTTP 202)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from ...models import BatchSubmitted, ErrorMessage, Submitted, TaskBatch, TaskRequest
from ...service import TaskTooLargeError, TopicError
from ..deps import Client, Gateway

router = APIRouter(prefix="/tasks", tags=["tasks"])

_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorMessage, "description": "No valid bearer token"},
    413: {
        "model": ErrorMessage,
        "description": "Request body larger than the gateway accepts, or a task larger than "
        "the broker takes",
    },
    503: {"model": ErrorMessage, "description": "The broker did not accept the tasks in time"},
}


def _unprocessable(location: list[str | int], message: str) -> HTTPException:
    """A 422 shaped like FastAPI's validation errors."""
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail=[{"loc": ["body", *location], "msg": message, "type": "value_error"}],
    )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Submitted,
    responses=_ERRORS,
    summary="Submit one task",
)
async def submit_task(task: TaskRequest, client: Client, gateway: Gateway) -> Submitted:
    """Queue one task for the campaign's task servers.

    Inputs travel as JSON. The answer comes once the broker confirmed the task: from then
    on it is not lost, whatever happens to the gateway. Its result is delivered to this
    client only, by WebSocket, Server-Sent Events or long-poll.
    """
    try:
        (task_id,) = await gateway.submit(client, [task])
    except TopicError as exc:
        raise _unprocessable(["topic"], str(exc)) from None
    except TaskTooLargeError as exc:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=str(exc)) from None
    return Submitted(
        task_id=task_id,
        method=task.method,
        topic=task.topic,
        warning=gateway.unserved_warning([task.method]),
    )


@router.post(
    "/batch",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BatchSubmitted,
    responses=_ERRORS,
    summary="Submit several tasks",
)
async def submit_batch(batch: TaskBatch, client: Client, gateway: Gateway) -> BatchSubmitted:
    """Queue several tasks at once; the task IDs come back in the order of the tasks."""
    limit = gateway.settings.max_batch
    if len(batch.tasks) > limit:
        raise _unprocessable(
            ["tasks"], f"A batch holds at most {limit} tasks, not {len(batch.tasks)}"
        )
    for index, task in enumerate(batch.tasks):
        try:
            gateway.check_topics([task.topic])
        except TopicError as exc:
            raise _unprocessable(["tasks", index, "topic"], str(exc)) from None
    try:
        task_ids = await gateway.submit(client, batch.tasks)
    except TaskTooLargeError as exc:  # none of the batch was sent
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=str(exc)) from None
    return BatchSubmitted(
        task_ids=task_ids, warning=gateway.unserved_warning([t.method for t in batch.tasks])
    )
