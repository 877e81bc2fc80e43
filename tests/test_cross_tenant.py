"""Cross-tenant isolation of every /v1 route that names a record, generated from the app's
own routes: another tenant gets 404 ``not-found`` for every method on every id of the
owner's, whether it sits on the owner's shard (where only the tenant id in each statement
and row-level security tell them apart) or on another one, and the owner's data is the
same afterwards (re-read through the API, and every row of the tenant compared in the
databases, bypassing every cache). The owner and its neighbour live on a plain shard,
then on a Citus shard (tests/fixtures/engines.py); the intruder from abroad on another.

A route the generator cannot build a request for fails here: a new route must be taught
to it (a placeholder for its path parameter, a body for its method), not skipped.

The routes a signed URL authorizes instead of a token (``SIGNED``, presigned downloads)
answer the intruder's own valid signature 403, as any signature that does not hold.

The other tenant-boundary checks stay with their routers: references to another tenant's
records in request bodies (422), filtered lists, idempotency keys.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx
import pytest

from meridian.app import create_app
from meridian.transfers import files
from tests.fixtures.api import Tenant
from tests.fixtures.databases import names_for
from tests.fixtures.engines import *  # noqa: F403 - the matrix runs on both shard engines
from tests.fixtures.engines import Platform
from tests.fixtures.problems import assert_problem
from tests.fixtures.users import new_user_id

# -- the routes under test ---------------------------------------------------------------

_PARAM = re.compile(r"\{([^}]+)\}")
_METHODS = ("get", "post", "put", "patch", "delete")


def _routes_with_ids() -> list[tuple[str, str]]:
    """(METHOD, path template) of every /v1 operation with a path parameter."""
    app = create_app(names_for("routes").settings())  # builds routes; connects to nothing
    paths: dict[str, dict[str, Any]] = app.openapi()["paths"]
    # {object} names a kind of record, not a record: custom fields are tried on accounts'.
    return sorted(
        (method.upper(), path)
        for template, operations in paths.items()
        if template.startswith("/v1/")
        and _PARAM.search(path := template.replace("{object}", "accounts"))
        for method in operations
        if method in _METHODS
    )


ROUTES = _routes_with_ids()
# What each path parameter names; "record" and "share" take their kind from the path.
PARAMS = {
    "contact_id": "contact",
    "account_id": "account",
    "opportunity_id": "opportunity",
    "activity_id": "activity",
    "pipeline_id": "pipeline",
    "stage_id": "stage",
    "user_id": "user",
    "name": "role",
    "record_id": "record",
    "share_id": "share",
    "webhook_id": "webhook",
    "delivery_id": "delivery",
    "lead_id": "lead",
    "case_id": "case",
    "rule_id": "rule",
    "field_id": "field",
    "duplicate_rule_id": "duplicate_rule",
    "merge_id": "merge",
    "export_id": "export",
    "import_id": "import",
}
# Routes a signed URL authorizes instead of a token (presigned downloads), with what they
# sign: the intruder brings a valid signature of its own, for its own job; it does not
# open the owner's (403, the answer to any signature that does not hold).
SIGNED = {
    ("GET", "/v1/exports/{export_id}/download"): ("export-download", "export"),
    ("GET", "/v1/imports/{import_id}/errors"): ("import-errors", "import"),
}
PLURALS = {
    "accounts": "account",
    "contacts": "contact",
    "opportunities": "opportunity",
    "leads": "lead",
    "cases": "case",
}


@dataclass(frozen=True)
class Owner:
    """In a body: the id of the owner's record of this kind."""

    kind: str


@dataclass(frozen=True)
class Own:
    """In a body: the id of the intruder's own record of this kind."""

    kind: str


