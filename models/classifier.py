"""The CIFAR-10 classifier: an airbench-style ResNet-free CNN, its weight file format and preprocessing.

Architecture (Keller Jordan's airbench, 2024): a frozen 2x2 patch-*whitening* conv (initialised from
the eigenvectors of the training patches' covariance), then three blocks of conv-pool-BN-GELU-conv-BN-
GELU, a global max-pool and a linear head. It reaches 94% (widths 64/256/256, ~10 epochs) or 95%
(128/384/384, ~15 epochs + TTA) on a GPU in seconds, and it is tiny at inference: ~30-120 M MACs
per image, so one CPU core serves hundreds of images per second.

Weights are a safetensors file whose string metadata carries everything needed to rebuild the net
(widths, classes, normalization, version), so the service never guesses the architecture.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn

from models.cifar import CLASSES, MEAN, STD

INPUT_SIZE = 32
DEFAULT_WIDTHS: tuple[int, int, int] = (64, 256, 256)
DEFAULT_DEPTHS: tuple[int, int, int] = (2, 2, 2)  # convs per group; 3 = airbench96's residual group
WHITEN_KERNEL = 2
WHITEN_WIDTH = 2 * 3 * WHITEN_KERNEL**2  # eigenvectors and their negatives: GELU keeps both signs
LOGIT_SCALE = 1 / 9

# Measured on CIFAR-10 test images turned into 256-512 px JPEG "photos" (bench/classify_photos.py):
# Lanczos loses less accuracy against the 32 px originals than bicubic (which blurs more), and the
# box pre-reduction Pillow does first is kept to >= 8x the target, where it no longer costs accuracy
# but still makes a 12 MP photo cheap to shrink.
RESIZE_FILTER = Image.Resampling.LANCZOS
RESIZE_REDUCING_GAP = 8.0

PREPROCESS_DOC = (
    "Any size and mode -> upright 8-bit RGB (EXIF orientation applied, alpha composited on white) -> "
    "resize so the shorter side is 32 px (antialiased: Pillow box-reduces to no less than 8x that, then "
    "Lanczos) -> center crop 32x32 (a photo is cropped, not padded: CIFAR-10 objects fill the frame) -> "
    f"scale to 0..1 -> subtract mean {MEAN} and divide by std {STD} per channel. This mirrors how "
    "CIFAR-10 itself was made (whole photos downsampled to 32x32), so photos should be roughly centred "
    "on one object."
)


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm without a learned scale: the following conv can absorb it, and training is steadier."""

    def __init__(self, num_features: int, momentum: float = 0.6, eps: float = 1e-12) -> None:
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = False


