"""HDR and wide-gamut video frames made into the SDR sRGB frames the style networks were trained on.

Phones record HDR by default (iPhones: HLG, BT.2020 primaries, 10-bit HEVC). Read as if it were SDR
BT.709, such a frame looks flat and washed out, and so does its stylized version. Here the signal is
decoded to display light (BT.2100: HLG's inverse OETF and OOTF, or PQ's EOTF), moved from BT.2020 to
BT.709/sRGB primaries, its highlights rolled off above the SDR reference white (203 nits, BT.2408),
and encoded with the sRGB curve. BT.2020 SDR (BT.1886 display) only needs the primaries.
"""

from __future__ import annotations

import av
import numpy as np

# ITU-T H.273 codes (what FFmpeg reports as color_trc / color_primaries).
TRC_PQ, TRC_HLG = 16, 18
TRC_BT2020_10, TRC_BT2020_12 = 14, 15
PRIMARIES_BT2020 = 9

SDR_WHITE_NITS = 203.0  # BT.2408: HDR reference white, shown as SDR white
HLG_PEAK_NITS = 1000.0  # the nominal HLG display the OOTF is defined for (system gamma 1.2)
KNEE = 0.75  # relative to SDR white: below it light is kept as is, above it rolls off towards 1
# (PQ content above 1000 nits, rare outside mastering, clips)

BT2020_TO_BT709 = np.array(
    [[1.660491, -0.587641, -0.072850], [-0.124550, 1.132900, -0.008349], [-0.018151, -0.100579, 1.118730]],
    np.float32,
)
BT2020_LUMA = np.array([0.2627, 0.6780, 0.0593], np.float32)


def needs_conversion(frame: av.VideoFrame) -> bool:
    """HDR (PQ or HLG) or BT.2020 primaries: frames that plain RGB conversion would show wrongly."""
    return frame.color_trc in (TRC_PQ, TRC_HLG) or frame.color_primaries == PRIMARIES_BT2020


def transfer_name(frame: av.VideoFrame) -> str | None:
    """What the frame needs, for the job's report: "hlg", "pq", "bt2020" or None."""
    if frame.color_trc == TRC_HLG:
        return "hlg"
    if frame.color_trc == TRC_PQ:
        return "pq"
    return "bt2020" if frame.color_primaries == PRIMARIES_BT2020 else None


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


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1 / 2.4) - 0.055)


def to_srgb(frame: av.VideoFrame, width: int, height: int, interpolation: str) -> np.ndarray:
    """H×W×3 uint8 sRGB at the working size from an HDR or BT.2020 frame (16 bits kept until the end)."""
    rgb = frame.reformat(width=width, height=height, format="rgb48le", interpolation=interpolation)
    signal = rgb.to_ndarray().astype(np.float32) / 65535.0
    if frame.color_trc == TRC_HLG:
        relative = hlg_display_light(signal) / SDR_WHITE_NITS
    elif frame.color_trc == TRC_PQ:
        relative = pq_display_light(signal) / SDR_WHITE_NITS
    else:  # BT.2020 SDR: the BT.1886 display (gamma 2.4) of BT.709-like coding
        relative = np.power(np.clip(signal, 0.0, 1.0), 2.4)
    linear = np.maximum(relative @ BT2020_TO_BT709.T, 0.0) if _bt2020(frame) else relative
    if frame.color_trc in (TRC_PQ, TRC_HLG):
        linear = roll_off(linear, HLG_PEAK_NITS / SDR_WHITE_NITS)  # PQ: graded for a 1000-nit display too
    return (srgb_encode(linear) * 255.0 + 0.5).astype(np.uint8)


def _bt2020(frame: av.VideoFrame) -> bool:
    # HDR without primaries tagged is BT.2020 in practice (BT.2100 defines HLG and PQ only for it)
    return frame.color_primaries in (PRIMARIES_BT2020, 2)
