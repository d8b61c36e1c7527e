"""Load shedding for the synchronous model endpoints: a bounded waiting line and a deadline.

Without a bound, a burst on ``/stylize`` simply queues in the model's micro-batcher and every
request's latency grows without limit; clients time out while the server still works for them.
A :class:`ModelGate` sits in front of one model: a request is admitted only while fewer than
``max_pending`` requests for that model are unanswered (waiting in the batcher or running);
past that it is answered at once with 503 and a ``Retry-After`` estimated from how long recent
requests took. An admitted request that is still unanswered ``deadline_s`` after admission is
cancelled (its item leaves the batcher's queue if it was not taken yet) and answered 504.

One gate per model and API process, on the event loop, so a plain counter is exact.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.requests import Request

from app.problems import Problem

T = TypeVar("T")

EWMA_WEIGHT = 0.2
MAX_RETRY_AFTER_S = 60


@dataclass
class ModelGate:
    """The waiting line of one model: how many requests are unanswered, and how many were shed."""

    name: str
    max_pending: int
    deadline_s: float
    pending: int = 0
    admitted: int = 0
    shed: dict[str, int] = field(default_factory=lambda: {"overloaded": 0, "deadline": 0})
    _mean_s: float = 0.0

    def retry_after_s(self) -> int:
        """About how long the requests now waiting take to drain, at recent speed (at least 1 s)."""
        estimate = self._mean_s * max(1, self.pending)
        return max(1, min(MAX_RETRY_AFTER_S, math.ceil(estimate)))

    def _record(self, seconds: float) -> None:
        self._mean_s = (
            seconds if self._mean_s == 0 else (1 - EWMA_WEIGHT) * self._mean_s + EWMA_WEIGHT * seconds
        )

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Run the body as one admitted request, or raise a 503 (line full) / 504 (deadline) problem."""
        if self.pending >= self.max_pending:
            self.shed["overloaded"] += 1
            retry = self.retry_after_s()
            raise Problem(
                503,
                "overloaded",
                f"The {self.name} model already has {self.pending} requests waiting (the limit); "
                f"retry in about {retry} s.",
                headers={"Retry-After": str(retry)},
            )
        self.pending += 1
        self.admitted += 1
        start = time.monotonic()
        timer = asyncio.timeout(self.deadline_s)
        try:
            async with timer:
                yield
        except TimeoutError:
            if not timer.expired():
                raise
            self.shed["deadline"] += 1
            raise Problem(
                504,
                "deadline-exceeded",
                f"The {self.name} model could not answer within the {self.deadline_s:g} s deadline; "
                "the server is busy. Retry later.",
                headers={"Retry-After": str(self.retry_after_s())},
            ) from None
        finally:
            self.pending -= 1
            self._record(time.monotonic() - start)

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """``await work`` as one admitted request (a shed request's coroutine is closed, never run)."""
        admitted = False
        try:
            async with self.admit():
                admitted = True
                return await work
        finally:
            if not admitted:
                work.close()


def model_gate(request: Request, name: str) -> ModelGate:
    """The app's gate for one model (``classify``, ``stylize``, ``stylize_image``)."""
    return request.app.state.model_gates[name]


def make_gates(
    classify_max_pending: int, stylize_max_pending: int, deadline_s: float
) -> dict[str, ModelGate]:
    return {
        "classify": ModelGate("classify", classify_max_pending, deadline_s),
        "stylize": ModelGate("stylize", stylize_max_pending, deadline_s),
        "stylize_image": ModelGate("style_image", stylize_max_pending, deadline_s),
    }
