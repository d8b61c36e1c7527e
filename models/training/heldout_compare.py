"""A candidate network's held-out loss against an evaluated one's, in a minute instead of an hour.

    python -m models.training.heldout_compare runs/train_style/dense.safetensors \\
        --against models/weights/styles/eval.json

For every (style, photo) pair of an ``eval_style`` result, the candidate's loss under the same
objective, size and photos, over the evaluated network's (< 1: better), and the Gatys-equivalent
steps read off the Gatys curve stored there. A curve stops where the evaluated network was beaten,
so a candidate better than that shows as ``> n`` (only ``eval_style`` measures it): this is the
monitor for a training run's checkpoints, the full evaluation stays the judge.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from models.imaging import pil_to_tensor, resize_longest
from models.photos import DATA_DIR
from models.style_objective import StyleObjective
from models.training.eval_style import network_painter, objective_loss
from models.training.overfit_probe import steps_to_beat
from models.transformer import load_transformer
from models.vgg import load_vgg19


def compare(
    weights: Path, against: dict[str, Any], photos_dir: Path, paintings_dir: Path
) -> dict[str, dict[str, Any]]:
    """Per style: each pair's loss ratio and steps on the stored curve, and their medians."""
    net, meta = load_transformer(weights)
    names = json.loads(meta["atelier.styles"])
    objective = StyleObjective.from_json(meta["atelier.objective"])
    if json.loads(objective.to_json()) != against["objective"]:
        raise ValueError(f"{weights} was trained under another objective than the evaluation's")
    paint = network_painter(net.eval(), names)
    vgg = load_vgg19("relu5_1")
    size = against["size"]
    photos = {
        n: pil_to_tensor(resize_longest(Image.open(photos_dir / n).convert("RGB"), size))
        for n in against["photos"]
    }
    results: dict[str, dict[str, Any]] = {}
    for name, evaluated in against["styles"].items():
        grams = objective.painting_grams(vgg, Image.open(paintings_dir / f"{name}.jpg").convert("RGB"))
        rows = []
        for row in evaluated["rows"]:
            x = photos[row["photo"]]
            total = objective_loss(vgg, objective, paint(name, x), x, grams)["total"]
            curve = row["gatys_curve"]
            steps = steps_to_beat(curve, total)
            rows.append(
                {
                    "photo": row["photo"],
                    "ratio": total / row["network"]["total"],
                    "gatys_equivalent_steps": steps if steps is not None else f"> {len(curve) - 1}",
                }
            )
        results[name] = {
            "rows": rows,
            "median_ratio": statistics.median(r["ratio"] for r in rows),
            "max_ratio": max(r["ratio"] for r in rows),
        }
    return results


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", type=Path, help="the candidate network")
    p.add_argument("--against", type=Path, required=True, help="an eval_style --json result")
    p.add_argument("--photos", type=Path, default=DATA_DIR / "photos")
    p.add_argument("--paintings", type=Path, default=DATA_DIR / "styles")
    p.add_argument("--json", type=Path, default=None, help="write the per-pair figures here")
    a = p.parse_args(argv)
    results = compare(a.weights, json.loads(a.against.read_text()), a.photos, a.paintings)
    ratios = [r["ratio"] for style in results.values() for r in style["rows"]]
    for name, style in results.items():
        print(f"{name:16s} median ratio {style['median_ratio']:.3f}  max {style['max_ratio']:.3f}")
    print(
        f"all {len(ratios)} pairs: median ratio {statistics.median(ratios):.3f}, "
        f"{sum(r < 1 for r in ratios)} lower, range {min(ratios):.3f}-{max(ratios):.3f}"
    )
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