class Conv(nn.Conv2d):
    """3x3 'same' conv without bias, identity-initialised on its first channels (trains faster)."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__(channels_in, channels_out, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        w = self.weight.data
        torch.nn.init.dirac_(w[: w.size(1)])


class ConvGroup(nn.Module):
    """conv -> maxpool 2 -> BN -> GELU -> conv -> BN -> GELU; pooling early keeps the compute low.

    With ``depth=3`` (airbench96) a third conv follows, and the last two convs form a residual branch:
    ``x1 = GELU(BN(pool(conv1 x)))``, output ``GELU(x1 + BN(conv3 GELU(BN(conv2 x1))))``.
    """

    def __init__(self, channels_in: int, channels_out: int, bn_momentum: float = 0.6, depth: int = 2) -> None:
        super().__init__()
        if depth not in (2, 3):
            raise ValueError(f"a conv group has 2 or 3 convs, got {depth}")
        self.depth = depth
        self.conv1 = Conv(channels_in, channels_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(channels_out, bn_momentum)
        self.conv2 = Conv(channels_out, channels_out)
        self.norm2 = BatchNorm(channels_out, bn_momentum)
        if depth == 3:
            self.conv3 = Conv(channels_out, channels_out)
            self.norm3 = BatchNorm(channels_out, bn_momentum)
        self.activ = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        if self.depth == 2:
            return self.activ(self.norm2(self.conv2(x)))
        branch = self.activ(self.norm2(self.conv2(x)))
        return self.activ(x + self.norm3(self.conv3(branch)))


class CifarNet(nn.Module):
    """Whitening stem + 3 conv groups + global max-pool + linear head, on normalized 32x32 RGB."""

    def __init__(
        self,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        num_classes: int = len(CLASSES),
        depths: Sequence[int] = DEFAULT_DEPTHS,
        bn_momentum: float = 0.6,
    ) -> None:
        super().__init__()
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"widths must be three positive ints, got {tuple(widths)}")
        if len(depths) != 3:
            raise ValueError(f"depths must be three ints (2 or 3), got {tuple(depths)}")
        self.widths = tuple(int(w) for w in widths)
        self.depths = tuple(int(d) for d in depths)
        self.whiten = nn.Conv2d(3, WHITEN_WIDTH, kernel_size=WHITEN_KERNEL, padding=0, bias=True)
        self.whiten.weight.requires_grad = False
        self.act = nn.GELU()
        ins = (WHITEN_WIDTH, *self.widths[:2])
        self.group1, self.group2, self.group3 = (
            ConvGroup(i, o, bn_momentum, d) for i, o, d in zip(ins, self.widths, self.depths, strict=True)
        )
        self.head = nn.Linear(self.widths[2], num_classes, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.whiten(x))
        x = self.group3(self.group2(self.group1(x)))
        x = F.adaptive_max_pool2d(x, 1).flatten(1)
        return self.head(x) * LOGIT_SCALE


class Ensemble(nn.Module):
    """Several independently trained CifarNets whose logits are averaged: one model to the service.

    Two nets of different seeds (and augmentations) make different mistakes; averaging their logits
    is the cheapest accuracy there is once each has converged. It is an ``nn.Module`` like a single
    net, so TTA, BN folding, ONNX export and int8 quantization treat it as one graph.
    """

    def __init__(self, members: Sequence[CifarNet]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)

    @property
    def nets(self) -> list[CifarNet]:
        return [m for m in self.members if isinstance(m, CifarNet)]

    def forward(self, x: Tensor) -> Tensor:
        logits = self.members[0](x)
        for member in self.members[1:]:
            logits = logits + member(x)
        return logits / len(self.members)


Classifier = CifarNet | Ensemble


def init_whitening(layer: nn.Conv2d, images: Tensor, eps: float = 5e-4) -> None:
    """Set the stem to ZCA-like whitening of 2x2 patches of ``images`` (normalized float NCHW).

    Filters are the patch covariance's eigenvectors scaled by 1/sqrt(eigenvalue), plus their negatives,
    so the first layer outputs decorrelated, unit-variance features from step one.
    """
    h, w = layer.weight.shape[2:]
    c = images.shape[1]
    patches = images.float().unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w)
    flat = patches.reshape(len(patches), -1).double()
    cov = flat.T @ flat / len(flat)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)
    scaled = (eigenvectors / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]).reshape(c * h * w, c, h, w)
    with torch.no_grad():
        layer.weight.copy_(torch.cat((scaled, -scaled)).to(layer.weight.dtype))


@torch.no_grad()
def predict_logits(model: nn.Module, x: Tensor, tta: int = 0) -> Tensor:
    """Logits with test-time augmentation: 0 none, 1 + mirror, 2 + mirror of 1-px translations."""
    logits = model(x)
    if tta >= 1:
        logits = 0.5 * logits + 0.5 * model(x.flip(-1))
    if tta >= 2:
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = [padded[:, :, :-2, :-2], padded[:, :, 2:, 2:]]
        translated = torch.stack([0.5 * model(s) + 0.5 * model(s.flip(-1)) for s in shifted]).mean(0)
        logits = 0.5 * logits + 0.5 * translated
    return logits


@torch.no_grad()
def fold_batchnorm(model: Classifier) -> Classifier:
    """Fold every (eval-mode) BatchNorm into the conv before it, in place; returns the model.

    ``norm2`` directly follows ``conv2``. ``norm1`` follows ``pool(conv1)``, but its scale is positive
    (the BN weight is frozen at 1), and max-pooling commutes with a positive per-channel affine map, so
    it folds into ``conv1`` too. Six fewer ops per forward: that is most of the cost at batch 1.
    """
    model.eval()
    if isinstance(model, Ensemble):
        for member in model.nets:
            fold_batchnorm(member)
        return model
    for group in (model.group1, model.group2, model.group3):
        for conv_name, norm_name in (("conv1", "norm1"), ("conv2", "norm2"), ("conv3", "norm3")):
            if not hasattr(group, conv_name):
                continue
            conv, norm = getattr(group, conv_name), getattr(group, norm_name)
            if not isinstance(norm, nn.BatchNorm2d):
                continue
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            if not bool((scale > 0).all()):
                raise ValueError("cannot fold a BatchNorm with a non-positive scale across max-pooling")
            fused = nn.Conv2d(
                conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding, bias=True
            ).to(conv.weight.device)
            fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            fused.bias.copy_(norm.bias - norm.running_mean * scale)
            setattr(group, conv_name, fused)
            setattr(group, norm_name, nn.Identity())
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def resize_to_input(img: Image.Image, size: int = INPUT_SIZE) -> Image.Image:
    """Shorter side to ``size`` (Lanczos; Pillow widens the kernel when shrinking = antialiasing), then
    center crop. Aspect ratio is kept: squashing would distort the shapes the model learned, and
    padding would shrink the object below the scale CIFAR-10 shows it at (both measured)."""
    img = img if img.mode == "RGB" else img.convert("RGB")
    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((new_w, new_h), RESIZE_FILTER, reducing_gap=RESIZE_REDUCING_GAP)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return img


def to_pixels(images: Sequence[Image.Image], size: int = INPUT_SIZE) -> np.ndarray:
    """PIL images of any size and mode -> uint8 (N, 32, 32, 3): the resize/crop half of preprocessing."""
    if not images:
        return np.empty((0, size, size, 3), dtype=np.uint8)
    return np.stack([np.asarray(resize_to_input(img, size), dtype=np.uint8) for img in images])


# Per-channel affine map from uint8 to the normalized input: x * SCALE + SHIFT == (x / 255 - mean) / std.
_SCALE = (1.0 / (255.0 * np.asarray(STD, dtype=np.float64))).astype(np.float32)
_SHIFT = (-np.asarray(MEAN, dtype=np.float64) / np.asarray(STD, dtype=np.float64)).astype(np.float32)


def normalize_pixels(pixels: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> normalized float32 (N, 3, H, W) in one vectorised pass (the batch half)."""
    x = pixels.astype(np.float32) * _SCALE + _SHIFT
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def preprocess(images: Sequence[Image.Image], size: int = INPUT_SIZE) -> Tensor:
    """PIL images of any size and mode -> normalized float32 (N, 3, 32, 32); see :data:`PREPROCESS_DOC`."""
    return torch.from_numpy(normalize_pixels(to_pixels(images, size)))


