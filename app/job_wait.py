"""``Prefer: wait=N`` (RFC 7240): hold a job request until the job ends, for at most N seconds.

A script that queues a short job otherwise needs a polling loop or an event-stream client. With the
header, ``GET /jobs/{id}/result`` answers with the result as soon as the job finishes (or with the
usual 409 if it has not ended within the wait), ``GET /jobs/{id}`` and the job submissions with the
status as of the job's end or the wait's. The wait is capped by ``ATELIER_JOB_WAIT_MAX_S``; the answer
says what was applied in ``Preference-Applied: wait=N``. As the RFC asks, a preference the server does
not understand (another token, a malformed number) is ignored, never an error.

A waiting request is a coroutine that reads the job every ``ATELIER_JOB_EVENTS_INTERVAL_S`` with one
short call in the thread pool, like an event stream; it stops early when the client goes away.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Header, Request
from starlette.concurrency import run_in_threadpool

from app.dependencies import SettingsDep
from app.schemas import TERMINAL_STATES

PREFER_DESCRIPTION = (
    "`wait=N` (RFC 7240): answer once the job has ended, or after N seconds (at most "
    "ATELIER_JOB_WAIT_MAX_S), whichever comes first. `Preference-Applied` says the wait used."
)

T = TypeVar("T")


def requested_wait(prefer: str | None) -> float | None:
    """The ``wait`` preference of a ``Prefer`` header in seconds, or None (absent or not understood)."""
    if not prefer:
        return None
    for preference in prefer.split(","):
        token, _, value = preference.split(";", 1)[0].partition("=")
        if token.strip().lower() != "wait":
            continue
        try:
            seconds = float(value.strip().strip('"'))
        except ValueError:
            return None
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    return None


class WaitSlots:
    """How many requests of this process may wait at once: beyond that a wait is not granted (the
    RFC lets a server ignore a preference), so waiters cannot crowd the thread pool that every
    request's Redis calls share."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0

    def take(self) -> bool:
        if self.taken >= self.limit:
            return False
        self.taken += 1
        return True

    def release(self) -> None:
        self.taken -= 1


async def wait_preference(
    request: Request,
    settings: SettingsDep,
    prefer: Annotated[str | None, Header(description=PREFER_DESCRIPTION, examples=["wait=60"])] = None,
) -> AsyncIterator[float | None]:
    """The wait this request may use, capped by the server's maximum; None for no wait (none asked
    for, or ``ATELIER_JOB_WAITERS_MAX`` requests of this process already wait)."""
    seconds = requested_wait(prefer)
    slots: WaitSlots = request.app.state.job_waiters
    if seconds is None or not slots.take():
        yield None
        return
    try:
        yield min(seconds, settings.job_wait_max_s)
    finally:
        slots.release()


WaitDep = Annotated[float | None, Depends(wait_preference)]


async def wait_for_end(
    request: Request, read: Callable[[], T], state_of: Callable[[T], str], wait_s: float, interval_s: float
) -> T:
    """``read()`` (blocking; run in the thread pool) until ``state_of`` it is terminal, the wait is
    over or the client has gone; the last reading."""
    deadline = time.monotonic() + wait_s
    current = await run_in_threadpool(read)
    while state_of(current) not in TERMINAL_STATES:
        left = deadline - time.monotonic()
        if left <= 0 or await request.is_disconnected():
            break
        await asyncio.sleep(min(interval_s, left))
        current = await run_in_threadpool(read)
    return current


def preference_applied(wait_s: float) -> dict[str, str]:
    """Which wait was used (RFC 7240 ``Preference-Applied``), and that answers vary with it."""
    return {"Preference-Applied": f"wait={wait_s:g}", "Vary": "Prefer"}
