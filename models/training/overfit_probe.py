"""How far can an arch go on one photo and one painting? An upper bound for the quality bar.

The bar asks a network to beat 50 L-BFGS updates of Gatys on *held-out* photos, for 13 styles at
once. A network trained on a single (photo, painting) pair and judged on that same pair needs no
generalization and shares its convolutions with no other style. If even that stays far below 50
Gatys-equivalent steps, more data or more iterations will not get the arch there: the lever is the
arch (or the bar's definition). Gatys' curve on the pair is computed once (``--max-steps`` L-BFGS
updates, under the network's own training objective, as ``eval_style`` does) and the network's
loss is placed on it every ``--eval-every`` iterations.

    python -m models.training.overfit_probe --arch reference --photo bsds_100039 --style starry_night
    python -m models.training.overfit_probe --init models/weights/styles/multistyle.safetensors \\
        --photo bsds_100039 --style starry_night   # the served network, fine-tuned on the pair
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from models.imaging import pil_to_tensor, resize_longest
from models.numerics import finite_or_raise
from models.photos import DATA_DIR, list_photos, random_crop, split_photos
from models.precision import use_bf16
from models.style_objective import StyleObjective
from models.styles import DEFAULT_WEIGHTS_DIR, styles_dir
from models.training.eval_style import gatys_equivalent_steps, gatys_options, objective_loss
from models.training.fixed_norms import calibrate_fixed_norms
from models.transformer import (
    TransformerNet,
    build,
    load_transformer,
    one_hot_styles,
    pad_to_multiple,
    read_metadata,
    stylize,
)
from models.vgg import caffe_preprocess, load_vgg19

SERVED = styles_dir(DEFAULT_WEIGHTS_DIR) / "multistyle.safetensors"


def steps_to_beat(curve: Sequence[float], loss: float) -> int | None:
    """Gatys-equivalent steps: the first update count whose loss is below ``loss`` (None: never)."""
    return next((k for k, v in enumerate(curve) if v < loss), None)


def judged_objective(
    weights: Path,
    style_weight: float | None = None,
    content_layer: str | None = None,
    content_weight: float | None = None,
) -> StyleObjective:
    """The objective ``weights`` were trained with, or it changed: is the count a matter of the recipe?

    A heavier style weight asks whether the balance decides the count; another content layer asks
    whether the network's shortfall is the fine detail a low content layer demands.
    """
    objective = StyleObjective.from_json(read_metadata(weights)["atelier.objective"])
    changes: dict[str, object] = {}
    if style_weight is not None:
        changes["style_weight"] = style_weight
    if content_layer is not None:
        changes["content_layers"] = (content_layer,)
    if content_weight is not None:
        changes["content_weight"] = content_weight
    return replace(objective, **changes)


def network_for(init: Path | None, arch: str, style: str, photo: Tensor) -> tuple[TransformerNet, Tensor]:
    """The network to train and its style-weight row: the trained one's row of ``style``, or a fresh one."""
    if init is not None:
        model, meta = load_transformer(init)
        names = json.loads(meta["atelier.styles"])
        return model, one_hot_styles([names.index(style)], model.config.num_styles)
    torch.manual_seed(0)
    model = build(arch, num_styles=1)
    if "affine" in (model.config.decoder_norm, model.config.residual_norm):
        calibrate_fixed_norms(model, [pad_to_multiple(photo)[0]])
    return model, one_hot_styles([0], 1)


