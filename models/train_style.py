"""Train a fast style network (Johnson et al. 2016) for one painting.

    python -m models.train_style --photos ../shared/data/photos \\
        --style ../shared/data/styles/starry_night.jpg \\
        --out models/weights/styles/starry_night.safetensors --arch fast

Loss network: the Caffe VGG19 of :mod:`models.vgg` (content at relu2_2, style Grams at
relu1_1..relu4_1, L1 total variation), all in caffe pixel space like :mod:`models.gatys`, so the
weights here and there mean the same. The held-out photos (see :func:`is_held_out`) never enter
training; they feed the previews and :mod:`models.eval_style`. Previews and a JSON-lines loss log go
to ``runs/`` (git-ignored); the weights are saved as fp16 safetensors with the recipe in metadata.

``--style-ramp N`` grows the style weight linearly from 0 over the first N iterations. A network
starting from random weights outputs near-black images whose Gram error dwarfs every content error,
so short runs otherwise learn the painting's palette long before any content (seen on the CPU
proof run); with the ramp the network first learns a near-identity, then stylizes it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from models.imaging import pil_to_tensor, resize_longest, tensor_to_pil
from models.losses import content_loss, gram_matrix, style_loss, total_variation
from models.precision import use_bf16
from models.transformer import ARCHS, TransformerNet, build, count_params, save_transformer, stylize
from models.vgg import VGG19Features, caffe_preprocess, deepest_layer, load_vgg19

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


@dataclass
class TrainConfig:
    """The recipe; stored in the weights' metadata and the run directory."""

    photos: str
    style: str
    out: str
    arch: str = "fast"
    name: str = ""
    iterations: int = 2000
    batch_size: int = 4
    crop: int = 256
    style_size: int = 256
    lr: float = 1e-3
    content_weight: float = 1.0
    style_weight: float = 2.0
    tv_weight: float = 10.0
    style_ramp: int = 0  # style weight grows linearly from 0 over this many iterations
    content_layers: tuple[str, ...] = ("relu2_2",)
    style_layers: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    holdout_percent: int = HOLDOUT_PERCENT
    max_minutes: float = 0.0
    log_every: int = 10
    preview_every: int = 100
    checkpoint_every: int = 200
    runs_dir: str = "runs/train_style"
    extra: dict[str, str] = field(default_factory=dict)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def random_crop(img: Image.Image, crop: int, rng: random.Random) -> Image.Image:
    """Scale the shorter side to a random size in [crop, shorter], crop crop×crop, flip half the time.

    The random scale shows the network strokes-vs-object sizes it will meet at several resolutions.
    """
    shorter = min(img.size)
    if shorter < crop:
        img = resize_longest(img, round(max(img.size) * crop / shorter))
        shorter = min(img.size)
    target = rng.randint(crop, shorter)
    if target != shorter:
        scale = target / shorter
        img = img.resize(
            (max(crop, round(img.width * scale)), max(crop, round(img.height * scale))),
            Image.Resampling.LANCZOS,
        )
    left = rng.randint(0, img.width - crop)
    top = rng.randint(0, img.height - crop)
    img = img.crop((left, top, left + crop, top + crop))
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img


def batches(photos: Sequence[Path], batch_size: int, crop: int, rng: random.Random) -> Iterator[Tensor]:
    """Endless shuffled epochs of random crops (seeded: the same run sees the same crops)."""
    order = list(photos)
    while True:
        rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            imgs = [
                random_crop(Image.open(p).convert("RGB"), crop, rng)
                for p in order[start : start + batch_size]
            ]
            yield torch.cat([pil_to_tensor(img) for img in imgs])


def style_targets(
    vgg: VGG19Features, style_img: Image.Image, layers: Sequence[str], size: int
) -> dict[str, Tensor]:
    """Gram matrices of the painting at ``size`` (longest side), computed once in fp32."""
    x = caffe_preprocess(pil_to_tensor(resize_longest(style_img.convert("RGB"), size)))
    with torch.inference_mode():
        feats = vgg(x, layers)
        return {name: gram_matrix(feats[name]).clone() for name in layers}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_preview(
    model: TransformerNet, photos: Sequence[Image.Image], path: Path, device: torch.device
) -> None:
    """A strip: the photos on top, the network's outputs below."""
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        outs = [tensor_to_pil(stylize(model, pil_to_tensor(p).to(device)).cpu()) for p in photos]
    model.train(was_training)
    width = sum(p.width for p in photos)
    height = max(p.height for p in photos)
    strip = Image.new("RGB", (width, 2 * height), "white")
    x = 0
    for photo, out in zip(photos, outs, strict=True):
        strip.paste(photo, (x, 0))
        strip.paste(out, (x, height))
        x += photo.width
    path.parent.mkdir(parents=True, exist_ok=True)
    strip.save(path)


