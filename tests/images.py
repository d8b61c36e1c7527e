"""Deterministic test images made in code (no files needed), in the formats clients send."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def photo_like(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    """Smooth gradients plus a few shapes and mild noise: something with content and edges."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 0.5 + 0.5 * np.sin(x / width * 3.0)
    g = y / max(height - 1, 1)
    b = 0.5 + 0.5 * np.cos((x + y) / (width + height) * 4.0)
    img = np.stack([r, g, b], axis=-1)
    img[height // 4 : height // 2, width // 5 : width // 2] = (0.9, 0.2, 0.1)
    img += rng.normal(0, 0.03, img.shape)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), "RGB")


def stripes(width: int = 64, height: int = 64, period: int = 8) -> Image.Image:
    """A strongly textured 'painting': diagonal blue/yellow stripes."""
    y, x = np.mgrid[0:height, 0:width]
    band = ((x + y) // period) % 2
    img = np.where(band[..., None] == 1, [30, 60, 200], [240, 200, 40]).astype(np.uint8)
    return Image.fromarray(img, "RGB")


def encode(img: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()
