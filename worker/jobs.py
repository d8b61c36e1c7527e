"""RQ job functions. Everything here runs inside a work horse, one job at a time."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from typing import Any

from PIL import Image
from redis import Redis
from rq import get_current_job
from rq.job import Job
from rq.timeouts import JobTimeoutException

from core.job_options import options_from_dict
from core.settings import get_settings
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


def _load_image(redis: Redis, key: str, what: str, max_pixels: int) -> Image.Image:
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


def _progress_reporter(
    job: Job, redis: Redis, keys: JobKeys, previews: PreviewWriter | None = None
) -> Callable[[StepReport], None]:
    """Writes progress to the job's meta (throttled), stores ``previews`` of the image as it forms
    (not of the last step: the result follows at once), and turns a cancel request into JobCanceled.
    Jobs without previews (training a style) pass none."""
    last_save = 0.0

    def on_step(report: StepReport) -> None:
        nonlocal last_save
        raise_if_canceled(redis, keys, job.id)
        now = time.monotonic()
        last = report.step >= report.total
        stored = previews is not None and not last and previews.offer(report.step, report.image)
        if stored or last or now - last_save >= PROGRESS_MIN_INTERVAL_S:
            job.meta["progress"] = {
                "step": report.step,
                "total_steps": report.total,
                "percent": round(100.0 * report.step / max(report.total, 1), 1),
                "losses": {k: float(v) for k, v in report.losses.items()},
                "preview_step": previews.step if previews is not None else None,
            }
            patiently(job.save_meta, "progress")
            last_save = now

    return on_step


def store_result(
    redis: Redis, keys: JobKeys, job_id: str, body: bytes, ttl_s: int, seconds: float, *drop: str
) -> None:
    """The job's result bytes, its duration and the deletion of ``drop`` keys in one transaction,
    retried through a short Redis outage (the work is done: losing it to a restart would waste it)."""

    def write() -> None:
        with redis.pipeline() as pipe:
            pipe.set(keys.result(job_id), body, ex=ttl_s)
            if drop:
                pipe.delete(*drop)
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


def optimize_job(options: dict[str, Any], style_count: int) -> dict[str, Any]:
    """Run one Gatys optimization; the result PNG goes to its own key, the return value is metadata."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("optimize_job must run inside an RQ worker")
    runtime.enter_job()
    settings = get_settings()
    keys = JobKeys(settings.key_prefix)
    redis = job.connection
    started = time.monotonic()
    try:
        opts = options_from_dict(options)
        content = _load_image(redis, keys.content(job.id), "content", settings.max_image_pixels)
        styles = [
            _load_image(redis, keys.style(job.id, i), f"style #{i + 1}", settings.max_image_pixels)
            for i in range(style_count)
        ]
        device = runtime.resolve_device(settings.device)
        vgg = runtime.vgg_on(device)
        previews = PreviewWriter(
            redis, keys.preview(job.id), settings.job_preview_interval_s, settings.result_ttl_s
        )
        on_step = _progress_reporter(job, redis, keys, previews)
        result = run_gatys(vgg, content, styles, opts, device=device, on_step=on_step)
        png = encode_image(result, "png")

        store_result(
            redis, keys, job.id, png, settings.result_ttl_s, time.monotonic() - started, keys.preview(job.id)
        )
        return {"width": result.width, "height": result.height, "bytes": len(png), "device": device.type}
    except BaseException as exc:
        record_job_failure(job, keys, exc, time.monotonic() - started, settings.job_timeout_s)
        raise


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
