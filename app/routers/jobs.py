"""Gatys optimization jobs: submit, poll, download, cancel or delete. The work happens in RQ workers."""

from __future__ import annotations

import contextlib
import hmac
import io
import math
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from PIL import Image
from redis import Redis
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.job import JobStatus as RQStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from starlette.concurrency import run_in_threadpool

from app.auth import CallerDep, Principal
from app.byte_ranges import Conditions, download, entity_tag, not_modified
from app.contract import job_submission_responses, problem_responses
from app.dependencies import KeysDep, QueueDep, RedisDep, SettingsDep
from app.idempotency import IdempotencyDep
from app.job_admission import admit_and_enqueue, enqueue_job
from app.job_index import index_key
from app.job_wait import WaitDep, preference_applied, wait_for_end
from app.problems import Problem
from app.schemas import TERMINAL_STATES, JobLinks, JobProgress, JobState, JobStatus
from app.uploads import read_image, reject_unknown_fields
from app.webhooks import WebhookUrlForm, accepted_target, delivery_of
from core.job_options import options_to_dict
from core.settings import Settings
from core.store import JOB_FUNC, JOB_KINDS, JobKeys, request_cancel
from models.gatys import GatysOptions
from models.imaging import MEDIA_TYPES, encode_image, resize_longest
from models.vgg import LAYER_NAMES
from models.video import VIDEO_MEDIA_TYPES

# Job ids are `{job_id:uuid}`: only a UUID matches, so `GET /jobs/optimize` is a 405 (that path takes
# POST only) rather than a 422 about a malformed id, and any other non-UUID is a plain 404.
router = APIRouter(prefix="/jobs", tags=["jobs"])

FORM_FIELDS = {
    "content",
    "style",
    "size",
    "steps",
    "optimizer",
    "learning_rate",
    "content_weight",
    "style_weight",
    "tv_weight",
    "content_layers",
    "style_layers",
    "style_layer_weights",
    "style_blend_weights",
    "init",
    "seed",
    "preserve_color",
    "pooling",
    "style_scale",
    "webhook_url",
}
DEFAULTS = GatysOptions()


def _csv(value: str | None, field: str, cast: type) -> tuple[Any, ...] | None:
    """Parse ``a,b,c`` form values (friendlier for curl than repeated fields)."""
    if value is None or not value.strip():
        return None
    try:
        return tuple(cast(part.strip()) for part in value.split(",") if part.strip())
    except ValueError:
        raise Problem(
            422,
            "validation-error",
            f"'{field}' must be a comma-separated list of {cast.__name__}s.",
            field=field,
        ) from None


def _layers(value: str | None, field: str) -> tuple[str, ...] | None:
    layers = _csv(value, field, str)
    if layers is not None:
        unknown = [name for name in layers if name not in LAYER_NAMES]
        if unknown:
            raise Problem(
                422,
                "validation-error",
                f"'{field}' has unknown VGG19 layer(s) {', '.join(unknown)}; use names like relu4_2.",
                field=field,
            )
    return layers


def _check_weights(weights: tuple[float, ...] | None, expected: int, field: str, of: str) -> None:
    if weights is None:
        return
    if len(weights) != expected:
        raise Problem(
            422,
            "validation-error",
            f"'{field}' needs {expected} value(s), one per {of}; got {len(weights)}.",
            field=field,
        )
    if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise Problem(
            422,
            "validation-error",
            f"'{field}' must be finite and non-negative, with at least one positive value.",
            field=field,
        )


def job_links(base: str) -> JobLinks:
    """The paths of a job whose own path is ``base``."""
    return JobLinks(self=base, result=base + "/result", preview=base + "/preview")


def owned_by(job: Job, caller: Principal | None) -> bool:
    """Whether ``caller`` may see ``job``: its own, or any job when the server has no keys."""
    owner = job.meta.get("owner")
    if caller is None:
        return owner is None
    return isinstance(owner, str) and hmac.compare_digest(owner, caller.digest)


def fetch_job(queue, job_id: uuid.UUID, caller: Principal | None) -> Job:
    """The caller's job of our queue, or a 404 problem (unknown, expired, another deployment's or
    another API key's: a key cannot even learn that someone else's job exists)."""
    missing = Problem(404, "not-found", f"No job {job_id} (unknown, or expired).", field="job_id")
    try:
        job = Job.fetch(str(job_id), connection=queue.connection, serializer=JSONSerializer)
    except NoSuchJobError:
        raise missing from None
    if job.origin != queue.name or not owned_by(job, caller):
        raise missing
    return job


