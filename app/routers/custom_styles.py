"""Custom styles: POST /styles trains a new fast style on the queue, DELETE /styles/{name} removes one.

A new style is one *style code* of the served multi-style network, learned by a worker with every
convolution frozen (:mod:`worker.style_job`). The request is checked here (fields, the painting
like every upload, the name against built-in, stored and in-training styles, the number of custom
styles) and answered 202 with a job of the ordinary job API: ``GET /jobs/{id}`` for progress,
``DELETE /jobs/{id}`` to cancel. The name check, its reservation and the enqueue happen under the
job-admission lock, so two API processes can never start training the same name.

Listing and thumbnails are GET /styles and GET /styles/{name}/thumbnail (app/routers/stylize.py),
which include custom styles; every API process serves a new style within
``ATELIER_CUSTOM_STYLE_POLL_S`` (:mod:`app.services.custom_styles`).
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from typing import Annotated

from fastapi import APIRouter, FastAPI, File, Form, Request, Response, UploadFile
from rq.job import Job
from starlette.concurrency import run_in_threadpool

from app.auth import CallerDep
from app.contract import job_submission_responses, problem_responses
from app.dependencies import KeysDep, QueueDep, SettingsDep
from app.idempotency import IdempotencyDep
from app.job_admission import admit_and_enqueue, enqueue_job
from app.job_wait import WaitDep
from app.problems import Problem
from app.routers.jobs import answered_status, replayed_status
from app.schemas import JobStatus
from app.services.custom_styles import CustomStyleRegistry
from app.services.stylizer import Stylizer
from app.uploads import ACCEPTED_DESCRIPTION, finish_decode, open_image, read_upload, reject_unknown_fields
from app.webhooks import WebhookUrlForm, accepted_target
from core import style_store
from core.store import STYLE_JOB_FUNC
from core.style_store import StyleKeys
from models.imaging import encode_image, resize_longest

router = APIRouter(tags=["styles"])

FORM_FIELDS = {"image", "name", "title", "artist", "iterations", "webhook_url"}
NAME_PATTERN = r"^[a-z0-9_-]{1,40}$"
TEXT_MAX = 200
PAINTING_SIDE = 512  # stored at most this big; the objective takes its Grams at 256 px

CREATE_DESCRIPTION = """
Teach the server a new fast style from one painting. A queue worker learns the painting's *style
code*: the per-style normalization parameters and colour skip of the served multi-style network
(a few thousand numbers), with every convolution frozen (Dumoulin et al. 2017), under the objective
the network was trained with, on the server's training photos. The answer is **202 with a job**:
watch `GET /jobs/{id}` (progress: step, losses, percent), cancel with `DELETE /jobs/{id}`; once it
is `finished`, `GET /jobs/{id}/result` is a held-out photo painted in the new style.

The style is then listed by `GET /styles` with status `custom`, has a thumbnail
(`GET /styles/{name}/thumbnail`), and `POST /stylize` serves it like a built-in style, in blends
too, from every API process within a few seconds. A canceled or failed job leaves nothing behind.
If the server's network is later replaced, the style is listed as `stale` and no longer served.

