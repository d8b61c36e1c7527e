"""Combine trained classifiers into one served ensemble file, and measure it against its members.

    python -m models.training.make_ensemble \\
        --member models/weights/classifier/classifier.safetensors \\
        --member runs/long-s2/classifier.safetensors --out-dir runs/ensemble

Loads every member (each a ``train_classifier`` output with its ``metrics.json`` beside it, or an
earlier ensemble, whose nets all join), checks they were trained holding out the same images (so
one temperature can still be fitted on images none of them saw), writes ``classifier.safetensors``
holding an :class:`~models.classifier.Ensemble` and a ``metrics.json`` with the test accuracy of
each member and of the ensemble (no TTA, mirror, mirror + translate). The members' own training
metrics are kept inside it. Then run ``export_onnx`` and ``calibrate --write`` on the output
directory, as for a single net.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from models import cifar
from models.classifier import CifarNet, Classifier, Ensemble, load_classifier, save_classifier
from models.training.train_classifier import evaluate

TTA_LEVELS = {0: "accuracy", 1: "accuracy_tta_flip", 2: "accuracy_tta_flip_translate"}


def accuracies(logits: dict[int, torch.Tensor], y: torch.Tensor) -> dict[str, float]:
    return {TTA_LEVELS[t]: round(float((lg.argmax(1) == y).double().mean()), 5) for t, lg in logits.items()}


def own_metrics(weights: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The ``metrics.json`` beside ``weights``, or {} when it belongs to another model."""
    metrics_path = weights.parent / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    return metrics if metrics.get("version") == meta.get("version") else {}


def split_members(
    weights: Path, model: Classifier, meta: dict[str, Any]
) -> list[tuple[CifarNet, dict[str, Any]]]:
    """The nets of one loaded file, each with its record: a single net, or every member of an ensemble.

    Taking an ensemble apart lets a new member join a served ensemble without the members' own
    files, which are training outputs and not kept.
    """
    metrics = own_metrics(weights, meta)
    if isinstance(model, CifarNet):
        return [(model, {"weights": str(weights), "version": meta.get("version"), "training": metrics})]
    versions = str(meta.get("version", "")).split("+")
    known = {r.get("version"): r.get("training", {}) for r in metrics.get("members", [])}
    if len(versions) != len(model.nets):
        versions = [f"{meta.get('version')}#{i}" for i in range(len(model.nets))]
    return [
        (net, {"weights": f"{weights}#members.{i}", "version": v, "training": known.get(v, {})})
        for i, (net, v) in enumerate(zip(model.nets, versions, strict=True))
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--member",
        type=Path,
        action="append",
        required=True,
        help="a classifier.safetensors: a single net, or an ensemble whose nets all join",
    )
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--data", default=None, help="CIFAR-10 dir (default: $ATELIER_DATA_DIR/cifar10)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument(
        "--no-translate", action="store_true", help="skip mirror + translate TTA (2/3 of the evaluation time)"
    )
    args = p.parse_args(argv)
    top_level = 1 if args.no_translate else 2  # TTA levels 0..top_level
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = [(path, *load_classifier(path)) for path in args.member]
    held_out = {int(meta.get("held_out_images", 0)) for _, _, meta in loaded}
    if len(held_out) != 1:
        print(f"members held out different slices {held_out}: none left to calibrate on", file=sys.stderr)
        return 1
    members = [member for path, model, meta in loaded for member in split_members(path, model, meta)]
    nets, records = [net for net, _ in members], [record for _, record in members]
    ensemble = Ensemble(nets).eval()

    test = cifar.load_split(False, args.data)
    images, y = cifar.to_tensor(test.images), torch.tensor(test.labels)
    t0 = time.perf_counter()
    member_logits = []
    for record, net in zip(records, nets, strict=True):
        member_logits.append(evaluate(net, images, levels=top_level))
        record["test"] = accuracies(member_logits[-1], y)
        print(record["version"], record["test"], flush=True)
    # The ensemble's logits are the members' mean (TTA is linear in the logits): no second pass.
    mean_logits = {t: torch.stack([m[t] for m in member_logits]).mean(0) for t in member_logits[0]}
    results = accuracies(mean_logits, y)
    print("ensemble", results, flush=True)

    version = "+".join(str(r["version"]) for r in records)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    weights = args.out_dir / "classifier.safetensors"
    meta = {
        "version": version,
        "held_out_images": held_out.pop(),
        "test_accuracy": results["accuracy"],
        "test_accuracy_tta_flip": results["accuracy_tta_flip"],
    }
    save_classifier(ensemble, weights, meta, half=True)  # members are fp16 already: no new rounding
    stored, _ = load_classifier(weights)
    with torch.no_grad():
        if not torch.allclose(stored(cifar.normalize(images[:1000])), mean_logits[0][:1000], atol=1e-4):
            print("the stored ensemble does not reproduce its members' mean logits", file=sys.stderr)
            return 1
    metrics = {
        "model": f"Ensemble of {len(nets)} CifarNets (logits averaged)",
        "version": version,
        "dataset": "CIFAR-10 test (JPEG copy), 10,000 images",
        "held_out_images": meta["held_out_images"],
        "test_accuracy": results["accuracy"],
        "test_accuracy_tta_flip": results["accuracy_tta_flip"],
        "test_accuracy_tta_flip_translate": results.get("accuracy_tta_flip_translate"),
        "weights_bytes": weights.stat().st_size,
        "parameters": sum(p.numel() for p in ensemble.parameters()),
        "members": records,
        "eval_seconds": round(time.perf_counter() - t0, 1),
        "date": time.strftime("%Y-%m-%d"),
        "command": shlex.join(["python", "-m", "models.training.make_ensemble", *(argv or sys.argv[1:])]),
    }
    (args.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"wrote {weights} and {args.out_dir / 'metrics.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
