"""How far does fine-tuning only the style code get, on this CPU, with the served network?

    python bench/finetune_style.py --painting mosaic --minutes 7 --checkpoints 0,10,25,50,100

Fine-tunes one style code for a painting the network was not trained on, exactly as the
``POST /styles`` job does (:func:`models.finetune_style.finetune_code`, the worker's default recipe:
crops, batch, learning rate, bf16 where native), for at most ``--minutes`` of wall time. The code is
snapshotted at each checkpoint iteration; afterwards every snapshot is scored on held-out photos
with :mod:`models.training.eval_style` (Gatys-equivalent steps under the network's own objective, capped at
``--max-steps``; the bar is a median >= 50) and the style ratio under the Gatys job's objective. For
context, one of the network's own trained styles is scored on the same photos.

Writes ``bench/results/finetune-style-cpu-<date>.{json,md}`` with the machine, its load before and
after, and the seconds per iteration (so the iterations that fit in 20 minutes can be read off).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.machine import describe, machine, uptime  # noqa: E402
from models.finetune_style import (  # noqa: E402
    BALANCES,
    FinetuneConfig,
    balance_for,
    finetune_code,
    mean_code,
    network_with_code,
    trained_painting_grams,
)
from models.imaging import pil_to_tensor, resize_longest, tensor_to_pil  # noqa: E402
from models.photos import DATA_DIR, list_photos, split_photos  # noqa: E402
from models.style_objective import StyleObjective  # noqa: E402
from models.styles import DEFAULT_WEIGHTS_DIR, load_network  # noqa: E402
from models.training.eval_style import GES_BAR, evaluate  # noqa: E402
from models.transformer import stylize  # noqa: E402
from models.vgg import load_vgg19  # noqa: E402

BUDGET_MINUTES = 20  # the target: a custom style within 20 minutes on 2 cores


class _OutOfTime(Exception):
    pass


def summary(results: dict[str, Any]) -> dict[str, Any]:
    (r,) = results.values()
    return {
        "median_gatys_equivalent_steps": r["median_gatys_equivalent_steps"],
        "gatys_equivalent_steps": [row["gatys_equivalent_steps"] for row in r["rows"]],
        "median_job_style_ratio": round(r["median_job_style_ratio"], 4),
        "median_network_loss": {
            k: round(statistics.median(row["network"][k] for row in r["rows"]), 1)
            for k in ("content", "style", "tv", "total")
        },
        "median_photo_loss": round(statistics.median(row["photo_loss"]["total"] for row in r["rows"]), 1),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights-dir", default=str(DEFAULT_WEIGHTS_DIR))
    p.add_argument("--painting", default="mosaic", help="a painting in the data set's styles/ (not trained)")
    p.add_argument("--minutes", type=float, default=7.0, help="wall-time budget for the fine-tuning")
    p.add_argument("--checkpoints", default="0,10,25,50,100,200,400", help="iterations to score")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=FinetuneConfig.lr)
    p.add_argument("--n-photos", type=int, default=3, help="held-out photos per evaluation")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--max-steps", type=int, default=60, help="Gatys cap (the bar is 50)")
    p.add_argument("--reference-style", default="starry_night", help="a trained style, for context")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--balance", choices=BALANCES, default="trained", help="the style-weight balance (as the worker's)"
    )
    p.add_argument("--tag", default="", help="suffix for the result files (several runs on one day)")
    p.add_argument("--previews", help="write the last code's held-out outputs (512 px) here, to look at")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    load_before = uptime()
    network = load_network(Path(a.weights_dir))
    objective = StyleObjective.from_json(network.metadata["atelier.objective"])
    vgg = load_vgg19("relu5_1")  # deep enough for the Gatys job objective's style ratio
    painting = Image.open(DATA_DIR / "styles" / f"{a.painting}.jpg").convert("RGB")
    grams = objective.painting_grams(vgg, painting)
    train, held_out = split_photos(list_photos(DATA_DIR / "photos"))
    photos = held_out[: a.n_photos]
    checkpoints = sorted({int(c) for c in a.checkpoints.split(",")})
    fixed_objective = objective
    if a.balance == "trained":  # as the worker does: the count is under the objective it trained with
        trained = trained_painting_grams(network, Path(a.weights_dir), objective, vgg)
        objective, style_scale = balance_for(objective, vgg, grams, train, trained)
    else:
        style_scale = 1.0
    print(f"style weight {fixed_objective.style_weight} x {style_scale:.4f}", flush=True)

    # The worker's recipe, for at most --minutes; the code is kept at every checkpoint.
    cfg = FinetuneConfig(iterations=max(checkpoints), batch_size=a.batch_size, crop=a.crop, lr=a.lr)
    init = mean_code(network.model)
    snapshots: dict[int, torch.Tensor] = {0: init.clone()} if 0 in checkpoints else {}
    step_times: list[float] = []
    losses: list[dict[str, float]] = []
    deadline = time.monotonic() + a.minutes * 60
    last = time.monotonic()
    latest: dict[str, Any] = {}

    def on_step(report) -> None:
        nonlocal last
        now = time.monotonic()
        step_times.append(now - last)
        last = now
        losses.append({k: round(v, 1) for k, v in report.losses.items()})
        print(f"step {report.step} {step_times[-1]:.2f}s {losses[-1]}", flush=True)
        latest["step"] = report.step
        if report.step in checkpoints or now > deadline:
            snapshots[report.step] = report.code.detach().clone()
        if now > deadline:
            raise _OutOfTime

    started = last = time.monotonic()
    try:
        finetune_code(network.model, objective, vgg, grams, train, cfg, init=init, on_step=on_step)
    except _OutOfTime:
        print(f"out of time after {latest['step']} iterations", flush=True)
    train_seconds = time.monotonic() - started

    evaluations: dict[int, Any] = {}
    eval_started = time.monotonic()
    for iteration, snapshot in sorted(snapshots.items()):
        net = network_with_code(network.model, snapshot)
        results = evaluate(
            vgg, net, [a.painting], objective, {a.painting: painting}, photos, a.size, a.max_steps
        )
        evaluations[iteration] = summary(results)
        print(json.dumps({"iteration": iteration, **evaluations[iteration]}), flush=True)
    reference = None
    if a.reference_style in network.rows:
        ref_painting = Image.open(DATA_DIR / "styles" / f"{a.reference_style}.jpg").convert("RGB")
        row = network.rows[a.reference_style]
        ref_net = network_with_code(network.model, network.model.style_table()[row : row + 1].detach())
        ref = evaluate(
            vgg,
            ref_net,
            [a.reference_style],
            fixed_objective,
            {a.reference_style: ref_painting},
            photos,
            a.size,
            a.max_steps,
        )
        reference = {"style": a.reference_style, **summary(ref)}
        print(json.dumps(reference), flush=True)
    eval_seconds = time.monotonic() - eval_started
    if a.previews:
        write_previews(Path(a.previews), network_with_code(network.model, snapshots[max(snapshots)]), photos)

    per_step = statistics.median(step_times[1:] or step_times) if step_times else float("nan")
    body = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(torch=torch.__version__, torch_threads=torch.get_num_threads()),
        "load_before": load_before,
        "load_after": uptime(),
        "network": {
            "sha256": network.manifest.network.sha256,
            "arch": network.manifest.network.arch,
            "code_size": network.model.code_size,
            "trained_iterations": json.loads(network.metadata.get("atelier.train", "{}")).get("iterations"),
        },
        "painting": a.painting,
        "recipe": {
            "crop": cfg.crop,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "init": "mean",
            "bf16": "auto",
            "balance": a.balance,
            "style_weight": round(objective.style_weight, 4),
            "style_weight_scale": round(style_scale, 4),
        },
        "iterations_done": max(snapshots),
        "seconds_per_iteration_median": round(per_step, 2),
        "iterations_in_20_minutes_at_this_rate": int(BUDGET_MINUTES * 60 / per_step) if step_times else 0,
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "eval": {
            "photos": [p.name for p in photos],
            "size": a.size,
            "max_steps": a.max_steps,
            "bar": GES_BAR,
        },
        "evaluations": {str(k): v for k, v in evaluations.items()},
        "reference_trained_style": reference,
        "losses": losses,
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"finetune-style-cpu-{datetime.now(UTC):%Y-%m-%d}{'-' + a.tag if a.tag else ''}"
    stem.with_suffix(".json").write_text(json.dumps(body, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(body) + "\n")
    print(markdown(body))


def write_previews(folder: Path, net: torch.nn.Module, photos: list[Path]) -> None:
    """The held-out photos painted with the last code, 512 px longest side (to look at, not commit)."""
    folder.mkdir(parents=True, exist_ok=True)
    for photo in photos:
        x = pil_to_tensor(resize_longest(Image.open(photo).convert("RGB"), 512))
        with torch.inference_mode():
            tensor_to_pil(stylize(net, x)).save(folder / f"{photo.stem}.jpg", quality=90)


def markdown(b: dict[str, Any]) -> str:
    m, n = b["machine"], b["network"]
    lines = [
        f"# Custom style: fine-tuning only the style code ({b['date']})",
        "",
        f"{describe(m)}. Load before: `{b['load_before']}`; after: `{b['load_after']}`.",
        f"Network: {n['arch']} `{n['sha256'][:12]}` ({n['trained_iterations']} training iterations), "
        f"P = {n['code_size']}. Painting: `{b['painting']}` (not one of the trained styles). Recipe: "
        f"{b['recipe']}.",
        "",
        f"Seconds per iteration (median): **{b['seconds_per_iteration_median']}**, so "
        f"**{b['iterations_in_20_minutes_at_this_rate']} iterations** fit in 20 minutes at this load. "
        f"Iterations run: {b['iterations_done']} in {b['train_seconds']} s; "
        f"evaluation {b['eval_seconds']} s.",
        "",
        f"Held-out photos {b['eval']['photos']} at {b['eval']['size']} px, Gatys capped at "
        f"{b['eval']['max_steps']} steps (the bar: median >= {b['eval']['bar']}; "
        f"{b['eval']['max_steps'] + 1} means 'not within the cap').",
        "",
        "| iterations | median Gatys-equivalent steps | per photo | style ratio (Gatys job) | network "
        "content / style / total | photo total |",
        "|---|---|---|---|---|---|",
    ]
    for it, e in b["evaluations"].items():
        loss = e["median_network_loss"]
        lines.append(
            f"| {it} | {e['median_gatys_equivalent_steps']} | {e['gatys_equivalent_steps']} | "
            f"{e['median_job_style_ratio']} | {loss['content']:,.0f} / {loss['style']:,.0f} / "
            f"{loss['total']:,.0f} | {e['median_photo_loss']:,.0f} |"
        )
    ref = b.get("reference_trained_style")
    if ref:
        loss = ref["median_network_loss"]
        lines.append(
            f"| trained style `{ref['style']}` (context) | {ref['median_gatys_equivalent_steps']} | "
            f"{ref['gatys_equivalent_steps']} | {ref['median_job_style_ratio']} | {loss['content']:,.0f} / "
            f"{loss['style']:,.0f} / {loss['total']:,.0f} | {ref['median_photo_loss']:,.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
