"""Reject a single-valued field sent more than once, instead of silently keeping the last value.

FastAPI reads a scalar form or query field with ``.get()``, so ``-F style=a -F style=b`` quietly
stylizes with ``b`` only, although ``/jobs/optimize`` takes ``style`` repeated (several paintings) and
a client may well expect a blend here too. Ambiguous input gets a 422 that names the field and says
what to send instead. Fields declared as lists (``file`` of ``/classify``, ``style`` of
``/jobs/optimize``) may repeat as documented.
"""

from __future__ import annotations

import collections.abc
import types
import typing
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import HTTPConnection, Request

from app.problems import Problem
from app.route_fields import FORM_TYPES, cached_on_route, dependants

_MANY = (list, set, frozenset, tuple, collections.abc.Sequence, collections.abc.Set)


def accepts_many(annotation: Any) -> bool:
    """Whether a parameter's type takes several values (``list[...]``, possibly optional)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return accepts_many(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(accepts_many(arg) for arg in typing.get_args(annotation))
    return origin in _MANY or annotation in _MANY


def _single_valued(route: APIRoute) -> tuple[frozenset[str], frozenset[str]]:
    tree = list(dependants(route.dependant))  # its own parameters and those of its dependencies
    query = (f for d in tree for f in d.query_params if not accepts_many(f.field_info.annotation))
    form = (f for d in tree for f in d.body_params if not accepts_many(f.field_info.annotation))
    return frozenset(f.alias for f in query), frozenset(f.alias for f in form)


def single_valued(route: APIRoute) -> tuple[frozenset[str], frozenset[str]]:
    """The route's single-valued (query, form) field names; computed once per route and kept on it."""
    return cached_on_route(route, "_atelier_single_valued", _single_valued)


def _repeated(values: Any, names: frozenset[str]) -> list[str]:
    return sorted(name for name in names if len(values.getlist(name)) > 1)


async def reject_repeated_fields(connection: HTTPConnection) -> None:
    """422 when a field that takes one value came several times (query string or form body)."""
    route = connection.scope.get("route")
    if not isinstance(connection, Request) or not isinstance(route, APIRoute):
        return  # websockets and mounted apps: nothing of ours to check
    query_names, form_names = single_valued(route)
    repeated = _repeated(connection.query_params, query_names)
    content_type = connection.headers.get("content-type", "").lower()
    if form_names and content_type.startswith(FORM_TYPES):
        # FastAPI has parsed the body before dependencies run; this returns the cached form.
        repeated += _repeated(await connection.form(), form_names)
    if not repeated:
        return
    errors = [
        {"field": name, "message": "sent more than once; this field takes one value"} for name in repeated
    ]
    hint = " For a blend of styles send one 'style' with comma-separated names (and 'style_weights')."
    detail = "; ".join(f"'{name}' was sent more than once but takes one value" for name in repeated) + "."
    if "style" in repeated and connection.url.path == "/stylize":
        detail += hint
    raise Problem(422, "validation-error", detail, field=repeated[0], errors=errors)
