"""Turning untrusted multipart uploads into clean sRGB images, or into a precise 4xx problem.

Order matters: size is checked while reading, pixel count from the header *before* decoding (bombs),
and only then is the image decoded, EXIF-rotated, converted from its embedded colour profile to
sRGB (or from its CICP colour codes, for HEIF) and normalised to 8-bit RGB. Phones send HEIC
(iPhone) and Display P3 or Adobe RGB photos: read as if they were sRGB they come back dull, so the
profile is honoured the way browsers do.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable

import numpy as np
from fastapi import Request, UploadFile
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener

from app.problems import Problem
from models import hdr

register_heif_opener()  # HEIC/HEIF (iPhone photos) through Image.open; AVIF is Pillow's own

ACCEPTED_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "AVIF", "HEIF", "GIF", "BMP", "TIFF")
ACCEPTED_DESCRIPTION = "PNG, JPEG, WebP, AVIF, HEIC, GIF, BMP or TIFF"
READ_CHUNK = 1024 * 1024
# Decoded on the event loop itself (see read_image): 128x128 decodes in well under a millisecond.
INLINE_DECODE_PIXELS = 128 * 128
# Leading bytes of the accepted formats: a file that starts like one but will not open is corrupt
# (422), anything else is simply not an image we take (415).
MAGIC_PREFIXES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")
# ISO-BMFF images start with an 'ftyp' box naming one of these brands (HEIC, HEIF, AVIF).
BMFF_IMAGE_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis")
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
# The image modes a profile of each colour space can convert (alpha is split off first).
PROFILE_MODES = {"RGB": ("RGB",), "CMYK": ("CMYK",), "GRAY": ("L",)}


def _looks_like_accepted_image(data: bytes) -> bool:
    if data[4:8] == b"ftyp" and data[8:12] in BMFF_IMAGE_BRANDS:
        return True
    return data.startswith(MAGIC_PREFIXES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _is_srgb(profile: ImageCms.ImageCmsProfile) -> bool:
    """The common sRGB profiles (cameras and phones embed them): converting would change nothing."""
    name = (profile.profile.profile_description or "").strip().lower()
    return name.startswith("srgb") and "linear" not in name


def _to_srgb(img: Image.Image, icc: bytes | None) -> Image.Image:
    """Convert pixels described by an embedded ICC profile to sRGB, as a colour-managed browser shows them.

    No profile means sRGB already. A profile that cannot be parsed, or that does not fit the pixels
    (an RGB profile on a greyscale image), is ignored as browsers ignore it: the upload is still usable.
    """
    if not icc:
        return img
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (OSError, ImageCms.PyCMSError):
        return img
    if _is_srgb(source):
        return img
    alpha = img.getchannel("A") if img.mode in ("RGBA", "LA") else None
    colour = img.convert(img.mode[:-1]) if alpha is not None else img
    if colour.mode not in PROFILE_MODES.get(source.profile.xcolor_space.strip(), ()):
        return img
    try:
        converted = ImageCms.profileToProfile(
            colour, source, SRGB, renderingIntent=ImageCms.Intent.PERCEPTUAL, outputMode="RGB"
        )
    except ImageCms.PyCMSError:
        return img
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


def _cicp_to_srgb(img: Image.Image, cicp: dict | None) -> Image.Image:
    """HEIF stills say their colours with CICP codes instead of an ICC profile (cameras' P3, BT.2020
    and HDR HEIF): convert those to sRGB like HDR video (models/hdr.py). sRGB/BT.709 ones pass as is."""
    if not cicp:
        return img
    trc, primaries = cicp.get("transfer_characteristics", 2), cicp.get("color_primaries", 2)
    if not hdr.needs_conversion(trc, primaries):
        return img
    signal = np.asarray(img, dtype=np.float32) / 255.0
    return Image.fromarray(hdr.signal_to_srgb(signal, trc, primaries), "RGB")


async def read_upload(upload: UploadFile, field: str, max_bytes: int) -> bytes:
    """Read one uploaded file in chunks, stopping as soon as it exceeds ``max_bytes``."""
    chunks: list[bytes] = []
    total = 0
    while chunk := await upload.read(READ_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise Problem(
                413,
                "payload-too-large",
                f"'{field}' is larger than the limit of {max_bytes} bytes.",
                field=field,
            )
        chunks.append(chunk)
    if total == 0:
        raise Problem(
            422,
            "invalid-image",
            f"'{field}' is empty (0 bytes); send a {ACCEPTED_DESCRIPTION} image.",
            field=field,
        )
    return b"".join(chunks)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Normalise any Pillow mode to 8-bit RGB; transparency is composited on white, 16-bit is rescaled."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def open_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Parse only the header: refuses non-images, unsupported formats and bombs before any decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        if isinstance(exc, UnidentifiedImageError) and _looks_like_accepted_image(data):
            raise Problem(
                422,
                "invalid-image",
                f"'{field}' looks like an image but is corrupt or truncated.",
                field=field,
            ) from None
        if isinstance(exc, UnidentifiedImageError):
            raise Problem(
                415,
                "unsupported-media-type",
                f"'{field}' is not a recognised image; accepted formats: {ACCEPTED_DESCRIPTION}.",
                field=field,
            ) from None
        raise Problem(413, "image-too-large", f"'{field}' has too many pixels.", field=field) from None
    except Exception:
        raise Problem(
            422, "invalid-image", f"'{field}' could not be read as an image.", field=field
        ) from None
    if img.format not in ACCEPTED_FORMATS:
        raise Problem(
            415,
            "unsupported-media-type",
            f"'{field}' is {img.format}; accepted formats: {ACCEPTED_DESCRIPTION}.",
            field=field,
        )
    width, height = img.size
    if width < 1 or height < 1:
        raise Problem(422, "invalid-image", f"'{field}' has no pixels.", field=field)
    if width * height > max_pixels:
        raise Problem(
            413,
            "image-too-large",
            f"'{field}' is {width}x{height} = {width * height} pixels; the limit is {max_pixels}.",
            field=field,
        )
    return img


def finish_decode(img: Image.Image, field: str) -> Image.Image:
    """Decode the pixels of an :func:`open_image` result into an upright 8-bit RGB image."""
    try:
        img.load()
        icc = img.info.get("icc_profile")
        cicp = None if icc else img.info.get("nclx_profile")
        img = ImageOps.exif_transpose(img)
        return _cicp_to_srgb(_to_rgb(_to_srgb(img, icc)), cicp)
    except Exception:
        raise Problem(
            422, "invalid-image", f"'{field}' is truncated or corrupt and could not be decoded.", field=field
        ) from None


def decode_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Decode bytes into an upright RGB image, refusing non-images, corrupt files and bombs."""
    return finish_decode(open_image(data, field, max_pixels), field)


