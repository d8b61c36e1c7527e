"""The natural-photo set that style networks train on, and its fixed held-out split.

Shared by the training script, the evaluation and the worker's custom-style job, which all need the
same split: a photo held out here is never trained on anywhere, so it can judge any style.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("ATELIER_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data"))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
HOLDOUT_PERCENT = 5


def is_held_out(name: str, percent: int = HOLDOUT_PERCENT) -> bool:
    """Held out iff the first 32 bits of sha256(file name) mod 100 < percent.

    The file *name* (not its bytes or the list order) decides, so the split is the same for every
    style, machine and re-encoding of the photo set, and new photos do not move old ones.
    """
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 100 < percent


def list_photos(photos_dir: Path) -> list[Path]:
    return sorted(p for p in photos_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def split_photos(photos: Sequence[Path], percent: int = HOLDOUT_PERCENT) -> tuple[list[Path], list[Path]]:
    """(train, held_out), both sorted by name."""
    held = [p for p in photos if is_held_out(p.name, percent)]
    train = [p for p in photos if not is_held_out(p.name, percent)]
    return train, held


def random_crop(img: Image.Image, crop: int, rng: random.Random) -> Image.Image:
    """Scale the shorter side to a random size in [crop, 1.5·crop] (capped by the photo), crop, flip.

    The random scale shows the network strokes-vs-object sizes it will meet at several resolutions.
    """
    shorter = min(img.size)
    target = rng.randint(crop, max(crop, min(shorter, round(1.5 * crop))))
    scale = target / shorter
    size = (max(crop, round(img.width * scale)), max(crop, round(img.height * scale)))
    img = img.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    left = rng.randint(0, img.width - crop)
    top = rng.randint(0, img.height - crop)
    img = img.crop((left, top, left + crop, top + crop))
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img
