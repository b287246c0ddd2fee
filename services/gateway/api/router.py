"""The versioned API: every resource's routes under one prefix."""

from __future__ import annotations

from fastapi import APIRouter

from .routes import methods, monitor, results, status, tasks

API_PREFIX = "/api/v1"

api_router = APIRouter(prefix=API_PREFIX)
for module in (tasks, results, methods, status, monitor):
    api_router.include_router(module.router)
