"""app.batching.MicroBatcher on its own: zero-wait batching, keys, errors, shutdown."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from app.batching import MicroBatcher


class SlowDouble:
    """Batch function that records each batch and takes ``delay_s`` (as a model would)."""

    def __init__(self, delay_s: float = 0.05) -> None:
        self.delay_s = delay_s
        self.batches: list[tuple[object, list[int]]] = []
        self.lock = threading.Lock()

    def __call__(self, key: object, items: Sequence[int]) -> list[int]:
        time.sleep(self.delay_s)
        with self.lock:
            self.batches.append((key, list(items)))
        return [2 * i for i in items]


def test_zero_wait_runs_a_lone_item_at_once_and_batches_what_queues_meanwhile() -> None:
    fn = SlowDouble()

    async def scenario() -> list[int]:
        batcher = MicroBatcher(fn, max_batch=64, max_wait_s=0.0)
        try:
            first = asyncio.create_task(batcher.submit(1))
            await asyncio.sleep(0.01)  # the lone item is already running: no timer held it back
            assert fn.batches == [] and batcher.stats.batches == 1
            rest = [asyncio.create_task(batcher.submit(i)) for i in range(2, 12)]
            return [await first, *await asyncio.gather(*rest)]
        finally:
            await batcher.close()

    assert asyncio.run(scenario()) == [2 * i for i in range(1, 12)]
    assert [items for _, items in fn.batches] == [[1], list(range(2, 12))]


def test_items_of_different_keys_never_share_a_batch_and_max_batch_holds() -> None:
    fn = SlowDouble(0.02)

    async def scenario() -> list[int]:
        batcher = MicroBatcher(fn, max_batch=3, max_wait_s=0.0)
        try:
            blocker = asyncio.create_task(batcher.submit(0, key="a"))
            await asyncio.sleep(0.005)
            tasks = [asyncio.create_task(batcher.submit(i, key="ab"[i % 2])) for i in range(1, 9)]
            return [await blocker, *await asyncio.gather(*tasks)]
        finally:
            await batcher.close()

    assert asyncio.run(scenario()) == [2 * i for i in range(0, 9)]
    for key, items in fn.batches:
        assert len(items) <= 3
        assert all("ab"[i % 2] == key for i in items), (key, items)


def test_a_failing_batch_fails_its_own_items_only() -> None:
    def flaky(_key: object, items: Sequence[int]) -> list[int]:
        if 13 in items:
            raise RuntimeError("bad batch")
        return list(items)

    async def scenario() -> tuple[object, int]:
        batcher = MicroBatcher(flaky, max_batch=1, max_wait_s=0.0)
        try:
            bad, good = await asyncio.gather(batcher.submit(13), batcher.submit(7), return_exceptions=True)
            return bad, good
        finally:
            await batcher.close()

    bad, good = asyncio.run(scenario())
    assert isinstance(bad, RuntimeError) and good == 7


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(lambda k, items: items, max_batch=0, max_wait_s=0.0)


def test_a_per_key_limit_keeps_large_items_in_small_batches() -> None:
    """/stylize caps a batch by pixels: many small images share a call, large ones go alone."""
    fn = SlowDouble(0.02)
    area = {"small": 1, "large": 4}

    async def scenario() -> list[int]:
        batcher = MicroBatcher(fn, max_batch=8, max_wait_s=0.0, limit_for=lambda key: 4 // area[key])
        assert batcher.batch_limit("small") == 4 and batcher.batch_limit("large") == 1
        try:
            blocker = asyncio.create_task(batcher.submit(0, key="small"))
            await asyncio.sleep(0.005)  # the rest queue while it runs
            tasks = [
                asyncio.create_task(batcher.submit(i, key=k))
                for i, k in enumerate(["large"] * 3 + ["small"] * 6, 1)
            ]
            return [await blocker, *await asyncio.gather(*tasks)]
        finally:
            await batcher.close()

    assert asyncio.run(scenario()) == [2 * i for i in range(0, 10)]
    sizes = {"small": [], "large": []}
    for key, items in fn.batches:
        sizes[key].append(len(items))
    assert sizes["large"] == [1, 1, 1]
    assert max(sizes["small"]) == 4 and sum(sizes["small"]) == 7


def test_a_per_key_limit_never_drops_below_one_or_above_max_batch() -> None:
    batcher = MicroBatcher(SlowDouble(), max_batch=8, max_wait_s=0.0, limit_for=lambda key: key)
    assert [batcher.batch_limit(k) for k in (0, 1, 5, 100)] == [1, 1, 5, 8]
