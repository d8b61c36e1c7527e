"""HDR and wide-gamut pixels made into the SDR sRGB pixels the networks were trained on.

Phones record HDR by default (iPhones: HLG, BT.2020 primaries, 10-bit HEVC), and cameras save HEIF
stills in P3, BT.2020 or HDR, described by CICP codes (ITU-T H.273) rather than an ICC profile. Read
as if it were SDR sRGB, such a picture looks flat and washed out, and so does its stylized version.
Here the signal is decoded to display light (BT.2100: HLG's inverse OETF and OOTF, or PQ's EOTF; the
sRGB or BT.1886 curve for SDR), moved to BT.709/sRGB primaries, its highlights rolled off above the
SDR reference white (203 nits, BT.2408), and encoded with the sRGB curve.
"""

from __future__ import annotations

import av
import numpy as np

# ITU-T H.273 codes (what FFmpeg reports as color_trc / color_primaries, HEIF as nclx).
TRC_SRGB, TRC_PQ, TRC_HLG = 13, 16, 18
PRIMARIES_UNSPECIFIED, PRIMARIES_BT2020, PRIMARIES_P3 = 2, 9, 12

SDR_WHITE_NITS = 203.0  # BT.2408: HDR reference white, shown as SDR white
HLG_PEAK_NITS = 1000.0  # the nominal HLG display the OOTF is defined for (system gamma 1.2)
KNEE = 0.75  # relative to SDR white: below it light is kept as is, above it rolls off towards 1
# (PQ content above 1000 nits, rare outside mastering, clips)

BT2020_TO_BT709 = np.array(
    [[1.660491, -0.587641, -0.072850], [-0.124550, 1.132900, -0.008349], [-0.018151, -0.100579, 1.118730]],
    np.float32,
)
P3_TO_BT709 = np.array(  # Display P3 (D65) to sRGB, linear light
    [[1.224940, -0.224940, 0.0], [-0.042057, 1.042057, 0.0], [-0.019638, -0.078636, 1.098274]], np.float32
)
TO_BT709 = {PRIMARIES_BT2020: BT2020_TO_BT709, PRIMARIES_P3: P3_TO_BT709}
BT2020_LUMA = np.array([0.2627, 0.6780, 0.0593], np.float32)
HDR_TRANSFERS = (TRC_PQ, TRC_HLG)


def needs_conversion(trc: int, primaries: int) -> bool:
    """HDR (PQ or HLG), or P3 or BT.2020 primaries: what plain RGB decoding would show wrongly."""
    return trc in HDR_TRANSFERS or primaries in TO_BT709


def colour_name(trc: int, primaries: int) -> str | None:
    """What the pixels need, for a report: "hlg", "pq", "bt2020", "p3" or None."""
    if trc in HDR_TRANSFERS:
        return "hlg" if trc == TRC_HLG else "pq"
    return {PRIMARIES_BT2020: "bt2020", PRIMARIES_P3: "p3"}.get(primaries)


def hlg_display_light(signal: np.ndarray) -> np.ndarray:
    """HLG signal (0..1, BT.2020 RGB) to display light in nits on the nominal 1000-nit display."""
    a, b, c = 0.17883277, 0.28466892, 0.55991073
    low = signal <= 0.5
    scene = np.where(low, signal * signal / 3.0, (np.exp((np.maximum(signal, 0.5) - c) / a) + b) / 12.0)
    luma = np.tensordot(scene, BT2020_LUMA, axes=([-1], [0]))[..., None]
    return HLG_PEAK_NITS * np.power(np.maximum(luma, 1e-12), 0.2) * scene  # OOTF, system gamma 1.2


def pq_display_light(signal: np.ndarray) -> np.ndarray:
    """PQ signal (0..1) to display light in nits (SMPTE ST 2084)."""
    m1, m2 = 2610 / 16384, 2523 / 4096 * 128
    c1, c2, c3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    p = np.power(np.clip(signal, 0.0, 1.0), 1.0 / m2)
    return 10000.0 * np.power(np.maximum(p - c1, 0.0) / (c2 - c3 * p), 1.0 / m1)


def roll_off(relative: np.ndarray, peak_relative: float) -> np.ndarray:
    """Light relative to SDR white into 0..1: unchanged up to the knee, then a Reinhard shoulder that
    reaches 1 exactly at the content's peak, so highlights stay graded instead of clipping together.

    Applied to each pixel's brightest channel and the pixel scaled by the same factor, so hues stay.
    """
    brightest = relative.max(axis=-1, keepdims=True)
    over = np.maximum(brightest - KNEE, 0.0) / (1.0 - KNEE)
    top = max(peak_relative - KNEE, 1e-6) / (1.0 - KNEE)
    shoulder = over * (1.0 + over / (top * top)) / (1.0 + over)  # slope 1 at the knee, 1 at the peak
    mapped = np.where(brightest > KNEE, KNEE + (1.0 - KNEE) * np.minimum(shoulder, 1.0), brightest)
    return relative * (mapped / np.maximum(brightest, 1e-12))


def srgb_decode(signal: np.ndarray) -> np.ndarray:
    signal = np.clip(signal, 0.0, 1.0)
    return np.where(signal <= 0.04045, signal / 12.92, np.power((signal + 0.055) / 1.055, 2.4))


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1 / 2.4) - 0.055)


def signal_to_srgb(signal: np.ndarray, trc: int, primaries: int) -> np.ndarray:
    """H×W×3 float signal (0..1) coded as ``trc`` and ``primaries`` to H×W×3 uint8 sRGB."""
    signal = signal.astype(np.float32, copy=False)
    if trc == TRC_HLG:
        relative = hlg_display_light(signal) / SDR_WHITE_NITS
    elif trc == TRC_PQ:
        relative = pq_display_light(signal) / SDR_WHITE_NITS
    elif trc == TRC_SRGB:
        relative = srgb_decode(signal)
    else:  # BT.709 / BT.2020 SDR coding, shown on a BT.1886 display (gamma 2.4)
        relative = np.power(np.clip(signal, 0.0, 1.0), 2.4)
    if trc in HDR_TRANSFERS and primaries == PRIMARIES_UNSPECIFIED:
        primaries = PRIMARIES_BT2020  # BT.2100 defines HLG and PQ only with BT.2020 primaries
    matrix = TO_BT709.get(primaries)
    linear = np.maximum(relative @ matrix.T, 0.0) if matrix is not None else relative
    if trc in HDR_TRANSFERS:
        linear = roll_off(linear, HLG_PEAK_NITS / SDR_WHITE_NITS)  # PQ: graded for a 1000-nit display too
    return (srgb_encode(linear) * 255.0 + 0.5).astype(np.uint8)


def frame_to_srgb(frame: av.VideoFrame, width: int, height: int, interpolation: str) -> np.ndarray:
    """H×W×3 uint8 sRGB at the working size from an HDR or wide-gamut frame (16 bits kept until the end)."""
    rgb = frame.reformat(width=width, height=height, format="rgb48le", interpolation=interpolation)
    signal = rgb.to_ndarray().astype(np.float32) / 65535.0
    return signal_to_srgb(signal, frame.color_trc, frame.color_primaries)