def train(cfg: TrainConfig) -> dict[str, object]:
    """Run the training loop; returns the summary that also goes into the weights' metadata."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    device = pick_device(cfg.device)
    bf16 = use_bf16(device, cfg.precision)
    name = cfg.name or Path(cfg.style).stem
    run_dir = Path(cfg.runs_dir) / f"{name}-{cfg.arch}"
    run_dir.mkdir(parents=True, exist_ok=True)

    train_photos, held_out = split_photos(list_photos(Path(cfg.photos)), cfg.holdout_percent)
    if len(train_photos) < cfg.batch_size:
        raise ValueError(f"only {len(train_photos)} training photos for batch size {cfg.batch_size}")
    (run_dir / "holdout.json").write_text(json.dumps([p.name for p in held_out], indent=1))
    preview_photos = [resize_longest(Image.open(p).convert("RGB"), max(cfg.crop, 256)) for p in held_out[:3]]

    layers = tuple(dict.fromkeys(cfg.content_layers + cfg.style_layers))
    vgg32 = load_vgg19(deepest_layer(layers))
    style_img = Image.open(cfg.style)
    grams = {
        k: v.to(device) for k, v in style_targets(vgg32, style_img, cfg.style_layers, cfg.style_size).items()
    }
    vgg = vgg32.converted(device=device, dtype=torch.bfloat16 if bf16 else torch.float32, channels_last=True)
    vgg_dtype = next(vgg.parameters()).dtype

    model = build(cfg.arch).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    data = batches(train_photos, cfg.batch_size, cfg.crop, rng)

    def loss_net(x: Tensor, which: Sequence[str]) -> dict[str, Tensor]:
        return vgg(caffe_preprocess(x).to(dtype=vgg_dtype, memory_format=torch.channels_last), which)

    log_path = run_dir / "losses.jsonl"
    log_path.write_text("")
    recent: list[dict[str, float]] = []
    start = time.monotonic()
    summary: dict[str, object] = {}
    iteration = 0

    def checkpoint(final: bool) -> dict[str, object]:
        means = {k: sum(r[k] for r in recent) / len(recent) for k in recent[0]} if recent else {}
        info = {
            "style_name": name,
            "style_file": Path(cfg.style).name,
            "style_sha256": sha256_file(Path(cfg.style)),
            "arch": cfg.arch,
            "params": count_params(model),
            "iterations": iteration,
            "train_seconds": round(time.monotonic() - start, 1),
            "final_losses": {k: round(v, 3) for k, v in means.items()},
            "finished": final,
            "device": str(device)
            if device.type == "cuda"
            else f"cpu ({platform.processor() or platform.machine()})",
            "bf16": bf16,
            "torch": torch.__version__,
            "held_out": len(held_out),
            "train_photos": len(train_photos),
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "recipe": {k: v for k, v in asdict(cfg).items() if k not in ("out", "extra")},
        }
        meta = {"atelier.train": json.dumps(info, sort_keys=True), "atelier.style": name, **cfg.extra}
        save_transformer(Path(cfg.out), model, meta)
        return info

    for iteration in range(1, cfg.iterations + 1):
        x = next(data).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            y = model(x)
        y = y.float()
        with torch.no_grad():
            targets = {k: v.float() for k, v in loss_net(x, cfg.content_layers).items()}
        feats = loss_net(y, layers)
        c = cfg.content_weight * content_loss(feats, targets)
        ramp = min(1.0, iteration / cfg.style_ramp) if cfg.style_ramp else 1.0
        s = ramp * cfg.style_weight * style_loss(feats, grams)
        tv = cfg.tv_weight * total_variation(caffe_preprocess(y))
        total = c + s + tv
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

        row = {"content": c.item(), "style": s.item(), "tv": tv.item(), "total": total.item()}
        recent = [*recent[-49:], row]
        if iteration % cfg.log_every == 0 or iteration == 1:
            elapsed = time.monotonic() - start
            with log_path.open("a") as f:
                f.write(json.dumps({"iter": iteration, "elapsed_s": round(elapsed, 1), **row}) + "\n")
            print(
                f"[{name}/{cfg.arch}] it {iteration} {elapsed:.0f}s "
                + " ".join(f"{k}={v:.4g}" for k, v in row.items()),
                flush=True,
            )
        if preview_photos and cfg.preview_every and iteration % cfg.preview_every == 0:
            save_preview(model, preview_photos, run_dir / f"preview_{iteration:06d}.png", device)
        if cfg.checkpoint_every and iteration % cfg.checkpoint_every == 0:
            checkpoint(final=False)
        if cfg.max_minutes and time.monotonic() - start > cfg.max_minutes * 60:
            print(f"time budget of {cfg.max_minutes} min reached after {iteration} iterations", flush=True)
            break

    model.eval()
    summary = checkpoint(final=True)
    if preview_photos:
        save_preview(model, preview_photos, run_dir / "preview_final.png", device)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", default=str(DATA_DIR / "photos"), help="folder of content photos")
    p.add_argument("--style", required=True, help="the painting")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--arch", default="fast", choices=sorted(ARCHS))
    p.add_argument("--name", default="", help="style name (default: the painting's file stem)")
    defaults = TrainConfig(photos="", style="", out="")
    for key in (
        "iterations",
        "batch_size",
        "crop",
        "style_size",
        "lr",
        "content_weight",
        "style_weight",
        "tv_weight",
        "style_ramp",
        "seed",
        "holdout_percent",
        "max_minutes",
        "log_every",
        "preview_every",
        "checkpoint_every",
    ):
        value = getattr(defaults, key)
        p.add_argument("--" + key.replace("_", "-"), type=type(value), default=value)
    p.add_argument("--content-layers", default=",".join(defaults.content_layers))
    p.add_argument("--style-layers", default=",".join(defaults.style_layers))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--runs-dir", default=defaults.runs_dir, help="previews and loss log (git-ignored)")
    a = p.parse_args(argv)
    values = vars(a)
    values["content_layers"] = tuple(s.strip() for s in a.content_layers.split(",") if s.strip())
    values["style_layers"] = tuple(s.strip() for s in a.style_layers.split(",") if s.strip())
    return TrainConfig(**values)


def main(argv: Sequence[str] | None = None) -> None:
    summary = train(parse_args(argv))
    print(json.dumps({k: summary[k] for k in ("iterations", "train_seconds", "final_losses")}))


if __name__ == "__main__":
    main()
