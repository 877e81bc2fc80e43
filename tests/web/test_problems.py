"""Every error leaves as RFC 9457 problem+json with a stable ``type``, for a tenant on a
plain shard and on a Citus shard alike (tests/fixtures/engines.py)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from meridian.settings import Settings
from tests.fixtures.api import Tenant
from tests.fixtures.engines import *  # noqa: F403 - every test here runs on both shard engines
from tests.fixtures.problems import assert_problem

# Fixed, so parameter ids are the same in every xdist worker.
SOME_ID = "0190c1a4-6b4f-7b9e-8f4e-9a2f0f6f0a11"


def explained(resp: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    """The problem (see assert_problem), which here must also say what went wrong."""
    body = assert_problem(resp, status, slug)
    assert isinstance(body.get("detail"), str), body
    assert body["detail"], body
    return body


def assert_errors(body: dict[str, Any], field: str, error_type: str) -> None:
    errors = body["errors"]
    assert isinstance(errors, list)
    assert errors
    for e in errors:
        assert set(e) == {"loc", "msg", "type"}
    assert any(e["loc"][-1] == field and e["type"] == error_type for e in errors), errors


# -- request bodies -------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"{", b'{"name": }', b"not json", b'{"name": "x"'])
async def test_malformed_json_is_400(
    app_client: httpx.AsyncClient, tenant: Tenant, raw: bytes
) -> None:
    resp = await app_client.post(
        "/v1/accounts",
        content=raw,
        headers={**tenant.headers, "Content-Type": "application/json"},
    )
    explained(resp, 400, "bad-request")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": 123}, "name"),
        ({"name": ["a"]}, "name"),
        ({"name": "Acme", "parent_id": "not-a-uuid"}, "parent_id"),
        ({"name": "Acme", "domain": 5}, "domain"),
    ],
)
async def test_wrong_types_are_422_with_errors(
    app_client: httpx.AsyncClient, tenant: Tenant, body: dict[str, Any], field: str
) -> None:
    resp = await app_client.post("/v1/accounts", json=body, headers=tenant.headers)
    problem = explained(resp, 422, "validation")
    assert any(e["loc"][-1] == field for e in problem["errors"]), problem


async def test_json_that_is_not_an_object_is_422(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    resp = await app_client.post("/v1/accounts", json=["Acme"], headers=tenant.headers)
    explained(resp, 422, "validation")


async def test_unknown_fields_are_422(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    body = {"name": "Acme", "tenant_id": str(uuid.uuid4())}
    resp = await app_client.post("/v1/accounts", json=body, headers=tenant.headers)
    assert_errors(explained(resp, 422, "validation"), "tenant_id", "extra_forbidden")


async def test_missing_required_fields_are_422(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    resp = await app_client.post("/v1/accounts", json={}, headers=tenant.headers)
    body = explained(resp, 422, "validation")
    assert_errors(body, "name", "missing")
    assert "name" in body["detail"]


async def test_invalid_values_are_422(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    for body in ({"name": ""}, {"name": "x" * 256}, {"name": "Acme", "domain": "not a domain"}):
        resp = await app_client.post("/v1/accounts", json=body, headers=tenant.headers)
        explained(resp, 422, "validation")


async def test_body_over_content_length_limit_is_413(
    app_client: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    payload = orjson.dumps({"name": "x" * settings.max_body_bytes})
    assert len(payload) > settings.max_body_bytes
    resp = await app_client.post(
        "/v1/accounts",
        content=payload,
        headers={**tenant.headers, "Content-Type": "application/json"},
    )
    explained(resp, 413, "payload-too-large")
    assert resp.headers.get("connection") == "close"


async def test_chunked_body_over_limit_is_413(
    app_client: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    chunk = b" " * 65536
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"name": "'
        while sent <= settings.max_body_bytes * 2:
            sent += len(chunk)
            yield chunk
        yield b'"}'

    request = app_client.build_request(
        "POST",
        "/v1/accounts",
        content=body(),
        headers={**tenant.headers, "Content-Type": "application/json"},
    )
    assert "content-length" not in request.headers
    assert request.headers.get("transfer-encoding") == "chunked"
    resp = await app_client.send(request)
    explained(resp, 413, "payload-too-large")
    listed = await app_client.get("/v1/accounts", headers=tenant.headers)
    assert listed.json()["data"] == []


async def test_chunked_body_under_limit_is_accepted(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b'{"name": '
        yield b'"Chunked"}'

    resp = await app_client.post(
        "/v1/accounts",
        content=body(),
        headers={**tenant.headers, "Content-Type": "application/json"},
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["name"] == "Chunked"


# -- routing --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/nope", "/v2/accounts", "/admin/v1/nope", "/"])
async def test_unknown_route_is_404(
    app_client: httpx.AsyncClient, tenant: Tenant, path: str
) -> None:
    resp = await app_client.get(path, headers=tenant.headers)
    explained(resp, 404, "not-found")


async def test_wrong_method_is_405_with_allow(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    resp = await app_client.put("/v1/accounts", json={"name": "x"}, headers=tenant.headers)
    explained(resp, 405, "method-not-allowed")
    # RFC 9110: Allow lists every method of the resource, not of the first route found.
    assert _allow(resp) == {"GET", "POST"}
    item = await app_client.post(f"/v1/accounts/{uuid.uuid4()}", headers=tenant.headers)
    explained(item, 405, "method-not-allowed")
    assert _allow(item) == {"GET", "PATCH", "DELETE"}


def _allow(resp: httpx.Response) -> set[str]:
    return {m.strip() for m in resp.headers["allow"].split(",")}


@pytest.mark.parametrize("value", ["not-a-uuid", "123", "01a2-zz"])
async def test_invalid_uuid_in_path_is_422(
    app_client: httpx.AsyncClient, tenant: Tenant, value: str
) -> None:
    for method in ("GET", "PATCH", "DELETE"):
        kwargs: dict[str, Any] = {"json": {"name": "x"}} if method == "PATCH" else {}
        resp = await app_client.request(
            method, f"/v1/accounts/{value}", headers=tenant.headers, **kwargs
        )
        body = explained(resp, 422, "validation")
        assert any(e["loc"][-1] == "account_id" for e in body["errors"]), body


async def test_missing_record_is_404(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    resp = await app_client.get(f"/v1/accounts/{uuid.uuid4()}", headers=tenant.headers)
    explained(resp, 404, "not-found")


# -- listing parameters ---------------------------------------------------------------


def _cursor(parts: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(parts)).rstrip(b"=").decode()


async def _real_cursor(client: httpx.AsyncClient, tenant: Tenant, sort: str) -> str:
    for i in range(3):
        resp = await client.post("/v1/accounts", json={"name": f"c{i}"}, headers=tenant.headers)
        assert resp.status_code == 201
    page = await client.get(
        "/v1/accounts", params={"limit": 1, "sort": sort}, headers=tenant.headers
    )
    cursor: str = page.json()["next_cursor"]
    assert cursor
    return cursor


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage!!",
        "e30",  # {}
        _cursor([1, 2]),
        _cursor("created_at"),
        _cursor(["created_at", ["dt", 5], SOME_ID, "x"]),
        _cursor(["created_at", ["dt", "yesterday"], SOME_ID, "x"]),
        _cursor(["created_at", ["v"], SOME_ID, "x"]),
        _cursor(["created_at", ["v", None], "not-a-uuid", "x"]),
        _cursor(["created_at", ["v", [1, 2]], SOME_ID, "x"]),
        _cursor(["created_at", {"a": 1}, SOME_ID, "x"]),
        base64.urlsafe_b64encode(b"\xff\xfe\x00").decode(),
    ],
)
async def test_bad_cursor_is_400(
    app_client: httpx.AsyncClient, tenant: Tenant, cursor: str
) -> None:
    resp = await app_client.get("/v1/accounts", params={"cursor": cursor}, headers=tenant.headers)
    explained(resp, 400, "invalid-cursor")


@pytest.mark.parametrize(
    ("sort", "value"),
    [
        ("created_at", ["v", "not a timestamp"]),
        ("created_at", ["v", 12]),
        ("created_at", ["u", "0190c1a4-6b4f-7b9e-8f4e-9a2f0f6f0a11"]),
        ("name", ["v", 12]),
        ("name", ["dt", "2024-01-01T00:00:00+00:00"]),
        ("-updated_at", ["dec", "1.5"]),
    ],
)
async def test_tampered_cursor_value_is_400_not_500(
    app_client: httpx.AsyncClient, tenant: Tenant, sort: str, value: list[Any]
) -> None:
    """A cursor with the right sort and filter digest but a value of the wrong type."""
    real = await _real_cursor(app_client, tenant, sort)
    parts = orjson.loads(base64.urlsafe_b64decode(real + "=" * (-len(real) % 4)))
    parts[1] = value
    resp = await app_client.get(
        "/v1/accounts", params={"cursor": _cursor(parts), "sort": sort}, headers=tenant.headers
    )
    explained(resp, 400, "invalid-cursor")


@pytest.mark.parametrize("limit", ["0", "-1", "201", "100000", "abc", "1.5"])
async def test_limit_out_of_range_is_422(
    app_client: httpx.AsyncClient, tenant: Tenant, limit: str
) -> None:
    resp = await app_client.get("/v1/accounts", params={"limit": limit}, headers=tenant.headers)
    body = explained(resp, 422, "validation")
    assert any(e["loc"][-1] == "limit" for e in body["errors"]), body


@pytest.mark.parametrize("sort", ["domain", "tenant_id", "-", "--name", "name;drop"])
async def test_unknown_sort_is_400(
    app_client: httpx.AsyncClient, tenant: Tenant, sort: str
) -> None:
    resp = await app_client.get("/v1/accounts", params={"sort": sort}, headers=tenant.headers)
    explained(resp, 400, "bad-request")


# -- conditional requests -------------------------------------------------------------


@pytest.fixture
async def account(app_client: httpx.AsyncClient, tenant: Tenant) -> dict[str, Any]:
    resp = await app_client.post("/v1/accounts", json={"name": "Etag"}, headers=tenant.headers)
    assert resp.status_code == 201
    body: dict[str, Any] = resp.json()
    return body


# If-Match declares its format (* or one strong ETag as issued): anything else is 422.
@pytest.mark.parametrize("if_match", ['W/"1"', '"1", "2"', '"1",', '"abc"', '""'])
async def test_malformed_if_match_is_400(
    app_client: httpx.AsyncClient, tenant: Tenant, account: dict[str, Any], if_match: str
) -> None:
    url = f"/v1/accounts/{account['id']}"
    for method in ("PATCH", "DELETE"):
        kwargs: dict[str, Any] = {"json": {"name": "y"}} if method == "PATCH" else {}
        resp = await app_client.request(
            method, url, headers={**tenant.headers, "If-Match": if_match}, **kwargs
        )
        explained(resp, 422, "validation")
    after = await app_client.get(url, headers=tenant.headers)
    assert after.json() == account


@pytest.mark.parametrize("if_match", ['"2"', '"0"', '"9999999999"'])
async def test_non_matching_if_match_is_412(
    app_client: httpx.AsyncClient, tenant: Tenant, account: dict[str, Any], if_match: str
) -> None:
    url = f"/v1/accounts/{account['id']}"
    for method in ("PATCH", "DELETE"):
        kwargs: dict[str, Any] = {"json": {"name": "y"}} if method == "PATCH" else {}
        resp = await app_client.request(
            method, url, headers={**tenant.headers, "If-Match": if_match}, **kwargs
        )
        explained(resp, 412, "precondition-failed")
    after = await app_client.get(url, headers=tenant.headers)
    assert after.json() == account


# -- authentication problems are problem+json too --------------------------------------


async def test_missing_token_is_401_problem(app_client: httpx.AsyncClient) -> None:
    resp = await app_client.get("/v1/accounts")
    explained(resp, 401, "unauthorized")
    assert resp.headers["www-authenticate"].startswith("Bearer")


async def test_nul_characters_are_not_500(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    listed = await app_client.get("/v1/accounts", params={"name": "a\x00b"}, headers=tenant.headers)
    assert listed.status_code in (200, 400, 422), listed.text
    created = await app_client.post("/v1/accounts", json={"name": "a\x00b"}, headers=tenant.headers)
    assert created.status_code in (201, 400, 422), created.text


async def test_nul_in_cursor_value_is_400(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    real = await _real_cursor(app_client, tenant, "name")
    parts = orjson.loads(base64.urlsafe_b64decode(real + "=" * (-len(real) % 4)))
    parts[1] = ["v", "a\x00b"]
    resp = await app_client.get(
        "/v1/accounts", params={"cursor": _cursor(parts), "sort": "name"}, headers=tenant.headers
    )
    explained(resp, 400, "invalid-cursor")
