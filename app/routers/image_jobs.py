"""POST /jobs/stylize-image: a named style on a photo larger than `/stylize` answers at once.

`/stylize` stops at ATELIER_STYLIZE_MAX_SIZE (1024 px) because one forward pass of a 12-megapixel
photo takes gigabytes and tens of seconds. This queues it instead: a worker runs the same network
tile by tile with the whole photo's statistics (models/tiled.py), so the result is what one forward
of the whole photo gives, seamless, up to ATELIER_STYLIZE_JOB_MAX_SIZE. Everything a client can get
wrong is caught here, and the style (built-in, blend or custom) is resolved to the network's style
code before anything is queued. Polled, cancelled and downloaded through the job API
(app/routers/jobs.py).
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from PIL import Image
from rq.job import Job
from starlette.concurrency import run_in_threadpool

from app.auth import CallerDep
from app.contract import job_submission_responses
from app.dependencies import KeysDep, QueueDep, SettingsDep
from app.idempotency import IdempotencyDep
from app.job_admission import admit_and_enqueue, enqueue_job
from app.job_wait import WaitDep
from app.problems import Problem
from app.routers.jobs import answered_status, replayed_status
from app.routers.stylize import check_size, resolve_style
from app.schemas import JobStatus
from app.uploads import ACCEPTED_DESCRIPTION, read_image, reject_unknown_fields
from app.webhooks import WebhookUrlForm, accepted_target
from core.job_options import ImageJobOptions
from core.store import IMAGE_JOB_FUNC
from models.imaging import encode_image, fit_longest, resize_longest
from models.tiled import tile_passes

router = APIRouter(prefix="/jobs", tags=["jobs"])

FORM_FIELDS = {"file", "style", "style_weights", "size", "strength", "preserve_color", "webhook_url"}

DESCRIPTION = """
The fast style networks of `POST /stylize`, for photos larger than it answers at once: send the photo
as `file` and a `style` (a name from `GET /styles`, a blend, or a custom style); the output's longest
side may be up to the server's `ATELIER_STYLIZE_JOB_MAX_SIZE` (4096 by default), e.g. a 12-megapixel
phone photo at full size. The answer is 202 with a job: poll `GET /jobs/{id}` (progress in tile
passes; previews show the picture as it is painted), cancel with `DELETE /jobs/{id}`, download
`GET /jobs/{id}/result` (PNG, or `?format=jpeg|webp`).

The worker runs the network tile by tile, each tile with the whole photo's instance-norm statistics,
so the result is seamless and equal to one forward pass of the whole photo, in the memory of a small
tile. The network paints its strokes at the same size in pixels at any resolution, so a larger
output has finer strokes relative to the picture.
"""


def _working_png(img: Image.Image, longest: int) -> bytes:
    """The photo at the job's output size (larger or smaller), as PNG (what the worker reads back)."""
    if max(img.size) != longest:
        img = resize_longest(img, longest)
    return encode_image(img, "png")


@router.post(
    "/stylize-image",
    status_code=202,
    response_model=JobStatus,
    summary="Submit a large photo for fast style transfer (a job)",
    description=DESCRIPTION,
    responses=job_submission_responses(
        d503="The queue is full, no style network is loaded, or Redis is unavailable."
    ),
)
async def submit_stylize_image(
    request: Request,
    response: Response,
    settings: SettingsDep,
    queue: QueueDep,
    keys: KeysDep,
    caller: CallerDep,
    idempotency: IdempotencyDep,
    wait: WaitDep,
    file: Annotated[
        UploadFile, File(description=f"The photo ({ACCEPTED_DESCRIPTION}); its colour profile is honoured.")
    ],
    style: Annotated[
        str,
        Form(
            min_length=1,
            description="A style name from GET /styles, or up to 4 comma-separated names to blend.",
        ),
    ],
    style_weights: Annotated[
        str | None,
        Form(description="With a blend: one weight per style, comma-separated (`0.7,0.3`). Default: equal."),
    ] = None,
    size: Annotated[
        int | None,
        Form(description="Longest side of the output; default: the photo's, capped at the maximum."),
    ] = None,
    strength: Annotated[
        float, Form(ge=0, le=1, description="1: fully stylized; lower values cross-fade with the photo.")
    ] = 1.0,
    preserve_color: Annotated[
        bool, Form(description="Keep the photo's colours (luminance transfer).")
    ] = False,
    webhook_url: WebhookUrlForm = None,
) -> JobStatus:
    if idempotency is not None and idempotency.job_id is not None:
        return await replayed_status(
            request, response, queue, keys, settings, caller, idempotency.job_id, wait
        )
    await reject_unknown_fields(request, FORM_FIELDS)
    webhook = await accepted_target(settings, webhook_url)
    max_size = settings.stylize_job_max_size
    check_size(size, max_size, "ATELIER_STYLIZE_JOB_MAX_SIZE")
    stylizer, names, weights, code = resolve_style(request, style, style_weights)
    assert stylizer.network is not None
    photo = await read_image(file, "file", settings.max_upload_bytes, settings.max_image_pixels)
    longest = size if size is not None else min(max(photo.size), max_size)
    width, height = fit_longest(photo.width, photo.height, longest)
    if width * height > settings.max_image_pixels:  # the worker refuses to decode more
        raise Problem(
            422,
            "validation-error",
            f"'size' {longest} would make {width}x{height} pixels, more than this server's "
            f"{settings.max_image_pixels:,} (ATELIER_MAX_IMAGE_PIXELS); ask for a smaller size.",
            field="size",
        )
    content_png = await run_in_threadpool(_working_png, photo, longest)
    options = ImageJobOptions(
        width=width,
        height=height,
        style=",".join(names),
        style_weights=[w / sum(weights) for w in weights],
        network=stylizer.network.manifest.network.version,
        code=[float(v) for v in code.flatten()],
        strength=strength,
        preserve_color=preserve_color,
    )
    passes = tile_passes(stylizer.network.model, height, width)
    job_id = str(uuid.uuid4())
    public = options.public() | {"kind": "stylize-image", "model": stylizer.model_id}

    def enqueue() -> Job:
        ttl = settings.result_ttl_s + settings.job_timeout_s
        queue.connection.set(keys.content(job_id), content_png, ex=ttl)
        return enqueue_job(
            queue,
            settings,
            IMAGE_JOB_FUNC,
            job_id,
            kwargs={"options": options.to_dict()},
            meta={"options": public, "total_steps": passes, "progress": {"step": 0, "total_steps": passes}},
            owner=caller.digest if caller is not None else None,
            description=f"stylize {width}x{height} {options.style}",
        )

    job = await run_in_threadpool(
        admit_and_enqueue, queue.connection, queue, settings, caller, enqueue, idempotency, webhook
    )
    return await answered_status(
        request, response, queue, keys, settings, caller, job.id, wait, submitted=True
    )
