"""Sensitive custom fields in bulk: an import seals them as any write does, and an
export gives them in clear only to a requester with pii:read (masked otherwise, and a
filter on one refused), as the list does."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.fixtures.api import Tenant
from tests.fixtures.databases import TestDatabases
from tests.fixtures.problems import assert_problem
from tests.fixtures.shard_db import superuser
from tests.transfers.helpers import (
    csv_bytes,
    csv_rows,
    every,
    exported,
    exporter_without_pii,
    imported,
    jsonl_rows,
)

pytestmark = pytest.mark.usefixtures("worker")


async def test_imported_sealed_and_exported_by_permission(
    app_client: httpx.AsyncClient,
    user_api: httpx.AsyncClient,
    tenant: Tenant,
    databases: TestDatabases,
) -> None:
    h = tenant.headers
    resp = await app_client.post(
        "/v1/objects/contacts/fields",
        json={"name": "ssn", "label": "SSN", "type": "text", "sensitive": True, "unique": True},
        headers=h,
    )
    assert resp.status_code == 201, resp.text
    ssns = [f"SSN-{i}-{uuid.uuid4().hex[:6]}" for i in range(5)]
    data = csv_bytes(["Last", "SSN"], [[f"Sealed {i}", s] for i, s in enumerate(ssns)])
    options = {"object": "contacts", "mapping": {"Last": "last_name", "SSN": "custom.ssn"}}
    done = await imported(app_client, h, options, data)
    assert (done["state"], done["created"], done["failed"]) == ("done", 5, 0), done
    async with superuser(databases, tenant.shard_id) as conn:
        stored = await conn.fetch(
            "SELECT c.custom::text AS custom, v.text_value, v.sealed_value FROM contact c "
            "JOIN custom_value v ON v.tenant_id = c.tenant_id AND v.record_id = c.id "
            "WHERE c.tenant_id = $1",
            uuid.UUID(tenant.id),
        )
    assert len(stored) == 5
    assert all(r["text_value"] is None and r["sealed_value"] in r["custom"] for r in stored)
    assert not any(s in r["custom"] for r in stored for s in ssns)
    # A second import of a value on file is refused for that row (the field is unique).
    again = await imported(
        app_client, h, options, csv_bytes(["Last", "SSN"], [["Again", ssns[0].lower()]])
    )
    assert (again["created"], again["failed"]) == (0, 1), again

    listed = await every(app_client, h, "/v1/contacts", sort="last_name")
    assert [c["custom"]["ssn"] for c in listed] == ssns
    _, out = await exported(app_client, h, object="contacts", format="jsonl", sort="last_name")
    assert jsonl_rows(out) == listed
    _, out = await exported(
        app_client, h, object="contacts", format="csv", filter=f"custom.ssn[eq]:{ssns[2]}"
    )
    assert [r["custom.ssn"] for r in csv_rows(out)] == [ssns[2]]

    reader = await exporter_without_pii(app_client, user_api, tenant)
    _, out = await exported(app_client, reader, object="contacts", format="csv")
    assert {r["custom.ssn"] for r in csv_rows(out)} == {"***"}
    resp = await app_client.post(
        "/v1/exports",
        json={"object": "contacts", "format": "csv", "filter": f"custom.ssn[eq]:{ssns[0]}"},
        headers=reader,
    )
    assert_problem(resp, 403, "forbidden")
