"""Held-out evaluation of the multi-style network against Gatys, under the network's own objective.

For every style and held-out photo (the split of :mod:`models.photos`, never trained on):

* **Gatys-equivalent steps.** Gatys (L-BFGS, initialised from the photo) minimizes exactly the
  objective the network was trained with (:class:`models.style_objective.StyleObjective`, read from
  the weights' metadata: same loss network, layers and weights). Its total loss is logged per step;
  the run stops as soon as it is below the network's loss on that photo (cap ``--max-steps``), so the
  evaluation stays affordable on a CPU. The style's figure is the number of L-BFGS updates needed to
  beat the network (``> cap`` when it never does). Johnson et al. report 50-100 for their networks.
* **Style loss under the Gatys job's objective** (:mod:`models.gatys` defaults: relu1_1..relu5_1, equal
  weights): the network's output over the unstylized photo's (1 = no stylization; the bar is 0.25).
* **Content and style loss** of the output under the training objective, next to the photo's and
  Gatys' at the crossing.

A style is ``production`` when its median Gatys-equivalent steps is at least 50, its style ratio is at
most 0.25 and a person has looked at its outputs at 512 and 1024 px (``--looked-at``); otherwise
``experimental``. A contact sheet (held-out photos x styles) is written for that look.

``--split train`` judges photos the network trained on instead, and ``--gatys-init noise`` starts
Gatys from noise: diagnostics (how much of the gap is generalization; Gatys' own start) that can never
mark a style ``production``, and that ``models.styles publish`` refuses.

    python -m models.training.eval_style --json models/weights/styles/eval.json --n-photos 6 \\
        --sheet models/weights/styles/contact-sheet.jpg
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from models.arbitrary import ArbitraryStyleModel, center_square
from models.gatys import GatysOptions, StepReport, run_gatys
from models.imaging import pil_to_tensor, resize_longest, tensor_to_pil
from models.losses import gram_matrix, style_loss
from models.photos import DATA_DIR, list_photos, split_photos
from models.style_objective import StyleObjective
from models.styles import sha256_file
from models.training.spikes import droplet_score
from models.training.train_style import DEFAULT_OUT
from models.transformer import TransformerNet, load_transformer, one_hot_styles, stylize
from models.vgg import DEFAULT_STYLE_LAYERS, VGG19Features, caffe_preprocess, load_vgg19

GES_BAR = 50
STYLE_RATIO_BAR = 0.25


class _Crossed(Exception):
    """Raised from Gatys' step callback once its loss is below the network's: stop early."""


def objective_loss(
    vgg: VGG19Features, objective: StyleObjective, image: Tensor, photo: Tensor, grams: dict[str, Tensor]
) -> dict[str, float]:
    """Weighted terms of the training objective for ``image`` (1×3×H×W RGB in [0, 1])."""
    with torch.inference_mode():
        targets = vgg(caffe_preprocess(photo), objective.content_layers)
        x = caffe_preprocess(image)
        terms = objective.terms(vgg(x, objective.layers), targets, grams, x)
    return {k: float(v) for k, v in terms.items()}


def gatys_options(
    objective: StyleObjective, size: int, max_steps: int, init: str = "content"
) -> GatysOptions:
    """Gatys with exactly the training objective (the painting taken at ``style_size``).

    ``init="content"`` (from the photo) is the bar's definition; ``"noise"`` (seeded grey noise, as
    some papers' baselines start) is a diagnostic that makes the same network look ~3x better.
    """
    return GatysOptions(
        size=size,
        steps=max_steps,
        init=init,
        content_weight=objective.content_weight,
        style_weight=objective.style_weight,
        tv_weight=objective.tv_weight,
        content_layers=objective.content_layers,
        style_layers=objective.style_layers,
        style_layer_weights=objective.style_layer_weights,
        style_scale=objective.style_size / size,
    )


def gatys_equivalent_steps(
    vgg: VGG19Features, photo: Image.Image, painting: Image.Image, options: GatysOptions, target: float
) -> tuple[int | None, list[float]]:
    """L-BFGS updates until Gatys' loss is below ``target`` (None if not within ``options.steps``).

    Report k carries the loss of the image after k-1 updates (see :class:`StepReport`).
    """
    losses: list[float] = []

    def on_step(report: StepReport) -> None:
        losses.append(report.losses["total"])
        if report.losses["total"] < target:
            raise _Crossed

    try:
        run_gatys(vgg, photo, [painting], options, on_step=on_step, precision="fp32")
    except _Crossed:
        return len(losses) - 1, losses
    return None, losses


def gatys_job_style_loss(vgg: VGG19Features, image: Tensor, painting_grams: dict[str, Tensor]) -> float:
    """Unweighted style loss of the Gatys job's default objective (relu1_1..relu5_1, equal weights)."""
    with torch.inference_mode():
        return float(style_loss(vgg(caffe_preprocess(image), DEFAULT_STYLE_LAYERS), painting_grams))


