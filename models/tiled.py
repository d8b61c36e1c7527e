"""Stylize an image too large for one forward pass, tile by tile, with the whole-image result.

Instance norm makes every output pixel depend on statistics of the whole image: run the network on
tiles and each tile normalizes by its own mean and spread, which shows as seams and patches of
different colour. So the statistics come first: for each per-image norm, in network order, one pass
over the tiles runs the network up to that norm (the norms before it already fixed to the whole
image's statistics) and adds up its input's sums over the tiles' cores; those sums give the whole
image's mean and spread. With every norm fixed, the network is a stack of local operations, so a
last pass over the tiles, each with a margin wider than the network's receptive field, gives every
tile's core exactly what one forward of the whole image would give there. The residual blocks' norms
are measured from the encoder's output for the whole image, kept at quarter resolution, so their
passes run only the blocks. Measured on the served network at 1536×1024 (2 threads): 1.9× the time
of one whole-image forward, in the memory of a tile plus that quarter-resolution map.

Tiles start at multiples of the network's downsampling factor, so the strided convolutions sample
the same pixels in a tile as in the whole image; at the image's edges a tile's reflection padding is
the image's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from models.transformer import (
    DOWNSAMPLE,
    INSTANCE_NORM_EPS,
    MIN_SIDE,
    ConditionalAffine2d,
    ConditionalInstanceNorm2d,
    RobustInstanceNorm2d,
    TransformerNet,
    pad_to_multiple,
)

# At least the served networks' receptive field (~62 px from an output pixel: the 9×9 convs, two
# strided 3×3, ten 3×3 at quarter resolution, the decoder and its 9-wide despiking window), and a
# multiple of DOWNSAMPLE. tests/test_tiled.py checks tiles against the whole-image forward.
DEFAULT_MARGIN = 64
DEFAULT_TILE = 512

ProgressCallback = Callable[[int, int, Tensor | None], None]  # see stylize_tiled


@dataclass(frozen=True)
class Tile:
    """A core (the output it contributes) inside a window (what the network sees), in pixels."""

    top: int
    bottom: int
    left: int
    right: int
    window_top: int
    window_bottom: int
    window_left: int
    window_right: int

    def scaled_down(self, factor: int) -> Tile:
        """The same tile on a map ``factor`` times smaller (all its edges are multiples of it)."""
        return Tile(*(getattr(self, f.name) // factor for f in fields(self)))

    def window(self, image: Tensor) -> Tensor:
        return image[..., self.window_top : self.window_bottom, self.window_left : self.window_right]

    def core_of(self, features: Tensor) -> Tensor:
        """The core's part of a feature map computed on the window (at any downsampled resolution)."""
        scale = (self.window_bottom - self.window_top) // features.shape[-2]
        return features[
            ...,
            (self.top - self.window_top) // scale : (self.bottom - self.window_top) // scale,
            (self.left - self.window_left) // scale : (self.right - self.window_left) // scale,
        ]


def plan_tiles(height: int, width: int, tile: int, margin: int, align: int = DOWNSAMPLE) -> list[Tile]:
    """Cores of at most ``tile`` px covering the image, windows ``margin`` px wider (clipped to it).

    ``height``, ``width``, ``tile`` and ``margin`` must be multiples of ``align``.
    """
    for name, value in (("height", height), ("width", width), ("tile", tile)):
        if value % align or value <= 0:
            raise ValueError(f"{name} must be a positive multiple of {align}, got {value}")
    if margin % align or margin < 0:
        raise ValueError(f"margin must be a multiple of {align} (0 or more), got {margin}")
    tiles = []
    for top in range(0, height, tile):
        bottom = min(top + tile, height)
        for left in range(0, width, tile):
            right = min(left + tile, width)
            tiles.append(
                Tile(
                    top,
                    bottom,
                    left,
                    right,
                    max(0, top - margin),
                    min(height, bottom + margin),
                    max(0, left - margin),
                    min(width, right + margin),
                )
            )
    return tiles


def per_image_norms(model: TransformerNet) -> list[ConditionalInstanceNorm2d]:
    """The norms whose statistics come from the image, in the order the forward pass meets them."""
    norms = []
    for module in model.modules():
        if isinstance(module, RobustInstanceNorm2d):
            raise ValueError("tiled stylization needs plain instance norms (a robust spread is not a sum)")
        if isinstance(module, ConditionalInstanceNorm2d) and not isinstance(module, ConditionalAffine2d):
            norms.append(module)
    return norms


class _Reached(Exception):
    """Raised by the hook on the norm being measured: the rest of the forward is not needed."""


def _input_of(norm: ConditionalInstanceNorm2d, forward: Callable[[Tensor], object], window: Tensor) -> Tensor:
    """What ``norm`` receives when ``forward`` runs on ``window``; the forward stops there."""
    seen: list[Tensor] = []

    def hook(_module: torch.nn.Module, args: tuple[Tensor, ...]) -> None:
        seen.append(args[0])
        raise _Reached

    handle = norm.register_forward_pre_hook(hook)
    try:
        forward(window)
    except _Reached:
        return seen[0]
    finally:
        handle.remove()
    raise RuntimeError("the forward pass never reached the norm being measured")  # pragma: no cover


