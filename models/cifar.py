"""CIFAR-10 data: decoding the shared JPEG npz files, normalization, and tensor-side augmentation.

The data set ships as JPEG bytes (see ``../shared/data/cifar10/README.md``). Decoding 60k tiny JPEGs
takes seconds, so each split is decoded once per process (kept in memory) and optionally cached as a
raw ``.npy`` under the git-ignored ``var/`` dir. Augmentation works on whole uint8/float tensors, so
it runs on the GPU when training there and costs little on CPU.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data" / "cifar10"
DEFAULT_CACHE_DIR = PROJECT_ROOT / "var" / "cifar10"

CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

# Per-channel statistics of the CIFAR-10 training set (RGB, 0..1 scale). The JPEG copy's means agree
# to 1e-4; its stds are ~0.002 lower, which does not matter for a constant affine input map.
MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

TRAIN_FILES = tuple(f"train_{i}.npz" for i in range(1, 6))
TEST_FILES = ("test.npz",)


@dataclass(frozen=True)
class Split:
    """One decoded split: ``images`` uint8 (N, 32, 32, 3) RGB and ``labels`` int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Resolve the CIFAR-10 dir: explicit path, else ``$ATELIER_DATA_DIR/cifar10``, else ``../shared``."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get("ATELIER_DATA_DIR")
    if env:
        return Path(env) / "cifar10"
    return DEFAULT_DATA_DIR


def read_classes(directory: Path) -> tuple[str, ...]:
    """Class names from ``classes.txt``, checked against :data:`CLASSES` so labels cannot silently shift."""
    names = tuple(
        line.strip() for line in (directory / "classes.txt").read_text().splitlines() if line.strip()
    )
    if names != CLASSES:
        raise ValueError(f"{directory / 'classes.txt'} lists {names}, expected {CLASSES}")
    return names


def decode_npz(path: Path) -> Split:
    """Decode every JPEG in one npz file into a uint8 (N, 32, 32, 3) array."""
    with np.load(path) as npz:
        blob, offsets, labels = npz["jpeg"], npz["offsets"], npz["labels"]
    images = np.empty((len(labels), 32, 32, 3), dtype=np.uint8)
    raw = blob.tobytes()
    for i in range(len(labels)):
        with Image.open(io.BytesIO(raw[offsets[i] : offsets[i + 1]])) as img:
            images[i] = np.asarray(img.convert("RGB"))
    return Split(images, labels.astype(np.int64))


def _cache_path(cache_dir: Path, npz: Path) -> Path:
    """Cache file keyed by the source's size and mtime, so a replaced npz is decoded afresh."""
    st = npz.stat()
    return cache_dir / f"{npz.stem}-{st.st_size}-{st.st_mtime_ns}.npz"


def _load_file(path: Path, cache_dir: Path | None) -> Split:
    if cache_dir is None:
        return decode_npz(path)
    cached = _cache_path(cache_dir, path)
    if cached.exists():
        with np.load(cached) as npz:
            return Split(npz["images"], npz["labels"])
    split = decode_npz(path)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp.npz")
    np.savez(tmp, images=split.images, labels=split.labels)
    tmp.replace(cached)
    return split


