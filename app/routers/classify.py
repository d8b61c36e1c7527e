"""Placeholder: the classify endpoint is being written; startup/shutdown hooks keep main.py stable."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

router = APIRouter(tags=["classify"])


async def startup(app: FastAPI) -> None:
    """Load models onto the device and register a readiness check in app.state.ready_checks."""


async def shutdown(app: FastAPI) -> None:
    """Release batchers and models."""