Painter = Callable[[str, Tensor], Tensor]
"""(style name, 1×3×H×W photo in [0, 1]) -> the stylized photo, same shape: any model under test."""


def network_painter(net: TransformerNet, names: Sequence[str]) -> Painter:
    """Style ``names[i]`` is row ``i`` of the multi-style network."""

    def paint(name: str, x: Tensor) -> Tensor:
        with torch.inference_mode():
            return stylize(net, x, one_hot_styles([list(names).index(name)], net.config.num_styles))

    return paint


def arbitrary_painter(model: ArbitraryStyleModel, paintings: dict[str, Image.Image]) -> Painter:
    """Ghiasi et al.'s any-painting model at full strength (``style_image`` with strength 1)."""
    vectors = {name: model.style_vector(center_square(img)) for name, img in paintings.items()}

    def paint(name: str, x: Tensor) -> Tensor:
        photo = x[0].permute(1, 2, 0).contiguous().numpy().astype(np.float32)
        out = model.stylize(photo, vectors[name])
        return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)[None].float()

    return paint


def evaluate(
    vgg: VGG19Features,
    net: TransformerNet | Painter,
    names: Sequence[str],
    objective: StyleObjective,
    paintings: dict[str, Image.Image],
    photos: Sequence[Path],
    size: int,
    max_steps: int,
    gatys_init: str = "content",
) -> dict[str, object]:
    """Per-style, per-photo figures and the per-style summary (see the module docstring).

    ``net``: the multi-style network (style ``names[i]`` is its row ``i``) or any :data:`Painter`.
    """
    paint = network_painter(net, names) if isinstance(net, TransformerNet) else net

    def droplets(name: str, x: Tensor) -> dict[str, float]:
        if not isinstance(net, TransformerNet):
            return {}
        style = one_hot_styles([list(names).index(name)], net.config.num_styles)
        return {"droplet_spike_share": droplet_score(net, x, style)}

    job_defaults = GatysOptions()
    options = gatys_options(objective, size, max_steps, gatys_init)
    results: dict[str, object] = {}
    for name in names:
        painting = paintings[name]
        grams = objective.painting_grams(vgg, painting)
        job_img = pil_to_tensor(resize_longest(painting.convert("RGB"), job_defaults.size))
        with torch.inference_mode():
            job_grams = {
                k: gram_matrix(v) for k, v in vgg(caffe_preprocess(job_img), DEFAULT_STYLE_LAYERS).items()
            }
        rows = []
        for path in photos:
            photo = resize_longest(Image.open(path).convert("RGB"), size)
            x = pil_to_tensor(photo)
            out = paint(name, x)
            net_terms = objective_loss(vgg, objective, out, x, grams)
            start = time.perf_counter()
            steps, curve = gatys_equivalent_steps(vgg, photo, painting, options, net_terms["total"])
            row = {
                "photo": path.name,
                "network": net_terms,
                **droplets(name, x),
                "photo_loss": objective_loss(vgg, objective, x, x, grams),
                "gatys_equivalent_steps": steps,
                "gatys_curve": [round(v, 1) for v in curve],
                "gatys_seconds": round(time.perf_counter() - start, 1),
                "job_style_ratio": gatys_job_style_loss(vgg, out, job_grams)
                / gatys_job_style_loss(vgg, x, job_grams),
            }
            rows.append(row)
            print(
                json.dumps({"style": name, **{k: v for k, v in row.items() if k != "gatys_curve"}}),
                flush=True,
            )
        ges = [
            r["gatys_equivalent_steps"] if r["gatys_equivalent_steps"] is not None else max_steps + 1
            for r in rows
        ]
        results[name] = {
            "rows": rows,
            "median_gatys_equivalent_steps": statistics.median(ges),
            "median_job_style_ratio": statistics.median(r["job_style_ratio"] for r in rows),
        }
        if rows and "droplet_spike_share" in rows[0]:
            results[name]["median_droplet_spike_share"] = statistics.median(
                r["droplet_spike_share"] for r in rows
            )
    return results


