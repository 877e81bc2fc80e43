"""Principals without pii:read get masked values of decrypted fields, and cannot search
on them."""

from __future__ import annotations

import httpx

from tests.encryption.conftest import new_contact
from tests.fixtures.api import Tenant
from tests.roles.helpers import role_headers


async def test_read_only_role_sees_masked_fields(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    contact = await new_contact(
        app_client,
        tenant,
        email="jane.doe@example.com",
        phone="+1 415 555 1234",
        tax_id="123-45-6789",
    )
    account = await app_client.post(
        "/v1/accounts", json={"name": "Acme", "tax_id": "DE811907980"}, headers=tenant.headers
    )
    reader = await role_headers(app_client, tenant, "read_only", scope="crm:read")
    got = (await app_client.get(f"/v1/contacts/{contact['id']}", headers=reader)).json()
    assert (got["email"], got["phone"], got["tax_id"]) == (
        "j***@example.com",
        "***-***-1234",
        "*******6789",
    )
    page = (await app_client.get("/v1/contacts", headers=reader)).json()["data"]
    assert {c["tax_id"] for c in page} == {"*******6789"}
    acc = (await app_client.get(f"/v1/accounts/{account.json()['id']}", headers=reader)).json()
    assert acc["tax_id"] == "*******7980"
    # The admin client (pii:read) still sees them in clear, from the same cache entries.
    clear = (await app_client.get(f"/v1/contacts/{contact['id']}", headers=tenant.headers)).json()
    assert clear["tax_id"] == "123-45-6789"
    for field, value in (
        ("email", "jane.doe@example.com"),
        ("phone", "+14155551234"),
        ("tax_id", "123456789"),
    ):
        probe = await app_client.get("/v1/contacts", params={field: value}, headers=reader)
        assert probe.status_code == 403, probe.text
    probe = await app_client.get("/v1/accounts", params={"tax_id": "1"}, headers=reader)
    assert probe.status_code == 403
