"""Previews of a running job's image, so a client watching a minutes-long job sees it take shape.

A job offers its current image at each progress report; :class:`PreviewWriter` takes one at the
first report (the client sees something at once) and then at most every
``ATELIER_JOB_PREVIEW_INTERVAL_S``, encodes it as JPEG and stores it (:mod:`core.previews`). A
preview is a courtesy: a Redis error while storing one is logged and the job goes on, and the
image is only rendered when a preview is due, so a step costs nothing extra otherwise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from PIL import Image
from redis import Redis
from redis.exceptions import RedisError

from core.previews import Preview, write_preview
from models.imaging import encode_image

log = logging.getLogger(__name__)


class PreviewWriter:
    """Stores one job's previews under ``key``; ``step`` is the step of the last one stored."""

    def __init__(self, redis: Redis, key: str, interval_s: float, ttl_s: int) -> None:
        self.redis, self.key, self.interval_s, self.ttl_s = redis, key, interval_s, ttl_s
        self.step: int | None = None
        self._last = 0.0

    def due(self) -> bool:
        if self.interval_s <= 0:
            return False
        return self.step is None or time.monotonic() - self._last >= self.interval_s

    def offer(self, step: int, render: Callable[[], Image.Image] | None) -> bool:
        """Store ``render()`` as the preview of ``step`` if one is due; True when it was stored."""
        if render is None or not self.due():
            return False
        self._last = time.monotonic()
        try:
            write_preview(self.redis, self.key, Preview(step, encode_image(render(), "jpeg")), self.ttl_s)
        except RedisError as exc:
            log.warning("preview of step %d not stored: %s", step, exc)
            return False
        self.step = step
        return True
