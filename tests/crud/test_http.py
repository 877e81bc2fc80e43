"""``meridian.crud.http``: the conditional-request helpers on their own (ETags,
If-None-Match → 304, created and replayed responses), then through accounts: ETag on
reads and writes, If-None-Match → 304, a stale If-Match → 412 with nothing changed."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from meridian.crud.http import (
    conditional_response,
    created,
    etag,
    not_modified,
    stored_response,
    tagged_response,
    version_etag,
)
from meridian.crud.idempotency import StoredResponse
from tests.fixtures.api import Tenant
from tests.fixtures.engines import *  # noqa: F403 - the API's ETags on both shard engines
from tests.fixtures.problems import assert_problem

# -- the helpers -------------------------------------------------------------------------


def test_etags_are_strong_and_name_the_version() -> None:
    assert version_etag(7) == '"7"'
    assert etag({"id": "x", "version": 3}) == '"3"'


@pytest.mark.parametrize(
    "header",
    ['"3"', ' "3" ', '"1", "3"', '"1" ,"3"', 'W/"3"', '"1", W/"3"', "*", " * "],
)
def test_if_none_match_naming_the_tag_or_star_is_not_modified(header: str) -> None:
    assert not_modified('"3"', header)


@pytest.mark.parametrize("header", [None, "", '"4"', '"1", "2"', 'W/"33"', '"3'])
def test_if_none_match_not_naming_the_tag_is_modified(header: str | None) -> None:
    assert not not_modified('"3"', header)


def test_conditional_response_is_the_body_with_its_version_etag() -> None:
    row = {"id": "x", "version": 2}
    resp = conditional_response(row, '"1"')
    assert resp.status_code == 200
    assert resp.headers["etag"] == '"2"'
    assert resp.media_type == "application/json"
    assert orjson.loads(resp.body) == row


def test_conditional_response_is_304_without_a_body_when_the_client_holds_it() -> None:
    resp = conditional_response({"id": "x", "version": 2}, 'W/"2"')
    assert resp.status_code == 304
    assert resp.body == b""
    assert resp.headers["etag"] == '"2"'


def test_conditional_response_takes_another_tag_for_unversioned_bodies() -> None:
    body = {"id": "x"}  # no version: the tag is given (a constant, a policy version)
    assert conditional_response(body, '"1"', tag='"1"').status_code == 304
    fresh = conditional_response(body, None, tag='"1"')
    assert (fresh.status_code, fresh.headers["etag"]) == (200, '"1"')


def test_tagged_response_keeps_status_and_headers() -> None:
    resp = tagged_response({"a": 1}, '"5"', 201, {"Location": "/v1/x/1"})
    assert resp.status_code == 201
    assert resp.headers["etag"] == '"5"'
    assert resp.headers["location"] == "/v1/x/1"


def test_created_has_location_and_the_etag_only_when_there_is_one() -> None:
    row = {"id": "r", "version": 1}
    assert created(row, "/v1/x/r", '"1"') == StoredResponse(
        201, row, {"Location": "/v1/x/r", "ETag": '"1"'}
    )
    assert created(row, "/v1/x/r", None).headers == {"Location": "/v1/x/r"}


def test_stored_response_marks_replays_only() -> None:
    first = stored_response(StoredResponse(201, {"id": "r"}, {"Location": "/v1/x/r"}))
    assert first.status_code == 201
    assert first.headers["location"] == "/v1/x/r"
    assert "idempotent-replayed" not in first.headers
    replay = stored_response(StoredResponse(201, {"id": "r"}, {"Location": "/v1/x/r"}, True))
    assert replay.headers["idempotent-replayed"] == "true"
    assert orjson.loads(replay.body) == {"id": "r"}


# -- through the API ---------------------------------------------------------------------


@pytest.fixture
async def account(app_client: httpx.AsyncClient, tenant: Tenant) -> dict[str, Any]:
    resp = await app_client.post(
        "/v1/accounts", json={"name": "Tagged", "domain": "tagged.example"}, headers=tenant.headers
    )
    assert resp.status_code == 201
    assert resp.headers["etag"] == '"1"'
    body: dict[str, Any] = resp.json()
    return body


def _url(account: dict[str, Any]) -> str:
    return f"/v1/accounts/{account['id']}"


async def _current(
    client: httpx.AsyncClient, tenant: Tenant, account: dict[str, Any]
) -> dict[str, Any]:
    resp = await client.get(_url(account), headers=tenant.headers)
    assert resp.status_code == 200
    body: dict[str, Any] = resp.json()
    return body


async def test_get_returns_a_strong_etag_of_the_version(
    app_client: httpx.AsyncClient, tenant: Tenant, account: dict[str, Any]
) -> None:
    resp = await app_client.get(_url(account), headers=tenant.headers)
    assert resp.status_code == 200
    assert resp.headers["etag"] == f'"{account["version"]}"'
    assert not resp.headers["etag"].startswith("W/")


async def test_if_none_match_gives_304_until_the_record_changes(
    app_client: httpx.AsyncClient, tenant: Tenant, account: dict[str, Any]
) -> None:
    url = _url(account)
    for value in ('"1"', '"7", "1"', ' "1" '):
        cached = await app_client.get(url, headers={**tenant.headers, "If-None-Match": value})
        assert cached.status_code == 304, value
        assert cached.content == b""
        assert cached.headers["etag"] == '"1"'
    other = await app_client.get(url, headers={**tenant.headers, "If-None-Match": '"2"'})
    assert other.status_code == 200
    assert other.json() == account
    changed = await app_client.patch(url, json={"name": "Retagged"}, headers=tenant.headers)
    assert changed.headers["etag"] == '"2"'
    stale = await app_client.get(url, headers={**tenant.headers, "If-None-Match": '"1"'})
    assert stale.status_code == 200
    assert stale.json()["name"] == "Retagged"
    assert stale.headers["etag"] == '"2"'


async def test_patch_with_current_etag_succeeds_and_returns_the_next(
    app_client: httpx.AsyncClient, tenant: Tenant, account: dict[str, Any]
) -> None:
    resp = await app_client.patch(
        _url(account), json={"name": "Next"}, headers={**tenant.headers, "If-Match": '"1"'}
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["etag"] == '"2"'
    assert resp.json()["version"] == 2


async def test_patch_with_stale_etag_is_412_and_changes_nothing(
    app_client: httpx.AsyncClient, tenant: Tenant, account: dict[str, Any]
) -> None:
    url = _url(account)
    first = await app_client.patch(
        url, json={"name": "Winner"}, headers={**tenant.headers, "If-Match": '"1"'}
    )
    assert first.status_code == 200
    before = await _current(app_client, tenant, account)
    for tag in ('"1"', '"3"', '"999"'):
        lost = await app_client.patch(
            url,
            json={"name": "Loser", "domain": "loser.example"},
            headers={**tenant.headers, "If-Match": tag},
        )
        assert_problem(
            lost, 412, "precondition-failed", "The account has changed since the ETag was issued"
        )
    assert await _current(app_client, tenant, account) == before


async def test_delete_with_stale_etag_is_412_and_keeps_the_record(
    app_client: httpx.AsyncClient, tenant: Tenant, account: dict[str, Any]
) -> None:
    url = _url(account)
    await app_client.patch(url, json={"name": "v2"}, headers=tenant.headers)
    refused = await app_client.delete(url, headers={**tenant.headers, "If-Match": '"1"'})
    assert_problem(
        refused, 412, "precondition-failed", "The account has changed since the ETag was issued"
    )
    assert (await _current(app_client, tenant, account))["name"] == "v2"
    done = await app_client.delete(url, headers={**tenant.headers, "If-Match": '"2"'})
    assert done.status_code == 204
    assert (await app_client.get(url, headers=tenant.headers)).status_code == 404


async def test_if_match_star_means_any_version(
    app_client: httpx.AsyncClient, tenant: Tenant, account: dict[str, Any]
) -> None:
    url = _url(account)
    await app_client.patch(url, json={"name": "v2"}, headers=tenant.headers)
    resp = await app_client.patch(
        url, json={"name": "v3"}, headers={**tenant.headers, "If-Match": "*"}
    )
    assert resp.status_code == 200
    assert resp.json()["version"] == 3


async def test_if_match_on_a_missing_record_is_404(
    app_client: httpx.AsyncClient, tenant: Tenant, account: dict[str, Any]
) -> None:
    url = _url(account)
    assert (await app_client.delete(url, headers=tenant.headers)).status_code == 204
    for method in ("PATCH", "DELETE"):
        kwargs: dict[str, Any] = {"json": {"name": "x"}} if method == "PATCH" else {}
        resp = await app_client.request(
            method, url, headers={**tenant.headers, "If-Match": '"1"'}, **kwargs
        )
        assert resp.status_code == 404, (method, resp.text)
