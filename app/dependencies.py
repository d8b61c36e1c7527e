"""FastAPI dependencies: settings, the Redis client and the job queue of the running app."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from redis import Redis
from rq import Queue

from core.settings import Settings
from core.store import JobKeys


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_redis(request: Request) -> Redis:
    return request.app.state.redis


def get_queue(request: Request) -> Queue:
    return request.app.state.queue


def get_keys(request: Request) -> JobKeys:
    return JobKeys(request.app.state.settings.key_prefix)


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
RedisDep = Annotated[Redis, Depends(get_redis)]
QueueDep = Annotated[Queue, Depends(get_queue)]
KeysDep = Annotated[JobKeys, Depends(get_keys)]