def job_state(job: Job) -> JobState:
    status = job.get_status(refresh=False)
    if status in (RQStatus.CANCELED,) or (
        status in (RQStatus.FAILED, RQStatus.STOPPED) and job.meta.get("canceled")
    ):
        return "canceled"
    if status == RQStatus.STARTED:
        return "started"
    if status == RQStatus.FINISHED:
        return "finished"
    if status in (RQStatus.FAILED, RQStatus.STOPPED):
        return "failed"
    return "queued"


def _failure_reason(job: Job) -> str:
    """Explain failures the job function could not describe itself (its worker died, say)."""
    result = job.latest_result()
    trace = (result.exc_string if result is not None else None) or ""
    if "Abandoned" in trace:
        return "The worker running this job stopped unexpectedly (killed or out of memory)."
    lines = trace.strip().splitlines()
    return lines[-1] if lines else "The job failed."


def status_of(request: Request, job: Job, keys: JobKeys) -> JobStatus:
    """The public view of a job: state, progress, error, links, webhook."""
    return describe_job(job, keys, job_links(str(request.url_for("get_job", job_id=job.id).path)))


def describe_job(job: Job, keys: JobKeys, links: JobLinks) -> JobStatus:
    """:func:`status_of` for a caller without a request (the webhook dispatcher)."""
    state = job_state(job)
    meta = job.meta
    progress = meta.get("progress") or {"step": 0, "total_steps": meta.get("total_steps", 0)}
    if state == "finished":
        progress = progress | {"preview_step": None}  # deleted when the result was stored
    error = None
    if state == "failed":
        error = meta.get("error") or _failure_reason(job)
    with job.connection.pipeline(transaction=False) as pipe:
        pipe.exists(keys.cancel(job.id))
        pipe.hgetall(keys.webhook(job.id))
        if state == "queued":  # workers pop from the head: its index is how many start before it
            pipe.lpos(Queue.redis_queue_namespace_prefix + job.origin, job.id)
        cancel_requested, webhook, *ahead = pipe.execute()
    return JobStatus(
        id=job.id,
        kind=JOB_KINDS.get(job.func_name),
        state=state,
        progress=JobProgress(**progress),
        created_at=job.created_at,
        started_at=job.started_at,
        ended_at=job.ended_at,
        error=error,
        cancel_requested=bool(cancel_requested),
        options=meta.get("options", {}),
        links=links,
        result_url=links.result if state == "finished" else None,
        result_info=meta.get("result_info") if state == "finished" else None,
        webhook=delivery_of(webhook),
        # Not in the list while queued: a worker has just taken it and is starting it (next, then).
        jobs_ahead=(ahead[0] or 0) if ahead else None,
        estimated_end_at=_estimated_end(job.started_at, progress) if state == "started" else None,
    )


def _estimated_end(started_at: datetime | None, progress: dict[str, Any]) -> datetime | None:
    """When a running job should end if it keeps its pace so far (None before its first step)."""
    percent = float(progress.get("percent") or 0.0)
    if started_at is None or not 0 < percent < 100:
        return None
    started = started_at if started_at.tzinfo is not None else started_at.replace(tzinfo=UTC)
    elapsed = datetime.now(UTC) - started
    return started + elapsed * (100.0 / percent)


def _validated_options(settings: Settings, n_styles: int, **given: Any) -> GatysOptions:
    size = given["size"] if given["size"] is not None else settings.gatys_default_size
    if size > settings.gatys_max_size:
        raise Problem(
            422, "validation-error", f"'size' must be at most {settings.gatys_max_size}.", field="size"
        )
    if given["steps"] > settings.gatys_max_steps:
        raise Problem(
            422, "validation-error", f"'steps' must be at most {settings.gatys_max_steps}.", field="steps"
        )
    if n_styles > settings.gatys_max_styles:
        raise Problem(
            422,
            "validation-error",
            f"At most {settings.gatys_max_styles} 'style' images per job.",
            field="style",
        )
    content_layers = _layers(given.pop("content_layers"), "content_layers") or DEFAULTS.content_layers
    style_layers = _layers(given.pop("style_layers"), "style_layers") or DEFAULTS.style_layers
    layer_weights = _csv(given.pop("style_layer_weights"), "style_layer_weights", float)
    blend = _csv(given.pop("style_blend_weights"), "style_blend_weights", float)
    _check_weights(layer_weights, len(style_layers), "style_layer_weights", "style layer")
    _check_weights(blend, n_styles, "style_blend_weights", "style image")
    given["size"] = size
    return replace(
        DEFAULTS,
        content_layers=content_layers,
        style_layers=style_layers,
        style_layer_weights=layer_weights,
        style_blend_weights=blend,
        **{k: v for k, v in given.items() if v is not None},
    )