def status_of(
    summary: dict[str, object], looked_at: bool, gatys_init: str = "content", split: str = "held-out"
) -> str:
    """``production`` only by the bar as defined: held-out photos, Gatys from the photo, a person looked."""
    meets = (
        gatys_init == "content"
        and split == "held-out"
        and summary["median_gatys_equivalent_steps"] >= GES_BAR
        and summary["median_job_style_ratio"] <= STYLE_RATIO_BAR
    )
    return "production" if meets and looked_at else "experimental"


def contact_sheet(
    net: TransformerNet | Painter,
    names: Sequence[str],
    photos: Sequence[Path],
    size: int,
    path: Path,
    with_photos: bool = False,
) -> None:
    """One row per held-out photo, one column per style.

    The unstylized photos are left out unless ``with_photos``: the held-out photos are research-use
    data that must not be committed, and the sheet is committed with the model card.
    """
    paint = network_painter(net, names) if isinstance(net, TransformerNet) else net
    images = [resize_longest(Image.open(p).convert("RGB"), size) for p in photos]
    cell_w, cell_h = max(i.width for i in images), max(i.height for i in images)
    first = 1 if with_photos else 0
    sheet = Image.new("RGB", (cell_w * (len(names) + first), cell_h * len(images)), "white")
    for r, img in enumerate(images):
        if with_photos:
            sheet.paste(img, (0, r * cell_h))
        x = pil_to_tensor(img)
        for c, name in enumerate(names):
            out = paint(name, x)
            sheet.paste(tensor_to_pil(out), ((c + first) * cell_w, r * cell_h))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, quality=88)


