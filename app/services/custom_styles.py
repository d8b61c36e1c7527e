"""The custom styles one API process serves: a copy of Redis' custom-style codes, kept fresh by polling.

Codes are a few kB each, so every process keeps all of them in memory and a /stylize request with a
custom style costs no Redis call: its code goes to the same micro-batcher and ONNX graph as a
built-in style's. A background task reads ``custom-styles:version`` every ``ATELIER_CUSTOM_STYLE_POLL_S``
(one GET, plus one EXISTS per known style so an expired one is noticed too) and reloads the set when
it changed; the process that made a change refreshes at once. So a style trained by any worker is
served by every API process within one poll interval, without a restart.

A style whose network sha256 is not the served network's (the weights were updated since it was
trained) is listed as ``stale`` and not served: its code means nothing to other weights.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from redis import Redis
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from torch import Tensor

from core import style_store
from core.style_store import CustomStyleMeta, StyleKeys

log = logging.getLogger(__name__)

CUSTOM = "custom"
STALE = "stale"


@dataclass(frozen=True)
class ServedStyle:
    meta: CustomStyleMeta
    code: Tensor  # 1×P float32
    status: str  # custom (served) or stale (not served)
    reason: str = ""


class CustomStyleRegistry:
    """This process' view of the stored custom styles (see the module docstring)."""

    def __init__(self, redis: Redis, prefix: str, poll_s: float) -> None:
        self.redis = redis
        self.keys = StyleKeys(prefix)
        self.poll_s = poll_s
        self.network_sha256: str | None = None  # of the served network; None: no network loaded
        self.code_size: int | None = None
        self._styles: dict[str, ServedStyle] = {}
        self._version: int | None = None
        self._task: asyncio.Task[None] | None = None

    # --- what is served ------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Every stored name, served or stale."""
        return sorted(self._styles)

    @property
    def served_names(self) -> list[str]:
        return [n for n, s in sorted(self._styles.items()) if s.status == CUSTOM]

    def get(self, name: str) -> ServedStyle | None:
        return self._styles.get(name)

    def code(self, name: str) -> Tensor:
        style = self._styles[name]
        if style.status != CUSTOM:
            raise KeyError(name)
        return style.code

    def public(self, network_version: str) -> list[dict[str, Any]]:
        """Entries for GET /styles, shaped like the built-in ones plus a ``custom`` block."""
        out = []
        for name, style in sorted(self._styles.items()):
            meta = style.meta
            entry: dict[str, Any] = {
                "name": name,
                "title": meta.title,
                "artist": meta.artist,
                "year": "",
                "copyright": "uploaded by a user of this server",
                "status": style.status,
                "eval": {},
                "version": meta.network_sha256[:12] if style.status == STALE else network_version,
                "has_thumbnail": True,
                "custom": {
                    "created_at": meta.created_at,
                    "iterations": meta.iterations,
                    "losses": meta.losses,
                    "painting_sha256": meta.painting_sha256,
                    "network_sha256": meta.network_sha256,
                    "seconds": meta.seconds,
                    "style_weight_scale": meta.style_weight_scale,
                },
            }
            if style.reason:
                entry["custom"]["stale_reason"] = style.reason
            out.append(entry)
        return out

    # --- keeping it fresh --------------------------------------------------------------------------

    def bind(self, network_sha256: str | None, code_size: int | None) -> None:
        """The served network the codes must belong to (set at startup)."""
        self.network_sha256, self.code_size = network_sha256, code_size
        self._version = None

    def refresh(self, force: bool = False) -> bool:
        """Reload if the version moved or a style expired (blocking: call in a thread). True if reloaded."""
        known = list(self._styles)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.keys.version)
            for name in known:
                pipe.exists(self.keys.style(name))
            current, *alive = pipe.execute()
        current_version = int(current or 0)
        if not force and current_version == self._version and all(alive):
            return False
        stored = style_store.load_styles(self.redis, self.keys)
        self._styles = {name: self._served(s.meta, s.code) for name, s in stored.items()}
        self._version = current_version
        return True

    def _served(self, meta: CustomStyleMeta, code: Tensor) -> ServedStyle:
        if self.network_sha256 is None:
            return ServedStyle(meta, code, STALE, "no style network is loaded")
        if meta.network_sha256 != self.network_sha256 or code.shape[1] != self.code_size:
            return ServedStyle(
                meta,
                code,
                STALE,
                f"trained for network {meta.network_sha256[:12]}; this server runs "
                f"{self.network_sha256[:12]}. Train it again with POST /styles.",
            )
        return ServedStyle(meta, code, CUSTOM)

    async def refresh_async(self, force: bool = False) -> None:
        try:
            await run_in_threadpool(self.refresh, force)
        except RedisError as exc:  # keep serving what we have; the next poll tries again
            log.debug("custom styles: Redis unavailable (%s)", exc)

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await self.refresh_async()
            await asyncio.sleep(self.poll_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


def mixed_code(
    builtin: Sequence[str],
    builtin_code: Any,
    registry: CustomStyleRegistry,
    names: Sequence[str],
    weights: Sequence[float],
) -> Tensor:
    """1×P code of a blend of built-in and custom styles: the weighted mean of their codes.

    ``builtin_code(names, weights)`` is the stylizer's own mix for built-in names; a convex mix of
    codes is exactly what the network does for its trained styles, so custom styles blend the same way.
    """
    total = sum(weights)
    parts: list[Tensor] = []
    for name, weight in zip(names, weights, strict=True):
        code = builtin_code([name], None) if name in builtin else registry.code(name)
        parts.append(code.float() * (weight / total))
    return torch.stack(parts).sum(0)
