"""POST /classify: CIFAR-10 top-k classification of one or several uploaded images.

The model is loaded once at startup. If its weights are missing the app still starts: /readyz reports
why and /classify answers 503, so a broken deploy is visible instead of crash-looping.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Literal

from fastapi import APIRouter, FastAPI, File, Form, Request, UploadFile
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from app.admission import model_gate
from app.contract import problem_responses
from app.problems import Problem
from app.services.classifier import ClassifierService, load_service
from app.services.runtime import elapsed_ms
from app.uploads import read_image, reject_unknown_fields
from models.cifar import CLASSES
from models.classifier import PREPROCESS_DOC

log = logging.getLogger(__name__)

router = APIRouter(tags=["classify"])

FORM_FIELDS = frozenset({"file", "top_k"})


class ModelInfo(BaseModel):
    name: str = Field(examples=["cifar10-airbench"])
    version: str = Field(examples=["cifar-64-256-256-e6-s0"])
    backend: str = Field(examples=["torch"])
    device: str = Field(examples=["cpu"])


class PredictionOut(BaseModel):
    label: str = Field(examples=["cat"])
    probability: float = Field(ge=0, le=1, examples=[0.91])


class ImageResult(BaseModel):
    filename: str | None = Field(examples=["kitty.jpg"])
    predictions: list[PredictionOut]
    tta: Literal["mirror", "none"] = Field(
        description="How this image was scored: with its mirror image averaged in, or alone. With "
        "ATELIER_CLASSIFY_TTA=auto, images that arrive in a busy batch are scored alone.",
        examples=["mirror"],
    )


class ClassifyResponse(BaseModel):
    model: ModelInfo
    results: list[ImageResult] = Field(description="One entry per uploaded file, in upload order.")
    inference_ms: float = Field(
        description="Preprocessing plus (batched) model time for this request; excludes upload and decoding."
    )


CLASSIFY_DESCRIPTION = f"""
Classify images into the 10 CIFAR-10 classes ({", ".join(CLASSES)}).

Send `multipart/form-data` with one or more `file` parts (repeat the field for several images, up to
the server's `max_files_per_request`) and optionally `top_k` (1-10, default 3). Any other form field
is rejected with 422.

**Preprocessing.** {PREPROCESS_DOC}

Probabilities are temperature-calibrated softmax outputs (on CIFAR-10 test images, answers given
with probability 0.9 are right about 90% of the time; see the model card), sorted in decreasing
order (rounded down to 6 decimals, so they sum to at most 1). The model was trained on 32x32
CIFAR-10 photos: anything else is forced into one of the 10 classes.
"""


def _service(request: Request) -> ClassifierService:
    service: ClassifierService | None = getattr(request.app.state, "classifier", None)
    if service is None:
        reason = getattr(request.app.state, "classifier_error", "the classifier is not loaded")
        raise Problem(
            503,
            "service-unavailable",
            f"Classification is unavailable: {reason}.",
            headers={"Retry-After": "30"},
        )
    return service


@router.post(
    "/classify",
    summary="Classify images into the CIFAR-10 classes",
    description=CLASSIFY_DESCRIPTION,
    response_model=ClassifyResponse,
    responses=problem_responses(
        400,
        413,
        415,
        422,
        503,
        504,
        d413="A file is too large or has too many pixels.",
        d415="A file is not a supported image format, or the body is not multipart/form-data.",
        d422="Missing/invalid field, too many files, unknown field, or an empty or corrupt image.",
        d503="Too many requests already wait for the model (ATELIER_CLASSIFY_MAX_PENDING), or it is "
        "not loaded.",
        d504="Not answered within ATELIER_REQUEST_DEADLINE_S.",
    ),
)
async def classify(
    request: Request,
    file: Annotated[list[UploadFile], File(description="Image file(s); repeat the field for several.")],
    top_k: Annotated[int, Form(ge=1, le=10, description="How many classes to return per image.")] = 3,
) -> ClassifyResponse:
    await reject_unknown_fields(request, FORM_FIELDS)
    settings = request.app.state.settings
    if len(file) > settings.max_files_per_request:
        raise Problem(
            422,
            "validation-error",
            f"{len(file)} files sent; at most {settings.max_files_per_request} per request.",
            field="file",
        )
    service = _service(request)
    fields = ["file"] if len(file) == 1 else [f"file[{i}]" for i in range(len(file))]
    async with model_gate(request, "classify").admit():
        images = await asyncio.gather(
            *(
                read_image(up, name, settings.max_upload_bytes, settings.max_image_pixels)
                for up, name in zip(file, fields, strict=True)
            )
        )
        start = time.perf_counter()
        predictions = await service.classify(images, top_k)
        took = elapsed_ms(start)
    return ClassifyResponse(
        model=ModelInfo(**service.describe()),
        results=[
            ImageResult(
                filename=up.filename,
                predictions=[
                    PredictionOut(label=p.label, probability=p.probability) for p in image.predictions
                ],
                tta="mirror" if image.mirrored else "none",
            )
            for up, image in zip(file, predictions, strict=True)
        ],
        inference_ms=took,
    )


async def startup(app: FastAPI) -> None:
    """Load the classifier once (CUDA when present, else CPU) and register its readiness check."""
    settings = app.state.settings
    app.state.classifier = None
    try:
        service = await run_in_threadpool(
            load_service,
            settings.weights_dir / "classifier",
            backend=settings.classify_backend,
            device=settings.device,
            threads=settings.torch_threads,
            max_batch=settings.classify_max_batch,
            max_wait_s=settings.classify_batch_wait_ms / 1000,
            tta_flip=settings.classify_tta is True or settings.classify_tta == "auto",
            tta_max_requests=settings.classify_tta_auto_max_requests
            if settings.classify_tta == "auto"
            else None,
        )
    except (OSError, ValueError, ImportError, RuntimeError) as exc:
        reason = str(exc)
        log.error("classifier not loaded: %s", reason)
        app.state.classifier_error = reason
        app.state.ready_checks["classifier"] = lambda: {"ok": False, "reason": reason}
        return
    app.state.classifier = service
    info = service.describe()
    app.state.ready_checks["classifier"] = lambda: {
        "ok": True,
        "model": info["name"],
        "version": info["version"],
        "backend": info["backend"],
        "device": info["device"],
        "tta_flip": service.tta_flip,
        "tta_max_requests": service.tta_max_requests,
        "images_scored": dict(service.images_scored),
        "temperature": service.temperature,
        "calibration": service.calibration,
        "batches": service.stats.batches,
        "largest_batch": service.stats.largest_batch,
    }
    log.info("classifier %s loaded on %s (%s)", service.version, service.device, service.backend)


async def shutdown(app: FastAPI) -> None:
    """Stop the batcher (pending requests get an error) and drop the model."""
    service: ClassifierService | None = getattr(app.state, "classifier", None)
    if service is not None:
        await service.close()
    app.state.classifier = None
