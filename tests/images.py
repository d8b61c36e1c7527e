"""Deterministic test images made in code (no files needed), in the formats clients send."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image


def photo_like(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    """Smooth gradients plus a few shapes and mild noise: something with content and edges."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 0.5 + 0.5 * np.sin(x / width * 3.0)
    g = y / max(height - 1, 1)
    b = 0.5 + 0.5 * np.cos((x + y) / (width + height) * 4.0)
    img = np.stack([r, g, b], axis=-1)
    img[height // 4 : height // 2, width // 5 : width // 2] = (0.9, 0.2, 0.1)
    img += rng.normal(0, 0.03, img.shape)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), "RGB")


def stripes(width: int = 64, height: int = 64, period: int = 8) -> Image.Image:
    """A strongly textured 'painting': diagonal blue/yellow stripes."""
    y, x = np.mgrid[0:height, 0:width]
    band = ((x + y) // period) % 2
    img = np.where(band[..., None] == 1, [30, 60, 200], [240, 200, 40]).astype(np.uint8)
    return Image.fromarray(img, "RGB")


def encode(img: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


# D50-adapted XYZ of sRGB's primaries and white: what an RGB matrix/TRC ICC profile stores.
SRGB_COLORANTS = {"r": (0.4361, 0.2225, 0.0139), "g": (0.3851, 0.7169, 0.0971), "b": (0.1431, 0.0606, 0.7141)}
D50 = (0.9642, 1.0, 0.8249)


def icc_profile(
    colorants: dict[str, tuple[float, float, float]], gamma: float = 2.2, name: str = "Test RGB"
) -> bytes:
    """A minimal ICC v2 display profile (matrix/TRC): enough for littleCMS, built in code, no files.

    With ``SRGB_COLORANTS`` whose red and green are swapped, pure red pixels mean sRGB's green: a
    decoder that honours the profile and one that ignores it give unmistakably different answers.
    """

    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    def xyz(v: tuple[float, float, float]) -> bytes:
        return b"XYZ " + bytes(4) + b"".join(s15(c) for c in v)

    ascii_name = name.encode("ascii") + b"\0"
    unicode_and_script = bytes(8) + bytes(3) + bytes(67)  # empty Unicode and ScriptCode names
    desc = b"desc" + bytes(4) + struct.pack(">I", len(ascii_name)) + ascii_name + unicode_and_script
    curve = b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)
    tags = [
        (b"desc", desc), (b"wtpt", xyz(D50)), (b"cprt", b"text" + bytes(4) + b"public domain\0"),
        (b"rXYZ", xyz(colorants["r"])), (b"gXYZ", xyz(colorants["g"])), (b"bXYZ", xyz(colorants["b"])),
        (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve),
    ]  # fmt: skip
    table_end = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        data += bytes(-len(data) % 4)
        table += sig + struct.pack(">II", table_end + len(body), len(data))
        body += data
    size = table_end + len(body)
    header = (
        struct.pack(">I", size) + b"lcms" + struct.pack(">I", 0x02100000) + b"mntr" + b"RGB " + b"XYZ "
        + bytes(12) + b"acsp" + bytes(24) + struct.pack(">I", 0) + xyz(D50)[8:] + bytes(4 + 16 + 28)
    )  # fmt: skip
    return header + struct.pack(">I", len(tags)) + table + body
