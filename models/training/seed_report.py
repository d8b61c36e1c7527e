"""Mean and standard deviation over seeds of ``train_classifier`` runs, as a model-card table.

    python -m models.training.seed_report runs/ab94-s0 runs/ab94-s1 runs/ab94-s2

Reads each run's ``metrics.json``; refuses runs of different recipes (a mean over mixed recipes
means nothing). The std is the sample standard deviation (n - 1), as airbench reports it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

COLUMNS = {
    "test_accuracy": "no TTA",
    "test_accuracy_tta_flip": "mirror TTA",
    "test_accuracy_tta_flip_translate": "mirror + translate TTA",
}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-column values and mean/std over the runs (accuracies in percent)."""
    if not runs:
        raise ValueError("no runs given")
    recipes = {json.dumps(r["recipe"], sort_keys=True) for r in runs}
    if len(recipes) > 1:
        raise ValueError(f"the runs use {len(recipes)} different recipes; compare like with like")
    out: dict[str, Any] = {"seeds": [r["seed"] for r in runs], "columns": {}}
    for key, title in COLUMNS.items():
        values = [100 * r[key] for r in runs]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        out["columns"][key] = {"title": title, "values": values, "mean": statistics.fmean(values), "std": std}
    out["train_seconds"] = [r.get("train_seconds") for r in runs]
    return out


def markdown(summary: dict[str, Any]) -> str:
    cols = summary["columns"]
    lines = [
        "| seed | " + " | ".join(c["title"] for c in cols.values()) + " | training time |",
        "|---|" + "---|" * len(cols) + "---|",
    ]
    for i, seed in enumerate(summary["seeds"]):
        cells = " | ".join(f"{c['values'][i]:.2f}%" for c in cols.values())
        lines.append(f"| {seed} | {cells} | {summary['train_seconds'][i]} s |")
    means = " | ".join(f"**{c['mean']:.2f} ± {c['std']:.2f}%**" for c in cols.values())
    lines.append(f"| **mean ± std** | {means} | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="output dirs of train_classifier (with metrics.json)")
    args = p.parse_args(argv)
    runs = [json.loads((d / "metrics.json").read_text()) for d in args.runs]
    print(markdown(summarize(runs)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
