"""``loadtests.bench.inprocess``: its ASGI caller and its per-package attribution, and
that the measuring routes answer what the app's own route answers. No figures are
asserted: the benchmark prints them."""

from __future__ import annotations

import cProfile
import uuid

import httpx
from fastapi import FastAPI

from loadtests.bench.inprocess import _instruments, by_package, call
from meridian.app import create_app
from meridian.settings import Settings
from tests.fixtures.api import Tenant


async def test_call_runs_a_request_through_an_asgi_app() -> None:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    assert await call(app, "/ping", []) == 200
    assert await call(app, "/nowhere", []) == 404


def test_by_package_shares_add_up_and_name_the_packages() -> None:
    profile = cProfile.Profile()
    profile.enable()
    sorted(range(1000), key=lambda i: -i)
    profile.disable()
    shares = by_package(profile)
    assert abs(sum(shares.values()) - 1.0) < 1e-9
    assert "built-ins, called from all of the above" in shares


async def test_the_measuring_routes_serve_what_the_app_serves(
    app_client: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    made = await app_client.post(
        "/v1/contacts",
        json={"last_name": "Probe", "email": "p@example.com"},
        headers=tenant.headers,
    )
    assert made.status_code == 201, made.text
    contact = made.json()
    # An app of its own: the suite's app must never serve the measuring routes.
    app = create_app(settings)
    _instruments(app)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            for path in ("/v1/contacts", "/bench-probe/no-header", "/bench-probe/no-parameters"):
                resp = await client.get(f"{path}/{contact['id']}", headers=tenant.headers)
                assert resp.status_code == 200, (path, resp.text)
                assert resp.json() == contact
                missing = await client.get(f"{path}/{uuid.uuid4()}", headers=tenant.headers)
                assert missing.status_code == 404, path