@cache
def _load_split_cached(directory: Path, train: bool, cache_dir: Path | None) -> Split:
    read_classes(directory)
    parts = [_load_file(directory / name, cache_dir) for name in (TRAIN_FILES if train else TEST_FILES)]
    images = np.concatenate([p.images for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    images.setflags(write=False)
    labels.setflags(write=False)
    return Split(images, labels)


def load_split(
    train: bool,
    directory: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = DEFAULT_CACHE_DIR,
) -> Split:
    """The train (50k) or test (10k) split, decoded once per process and memoized (read-only arrays)."""
    resolved = data_dir(directory).resolve()
    if not (resolved / "classes.txt").exists():
        raise FileNotFoundError(f"no CIFAR-10 data at {resolved} (expected classes.txt and *.npz)")
    return _load_split_cached(resolved, train, Path(cache_dir) if cache_dir is not None else None)


def to_tensor(images: np.ndarray | Tensor, device: torch.device | str = "cpu") -> Tensor:
    """uint8 (N, H, W, 3) -> uint8 (N, 3, H, W) on ``device`` (normalize there, it is cheaper to copy)."""
    t = torch.tensor(images) if isinstance(images, np.ndarray) else images
    return t.to(device).permute(0, 3, 1, 2).contiguous()


def normalize(x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 (N, 3, H, W) -> float, scaled to 0..1 and standardized with the CIFAR-10 mean/std."""
    mean = torch.tensor(MEAN, device=x.device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device, dtype=dtype).view(1, 3, 1, 1)
    return (x.to(dtype) / 255.0 - mean) / std


def random_translate(x: Tensor, pad: int, generator: torch.Generator | None = None) -> Tensor:
    """Shift every image by its own random offset in [-pad, pad]² with reflect padding.

    Reflection (rather than zeros) keeps image statistics intact at the borders; it is what the fast
    CIFAR-10 recipes (airbench) use. One gather does the whole batch: no Python loop per image.
    """
    if pad <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x.float() if x.dtype == torch.uint8 else x, (pad, pad, pad, pad), mode="reflect")
    padded = padded.to(x.dtype)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device="cpu").to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device="cpu").to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (n, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (n, 1, w)
    idx = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[idx, rows, cols].permute(0, 3, 1, 2).contiguous()


def flip_mask(n: int, generator: torch.Generator | None = None) -> Tensor:
    """A fixed random half of the images, for alternating flips (see :func:`alternating_flip`)."""
    return torch.rand(n, generator=generator) < 0.5


def alternating_flip(x: Tensor, mask: Tensor, epoch: int) -> Tensor:
    """Flip the images in ``mask`` on even epochs and the others on odd epochs.

    Every image is seen both ways in every pair of epochs instead of by chance, which is worth a few
    tenths of a percent for short runs (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds", 2024).
    """
    flip = mask.to(x.device) if epoch % 2 == 0 else ~mask.to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def cutout(x: Tensor, size: int, fill: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Paint one random ``size``x``size`` square per image with ``fill`` (per channel), fully inside it.

    Cutout (DeVries & Taylor 2017) as airbench96 does it: corners uniform over the valid positions,
    filled with zeros of the *normalized* input, i.e. the mean colour, which is what ``fill`` is here
    (``x`` is uint8 or float NCHW, not yet normalized).
    """
    if size <= 0:
        return x
    n, _, h, w = x.shape
    top = torch.randint(0, h - size + 1, (n,), generator=generator, device="cpu").to(x.device)
    left = torch.randint(0, w - size + 1, (n,), generator=generator, device="cpu").to(x.device)
    rows = torch.arange(h, device=x.device)[None, :] - top[:, None]
    cols = torch.arange(w, device=x.device)[None, :] - left[:, None]
    inside = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]
    return torch.where(inside[:, None], fill.to(x.device, x.dtype).view(1, -1, 1, 1), x)


MEAN_PIXEL = torch.tensor([round(m * 255) for m in MEAN], dtype=torch.uint8)


def augment_epoch(
    images: Tensor,
    mask: Tensor,
    epoch: int,
    translate: int,
    generator: torch.Generator | None = None,
    cutout_size: int = 0,
    alternate: Tensor | None = None,
    alternate_share: float = 0.0,
) -> Tensor:
    """One epoch's view of the training set: alternating flip, a random translate, then cutout.

    With ``alternate`` (another version of every image, e.g. after a photo round trip), a random
    ``alternate_share`` of the images is taken from it first; without, no random number is drawn,
    so runs without it are unchanged.
    """
    if alternate is not None and alternate_share > 0:
        swap = torch.rand(len(images), generator=generator) < alternate_share
        images = torch.where(swap.to(images.device)[:, None, None, None], alternate, images)
    x = random_translate(alternating_flip(images, mask, epoch), translate, generator)
    return cutout(x, cutout_size, MEAN_PIXEL, generator)


def holdout_indices(labels: np.ndarray, count: int) -> np.ndarray:
    """The held-out slice: the last ``count / 10`` training images of each class, in file order.

    Deterministic and class-balanced, so every run that holds out ``count`` images holds out the same
    ones, and a model trained without them can be calibrated on them honestly.
    """
    classes = len(CLASSES)
    if count % classes:
        raise ValueError(f"the held-out slice must be a multiple of {classes} images, got {count}")
    per_class = count // classes
    if per_class == 0:
        return np.empty(0, dtype=np.int64)
    picked = []
    for c in range(classes):
        of_class = np.flatnonzero(labels == c)
        if len(of_class) < per_class:
            raise ValueError(f"class {c} has {len(of_class)} images, cannot hold out {per_class}")
        picked.append(of_class[-per_class:])
    return np.sort(np.concatenate(picked))