def _normalized_png(img: Image.Image, longest: int) -> bytes:
    """Store inputs already at working size: less Redis memory, and the worker decodes a clean PNG."""
    if max(img.size) > longest:
        img = resize_longest(img, longest)
    return encode_image(img, "png")


@router.post(
    "/optimize",
    status_code=202,
    response_model=JobStatus,
    summary="Submit a Gatys style-transfer optimization job",
    responses=job_submission_responses(),
)
async def submit_optimize(
    request: Request,
    response: Response,
    settings: SettingsDep,
    queue: QueueDep,
    keys: KeysDep,
    caller: CallerDep,
    idempotency: IdempotencyDep,
    wait: WaitDep,
    content: Annotated[UploadFile, File(description="The photo to repaint.")],
    style: Annotated[list[UploadFile], File(description="One or more style images (repeat the field).")],
    size: Annotated[int | None, Form(ge=16, description="Longest side of the output (default 512).")] = None,
    steps: Annotated[int, Form(ge=1, description="Optimization steps.")] = DEFAULTS.steps,
    optimizer: Annotated[Literal["lbfgs", "adam"], Form()] = DEFAULTS.optimizer,
    learning_rate: Annotated[
        float, Form(gt=0, le=100, description="Adam step size.")
    ] = DEFAULTS.learning_rate,
    content_weight: Annotated[float, Form(ge=0, le=1e6)] = DEFAULTS.content_weight,
    style_weight: Annotated[
        float, Form(gt=0, le=1e9, description="Must be positive: a job with no style has nothing to do.")
    ] = DEFAULTS.style_weight,
    tv_weight: Annotated[float, Form(ge=0, le=1e6)] = DEFAULTS.tv_weight,
    content_layers: Annotated[str | None, Form(examples=["relu4_2"])] = None,
    style_layers: Annotated[str | None, Form(examples=["relu1_1,relu2_1,relu3_1,relu4_1,relu5_1"])] = None,
    style_layer_weights: Annotated[
        str | None, Form(description="Comma-separated, one per style layer.")
    ] = None,
    style_blend_weights: Annotated[
        str | None, Form(description="Comma-separated, one per style image.")
    ] = None,
    init: Annotated[Literal["content", "noise"], Form()] = DEFAULTS.init,
    seed: Annotated[int, Form(ge=0, le=2**32 - 1)] = DEFAULTS.seed,
    preserve_color: Annotated[bool, Form(description="Keep the photo's colours.")] = DEFAULTS.preserve_color,
    pooling: Annotated[Literal["max", "avg"], Form()] = DEFAULTS.pooling,
    style_scale: Annotated[float, Form(gt=0, le=4)] = DEFAULTS.style_scale,
    webhook_url: WebhookUrlForm = None,
) -> JobStatus:
    if idempotency is not None and idempotency.job_id is not None:
        return await replayed_status(
            request, response, queue, keys, settings, caller, idempotency.job_id, wait
        )
    await reject_unknown_fields(request, FORM_FIELDS)
    webhook = await accepted_target(settings, webhook_url)
    options = _validated_options(
        settings,
        len(style),
        size=size,
        steps=steps,
        optimizer=optimizer,
        learning_rate=learning_rate,
        content_weight=content_weight,
        style_weight=style_weight,
        tv_weight=tv_weight,
        content_layers=content_layers,
        style_layers=style_layers,
        style_layer_weights=style_layer_weights,
        style_blend_weights=style_blend_weights,
        init=init,
        seed=seed,
        preserve_color=preserve_color,
        pooling=pooling,
        style_scale=style_scale,
    )
    limits = (settings.max_upload_bytes, settings.max_image_pixels)
    content_img = await read_image(content, "content", *limits)
    style_imgs = [await read_image(s, "style", *limits) for s in style]
    content_png = await run_in_threadpool(_normalized_png, content_img, options.size)
    style_side = max(16, round(options.size * options.style_scale))
    style_pngs = [await run_in_threadpool(_normalized_png, img, style_side) for img in style_imgs]
    job_id = str(uuid.uuid4())
    payload = options_to_dict(options)

    def enqueue() -> Job:
        ttl = settings.result_ttl_s + settings.job_timeout_s
        with queue.connection.pipeline() as pipe:
            pipe.set(keys.content(job_id), content_png, ex=ttl)
            for i, png in enumerate(style_pngs):
                pipe.set(keys.style(job_id, i), png, ex=ttl)
            pipe.execute()
        return enqueue_job(
            queue,
            settings,
            JOB_FUNC,
            job_id,
            kwargs={"options": payload, "style_count": len(style_pngs)},
            meta={"options": payload, "total_steps": options.steps},
            owner=caller.digest if caller is not None else None,
            description=f"gatys {options.size}px {options.steps} steps",
        )

    job = await run_in_threadpool(
        admit_and_enqueue, queue.connection, queue, settings, caller, enqueue, idempotency, webhook
    )
    return await answered_status(
        request, response, queue, keys, settings, caller, job.id, wait, submitted=True
    )


