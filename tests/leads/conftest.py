"""Fixtures of the lead tests."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.fixtures.api import Tenant, onboard

__all__ = ["intruder"]


@pytest.fixture(params=["other-shard", "same-shard"])
async def intruder(
    request: pytest.FixtureRequest,
    app_client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    tenant: Tenant,
    other_tenant: Tenant,
) -> Tenant:
    """A tenant that must never see ``tenant``'s data: on another shard, or on the same
    shard, where only the tenant_id in every statement (and RLS) tells them apart."""
    if request.param == "other-shard":
        assert other_tenant.shard_id != tenant.shard_id
        return other_tenant
    neighbour = await onboard(
        app_client, admin_headers, region="us", slug=f"n-{uuid.uuid4().hex[:12]}"
    )
    assert neighbour.shard_id == tenant.shard_id
    return neighbour