def _whole_image_statistics(
    forward: Callable[[Tensor], object],
    image: Tensor,
    tiles: list[Tile],
    norm: ConditionalInstanceNorm2d,
    on_tile: Callable[[], None],
) -> tuple[Tensor, Tensor]:
    """The mean and spread of ``norm``'s input over the whole image (sums over the tiles' cores, in
    float64), ``forward`` run on each window."""
    count, total, squares = 0, torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for tile in tiles:
        core = tile.core_of(_input_of(norm, forward, tile.window(image))).double()
        count += core.shape[-2] * core.shape[-1]
        total = total + core.sum(dim=(-2, -1))
        squares = squares + core.square().sum(dim=(-2, -1))
        on_tile()
    mean = total / count
    variance = (squares / count - mean.square()).clamp_min(0.0)
    spread = (variance + INSTANCE_NORM_EPS).sqrt()
    return mean.float()[:, :, None, None], spread.float()[:, :, None, None]


def _encoded(
    model: TransformerNet, image: Tensor, code: Tensor, tiles: list[Tile], on_tile: Callable[[], None]
) -> Tensor:
    """The encoder's output for the whole image (quarter resolution), assembled from the tiles' cores.

    Measured on the served network, each residual norm's pass spent most of its time re-running the
    full-resolution encoder; from this map they run only the residual blocks (about half the job's
    time saved, for C×H×W/16 floats of memory: 290 MB at 12 megapixels)."""
    assembled: Tensor | None = None
    for t in tiles:
        h = t.window(image)
        for layer in model.encoder:
            h = layer(h, code)
        if assembled is None:
            height, width = (side // DOWNSAMPLE for side in image.shape[-2:])
            assembled = h.new_empty(1, h.shape[1], height, width)
        q = t.scaled_down(DOWNSAMPLE)
        assembled[..., q.top : q.bottom, q.left : q.right] = t.core_of(h)
        on_tile()
    assert assembled is not None
    return assembled


def _residual_blocks(model: TransformerNet, h: Tensor, code: Tensor) -> Tensor:
    for block in model.residuals:
        h = block(h, code)
    return h


def _residual_norms(model: TransformerNet) -> set[int]:
    return {id(m) for m in model.residuals.modules()}


def tile_passes(model: TransformerNet, height: int, width: int, tile: int = DEFAULT_TILE) -> int:
    """How many tile forwards (most of them partial) :func:`stylize_tiled` runs for this size."""
    padded_h, padded_w = (max(MIN_SIDE, -(-side // DOWNSAMPLE) * DOWNSAMPLE) for side in (height, width))
    tiles = -(-padded_h // tile) * -(-padded_w // tile)
    if tiles == 1:
        return 1
    norms = per_image_norms(model)
    in_residuals = _residual_norms(model)
    encoder_pass = any(id(n) in in_residuals for n in norms)
    return tiles * (len(norms) + 1 + encoder_pass)


def stylize_tiled(
    model: TransformerNet,
    image: Tensor,
    code: Tensor,
    tile: int = DEFAULT_TILE,
    margin: int = DEFAULT_MARGIN,
    on_progress: ProgressCallback | None = None,
) -> Tensor:
    """``model.forward_code(image, code)`` clamped to [0, 1], for a 1×3×H×W image of any size.

    ``on_progress(done, total, partial)`` follows every tile forward; ``partial`` is the result so far
    (the photo where no tile has been painted yet) during the last pass, None before it.
    Needs the model to itself while it runs (it sets the norms' statistics, and always clears them).
    """
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"expected one image, 1×3×H×W, got {tuple(image.shape)}")
    padded, height, width = pad_to_multiple(image)
    tiles = plan_tiles(padded.shape[-2], padded.shape[-1], tile, margin)
    total = tile_passes(model, height, width, tile)
    done = 0

    def tile_done(partial: Tensor | None) -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done, total, None if partial is None else partial[..., :height, :width])

    with torch.inference_mode():
        if len(tiles) == 1:
            out = model.forward_code(padded, code).clamp(0.0, 1.0)
            tile_done(None)
            return out[..., :height, :width]
        norms = per_image_norms(model)
        in_residuals = _residual_norms(model)
        code = code.float()
        encoded: Tensor | None = None
        quarter = [t.scaled_down(DOWNSAMPLE) for t in tiles]
        try:
            for norm in norms:  # in forward order: the encoder's norms come before the residual blocks'
                if id(norm) in in_residuals:
                    if encoded is None:
                        encoded = _encoded(model, padded, code, tiles, lambda: tile_done(None))
                    norm.image_statistics = _whole_image_statistics(
                        lambda h: _residual_blocks(model, h, code),
                        encoded,
                        quarter,
                        norm,
                        lambda: tile_done(None),
                    )
                else:
                    norm.image_statistics = _whole_image_statistics(
                        lambda x: model.forward_code(x, code), padded, tiles, norm, lambda: tile_done(None)
                    )
            del encoded
            out = padded.clone()
            for t in tiles:
                painted = model.forward_code(t.window(padded), code).clamp(0.0, 1.0)
                out[..., t.top : t.bottom, t.left : t.right] = t.core_of(painted)
                tile_done(out)
        finally:
            for norm in norms:
                norm.image_statistics = None
    return out[..., :height, :width]