async def answered_status(
    request: Request,
    response: Response,
    queue,
    keys: JobKeys,
    settings: Settings,
    caller: Principal | None,
    job_id: str,
    wait_s: float | None,
    *,
    submitted: bool = False,
) -> JobStatus:
    """The job's status now or, with ``Prefer: wait``, once it has ended or the wait is over. For a
    submission (also an Idempotency-Key repeat, with the first request's job) with its URL in
    ``Location``."""

    def read() -> JobStatus:
        return current_status(request, queue, keys, uuid.UUID(job_id), caller)

    if wait_s is None:
        status = await run_in_threadpool(read)
    else:
        response.headers.update(preference_applied(wait_s))
        interval = settings.job_events_interval_s
        status = await wait_for_end(request, read, lambda status: status.state, wait_s, interval)
    if submitted:
        response.headers["Location"] = status.links.self
    return status


async def replayed_status(
    request: Request,
    response: Response,
    queue,
    keys: JobKeys,
    settings: Settings,
    caller: Principal | None,
    job_id: str,
    wait_s: float | None,
) -> JobStatus:
    """The answer to an Idempotency-Key repeat: the job the first request queued, as a submission's."""
    response.headers["Idempotent-Replayed"] = "true"
    return await answered_status(
        request, response, queue, keys, settings, caller, job_id, wait_s, submitted=True
    )


def current_status(
    request: Request, queue, keys: JobKeys, job_id: uuid.UUID, caller: Principal | None
) -> JobStatus:
    """The job's status as of now (blocking Redis calls: run it in a thread)."""
    job = fetch_job(queue, job_id, caller)
    if job.get_status(refresh=False) == RQStatus.STARTED:
        # A started job whose worker died is only noticed by a registry sweep; do it now, cheaply.
        StartedJobRegistry(queue=queue).cleanup()
        job.refresh()
    return status_of(request, job, keys)


@router.get(
    "/{job_id:uuid}",
    response_model=JobStatus,
    name="get_job",
    summary="State and progress of a job",
    responses=problem_responses(404, 503),
)
async def get_job(
    request: Request,
    response: Response,
    job_id: uuid.UUID,
    queue: QueueDep,
    keys: KeysDep,
    settings: SettingsDep,
    caller: CallerDep,
    wait: WaitDep,
) -> JobStatus:
    return await answered_status(request, response, queue, keys, settings, caller, str(job_id), wait)


@router.get(
    "/{job_id:uuid}/result",
    summary="Download the result image",
    response_class=Response,
    responses={
        200: {
            "description": "The result: an image for Gatys jobs, a video (or GIF) for video jobs. With "
            "an `ETag` (send it back in `If-None-Match`) and `Accept-Ranges: bytes`.",
            "content": {
                t: {"schema": {"type": "string", "format": "binary"}}
                for t in (*MEDIA_TYPES.values(), *VIDEO_MEDIA_TYPES)
            },
        },
        206: {
            "description": "The one byte range asked for with `Range` (a broken-off download resumed).",
            "headers": {"Content-Range": {"schema": {"type": "string"}, "description": "`bytes a-b/length`"}},
            "content": {
                t: {"schema": {"type": "string", "format": "binary"}}
                for t in (*MEDIA_TYPES.values(), *VIDEO_MEDIA_TYPES)
            },
        },
        304: {"description": "`If-None-Match` names this result's `ETag`: the copy the client has is it."},
        **problem_responses(404, 409, 416, 422, 503, d409="The job has not finished (yet)."),
    },
)
async def get_result(
    request: Request,
    job_id: uuid.UUID,
    queue: QueueDep,
    redis: RedisDep,
    keys: KeysDep,
    settings: SettingsDep,
    caller: CallerDep,
    wait: WaitDep,
    format: Annotated[
        Literal["png", "jpeg", "webp"] | None,
        Query(description="Image results: png (default), jpeg or webp. Video results come as produced."),
    ] = None,
) -> Response:
    headers = {}
    if wait is not None:

        def read() -> str:
            return job_state(fetch_job(queue, job_id, caller))

        await wait_for_end(request, read, lambda state: state, wait, settings.job_events_interval_s)
        headers = preference_applied(wait)
    conditions = Conditions.of(request)
    return await run_in_threadpool(
        _result_response, job_id, queue, redis, keys, caller, format, conditions, headers
    )


