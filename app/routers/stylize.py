"""Fast style transfer: GET /styles and POST /stylize (synchronous, micro-batched).

The networks are loaded once at startup from the verified manifest. When none loads, the app
still starts: /readyz reports why and /stylize answers 503 instead of failing at import time.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, File, Form, Request, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from app.dependencies import SettingsDep
from app.problems import Problem
from app.services.runtime import elapsed_ms
from app.services.stylizer import Stylizer
from app.uploads import read_image, reject_unknown_fields
from models.transformer import MIN_SIDE

log = logging.getLogger(__name__)

router = APIRouter(tags=["stylize"])

FORM_FIELDS = {"file", "style", "size", "strength", "preserve_color", "format"}


async def startup(app: FastAPI) -> None:
    """Load every style network once; register a readiness check either way."""
    settings = app.state.settings
    try:
        stylizer: Stylizer | None = await run_in_threadpool(
            Stylizer.load,
            settings.weights_dir,
            device=settings.device,
            threads=settings.torch_threads,
            max_batch=settings.stylize_max_batch,
            max_wait_s=settings.stylize_batch_wait_ms / 1000,
        )
        failure = ""
    except Exception as exc:  # the app must come up without style networks
        log.exception("style networks could not be loaded")
        stylizer, failure = None, str(exc)
    app.state.stylizer = stylizer

    def check() -> dict[str, Any]:
        if stylizer is None:
            return {"ok": False, "styles": [], "device": settings.device, "error": failure}
        return stylizer.ready()

    app.state.ready_checks["stylizer"] = check


async def shutdown(app: FastAPI) -> None:
    """Stop the batcher (pending requests get an error rather than hanging)."""
    stylizer: Stylizer | None = getattr(app.state, "stylizer", None)
    if stylizer is not None:
        await stylizer.close()


def _stylizer(request: Request) -> Stylizer:
    stylizer: Stylizer | None = getattr(request.app.state, "stylizer", None)
    if stylizer is None or not stylizer.styles:
        raise Problem(
            503,
            "service-unavailable",
            "No style network is loaded; see /readyz (checks.stylizer) for the reason.",
        )
    return stylizer


@router.get("/styles", summary="The style networks this server can apply")
async def list_styles(request: Request) -> dict[str, Any]:
    stylizer: Stylizer | None = getattr(request.app.state, "stylizer", None)
    if stylizer is None:
        return {"styles": []}
    return {"styles": [stylizer.entry(name).public() for name in stylizer.names]}


@router.post(
    "/stylize",
    summary="Stylize a photo with a fast style network",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}},
)
async def stylize(
    request: Request,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="The photo (PNG, JPEG, WebP, GIF, BMP or TIFF).")],
    style: Annotated[str, Form(description="A style name from GET /styles.")],
    size: Annotated[
        int | None,
        Form(description="Longest side of the output; default: the photo's, capped at the maximum."),
    ] = None,
    strength: Annotated[float, Form(ge=0, le=1, description="0: the photo, 1: fully stylized.")] = 1.0,
    preserve_color: Annotated[
        bool, Form(description="Keep the photo's colours (luminance transfer).")
    ] = False,
    format: Annotated[Literal["png", "jpeg", "webp"], Form(description="Output image format.")] = "png",
) -> Response:
    await reject_unknown_fields(request, FORM_FIELDS)
    stylizer = _stylizer(request)
    if style not in stylizer.styles:
        raise Problem(
            422,
            "unknown-style",
            f"Unknown style '{style}'. Valid styles: {', '.join(stylizer.names)}.",
            field="style",
            valid_styles=stylizer.names,
        )
    max_size = settings.stylize_max_size
    if size is not None and not MIN_SIDE <= size <= max_size:
        raise Problem(
            422,
            "validation-error",
            f"'size' must be between {MIN_SIDE} and {max_size}; got {size}.",
            field="size",
        )
    start = time.perf_counter()
    image = await read_image(file, "file", settings.max_upload_bytes, settings.max_image_pixels)
    decode_ms = elapsed_ms(start)
    result = await stylizer.stylize(
        style, image, size=size, max_size=max_size, strength=strength, keep_colors=preserve_color, fmt=format
    )
    t = {"decode": decode_ms, **result.timings_ms}
    t["total"] += decode_ms
    headers = {
        "X-Atelier-Style": style,
        "X-Atelier-Model": stylizer.model_id(style),
        "X-Atelier-Inference-Ms": f"{t['infer']:.1f}",
        "X-Atelier-Batch-Size": str(result.batch_size),
        "Server-Timing": ", ".join(f"{k};dur={v:.1f}" for k, v in t.items()),
        "Content-Disposition": f'inline; filename="{style}.{format}"',
    }
    return Response(result.body, media_type=result.media_type, headers=headers)
