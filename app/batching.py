"""Dynamic micro-batching: concurrent requests share one model call.

Each request submits one item and awaits its own result. A collector task takes the first waiting
item, waits at most ``max_wait_s`` for more items *with the same key* (same style and size, say),
up to ``max_batch``, and runs the batch function in a single dedicated thread: the model never blocks
the event loop, and torch's own intra-op threads are not fought over by several batches at once.

With ``max_wait_s=0`` nothing waits on a timer: a lone request runs at once, and under load the
items that queued while the model was busy form the next batch, so batches grow with concurrency
by themselves (the best setting measured for /classify on CPU; bench/results).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


@dataclass
class _Pending(Generic[ItemT, ResultT]):
    key: Hashable
    item: ItemT
    future: asyncio.Future[ResultT]


@dataclass
class BatchStats:
    """Counters that tests and /metrics read to see that batching really happens."""

    batches: int = 0
    items: int = 0
    largest_batch: int = 0
    sizes: list[int] = field(default_factory=list)

    def record(self, size: int) -> None:
        self.batches += 1
        self.items += size
        self.largest_batch = max(self.largest_batch, size)
        self.sizes.append(size)
        del self.sizes[:-1000]


class MicroBatcher(Generic[ItemT, ResultT]):
    """Collects items into batches and runs ``run_batch(key, items) -> results`` off the event loop."""

    def __init__(
        self,
        run_batch: Callable[[Any, Sequence[ItemT]], Sequence[ResultT]],
        *,
        max_batch: int,
        max_wait_s: float,
        name: str = "batcher",
        limit_for: Callable[[Any], int] | None = None,
    ) -> None:
        """``limit_for(key)``: a smaller cap for some keys (large images: memory), within 1..max_batch."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self._limit_for = limit_for
        self.max_wait_s = max_wait_s
        self.stats = BatchStats()
        self._queue: list[_Pending[ItemT, ResultT]] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def submit(self, item: ItemT, key: Hashable = None) -> ResultT:
        """Queue one item and wait for its result (exceptions of its batch are re-raised here)."""
        self._ensure_started()
        assert self._wakeup is not None
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(key, item, future))
        self._wakeup.set()
        return await future

    def _ensure_started(self) -> None:
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = asyncio.create_task(self._collect_forever())

    def batch_limit(self, key: Hashable) -> int:
        """The most items of ``key`` one batch may hold."""
        if self._limit_for is None:
            return self.max_batch
        return max(1, min(self.max_batch, self._limit_for(key)))

    def _take_batch(self) -> list[_Pending[ItemT, ResultT]]:
        key = self._queue[0].key
        batch = [p for p in self._queue if p.key == key][: self.batch_limit(key)]
        taken = {id(p) for p in batch}
        self._queue = [p for p in self._queue if id(p) not in taken]
        return batch

    async def _collect_forever(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = time.monotonic() + self.max_wait_s
            first_key = self._queue[0].key
            limit = self.batch_limit(first_key)
            while time.monotonic() < deadline:
                same_key = sum(1 for p in self._queue if p.key == first_key)
                if same_key >= limit:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    break
            batch = [p for p in self._take_batch() if not p.future.cancelled()]
            if not batch:
                continue
            self.stats.record(len(batch))
            try:
                results = await loop.run_in_executor(
                    self._executor, self._run_batch, batch[0].key, [p.item for p in batch]
                )
                if len(results) != len(batch):
                    raise RuntimeError(
                        f"batch function returned {len(results)} results for {len(batch)} items"
                    )
            except Exception as exc:  # every waiter of this batch gets the error, the loop goes on
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            for p, result in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for p in self._queue:
            if not p.future.done():
                p.future.set_exception(RuntimeError("service shutting down"))
        self._queue.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