def _result_response(
    job_id: uuid.UUID,
    queue,
    redis: Redis,
    keys: JobKeys,
    caller: Principal | None,
    format: str | None,
    conditions: Conditions,
    headers: dict[str, str],
) -> Response:
    """The stored result as the client asked for it (all, a range, or a 304), or a problem
    (blocking: Redis, encoding)."""
    job = fetch_job(queue, job_id, caller)
    state = job_state(job)
    if state != "finished":
        raise Problem(
            409,
            "job-not-finished",
            f"Job {job_id} is {state}; the result exists once it is finished.",
            field="job_id",
            state=state,
            headers=headers or None,
        )
    stored_type = job.meta.get("result_media_type")  # set by video jobs: served as encoded
    if stored_type is not None and format is not None:
        raise Problem(
            422,
            "validation-error",
            f"'format' applies to image results; this job's result is {stored_type}.",
            field="format",
        )
    if stored_type is None:
        format = format or "png"
        etag, extension = entity_tag(str(job_id), format), format
    else:
        etag, extension = entity_tag(str(job_id)), job.meta.get("result_extension", "bin")
    expired = Problem(404, "not-found", f"The result of job {job_id} has expired.", field="job_id")
    if not_modified(conditions, etag):
        if not redis.exists(keys.result(str(job_id))):
            raise expired
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": "private", **headers})
    stored = redis.get(keys.result(str(job_id)))
    if stored is None:
        raise expired
    headers = {"Content-Disposition": f'inline; filename="{job_id}.{extension}"', **headers}
    if stored_type is not None:
        return download(stored, stored_type, etag, conditions, headers)
    body = stored if format == "png" else encode_image(Image.open(io.BytesIO(stored)).convert("RGB"), format)
    return download(body, MEDIA_TYPES[format], etag, conditions, headers)


@router.delete(
    "/{job_id:uuid}",
    response_model=JobStatus,
    summary="Cancel a queued or running job; delete an ended one",
    description="A queued job is canceled at once and a running one at its next step: 200 with its "
    "status. A job that has ended (finished, failed or canceled) is deleted with everything it stored "
    "(the uploaded photo, painting or video, the result, the preview): 204, and from then on it is a "
    "404 like a job that never existed. Without a DELETE, all of it expires after "
    "`ATELIER_RESULT_TTL_S`.",
    responses={
        200: {"description": "The job was queued or running; it is canceled (see its status)."},
        204: {"description": "The job had ended; it and everything it stored are deleted."},
        **problem_responses(404, 503),
    },
)
def cancel_job(
    request: Request,
    job_id: uuid.UUID,
    queue: QueueDep,
    redis: RedisDep,
    keys: KeysDep,
    settings: SettingsDep,
    caller: CallerDep,
) -> JobStatus | Response:
    job = fetch_job(queue, job_id, caller)
    state = job_state(job)
    if state in TERMINAL_STATES:
        delete_job(redis, keys, job, index_key(settings.key_prefix, caller))
        return Response(status_code=204)
    request_cancel(redis, keys, job.id, settings.result_ttl_s)
    if state == "queued":
        # If it started meanwhile, cancel() refuses and the flag stops it at its next step instead.
        with contextlib.suppress(InvalidJobOperation):
            job.cancel()
    job.refresh()
    return status_of(request, job, keys)


def delete_job(redis: Redis, keys: JobKeys, job: Job, index: str) -> None:
    """An ended job, its registry entries and every key it stored, gone now rather than at expiry."""
    styles = job.kwargs.get("style_count", 1) if isinstance(job.kwargs, dict) else 1
    with redis.pipeline() as pipe:
        pipe.delete(*keys.everything_of(job.id, int(styles)))
        pipe.zrem(index, job.id)
        pipe.zrem(keys.webhooks_due, job.id)
        pipe.execute()
    job.delete()
