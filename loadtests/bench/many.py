"""The many-tenants case: Meridian's uncached by-id read spread evenly over N tenants
(say 10, 1,000 and 10,000), each N measured on the same server, so the ratio to the
smallest N shows what serving many tenants at once costs per request: the per-tenant
state a request needs besides its row (directory entry, not-before time, verified token,
enforcer) must stay in memory however many tenants take turns.

The tenants are seeded in bulk by ``loadtests.seed`` (the API's onboarding, rows
inserted per tenant in one statement), with a few contacts each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

import asyncpg
import httpx

from loadtests.bench.prepare import PgServer, Prepared
from loadtests.bench.report import Case, Ratio
from loadtests.seed import seed

PREFIX = "many"
# Entries of the wrk script at most (each carries a ~1 KB token): past this, the larger
# N cycle through fewer contacts per tenant, never through fewer tenants.
MAX_REQUESTS = 20_000


def parse_counts(text: str) -> list[int]:
    """``"10,1000,10000"`` → ``[10, 1000, 10000]`` (sorted, distinct, positive)."""
    counts = sorted({int(part) for part in text.split(",") if part.strip()})
    if any(n < 1 for n in counts):
        raise ValueError("tenant counts must be positive")
    return counts


def case_key(n: int) -> str:
    return f"many_{n}"


def many_cases(counts: Sequence[int]) -> list[Case]:
    return [
        Case(
            case_key(n),
            f"`GET /v1/contacts/{{id}}`, cache off, spread over {n:,} tenants",
            "Meridian",
        )
        for n in counts
    ]


def many_ratios(counts: Sequence[int]) -> list[Ratio]:
    """Each N against the smallest: throughput and median latency."""
    if len(counts) < 2:
        return []
    base = counts[0]
    ratios = []
    for n in counts[1:]:
        ratios.append(
            Ratio(f"{n:,} tenants / {base:,} tenants (req/s)", case_key(n), case_key(base), "rps")
        )
        ratios.append(
            Ratio(f"{n:,} tenants / {base:,} tenants (p50)", case_key(n), case_key(base), "p50")
        )
    return ratios


@dataclass(frozen=True, slots=True)
class ManyTenant:
    id: UUID
    client_id: str
    client_secret: str
    contact_ids: list[UUID]


async def seed_many(
    pg: PgServer, prepared: Prepared, *, tenants: int, contacts: int
) -> tuple[list[ManyTenant], float]:
    """Seed ``tenants`` tenants (``contacts`` contacts each) on the benchmark's platform;
    returns them with their contacts' ids, and the seconds seeding took."""
    settings = prepared.settings
    # The shards' default capacity (1,000 tenants) would stop placement early.
    roomy = [s.model_copy(update={"capacity": max(s.capacity, tenants)}) for s in settings.shards]
    result = await seed(
        settings.model_copy(update={"shards": roomy}),
        tenants=tenants,
        contacts=contacts,
        prefix=PREFIX,
        out=None,
        progress=True,
    )
    ids: dict[UUID, list[UUID]] = {t.id: [] for t in result.tenants}
    for shard_id in {t.shard_id for t in result.tenants}:
        conn = await asyncpg.connect(pg.raw(prepared.databases[shard_id]))
        try:
            rows = await conn.fetch(
                "SELECT tenant_id, id FROM contact WHERE tenant_id = ANY($1::uuid[]) "
                "ORDER BY tenant_id, id",
                [t.id for t in result.tenants if t.shard_id == shard_id],
            )
            await conn.execute("ANALYZE contact")
        finally:
            await conn.close()
        for row in rows:
            ids[row["tenant_id"]].append(row["id"])
    seeded = [ManyTenant(t.id, t.client_id, t.client_secret, ids[t.id]) for t in result.tenants]
    return seeded, result.seconds


async def fetch_tokens(
    base_url: str, tenants: Sequence[ManyTenant], *, concurrency: int = 16
) -> list[str]:
    """A client-credentials token per tenant from the server under test."""
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:

        async def token(t: ManyTenant) -> str:
            async with gate:
                resp = await client.post(
                    "/oauth/token",
                    data={"grant_type": "client_credentials"},
                    auth=(t.client_id, t.client_secret),
                )
            resp.raise_for_status()
            value: str = resp.json()["access_token"]
            return value

        return list(await asyncio.gather(*(token(t) for t in tenants)))


async def prime(base_url: str, requests: Sequence[tuple[str, str | None]], n: int) -> None:
    """One read per tenant before the measurement: the case measures many tenants taking
    turns, not each tenant's first request (its enforcer built, its key unwrapped)."""
    gate = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:

        async def read(path: str, token: str | None) -> None:
            async with gate:
                resp = await client.get(path, headers={"Authorization": f"Bearer {token}"})
            resp.raise_for_status()

        await asyncio.gather(*(read(path, token) for path, token in requests[:n]))


def many_requests(
    tenants: Sequence[ManyTenant], tokens: Sequence[str], n: int
) -> list[tuple[str, str | None]]:
    """By-id reads over the first ``n`` tenants in turn (tenant j % n), each tenant's
    contacts one after the other: every tenant is read equally often."""
    chosen = [t for t in tenants[:n] if t.contact_ids]
    if len(chosen) < n:
        raise ValueError(f"only {len(chosen)} seeded tenants with contacts, {n} wanted")
    per_tenant = max(len(t.contact_ids) for t in chosen)
    total = min(n * per_tenant, max(n, MAX_REQUESTS))
    out = []
    for j in range(total):
        i = j % n
        contacts = chosen[i].contact_ids
        out.append((f"/v1/contacts/{contacts[(j // n) % len(contacts)]}", tokens[i]))
    return out
