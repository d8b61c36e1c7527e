"""The loaded CIFAR-10 classifier behind POST /classify, shared by all requests through a MicroBatcher.

Each image is preprocessed to a (3, 32, 32) tensor and submitted on its own, so images of concurrent
requests (and several files of one request) end up in the same model call. The model runs in the
batcher's single thread; the event loop only ever awaits.
"""

from __future__ import annotations

import asyncio
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
from models.classifier import fold_batchnorm, load_classifier, preprocess

MODEL_NAME = "cifar10-airbench"
WEIGHTS_FILE = "classifier.safetensors"
# The "onnx" backend prefers the static int8 model: within 0.25 pt of fp32 test accuracy at ~2x the
# batch throughput on CPU (model card, ONNX table). The fp32 export is the fallback.
ONNX_FILES = (("classifier.int8.onnx", "onnx-int8"), ("classifier.onnx", "onnx"))
# Mirror TTA (averaging each image with its mirror) buys +0.7 pt test accuracy for 2x the model
# cost, and the model is the largest CPU cost per request: measured on 2 cores it roughly halves
# c=32 throughput (bench/results). So the service runs without it unless constructed with tta_flip=True.
DEFAULT_TTA_FLIP = False
INLINE_PREPROCESS_PIXELS = 64 * 64


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
    ) -> None:
        self._runner = runner
        self.tta_flip = tta_flip
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

    def _run_batch(self, _key: Any, items: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Runs in the batcher thread: one forward pass (of the images and, with TTA, their mirrors)."""
        x = np.stack(items)
        if not self.tta_flip:
            return list(_softmax(self._runner(x)))
        n = len(items)
        logits = self._runner(np.concatenate([x, x[..., ::-1]]))
        return list(_softmax(0.5 * (logits[:n] + logits[n:])))

    def run_sync(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for a preprocessed batch, bypassing the batcher (warm-up, benchmarks)."""
        return np.stack(self._run_batch(None, list(x)))

    async def classify(self, images: Sequence[Image.Image], top_k: int) -> list[list[Prediction]]:
        """Top-k predictions per image; every image is its own batcher item.

        Small images (CIFAR-sized, thumbnails) are preprocessed right here: it takes microseconds,
        less than a hop to a worker thread costs on a busy machine. Big ones are resized off the loop.
        """
        if sum(img.width * img.height for img in images) <= INLINE_PREPROCESS_PIXELS:
            x = preprocess(images).numpy()
        else:
            x = await run_in_threadpool(lambda: preprocess(images).numpy())
        rows = await asyncio.gather(*(self.batcher.submit(row) for row in x))
        return [self._top_k(probs, top_k) for probs in rows]

    def _top_k(self, probs: np.ndarray, k: int) -> list[Prediction]:
        order = np.argsort(-probs, kind="stable")[:k]
        # Rounded *down* so the reported probabilities can never sum to more than 1.
        return [Prediction(self.classes[i], math.floor(float(probs[i]) * 1e6) / 1e6) for i in order]

    async def close(self) -> None:
        await self.batcher.close()


def load_service(
    weights_dir: Path,
    *,
    backend: Literal["auto", "torch", "onnx"] = "auto",
    device: str = "auto",
    threads: int = 0,
    max_batch: int = 64,
    max_wait_s: float = 0.002,
) -> ClassifierService:
    """Load the committed classifier; raises FileNotFoundError/ValueError with a reason if it cannot."""
    weights = weights_dir / WEIGHTS_FILE
    if not weights.exists():
        raise FileNotFoundError(f"classifier weights not found at {weights}")
    if backend == "auto":
        on_cpu = resolve_device(device).type == "cpu"
        backend = "onnx" if on_cpu and any((weights_dir / f).exists() for f, _ in ONNX_FILES) else "torch"
    if backend == "onnx":
        found = [(weights_dir / f, label) for f, label in ONNX_FILES if (weights_dir / f).exists()]
        if not found:
            raise FileNotFoundError(f"no ONNX classifier in {weights_dir} (run python -m models.export_onnx)")
        onnx_path, backend_label = found[0]
        _, metadata = load_classifier(weights, "cpu")
        runner: _Runner = _OnnxRunner(onnx_path, threads)
        dev = "cpu"
    else:
        torch_device = resolve_device(device)
        model, metadata = load_classifier(weights, torch_device)
        runner = _TorchRunner(fold_batchnorm(model), torch_device)
        dev = str(torch_device)
        backend_label = "torch"
    service = ClassifierService(
        runner,
        metadata["classes"],
        version=str(metadata.get("version", "unknown")),
        backend=backend_label,
        device=dev,
        max_batch=max_batch,
        max_wait_s=max_wait_s,
    )
    service.run_sync(np.zeros((1, 3, 32, 32), dtype=np.float32))  # warm-up: first call allocates
    return service
