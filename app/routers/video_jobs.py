"""POST /jobs/stylize-video: check the upload, then queue it; a worker streams it through the network.

Everything a client can get wrong is caught here, before anything is queued: unknown fields, the
style, the size and frame rate, and the video itself (probed in a thread: container, streams,
frame count, duration, frame size, whether it is whole and its first frame decodes). The job is
then polled, cancelled and downloaded through the same job API as Gatys jobs (app/routers/jobs.py).
"""

from __future__ import annotations

import uuid
from fractions import Fraction
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, File, Form, Request, Response, UploadFile
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
from app.schemas import JobStatus
from app.uploads import read_image, read_upload, reject_unknown_fields
from app.webhooks import WebhookUrlForm, accepted_target
from core.job_options import VideoJobOptions
from core.settings import Settings
from core.store import VIDEO_JOB_FUNC
from models.imaging import encode_image, resize_longest
from models.video import encoder_for, expected_frames, output_size
from models.video_probe import ACCEPTED_DESCRIPTION, VideoInfo, VideoLimits, VideoRejected, probe_video

router = APIRouter(prefix="/jobs", tags=["jobs"])

FORM_FIELDS = {"file", "style", "style_image", "size", "fps", "format", "smoothing", "webhook_url"}
STYLE_IMAGE_SIDE = 512  # the painting is stored at most this big; the predictor looks at 256×256
# How each kind of rejected video is answered; the field is always 'file'.
REJECTIONS: dict[str, tuple[int, str]] = {
    "not-video": (415, "unsupported-media-type"),
    "truncated": (422, "invalid-video"),
    "no-video-stream": (422, "invalid-video"),
    "no-frames": (422, "invalid-video"),
    "too-long": (413, "video-too-large"),
    "too-many-frames": (413, "video-too-large"),
    "too-large": (413, "video-too-large"),
}

DESCRIPTION = f"""
Send a video as `file` ({ACCEPTED_DESCRIPTION}) and a style: `style` (a name from `GET /styles`) or
`style_image` (any painting). The answer is 202 with a job: poll `GET /jobs/{{id}}` (progress in
frames and frames/s), cancel with `DELETE /jobs/{{id}}`, download `GET /jobs/{{id}}/result`.

The result is H.264 in MP4 (`video/mp4`; VP9 in WebM where the server's FFmpeg has no H.264
encoder), or a GIF (`image/gif`) for a GIF, or when `format=gif`. Frame count, frame rate and
aspect ratio are kept; audio is copied through unchanged (re-encoded to AAC only when MP4 cannot
carry its codec; a GIF has none).
"""


LIMITS_HEADING = "**Limits of this server**"


def limits_text(settings: Settings) -> str:
    """The configured limits, as /docs shows them under the operation."""
    return (
        f"\n\n{LIMITS_HEADING} (`ATELIER_VIDEO_*` settings): at most {settings.video_max_bytes:,} bytes, "
        f"{settings.video_max_seconds:g} s, {settings.video_max_frames:,} frames and "
        f"{settings.video_max_pixels:,} pixels per frame; output longest side at most "
        f"{settings.video_max_size} px; at most {settings.video_max_output_megapixels:g} million output "
        "pixels in all (frames x width x height: the work one job may take), so long clips need a "
        "smaller `size` or `fps`."
    )


def check_work(total_frames: int, width: int, height: int, settings: Settings) -> None:
    """413 before queueing a job that could not finish within the job timeout on this server."""
    megapixels = total_frames * width * height / 1e6
    budget = settings.video_max_output_megapixels
    if megapixels > budget:
        most = int(budget * 1e6 / (width * height))
        raise Problem(
            413,
            "video-too-large",
            f"'file' would make {total_frames:,} frames of {width}x{height} ({megapixels:,.0f} million "
            f"pixels), more than the {budget:g} million one job may stylize "
            f"(ATELIER_VIDEO_MAX_OUTPUT_MEGAPIXELS); at this size at most {most:,} frames fit: send a "
            "shorter clip, or a smaller 'size' or 'fps'.",
            field="file",
            reason="too-much-work",
        )


