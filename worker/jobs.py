"""RQ job functions. Everything here runs inside a work horse, one job at a time."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from PIL import Image
from redis import Redis
from rq import get_current_job
from rq.job import Job
from rq.timeouts import JobTimeoutException

from core.job_options import options_from_dict
from core.settings import Settings, get_settings
from core.store import JobKeys, cancel_requested, record_job_duration
from models.gatys import StepReport, run_gatys
from models.imaging import encode_image
from worker import runtime
from worker.patience import patiently
from worker.previews import PreviewWriter

log = logging.getLogger(__name__)

PROGRESS_MIN_INTERVAL_S = 0.5


class JobCanceled(Exception):
    """Raised at a step boundary when a client asked to cancel a running job."""


def load_image(redis: Redis, key: str, what: str, max_pixels: int) -> Image.Image:
    data = patiently(lambda: redis.get(key), f"the {what} image")
    if data is None:
        raise ValueError(f"the {what} image expired before the job ran; submit the job again")
    img = Image.open(io.BytesIO(data))
    if img.width * img.height > max_pixels:
        raise ValueError(f"the {what} image is larger than the configured pixel limit")
    return img.convert("RGB")


def raise_if_canceled(redis: Redis, keys: JobKeys, job_id: str) -> None:
    """Turn a client's cancel request into JobCanceled at a step boundary (patient through an outage)."""
    if patiently(lambda: cancel_requested(redis, keys, job_id), "cancel check"):
        raise JobCanceled("canceled by the client")


class ProgressRecorder:
    """A job's progress in its meta, and previews of its image as it forms, for every kind of job.

    ``report`` turns a cancel request into JobCanceled, offers the image to the job's
    :class:`PreviewWriter` (not at the last step: the result follows at once) and saves the progress
    at most every ``PROGRESS_MIN_INTERVAL_S``, and at once when a preview was stored (so the status
    names it) or at the last step.
    """

    def __init__(self, job: Job, keys: JobKeys, previews: PreviewWriter) -> None:
        self.job, self.keys, self.previews = job, keys, previews
        self._last_save = 0.0

    @classmethod
    def for_job(cls, job: Job, keys: JobKeys, settings: Settings) -> ProgressRecorder:
        previews = PreviewWriter(
            job.connection, keys.preview(job.id), settings.job_preview_interval_s, settings.result_ttl_s
        )
        return cls(job, keys, previews)

    def report(
        self, step: int, total: int, fields: dict[str, Any], image: Callable[[], Image.Image] | None
    ) -> None:
        """Step ``step`` of ``total`` is done; ``fields`` join the progress, ``image`` renders the preview."""
        raise_if_canceled(self.job.connection, self.keys, self.job.id)
        now = time.monotonic()
        last = step >= total
        stored = not last and self.previews.offer(step, image)
        if stored or last or now - self._last_save >= PROGRESS_MIN_INTERVAL_S:
            self.job.meta["progress"] = {
                "step": step,
                "total_steps": total,
                "percent": round(100.0 * step / max(total, 1), 1),
                **fields,
                "preview_step": self.previews.step,
            }
            patiently(self.job.save_meta, "progress")
            self._last_save = now


def store_result(
    redis: Redis, keys: JobKeys, job_id: str, body: bytes, ttl_s: int, seconds: float, *drop: str
) -> None:
    """The job's result bytes, its duration and the deletion of its preview (the result replaces it)
    and of ``drop`` keys in one transaction, retried through a short Redis outage (the work is done:
    losing it to a restart would waste it)."""

    def write() -> None:
        with redis.pipeline() as pipe:
            pipe.set(keys.result(job_id), body, ex=ttl_s)
            pipe.delete(keys.preview(job_id), *drop)
            record_job_duration(pipe, keys, "finished", seconds)
            pipe.execute()

    patiently(write, "result")


def _fail_message(exc: BaseException, timeout_s: int) -> str:
    if isinstance(exc, JobTimeoutException):
        return f"the job exceeded its time limit of {timeout_s} s"
    if isinstance(exc, MemoryError):
        return "the job ran out of memory; try a smaller size"
    if isinstance(exc, ValueError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class JobRun:
    """The job a work horse is running, and what every job function needs alongside it."""

    job: Job
    settings: Settings
    keys: JobKeys
    redis: Redis
    started: float  # time.monotonic() when the job function began

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


@contextmanager
def job_run(function: str) -> Iterator[JobRun]:
    """The current RQ job, set up to run (:func:`runtime.enter_job`); any exception that ends it is
    recorded in its meta (why it failed, or that it was canceled) and counted, then re-raised."""
    job = get_current_job()
    if job is None:
        raise RuntimeError(f"{function} must run inside an RQ worker")
    runtime.enter_job()
    settings = get_settings()
    run = JobRun(job, settings, JobKeys(settings.key_prefix), job.connection, time.monotonic())
    try:
        yield run
    except BaseException as exc:
        record_job_failure(job, run.keys, exc, run.seconds, settings.job_timeout_s)
        raise


def optimize_job(options: dict[str, Any], style_count: int) -> dict[str, Any]:
    """Run one Gatys optimization; the result PNG goes to its own key, the return value is metadata."""
    with job_run("optimize_job") as run:
        settings, keys, redis, job = run.settings, run.keys, run.redis, run.job
        opts = options_from_dict(options)
        content = load_image(redis, keys.content(job.id), "content", settings.max_image_pixels)
        styles = [
            load_image(redis, keys.style(job.id, i), f"style #{i + 1}", settings.max_image_pixels)
            for i in range(style_count)
        ]
        device = runtime.resolve_device(settings.device)
        vgg = runtime.vgg_on(device)
        progress = ProgressRecorder.for_job(job, keys, settings)

        def on_step(report: StepReport) -> None:
            losses = {k: float(v) for k, v in report.losses.items()}
            progress.report(report.step, report.total, {"losses": losses}, report.image)

        result = run_gatys(vgg, content, styles, opts, device=device, on_step=on_step)
        png = encode_image(result, "png")

        store_result(redis, keys, job.id, png, settings.result_ttl_s, run.seconds)
        return {"width": result.width, "height": result.height, "bytes": len(png), "device": device.type}


def record_job_failure(job: Job, keys: JobKeys, exc: BaseException, seconds: float, timeout_s: int) -> None:
    """Say in the job's meta why it ended (canceled, or the error) and count it; never raises."""
    canceled = isinstance(exc, JobCanceled)
    state = "canceled" if canceled else "failed"
    job.meta["canceled"] = canceled
    job.meta["error"] = None if canceled else _fail_message(exc, job.timeout or timeout_s)
    try:
        job.save_meta()
        with job.connection.pipeline() as pipe:
            record_job_duration(pipe, keys, state, seconds)
            pipe.execute()
    except Exception:  # the job's own failure matters more than bookkeeping
        log.exception("could not record the end of job %s", job.id)
