"""Decoding untrusted uploads: every input mode becomes upright 8-bit RGB, or a precise problem."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.problems import Problem
from app.uploads import decode_image
from tests.images import encode, photo_like

LIMIT = 10_000_000


def test_grayscale_becomes_rgb_with_equal_channels():
    gray = photo_like().convert("L")
    out = decode_image(encode(gray), "file", LIMIT)
    arr = np.asarray(out)
    assert out.mode == "RGB" and out.size == gray.size
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], np.asarray(gray))


def test_rgba_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    out = decode_image(encode(rgba), "file", LIMIT)
    assert out.getpixel((5, 5)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (0, 0, 255)


def test_palette_with_transparency():
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 255, 0] + [255, 0, 0] * 255)
    pal.putpixel((1, 1), 1)
    out = decode_image(encode(pal, transparency=0), "file", LIMIT)
    assert out.getpixel((0, 0)) == (255, 255, 255)  # index 0 is transparent
    assert out.getpixel((1, 1)) == (255, 0, 0)


def test_16_bit_grayscale_is_rescaled_not_clipped():
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    img16 = Image.fromarray(arr)
    assert img16.mode == "I;16"
    out = decode_image(encode(img16), "file", LIMIT)
    values = [out.getpixel((x, 0))[0] for x in range(3)]
    assert values[0] == 0 and 126 <= values[1] <= 129 and values[2] == 255


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    img.paste((10, 10, 200), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = decode_image(encode(img, "JPEG", exif=exif, quality=95), "file", LIMIT)
    assert out.size == (20, 40)
    top = out.getpixel((10, 5))
    assert top[2] > 150 and top[0] < 80  # the blue half is on top after rotation


@pytest.mark.parametrize(
    ("data", "status", "slug"),
    [
        (b"GIF89a but not really", 422, "invalid-image"),  # claims GIF, is not one: corrupt
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 422, "invalid-image"),
        (b"%PDF-1.4 this is a pdf", 415, "unsupported-media-type"),
        (encode(photo_like())[:120], 422, "invalid-image"),
    ],
)
def test_bad_bytes_give_problems(data, status, slug):
    with pytest.raises(Problem) as err:
        decode_image(data, "file", LIMIT)
    assert err.value.status == status and err.value.slug == slug and err.value.field == "file"


def test_pixel_bomb_is_refused_before_decoding():
    bomb = Image.new("1", (9000, 9000))  # 81 MP, a few kB as PNG
    data = encode(bomb)
    assert len(data) < 100_000
    with pytest.raises(Problem) as err:
        decode_image(data, "file", 40_000_000)
    assert err.value.status == 413 and "pixels" in err.value.detail


def test_unsupported_but_recognised_format_is_415():
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="ICO")
    with pytest.raises(Problem) as err:
        decode_image(buf.getvalue(), "file", LIMIT)
    assert err.value.status == 415 and "ICO" in err.value.detail