def _architecture(net: CifarNet) -> dict[str, list[int]]:
    return {"widths": list(net.widths), "depths": list(net.depths)}


def save_classifier(model: Classifier, path: Path, metadata: dict[str, Any], half: bool = True) -> None:
    """Write weights (fp16 unless ``half`` is False; BN statistics stay fp32) + rebuild metadata.

    A single net records its widths and depths; an :class:`Ensemble` records each member's under
    ``members`` (its tensors are prefixed ``members.<i>.``), so either loads with no guessing.
    """
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        t = tensor.detach().cpu().contiguous()
        if half and t.is_floating_point() and "running_" not in name:
            t = t.half()
        tensors[name] = t
    if isinstance(model, Ensemble):
        architecture: dict[str, Any] = {"members": [_architecture(m) for m in model.nets]}
    else:
        architecture = _architecture(model)
    meta = {
        "format": "atelier-cifar-classifier/1",
        **{k: json.dumps(v) for k, v in architecture.items()},
        "classes": json.dumps(list(CLASSES)),
        "mean": json.dumps(list(MEAN)),
        "std": json.dumps(list(STD)),
        "input_size": str(INPUT_SIZE),
    }
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    path.chmod(0o644)  # safetensors creates 0600 files; weights are meant to be shared and committed


def read_metadata(path: Path) -> dict[str, Any]:
    """The safetensors metadata, with JSON-encoded values decoded."""
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def load_classifier(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild the net (or ensemble) from a safetensors file, in fp32 eval mode on ``device``.

    Returns (model, metadata).
    """
    path = Path(path)
    metadata = read_metadata(path)
    if metadata.get("format") != "atelier-cifar-classifier/1":
        raise ValueError(f"{path} is not an Atelier CIFAR classifier (format={metadata.get('format')!r})")
    if tuple(metadata.get("classes", ())) != CLASSES:
        raise ValueError(f"{path} was trained for classes {metadata.get('classes')}, expected {CLASSES}")
    model: Classifier
    if "members" in metadata:
        model = Ensemble([CifarNet(m["widths"], depths=m["depths"]) for m in metadata["members"]])
    else:
        model = CifarNet(metadata["widths"], depths=metadata.get("depths", DEFAULT_DEPTHS))
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path}: missing tensors {missing}, unexpected tensors {unexpected}")
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, metadata
