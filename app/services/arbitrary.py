"""Any painting as a style behind POST /stylize: the arbitrary-style model, its cache, one model thread.

A request brings a painting (``style_image``) instead of a style name. The painting's 100-number style
vector is cached by the sha256 of its uploaded bytes (bounded LRU), so a painting sent again skips
its decoding and the style predictor. Resizing and encoding run in worker threads; the networks run
in one dedicated thread behind a :class:`MicroBatcher` (batch size 1: the graph's normalisation is
written for one image), so the event loop never waits on a model.

``strength`` follows Magenta: the painting's style vector is interpolated with the photo's own style
vector, so lower strengths keep the photo's palette and shapes and still look painted (a pixel
cross-fade, which the named styles use, looks like a double exposure with this model).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from starlette.concurrency import run_in_threadpool

from app.batching import BatchStats, MicroBatcher
from app.services.runtime import elapsed_ms
from models.arbitrary import ORIGIN, STYLE_DIM, ArbitraryStyleModel, blend_vectors, center_square
from models.imaging import MEDIA_TYPES, encode_image, preserve_color, resize_longest


class StyleVectorCache:
    """Bounded LRU of style vectors by the painting's sha256; touched only from the event loop."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: str) -> np.ndarray | None:
        vector = self._entries.get(digest)
        if vector is None:
            self.misses += 1
            return None
        self._entries.move_to_end(digest)
        self.hits += 1
        return vector

    def put(self, digest: str, vector: np.ndarray) -> None:
        if self.max_entries <= 0:
            return
        self._entries[digest] = vector
        self._entries.move_to_end(digest)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


@dataclass(frozen=True)
class ArbitraryJob:
    """One request's model work: a photo and either a cached style vector or the painting's square."""

    content: np.ndarray  # H×W×3 float32 in [0, 1]
    vector: np.ndarray | None
    painting: np.ndarray | None  # 1×256×256×3 predictor input, when the vector is not cached
    own_square: np.ndarray | None  # the photo's predictor input, when strength < 1
    strength: float
    submitted: float


@dataclass(frozen=True)
class ArbitraryOutput:
    pixels: np.ndarray
    vector: np.ndarray  # the painting's own vector (what the cache keeps), before any blending
    predict_ms: float
    infer_ms: float
    queue_ms: float


@dataclass(frozen=True)
class ArbitraryResult:
    body: bytes
    media_type: str
    width: int
    height: int
    timings_ms: dict[str, float]
    cache_hit: bool


class ArbitraryStylizer:
    """The loaded model, its style-vector cache and the single thread that runs it."""

    def __init__(self, model: ArbitraryStyleModel, *, cache_size: int) -> None:
        self.model = model
        self.cache = StyleVectorCache(cache_size)
        self.batcher: MicroBatcher[ArbitraryJob, ArbitraryOutput] = MicroBatcher(
            self._run_batch, max_batch=1, max_wait_s=0.0, name="arbitrary"
        )

    @classmethod
    def load(
        cls, source: Path | None = None, *, threads: int = 0, cache_size: int = 1024
    ) -> ArbitraryStylizer:
        """Verify and load the model files (see :meth:`ArbitraryStyleModel.load`) and warm it up."""
        stylizer = cls(ArbitraryStyleModel.load(source, threads=threads), cache_size=cache_size)
        stylizer.model.stylize(np.zeros((64, 64, 3), np.float32), np.zeros((1, 1, 1, STYLE_DIM), np.float32))
        return stylizer

    @property
    def model_id(self) -> str:
        return self.model.model_id

    @property
    def stats(self) -> BatchStats:
        return self.batcher.stats

    def ready(self) -> dict[str, Any]:
        return {
            "ok": True,
            "model": self.model_id,
            "origin": ORIGIN,
            "sha256": self.model.digests,
            "predictor_fused": self.model.predictor_fused,
            "style_cache": {
                "entries": len(self.cache),
                "max_entries": self.cache.max_entries,
                "hits": self.cache.hits,
                "misses": self.cache.misses,
            },
        }

    def _run_batch(self, key: object, items: Sequence[ArbitraryJob]) -> list[ArbitraryOutput]:
        """Runs in the model thread (always one item): style vector if needed, blending, transform."""
        return [self._run_one(item) for item in items]

    def _run_one(self, job: ArbitraryJob) -> ArbitraryOutput:
        start = time.perf_counter()
        queue_ms = round((start - job.submitted) * 1000, 2)
        vector = job.vector
        if vector is None:
            assert job.painting is not None
            vector = self.model.style_vector(job.painting)
        applied = vector
        if job.own_square is not None:
            applied = blend_vectors(vector, self.model.style_vector(job.own_square), job.strength)
        predict_ms = elapsed_ms(start)
        t1 = time.perf_counter()
        pixels = self.model.stylize(job.content, applied)
        return ArbitraryOutput(pixels, vector, predict_ms, elapsed_ms(t1), queue_ms)

    async def stylize(
        self,
        image: Image.Image,
        *,
        digest: str,
        load_painting: Callable[[], Awaitable[Image.Image]],
        size: int | None,
        max_size: int,
        strength: float = 1.0,
        keep_colors: bool = False,
        fmt: str = "png",
    ) -> ArbitraryResult:
        """Full request path. ``load_painting`` (decoding the upload) is awaited only on a cache miss."""
        t0 = time.perf_counter()
        vector = self.cache.get(digest)
        painting = await load_painting() if vector is None else None
        decode_ms = elapsed_ms(t0)
        longest = size if size is not None else min(max(image.size), max_size)

        def prepare() -> tuple[Image.Image, np.ndarray, np.ndarray | None, np.ndarray | None]:
            photo = resize_longest(image, longest) if longest != max(image.size) else image
            content = np.asarray(photo, dtype=np.float32) / 255.0
            square = center_square(painting) if painting is not None else None
            own_square = center_square(photo) if strength < 1.0 else None
            return photo, content, square, own_square

        t1 = time.perf_counter()
        photo, content, square, own_square = await run_in_threadpool(prepare)
        prep_ms = elapsed_ms(t1)
        out = await self.batcher.submit(
            ArbitraryJob(content, vector, square, own_square, strength, time.perf_counter())
        )
        if vector is None:
            self.cache.put(digest, out.vector)

        def finish() -> bytes:
            img = Image.fromarray(np.round(out.pixels * 255.0).astype(np.uint8), "RGB")
            if keep_colors:
                img = preserve_color(photo, img)
            return encode_image(img, fmt)

        t2 = time.perf_counter()
        body = await run_in_threadpool(finish)
        timings = {
            "decode_style": decode_ms,
            "prepare": prep_ms,
            "queue": out.queue_ms,
            "predict": out.predict_ms,
            "infer": out.infer_ms,
            "encode": elapsed_ms(t2),
            "total": elapsed_ms(t0),
        }
        return ArbitraryResult(body, MEDIA_TYPES[fmt], photo.width, photo.height, timings, vector is not None)

    async def close(self) -> None:
        await self.batcher.close()
