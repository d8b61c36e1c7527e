"""The loaded style networks behind POST /stylize, shared by all requests through one MicroBatcher.

Every request is resized and converted to a tensor in a worker thread, submitted with the key
(style, height, width) so only images that can be stacked share a forward pass, and blended,
colour-corrected and encoded in a worker thread again: the batcher's single thread does nothing but
run networks.

Backends: on CPU the networks are exported to ONNX at load time and run by ONNX Runtime (measured
~25-30 % faster than eager PyTorch for these nets, bit-for-bit fp32; bench/stylize.py); on CUDA
they run in PyTorch (channels_last, inference mode). Both pad inputs to a multiple of 4 with
reflection and crop the output, so every size comes back exactly as requested.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from PIL import Image
from starlette.concurrency import run_in_threadpool
from torch import Tensor

from app.batching import BatchStats, MicroBatcher
from app.services.runtime import elapsed_ms, resolve_device
from models.imaging import (
    MEDIA_TYPES,
    encode_image,
    pil_to_tensor,
    preserve_color,
    resize_longest,
    tensor_to_pil,
)
from models.styles import LoadedStyle, StyleEntry, load_all
from models.transformer import export_onnx, pad_to_multiple, stylize

log = logging.getLogger(__name__)

Backend = Literal["auto", "torch", "onnx"]


class _Runner(Protocol):
    def __call__(self, x: Tensor) -> Tensor: ...


class TorchRunner:
    """Eager PyTorch: inference mode, channels_last on CUDA (on CPU it measured slower for these nets)."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.device = device
        self.channels_last = device.type == "cuda"
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = model.to(device=device, memory_format=fmt).eval()

    def __call__(self, x: Tensor) -> Tensor:
        with torch.inference_mode():
            x = x.to(self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return stylize(self.model, x).float().cpu()


class OnnxRunner:
    """ONNX Runtime on CPU; the graph has dynamic batch, height and width."""

    def __init__(self, model: torch.nn.Module, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(export_onnx(model), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: Tensor) -> Tensor:
        padded, h, w = pad_to_multiple(x)
        out = self.session.run(
            None, {self.input_name: np.ascontiguousarray(padded.numpy(), dtype=np.float32)}
        )[0]
        return torch.from_numpy(out[..., :h, :w]).clamp_(0.0, 1.0)


@dataclass(frozen=True)
class StyleJob:
    """One image waiting for its style network (1×3×H×W in [0, 1])."""

    pixels: Tensor
    submitted: float


@dataclass(frozen=True)
class StyleOutput:
    pixels: Tensor
    infer_ms: float  # the forward pass of the whole batch this image was part of
    queue_ms: float  # from submission to the start of that forward pass
    batch_size: int


@dataclass(frozen=True)
class StylizeResult:
    body: bytes
    media_type: str
    width: int
    height: int
    timings_ms: dict[str, float]
    batch_size: int


class Stylizer:
    """All loaded style networks plus the batcher that feeds them."""

    def __init__(
        self,
        styles: dict[str, LoadedStyle],
        errors: dict[str, str],
        *,
        device: torch.device,
        backend: Backend = "auto",
        threads: int = 0,
        max_batch: int = 8,
        max_wait_s: float = 0.002,
    ) -> None:
        if backend == "auto":
            backend = "onnx" if device.type == "cpu" and _has_onnxruntime() else "torch"
        self.backend = backend
        self.device = device
        self.styles = styles
        self.errors = dict(errors)
        self.runners: dict[str, _Runner] = {}
        for name, loaded in list(styles.items()):
            try:
                self.runners[name] = (
                    OnnxRunner(loaded.model, threads)
                    if backend == "onnx"
                    else TorchRunner(loaded.model, device)
                )
            except Exception as exc:  # e.g. an export failure: drop this style, keep the others
                log.exception("style %s could not be prepared for %s", name, backend)
                self.errors[name] = f"{backend} backend: {exc}"
                del self.styles[name]
        self.batcher: MicroBatcher[StyleJob, StyleOutput] = MicroBatcher(
            self._run_batch, max_batch=max_batch, max_wait_s=max_wait_s, name="stylize"
        )

    @classmethod
    def load(
        cls,
        weights_dir: Path,
        *,
        device: str = "auto",
        backend: Backend = "auto",
        threads: int = 0,
        max_batch: int = 8,
        max_wait_s: float = 0.002,
    ) -> Stylizer:
        """Load every style of the manifest (checksums verified); broken ones are listed in ``errors``."""
        torch_device = resolve_device(device)
        styles, errors = load_all(weights_dir, torch_device)
        for name, err in errors.items():
            log.error("style %s not loaded: %s", name, err)
        stylizer = cls(
            styles,
            errors,
            device=torch_device,
            backend=backend,
            threads=threads,
            max_batch=max_batch,
            max_wait_s=max_wait_s,
        )
        stylizer.warm_up()
        return stylizer

    @property
    def names(self) -> list[str]:
        return sorted(self.styles)

    @property
    def stats(self) -> BatchStats:
        return self.batcher.stats

    def entry(self, name: str) -> StyleEntry:
        return self.styles[name].entry

    def model_id(self, name: str) -> str:
        """``<arch>/<sha256 prefix>``: which exact weights produced an image."""
        entry = self.entry(name)
        return f"{entry.arch}/{entry.version}"

    def ready(self) -> dict[str, Any]:
        check: dict[str, Any] = {
            "ok": bool(self.styles),
            "styles": self.names,
            "device": str(self.device),
            "backend": self.backend,
        }
        if self.errors:
            check["errors"] = self.errors
        if not self.styles:
            check["error"] = "no style network is loaded"
        return check

    def warm_up(self) -> None:
        """One small forward per network so the first request does not pay for lazy initialisation."""
        for name in self.runners:
            self.run_sync(name, torch.rand(1, 3, 64, 64))

    def run_sync(self, name: str, x: Tensor) -> Tensor:
        """Stylized N×3×H×W, bypassing the batcher (warm-up, benchmarks, evaluation)."""
        return self.runners[name](x)

    def _run_batch(self, key: tuple[str, int, int], items: Sequence[StyleJob]) -> list[StyleOutput]:
        """Runs in the batcher thread: one forward pass for all same-style, same-size images."""
        start = time.perf_counter()
        out = self.runners[key[0]](torch.cat([item.pixels for item in items]))
        infer_ms = elapsed_ms(start)
        return [
            StyleOutput(out[i : i + 1], infer_ms, round((start - item.submitted) * 1000, 2), len(items))
            for i, item in enumerate(items)
        ]

    async def stylize(
        self,
        name: str,
        image: Image.Image,
        *,
        size: int | None,
        max_size: int,
        strength: float = 1.0,
        keep_colors: bool = False,
        fmt: str = "png",
    ) -> StylizeResult:
        """Full request path: resize, batched forward, blend with the photo, colour transfer, encode."""
        t0 = time.perf_counter()
        longest = size if size is not None else min(max(image.size), max_size)

        def prepare() -> tuple[Image.Image, Tensor]:
            photo = resize_longest(image, longest) if longest != max(image.size) else image
            return photo, pil_to_tensor(photo)

        photo, pixels = await run_in_threadpool(prepare)
        prep_ms = elapsed_ms(t0)
        key = (name, pixels.shape[2], pixels.shape[3])
        result = await self.batcher.submit(StyleJob(pixels, time.perf_counter()), key=key)

        def finish() -> bytes:
            out = result.pixels
            if strength < 1.0:
                out = torch.lerp(pixels, out, strength)
            img = tensor_to_pil(out)
            if keep_colors:
                img = preserve_color(photo, img)
            return encode_image(img, fmt)

        t1 = time.perf_counter()
        body = await run_in_threadpool(finish)
        timings = {
            "prepare": prep_ms,
            "queue": result.queue_ms,
            "infer": result.infer_ms,
            "encode": elapsed_ms(t1),
            "total": elapsed_ms(t0),
        }
        return StylizeResult(body, MEDIA_TYPES[fmt], photo.width, photo.height, timings, result.batch_size)

    async def close(self) -> None:
        await self.batcher.close()


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
