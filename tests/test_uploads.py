"""Decoding untrusted uploads: every input mode becomes upright 8-bit RGB, or a precise problem."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from app.problems import Problem
from app.uploads import decode_image
from tests.images import SRGB_COLORANTS, encode, icc_profile, photo_like

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


# --- colour profiles and phone formats ---------------------------------------------------------------

SWAPPED = dict(SRGB_COLORANTS, r=SRGB_COLORANTS["g"], g=SRGB_COLORANTS["r"])  # its red is sRGB's green


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF", "AVIF", "HEIF"])
def test_an_embedded_colour_profile_is_converted_to_srgb(fmt):
    red = Image.new("RGB", (16, 16), (255, 0, 0))
    out = decode_image(encode(red, fmt, icc_profile=icc_profile(SWAPPED)), "file", LIMIT)
    r, g, b = out.getpixel((8, 8))
    assert g > 240 and r < 15 and b < 15, (fmt, out.getpixel((8, 8)))


def test_the_profile_s_tone_curve_is_applied_too():
    linear = icc_profile(SRGB_COLORANTS, gamma=1.0, name="Linear test")
    grey = Image.new("RGB", (4, 4), (50, 50, 50))
    out = decode_image(encode(grey, icc_profile=linear), "file", LIMIT)
    assert 120 <= out.getpixel((1, 1))[0] <= 130  # linear 50/255 is sRGB ~124


def test_an_srgb_profile_changes_nothing():
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    photo = photo_like()
    out = decode_image(encode(photo, icc_profile=srgb), "file", LIMIT)
    assert np.array_equal(np.asarray(out), np.asarray(photo))


@pytest.mark.parametrize(
    ("img", "icc"),
    [
        (photo_like(), b"not a colour profile at all"),  # unreadable: ignored, as browsers do
        (photo_like().convert("L"), icc_profile(SWAPPED)),  # an RGB profile on grey pixels: ignored
    ],
)
def test_unusable_profiles_are_ignored_not_refused(img, icc):
    out = decode_image(encode(img, icc_profile=icc), "file", LIMIT)
    assert np.array_equal(np.asarray(out), np.asarray(img.convert("RGB")))


def test_transparency_survives_the_profile_conversion():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    out = decode_image(encode(rgba, icc_profile=icc_profile(SWAPPED)), "file", LIMIT)
    assert out.getpixel((5, 5)) == (255, 255, 255)  # transparent: composited on white
    assert out.getpixel((0, 0))[1] > 240 and out.getpixel((0, 0))[0] < 15


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_phone_formats_decode_and_truncated_ones_are_corrupt_not_unknown(fmt):
    photo = photo_like(64, 48)
    data = encode(photo, fmt, quality=90)
    out = decode_image(data, "file", LIMIT)
    assert out.size == photo.size
    assert np.abs(np.asarray(out, dtype=float) - np.asarray(photo, dtype=float)).mean() < 12
    with pytest.raises(Problem) as err:
        decode_image(data[: len(data) // 2], "file", LIMIT)
    assert err.value.status == 422 and err.value.slug == "invalid-image"


def test_the_refusal_lists_the_phone_formats():
    with pytest.raises(Problem) as err:
        decode_image(b"%PDF-1.4 this is a pdf", "file", LIMIT)
    assert "HEIC" in err.value.detail and "AVIF" in err.value.detail


def _heif_with_cicp(rgb: tuple[int, int, int], primaries: int, transfer: int) -> bytes:
    img = Image.new("RGB", (16, 16), rgb)
    img.info["nclx_profile"] = {
        "color_primaries": primaries, "transfer_characteristics": transfer,
        "matrix_coefficients": 6, "full_range_flag": 1,
    }  # fmt: skip
    return encode(img, "HEIF", quality=100)


def test_a_heif_in_p3_colours_comes_back_in_srgb():
    """Cameras' HEIF carry CICP codes (here Display P3) instead of an ICC profile."""
    p3_green = decode_image(_heif_with_cicp((0, 255, 0), 12, 13), "file", LIMIT).getpixel((8, 8))
    srgb_green = decode_image(_heif_with_cicp((0, 255, 0), 1, 13), "file", LIMIT).getpixel((8, 8))
    assert srgb_green[1] > 240 and srgb_green[0] < 20  # sRGB codes: as is
    assert p3_green[1] > 240 and p3_green[0] < 5 and p3_green[2] < 5  # P3 green is beyond sRGB: clipped
    p3_grey = decode_image(_heif_with_cicp((128, 128, 128), 12, 13), "file", LIMIT).getpixel((8, 8))
    assert max(p3_grey) - min(p3_grey) <= 3  # the same white point: greys stay grey
    p3_red = decode_image(_heif_with_cicp((180, 60, 60), 12, 13), "file", LIMIT).getpixel((8, 8))
    plain = decode_image(_heif_with_cicp((180, 60, 60), 1, 13), "file", LIMIT).getpixel((8, 8))
    assert p3_red[0] > plain[0] + 10  # the same numbers mean a more saturated red in P3


def test_an_hdr_heif_is_tone_mapped():
    """A camera's HDR HEIF (PQ, BT.2020): its grey of 50 nits shows as sRGB grey at 50/203 of white."""
    m1, m2, c1, c2, c3 = 2610 / 16384, 2523 / 32, 3424 / 4096, 2413 / 128, 2392 / 128
    y = (50 / 10000) ** m1
    code = round(((c1 + c2 * y) / (1 + c3 * y)) ** m2 * 255)  # ST 2084 inverse EOTF: about 0.43
    linear = 50 / 203  # BT.2408: 203 nits is SDR white
    expected = round((1.055 * linear ** (1 / 2.4) - 0.055) * 255)
    out = decode_image(_heif_with_cicp((code, code, code), 9, 16), "file", LIMIT).getpixel((8, 8))
    assert all(abs(v - expected) <= 4 for v in out), (out, expected, code)


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_phone_format_bombs_are_refused_from_the_header(fmt):
    """Too many pixels for the limit: 413 from the header, before libheif or libavif decodes anything."""
    data = encode(Image.new("RGB", (2048, 2048), (10, 20, 30)), fmt, quality=20)
    with pytest.raises(Problem) as err:
        decode_image(data, "file", 1_000_000)
    assert err.value.status == 413 and err.value.slug == "image-too-large"
