"""FrameMailbox: the newest frame wins, nothing queues, close wakes the taker."""

from __future__ import annotations

import asyncio

from app.frame_mailbox import FrameMailbox


def test_newest_frame_wins_and_overwritten_frames_count_as_dropped():
    async def scenario() -> None:
        box = FrameMailbox()
        for i in range(1, 6):
            assert box.put(f"frame{i}".encode()) == i
        assert await box.take() == (5, b"frame5")
        assert (box.received, box.dropped) == (5, 4)
        box.put(b"frame6")
        assert await box.take() == (6, b"frame6")
        assert box.dropped == 4  # a frame taken in time is not dropped

    asyncio.run(scenario())


def test_take_waits_for_a_frame_and_close_ends_it():
    async def scenario() -> None:
        box = FrameMailbox()
        waiter = asyncio.create_task(box.take())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        box.put(b"a")
        assert await waiter == (1, b"a")

        waiter = asyncio.create_task(box.take())
        await asyncio.sleep(0.01)
        box.close()
        assert await waiter is None

    asyncio.run(scenario())


def test_a_frame_put_before_close_is_still_delivered():
    async def scenario() -> None:
        box = FrameMailbox()
        box.put(b"last")
        box.close()
        assert await box.take() == (1, b"last")
        assert await box.take() is None

    asyncio.run(scenario())
