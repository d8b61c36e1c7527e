"""A one-slot mailbox for live video frames: the newest frame wins, nothing ever queues.

The receiving side puts every frame it reads; a frame that was not taken yet is overwritten (and
counted as dropped). The processing side takes whatever is newest when it is ready for more. So a
slow model never builds a backlog: the delay of a live view stays at one frame, not a growing queue.
"""

from __future__ import annotations

import asyncio


class FrameMailbox:
    """Holds at most one frame; ``put`` never waits, ``take`` waits for a frame or for ``close``."""

    def __init__(self) -> None:
        self._frame: bytes | None = None
        self._seq = 0
        self._closed = False
        self._ready = asyncio.Event()
        self.received = 0
        self.dropped = 0

    def put(self, frame: bytes) -> int:
        """Store ``frame`` as the newest one and return its sequence number (1, 2, ...)."""
        if self._frame is not None:
            self.dropped += 1
        self.received += 1
        self._frame = frame
        self._seq = self.received
        self._ready.set()
        return self._seq

    def close(self) -> None:
        """Wake the taker for good: after the last frame, ``take`` returns ``None``."""
        self._closed = True
        self._ready.set()

    async def take(self) -> tuple[int, bytes] | None:
        """The newest frame and its sequence number, or ``None`` once closed and empty."""
        while self._frame is None:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        frame, self._frame = self._frame, None
        return self._seq, frame
