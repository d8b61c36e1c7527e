"""The JSON payloads of queued jobs: what the API writes into a job and the worker reads back.

One definition both sides import, so the payload a route builds is the one the job accepts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from typing import Any

from models.gatys import GatysOptions
from models.video import OutputFormat


def _refuse_unknown(raw: dict[str, Any], options: type) -> None:
    """A payload key the options dataclass has no field for (another version's job) is an error."""
    unknown = set(raw) - {f.name for f in fields(options)}
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")


def options_from_dict(raw: dict[str, Any]) -> GatysOptions:
    """Rebuild options from the JSON payload; tuples arrive as lists, unknown keys are refused."""
    _refuse_unknown(raw, GatysOptions)
    return GatysOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def options_to_dict(options: GatysOptions) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(options).items()}


@dataclass(frozen=True)
class VideoJobOptions:
    """The JSON payload of a video job (what the API decided from the request and the probe)."""

    width: int
    height: int
    output: OutputFormat
    total_frames: int
    style: str | None = None  # a named style of the network
    style_image: bool = False  # or the painting stored under the job's style key
    fps: tuple[int, int] | None = None  # numerator, denominator
    smoothing: float = 0.5
    batch_frames: int = 4

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["fps"] = list(self.fps) if self.fps else None
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> VideoJobOptions:
        _refuse_unknown(raw, cls)
        fps = raw.get("fps")
        return cls(**{**raw, "fps": tuple(fps) if fps else None})

    @property
    def frame_rate(self) -> Fraction | None:
        return Fraction(*self.fps) if self.fps else None


@dataclass(frozen=True)
class ImageJobOptions:
    """The JSON payload of a large-image stylization job.

    The API resolves the style (built-in, blend or custom) to the network's style code, so the worker
    needs neither the manifest's names nor the custom-style store; ``network`` (the weights' version)
    makes sure the code is applied to the weights it was made for.
    """

    width: int
    height: int
    style: str  # the names, comma-separated, as the client sent them (for the status)
    style_weights: list[float]
    network: str
    code: list[float]
    strength: float = 1.0
    preserve_color: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def public(self) -> dict[str, Any]:
        """What the job's status shows: everything but the style code (hundreds of numbers)."""
        return {k: v for k, v in self.to_dict().items() if k != "code"}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ImageJobOptions:
        _refuse_unknown(raw, cls)
        return cls(**raw)
