"""POST /v1/{accounts,contacts,opportunities,leads,cases}/batch: each kind's batch goes
through that kind's own services (validation, defaults, duplicate rules, encryption,
scoring, events), record scope and tenant. The flow itself is tested once, in
tests/crud/test_batch.py."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.crud.test_batch import post, problem_of, send
from tests.fixtures.api import Tenant
from tests.fixtures.databases import TestDatabases
from tests.fixtures.problems import assert_problem
from tests.fixtures.shard_db import superuser
from tests.fixtures.users import PASSWORD, new_user, sign_in

Body = dict[str, Any]
Refs = dict[str, str]


@dataclass(frozen=True)
class Kind:
    plural: str
    # A role that creates and updates this kind, within its record scope.
    writer: str
    create: Callable[[Refs], Body]
    update: Body
    # What the kind's own service made of the created record.
    made: Callable[[Body], None] = field(default=lambda record: None)


def _account_made(record: Body) -> None:
    assert record["domain"] == "acme.example"  # stored lower-cased
    assert record["tax_id"] == "DE 811 907 980"  # sealed, and opened for the answer


def _contact_made(record: Body) -> None:
    assert record["email"].startswith("ada")
    assert record["email"].endswith("@example.com")


def _opportunity_made(record: Body) -> None:
    # The tenant's default pipeline and its first stage, and money as a decimal string.
    assert record["pipeline_id"]
    assert record["stage_id"]
    assert record["amount"] == "1250.50"
    assert record["currency"] == "EUR"


def _lead_made(record: Body) -> None:
    assert record["status"] == "new"
    assert record["score"] == 0


def _case_made(record: Body) -> None:
    assert record["due_at"] is not None
    assert record["priority"] == "high"


KINDS = [
    Kind(
        "accounts",
        "sales_rep",
        lambda refs: {"name": "Acme", "domain": "ACME.example", "tax_id": "DE 811 907 980"},
        {"name": "Acme Inc"},
        _account_made,
    ),
    Kind(
        "contacts",
        "sales_rep",
        lambda refs: {
            "last_name": "Lovelace",
            "email": f"Ada-{uuid.uuid4().hex[:8]}@Example.com",
            "account_id": refs["account"],
        },
        {"title": "Countess"},
        _contact_made,
    ),
    Kind(
        "opportunities",
        "sales_rep",
        lambda refs: {
            "name": "Big deal",
            "account_id": refs["account"],
            "amount": "1250.5",
            "currency": "eur",
        },
        {"name": "Bigger deal"},
        _opportunity_made,
    ),
    Kind(
        "leads",
        "sales_rep",
        lambda refs: {"last_name": "Hopper", "company": "Cobol Systems"},
        {"status": "working"},
        _lead_made,
    ),
    Kind(
        "cases",
        "support_agent",
        lambda refs: {"subject": "Invoices are wrong", "priority": "high"},
        {"status": "open"},
        _case_made,
    ),
]
IDS = [k.plural for k in KINDS]


async def _made(client: httpx.AsyncClient, headers: dict[str, str], path: str, body: Body) -> Body:
    resp = await client.post(path, json=body, headers=headers)
    assert resp.status_code == 201, resp.text
    made: Body = resp.json()
    return made


async def _refs(client: httpx.AsyncClient, tenant: Tenant, owner: str | None = None) -> Refs:
    body: Body = {"name": "Referenced"}
    if owner is not None:
        body["owner_id"] = owner
    account = await _made(client, tenant.headers, "/v1/accounts", body)
    return {"account": account["id"]}


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
async def test_each_kind_writes_through_its_own_rules(
    app_client: httpx.AsyncClient, tenant: Tenant, kind: Kind
) -> None:
    path = f"/v1/{kind.plural}"
    refs = await _refs(app_client, tenant)
    existing = await _made(app_client, tenant.headers, path, kind.create(refs))
    external_id = f"ext-{kind.plural}"
    results = await send(
        app_client,
        tenant.headers,
        [
            {"op": "create", "body": kind.create(refs)},
            {"op": "upsert", "external_id": external_id, "body": kind.create(refs)},
            {"op": "upsert", "external_id": external_id, "body": kind.update},
            {"op": "update", "id": existing["id"], "if_match": '"1"', "body": kind.update},
            {"op": "create", "body": {}},
            {"op": "update", "id": existing["id"], "if_match": '"1"', "body": kind.update},
        ],
        path=f"{path}/batch",
    )
    assert [r["status"] for r in results] == [201, 201, 200, 200, 422, 412]
    kind.made(results[0]["record"])
    kind.made(results[1]["record"])
    assert results[1]["record"]["external_id"] == external_id
    assert results[2]["id"] == results[1]["id"]
    assert results[2]["record"]["version"] == 2
    assert problem_of(results[4], 422, "validation")["errors"]
    problem_of(results[5], 412, "precondition-failed")
    # Each record as its own endpoint shows it.
    for result in (results[0], results[2], results[3]):
        got = await app_client.get(f"{path}/{result['id']}", headers=tenant.headers)
        assert got.json() == result["record"]
        for name, value in kind.update.items():
            if result is not results[0]:
                assert got.json()[name] == value
    listed = await app_client.get(path, params={"external_id": external_id}, headers=tenant.headers)
    assert [r["id"] for r in listed.json()["data"]] == [results[1]["id"]]
    # The batch's events: one per record written, as single writes make them.
    events = await app_client.get(
        "/v1/events",
        params={"type": f"{existing_kind(kind)}.*", "limit": 100},
        headers=tenant.headers,
    )
    seen = [(e["type"].split(".")[1], e["record"]["id"]) for e in events.json()["data"]]
    created = [rid for action, rid in seen if action == "created" and rid != refs["account"]]
    assert created == [existing["id"], results[0]["id"], results[1]["id"]]
    assert ("updated", results[1]["id"]) in seen
    assert ("updated", existing["id"]) in seen


def existing_kind(kind: Kind) -> str:
    return {
        "accounts": "account",
        "contacts": "contact",
        "opportunities": "opportunity",
        "leads": "lead",
        "cases": "case",
    }[kind.plural]


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
async def test_a_scoped_user_cannot_write_anothers_records(
    app_client: httpx.AsyncClient, user_api: httpx.AsyncClient, tenant: Tenant, kind: Kind
) -> None:
    path = f"/v1/{kind.plural}"
    me = await new_user(app_client, tenant, role=kind.writer, password=PASSWORD)
    peer = await new_user(app_client, tenant, role=kind.writer, password=PASSWORD)
    headers = await sign_in(user_api, tenant, me["email"])
    refs = await _refs(app_client, tenant, owner=me["id"])
    theirs = await _made(
        app_client,
        tenant.headers,
        path,
        {**kind.create(refs), "owner_id": peer["id"], "external_id": "peer-1"},
    )
    mine = await _made(
        app_client, tenant.headers, path, {**kind.create(refs), "owner_id": me["id"]}
    )
    results = await send(
        app_client,
        headers,
        [
            {"op": "update", "id": theirs["id"], "body": kind.update},
            {"op": "upsert", "external_id": "peer-1", "body": kind.update},
            {"op": "update", "id": mine["id"], "body": kind.update},
            {"op": "create", "body": kind.create(refs)},
        ],
        path=f"{path}/batch",
    )
    assert [r["status"] for r in results] == [404, 409, 200, 201]
    problem_of(results[0], 404, "not-found")
    assert problem_of(results[1], 409, "duplicate")["duplicate_of"] == theirs["id"]
    assert results[3]["record"]["owner_id"] == me["id"]
    got = await app_client.get(f"{path}/{theirs['id']}", headers=tenant.headers)
    assert got.json() == theirs


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
async def test_another_tenant_cannot_reach_the_records(
    app_client: httpx.AsyncClient, tenant: Tenant, intruder: Tenant, kind: Kind
) -> None:
    path = f"/v1/{kind.plural}"
    refs = await _refs(app_client, tenant)
    owned = await _made(
        app_client, tenant.headers, path, {**kind.create(refs), "external_id": "shared-1"}
    )
    own_refs = await _refs(app_client, intruder)
    results = await send(
        app_client,
        intruder.headers,
        [
            {"op": "update", "id": owned["id"], "body": kind.update},
            {"op": "update", "id": owned["id"], "if_match": '"1"', "body": kind.update},
            # The owner's external id means nothing here: a record of the intruder's own.
            {"op": "upsert", "external_id": "shared-1", "body": kind.create(own_refs)},
        ],
        path=f"{path}/batch",
    )
    assert [r["status"] for r in results] == [404, 404, 201]
    assert results[2]["id"] != owned["id"]
    if "account_id" in kind.create(refs):
        # The owner's account is not one the intruder can refer to.
        refused = await send(
            app_client,
            intruder.headers,
            [{"op": "create", "body": kind.create(refs)}],
            path=f"{path}/batch",
        )
        assert problem_of(refused[0], 422, "validation")["errors"][0]["type"] == "not_found"
    got = await app_client.get(f"{path}/{owned['id']}", headers=tenant.headers)
    assert got.json() == owned


async def test_contacts_duplicate_email_rule_applies_per_item(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    on_file = await _made(
        app_client, tenant.headers, "/v1/contacts", {"last_name": "A", "email": "a@dup.example"}
    )
    items = [
        {"op": "create", "body": {"last_name": "B", "email": "A@Dup.example"}},
        {"op": "create", "body": {"last_name": "C", "email": "c@dup.example"}},
        {"op": "create", "body": {"last_name": "C again", "email": "c@dup.example"}},
        {
            "op": "upsert",
            "external_id": "c-3",
            "body": {"last_name": "D", "email": "a@dup.example"},
        },
    ]
    results = await send(app_client, tenant.headers, items, path="/v1/contacts/batch")
    assert [r["status"] for r in results] == [409, 201, 409, 409]
    assert problem_of(results[0], 409, "duplicate")["duplicate_of"] == on_file["id"]
    assert problem_of(results[2], 409, "duplicate")["duplicate_of"] == results[1]["id"]
    assert problem_of(results[3], 409, "duplicate")["duplicate_of"] == on_file["id"]
    # As on POST /v1/contacts, allow_duplicate=true creates them anyway.
    resp = await app_client.post(
        "/v1/contacts/batch",
        params={"allow_duplicate": "true"},
        json={"items": items[:1]},
        headers=tenant.headers,
    )
    assert [r["status"] for r in resp.json()["results"]] == [201]


async def test_sealed_fields_are_stored_encrypted_and_masked_without_pii(
    app_client: httpx.AsyncClient,
    user_api: httpx.AsyncClient,
    tenant: Tenant,
    databases: TestDatabases,
) -> None:
    email, phone, tax_id = "grace.hopper@navy.example", "+1 202 555 0147", "US-98-7654321"
    key = f"sealed-{uuid.uuid4()}"
    results = await send(
        app_client,
        tenant.headers,
        [
            {"op": "create", "body": {"last_name": "Hopper", "email": email, "phone": phone}},
            {"op": "upsert", "external_id": "gh", "body": {"last_name": "H", "tax_id": tax_id}},
        ],
        path="/v1/contacts/batch",
        key=key,
    )
    assert results[0]["record"]["email"] == email
    assert results[1]["record"]["tax_id"] == tax_id
    async with superuser(databases, tenant.shard_id) as conn:
        rows = await conn.fetch(
            "SELECT t::text AS r, email_enc, tax_id_enc FROM contact t WHERE tenant_id = $1",
            uuid.UUID(tenant.id),
        )
        stored = await conn.fetchval(
            "SELECT response_body::text FROM idempotency_key WHERE tenant_id = $1 AND key = $2",
            uuid.UUID(tenant.id),
            key,
        )
    dump = "\n".join(r["r"] for r in rows) + stored
    for needle in ("grace.hopper", "2025550147", "555 0147", "7654321"):
        assert needle not in dump
    assert any(r["email_enc"] for r in rows)
    assert any(r["tax_id_enc"] for r in rows)
    # A role without pii:read sees them masked, as on the single-record endpoints.
    role = f"nopii_{uuid.uuid4().hex[:8]}"
    made = await app_client.post(
        "/v1/roles",
        json={
            "name": role,
            "inherits": "read_only",
            "permissions": [{"object": "contacts", "action": "create"}],
        },
        headers=tenant.headers,
    )
    assert made.status_code == 201, made.text
    user = await new_user(app_client, tenant, role=role, password=PASSWORD)
    headers = await sign_in(user_api, tenant, user["email"])
    masked = await send(
        app_client,
        headers,
        [{"op": "create", "body": {"last_name": "M", "email": "masked.person@navy.example"}}],
        path="/v1/contacts/batch",
    )
    assert masked[0]["record"]["email"] != "masked.person@navy.example"
    assert "***" in masked[0]["record"]["email"]


async def test_a_converted_lead_stays_as_it_was_and_leads_are_scored(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    rule = await app_client.post(
        "/v1/lead-scoring/rules",
        json={
            "name": "Referred",
            "points": 20,
            "condition": {"type": "field", "field": "source", "op": "eq", "value": "referral"},
        },
        headers=tenant.headers,
    )
    assert rule.status_code == 201, rule.text
    lead = await _made(app_client, tenant.headers, "/v1/leads", {"last_name": "Converted"})
    converted = await app_client.post(
        f"/v1/leads/{lead['id']}/convert", json={}, headers=tenant.headers
    )
    assert converted.status_code == 200, converted.text
    results = await send(
        app_client,
        tenant.headers,
        [
            {"op": "update", "id": lead["id"], "body": {"title": "CTO"}},
            {"op": "create", "body": {"last_name": "Referred", "source": "referral"}},
            {"op": "create", "body": {"last_name": "Direct", "status": "converted"}},
        ],
        path="/v1/leads/batch",
    )
    assert [r["status"] for r in results] == [409, 201, 422]
    problem_of(results[0], 409, "lead-converted")
    assert results[1]["record"]["score"] == 20


async def test_cases_need_a_resolution_to_close(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    results = await send(
        app_client,
        tenant.headers,
        [
            {"op": "create", "body": {"subject": "Done", "status": "closed"}},
            {"op": "create", "body": {"subject": "Done", "status": "closed", "resolution": "Ok"}},
        ],
        path="/v1/cases/batch",
    )
    assert [r["status"] for r in results] == [422, 201]
    assert problem_of(results[0], 422, "validation")["errors"][0]["loc"] == ["resolution"]
    assert results[1]["record"]["closed_at"] is not None


async def test_a_role_that_may_not_write_the_kind_is_refused(
    app_client: httpx.AsyncClient, user_api: httpx.AsyncClient, tenant: Tenant
) -> None:
    # sales_rep reads cases only: the whole batch is 403, as POST /v1/cases would be.
    rep = await new_user(app_client, tenant, role="sales_rep", password=PASSWORD)
    headers = await sign_in(user_api, tenant, rep["email"])
    resp = await post(
        app_client,
        headers,
        [{"op": "create", "body": {"subject": "No"}}],
        path="/v1/cases/batch",
    )
    problem = assert_problem(resp, 403, "forbidden")
    assert problem["object"] == "cases"