async def reject_unknown_fields(request: Request, accepted: Iterable[str]) -> None:
    """FastAPI silently ignores extra form fields; a typo like ``topk`` must fail loudly instead.

    The form is already parsed for the endpoint (Starlette caches it), so this costs no extra read.
    """
    accepted = sorted(accepted)
    form = await request.form()
    unknown = sorted(set(form.keys()) - set(accepted))
    if unknown:
        raise Problem(
            422,
            "validation-error",
            f"Unknown field(s): {', '.join(unknown)}. Accepted: {', '.join(accepted)}.",
            field=unknown[0],
            errors=[{"field": name, "message": "unknown field"} for name in unknown],
        )


async def read_image(upload: UploadFile, field: str, max_bytes: int, max_pixels: int) -> Image.Image:
    """Read and decode one upload without stalling the event loop.

    The header is parsed inline (it is cheap and bounds the work). Small images are decoded inline
    too: that takes tens of microseconds, less than a hop to a worker thread and back costs on a busy
    box. Anything larger is decoded in a worker thread so the loop stays free.
    """
    from starlette.concurrency import run_in_threadpool

    data = await read_upload(upload, field, max_bytes)
    img = open_image(data, field, max_pixels)
    if img.width * img.height <= INLINE_DECODE_PIXELS:
        return finish_decode(img, field)
    return await run_in_threadpool(finish_decode, img, field)
