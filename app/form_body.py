"""Refuse a body that is not a form on a route that reads one, naming what it takes instead.

A client that posts JSON (``curl -d '{"style": "udnie"}'``) to ``/stylize`` would otherwise be told
"file: Field required", as if it had only forgotten a field. The body was never read: a 415 that names
the content type sent, the one expected and the route's fields says what to change.
"""

from __future__ import annotations

from fastapi import params
from fastapi.routing import APIRoute
from starlette.requests import HTTPConnection, Request

from app.problems import Problem
from app.route_fields import FORM_TYPES, cached_on_route, dependants


def _form_fields(route: APIRoute) -> tuple[str, ...]:
    found = (
        field.alias
        for dependant in dependants(route.dependant)
        for field in dependant.body_params
        if isinstance(field.field_info, params.Form)  # File is a Form too
    )
    return tuple(dict.fromkeys(found))


def form_fields(route: APIRoute) -> tuple[str, ...]:
    """The route's form and file fields in declaration order (empty: it reads no form)."""
    return cached_on_route(route, "_atelier_form_fields", _form_fields)


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
