"""What a running job's previews cost: Gatys with a preview at every step against none, side by side.

    python bench/job_previews.py [--size 512] [--steps 8] [--rounds 3]

Both runs optimize the same photo and painting (the CC0 cat of ``docs/examples`` and a shipped
thumbnail) for ``--steps`` L-BFGS steps at ``--size``, alternating, ``--rounds`` times each, on this
machine at once. One stores no preview; the other stores one at *every* step through the worker's
own :class:`worker.previews.PreviewWriter` into the local Redis (its own key, deleted afterwards),
so the difference per step is the cost of one preview: render the image, encode a JPEG, write it.
The service stores one every ``ATELIER_JOB_PREVIEW_INTERVAL_S``, so the share of a job's time it
costs is that difference divided by the interval. The preview alone is also timed at 512 and
1024 px, and so is a custom-style job's preview, which is a forward pass of the served network
(a held-out photo at 256 px painted in the code as it stands).

Results: ``bench/results/job-previews-cpu-<date>.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from redis import Redis  # noqa: E402

from bench.machine import describe, machine, uptime  # noqa: E402
from core.settings import get_settings  # noqa: E402
from models.gatys import GatysOptions, StepReport, run_gatys  # noqa: E402
from models.vgg import load_vgg19  # noqa: E402
from worker.previews import PreviewWriter  # noqa: E402

PHOTO = ROOT / "docs" / "examples" / "cat.jpg"
PAINTING = ROOT / "models" / "weights" / "styles" / "thumbnails" / "starry_night.jpg"
KEY = "atelier-bench:job-previews"


def timed_run(
    vgg, photo: Image.Image, painting: Image.Image, options: GatysOptions, writer, inside: list[float]
) -> float:
    """Seconds per step of one Gatys run; ``writer`` (or None) gets every step's image, and the ms
    each preview took (render, encode, write: what the worker pays) are appended to ``inside``."""

    def on_step(report: StepReport) -> None:
        start = time.perf_counter()
        writer.offer(report.step, report.image)
        inside.append((time.perf_counter() - start) * 1000)

    start = time.perf_counter()
    run_gatys(vgg, photo, [painting], options, on_step=on_step if writer else None)
    return (time.perf_counter() - start) / options.steps


def preview_alone_ms(redis: Redis, size: int, repeats: int = 20) -> float:
    """Median ms of one stored preview of a ``size`` px image (encode and write; the render is a copy)."""
    image = Image.open(PHOTO).convert("RGB")
    image = image.resize((size, round(size * image.height / image.width)), Image.Resampling.BICUBIC)
    writer = PreviewWriter(redis, KEY, interval_s=1e-9, ttl_s=60)
    times = []
    for step in range(repeats):
        start = time.perf_counter()
        writer.offer(step, image.copy)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def style_preview_ms(repeats: int = 10) -> float:
    """Median ms of rendering a custom-style job's preview: the served network on a 256 px photo."""
    from models.styles import load_network
    from worker.style_job import _painted, _preview_photo

    network = load_network(get_settings().weights_dir)
    code = network.model.style_code(network.style_weights([network.names[0]]))
    photo = _preview_photo(PHOTO)
    _painted(network, code, photo)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _painted(network, code, photo)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    settings = get_settings()
    redis = Redis.from_url(settings.redis_url)
    vgg = load_vgg19()
    photo, painting = Image.open(PHOTO).convert("RGB"), Image.open(PAINTING).convert("RGB")
    options = GatysOptions(size=args.size, steps=args.steps)
    inside: list[float] = []
    timed_run(vgg, photo, painting, GatysOptions(size=args.size, steps=2), None, inside)  # warm-up
    runs: dict[str, list[float]] = {"none": [], "every_step": []}
    try:
        for _ in range(args.rounds):
            runs["none"].append(timed_run(vgg, photo, painting, options, None, inside))
            writer = PreviewWriter(redis, KEY, interval_s=1e-9, ttl_s=60)
            runs["every_step"].append(timed_run(vgg, photo, painting, options, writer, inside))
        alone = {str(size): preview_alone_ms(redis, size) for size in (512, 1024)}
        style_ms = style_preview_ms()
    finally:
        redis.delete(KEY)

    step_s = {k: statistics.median(v) for k, v in runs.items()}
    per_preview_ms = statistics.median(inside)
    interval = settings.job_preview_interval_s
    summary = {
        "machine": machine(torch=torch.__version__, torch_threads=torch.get_num_threads()),
        "load": uptime(),
        "size": args.size,
        "steps": args.steps,
        "rounds": args.rounds,
        "seconds_per_step": step_s,
        "ratio_every_step_vs_none": step_s["every_step"] / step_s["none"],
        "per_preview_ms": per_preview_ms,
        "preview_interval_s": interval,
        "share_of_job_time_at_interval": per_preview_ms / 1000 / interval,
        "preview_ms_inside_runs": inside,
        "preview_alone_ms": alone,
        "style_preview_render_ms": style_ms,
        "style_preview_share_at_interval": style_ms / 1000 / interval,
        "runs": runs,
    }
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    out_dir = ROOT / "bench" / "results"
    (out_dir / f"job-previews-cpu-{stamp}.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [
        f"# Job previews: what they cost ({stamp})",
        "",
        describe(summary["machine"]),
        "",
        f"Load: `{summary['load']}`",
        "",
        f"Gatys at {args.size} px, {args.steps} L-BFGS steps per run, {args.rounds} alternating rounds:",
        "",
        "| previews | seconds per step (median) |",
        "|---|---|",
        f"| none | {step_s['none']:.3f} |",
        f"| one at every step | {step_s['every_step']:.3f} |",
        "",
        f"Ratio {summary['ratio_every_step_vs_none']:.3f} (a preview at every step against none). "
        f"Timed inside the runs, one preview (render the image, encode the JPEG, write it to Redis) "
        f"takes {per_preview_ms:.1f} ms (median of {len(inside)}), so at one every {interval:g} s "
        f"previews take {100 * summary['share_of_job_time_at_interval']:.2f}% of a job's time.",
        "",
        "One preview alone (JPEG encode and Redis write of a ready image), median of 20: "
        + ", ".join(f"{ms:.1f} ms at {size} px" for size, ms in alone.items())
        + ".",
        "",
        f"A custom-style job's preview (the served network on a 256 px held-out photo, in the code as it "
        f"stands) takes {style_ms:.0f} ms to render (median of 10), {100 * style_ms / 1000 / interval:.1f}% "
        f"of the job's time at one every {interval:g} s.",
        "",
        "`python bench/job_previews.py"
        + (f" --size {args.size}" if args.size != 512 else "")
        + (f" --steps {args.steps}" if args.steps != 8 else "")
        + (f" --rounds {args.rounds}" if args.rounds != 3 else "")
        + "`",
        "",
    ]
    (out_dir / f"job-previews-cpu-{stamp}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