409: the name is taken (a built-in or custom style, or a job still training it). 507: the server
already holds `ATELIER_MAX_CUSTOM_STYLES` custom styles (counting those in training).
"""


async def startup(app: FastAPI) -> None:
    """Load the stored custom styles for the served network, then keep them fresh in the background."""
    settings = app.state.settings
    registry = CustomStyleRegistry(app.state.redis, settings.key_prefix, settings.custom_style_poll_s)
    stylizer: Stylizer | None = getattr(app.state, "stylizer", None)
    if stylizer is not None and stylizer.network is not None:
        registry.bind(stylizer.network.manifest.network.sha256, stylizer.network.model.code_size)
    app.state.custom_styles = registry
    await registry.refresh_async(force=True)
    registry.start()


async def shutdown(app: FastAPI) -> None:
    registry: CustomStyleRegistry | None = getattr(app.state, "custom_styles", None)
    if registry is not None:
        await registry.close()


def registry_of(request: Request) -> CustomStyleRegistry | None:
    return getattr(request.app.state, "custom_styles", None)


def _served_network(request: Request) -> Stylizer:
    stylizer: Stylizer | None = getattr(request.app.state, "stylizer", None)
    if stylizer is None or not stylizer.available:
        raise Problem(
            503,
            "service-unavailable",
            "No style network is loaded, so no style can be learned for it; see /readyz.",
        )
    return stylizer


def _name_taken(name: str) -> Problem:
    return Problem(409, "style-exists", f"The style name '{name}' is already in use.", field="name")


def _painting_png(data: bytes, max_pixels: int) -> bytes:
    img = finish_decode(open_image(data, "image", max_pixels), "image")
    if max(img.size) > PAINTING_SIDE:
        img = resize_longest(img, PAINTING_SIDE)
    return encode_image(img, "png")


@router.post(
    "/styles",
    status_code=202,
    response_model=JobStatus,
    summary="Train a new fast style from a painting (a queued job)",
    description=CREATE_DESCRIPTION,
    responses=job_submission_responses(
        507,
        accepted="Accepted: a job trains the style; poll the Location.",
        d409="The name is taken: a built-in or custom style, or a job still training one; or a "
        "request with the same Idempotency-Key is still being handled.",
        d503="The queue is full, no style network is loaded, or Redis is unavailable.",
        d507="The server already holds ATELIER_MAX_CUSTOM_STYLES custom styles.",
    ),
)
async def create_style(
    request: Request,
    response: Response,
    settings: SettingsDep,
    queue: QueueDep,
    keys: KeysDep,
    caller: CallerDep,
    idempotency: IdempotencyDep,
    wait: WaitDep,
    image: Annotated[UploadFile, File(description=f"The painting ({ACCEPTED_DESCRIPTION}).")],
    name: Annotated[
        str,
        Form(
            pattern=NAME_PATTERN,
            description="The new style's name: 1 to 40 of a-z, 0-9, `_` and `-`. Must not be in use.",
            examples=["my_painting"],
        ),
    ],
    title: Annotated[
        str | None, Form(max_length=TEXT_MAX, description="The painting's title (default: the name).")
    ] = None,
    artist: Annotated[str | None, Form(max_length=TEXT_MAX, description="Who painted it.")] = None,
    iterations: Annotated[
        int | None,
        Form(
            ge=1,
            description="Fine-tuning iterations (more: closer to the painting, longer job); default "
            "ATELIER_CUSTOM_STYLE_DEFAULT_ITERATIONS, at most ATELIER_CUSTOM_STYLE_MAX_ITERATIONS.",
        ),
    ] = None,
    webhook_url: WebhookUrlForm = None,
) -> JobStatus:
    if idempotency is not None and idempotency.job_id is not None:
        return await replayed_status(
            request, response, queue, keys, settings, caller, idempotency.job_id, wait
        )
    await reject_unknown_fields(request, FORM_FIELDS)
    webhook = await accepted_target(settings, webhook_url)
    stylizer = _served_network(request)
    steps = iterations if iterations is not None else settings.custom_style_default_iterations
    if steps > settings.custom_style_max_iterations:
        raise Problem(
            422,
            "validation-error",
            f"'iterations' must be at most {settings.custom_style_max_iterations}; got {steps}.",
            field="iterations",
        )
    if name in stylizer.names:
        raise _name_taken(name)
    data = await read_upload(image, "image", settings.max_upload_bytes)
    open_image(data, "image", settings.max_image_pixels)  # 415/413 before any decoding
    painting = await run_in_threadpool(_painting_png, data, settings.max_image_pixels)
    digest = hashlib.sha256(data).hexdigest()
    style_keys = StyleKeys(settings.key_prefix)
    job_id = str(uuid.uuid4())
    job_kwargs = {
        "name": name,
        "title": (title or "").strip() or name,
        "artist": (artist or "").strip(),
        "iterations": steps,
        "painting_sha256": digest,
        "owner": caller.digest if caller is not None else None,
    }
    public = {k: v for k, v in job_kwargs.items() if k != "owner"} | {
        "kind": "train-style",
        "crop": settings.custom_style_crop,
        "batch_size": settings.custom_style_batch,
    }

    def enqueue() -> Job:  # runs under the job-admission lock: the name check cannot race
        redis = queue.connection
        stored = style_store.stored_names(redis, style_keys)
        pending = style_store.pending_jobs(redis, style_keys)
        if name in stored or name in pending:
            raise _name_taken(name)
        if len(stored) + len(pending) >= settings.max_custom_styles:
            raise Problem(
                507,
                "too-many-styles",
                f"The server already holds {len(stored) + len(pending)} custom styles (stored or in "
                f"training), its limit of ATELIER_MAX_CUSTOM_STYLES={settings.max_custom_styles}; "
                "delete one (DELETE /styles/{name}) and retry.",
                field="name",
            )
        ttl = settings.result_ttl_s + settings.job_timeout_s
        redis.set(keys.style(job_id, 0), painting, ex=ttl)
        style_store.reserve(redis, style_keys, name, job_id)
        return enqueue_job(
            queue,
            settings,
            STYLE_JOB_FUNC,
            job_id,
            kwargs=job_kwargs,
            meta={"options": public, "total_steps": steps},
            owner=job_kwargs["owner"],
            description=f"train style {name} ({steps} iterations)",
        )

    job = await run_in_threadpool(
        admit_and_enqueue, queue.connection, queue, settings, caller, enqueue, idempotency, webhook
    )
    return await answered_status(
        request, response, queue, keys, settings, caller, job.id, wait, submitted=True
    )


@router.delete(
    "/styles/{name}",
    status_code=204,
    response_class=Response,
    summary="Delete a custom style",
    description="Removes a custom style from every API process (within a few seconds). Styles of the "
    "shipped network cannot be deleted (409); a style still in training is canceled with "
    "`DELETE /jobs/{id}` instead (409). With API keys, only the key that created a style may delete it.",
    responses=problem_responses(
        403,
        404,
        409,
        503,
        d403="This API key did not create the style.",
        d404="No custom style has this name.",
        d409="A built-in style, or one still in training.",
    ),
)
async def delete_style(request: Request, name: str, settings: SettingsDep, caller: CallerDep) -> Response:
    stylizer: Stylizer | None = getattr(request.app.state, "stylizer", None)
    if stylizer is not None and name in stylizer.names:
        raise Problem(
            409,
            "builtin-style",
            f"'{name}' is a style of the shipped network; it cannot be deleted.",
            field="name",
        )
    redis = request.app.state.redis
    style_keys = StyleKeys(settings.key_prefix)

    def remove() -> None:
        meta_raw = redis.hget(style_keys.style(name), "meta")
        if meta_raw is None:
            if name in style_store.pending_jobs(redis, style_keys):
                raise Problem(
                    409,
                    "style-in-training",
                    f"The style '{name}' is still being trained; cancel its job with DELETE /jobs/{{id}}.",
                    field="name",
                )
            raise Problem(404, "not-found", f"No custom style '{name}'.", field="name")
        owner = style_store.CustomStyleMeta.from_json(meta_raw).owner
        if caller is not None and not (owner and hmac.compare_digest(owner, caller.digest)):
            raise Problem(403, "forbidden", f"This API key did not create the style '{name}'.", field="name")
        style_store.delete_style(redis, style_keys, name)

    await run_in_threadpool(remove)
    registry = registry_of(request)
    if registry is not None:
        await registry.refresh_async(force=True)
    return Response(status_code=204)