def document_limits(app: FastAPI) -> None:
    """Append this server's limits to the operation's description in /openapi.json (and /docs)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        doc = build()
        operation = doc.get("paths", {}).get("/jobs/stylize-video", {}).get("post")
        if operation is not None and LIMITS_HEADING not in operation.get("description", ""):
            operation["description"] = operation.get("description", "") + limits_text(app.state.settings)
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def video_limits(settings: Settings) -> VideoLimits:
    return VideoLimits(settings.video_max_seconds, settings.video_max_frames, settings.video_max_pixels)


async def read_video(upload: UploadFile, max_bytes: int) -> bytes:
    """The upload's bytes, stopping at ``max_bytes`` (413); an empty file is a 422 about a video."""
    try:
        return await read_upload(upload, "file", max_bytes)
    except Problem as problem:
        if problem.status == 422:
            raise Problem(
                422, "invalid-video", f"'file' is empty; send a {ACCEPTED_DESCRIPTION} video.", field="file"
            ) from None
        raise


async def probe(data: bytes, settings: Settings) -> VideoInfo:
    try:
        return await run_in_threadpool(probe_video, data, video_limits(settings))
    except VideoRejected as rejected:
        status, slug = REJECTIONS[rejected.reason]
        raise Problem(status, slug, f"'file' {rejected}.", field="file", reason=rejected.reason) from None


def _check_style(request: Request, style: str | None, has_image: bool) -> None:
    if (style is None) == (not has_image):
        problem = "both were sent" if has_image else "neither was sent"
        raise Problem(
            422,
            "validation-error",
            f"Send exactly one of 'style' (a name from GET /styles) and 'style_image'; {problem}.",
            field="style",
            errors=[
                {"field": "style", "message": f"exactly one of style and style_image; {problem}"},
                {"field": "style_image", "message": f"exactly one of style and style_image; {problem}"},
            ],
        )
    if has_image:
        if getattr(request.app.state, "arbitrary_stylizer", None) is None:
            raise Problem(
                503,
                "service-unavailable",
                "The style_image model is not loaded; see /readyz (checks.arbitrary_stylizer).",
                field="style_image",
            )
        return
    stylizer = getattr(request.app.state, "stylizer", None)
    names: list[str] = list(getattr(stylizer, "names", []) or [])
    if not names:
        raise Problem(503, "service-unavailable", "No style network is loaded; see /readyz.", field="style")
    if style not in names:
        raise Problem(
            422,
            "unknown-style",
            f"'style' must be a name from GET /styles; {style!r} is not. Valid: {', '.join(names)}.",
            field="style",
        )


def _frame_rate(fps: float | None, info: VideoInfo) -> Fraction | None:
    """A lower output frame rate drops frames; a higher one would only repeat them, so it is refused."""
    if fps is None:
        return None
    rate = Fraction(fps).limit_denominator(1001)
    if rate > info.fps + Fraction(1, 1000):
        raise Problem(
            422,
            "validation-error",
            f"'fps' must be at most the video's own frame rate ({float(info.fps):.3g}); got {fps:g}.",
            field="fps",
        )
    return None if rate >= info.fps else rate


def _painting_png(img: Any) -> bytes:
    if max(img.size) > STYLE_IMAGE_SIDE:
        img = resize_longest(img, STYLE_IMAGE_SIDE)
    return encode_image(img, "png")