def markdown_table(results: dict[str, dict], statuses: dict[str, str]) -> str:
    lines = [
        "| style | status | median Gatys-equivalent steps | style ratio (Gatys job objective) "
        "| network content / style | photo style | droplet spike share |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        content = statistics.median(row["network"]["content"] for row in r["rows"])
        style = statistics.median(row["network"]["style"] for row in r["rows"])
        photo = statistics.median(row["photo_loss"]["style"] for row in r["rows"])
        spikes = r.get("median_droplet_spike_share")
        droplets = "–" if spikes is None else f"{spikes:.3f}"
        lines.append(
            f"| {name} | {statuses[name]} | {r['median_gatys_equivalent_steps']} "
            f"| {r['median_job_style_ratio']:.3f} | {content:,.0f} / {style:,.0f} | {photo:,.0f} "
            f"| {droplets} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=str(DEFAULT_OUT), help="the multi-style network")
    p.add_argument("--photos", default=str(DATA_DIR / "photos"))
    p.add_argument("--paintings", default=str(DATA_DIR / "styles"), help="folder with the paintings")
    p.add_argument("--style", action="append", help="style name(s) to evaluate (default: all)")
    p.add_argument("--n-photos", type=int, default=6, help="first N photos of the split (0: all)")
    p.add_argument("--size", type=int, default=256, help="longest side of every output")
    p.add_argument("--max-steps", type=int, default=300, help="Gatys cap per photo")
    p.add_argument(
        "--model",
        choices=("network", "arbitrary"),
        default="network",
        help="the network of --weights, or the any-painting model (style_image) on the same paintings",
    )
    p.add_argument(
        "--gatys-init",
        choices=("content", "noise"),
        default="content",
        help="Gatys starts from the photo (the bar's definition) or from seeded noise (diagnostic only)",
    )
    p.add_argument(
        "--split",
        choices=("held-out", "train"),
        default="held-out",
        help="judge on held-out photos (the bar) or on photos the network trained on (diagnostic only: "
        "how much of the gap is generalization)",
    )
    p.add_argument("--looked-at", action="store_true", help="a person checked the 512/1024 px outputs")
    p.add_argument("--json", default="", help="write the results here")
    p.add_argument("--sheet", default="", help="write a contact sheet (held-out photos x styles) here")
    p.add_argument(
        "--sheet-with-photos",
        action="store_true",
        help="add the unstylized photos as a first column (for looking only: never commit that sheet)",
    )
    a = p.parse_args(argv)

    net, meta = load_transformer(Path(a.weights))
    names = json.loads(meta["atelier.styles"])
    objective = StyleObjective.from_json(meta["atelier.objective"])
    chosen = [n for n in names if not a.style or n in a.style]
    train, held = split_photos(list_photos(Path(a.photos)))
    pool = held if a.split == "held-out" else train
    photos = pool[: a.n_photos] if a.n_photos else pool
    paintings = {n: Image.open(Path(a.paintings) / f"{n}.jpg").convert("RGB") for n in chosen}
    vgg = load_vgg19("relu5_1")
    if a.model == "arbitrary":  # judged under the network's objective, so the figures compare
        model: TransformerNet | Painter = arbitrary_painter(ArbitraryStyleModel.load(), paintings)
    else:
        model = subset_of_styles(net, names, chosen)
    results = evaluate(vgg, model, chosen, objective, paintings, photos, a.size, a.max_steps, a.gatys_init)
    statuses = {n: status_of(r, a.looked_at, a.gatys_init, a.split) for n, r in results.items()}
    if a.sheet:
        contact_sheet(model, chosen, photos, a.size, Path(a.sheet), a.sheet_with_photos)
    if a.json:
        body = {
            "model": a.model,
            "weights": Path(a.weights).name,
            "weights_sha256": sha256_file(Path(a.weights)),  # publish refuses an eval of other weights
            "objective": json.loads(objective.to_json()),
            "size": a.size,
            "max_steps": a.max_steps,
            "gatys_init": a.gatys_init,
            "split": a.split,
            "photos": [p.name for p in photos],
            "torch": torch.__version__,
            "bars": {"gatys_equivalent_steps": GES_BAR, "job_style_ratio": STYLE_RATIO_BAR},
            "statuses": statuses,
            "styles": results,
        }
        Path(a.json).write_text(json.dumps(body, indent=1) + "\n")
    print(markdown_table(results, statuses))


def subset_of_styles(net: TransformerNet, names: Sequence[str], chosen: Sequence[str]) -> TransformerNet:
    """The same network restricted to ``chosen`` styles, so style index i means chosen[i]."""
    if list(chosen) == list(names):
        return net
    rows = torch.tensor([names.index(n) for n in chosen])
    sub = TransformerNet(replace(net.config, num_styles=len(chosen)))
    # Per-style parameters (norm rows, colour skip) have a leading style dimension; the rest is shared.
    prefixes = {id(m): n for n, m in net.named_modules()}
    coded = {f"{prefixes[id(m)]}.{p}" for m in net.coded for p in ("weight", "bias")}
    state = {k: v[rows] if k in coded else v for k, v in net.state_dict().items()}
    sub.load_state_dict(state)
    return sub.eval().requires_grad_(False)


if __name__ == "__main__":
    main()
