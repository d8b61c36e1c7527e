"""A "been through a phone photo" copy of the CIFAR-10 training images, for training augmentation.

Uploads to ``/classify`` are big JPEGs that the service shrinks back to 32 px. That round trip blurs
and rings a little, and a network that only ever saw the 32 px originals loses most of a point on it
(``bench/classify_photos.py``). This module makes, once, a copy of the training set in which every
image took such a round trip: upscaled with a random filter to a random size, JPEG-encoded at a
random quality, then shrunk by the *served* resize (:func:`models.classifier.resize_to_input`). The
training loop swaps in the copy for a random part of each epoch's images.

The filters, sizes and qualities are drawn wider than the benchmark's (bicubic, 256-512 px, quality
80-95), so the network learns the family of round trips rather than the benchmark's one. The copy is
deterministic (its own seed) and cached next to the decoded dataset.
"""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import numpy as np
from PIL import Image

from models.classifier import resize_to_input

UPSCALE_FILTERS = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS)
SIDES = (128, 640)
QUALITIES = (60, 95)
VERSION = "photo-resample/1"


def round_trip(pixels: np.ndarray, rng: random.Random) -> np.ndarray:
    """One uint8 (H, W, 3) image -> upscaled, JPEG-encoded, decoded, shrunk back to its size."""
    side = rng.randint(*SIDES)
    img = Image.fromarray(pixels).resize((side, side), rng.choice(UPSCALE_FILTERS))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=rng.randint(*QUALITIES))
    buf.seek(0)
    with Image.open(buf) as decoded:
        return np.asarray(resize_to_input(decoded.convert("RGB"), pixels.shape[0]), dtype=np.uint8)


def resampled_copy(images: np.ndarray, seed: int = 0, cache_dir: Path | None = None) -> np.ndarray:
    """uint8 (N, H, W, 3) -> the same images after one random photo round trip each (cached)."""
    digest = hashlib.sha256(images.tobytes()).hexdigest()[:16]
    cache = cache_dir / f"{VERSION.replace('/', '-')}-s{seed}-{digest}.npy" if cache_dir else None
    if cache is not None and cache.exists():
        cached = np.load(cache)
        if cached.shape == images.shape:
            return cached
    rng = random.Random(f"{VERSION}:{seed}")
    out = np.stack([round_trip(img, rng) for img in images])
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npy")
        np.save(tmp, out)
        tmp.replace(cache)
    return out
