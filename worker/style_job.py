"""The custom-style job: learn one style code of the served network for an uploaded painting.

Runs in a work horse. Loads the network from ``ATELIER_WEIGHTS_DIR`` (sha256-verified), reads the
objective the network was trained with from its metadata, and fine-tunes only the style code
(:mod:`models.finetune_style`) on the *training* split of ``<ATELIER_DATA_DIR>/photos`` (the split of
:mod:`models.photos`; the held-out photos are kept for evaluation and the preview). Progress
(step, losses, percent) goes to the job's meta like a Gatys job's, and its preview is that held-out
photo painted in the code as it stands, so the style is seen forming; a cancel request stops it at
the next step.

Only a finished job writes the style (code, metadata, thumbnail: :mod:`core.style_store`), in one
transaction; a failed or canceled one deletes its painting and gives its name back, so no half-made
style is ever left behind. The job's result image is a held-out photo painted in the new style.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from redis.exceptions import RedisError

from core.settings import Settings
from core.style_store import CustomStyleMeta, StyleKeys, release, save_style
from models.finetune_style import (
    FinetuneConfig,
    StepReport,
    balance_for,
    finetune_code,
    initial_code,
    network_with_code,
    trained_painting_grams,
)
from models.imaging import encode_image, pil_to_tensor, resize_longest, tensor_to_pil
from models.photos import list_photos, split_photos
from models.style_objective import StyleObjective
from models.styles import LoadedNetwork, load_network, thumbnail
from models.transformer import stylize
from worker import runtime
from worker.jobs import ProgressRecorder, job_run, load_image, raise_if_canceled, store_result
from worker.patience import patiently

PREVIEW_SIDE = 256
THUMBNAIL_QUALITY = 85


def training_photos(data_dir: Path) -> tuple[list[Path], list[Path]]:
    """(train, held_out) photos of ``<data_dir>/photos``; a clear error when there are none to train on."""
    folder = Path(data_dir) / "photos"
    photos = list_photos(folder) if folder.is_dir() else []
    train, held_out = split_photos(photos)
    if not train:
        raise ValueError(
            f"no training photos in {folder} (found {len(photos)} photo(s), {len(held_out)} held out): "
            "a custom style trains on JPEG/PNG/WebP photos there; set ATELIER_DATA_DIR to a folder "
            "with a photos/ subfolder on the worker's machine"
        )
    return train, held_out


def _objective(network: LoadedNetwork) -> StyleObjective:
    text = network.metadata.get("atelier.objective")
    if not text:
        raise ValueError("the served style network has no stored objective (atelier.objective)")
    return StyleObjective.from_json(text)


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=THUMBNAIL_QUALITY)
    return buf.getvalue()


def _painted(network: LoadedNetwork, code: torch.Tensor, photo: Image.Image) -> Image.Image:
    """``photo`` (a held-out one, at most PREVIEW_SIDE) painted with the style ``code``."""
    with torch.inference_mode():
        return tensor_to_pil(stylize(network_with_code(network.model, code), pil_to_tensor(photo)))


def _preview_photo(path: Path) -> Image.Image:
    return resize_longest(Image.open(path).convert("RGB"), PREVIEW_SIDE)


def _training_progress(
    progress: ProgressRecorder, network: LoadedNetwork, photo: Image.Image
) -> Callable[[StepReport], None]:
    """Each fine-tune step to the job's progress; its preview is the held-out photo painted in the
    code as it stands, rendered only when a preview is due (so the style is seen forming)."""

    def on_step(report: StepReport) -> None:
        code = report.code
        image = (lambda: _painted(network, code, photo)) if code is not None else None
        progress.report(report.step, report.total, {"losses": report.losses}, image)

    return on_step


def finetune_config(settings: Settings, iterations: int) -> FinetuneConfig:
    return FinetuneConfig(
        iterations=iterations, batch_size=settings.custom_style_batch, crop=settings.custom_style_crop
    )


def train_style_job(
    name: str, title: str, artist: str, iterations: int, painting_sha256: str, owner: str | None = None
) -> dict[str, Any]:
    """Fine-tune the style code for the job's painting and store it as the custom style ``name``."""
    with job_run("train_style_job") as run:
        settings, keys, redis, job = run.settings, run.keys, run.redis, run.job
        style_keys = StyleKeys(settings.key_prefix)
        try:
            painting = load_image(redis, keys.style(job.id, 0), "painting", settings.max_image_pixels)
            train, held_out = training_photos(settings.data_dir)
            network = load_network(settings.weights_dir)
            objective = _objective(network)
            device = runtime.resolve_device(settings.device)
            vgg = runtime.vgg_on(device)
            grams = objective.painting_grams(vgg, painting)
            balance = settings.custom_style_balance == "trained"
            trained = (
                trained_painting_grams(network, settings.weights_dir, objective, vgg)
                if balance or settings.custom_style_init == "nearest"
                else {}
            )
            init, how = initial_code(
                network.model,
                settings.custom_style_init,
                objective=objective,
                grams=grams,
                trained_grams=trained,
            )
            fitted, style_scale = (
                balance_for(objective, vgg, grams, train, trained) if balance else (objective, 1.0)
            )
            photo = _preview_photo((held_out or train)[0])
            progress = ProgressRecorder.for_job(job, keys, settings)
            result = finetune_code(
                network.model,
                fitted,
                vgg,
                grams,
                train,
                finetune_config(settings, iterations),
                init=init,
                device=device,
                on_step=_training_progress(progress, network, photo),
            )
            raise_if_canceled(redis, keys, job.id)  # asked for during the last step
            meta = CustomStyleMeta(
                name=name,
                title=title,
                artist=artist,
                painting_sha256=painting_sha256,
                network_sha256=network.manifest.network.sha256,
                code_size=network.model.code_size,
                created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                iterations=result.iterations,
                losses={k: round(v, 4) for k, v in result.losses.items()},
                seconds=result.seconds,
                init=how,
                style_weight_scale=round(style_scale, 4),
                owner=owner,
            )
            preview = encode_image(_painted(network, result.code, photo), "png")
            info = {
                "style": name,
                "iterations": result.iterations,
                "losses": meta.losses,
                "seconds": result.seconds,
                "style_weight_scale": meta.style_weight_scale,
                "bf16": result.bf16,
                "device": device.type,
                "network_sha256": meta.network_sha256,
            }
            job.meta["result_info"] = info  # GET /jobs/{id} shows it once the job has finished
            job.meta["progress"] = {
                "step": result.iterations,
                "total_steps": result.iterations,
                "percent": 100.0,
                "losses": meta.losses,
            }
            patiently(job.save_meta, "progress")
            thumbnail_jpeg = _jpeg(thumbnail(painting))
            patiently(
                lambda: save_style(
                    redis, style_keys, meta, result.code, thumbnail_jpeg, settings.custom_style_ttl_s
                ),
                "the custom style",
            )

            seconds = run.seconds
            store_result(redis, keys, job.id, preview, settings.result_ttl_s, seconds, keys.style(job.id, 0))
            return info
        except BaseException:
            with contextlib.suppress(RedisError):  # the failure itself is what must be recorded
                release(redis, style_keys, name, job.id)
                redis.delete(keys.style(job.id, 0))
            raise
