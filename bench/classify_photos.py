"""Does /classify hold its accuracy on phone-photo-like uploads? CIFAR-10 test images as big JPEGs.

    python bench/classify_photos.py [--limit 10000] [--variants-limit 2000] [--backend auto]

Each CIFAR-10 test image becomes a "photo": upscaled (bicubic) to a random 256-512 px square,
stored rotated with the EXIF orientation tag that undoes it (1, 3, 6 or 8, as phones write them),
and saved as a JPEG of random quality 80-95. Both the photo and the 32 px original then go through
the service's own path: ``app.uploads.decode_image`` (what ``read_image`` runs: EXIF transpose, RGB),
``models.classifier.to_pixels`` (shorter side to 32 px, antialiased, center crop) and
``ClassifierService.run_sync`` (the batch function behind the micro-batcher: normalization, the
backend the server would load, calibrated softmax). The accuracy gap is the cost of the photo path.

On a subset, alternatives justify the choices: other filters, no antialiasing (nearest: it looks
good here only because a bicubic upscale passes through the original pixels, which real photos do
not have), EXIF ignored, and for 4:3 photos (the square image with mirrored context added at the
sides) center crop vs padding to a square. Also times the resize of a 4000x3000 photo.
Results: ``bench/results/classify-photos-<date>.{md,json}``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.services.classifier import ClassifierService, load_service  # noqa: E402
from app.uploads import decode_image  # noqa: E402
from bench.machine import describe, machine, uptime  # noqa: E402
from models import calibration, cifar  # noqa: E402
from models.classifier import INPUT_SIZE, RESIZE_FILTER, RESIZE_REDUCING_GAP, to_pixels  # noqa: E402

MAX_PIXELS = 40_000_000
# EXIF orientation -> the transpose that *stores* an upright image so that exif_transpose undoes it.
STORE_ROTATED = {
    1: None,
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}
EXIF_ORIENTATION = 0x0112


def make_photo(pixels: np.ndarray, side: int, quality: int, orientation: int, aspect: float = 1.0) -> bytes:
    """A 32x32 image as a phone-like JPEG: upscaled, optionally widened, rotated + EXIF-tagged.

    ``aspect`` > 1 widens the square into a landscape photo by mirroring its left and right edges
    outwards (the object stays a centered square, as in a photo framed on it).
    """
    img = Image.fromarray(pixels).resize((side, side), Image.Resampling.BICUBIC)
    if aspect > 1:
        extra = round(side * (aspect - 1) / 2)
        arr = np.asarray(img)
        img = Image.fromarray(np.pad(arr, ((0, 0), (extra, extra), (0, 0)), mode="symmetric"))
    transpose = STORE_ROTATED[orientation]
    if transpose is not None:
        img = img.transpose(transpose)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue()


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def served_preprocess(data: bytes) -> np.ndarray:
    """Exactly the HTTP path's preprocessing of one upload: decode (EXIF, RGB), resize + crop."""
    return to_pixels([decode_image(data, "file", MAX_PIXELS)])[0]


def resize_with(method: Image.Resampling, reducing_gap: float | None) -> Callable[[Image.Image], np.ndarray]:
    """A variant of :func:`models.classifier.resize_to_input` with another filter (shorter side, crop)."""

    def run(img: Image.Image) -> np.ndarray:
        w, h = img.size
        scale = INPUT_SIZE / min(w, h)
        size = (max(INPUT_SIZE, round(w * scale)), max(INPUT_SIZE, round(h * scale)))
        img = img.resize(size, method, reducing_gap=reducing_gap)
        left, top = (size[0] - INPUT_SIZE) // 2, (size[1] - INPUT_SIZE) // 2
        return np.asarray(img.crop((left, top, left + INPUT_SIZE, top + INPUT_SIZE)))

    return run


def pad_to_square(img: Image.Image) -> np.ndarray:
    """The alternative to cropping: letterbox onto the mean colour, then the served resize."""
    side = max(img.size)
    canvas = Image.new("RGB", (side, side), tuple(int(v) for v in cifar.MEAN_PIXEL))
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return to_pixels([canvas])[0]


