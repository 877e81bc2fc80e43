"""Actors with a given role: OAuth clients of the tenant created with that role, their
tokens issued by the real token endpoint (client tokens carry the client's role)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import httpx

from meridian.oauth.clients import create_client
from tests.fixtures.api import Tenant, token_for


async def role_headers(
    client: httpx.AsyncClient,
    tenant: Tenant,
    role: str,
    scope: str = "crm:read crm:write",
) -> dict[str, str]:
    runtime: Any = client.app.state.runtime  # type: ignore[attr-defined]
    async with runtime.control.begin() as conn:
        made = await create_client(
            conn, name=f"{role} client", scope=scope, tenant_id=UUID(tenant.id), role=role
        )
    token = await token_for(client, made.client_id, made.client_secret)
    return {"Authorization": f"Bearer {token}"}


def permissions(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"object": o, "action": a} for o, a in pairs]


def as_pairs(items: list[dict[str, str]]) -> set[tuple[str, str]]:
    return {(p["object"], p["action"]) for p in items}
