"""Seconds per training epoch of the CIFAR-10 classifier on this CPU: fp32 vs bf16, 1 vs 2 threads.

    python bench/classifier_train_speed.py [--configs airbench94:fp32:1,airbench94:bf16:2,...] [--steps 3]

Runs a few real training steps (the training script's own ``Training.run``, full 1024-image
batches, the preset's network and augmentation) per configuration, never a whole epoch: s/epoch is
``steps_per_epoch x median s/step + the epoch's augmentation time``, in wall time and in the process's
CPU time (the latter hardly depends on what else runs: a 1-thread run's CPU time is about its wall
time on an idle machine). The first step of each
configuration (oneDNN primitive creation, and the step-1 bf16 check) is not timed. Configurations
run one after another in one process, so the machine's load, recorded before and after each, matters
as much as the numbers: on 2 cores shared with other work, compare rows taken side by side only.
Results go to ``bench/results/classifier-train-speed-<date>.{md,json}``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import describe, machine, uptime  # noqa: E402
from models import cifar  # noqa: E402
from models.precision import use_bf16  # noqa: E402
from models.training.train_classifier import PRESETS, Recipe, StepInfo, Training  # noqa: E402

DEFAULT_CONFIGS = (
    "airbench94:fp32:1,airbench94:bf16:1,airbench94:fp32:2,airbench94:bf16:2,"
    "long:bf16:1,long:bf16:2,long:fp32:1"
)


def measure(
    preset: str, precision: str, threads: int, steps: int, train_x: torch.Tensor, train_y: torch.Tensor
) -> dict[str, Any]:
    """Time ``steps`` training steps after one untimed step, plus one epoch's augmentation."""
    torch.set_num_threads(threads)
    recipe = Recipe(**PRESETS[preset])
    amp = use_bf16(torch.device("cpu"), precision)
    load_before = uptime()
    training = Training(recipe, train_x, train_y, torch.device("cpu"), amp, seed=0)
    stamps: list[float] = []
    cpu_stamps: list[float] = []

    def on_step(_info: StepInfo) -> None:
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.process_time())

    t0 = time.perf_counter()
    training.run(stop_after_steps=1 + steps, on_step=on_step, log=lambda _line: None)
    step_s = [b - a for a, b in itertools.pairwise(stamps)]
    cpu_step_s = statistics.median(b - a for a, b in itertools.pairwise(cpu_stamps))
    t = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    cifar.augment_epoch(train_x, training.flips, 1, recipe.translate, gen, recipe.cutout)
    torch.randperm(len(train_y), generator=gen)
    augment_s = time.perf_counter() - t
    median = statistics.median(step_s)
    return {
        "preset": preset,
        "width": list(recipe.width),
        "depth": list(recipe.depth),
        "precision": precision,
        "bf16_autocast": amp,
        "threads": threads,
        "timed_steps": len(step_s),
        "step_seconds": [round(s, 2) for s in step_s],
        "median_step_s": round(median, 2),
        # CPU time of all the process's threads: roughly what the step costs on an idle machine with
        # one thread, whatever the load (with 2 threads it includes OpenMP spin-waiting)
        "median_step_cpu_s": round(cpu_step_s, 2),
        "epoch_cpu_s": round(training.steps_per_epoch * cpu_step_s + augment_s, 1),
        "run_cpu_hours": round((training.total_steps * cpu_step_s + recipe.epochs * augment_s) / 3600, 2),
        "first_step_s": round(stamps[0] - t0, 2),
        "augment_epoch_s": round(augment_s, 2),
        "steps_per_epoch": training.steps_per_epoch,
        "epoch_s": round(training.steps_per_epoch * median + augment_s, 1),
        "run_epochs": recipe.epochs,
        "run_hours": round((training.total_steps * median + recipe.epochs * augment_s) / 3600, 2),
        "load_before": load_before,
        "load_after": uptime(),
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# Classifier training speed, CPU, {report['machine']['date']}",
        "",
        f"- {describe(m)}",
        f"- Command: `{report['command']}`",
        f"- {report['note']}",
        "",
        "| preset | widths / depths | precision | threads | median s/step | steps/epoch | **s/epoch** | "
        "whole run (h) | CPU s/step | CPU s/epoch | whole run (CPU h) | timed steps (s) | "
        "load before → after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        arch = f"{'/'.join(map(str, r['width']))} d{''.join(map(str, r['depth']))}"
        load = [r[k].split("load average:")[-1].strip() for k in ("load_before", "load_after")]
        lines.append(
            f"| {r['preset']} | {arch} | {r['precision']} | {r['threads']} | {r['median_step_s']} | "
            f"{r['steps_per_epoch']} | **{r['epoch_s']}** | {r['run_hours']} ({r['run_epochs']:g} ep) | "
            f"{r['median_step_cpu_s']} | {r['epoch_cpu_s']} | {r['run_cpu_hours']} | "
            f"{', '.join(map(str, r['step_seconds']))} | `{load[0]}` → `{load[1]}` |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated preset:precision:threads")
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration (after 1 untimed)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--tag", default="")
    p.add_argument("--note", default="", help="free text for the report (e.g. what else was running)")
    args = p.parse_args(argv)

    train = cifar.load_split(True)
    train_x, train_y = cifar.to_tensor(train.images), torch.tensor(train.labels)
    results = []
    for config in args.configs.split(","):
        preset, precision, threads = config.split(":")
        result = measure(preset, precision, int(threads), args.steps, train_x, train_y)
        print(json.dumps(result), flush=True)
        results.append(result)
    report = {
        "machine": machine(torch=torch.__version__),
        "command": " ".join(
            ["python", "bench/classifier_train_speed.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "note": args.note or "s/epoch extrapolated from a few steps of a partial epoch; see the docstring",
        "results": results,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"classifier-train-speed-{time.strftime('%Y-%m-%d')}{args.tag}"
    (args.out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out_dir / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
