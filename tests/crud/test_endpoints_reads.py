"""The read flow of ``meridian.crud.endpoints`` (``by_id``, ``read``), and where a by-id
read's strategy is chosen (``ShardRouter.read_strategy`` for the shard,
``by_id_strategy`` for the read)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest

from meridian.accounts.repository import AccountRepository
from meridian.contacts.repository import ContactRepository
from meridian.crud import endpoints
from meridian.crud.repository import TenantRepository
from meridian.deps import TenantAccess
from meridian.pipelines.repository import PipelineRepository
from meridian.runtime import Runtime
from sharding.engine import ReadStrategy, ShardEngine
from sharding.engines import ShardEngines, ShardInfo
from sharding.router import ShardRouter
from tests.fixtures.api import Tenant

# A topology without shards: "s1" is unknown, so it reads as plain PostgreSQL does.
NO_ENGINES = ShardEngines([])


def access_on(router: Any, *, user_id: uuid.UUID | None = None, sees_all: bool = True) -> Any:
    return SimpleNamespace(
        runtime=SimpleNamespace(router=router, refresh_tenant=None),
        tenant=SimpleNamespace(tenant_id=uuid.uuid4(), shard_id="s1"),
        actor=SimpleNamespace(user_id=user_id, role="r"),
        can=lambda obj, act: sees_all,
    )


def test_a_shard_reads_in_one_statement_unless_configured_otherwise() -> None:
    assert ShardRouter(NO_ENGINES).read_strategy("s1") is ReadStrategy.ONE_STATEMENT
    router = ShardRouter(NO_ENGINES, one_statement_reads=False)
    assert router.read_strategy("s1") is ReadStrategy.TRANSACTION


@pytest.mark.parametrize("one_statement_reads", [True, False])
def test_the_read_strategy_follows_the_shards_engine(one_statement_reads: bool) -> None:
    engines = ShardEngines(
        [
            ShardInfo("pg-1", "us", "dsn"),
            ShardInfo("citus-1", "us", "dsn", engine=ShardEngine.CITUS),
        ]
    )
    router = ShardRouter(engines, one_statement_reads=one_statement_reads)
    # A Citus shard reads in a transaction whatever the deployment says; a PostgreSQL
    # one as the deployment says.
    assert router.read_strategy("citus-1") is ReadStrategy.TRANSACTION
    expected = ReadStrategy.ONE_STATEMENT if one_statement_reads else ReadStrategy.TRANSACTION
    assert router.read_strategy("pg-1") is expected


@pytest.mark.parametrize(
    ("repo", "viewer", "one_statement_shard", "expected"),
    [
        # The row alone, nobody's scope: the shard decides.
        (ContactRepository, None, True, ReadStrategy.ONE_STATEMENT),
        (ContactRepository, None, False, ReadStrategy.TRANSACTION),
        # A viewer's scope is a query of its own, in a transaction whatever the shard.
        (ContactRepository, uuid.uuid4(), True, ReadStrategy.TRANSACTION),
        # A pipeline is read with its stages: several statements.
        (PipelineRepository, None, True, ReadStrategy.TRANSACTION),
    ],
)
def test_the_by_id_strategy(
    repo: type[TenantRepository[Any]],
    viewer: uuid.UUID | None,
    one_statement_shard: bool,
    expected: ReadStrategy,
) -> None:
    router = ShardRouter(NO_ENGINES, one_statement_reads=one_statement_shard)
    access = cast(TenantAccess, access_on(router))
    assert endpoints.by_id_strategy(access, repo, viewer) is expected


class SpyRouter:
    def __init__(self, strategy: ReadStrategy) -> None:
        self.strategy = strategy
        self.calls: list[str] = []

    def read_strategy(self, shard_id: str) -> ReadStrategy:
        return self.strategy

    # The real dispatch, over the spied read_strategy, read_one and reader.
    read_row = ShardRouter.read_row

    async def read_one(self, tenant: Any, sql: str, args: Any, *, on_stale: Any) -> Any:
        self.calls.append("read_one")
        return {"id": args[0]}

    @asynccontextmanager
    async def reader(self, tenant: Any, *, on_stale: Any) -> AsyncIterator[Any]:
        self.calls.append("reader")
        yield "conn"


async def test_by_id_runs_the_chosen_strategy(monkeypatch: pytest.MonkeyPatch) -> None:
    record_id = uuid.uuid4()

    async def fetch_visible(conn: Any, tenant_id: Any, rid: Any, viewer: Any) -> Any:
        assert conn == "conn"
        return {"id": rid, "via": "transaction"}

    monkeypatch.setattr(AccountRepository, "fetch_visible", fetch_visible)
    one = SpyRouter(ReadStrategy.ONE_STATEMENT)
    found = await endpoints.by_id(cast(TenantAccess, access_on(one)), AccountRepository, record_id)
    assert (found, one.calls) == ({"id": record_id}, ["read_one"])
    tx = SpyRouter(ReadStrategy.TRANSACTION)
    found = await endpoints.by_id(cast(TenantAccess, access_on(tx)), AccountRepository, record_id)
    assert (found, tx.calls) == ({"id": record_id, "via": "transaction"}, ["reader"])
    # A viewer whose scope applies never takes the one-statement form.
    scoped = SpyRouter(ReadStrategy.ONE_STATEMENT)
    access = access_on(scoped, user_id=uuid.uuid4(), sees_all=False)
    await endpoints.by_id(cast(TenantAccess, access), AccountRepository, record_id)
    assert scoped.calls == ["reader"]


async def test_both_strategies_answer_alike_over_http(
    app_client: httpx.AsyncClient,
    tenant: Tenant,
    other_tenant: Tenant,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime: Runtime = app_client.app.state.runtime  # type: ignore[attr-defined]
    router = runtime.router
    for one_statement in (True, False):
        monkeypatch.setattr(router, "one_statement_reads", one_statement)
        created = await app_client.post(
            "/v1/accounts", json={"name": f"Acme {one_statement}"}, headers=tenant.headers
        )
        assert created.status_code == 201, created.text
        account = created.json()
        got = await app_client.get(f"/v1/accounts/{account['id']}", headers=tenant.headers)
        assert got.status_code == 200
        assert got.json() == account
        assert got.headers["etag"] == created.headers["etag"]
        # Another tenant's record and an unknown id are the same 404.
        other = await app_client.get(f"/v1/accounts/{account['id']}", headers=other_tenant.headers)
        missing = await app_client.get(f"/v1/accounts/{uuid.uuid4()}", headers=tenant.headers)
        assert other.status_code == missing.status_code == 404
