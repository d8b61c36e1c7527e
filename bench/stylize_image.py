"""Benchmark the large-image job's tiled stylization against one whole-image forward, side by side.

    python bench/stylize_image.py [--sizes 1024x768,2048x1536,4032x3024] [--threads 2]

For each size, in fresh processes (so each peak resident memory is its own), alternating: one forward
of the whole image (what `/stylize` would do, were it allowed that size) and `models.tiled`'s tiled
forward (what the `POST /jobs/stylize-image` worker does); the wall time, the peak resident memory
and, for the tiled run, the largest difference from the whole-image output. The served network, torch
fp32 (the worker's path). Results: ``bench/results/stylize-image-cpu-<date>.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import describe, machine, uptime  # noqa: E402

WEIGHTS = ROOT / "models" / "weights"


def _measure(mode: str, width: int, height: int, threads: int, reference: str | None) -> dict[str, Any]:
    """Runs in a child process: one stylization, its time and this process's peak memory."""
    import numpy as np
    import torch

    from models.styles import load_network
    from models.tiled import stylize_tiled, tile_passes
    from models.transformer import pad_to_multiple

    torch.set_num_threads(threads)
    network = load_network(WEIGHTS)
    model = network.model.eval()
    code = model.style_code(network.style_weights(network.names[:1]))
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, height, width, generator=g)
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if mode == "whole":
        with torch.inference_mode():
            padded, h, w = pad_to_multiple(image)
            out = model.forward_code(padded, code)[..., :h, :w].clamp(0.0, 1.0)
    else:
        out = stylize_tiled(model, image, code)
    seconds = time.perf_counter() - start
    report: dict[str, Any] = {
        "mode": mode,
        "size": f"{width}x{height}",
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_before_mib": round(baseline_kib / 1024),  # torch and the network, before the image
        "peak_growth_mib": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kib) / 1024),
    }
    if mode == "tiled":
        report["tile_passes"] = tile_passes(model, height, width)
    if reference is not None and mode == "whole":
        np.save(reference, out.numpy())
    elif reference is not None and Path(reference).exists():
        whole = torch.from_numpy(np.load(reference))
        report["max_abs_diff_vs_whole"] = float((out - whole).abs().max())
    return report


def run_child(mode: str, width: int, height: int, threads: int, reference: str | None) -> dict[str, Any]:
    args = [sys.executable, __file__, "--child", mode, f"{width}x{height}", "--threads", str(threads)]
    if reference is not None:
        args += ["--reference", reference]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1024x768,2048x1536,4032x3024")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--compare-up-to", type=int, default=2048 * 1536, help="pixels: larger sizes skip the diff"
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--child", nargs=2, metavar=("MODE", "SIZE"), help=argparse.SUPPRESS)
    p.add_argument("--reference", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        width, height = (int(v) for v in args.child[1].split("x"))
        print(json.dumps(_measure(args.child[0], width, height, args.threads, args.reference)))
        return

    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            width, height = (int(v) for v in size.split("x"))
            reference = str(Path(tmp) / f"{size}.npy") if width * height <= args.compare_up_to else None
            whole = run_child("whole", width, height, args.threads, reference)
            tiled = run_child("tiled", width, height, args.threads, reference)
            rows.append(
                {
                    "size": size,
                    "whole": whole,
                    "tiled": tiled,
                    "time_ratio": round(tiled["seconds"] / whole["seconds"], 2),
                }
            )
            print(json.dumps(rows[-1]), flush=True)

    import torch

    info = {
        "machine": machine(torch=torch.__version__),
        "uptime": uptime(),
        "threads": args.threads,
        "rows": rows,
    }
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"stylize-image-cpu-{date}"
    stem.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    lines = [
        f"# Large-image stylization: tiled vs one whole-image forward ({date})",
        "",
        describe(info["machine"]),
        "",
        f"`{info['uptime']}`; {args.threads} torch threads; served network, fp32; "
        "each run in a fresh process.",
        "",
        "| size | whole: s | whole: peak memory growth MiB | tiled: s | tiled: peak memory growth MiB "
        "| tiled / whole time | tile passes | max abs diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        w, t = r["whole"], r["tiled"]
        diff = t.get("max_abs_diff_vs_whole")
        shown = "—" if diff is None else f"{diff:.1e}"
        lines.append(
            f"| {r['size']} | {w['seconds']} | {w['peak_growth_mib']} | {t['seconds']} | "
            f"{t['peak_growth_mib']} | {r['time_ratio']} | {t['tile_passes']} | {shown} |"
        )
    lines += ["", "python bench/stylize_image.py " + " ".join(sys.argv[1:]), ""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
