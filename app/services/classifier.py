"""The loaded CIFAR-10 classifier behind POST /classify, shared by all requests through a MicroBatcher.

Each image is resized to 32x32 uint8 pixels and submitted on its own, so images of concurrent requests
(and several files of one request) end up in the same model call. Normalization, the model, softmax and
the ranking of classes run once per batch in the batcher's single thread: per-request work on the event
loop stays as small as possible, since on a 2-core box that loop is what limits throughput.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from PIL import Image
from starlette.concurrency import run_in_threadpool

from app.batching import BatchStats, MicroBatcher
from app.services.runtime import resolve_device
from models.calibration import read_calibration
from models.classifier import fold_batchnorm, load_classifier, normalize_pixels, to_pixels

log = logging.getLogger(__name__)

MODEL_NAME = "cifar10-airbench"
WEIGHTS_FILE = "classifier.safetensors"
# The "onnx" backend prefers the static int8 model: within 0.2 pt of fp32 test accuracy at ~1.8x the
# batch throughput of the fp32 export on CPU (model card, ONNX table). The fp32 export is the fallback.
ONNX_FILES = (("classifier.int8.onnx", "onnx-int8"), ("classifier.onnx", "onnx"))
# Mirror TTA (averaging each image with its mirror) buys ~0.5 pt test accuracy for 2x the model
# cost, and the model is the largest CPU cost per request: measured on 2 cores it roughly halves
# c=32 throughput (bench/results). A bare service leaves it off; the app passes ATELIER_CLASSIFY_TTA
# (default auto: mirrors while batches are small, see ``tta_max_requests``).
DEFAULT_TTA_FLIP = False
INLINE_PREPROCESS_PIXELS = 64 * 64
# An ONNX model is served only if its logits stay this close to the float model's on probe images
# (a faithful int8 model measured 0.13, a saturating one 0.61).
ONNX_MAX_RELATIVE_ERROR = 0.3


@dataclass(frozen=True)
class Ranked:
    """One image's softmax probabilities and its class indices in decreasing order of probability."""

    probabilities: np.ndarray
    order: np.ndarray
    mirrored: bool = False  # scored with its mirror image (TTA) in this batch


@dataclass(frozen=True)
class _Image:
    """A batcher item: one image's uint8 pixels and the request it came with (TTA counts requests)."""

    pixels: np.ndarray
    request: int


@dataclass(frozen=True)
class ImagePredictions:
    """One image's top-k, and whether mirror TTA scored it (``auto`` leaves it out of busy batches)."""

    predictions: list[Prediction]
    mirrored: bool


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float


class _Runner(Protocol):
    def __call__(self, x: np.ndarray) -> np.ndarray: ...


