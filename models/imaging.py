"""PIL <-> tensor helpers shared by the worker and the networks.

Tensors are N×3×H×W float32 RGB in [0, 1]; every network does its own normalization on top, so
these helpers stay convention-free.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import Tensor

JPEG_WEBP_QUALITY = 92
_FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}


def pil_to_tensor(img: Image.Image) -> Tensor:
    """1×3×H×W float32 in [0, 1]; any mode is converted to RGB first (alpha dropped)."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def tensor_to_pil(t: Tensor) -> Image.Image:
    """1×3×H×W or 3×H×W RGB in [0, 1] -> RGB image (clamped, rounded to the nearest level)."""
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"expected a single image, got batch of {t.shape[0]}")
        t = t[0]
    if t.dim() != 3 or t.shape[0] != 3:
        raise ValueError(f"expected 3×H×W, got shape {tuple(t.shape)}")
    arr = t.detach().float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).contiguous().cpu().numpy())


def fit_longest(width: int, height: int, longest: int) -> tuple[int, int]:
    """(width, height) scaled so the longer side is ``longest``, aspect kept, each side >= 1."""
    if longest < 1:
        raise ValueError(f"longest side must be >= 1, got {longest}")
    scale = longest / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_longest(img: Image.Image, longest: int) -> Image.Image:
    """Resize so the longer side is ``longest``: LANCZOS when shrinking (no aliasing), BICUBIC up."""
    size = fit_longest(img.width, img.height, longest)
    if size == img.size:
        return img.copy()
    shrinking = max(size) < max(img.size)
    return img.resize(size, Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC)


MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def encode_image(img: Image.Image, fmt: str) -> bytes:
    """Encode as png, jpeg (or jpg) or webp; lossy formats use quality 92."""
    pil_format = _FORMATS.get(fmt.lower())
    if pil_format is None:
        raise ValueError(f"unsupported image format {fmt!r}; expected one of png, jpeg, webp")
    if pil_format == "JPEG" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")  # JPEG has no alpha channel
    buf = io.BytesIO()
    options = {"quality": JPEG_WEBP_QUALITY} if pil_format != "PNG" else {}
    img.save(buf, format=pil_format, **options)
    return buf.getvalue()


def preserve_color(content: Image.Image, stylized: Image.Image) -> Image.Image:
    """Luminance (Y) from ``stylized``, chroma (Cb, Cr) from ``content``: style strokes, original colours.

    ``content`` is resized to the stylized image's size when they differ.
    """
    if content.size != stylized.size:
        content = content.convert("RGB").resize(stylized.size, Image.Resampling.LANCZOS)
    y, _, _ = stylized.convert("YCbCr").split()
    _, cb, cr = content.convert("YCbCr").split()
    return Image.merge("YCbCr", (y, cb, cr)).convert("RGB")


def finish_stylized(
    photo: Image.Image, photo_pixels: Tensor, stylized: Tensor, strength: float, keep_colors: bool
) -> Image.Image:
    """A network's output as the user asked for it: cross-faded with the photo by ``strength`` (1: all
    style), then, with ``keep_colors``, given the photo's colours (:func:`preserve_color`)."""
    if strength < 1.0:
        stylized = torch.lerp(photo_pixels, stylized, strength)
    img = tensor_to_pil(stylized)
    return preserve_color(photo, img) if keep_colors else img
