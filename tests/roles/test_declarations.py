"""Every tenant endpoint declares the (object, action) it needs, and the OAuth scope it
asks for follows from the action."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from authz.policy import is_known
from meridian.app import create_app
from meridian.deps import RequireTenant, signed_tenant
from meridian.settings import Settings


def _requirements(dependant: Dependant) -> list[RequireTenant]:
    found = [d.call for d in dependant.dependencies if isinstance(d.call, RequireTenant)]
    for sub in dependant.dependencies:
        found.extend(_requirements(sub))
    return found


def _signed(dependant: Dependant) -> bool:
    """Whether the route takes its tenant from a signed URL (a download link) instead."""
    return any(d.call is signed_tenant or _signed(d) for d in dependant.dependencies)


def _api_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        # FastAPI keeps included routers whole (not copied route by route).
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _api_routes(included.routes)


def test_every_v1_endpoint_declares_one_permission(settings: Settings) -> None:
    routes = [r for r in _api_routes(create_app(settings).routes) if r.path.startswith("/v1/")]
    assert len(routes) > 30
    for route in routes:
        declared = _requirements(route.dependant)
        if _signed(route.dependant):
            # A signed download: the URL's signature is its authority, never a token's.
            assert declared == [], (route.path, declared)
            assert set(route.methods or ()) <= {"GET", "HEAD"}, route.path
            continue
        assert len(declared) == 1, (route.path, route.methods, declared)
        need = declared[0]
        assert is_known(need.obj, need.act), (route.path, need.obj, need.act)
        reads = set(route.methods or ()) <= {"GET", "HEAD"}
        # Reads ask for crm:read, changes for crm:write: never a read action on a write.
        assert (need.scope == "crm:read") is reads, (route.path, route.methods, need.act)