_SHARE_BODIES: list[Any] = [{"user_id": Own("user")}, {"user_id": Owner("user")}]
# Bodies of the routes whose method takes one: every such route must be listed.
BODIES: dict[tuple[str, str], list[Any]] = {
    ("PATCH", "/v1/contacts/{contact_id}"): [
        {"last_name": "pwned"},
        {"account_id": Owner("account")},
    ],
    ("PATCH", "/v1/accounts/{account_id}"): [
        {"name": "pwned"},
        {"parent_id": Owner("child_account")},
    ],
    ("PATCH", "/v1/opportunities/{opportunity_id}"): [
        {"name": "pwned"},
        {"stage_id": Owner("stage")},
        {"account_id": Owner("account")},
    ],
    ("PATCH", "/v1/pipelines/{pipeline_id}"): [{"name": "pwned"}, {"is_default": True}],
    ("POST", "/v1/pipelines/{pipeline_id}/stages"): [{"name": "pwned", "probability": 1}],
    ("PATCH", "/v1/pipelines/{pipeline_id}/stages/{stage_id}"): [
        {"name": "pwned"},
        {"position": 0},
    ],
    ("POST", "/v1/accounts/{record_id}/shares"): _SHARE_BODIES,
    ("POST", "/v1/contacts/{record_id}/shares"): _SHARE_BODIES,
    ("POST", "/v1/opportunities/{record_id}/shares"): _SHARE_BODIES,
    ("POST", "/v1/leads/{record_id}/shares"): _SHARE_BODIES,
    ("POST", "/v1/cases/{record_id}/shares"): _SHARE_BODIES,
    ("PATCH", "/v1/leads/{lead_id}"): [{"last_name": "pwned"}, {"owner_id": Owner("user")}],
    ("POST", "/v1/leads/{lead_id}/convert"): [
        {},
        {"account_id": Owner("account"), "contact_id": Owner("contact")},
        {"account_id": Own("account"), "contact_id": Own("contact")},
    ],
    ("PATCH", "/v1/objects/accounts/fields/{field_id}"): [
        {"label": "pwned"},
        {"options": {"max_length": 3}},
        {"required": True},
    ],
    ("POST", "/v1/objects/accounts/fields/{field_id}/restore"): [None],
    ("PATCH", "/v1/lead-scoring/rules/{rule_id}"): [{"points": 999}, {"active": False}],
    ("PATCH", "/v1/duplicate-rules/{duplicate_rule_id}"): [{"name": "pwned"}, {"active": False}],
    ("POST", "/v1/merges/{merge_id}/undo"): [None, {"force": True}],
    ("PATCH", "/v1/cases/{case_id}"): [
        {"subject": "pwned"},
        {"contact_id": Owner("contact")},
        {"status": "closed", "resolution": "pwned"},
    ],
    ("PATCH", "/v1/users/{user_id}"): [
        {"name": "Mallory"},
        {"role": "admin"},
        {"active": False},
        {"manager_id": Own("user")},
    ],
    ("POST", "/v1/users/{user_id}/revoke-tokens"): [None],
    ("POST", "/v1/imports/{import_id}/cancel"): [None],
    ("POST", "/v1/opportunities/{opportunity_id}/fulfilment/retry"): [None],
    ("PATCH", "/v1/roles/{name}"): [{"description": "pwned"}],
    ("PATCH", "/v1/webhooks/{webhook_id}"): [
        {"enabled": False},
        {"url": "https://pwned.example.com/hook", "event_types": ["*"]},
    ],
    ("POST", "/v1/webhooks/{webhook_id}/rotate-secret"): [None],
    ("POST", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry"): [None],
    ("POST", "/v1/webhooks/{webhook_id}/replay"): [
        {
            "since": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
            "until": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        }
    ],
    ("PUT", "/v1/roles/{name}/permissions"): [
        {"permissions": [{"object": "accounts", "action": "read"}]}
    ],
}
_WITH_BODY = {"POST", "PUT", "PATCH"}
_CONDITIONAL = {"PUT", "PATCH", "DELETE"}  # also tried with the owner's own ETag

# The batch routes (POST /v1/<plural>/batch) name records in their bodies, not their
# paths: each gets items that try the owner's ids and external ids, with the status each
# item must get. Every tenant's records carry the same external ids (EXTERNAL): the
# intruder's upsert of one finds its own record (200), never the owner's.
EXTERNAL = {kind: f"xt-{kind}" for kind in ("account", "contact", "opportunity", "lead", "case")}


def _theirs(kind: str, body: dict[str, Any]) -> list[tuple[dict[str, Any], int]]:
    """Updates of the owner's record (404, with its ETag too) and an upsert of the
    external id every tenant has (200: the intruder's own record)."""
    return [
        ({"op": "update", "id": Owner(kind), "body": body}, 404),
        ({"op": "update", "id": Owner(kind), "if_match": '"1"', "body": body}, 404),
        ({"op": "upsert", "external_id": EXTERNAL[kind], "body": body}, 200),
    ]


BATCHES: dict[str, list[tuple[dict[str, Any], int]]] = {
    "/v1/accounts/batch": [
        *_theirs("account", {"name": "pwned"}),
        ({"op": "update", "id": Own("account"), "body": {"parent_id": Owner("account")}}, 422),
        ({"op": "create", "body": {"name": "pwned", "parent_id": Owner("account")}}, 422),
    ],
    "/v1/contacts/batch": [
        *_theirs("contact", {"last_name": "pwned"}),
        ({"op": "update", "id": Own("contact"), "body": {"account_id": Owner("account")}}, 422),
        ({"op": "create", "body": {"last_name": "pwned", "account_id": Owner("account")}}, 422),
    ],
    "/v1/opportunities/batch": [
        *_theirs("opportunity", {"name": "pwned"}),
        ({"op": "update", "id": Own("opportunity"), "body": {"stage_id": Owner("stage")}}, 422),
        (
            {
                "op": "create",
                "body": {"name": "pwned", "currency": "USD", "account_id": Owner("account")},
            },
            422,
        ),
    ],
    "/v1/leads/batch": [
        *_theirs("lead", {"company": "pwned"}),
        ({"op": "update", "id": Own("lead"), "body": {"owner_id": Owner("user")}}, 422),
        ({"op": "create", "body": {"last_name": "pwned", "owner_id": Owner("user")}}, 422),
    ],
    "/v1/cases/batch": [
        *_theirs("case", {"subject": "pwned"}),
        ({"op": "update", "id": Own("case"), "body": {"contact_id": Owner("contact")}}, 422),
        ({"op": "create", "body": {"subject": "pwned", "contact_id": Owner("contact")}}, 422),
    ],
}


def _batch_routes() -> list[str]:
    """Every batch route of the app (POST /v1/<plural>/batch)."""
    app = create_app(names_for("routes").settings())
    paths: dict[str, dict[str, Any]] = app.openapi()["paths"]
    return sorted(p for p, ops in paths.items() if p.endswith("/batch") and "post" in ops)


BATCH_ROUTES = _batch_routes()


# -- the owner's records and the intruders -------------------------------------------------


@dataclass
class Records:
    tenant: Tenant
    ids: dict[str, str] = field(default_factory=dict)
    shares: dict[str, str] = field(default_factory=dict)  # record kind -> share id

    def of(self, kind: str, path: str) -> str:
        if kind in {"record", "share"}:
            record_kind = PLURALS[path.split("/")[2]]  # /v1/<plural>/{record_id}/...
            return self.ids[record_kind] if kind == "record" else self.shares[record_kind]
        return self.ids[kind]


async def _post(client: httpx.AsyncClient, tenant: Tenant, path: str, body: Any) -> str:
    resp = await client.post(path, json=body, headers=tenant.headers)
    assert resp.status_code == 201, resp.text
    made: str = resp.json()["id"]
    return made


async def _records(client: httpx.AsyncClient, tenant: Tenant, marker: str) -> Records:
    """One record of every kind a route names, all carrying ``marker`` where text goes."""
    r = Records(tenant)
    ids = r.ids
    ids["user"] = await new_user_id(client, tenant, role="sales_manager", name=marker)
    ids["account"] = await _post(
        client, tenant, "/v1/accounts", {"name": marker, "external_id": EXTERNAL["account"]}
    )
    ids["child_account"] = await _post(
        client, tenant, "/v1/accounts", {"name": f"{marker} child", "parent_id": ids["account"]}
    )
    ids["contact"] = await _post(
        client,
        tenant,
        "/v1/contacts",
        {"last_name": marker, "account_id": ids["account"], "external_id": EXTERNAL["contact"]},
    )
    stages = [{"name": f"{marker} {n}", "probability": p} for n, p in (("a", 10), ("b", 50))]
    pipeline = await client.post(
        "/v1/pipelines", json={"name": marker, "stages": stages}, headers=tenant.headers
    )
    assert pipeline.status_code == 201, pipeline.text
    ids["pipeline"] = pipeline.json()["id"]
    ids["stage"] = pipeline.json()["stages"][0]["id"]
    ids["opportunity"] = await _post(
        client,
        tenant,
        "/v1/opportunities",
        {
            "account_id": ids["account"],
            "name": marker,
            "currency": "USD",
            "amount": "1000000",
            "pipeline_id": ids["pipeline"],
            "stage_id": ids["stage"],
            "external_id": EXTERNAL["opportunity"],
        },
    )
    ids["lead"] = await _post(
        client,
        tenant,
        "/v1/leads",
        {"last_name": marker, "company": marker, "external_id": EXTERNAL["lead"]},
    )
    ids["case"] = await _post(
        client,
        tenant,
        "/v1/cases",
        {"subject": marker, "contact_id": ids["contact"], "external_id": EXTERNAL["case"]},
    )
    ids["activity"] = await _post(
        client,
        tenant,
        "/v1/activities",
        {
            "type": "call",
            "subject": marker,
            "occurred_at": datetime.now(UTC).isoformat(),
            "account_id": ids["account"],
            "contact_id": ids["contact"],
            "opportunity_id": ids["opportunity"],
            "lead_id": ids["lead"],
            "case_id": ids["case"],
        },
    )
    ids["field"] = await _post(
        client,
        tenant,
        "/v1/objects/accounts/fields",
        {"name": "tier", "label": marker, "type": "text"},
    )
    ids["rule"] = await _post(
        client,
        tenant,
        "/v1/lead-scoring/rules",
        {"name": marker, "points": 5, "condition": {"type": "activity", "min_count": 1}},
    )
    ids["duplicate_rule"] = await _post(
        client,
        tenant,
        "/v1/duplicate-rules",
        {"kind": "account", "name": marker, "conditions": [{"type": "exact", "field": "domain"}]},
    )
    merged = [
        await _post(client, tenant, "/v1/leads", {"last_name": f"{marker} merged {n}"})
        for n in range(2)
    ]
    merge = await client.post(
        "/v1/leads/merge",
        json={"survivor_id": merged[0], "merged_ids": merged[1:]},
        headers=tenant.headers,
    )
    assert merge.status_code == 201, merge.text
    ids["merge"] = merge.json()["merge_id"]
    for plural, kind in PLURALS.items():
        r.shares[kind] = await _post(
            client, tenant, f"/v1/{plural}/{ids[kind]}/shares", {"user_id": ids["user"]}
        )
    role = f"cx_{uuid.uuid4().hex[:10]}"
    made = await client.post(
        "/v1/roles",
        json={
            "name": role,
            "inherits": "read_only",
            "description": marker,
            "permissions": [{"object": "contacts", "action": "create"}],
        },
        headers=tenant.headers,
    )
    assert made.status_code == 201, made.text
    ids["role"] = role
    await _webhook(client, tenant, marker, ids)
    await _transfers(client, tenant, marker, ids)
    return r


async def _transfers(
    client: httpx.AsyncClient, tenant: Tenant, marker: str, ids: dict[str, str]
) -> None:
    """An export and an import (queued: no worker runs here)."""
    body = {"object": "contacts", "format": "csv", "filter": f"last_name[eq]:{marker}"}
    made = await client.post("/v1/exports", json=body, headers=tenant.headers)
    assert made.status_code == 202, made.text
    ids["export"] = made.json()["id"]
    parts = [
        ("options", (None, b'{"object": "leads"}', "application/json")),
        ("file", ("leads.csv", f"last_name\n{marker}\n".encode(), "text/csv")),
    ]
    made = await client.post("/v1/imports", files=parts, headers=tenant.headers)
    assert made.status_code == 202, made.text
    ids["import"] = made.json()["id"]


async def _signed_queries(
    client: httpx.AsyncClient, owner: Records, own: Records, purpose: str, kind: str
) -> list[str]:
    """The intruder's valid signature of its own job: with its tenant, and the owner's."""
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    tenant_id = uuid.UUID(own.tenant.id)
    cipher = await runtime.keyring.active_cipher(tenant_id)
    expires = int(time.time()) + 600
    signature = files.sign(cipher, purpose, tenant_id, uuid.UUID(own.ids[kind]), expires)
    return [
        urlencode({"tenant": tenant, "expires": expires, "signature": signature})
        for tenant in (own.tenant.id, owner.tenant.id)
    ]


async def _webhook(
    client: httpx.AsyncClient, tenant: Tenant, marker: str, ids: dict[str, str]
) -> None:
    """A subscription and a delivery of it (made by a replay, as no worker runs here);
    then disabled, so a worker of a later test sends nothing to its closed port."""
    body = {"url": "http://127.0.0.1:9/hook", "event_types": ["*"], "description": marker}
    ids["webhook"] = await _post(client, tenant, "/v1/webhooks", body)
    path = f"/v1/webhooks/{ids['webhook']}"
    now = datetime.now(UTC)
    window = {"since": (now - timedelta(hours=1)).isoformat(), "until": now.isoformat()}
    replay = await client.post(f"{path}/replay", json=window, headers=tenant.headers)
    assert replay.status_code == 202, replay.text
    assert replay.json()["count"] > 0, replay.text
    listed = await client.get(f"{path}/deliveries", headers=tenant.headers)
    ids["delivery"] = listed.json()["data"][0]["id"]
    off = await client.patch(path, json={"enabled": False}, headers=tenant.headers)
    assert off.status_code == 200, off.text


@dataclass
class World:
    owner: Records
    marker: str  # in every text field of the owner's records: must never leak
    intruders: dict[str, Records]
    shard: asyncpg.Connection  # the owner's shard, as the superuser
    control: asyncpg.Connection  # the control plane, as the superuser


@pytest.fixture(scope="module")
async def world(app_client: httpx.AsyncClient, platform: Platform) -> AsyncIterator[World]:
    tag = uuid.uuid4().hex[:8]
    owner = await platform.onboard(slug=f"xt-owner-{tag}")
    neighbour = await platform.onboard(slug=f"xt-same-{tag}")
    abroad = await platform.onboard(slug=f"xt-other-{tag}", abroad=True)
    assert neighbour.shard_id == owner.shard_id != abroad.shard_id
    marker = f"Secret-{tag}"
    async with platform.superuser(owner.shard_id) as shard:
        control = await asyncpg.connect(platform.control_url)
        try:
            yield World(
                owner=await _records(app_client, owner, marker),
                marker=marker,
                intruders={
                    "same-shard": await _records(app_client, neighbour, f"Intruder-{tag}"),
                    "other-shard": await _records(app_client, abroad, f"Abroad-{tag}"),
                },
                shard=shard,
                control=control,
            )
        finally:
            await control.close()


# -- what the owner has -------------------------------------------------------------------


async def _fingerprint(world: World) -> dict[str, tuple[int, str]]:
    """Every row of the owner, per table, on its shard and in the control plane (as the
    superuser: no row-level security, no cache): (count, digest of the rows)."""
    tenant_id = uuid.UUID(world.owner.tenant.id)
    digest = "count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"

    async def tables(conn: asyncpg.Connection, plane: str) -> dict[str, tuple[int, str]]:
        found: dict[str, tuple[int, str]] = {}
        names = await conn.fetch(
            "SELECT table_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND column_name = 'tenant_id' ORDER BY 1"
        )
        for (name,) in names:
            row = await conn.fetchrow(
                f'SELECT {digest} FROM "{name}" t WHERE tenant_id = $1',
                tenant_id,
            )
            assert row is not None
            found[f"{plane}.{name}"] = (row[0], row[1])
        return found

    result = await tables(world.shard, "shard") | await tables(world.control, "control")
    for name, where in (
        ("tenant", "id::text = $1"),
        # The tenant's Casbin rules name it as their domain (p: v1, g: v2).
        ("casbin_rule", "v1 = $1 OR v2 = $1"),
    ):
        row = await world.control.fetchrow(
            f"SELECT {digest} FROM {name} t WHERE {where}",
            str(tenant_id),
        )
        assert row is not None
        result[f"control.{name}"] = (row[0], row[1])
    assert result["shard.account"][0] == 2, result  # the owner's rows are really there
    return result


def _witness(method: str, path: str) -> str:
    """The path the owner reads to see what a request to ``path`` could have changed: the
    route itself if it can be read, or the nearest readable one above it."""
    readable = {p for m, p in ROUTES if m == "GET" and (m, p) not in SIGNED}
    while path not in readable:
        path = path.rsplit("/", 1)[0]
        assert path.count("/") > 1, f"no readable route above {method} {path}"
    return path


async def _owner_view(client: httpx.AsyncClient, owner: Records, path: str) -> httpx.Response:
    url = _fill(path, lambda param: owner.of(PARAMS[param], path))
    resp = await client.get(url, headers=owner.tenant.headers)
    assert resp.status_code == 200, (url, resp.text)  # the id really is the owner's
    return resp


# -- requests ------------------------------------------------------------------------------


def _fill(path: str, value: Any) -> str:
    return _PARAM.sub(lambda m: str(value(m.group(1))), path)


def _resolve(body: Any, owner: Records, own: Records) -> Any:
    if isinstance(body, Owner):
        return owner.ids[body.kind]
    if isinstance(body, Own):
        return own.ids[body.kind]
    if isinstance(body, dict):
        return {k: _resolve(v, owner, own) for k, v in body.items()}
    if isinstance(body, list):
        return [_resolve(v, owner, own) for v in body]
    return body


@dataclass(frozen=True)
class Attack:
    method: str
    url: str
    body: Any
    headers: dict[str, str]


def _unbuildable(method: str, path: str) -> str | None:
    """Why no request can be built for this route (None: it can)."""
    unknown = [p for p in _PARAM.findall(path) if p not in PARAMS]
    if unknown:
        return f"{method} {path}: no placeholder for {unknown}; add it to PARAMS"
    if method in _WITH_BODY and (method, path) not in BODIES:
        return f"{method} {path}: no request body; add one to BODIES"
    if any(p in {"record_id", "share_id"} for p in _PARAM.findall(path)) and (
        path.split("/")[2] not in PLURALS
    ):
        return f"{method} {path}: records of an unknown kind; add it to PLURALS"
    return None


def _attacks(method: str, path: str, owner: Records, own: Records, etag: str) -> list[Attack]:
    params = _PARAM.findall(path)
    urls = [_fill(path, lambda param: owner.of(PARAMS[param], path))]
    if len(params) == 2:
        # The intruder's own parent with the owner's child (e.g. its pipeline, the
        # owner's stage): the child must be looked up within the tenant, not the parent.
        parent, _ = params
        urls.append(
            _fill(
                path,
                lambda p: (own if p == parent else owner).of(PARAMS[p], path),
            )
        )
    bodies = [_resolve(b, owner, own) for b in BODIES.get((method, path), [None])]
    conditions = [{}, {"If-Match": etag}] if method in _CONDITIONAL else [{}]
    return [
        Attack(method, url, body, {**own.tenant.headers, **condition})
        for url in urls
        for body in bodies
        for condition in conditions
    ]


# -- the test ---------------------------------------------------------------------------------


def test_the_generator_builds_a_request_for_every_route() -> None:
    assert len(ROUTES) >= 38  # the routes are really read from the app
    assert [why for m, p in ROUTES if (why := _unbuildable(m, p))] == []
    assert set(BODIES) <= set(ROUTES), set(BODIES) - set(ROUTES)  # nothing stale
    # Every batch route has its items, and nothing stale.
    assert len(BATCH_ROUTES) >= 5
    assert set(BATCH_ROUTES) == set(BATCHES), set(BATCH_ROUTES) ^ set(BATCHES)


@pytest.mark.parametrize("intruder", ["same-shard", "other-shard"])
@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
async def test_another_tenant_gets_404_and_changes_nothing(
    app_client: httpx.AsyncClient, world: World, intruder: str, method: str, path: str
) -> None:
    if why := _unbuildable(method, path):
        pytest.fail(why)
    owner, own = world.owner, world.intruders[intruder]
    witness = _witness(method, path)
    seen = await _owner_view(app_client, owner, witness)  # also warms the owner's caches
    # Every id the requests name is really the owner's, now: else a 404 proves nothing.
    for param in _PARAM.findall(path):
        assert owner.of(PARAMS[param], path) in seen.text, (param, witness, seen.text)
    before = await _fingerprint(world)
    etag = seen.headers.get("etag", '"1"')

    signed = SIGNED.get((method, path))
    queries = await _signed_queries(app_client, owner, own, *signed) if signed else [""]
    status, slug = (403, "forbidden") if signed else (404, "not-found")
    for attack in _attacks(method, path, owner, own, etag):
        for query in queries:
            url = f"{attack.url}?{query}" if query else attack.url
            resp = await app_client.request(
                attack.method, url, json=attack.body, headers=attack.headers
            )
            what = (attack.method, url, attack.body, attack.headers.get("If-Match"))
            assert resp.status_code == status, (what, resp.text)
            assert_problem(resp, status, slug)
            assert world.marker not in resp.text, what

    after = await _owner_view(app_client, owner, witness)
    assert after.json() == seen.json()
    assert await _fingerprint(world) == before


@pytest.mark.parametrize("intruder", ["same-shard", "other-shard"])
@pytest.mark.parametrize("path", BATCH_ROUTES)
async def test_another_tenant_writes_nothing_through_a_batch(
    app_client: httpx.AsyncClient, world: World, intruder: str, path: str
) -> None:
    """Every item naming the owner's records is 404 (or 422 where it is a reference in a
    body, as on the single routes), an upsert of an external id the owner also has finds
    the intruder's own record, atomic or not; the owner's data is the same afterwards."""
    owner, own = world.owner, world.intruders[intruder]
    kind = PLURALS[path.split("/")[2]]
    entries = BATCHES[path]
    items = [_resolve(item, owner, own) for item, _ in entries]
    before = await _fingerprint(world)
    expected = [status for _, status in entries]
    first_failure = next(i for i, status in enumerate(expected) if status >= 400)
    for atomic in (False, True):
        resp = await app_client.post(
            path, json={"items": items, "atomic": atomic}, headers=own.tenant.headers
        )
        assert resp.status_code == 200, resp.text
        results = resp.json()["results"]
        statuses = [r["status"] for r in results]
        if atomic:
            # The first failure rolls the batch back: every other item is 424.
            assert statuses == [
                expected[i] if i == first_failure else 424 for i in range(len(expected))
            ], results
        else:
            assert statuses == expected, results
            for result in results:
                if result["status"] == 200:
                    assert result["id"] == own.ids[kind], result
                    assert result["record"]["external_id"] == EXTERNAL[kind]
        for result in results:
            if result["status"] == 404:
                assert result["problem"]["type"] == "urn:meridian:problem:not-found"
        assert world.marker not in resp.text, resp.text
    assert await _fingerprint(world) == before
