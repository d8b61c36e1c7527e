"""What a route declares, read from its FastAPI dependency tree once and kept on the route.

The request checks that run before a route (``form_body``, ``repeated_fields``) need the route's
fields, including those of its dependencies; walking the tree on every request would be wasted work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")

T = TypeVar("T")


def dependants(dependant: Dependant) -> Iterator[Dependant]:
    """The route's own parameters first, then those of each dependency, depth first."""
    yield dependant
    for sub in dependant.dependencies:
        yield from dependants(sub)


def cached_on_route(route: APIRoute, attr: str, compute: Callable[[APIRoute], T]) -> T:
    """``compute(route)`` once per route, kept as an attribute (routes are unhashable: no functools.cache)."""
    cached = getattr(route, attr, None)
    if cached is None:
        cached = compute(route)
        setattr(route, attr, cached)
    return cached