def decode_without_exif(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def score(service: ClassifierService, pixels: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    probs = np.concatenate([service.run_sync(pixels[i : i + 500]) for i in range(0, len(pixels), 500)])
    return {
        "images": len(labels),
        "accuracy": round(float((probs.argmax(1) == labels).mean()), 5),
        "ece15": round(calibration.expected_calibration_error(probs, labels), 5),
        "top1": probs.argmax(1),
    }


def timed(fn: Callable[[bytes], np.ndarray], blobs: list[bytes]) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    out = np.stack([fn(b) for b in blobs])
    return out, (time.perf_counter() - t) / max(1, len(blobs)) * 1000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=10_000, help="test images for the main comparison")
    p.add_argument("--variants-limit", type=int, default=2000, help="test images for the alternatives")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--tag", default="")
    p.add_argument("--tta", action="store_true", help="serve with mirror TTA (ATELIER_CLASSIFY_TTA)")
    args = p.parse_args(argv)

    from core.settings import Settings

    load_before = uptime()
    service = load_service(
        Settings().weights_dir / "classifier", backend=args.backend, threads=args.threads, tta_flip=args.tta
    )
    test = cifar.load_split(False)
    n = min(args.limit, len(test))
    images, labels = test.images[:n], test.labels[:n]
    rng = np.random.default_rng(args.seed)
    sides = rng.integers(256, 513, n)
    qualities = rng.integers(80, 96, n)
    orientations = rng.choice(list(STORE_ROTATED), n)

    t = time.perf_counter()
    photos = [make_photo(images[i], int(sides[i]), int(qualities[i]), int(orientations[i])) for i in range(n)]
    make_s = time.perf_counter() - t
    originals, orig_ms = timed(served_preprocess, [png(x) for x in images])
    photo_pixels, photo_ms = timed(served_preprocess, photos)
    base, photo = score(service, originals, labels), score(service, photo_pixels, labels)
    main_result = {
        "images": n,
        "original_32px": {k: v for k, v in base.items() if k != "top1"},
        "photos": {k: v for k, v in photo.items() if k != "top1"},
        "accuracy_drop_points": round(100 * (base["accuracy"] - photo["accuracy"]), 2),
        "top1_agreement": round(float((base["top1"] == photo["top1"]).mean()), 5),
        "mean_abs_pixel_difference": round(float(np.abs(photo_pixels.astype(int) - originals).mean()), 2),
        "preprocess_ms_per_image": {"original_png": round(orig_ms, 3), "photo_jpeg": round(photo_ms, 3)},
        "photo_bytes_mean": int(np.mean([len(b) for b in photos])),
        "make_photos_s": round(make_s, 1),
    }
    print(json.dumps(main_result), flush=True)

    m = min(args.variants_limit, n)
    sub_labels, sub_photos = labels[:m], photos[:m]
    wide = [
        make_photo(images[i], int(sides[i]), int(qualities[i]), int(orientations[i]), 4 / 3) for i in range(m)
    ]

    def decoded_then(method: Image.Resampling, gap: float | None) -> Callable[[bytes], np.ndarray]:
        resize = resize_with(method, gap)
        return lambda b: resize(decode_image(b, "f", MAX_PIXELS))

    R = Image.Resampling
    variants: dict[str, tuple[Callable[[bytes], np.ndarray], list[bytes]]] = {
        f"served: {RESIZE_FILTER.name.lower()}, reducing_gap {RESIZE_REDUCING_GAP:g}": (
            served_preprocess,
            sub_photos,
        ),
        "lanczos, no reducing_gap": (decoded_then(R.LANCZOS, None), sub_photos),
        "lanczos, reducing_gap 3": (decoded_then(R.LANCZOS, 3.0), sub_photos),
        "bicubic, reducing_gap 3 (served before)": (decoded_then(R.BICUBIC, 3.0), sub_photos),
        "bicubic, no reducing_gap": (decoded_then(R.BICUBIC, None), sub_photos),
        "box (area average)": (decoded_then(R.BOX, None), sub_photos),
        "nearest (no antialiasing)": (decoded_then(R.NEAREST, None), sub_photos),
        "EXIF orientation ignored": (lambda b: to_pixels([decode_without_exif(b)])[0], sub_photos),
        "4:3 photos, served center crop": (served_preprocess, wide),
        "4:3 photos, padded to a square instead": (
            lambda b: pad_to_square(decode_image(b, "f", MAX_PIXELS)),
            wide,
        ),
    }
    sub_base = {k: v for k, v in score(service, originals[:m], sub_labels).items() if k != "top1"}
    variant_results = {}
    for name, (fn, blobs) in variants.items():
        pixels, ms = timed(fn, blobs)
        r = score(service, pixels, sub_labels)
        variant_results[name] = {
            "accuracy": r["accuracy"],
            "drop_points": round(100 * (sub_base["accuracy"] - r["accuracy"]), 2),
            "ece15": r["ece15"],
            "preprocess_ms_per_image": round(ms, 3),
        }
        print(name, json.dumps(variant_results[name]), flush=True)

    big = Image.fromarray(rng.integers(0, 256, (3000, 4000, 3), dtype=np.uint8))
    resize_12mp_ms = {}
    for name, (method, gap) in {
        "served": (RESIZE_FILTER, RESIZE_REDUCING_GAP),
        "lanczos, no reducing_gap": (R.LANCZOS, None),
        "bicubic, reducing_gap 3 (served before)": (R.BICUBIC, 3.0),
    }.items():
        resize = resize_with(method, gap)
        resize(big)
        t = time.perf_counter()
        for _ in range(3):
            resize(big)
        resize_12mp_ms[name] = round((time.perf_counter() - t) / 3 * 1000, 1)

    report = {
        "machine": machine(),
        "service": {**service.describe(), "temperature": service.temperature, "tta_flip": service.tta_flip},
        "command": " ".join(
            ["python", "bench/classify_photos.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "photos": "CIFAR-10 test images (JPEG copy) upscaled bicubic to a random 256-512 px square, stored "
        "rotated with EXIF orientation 1/3/6/8 (uniform), JPEG quality 80-95 (uniform), seed "
        f"{args.seed}",
        "load_before": load_before,
        "load_after": uptime(),
        "main": main_result,
        "variants_images": m,
        "variants_original_32px": sub_base,
        "variants": variant_results,
        "resize_4000x3000_ms": resize_12mp_ms,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"classify-photos-{time.strftime('%Y-%m-%d')}{args.tag}"
    (args.out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out_dir / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(report: dict[str, Any]) -> str:
    mr, s = report["main"], report["service"]
    lines = [
        f"# /classify on phone-photo-like uploads, {report['machine']['date']}",
        "",
        f"- {describe(report['machine'])}",
        f"- Service: backend `{s['backend']}`, model `{s['version']}`, temperature {s['temperature']}, "
        f"mirror TTA {s['tta_flip']}",
        f"- Photos: {report['photos']}",
        f"- Load before: `{report['load_before']}`; after: `{report['load_after']}`",
        f"- Command: `{report['command']}`",
        "",
        f"## Served path, {mr['images']} test images",
        "",
        "| input | top-1 | ECE (15 bins) | preprocessing ms/image |",
        "|---|---|---|---|",
        f"| 32 px originals (PNG) | {100 * mr['original_32px']['accuracy']:.2f}% | "
        f"{mr['original_32px']['ece15']:.4f} | {mr['preprocess_ms_per_image']['original_png']} |",
        f"| photos (JPEG, {mr['photo_bytes_mean']} bytes mean) | {100 * mr['photos']['accuracy']:.2f}% | "
        f"{mr['photos']['ece15']:.4f} | {mr['preprocess_ms_per_image']['photo_jpeg']} |",
        "",
        f"**Drop: {mr['accuracy_drop_points']} points** (limit 0.5); top-1 agreement with the originals "
        f"{100 * mr['top1_agreement']:.2f}%; mean absolute difference of the 32x32 pixels fed to the model "
        f"{mr['mean_abs_pixel_difference']} levels.",
        "",
        f"## Alternatives, first {report['variants_images']} test images "
        f"(32 px originals: {100 * report['variants_original_32px']['accuracy']:.2f}%)",
        "",
        "| preprocessing | top-1 | drop (points) | ECE | ms/image |",
        "|---|---|---|---|---|",
    ]
    for name, v in report["variants"].items():
        lines.append(
            f"| {name} | {100 * v['accuracy']:.2f}% | {v['drop_points']} | {v['ece15']:.4f} | "
            f"{v['preprocess_ms_per_image']} |"
        )
    lines += [
        "",
        "Resize + crop of one 4000x3000 photo (already decoded), ms: "
        + ", ".join(f"{k} {v}" for k, v in report["resize_4000x3000_ms"].items())
        + ".",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
