"""Global search over a real shard: matching (prefix, case, accents), ranking, keyset
pages, the kinds filter, record scope and roles, sealed fields through their blind
indexes, the index following writes (and their rollbacks), isolation between tenants.
Every test runs with its tenant on a plain PostgreSQL shard, then on a Citus shard
(tests/fixtures/engines.py), where a statement that would fan out fails."""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

import meridian
from meridian.crud import hooks
from meridian.errors import Conflict
from meridian.operations import rebuild_search
from meridian.search.models import KINDS
from meridian.search.service import MAX_QUERY
from meridian.settings import Settings
from tenancy.context import TenantContext
from tests.fixtures.api import Tenant
from tests.fixtures.engines import *  # noqa: F403 - search runs on both shard engines
from tests.fixtures.engines import Platform
from tests.fixtures.problems import assert_problem
from tests.fixtures.users import PASSWORD, login_api, new_user, sign_in

Headers = dict[str, str]


@pytest.fixture(scope="module")
async def user_api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An API instance with the password grant on, for user tokens."""
    async with login_api(settings) as client:
        yield client


@pytest.fixture(params=["other-shard", "same-shard"])
async def intruder(
    request: pytest.FixtureRequest, platform: Platform, tenant: Tenant, other_tenant: Tenant
) -> Tenant:
    """A tenant that must never find ``tenant``'s records: on another shard, or on the
    same shard, where only the tenant_id in every statement (and RLS) tells them apart."""
    if request.param == "other-shard":
        assert other_tenant.shard_id != tenant.shard_id
        return other_tenant
    neighbour = await platform.onboard()
    assert neighbour.shard_id == tenant.shard_id
    return neighbour


async def post(client: httpx.AsyncClient, headers: Headers, path: str, **body: Any) -> Any:
    resp = await client.post(path, json=body, headers=headers)
    assert resp.status_code == 201, resp.text
    return resp.json()


async def search(
    client: httpx.AsyncClient, headers: Headers, q: str, **params: Any
) -> dict[str, Any]:
    resp = await client.get("/v1/search", params={"q": q, **params}, headers=headers)
    assert resp.status_code == 200, resp.text
    page: dict[str, Any] = resp.json()
    return page


async def titles(client: httpx.AsyncClient, headers: Headers, q: str, **params: Any) -> list[str]:
    """Every match's title, best first, over every page."""
    seen: list[str] = []
    cursor = None
    while True:
        extra = {**params, **({"cursor": cursor} if cursor else {})}
        page = await search(client, headers, q, **extra)
        seen += [hit["title"] for hit in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen


async def test_words_match_as_prefixes_whatever_the_case_and_accents(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    jose = await post(app_client, h, "/v1/contacts", first_name="José", last_name="Müller")
    await post(app_client, h, "/v1/accounts", name="Øresund Shipping", domain="oresund.example")
    await post(app_client, h, "/v1/contacts", first_name="Anne", last_name="Brown")
    page = await search(app_client, h, "jose")
    assert [(hit["kind"], hit["id"], hit["title"]) for hit in page["data"]] == [
        ("contact", jose["id"], "José Müller")
    ]
    assert page["next_cursor"] is None
    for q in ("JOSE", "José", "jos", "MULLER", "müll", "jose mul", "  Müller   JOSÉ  "):
        assert await titles(app_client, h, q) == ["José Müller"], q
    assert await titles(app_client, h, "oresund") == ["Øresund Shipping"]
    # The subtitle (an account's domain) is searched too.
    assert await titles(app_client, h, "oresund.exam") == ["Øresund Shipping"]
    # Every word must match: a word that matches nothing empties the result.
    assert await titles(app_client, h, "jose brown") == []
    assert await titles(app_client, h, "zzzz") == []


async def test_whole_words_rank_above_prefixes_and_the_title_above_the_rest(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    await post(app_client, h, "/v1/contacts", first_name="Johnny", last_name="Walker")
    await post(app_client, h, "/v1/contacts", first_name="Jo", last_name="March")
    await post(app_client, h, "/v1/leads", first_name="Ann", last_name="Lee", company="Jo Ltd")
    await post(app_client, h, "/v1/leads", first_name="Tom", last_name="Ray", company="Jolly Co")
    await post(app_client, h, "/v1/accounts", name="Jo")
    page = await search(app_client, h, "jo")
    ranked = [(hit["title"], hit["subtitle"]) for hit in page["data"]]
    assert ranked == [
        # A whole word of the title; the shorter entry first.
        ("Jo", None),
        ("Jo March", None),
        # A whole word, of the subtitle.
        ("Ann Lee", "Jo Ltd"),
        # The start of a word of the title, then of the subtitle.
        ("Johnny Walker", None),
        ("Tom Ray", "Jolly Co"),
    ]
    ranks = [hit["rank"] for hit in page["data"]]
    assert ranks == sorted(ranks, reverse=True)
    assert [int(r) for r in ranks] == [3, 3, 2, 1, 0]


async def test_kinds_and_what_a_query_may_be(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    h = tenant.headers
    account = await post(app_client, h, "/v1/accounts", name="Vantor Industries")
    await post(app_client, h, "/v1/contacts", first_name="Vantor", last_name="Smith")
    await post(app_client, h, "/v1/leads", last_name="Vantor")
    opportunity_body = {"account_id": account["id"], "amount": 10, "currency": "EUR"}
    await post(app_client, h, "/v1/opportunities", name="Vantor renewal", **opportunity_body)
    await post(
        app_client, h, "/v1/cases", subject="Printer jam", description="Vantor's plant stopped"
    )
    every = await search(app_client, h, "vantor")
    assert sorted(hit["kind"] for hit in every["data"]) == [
        "account",
        "case",
        "contact",
        "lead",
        "opportunity",
    ]
    only = await search(app_client, h, "vantor", kinds="lead,contact")
    assert sorted(hit["kind"] for hit in only["data"]) == ["contact", "lead"]
    for params in (
        {"q": ""},
        {"q": "x" * (MAX_QUERY + 1)},
        {"q": "  "},
        {"q": "!!! ---"},
        {"q": "a\x00b"},
        {"q": "vantor", "kinds": "contact,widget"},
        {"q": "vantor", "kinds": ""},
        {"q": "vantor", "include": "everything"},
        {"q": "vantor", "limit": 0},
    ):
        resp = await app_client.get("/v1/search", params=params, headers=h)
        assert_problem(resp, 422, "validation")
    assert_problem(await app_client.get("/v1/search", headers=h), 422, "validation")
    long_query = " ".join(f"w{n}" for n in range(30))
    assert_problem(
        await app_client.get("/v1/search", params={"q": long_query}, headers=h),
        422,
        "validation",
        "at most",
    )


async def test_keyset_pages_visit_every_match_once_without_a_cap(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    made = set()
    for n in range(13):
        made.add((await post(app_client, h, "/v1/contacts", last_name=f"Pagewood {n}"))["id"])
    for n in range(6):
        made.add((await post(app_client, h, "/v1/accounts", name=f"Pagewood {n} GmbH"))["id"])
    for n in range(5):
        made.add((await post(app_client, h, "/v1/leads", last_name=f"Pagewoodson {n}"))["id"])
    seen: list[str] = []
    ranks: list[float] = []
    cursor = None
    pages = 0
    while True:
        page = await search(
            app_client, h, "pagewood", limit=4, **({"cursor": cursor} if cursor else {})
        )
        pages += 1
        assert len(page["data"]) <= 4
        seen += [hit["id"] for hit in page["data"]]
        ranks += [hit["rank"] for hit in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        # A cursor works only for the query it was issued for.
        assert_problem(
            await app_client.get(
                "/v1/search", params={"q": "pagewoo", "cursor": cursor}, headers=h
            ),
            400,
            "invalid-cursor",
        )
        assert_problem(
            await app_client.get(
                "/v1/search",
                params={"q": "pagewood", "kinds": "contact", "cursor": cursor},
                headers=h,
            ),
            400,
            "invalid-cursor",
        )
    assert pages == 6
    assert len(seen) == len(set(seen)) == len(made)
    assert set(seen) == made
    assert ranks == sorted(ranks, reverse=True)
    # The same words written otherwise are the same query: the cursor holds.
    first = await search(app_client, h, "pagewood", limit=4)
    again = await search(app_client, h, "PAGEWOOD", limit=4, cursor=first["next_cursor"])
    assert again["data"][0]["id"] == seen[4]
    for bad in ("nope", "W1tu", "WzEsImNvbnRhY3QiLCJ4IiwieCJd"):
        assert_problem(
            await app_client.get("/v1/search", params={"q": "pagewood", "cursor": bad}, headers=h),
            400,
            "invalid-cursor",
        )


async def test_record_scope_and_the_kinds_a_role_reads(
    app_client: httpx.AsyncClient, user_api: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    manager = await new_user(app_client, tenant, role="sales_manager", password=PASSWORD)
    rep = await new_user(app_client, tenant, manager_id=manager["id"], password=PASSWORD)
    peer = await new_user(app_client, tenant, password=PASSWORD)
    agent = await new_user(app_client, tenant, role="support_agent", password=PASSWORD)
    manager_h = await sign_in(user_api, tenant, manager["email"])
    rep_h = await sign_in(user_api, tenant, rep["email"])
    peer_h = await sign_in(user_api, tenant, peer["email"])
    agent_h = await sign_in(user_api, tenant, agent["email"])
    own = await post(app_client, rep_h, "/v1/leads", last_name="Quorlin Own")
    shared = await post(app_client, h, "/v1/contacts", last_name="Quorlin Shared")
    await post(app_client, h, "/v1/contacts", last_name="Quorlin Hidden")
    await post(app_client, agent_h, "/v1/cases", subject="Quorlin outage")
    share = await app_client.post(
        f"/v1/contacts/{shared['id']}/shares", json={"user_id": rep["id"]}, headers=h
    )
    assert share.status_code == 201, share.text

    assert sorted(await titles(app_client, rep_h, "quorlin")) == [
        "Quorlin Own",
        "Quorlin Shared",
    ]
    # The rep's manager sees what the rep owns, not what was shared with the rep.
    assert await titles(app_client, manager_h, "quorlin") == ["Quorlin Own"]
    assert await titles(app_client, peer_h, "quorlin") == []
    assert len(await titles(app_client, h, "quorlin")) == 4
    # A support agent reads cases, accounts and contacts but no leads: leads are not
    # searched, and asking for leads only is 403.
    assert await titles(app_client, agent_h, "quorlin") == ["Quorlin outage"]
    assert await titles(app_client, agent_h, "quorlin", kinds="lead,case") == ["Quorlin outage"]
    assert_problem(
        await app_client.get(
            "/v1/search", params={"q": "quorlin", "kinds": "lead"}, headers=agent_h
        ),
        403,
        "forbidden",
    )
    # The owner changes: the entry follows, and the scope with it.
    moved = await app_client.patch(
        f"/v1/leads/{own['id']}", json={"owner_id": peer["id"]}, headers=h
    )
    assert moved.status_code == 200, moved.text
    assert await titles(app_client, rep_h, "quorlin") == ["Quorlin Shared"]
    assert await titles(app_client, peer_h, "quorlin") == ["Quorlin Own"]


async def test_a_role_that_reads_no_searched_kind_is_refused(
    app_client: httpx.AsyncClient, user_api: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    made = await app_client.post(
        "/v1/roles",
        json={
            "name": "pipeline_viewer",
            "permissions": [{"object": "pipelines", "action": "read"}],
        },
        headers=h,
    )
    assert made.status_code == 201, made.text
    viewer = await new_user(app_client, tenant, role="pipeline_viewer", password=PASSWORD)
    viewer_h = await sign_in(user_api, tenant, viewer["email"])
    resp = await app_client.get("/v1/search", params={"q": "x"}, headers=viewer_h)
    assert_problem(resp, 403, "forbidden", "at least one of")


async def test_sealed_fields_match_exactly_through_their_blind_indexes_with_pii_read(
    app_client: httpx.AsyncClient, user_api: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers
    email = f"ada-{uuid.uuid4().hex[:8]}@Example.com"
    contact = await post(
        app_client,
        h,
        "/v1/contacts",
        first_name="Ada",
        last_name="Lovelace",
        email=email,
        phone="+44 20 7946 0958",
        tax_id="DE 811.907.980",
    )
    lead = await post(app_client, h, "/v1/leads", last_name="Byron", email=email.upper())
    account = await post(app_client, h, "/v1/accounts", name="Analytical", tax_id="811907980")
    await post(app_client, h, "/v1/contacts", last_name="Babbage", email="charles@example.com")

    page = await search(app_client, h, email.lower())
    assert sorted((hit["kind"], hit["id"]) for hit in page["data"]) == [
        ("contact", contact["id"]),
        ("lead", lead["id"]),
    ]
    assert all(hit["rank"] >= 4 for hit in page["data"])
    by_phone = await search(app_client, h, "0044 (20) 7946-0958")
    assert [hit["id"] for hit in by_phone["data"]] == [contact["id"]]
    by_tax_id = await search(app_client, h, "811 907 980")
    assert sorted(hit["id"] for hit in by_tax_id["data"]) == sorted([contact["id"], account["id"]])
    # Only the sealed value's kinds that are asked for.
    assert [h_["kind"] for h_ in (await search(app_client, h, email, kinds="lead"))["data"]] == [
        "lead"
    ]
    # Found both ways (the words of a name, the phone exactly): once, as the better.
    both = await post(app_client, h, "/v1/contacts", last_name="555 0199", phone="555 0199")
    [hit] = (await search(app_client, h, "555 0199"))["data"]
    assert (hit["id"], int(hit["rank"])) == (both["id"], 4)
    # Never in the index in clear: no part of an address finds it.
    assert (await search(app_client, h, email.split("@")[0]))["data"] == []
    assert (await search(app_client, h, "example.com"))["data"] == []

    # Without pii:read (read_only) the exact matches are skipped, silently.
    reader = await new_user(app_client, tenant, role="read_only", password=PASSWORD)
    reader_h = await sign_in(user_api, tenant, reader["email"])
    assert (await search(app_client, reader_h, email))["data"] == []
    assert (await search(app_client, reader_h, "+44 20 7946 0958"))["data"] == []
    # ...and a record it may read comes masked, as its GET shows it.
    share = await app_client.post(
        f"/v1/contacts/{contact['id']}/shares", json={"user_id": reader["id"]}, headers=h
    )
    assert share.status_code == 201, share.text
    with_record = await search(app_client, reader_h, "lovelace", include="record")
    [hit] = with_record["data"]
    shown = (await app_client.get(f"/v1/contacts/{contact['id']}", headers=reader_h)).json()
    assert hit["record"] == shown
    assert hit["record"]["email"].startswith("a***@")
    plain = await search(app_client, h, "lovelace", include="record")
    assert plain["data"][0]["record"]["email"] == email.lower()
    assert "record" not in (await search(app_client, h, "lovelace"))["data"][0]


async def _entry_written_at(platform: Platform, tenant: Tenant, record_id: str) -> Any:
    async with platform.superuser(tenant.shard_id) as conn:
        return await conn.fetchval(
            "SELECT updated_at FROM search_entry WHERE tenant_id = $1 AND record_id = $2",
            uuid.UUID(tenant.id),
            uuid.UUID(record_id),
        )


async def test_the_index_follows_updates_and_deletions(
    app_client: httpx.AsyncClient, tenant: Tenant, platform: Platform
) -> None:
    h = tenant.headers
    contact = await post(app_client, h, "/v1/contacts", first_name="Wilbur", last_name="Quade")
    path = f"/v1/contacts/{contact['id']}"
    renamed = await app_client.patch(path, json={"last_name": "Quaile"}, headers=h)
    assert renamed.status_code == 200, renamed.text
    assert await titles(app_client, h, "quade") == []
    assert await titles(app_client, h, "quaile") == ["Wilbur Quaile"]
    # A change of a field the entry does not hold leaves it alone (not even rewritten).
    written_at = await _entry_written_at(platform, tenant, contact["id"])
    phoned = await app_client.patch(path, json={"phone": "+1 415 555 0100"}, headers=h)
    assert phoned.status_code == 200, phoned.text
    assert await _entry_written_at(platform, tenant, contact["id"]) == written_at
    job = await app_client.patch(path, json={"title": "Chief Balloonist"}, headers=h)
    assert job.status_code == 200, job.text
    [hit] = (await search(app_client, h, "balloon"))["data"]
    assert (hit["title"], hit["subtitle"]) == ("Wilbur Quaile", "Chief Balloonist")
    case = await post(app_client, h, "/v1/cases", subject="Login fails")
    await app_client.patch(
        f"/v1/cases/{case['id']}", json={"description": "The SSO certificate expired"}, headers=h
    )
    assert await titles(app_client, h, "certificate") == ["Login fails"]
    assert (await app_client.delete(path, headers=h)).status_code == 204
    assert await titles(app_client, h, "quaile") == []


async def test_a_failed_write_leaves_the_index_as_it_was(
    app_client: httpx.AsyncClient, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = tenant.headers
    # A lead conversion creates the account (and its entry) before the contact, whose
    # email is on file: 409, and the whole transaction goes.
    await post(app_client, h, "/v1/contacts", last_name="Taken", email="taken@example.com")
    lead = await post(
        app_client,
        h,
        "/v1/leads",
        last_name="Yarrow",
        company="Yarrowfield Mills",
        email="taken@example.com",
    )
    resp = await app_client.post(f"/v1/leads/{lead['id']}/convert", json={}, headers=h)
    assert_problem(resp, 409, "duplicate")
    assert await titles(app_client, h, "yarrowfield", kinds="account") == []
    assert await titles(app_client, h, "yarrowfield") == ["Yarrow"]

    # A callback after search's that refuses the write: the entry written before it
    # goes with the rest.
    async def refuse(session: AsyncSession, tenant: TenantContext, written: hooks.Written) -> None:
        if written.kind == "account":
            raise Conflict("refused by a test callback")

    monkeypatch.setitem(hooks._ON_WRITE, "test.refuse", refuse)
    assert hooks.names()[-1] == "test.refuse"
    refused = await app_client.post("/v1/accounts", json={"name": "Zanzibar"}, headers=h)
    assert_problem(refused, 409, "conflict")
    monkeypatch.delitem(hooks._ON_WRITE, "test.refuse")
    assert await titles(app_client, h, "zanzibar") == []


async def test_nothing_of_another_tenant_is_found(
    app_client: httpx.AsyncClient, tenant: Tenant, intruder: Tenant
) -> None:
    email = f"only-{uuid.uuid4().hex[:8]}@tenant.example"
    await post(app_client, tenant.headers, "/v1/contacts", last_name="Xylander", email=email)
    await post(app_client, tenant.headers, "/v1/accounts", name="Xylander Holdings")
    await post(app_client, intruder.headers, "/v1/accounts", name="Xylo")
    assert len(await titles(app_client, tenant.headers, "xyl")) == 2
    assert await titles(app_client, intruder.headers, "xyl") == ["Xylo"]
    assert await titles(app_client, intruder.headers, "xylander") == []
    assert await titles(app_client, intruder.headers, email) == []
    # A cursor of one tenant is refused by another.
    for n in range(3):
        await post(app_client, tenant.headers, "/v1/accounts", name=f"Xylander {n}")
    page = await search(app_client, tenant.headers, "xylander", limit=1)
    resp = await app_client.get(
        "/v1/search",
        params={"q": "xylander", "limit": 1, "cursor": page["next_cursor"]},
        headers=intruder.headers,
    )
    assert_problem(resp, 400, "invalid-cursor")


def test_the_app_registers_the_index_callback(app_client: httpx.AsyncClient) -> None:
    assert "search" in hooks.names()


ENTRY_COLUMNS = "kind, record_id, owner_id, title, subtitle, title_words, words"
MIGRATION = (
    Path(meridian.__file__).resolve().parent.parent
    / "migrations/shard/versions/shard_0015_search.py"
)


TERM_COLUMNS = "term, kind, record_id, owner_id, in_title, entry_words"


async def _entries(platform: Platform, tenant: Tenant) -> list[tuple[Any, ...]]:
    """The tenant's entries, then its terms (as rows)."""
    async with platform.superuser(tenant.shard_id) as conn:
        entries = await conn.fetch(
            f"SELECT {ENTRY_COLUMNS} FROM search_entry WHERE tenant_id = $1 "
            "ORDER BY kind, record_id",
            uuid.UUID(tenant.id),
        )
        terms = await conn.fetch(
            f"SELECT {TERM_COLUMNS} FROM search_term WHERE tenant_id = $1 "
            "ORDER BY term, kind, record_id",
            uuid.UUID(tenant.id),
        )
    return [tuple(row) for row in entries] + [("term", *row) for row in terms]


def _migration() -> Any:
    spec = importlib.util.spec_from_file_location("shard_0015_search", MIGRATION)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_a_rebuild_and_the_migrations_backfill_give_the_entries_the_writes_gave(
    app_client: httpx.AsyncClient, tenant: Tenant, platform: Platform
) -> None:
    h = tenant.headers
    account = await post(app_client, h, "/v1/accounts", name="Ærø Færgeri", domain="aero.example")
    await post(app_client, h, "/v1/contacts", first_name="Zoë", last_name="Ørsted", title="CTO")
    await post(app_client, h, "/v1/leads", last_name="Þórsdóttir", company="Straße AG")
    opportunity_body = {"account_id": account["id"], "amount": 1, "currency": "EUR"}
    await post(app_client, h, "/v1/opportunities", name="İstanbul office", **opportunity_body)
    await post(app_client, h, "/v1/cases", subject="Crash", description="Łódź " * 400)
    written = await _entries(platform, tenant)
    assert {row[0] for row in written} == {*KINDS, "term"}
    assert await titles(app_client, h, "aero") == ["Ærø Færgeri"]
    assert await titles(app_client, h, "thorsdottir strasse") == ["Þórsdóttir"]
    assert await titles(app_client, h, "istanbul") == ["İstanbul office"]
    assert await titles(app_client, h, "lodz") == ["Crash"]

    async with platform.superuser(tenant.shard_id) as conn:
        for table in ("search_term", "search_entry"):
            await conn.execute(
                f"DELETE FROM {table} WHERE tenant_id = $1",
                uuid.UUID(tenant.id),
            )
    assert await titles(app_client, h, "aero") == []
    runtime = app_client.app.state.runtime  # type: ignore[attr-defined]
    result = await rebuild_search(runtime, tenant.slug)
    assert result["tenants"] == 1
    assert result["entries"] == len([row for row in written if row[0] != "term"])
    assert await _entries(platform, tenant) == written
    assert await titles(app_client, h, "aero") == ["Ærø Færgeri"]
    with pytest.raises(LookupError):
        await rebuild_search(runtime, f"no-such-{uuid.uuid4().hex[:8]}")

    # The migration's own copy of the definitions fills the table the same way.
    migration = _migration()
    async with platform.superuser(tenant.shard_id) as conn, conn.transaction():
        for table in ("search_term", "search_entry"):
            await conn.execute(
                f"DELETE FROM {table} WHERE tenant_id = $1",
                uuid.UUID(tenant.id),
            )
        for kind in KINDS:
            await conn.execute(
                migration._backfill(kind) + " WHERE r.tenant_id = $1", uuid.UUID(tenant.id)
            )
        await conn.execute(migration.TERMS + " AND e.tenant_id = $1", uuid.UUID(tenant.id))
    assert await _entries(platform, tenant) == written
