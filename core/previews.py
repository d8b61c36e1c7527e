"""A running job's latest preview image in Redis: written by the worker, read by ``GET /jobs/{id}/preview``.

One hash per job under :meth:`core.store.JobKeys.preview`: ``step`` (the step the image shows, as
the job counts them: an optimization step, or frames done for a video) and ``image`` (JPEG bytes),
written together in one transaction so a reader never pairs one step with another step's image. The
hash expires with the job's other keys; a finished job's preview is deleted with the result's
write (the result supersedes it), while a canceled or failed job keeps its last one.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis

PREVIEW_MEDIA_TYPE = "image/jpeg"


@dataclass(frozen=True)
class Preview:
    step: int
    jpeg: bytes


def write_preview(redis: Redis, key: str, preview: Preview, ttl_s: int) -> None:
    """Replace the job's preview (step and image in one transaction) and renew its expiry."""
    with redis.pipeline() as pipe:
        pipe.hset(key, mapping={"step": preview.step, "image": preview.jpeg})
        pipe.expire(key, ttl_s)
        pipe.execute()


def read_preview(redis: Redis, key: str) -> Preview | None:
    """The job's latest preview, or None when it has none (not started, none yet, finished, expired)."""
    fields = redis.hgetall(key)
    step, image = fields.get(b"step"), fields.get(b"image")
    if step is None or image is None:
        return None
    return Preview(int(step), image)