@router.post(
    "/stylize-video",
    status_code=202,
    response_model=JobStatus,
    summary="Submit a video stylization job",
    description=DESCRIPTION,
    responses=job_submission_responses(
        d413="The video (or the request) has too many bytes, seconds, frames or pixels per frame, or "
        "more output pixels in all than one job may stylize.",
        d415="The file is not a video in an accepted container, or the body is not multipart/form-data.",
        d422="A field is invalid, the video is truncated, corrupt, or has no video frames, or the "
        "Idempotency-Key was used for a different request.",
        d503="The queue is full, a model is not loaded, or Redis is unavailable.",
    ),
)
async def submit_stylize_video(
    request: Request,
    response: Response,
    settings: SettingsDep,
    queue: QueueDep,
    keys: KeysDep,
    caller: CallerDep,
    idempotency: IdempotencyDep,
    wait: WaitDep,
    file: Annotated[UploadFile, File(description=f"The video: {ACCEPTED_DESCRIPTION}.")],
    style: Annotated[str | None, Form(description="A style name from GET /styles.")] = None,
    style_image: Annotated[
        UploadFile | None, File(description="Any painting, used as the style (instead of `style`).")
    ] = None,
    size: Annotated[
        int | None,
        Form(ge=16, description="Longest side of the output; default: the video's own, capped."),
    ] = None,
    fps: Annotated[
        float | None,
        Form(gt=0, le=120, description="Output frame rate, at most the video's; default: the video's own."),
    ] = None,
    format: Annotated[
        Literal["auto", "mp4", "gif"],
        Form(description="auto: GIF for a GIF, else MP4 (H.264). 'mp4' is WebM/VP9 without H.264."),
    ] = "auto",
    smoothing: Annotated[
        float | None,
        Form(ge=0, lt=1, description="Temporal blend against flicker where the input is still; 0: off."),
    ] = None,
    webhook_url: WebhookUrlForm = None,
) -> JobStatus:
    if idempotency is not None and idempotency.job_id is not None:
        return await replayed_status(
            request, response, queue, keys, settings, caller, idempotency.job_id, wait
        )
    await reject_unknown_fields(request, FORM_FIELDS)
    webhook = await accepted_target(settings, webhook_url)
    _check_style(request, style, style_image is not None)
    if size is not None and size > settings.video_max_size:
        raise Problem(
            422, "validation-error", f"'size' must be at most {settings.video_max_size}.", field="size"
        )
    painting = None
    if style_image is not None:
        limits = (settings.max_upload_bytes, settings.max_image_pixels)
        img = await read_image(style_image, "style_image", *limits)
        painting = await run_in_threadpool(_painting_png, img)
    data = await read_video(file, settings.video_max_bytes)
    info = await probe(data, settings)
    rate = _frame_rate(fps, info)
    output = format if format != "auto" else ("gif" if info.container == "gif" else "mp4")
    encoder = encoder_for(output)
    longest = size if size is not None else min(max(info.width, info.height), settings.video_max_size)
    width, height = output_size(info.width, info.height, longest, even=encoder.even_sides)
    total = expected_frames(info.frames, info.duration_s, rate, info.fps)
    check_work(total, width, height, settings)
    options = VideoJobOptions(
        width=width,
        height=height,
        output=output,
        total_frames=total,
        style=style,
        style_image=painting is not None,
        fps=(rate.numerator, rate.denominator) if rate else None,
        smoothing=settings.video_smoothing if smoothing is None else smoothing,
        batch_frames=settings.video_batch_frames,
    )
    payload = options.to_dict()
    job_id = str(uuid.uuid4())
    public = payload | {"kind": "stylize-video", "input": info.public(), "media_type": encoder.media_type}

    def enqueue() -> Job:
        ttl = settings.result_ttl_s + settings.job_timeout_s
        with queue.connection.pipeline() as pipe:
            pipe.set(keys.video(job_id), data, ex=ttl)
            if painting is not None:
                pipe.set(keys.style(job_id, 0), painting, ex=ttl)
            pipe.execute()
        return enqueue_job(
            queue,
            settings,
            VIDEO_JOB_FUNC,
            job_id,
            kwargs={"options": payload},
            meta={
                "options": public,
                "total_steps": total,
                "progress": {"step": 0, "total_steps": total, "frames": 0, "total_frames": total},
                "result_media_type": encoder.media_type,
                "result_extension": encoder.extension,
            },
            owner=caller.digest if caller is not None else None,
            description=f"video {width}x{height} {total} frames",
        )

    job = await run_in_threadpool(
        admit_and_enqueue, queue.connection, queue, settings, caller, enqueue, idempotency, webhook
    )
    return await answered_status(
        request, response, queue, keys, settings, caller, job.id, wait, submitted=True
    )