class _TorchRunner:
    """Logits from the torch model (inference mode, channels_last: faster oneDNN convs on CPU)."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model = model.to(memory_format=torch.channels_last)
        self.device = device

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t = torch.from_numpy(x).to(self.device).contiguous(memory_format=torch.channels_last)
            return self.model(t).float().cpu().numpy()


class _OnnxRunner:
    """Logits from an onnxruntime CPU session of the exported model (dynamic batch axis)."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # No busy-waiting between calls: on a small shared box spinning threads steal the CPU that
        # HTTP handling and decoding need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class ClassifierService:
    """One loaded model + its batcher; ``classify`` is what the route calls."""

    def __init__(
        self,
        runner: _Runner,
        classes: Sequence[str],
        *,
        version: str,
        backend: str,
        device: str,
        max_batch: int,
        max_wait_s: float,
        tta_flip: bool = DEFAULT_TTA_FLIP,
        temperature: float = 1.0,
        calibration: str = "none",
        tta_max_requests: int | None = None,
        temperature_unmirrored: float | None = None,
    ) -> None:
        if not temperature > 0 or (temperature_unmirrored is not None and not temperature_unmirrored > 0):
            raise ValueError(f"temperatures must be positive, got {temperature}, {temperature_unmirrored}")
        if tta_max_requests is not None and tta_max_requests < 1:
            raise ValueError(f"tta_max_requests must be at least 1, got {tta_max_requests}")
        self._runner = runner
        self.tta_flip = tta_flip
        # With TTA on, a batch that holds images of more requests than this skips the mirrors
        # (``ATELIER_CLASSIFY_TTA=auto``): many requests in one batch means they queued while the model
        # ran, and half the model work shortens the wait for all. Counted in requests, not images, so
        # one request with many files still gets mirrors on an idle server.
        self.tta_max_requests = tta_max_requests
        self.temperature = temperature  # logits / T before the softmax: calibrated probabilities
        # for batches that auto TTA leaves unmirrored
        self.temperature_unmirrored = (
            temperature if temperature_unmirrored is None else temperature_unmirrored
        )
        self._requests = itertools.count()
        self.images_scored = {"mirror": 0, "none": 0}  # how TTA went, for /readyz and benchmarks
        self.calibration = calibration
        self.classes = tuple(classes)
        self.name = MODEL_NAME
        self.version = version
        self.backend = backend
        self.device = device
        self.batcher: MicroBatcher[np.ndarray, np.ndarray] = MicroBatcher(
            self._run_batch, max_batch=max_batch, max_wait_s=max_wait_s, name="classify"
        )

    @property
    def stats(self) -> BatchStats:
        """Batching counters (batches, items, largest_batch): proof that requests share model calls."""
        return self.batcher.stats

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "backend": self.backend, "device": self.device}

    def _run_batch(self, _key: Any, items: Sequence[_Image]) -> list[Ranked]:
        """Runs in the batcher thread: one forward pass (of the images and, with TTA, their mirrors)."""
        x = normalize_pixels(np.stack([item.pixels for item in items]))
        n = len(items)
        requests = len({item.request for item in items})
        mirror = self.tta_flip and (self.tta_max_requests is None or requests <= self.tta_max_requests)
        if mirror:
            both = self._runner(np.concatenate([x, x[..., ::-1]]))
            logits = 0.5 * (both[:n] + both[n:])
        else:
            logits = self._runner(x)
        temperature = self.temperature if mirror or not self.tta_flip else self.temperature_unmirrored
        probs = _softmax(logits / temperature)
        order = np.argsort(-probs, axis=1, kind="stable")
        self.images_scored["mirror" if mirror else "none"] += n
        return [Ranked(p, o, mirror) for p, o in zip(probs, order, strict=True)]

    def run_sync(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities for uint8 (N, 32, 32, 3) pixels, bypassing the batcher (warm-up, benchmarks)."""
        items = [_Image(row, 0) for row in pixels]  # one caller: scored as one request
        return np.stack([r.probabilities for r in self._run_batch(None, items)])

    async def classify(self, images: Sequence[Image.Image], top_k: int) -> list[ImagePredictions]:
        """Top-k predictions per image; every image is its own batcher item.

        Small images (CIFAR-sized, thumbnails) are resized right here: it takes microseconds, less
        than a hop to a worker thread costs on a busy machine. Big ones are resized off the loop.
        """
        if sum(img.width * img.height for img in images) <= INLINE_PREPROCESS_PIXELS:
            pixels = to_pixels(images)
        else:
            pixels = await run_in_threadpool(to_pixels, images)
        request = next(self._requests)
        ranked = await asyncio.gather(*(self.batcher.submit(_Image(row, request)) for row in pixels))
        return [ImagePredictions(self._top_k(r, top_k), r.mirrored) for r in ranked]

    def _top_k(self, ranked: Ranked, k: int) -> list[Prediction]:
        # Rounded *down* so the reported probabilities can never sum to more than 1.
        return [
            Prediction(self.classes[i], math.floor(float(ranked.probabilities[i]) * 1e6) / 1e6)
            for i in ranked.order[:k].tolist()
        ]

    async def close(self) -> None:
        await self.batcher.close()


def probe_pixels(count: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth random colour fields (4x4 grids upsampled to 32x32), uint8 (N, 32, 32, 3).

    Photo-like enough to give the network confident, structured logits, and needs no data set.
    """
    rng = np.random.default_rng(seed)
    grids = rng.integers(0, 256, (count, 4, 4, 3), dtype=np.uint8)
    return to_pixels([Image.fromarray(g).resize((32, 32), Image.Resampling.BICUBIC) for g in grids])


def relative_logit_error(candidate: _Runner, reference: _Runner, pixels: np.ndarray) -> float:
    """mean |candidate - reference| / mean |reference| over the logits of ``pixels``."""
    x = normalize_pixels(pixels)
    ref = reference(x)
    return float(np.abs(candidate(x) - ref).mean() / max(float(np.abs(ref).mean()), 1e-12))


def _first_faithful_onnx(
    found: Sequence[tuple[Path, str]], reference: _Runner, threads: int
) -> tuple[_Runner, str]:
    """The first ONNX model whose logits match the float model's on probe images, else the float model.

    Int8 kernels differ by CPU: a u8s8 model quantized without ``reduce_range`` saturates on x86 CPUs
    without VNNI and falls to ~35% accuracy there (seen on an AVX2-only host). Checking at load makes
    such a mismatch a logged fallback instead of silently wrong answers.
    """
    pixels = probe_pixels()
    for path, label in found:
        runner = _OnnxRunner(path, threads)
        error = relative_logit_error(runner, reference, pixels)
        if error <= ONNX_MAX_RELATIVE_ERROR:
            return runner, label
        log.warning(
            "%s disagrees with the float model on this CPU (relative logit error %.2f > %.2f); skipped",
            path.name,
            error,
            ONNX_MAX_RELATIVE_ERROR,
        )
    return reference, "torch"


def load_service(
    weights_dir: Path,
    *,
    backend: Literal["auto", "torch", "onnx"] = "auto",
    device: str = "auto",
    threads: int = 0,
    max_batch: int = 64,
    max_wait_s: float = 0.0,
    tta_flip: bool = DEFAULT_TTA_FLIP,
    tta_max_requests: int | None = None,
) -> ClassifierService:
    """Load the committed classifier; raises FileNotFoundError/ValueError with a reason if it cannot.

    The temperature comes from ``calibration.json`` beside the weights (fitted for this version and
    this TTA mode); it is applied to the logits of whichever backend runs, torch or ONNX.
    """
    weights = weights_dir / WEIGHTS_FILE
    if not weights.exists():
        raise FileNotFoundError(f"classifier weights not found at {weights}")
    if backend == "auto":
        on_cpu = resolve_device(device).type == "cpu"
        backend = "onnx" if on_cpu and any((weights_dir / f).exists() for f, _ in ONNX_FILES) else "torch"
    if backend == "onnx":
        found = [(weights_dir / f, label) for f, label in ONNX_FILES if (weights_dir / f).exists()]
        if not found:
            raise FileNotFoundError(
                f"no ONNX classifier in {weights_dir} (run python -m models.training.export_onnx)"
            )
        model, metadata = load_classifier(weights, "cpu")
        runner, backend_label = _first_faithful_onnx(
            found, _TorchRunner(fold_batchnorm(model), torch.device("cpu")), threads
        )
        dev = "cpu"
    else:
        torch_device = resolve_device(device)
        model, metadata = load_classifier(weights, torch_device)
        runner = _TorchRunner(fold_batchnorm(model), torch_device)
        dev = str(torch_device)
        backend_label = "torch"
    version = str(metadata.get("version", "unknown"))
    calibration = read_calibration(weights_dir, version)
    service = ClassifierService(
        runner,
        metadata["classes"],
        version=version,
        backend=backend_label,
        device=dev,
        max_batch=max_batch,
        max_wait_s=max_wait_s,
        tta_flip=tta_flip,
        temperature=calibration.for_tta(tta_flip),
        calibration=calibration.source,
        tta_max_requests=tta_max_requests,
        temperature_unmirrored=calibration.for_tta(False),
    )
    service.run_sync(np.zeros((1, 32, 32, 3), dtype=np.uint8))  # warm-up: first call allocates
    service.images_scored = dict.fromkeys(service.images_scored, 0)  # count requests only
    return service
