"""The multi-style network behind POST /stylize, shared by all requests through one MicroBatcher.

One network serves every style (conditional instance norm): a request's style, or blend of styles,
is a row of mixing weights fed to the network next to the image. So images of any styles share a
forward pass as long as they have the same size: the batch key is (height, width). Every request is
resized and converted in a worker thread, and blended, colour-corrected and encoded in a worker
thread again: the batcher's single thread does nothing but run the network.

Backends: on CPU the network is exported to ONNX (style weights as a second input) at load time and
run by ONNX Runtime (measured ~25-30 % faster than eager PyTorch, fp32; bench/stylize.py); on CUDA it
runs in PyTorch (channels_last, inference mode). Both pad inputs to a multiple of 4 with reflection
and crop the output, so every size comes back exactly as requested.
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
    finish_stylized,
    pil_to_tensor,
    resize_longest,
)
from models.styles import LoadedNetwork, StyleEntry, load_network
from models.transformer import export_onnx, pad_to_multiple

log = logging.getLogger(__name__)

Backend = Literal["auto", "torch", "onnx"]


class _Runner(Protocol):
    def __call__(self, x: Tensor, style: Tensor) -> Tensor: ...


class TorchRunner:
    """Eager PyTorch: inference mode, channels_last on CUDA (on CPU it measured slower for these nets)."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.device = device
        self.channels_last = device.type == "cuda"
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = model.to(device=device, memory_format=fmt).eval()

    def __call__(self, x: Tensor, style: Tensor) -> Tensor:
        with torch.inference_mode():
            x = x.to(self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            padded, h, w = pad_to_multiple(x)
            out = self.model.forward_code(padded, style.to(self.device))
            return out[..., :h, :w].clamp(0.0, 1.0).float().cpu()


class OnnxRunner:
    """ONNX Runtime on CPU; the graph has dynamic batch, height and width, and a style-code input."""

    def __init__(self, model: torch.nn.Module, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        graph = export_onnx(model, style_input=True)
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def __call__(self, x: Tensor, style: Tensor) -> Tensor:
        padded, h, w = pad_to_multiple(x)
        feeds = {
            "image": np.ascontiguousarray(padded.numpy(), dtype=np.float32),
            "style_code": np.ascontiguousarray(style.detach().numpy(), dtype=np.float32),
        }
        out = self.session.run(None, feeds)[0]
        return torch.from_numpy(out[..., :h, :w]).clamp_(0.0, 1.0)


@dataclass(frozen=True)
class StyleJob:
    """One image waiting for the network (1×3×H×W in [0, 1]) with its style code (1×P)."""

    pixels: Tensor
    style: Tensor
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
    """The loaded network plus the batcher that feeds it."""

    def __init__(
        self,
        network: LoadedNetwork | None,
        error: str,
        *,
        device: torch.device,
        backend: Backend = "auto",
        threads: int = 0,
        max_batch: int = 8,
        max_wait_s: float = 0.002,
        max_batch_pixels: int = 0,
    ) -> None:
        if backend == "auto":
            backend = "onnx" if device.type == "cpu" and _has_onnxruntime() else "torch"
        self.backend = backend
        self.device = device
        self.network = network
        self.error = error
        self.runner: _Runner | None = None
        if network is not None:
            try:
                self.runner = (
                    OnnxRunner(network.model, threads)
                    if backend == "onnx"
                    else TorchRunner(network.model, device)
                )
            except Exception as exc:  # e.g. an export failure: report it, keep the app up
                log.exception("the style network could not be prepared for %s", backend)
                self.error = f"{backend} backend: {exc}"

        def pixel_cap(size: tuple[int, int]) -> int:  # batches are keyed by (height, width)
            return max_batch_pixels // (size[0] * size[1])

        self.batcher: MicroBatcher[StyleJob, StyleOutput] = MicroBatcher(
            self._run_batch,
            max_batch=max_batch,
            max_wait_s=max_wait_s,
            name="stylize",
            limit_for=pixel_cap if max_batch_pixels else None,
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
        max_batch_pixels: int = 0,
    ) -> Stylizer:
        """Load the manifest's network (checksum verified); a failure is kept in ``error``."""
        torch_device = resolve_device(device)
        try:
            network: LoadedNetwork | None = load_network(weights_dir, torch_device)
            error = ""
        except Exception as exc:  # the app must come up without style networks
            log.error("style network not loaded: %s", exc)
            network, error = None, str(exc)
        stylizer = cls(
            network,
            error,
            device=torch_device,
            backend=backend,
            threads=threads,
            max_batch=max_batch,
            max_wait_s=max_wait_s,
            max_batch_pixels=max_batch_pixels,
        )
        stylizer.warm_up()
        return stylizer

    @property
    def available(self) -> bool:
        return self.network is not None and self.runner is not None

    @property
    def names(self) -> list[str]:
        return self.network.names if self.network is not None else []

    @property
    def stats(self) -> BatchStats:
        return self.batcher.stats

    def entry(self, name: str) -> StyleEntry:
        assert self.network is not None
        return self.network.manifest.entry(name)

    @property
    def model_id(self) -> str:
        """``<arch>/<sha256 prefix>``: which exact weights produced an image."""
        assert self.network is not None
        net = self.network.manifest.network
        return f"{net.arch}/{net.version}"

    def public_styles(self) -> list[dict[str, Any]]:
        if self.network is None:
            return []
        version = self.network.manifest.network.version
        return [entry.public(version) for entry in self.network.manifest.styles]

    def style_code(self, names: Sequence[str], weights: Sequence[float] | None = None) -> Tensor:
        """1×P code of one trained style or a blend (see ``TransformerNet.style_code``)."""
        assert self.network is not None
        with torch.no_grad():
            return self.network.model.style_code(self.network.style_weights(names, weights)).cpu()

    def ready(self) -> dict[str, Any]:
        check: dict[str, Any] = {
            "ok": self.available,
            "styles": self.names,
            "device": str(self.device),
            "backend": self.backend,
        }
        if self.error:
            check["error"] = self.error
        return check

    def warm_up(self) -> None:
        """One small forward so the first request does not pay for lazy initialisation."""
        if self.available:
            self.run_sync(torch.rand(1, 3, 64, 64), self.style_code(self.names[:1]))

    def run_sync(self, x: Tensor, style: Tensor) -> Tensor:
        """Stylized N×3×H×W, bypassing the batcher (warm-up, benchmarks, evaluation)."""
        assert self.runner is not None
        return self.runner(x, style.expand(x.shape[0], -1))

    def _run_batch(self, key: tuple[int, int], items: Sequence[StyleJob]) -> list[StyleOutput]:
        """Runs in the batcher thread: one forward pass for all same-size images, whatever their style."""
        assert self.runner is not None
        start = time.perf_counter()
        pixels = torch.cat([item.pixels for item in items])
        out = self.runner(pixels, torch.cat([item.style for item in items]))
        infer_ms = elapsed_ms(start)
        return [
            StyleOutput(out[i : i + 1], infer_ms, round((start - item.submitted) * 1000, 2), len(items))
            for i, item in enumerate(items)
        ]

    async def stylize(
        self,
        style: Tensor,
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
        key = (pixels.shape[2], pixels.shape[3])
        result = await self.batcher.submit(StyleJob(pixels, style, time.perf_counter()), key=key)

        def finish() -> bytes:
            return encode_image(finish_stylized(photo, pixels, result.pixels, strength, keep_colors), fmt)

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
