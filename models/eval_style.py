"""Held-out evaluation of style networks against Gatys et al. on the same photos.

For each style and each held-out photo (the split of :mod:`models.train_style`, never trained on)
we measure, with Gatys' own objective (content relu4_2, style Grams relu1_1..relu5_1, equal layer
weights, :mod:`models.losses`), the content and style loss of

* the photo itself (style-loss baseline: what "no stylization" scores),
* the network's output at the evaluation size,
* Gatys' output (``run_gatys``) at the same size, from the same photo and painting.

Losses are unweighted; ``style_ratio`` = network / Gatys style loss (1.0 = as stylized as the
optimizer gets; Gatys minimizes exactly this objective, so it is a strong reference).

    python -m models.eval_style --json models/weights/styles/eval.json \\
        --extra reference=runs/weights/starry_night-reference.safetensors
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from models.gatys import GatysOptions, run_gatys
from models.imaging import pil_to_tensor, resize_longest, tensor_to_pil
from models.losses import content_loss, gram_matrix, style_loss
from models.styles import DEFAULT_WEIGHTS_DIR, read_manifest, verify
from models.train_style import DATA_DIR, list_photos, split_photos
from models.transformer import TransformerNet, load_transformer, stylize
from models.vgg import VGG19Features, caffe_preprocess, load_vgg19

GATYS = GatysOptions()


def objective_terms(
    vgg: VGG19Features, image: Tensor, content_targets: dict[str, Tensor], grams: dict[str, Tensor]
) -> dict[str, float]:
    """Unweighted Gatys content and style loss of ``image`` (1×3×H×W RGB in [0, 1])."""
    layers = tuple(dict.fromkeys((*content_targets, *grams)))
    with torch.inference_mode():
        feats = vgg(caffe_preprocess(image), layers)
        return {
            "content": float(content_loss(feats, content_targets)),
            "style": float(style_loss(feats, grams)),
        }


def evaluate_style(
    vgg: VGG19Features,
    networks: dict[str, TransformerNet],
    painting: Image.Image,
    photos: Sequence[Path],
    options: GatysOptions,
    save_dir: Path | None = None,
) -> dict[str, object]:
    """Per-photo and mean losses for each network and for Gatys (see the module docstring)."""
    style_img = resize_longest(painting.convert("RGB"), round(options.style_scale * options.size))
    with torch.inference_mode():
        style_feats = vgg(caffe_preprocess(pil_to_tensor(style_img)), options.style_layers)
        grams = {k: gram_matrix(v) for k, v in style_feats.items()}
    rows: list[dict[str, object]] = []
    for path in photos:
        photo = resize_longest(Image.open(path).convert("RGB"), options.size)
        x = pil_to_tensor(photo)
        with torch.inference_mode():
            targets = {k: v.clone() for k, v in vgg(caffe_preprocess(x), options.content_layers).items()}
        outputs: dict[str, Tensor] = {}
        timings: dict[str, float] = {}
        for label, net in networks.items():
            start = time.perf_counter()
            with torch.inference_mode():
                outputs[label] = stylize(net, x)
            timings[label] = time.perf_counter() - start
        start = time.perf_counter()
        gatys = run_gatys(vgg, photo, [painting], options)
        timings["gatys"] = time.perf_counter() - start
        outputs["gatys"] = pil_to_tensor(gatys)
        row: dict[str, object] = {"photo": path.name, "photo_terms": objective_terms(vgg, x, targets, grams)}
        for label, out in outputs.items():
            row[label] = {**objective_terms(vgg, out, targets, grams), "seconds": round(timings[label], 3)}
        rows.append(row)
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
            strip = [photo, *(tensor_to_pil(outputs[k]) for k in outputs)]
            canvas = Image.new("RGB", (sum(i.width for i in strip), max(i.height for i in strip)), "white")
            left = 0
            for img in strip:
                canvas.paste(img, (left, 0))
                left += img.width
            canvas.save(save_dir / f"{path.stem}.png")
        print(json.dumps(row), flush=True)
    labels = [*networks, "gatys"]
    mean = {
        label: {term: statistics.fmean(r[label][term] for r in rows) for term in ("content", "style")}
        for label in labels
    }
    mean["photo"] = {"style": statistics.fmean(r["photo_terms"]["style"] for r in rows)}
    ratios = {label: mean[label]["style"] / mean["gatys"]["style"] for label in networks}
    return {"photos": [p.name for p in photos], "rows": rows, "mean": mean, "style_ratio_vs_gatys": ratios}


def markdown_table(results: dict[str, object]) -> str:
    """The model card's table: mean unweighted losses per output kind, per style."""
    o = results["gatys_options"]
    lines = [
        f"Size {o['size']} px (longest side), Gatys {o['steps']} {o['optimizer']} steps, "
        f"content_weight {o['content_weight']}, style_weight {o['style_weight']}, "
        f"tv_weight {o['tv_weight']}.",
        "",
        "| style | photos | output | content loss | style loss | style ratio vs Gatys |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results["styles"].items():
        n = len(r["photos"])
        mean, ratios = r["mean"], r["style_ratio_vs_gatys"]
        lines.append(f"| {name} | {n} | photo | 0 | {mean['photo']['style']:,.0f} | |")
        for label in [*ratios, "gatys"]:
            ratio = f"{ratios[label]:.1f}×" if label in ratios else "1×"
            m = mean[label]
            lines.append(f"| {name} | {n} | {label} | {m['content']:,.0f} | {m['style']:,.0f} | {ratio} |")
    return "\n".join(lines)


def _display_path(path: Path) -> str:
    """Project-relative when possible: the JSON is committed and should not carry machine paths."""
    try:
        return str(path.resolve().relative_to(Path(__file__).resolve().parent.parent))
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", default=str(DATA_DIR / "photos"))
    p.add_argument("--paintings", default=str(DATA_DIR / "styles"), help="folder with the style images")
    p.add_argument("--weights-dir", default=str(DEFAULT_WEIGHTS_DIR))
    p.add_argument("--style", action="append", help="style name(s) from the manifest (default: all)")
    p.add_argument("--extra", action="append", default=[], help="label=path.safetensors, evaluated too")
    p.add_argument("--n-photos", type=int, default=0, help="first N held-out photos (0: all)")
    p.add_argument("--size", type=int, default=GATYS.size, help="longest side for every output")
    p.add_argument("--gatys-steps", type=int, default=GATYS.steps)
    p.add_argument("--json", default="", help="write the results here")
    p.add_argument("--save-dir", default="runs/eval_style", help="side-by-side images (git-ignored)")
    a = p.parse_args(argv)

    options = replace(GATYS, size=a.size, steps=a.gatys_steps)
    held = split_photos(list_photos(Path(a.photos)))[1]
    photos = held[: a.n_photos] if a.n_photos else held
    vgg = load_vgg19("relu5_1")
    weights_dir = Path(a.weights_dir)
    entries = [e for e in read_manifest(weights_dir) if not a.style or e.name in a.style]
    results: dict[str, object] = {
        "gatys_options": asdict(options),
        "held_out_photos_total": len(held),
        "torch": torch.__version__,
        "styles": {},
    }
    for entry in entries:
        main_path = verify(entry, weights_dir)
        net, meta = load_transformer(main_path)
        networks = {entry.arch: net}
        paths = {entry.arch: _display_path(main_path)}
        for extra in a.extra:
            label, path = extra.split("=", 1)
            networks[label] = load_transformer(Path(path))[0]
            paths[label] = path
        painting_file = json.loads(meta["atelier.train"])["style_file"]
        painting = Image.open(Path(a.paintings) / painting_file)
        save_dir = Path(a.save_dir) / entry.name if a.save_dir else None
        result = evaluate_style(vgg, networks, painting, photos, options, save_dir)
        result["weights"] = paths
        results["styles"][entry.name] = result  # type: ignore[index]
        print(
            json.dumps(
                {"style": entry.name, "mean": result["mean"], "ratios": result["style_ratio_vs_gatys"]}
            )
        )
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")
    print(markdown_table(results))


if __name__ == "__main__":
    main()