def probe(
    photo_paths: Sequence[Path],
    painting_path: Path,
    objective: StyleObjective,
    model: TransformerNet,
    style: Tensor,
    iterations: int,
    lr: float,
    eval_every: int,
    train_photos: Sequence[Path] = (),
    batch_size: int = 4,
    crop: int = 256,
    size: int = 256,
    max_steps: int = 300,
) -> dict[str, object]:
    """Train ``model`` in one style; its loss and Gatys-equivalent steps on ``photo_paths`` as it goes.

    Without ``train_photos`` it trains on the judged photos themselves (one photo: the pair's upper
    bound; a few: how fast that bound falls with the number of photos the network must serve);
    with them, on random crops of those (one style, every photo: what sharing 13 styles costs).
    """
    painting = Image.open(painting_path).convert("RGB")
    judged = [resize_longest(Image.open(p).convert("RGB"), size) for p in photo_paths]
    vgg = load_vgg19(objective.deepest)
    grams = objective.painting_grams(vgg, painting)
    options = gatys_options(objective, size, max_steps)
    started = time.perf_counter()
    curves = [gatys_equivalent_steps(vgg, img, painting, options, target=0.0)[1] for img in judged]  # whole
    gatys_s = time.perf_counter() - started
    bf16 = use_bf16(torch.device("cpu"), "auto")
    pool = [Image.open(p).convert("RGB") for p in train_photos]
    rng = random.Random(0)

    def batch() -> Tensor:
        if not pool:  # the judged photos themselves, all at once (same size: resized alike)
            return torch.cat([pil_to_tensor(img) for img in judged])
        return torch.cat([pil_to_tensor(random_crop(rng.choice(pool), crop, rng)) for _ in range(batch_size)])

    model.requires_grad_(True)  # a loaded network comes frozen for serving
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    points = []
    started = time.perf_counter()
    for it in range(iterations + 1):
        if it % eval_every == 0 or it == iterations:
            model.eval()
            rows = []
            for img, curve in zip(judged, curves, strict=True):
                x = pil_to_tensor(img)
                terms = objective_loss(vgg, objective, stylize(model, x, style), x, grams)
                rows.append({**terms, "gatys_equivalent_steps": steps_to_beat(curve, terms["total"])})
            model.train()
            steps = [r["gatys_equivalent_steps"] for r in rows]
            point = {
                "iteration": it,
                "median_total": statistics.median(r["total"] for r in rows),
                "median_gatys_equivalent_steps": statistics.median(
                    max_steps + 1 if s is None else s for s in steps
                ),
                "rows": rows,
                "seconds": round(time.perf_counter() - started, 1),
            }
            points.append(point)
            print(json.dumps({k: v for k, v in point.items() if k != "rows"} | {"steps": steps}), flush=True)
        if it == iterations:
            break
        x = batch()
        padded, h, w = pad_to_multiple(x)
        with torch.no_grad():
            targets = vgg(caffe_preprocess(x), objective.content_layers)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = model(padded, style.expand(len(x), -1))[..., :h, :w]
            xc = caffe_preprocess(y)
            feats = vgg(xc, objective.layers)
        terms = objective.terms({k: v.float() for k, v in feats.items()}, targets, grams, xc.float())
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        finite_or_raise(f"iteration {it}", terms)
        optimizer.step()
    return {
        "photos": [p.name for p in photo_paths],
        "trained_on": "the judged photos" if not pool else f"{len(pool)} training photos, {crop} px crops",
        "painting": painting_path.name,
        "size": size,
        "bf16": bf16,
        "gatys_curves": [[round(v, 1) for v in c] for c in curves],
        "gatys_seconds": round(gatys_s, 1),
        "params": sum(p.numel() for p in model.parameters()),
        "points": points,
    }


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="medium-despike", help="fresh network of this arch (no --init)")
    p.add_argument("--init", default="", help="start from this trained multi-style network instead")
    p.add_argument("--photo", default="bsds_100039", help="judged photo(s): names in --photos or paths")
    p.add_argument("--train-photos", action="store_true", help="train on the training split, not the photo")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--photos", default=str(DATA_DIR / "photos"))
    p.add_argument("--style", default="starry_night")
    p.add_argument("--paintings", default=str(DATA_DIR / "styles"))
    p.add_argument("--objective-from", default=str(SERVED), help="weights whose training objective is used")
    p.add_argument(
        "--style-weight", type=float, default=None,
        help="judge and train under this style weight instead of the objective's (a reweighted bar)",
    )  # fmt: skip
    p.add_argument("--content-layer", default=None, help="judge and train with content at this VGG layer")
    p.add_argument("--content-weight", type=float, default=None, help="and this content weight")
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    judged = [Path(n) if Path(n).suffix else Path(a.photos) / f"{n}.jpg" for n in a.photo.split(",")]
    train_photos = split_photos(list_photos(Path(a.photos)))[0] if a.train_photos else []
    objective = judged_objective(
        Path(a.init or a.objective_from), a.style_weight, a.content_layer, a.content_weight
    )
    start = pil_to_tensor(resize_longest(Image.open(judged[0]).convert("RGB"), 256))
    model, style = network_for(Path(a.init) if a.init else None, a.arch, a.style, start)
    report = probe(
        judged, Path(a.paintings) / f"{a.style}.jpg", objective, model, style, a.iterations, a.lr,
        a.eval_every, train_photos, a.batch_size, max_steps=a.max_steps,
    )  # fmt: skip
    report |= {
        "arch": a.arch if not a.init else f"init:{a.init}", "style": a.style, "lr": a.lr,
        "objective": json.loads(objective.to_json()),
    }  # fmt: skip
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
