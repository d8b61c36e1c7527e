"""Custom styles in Redis: written by the fine-tuning job, read by every API process.

Layout (every key under the deployment's ``ATELIER_KEY_PREFIX``):

* ``custom-style:<name>``: one hash per style, written in one transaction: ``code`` (the 1×P style
  code as little-endian float32 bytes, a few kB), ``meta`` (JSON: name, title, artist, painting and
  network sha256, created_at, iterations, final losses) and ``thumbnail`` (a JPEG of at most 256 px).
  It expires only when ``ATELIER_CUSTOM_STYLE_TTL_S`` is set.
* ``custom-styles``: the set of stored names (a name whose hash expired is dropped when read).
* ``custom-styles:pending``: name -> id of the job training it, so a name is never trained twice.
  An entry whose job has ended (or vanished) no longer holds the name.
* ``custom-styles:version``: incremented on every change (and announced on the pub/sub channel
  ``custom-styles:changed``), so each API process notices a new or deleted style by polling one
  small key.

A style appears here complete or not at all: the job writes it only after its last step, and a
failed or canceled job writes nothing (it only gives its name back).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from redis import Redis
from redis.exceptions import WatchError
from rq.job import Job
from torch import Tensor

CODE_DTYPE = "<f4"
UNFINISHED = frozenset({"queued", "started", "deferred", "scheduled", "created"})


@dataclass(frozen=True)
class StyleKeys:
    """Names of one deployment's custom-style keys."""

    prefix: str

    def style(self, name: str) -> str:
        return f"{self.prefix}custom-style:{name}"

    @property
    def index(self) -> str:
        return f"{self.prefix}custom-styles"

    @property
    def pending(self) -> str:
        return f"{self.prefix}custom-styles:pending"

    @property
    def version(self) -> str:
        return f"{self.prefix}custom-styles:version"

    @property
    def channel(self) -> str:
        return f"{self.prefix}custom-styles:changed"


@dataclass(frozen=True)
class CustomStyleMeta:
    """Everything known about a learned style besides its code and thumbnail."""

    name: str
    title: str
    artist: str
    painting_sha256: str
    network_sha256: str
    code_size: int
    created_at: str
    iterations: int
    losses: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    init: str = "mean"
    style_weight_scale: float = 1.0  # the balance the code was fine-tuned at (models.finetune_style)
    owner: str | None = None  # digest of the API key that asked for it (never shown)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> CustomStyleMeta:
        raw = json.loads(text)
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class StoredStyle:
    meta: CustomStyleMeta
    code: Tensor  # 1×P float32


def code_to_bytes(code: Tensor) -> bytes:
    return np.ascontiguousarray(code.detach().float().cpu().reshape(-1).numpy(), dtype=CODE_DTYPE).tobytes()


def code_from_bytes(data: bytes) -> Tensor:
    return torch.from_numpy(np.frombuffer(data, dtype=CODE_DTYPE).astype(np.float32)).reshape(1, -1)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def save_style(
    redis: Redis,
    keys: StyleKeys,
    meta: CustomStyleMeta,
    code: Tensor,
    thumbnail_jpeg: bytes,
    ttl_s: int | None,
) -> None:
    """Store a finished style and give its name's reservation back, in one transaction."""
    if code.numel() != meta.code_size:
        raise ValueError(f"the code has {code.numel()} numbers, the metadata says {meta.code_size}")
    key = keys.style(meta.name)
    with redis.pipeline() as pipe:
        pipe.delete(key)
        pipe.hset(
            key, mapping={"code": code_to_bytes(code), "meta": meta.to_json(), "thumbnail": thumbnail_jpeg}
        )
        if ttl_s:
            pipe.expire(key, ttl_s)
        pipe.sadd(keys.index, meta.name)
        pipe.hdel(keys.pending, meta.name)
        pipe.incr(keys.version)
        pipe.publish(keys.channel, meta.name)
        pipe.execute()


def delete_style(redis: Redis, keys: StyleKeys, name: str) -> bool:
    """Remove a stored style; False when there was none."""
    with redis.pipeline() as pipe:
        pipe.delete(keys.style(name))
        pipe.srem(keys.index, name)
        pipe.incr(keys.version)
        pipe.publish(keys.channel, name)
        deleted, *_ = pipe.execute()
    return bool(deleted)


def load_styles(redis: Redis, keys: StyleKeys) -> dict[str, StoredStyle]:
    """Every stored style; names whose hash expired are dropped from the index."""
    names = sorted(_text(n) for n in redis.smembers(keys.index))
    if not names:
        return {}
    with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hmget(keys.style(name), ["meta", "code"])
        rows = pipe.execute()
    styles: dict[str, StoredStyle] = {}
    gone: list[str] = []
    for name, (meta, code) in zip(names, rows, strict=True):
        if meta is None or code is None:
            gone.append(name)
            continue
        styles[name] = StoredStyle(CustomStyleMeta.from_json(meta), code_from_bytes(code))
    if gone:
        redis.srem(keys.index, *gone)
    return styles


def stored_names(redis: Redis, keys: StyleKeys) -> set[str]:
    """Names of styles that exist now (expired ones are dropped from the index)."""
    names = sorted(_text(n) for n in redis.smembers(keys.index))
    if not names:
        return set()
    with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.exists(keys.style(name))
        alive = pipe.execute()
    gone = [n for n, ok in zip(names, alive, strict=True) if not ok]
    if gone:
        redis.srem(keys.index, *gone)
    return {n for n, ok in zip(names, alive, strict=True) if ok}


def thumbnail(redis: Redis, keys: StyleKeys, name: str) -> bytes | None:
    return redis.hget(keys.style(name), "thumbnail")


def version(redis: Redis, keys: StyleKeys) -> int:
    return int(redis.get(keys.version) or 0)


def pending_jobs(redis: Redis, keys: StyleKeys) -> dict[str, str]:
    """name -> job id of every training job still queued or running; ended ones are dropped."""
    raw = {_text(k): _text(v) for k, v in redis.hgetall(keys.pending).items()}
    if not raw:
        return {}
    with redis.pipeline(transaction=False) as pipe:
        for job_id in raw.values():
            pipe.hget(Job.key_for(job_id), "status")
        statuses = pipe.execute()
    alive: dict[str, str] = {}
    for (name, job_id), status in zip(raw.items(), statuses, strict=True):
        if status is not None and _text(status) in UNFINISHED:
            alive[name] = job_id
    ended = [n for n in raw if n not in alive]
    if ended:
        redis.hdel(keys.pending, *ended)
    return alive


def reserve(redis: Redis, keys: StyleKeys, name: str, job_id: str) -> None:
    """Hold ``name`` for ``job_id`` (the caller checked it is free, under the admission lock)."""
    redis.hset(keys.pending, name, job_id)


def release(redis: Redis, keys: StyleKeys, name: str, job_id: str) -> None:
    """Give ``name`` back if ``job_id`` still holds it (a failed or canceled job)."""
    with redis.pipeline() as pipe:
        while True:
            try:
                pipe.watch(keys.pending)
                holder = pipe.hget(keys.pending, name)
                if holder is None or _text(holder) != job_id:
                    pipe.unwatch()
                    return
                pipe.multi()
                pipe.hdel(keys.pending, name)
                pipe.execute()
                return
            except WatchError:  # changed meanwhile: read it again
                continue
