"""Refuse a body that is not a form on a route that reads one, naming what it takes instead.

A client that posts JSON (``curl -d '{"style": "udnie"}'``) to ``/stylize`` would otherwise be told
"file: Field required", as if it had only forgotten a field. The body was never read: a 415 that names
the content type sent, the one expected and the route's fields says what to change.
"""

from __future__ import annotations

from fastapi import params
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.requests import HTTPConnection, Request

from app.problems import Problem

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
_CACHE_ATTR = "_atelier_form_fields"


def _collect(dependant: Dependant, fields: list[str]) -> None:
    for field in dependant.body_params:
        if isinstance(field.field_info, params.Form) and field.alias not in fields:  # File is a Form
            fields.append(field.alias)
    for sub in dependant.dependencies:
        _collect(sub, fields)


def form_fields(route: APIRoute) -> tuple[str, ...]:
    """The route's form and file fields in declaration order (empty: it reads no form)."""
    cached = getattr(route, _CACHE_ATTR, None)
    if cached is None:
        found: list[str] = []
        _collect(route.dependant, found)
        cached = tuple(found)
        setattr(route, _CACHE_ATTR, cached)  # routes are unhashable, so no functools.cache
    return cached


async def require_form_body(connection: HTTPConnection) -> None:
    """415 when a route that reads a form got a body of another declared type."""
    route = connection.scope.get("route")
    if not isinstance(connection, Request) or not isinstance(route, APIRoute):
        return  # websockets and mounted apps: nothing of ours to check
    fields = form_fields(route)
    content_type = connection.headers.get("content-type", "").strip().lower()
    if not fields or not content_type or content_type.startswith(FORM_TYPES):
        return  # no type at all: an empty body, whose missing fields the 422 names
    sent = content_type.split(";", 1)[0]
    raise Problem(
        415,
        "unsupported-media-type",
        f"{connection.method} {connection.url.path} takes multipart/form-data (fields: "
        f"{', '.join(fields)}), not {sent}; with curl, -F name=value for each field and -F name=@path "
        "for each upload.",
        field="content-type",
    )
