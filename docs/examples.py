"""Regenerate docs/stylized-examples.jpg, the README's picture of what the served network makes.

    python docs/examples.py [--styles starry_night,great_wave,the_scream,udnie] [--height 256]
    python docs/examples.py --clip    # remake docs/examples/cat.mp4, the README's example video

Paints the free example photos in ``docs/examples/`` (CC0, see its SOURCES.md) with the committed
multi-style network (its sha256 checked at load, run in PyTorch fp32 on the CPU; the service runs the
same weights in ONNX Runtime), the longer side at 1.5 × ``--height``, and lays them out one row per
photo, one column per style, with the photo itself first.
Only these photos are used: the data set's photos are for research use and are never committed.

``--clip`` remakes the example clip instead: 2 s at 12 frames/s, 320×212 H.264, a slow zoom into the
CC0 cat photo (so the clip is CC0 too), for the README's video-job lines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from models.imaging import pil_to_tensor, resize_longest, tensor_to_pil  # noqa: E402
from models.styles import DEFAULT_WEIGHTS_DIR, LoadedNetwork, load_network  # noqa: E402
from models.transformer import stylize  # noqa: E402

EXAMPLES = ROOT / "docs" / "examples"
OUT = ROOT / "docs" / "stylized-examples.jpg"
CLIP = EXAMPLES / "cat.mp4"
PHOTOS = ("cat.jpg", "coffee.jpg")
LABEL_HEIGHT = 22


def painted(network: LoadedNetwork, photo: Image.Image, style: str) -> Image.Image:
    with torch.inference_mode():
        return tensor_to_pil(stylize(network.model, pil_to_tensor(photo), network.style_weights([style])))


def fit_height(image: Image.Image, height: int) -> Image.Image:
    return image.resize((round(image.width * height / image.height), height), Image.Resampling.LANCZOS)


def sheet(rows: list[list[Image.Image]], labels: list[str], cell_width: int, height: int) -> Image.Image:
    """Cells of one width (each image centre-cropped to it), a caption strip above each column."""
    out = Image.new("RGB", (cell_width * len(labels), LABEL_HEIGHT + height * len(rows)), "white")
    draw = ImageDraw.Draw(out)
    for col, label in enumerate(labels):
        draw.text((col * cell_width + 6, 5), label, fill="black")
    for r, row in enumerate(rows):
        for col, image in enumerate(row):
            left = (image.width - cell_width) // 2
            cell = image.crop((left, 0, left + cell_width, height))
            out.paste(cell, (col * cell_width, LABEL_HEIGHT + r * height))
    return out


def make_clip(frames: int = 24, fps: int = 12, size: tuple[int, int] = (320, 212)) -> None:
    """A slow zoom (full frame to 80%, drifting right and down) into the cat photo, as H.264."""
    photo = Image.open(EXAMPLES / "cat.jpg").convert("RGB")
    width, height = size
    with av.open(str(CLIP), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "26", "preset": "slow"}
        for i in range(frames):
            t = i / (frames - 1)
            crop_w = photo.width * (1 - 0.2 * t)
            crop_h = crop_w * height / width
            x0, y0 = (photo.width - crop_w) * 0.6 * t, (photo.height - crop_h) * 0.4 * t
            frame = photo.resize(size, Image.Resampling.LANCZOS, box=(x0, y0, x0 + crop_w, y0 + crop_h))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.asarray(frame), format="rgb24")))
        container.mux(stream.encode())
    print(f"{CLIP} ({CLIP.stat().st_size // 1024} KB)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--styles", default="starry_night,great_wave,the_scream,udnie")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--weights-dir", type=Path, default=DEFAULT_WEIGHTS_DIR)
    p.add_argument("--clip", action="store_true", help="remake docs/examples/cat.mp4 instead")
    args = p.parse_args()
    if args.clip:
        make_clip()
        return
    torch.set_num_threads(2)

    network = load_network(args.weights_dir)
    styles = args.styles.split(",")
    titles = {s.name: s.title for s in network.manifest.styles}
    rows = []
    for name in PHOTOS:
        photo = resize_longest(Image.open(EXAMPLES / name).convert("RGB"), args.height * 3 // 2)
        images = [photo, *(painted(network, photo, s) for s in styles)]
        rows.append([fit_height(im, args.height) for im in images])
    cell_width = min(im.width for row in rows for im in row)
    labels = ["photo (CC0)", *(titles[s] for s in styles)]
    sheet(rows, labels, cell_width, args.height).save(OUT, quality=88, optimize=True)
    print(f"{OUT} ({OUT.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
