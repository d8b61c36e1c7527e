"""Batch-of-frames stylizers for the video pipeline: N×3×H×W in [0, 1] in, the same shape out.

* :class:`OnnxFrames` (CPU default): the style network exported to ONNX with its style weights baked
  in, run by ONNX Runtime (measured faster than eager PyTorch for these networks, see
  bench/results/video-*); the export takes a second or two, once per job.
* :class:`TorchFrames` (GPU, or no onnxruntime): eager PyTorch in inference mode.
* :class:`ArbitraryFrames`: the any-painting model (Ghiasi et al. 2017) with one style vector for
  the whole clip, so every frame gets exactly the same style.

All of them pad each frame to a multiple of 4 by reflection and crop back (the networks' own
helpers), so every frame is treated the same way.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from models.arbitrary import ArbitraryStyleModel
from models.transformer import TransformerNet, export_onnx, pad_to_multiple, stylize

Backend = Literal["auto", "torch", "onnx"]


class TorchFrames:
    def __init__(self, model: TransformerNet, style: Tensor, device: torch.device) -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        self.style = style.to(device)
        self.device = device

    def __call__(self, frames: Tensor) -> Tensor:
        with torch.inference_mode():
            return stylize(self.model, frames.to(self.device), self.style).float().cpu()


class OnnxFrames:
    def __init__(self, model: TransformerNet, style: Tensor, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        graph = export_onnx(model.cpu().eval(), style.cpu())
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, frames: Tensor) -> Tensor:
        padded, h, w = pad_to_multiple(frames)
        feed = {self.input_name: np.ascontiguousarray(padded.numpy(), dtype=np.float32)}
        out = self.session.run(None, feed)[0]
        return torch.from_numpy(out[..., :h, :w]).clamp_(0.0, 1.0)


class ArbitraryFrames:
    """One style vector (from the painting, predicted once) applied to every frame."""

    def __init__(self, model: ArbitraryStyleModel, vector: np.ndarray) -> None:
        self.model = model
        self.vector = vector

    def __call__(self, frames: Tensor) -> Tensor:
        hwc = frames.permute(0, 2, 3, 1).numpy()
        out = np.stack([self.model.stylize(np.ascontiguousarray(f), self.vector) for f in hwc])
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def named_style_frames(
    model: TransformerNet, style: Tensor, device: torch.device, backend: Backend = "auto", threads: int = 0
) -> TorchFrames | OnnxFrames:
    """The fastest runner for this device: ONNX Runtime on a CPU when installed, PyTorch otherwise."""
    if backend == "auto":
        backend = "onnx" if device.type == "cpu" and _has_onnxruntime() else "torch"
    if backend == "onnx":
        return OnnxFrames(model, style, threads)
    return TorchFrames(model, style, device)


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
