"""The large-image stylization job: the fast style network on a photo of up to ATELIER_STYLIZE_JOB_MAX_SIZE.

`/stylize` answers at once up to 1024 px; beyond that one forward pass needs gigabytes, so the job runs
the network tile by tile with the whole image's statistics (:mod:`models.tiled`): the result equals
one forward of the whole photo, in the memory of a 512 px tile. Progress counts tile passes; once
the last pass paints, each preview shows the result so far (the photo where no tile is painted yet).
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from core.job_options import ImageJobOptions
from models.imaging import encode_image, finish_stylized, pil_to_tensor, resize_longest, tensor_to_pil
from models.styles import load_network
from models.tiled import stylize_tiled
from worker.jobs import ProgressRecorder, job_run, load_image, store_result
from worker.patience import patiently

PREVIEW_SIDE = 1024  # previews are for watching the job, not the result


def _preview(partial: torch.Tensor) -> Image.Image:
    img = tensor_to_pil(partial)
    return resize_longest(img, PREVIEW_SIDE) if max(img.size) > PREVIEW_SIDE else img


def stylize_image_job(options: dict[str, Any]) -> dict[str, Any]:
    """Stylize the job's photo; the PNG goes to its result key, the return value is the report."""
    with job_run("stylize_image_job") as run:
        settings, keys, job = run.settings, run.keys, run.job
        opts = ImageJobOptions.from_dict(options)
        network = load_network(settings.weights_dir)
        if network.manifest.network.version != opts.network:
            raise ValueError("the style network was replaced after the job was queued; submit the job again")
        code = torch.tensor([opts.code], dtype=torch.float32)
        photo = load_image(run.redis, keys.content(job.id), "photo", settings.max_image_pixels)
        if photo.size != (opts.width, opts.height):
            raise ValueError(f"the stored photo is {photo.size}, not the job's {opts.width}x{opts.height}")
        pixels = pil_to_tensor(photo)
        progress = ProgressRecorder.for_job(job, keys, settings)

        def on_tile(done: int, total: int, partial: torch.Tensor | None) -> None:
            progress.report(done, total, {}, None if partial is None else lambda: _preview(partial))

        stylized = stylize_tiled(network.model, pixels, code, on_progress=on_tile)  # on the CPU, eval
        result = finish_stylized(photo, pixels, stylized, opts.strength, opts.preserve_color)
        png = encode_image(result, "png")
        info = {"width": photo.width, "height": photo.height, "bytes": len(png)}
        info["seconds"] = round(run.seconds, 1)
        job.meta["result_info"] = info
        patiently(job.save_meta, "progress")
        store_result(run.redis, keys, job.id, png, settings.result_ttl_s, run.seconds)
        return info
