"""``python -m loadtests.bench.search``: global search over one large tenant.

Private databases on the local PostgreSQL (a control plane and two shards, migrated as
``meridian migrate`` does, one tenant per shard onboarded through the admin API;
dropped at the end unless ``--keep-databases``). One tenant gets ``--records`` records
(default 1,000,000: 10 % accounts, 40 % contacts, 20 % leads, 20 % opportunities, 10 %
cases) written straight into its shard with ``generate_series`` (names drawn from lists
of first and last names, some accented, the frequent ones more often; company names
from syllables; job titles, products and case subjects from short lists), owned by
``--owners`` users made through the API (one of them a sales rep without reports).
Its search index is then built by ``meridian search rebuild``'s own code (the app role,
one transaction) and analysed.

Then, for each query (a common prefix, a whole common word, a rare word, two words, an
accented word typed without its accent, no match, a single letter), the latency of:

- the repository's SQL (``repository.terms`` and ``search_page``, as the endpoint runs
  them), in a read transaction of the tenant on the API's own read pool (its
  connections use generic plans): the tenant's client (no record scope) and the rep
  (record scope);
- ``GET /v1/search?q=…`` on the ASGI app in this process (no sockets), client token.

Prints p50/p95/p99 in ms per query, the number of matches, and the sizes of the table
and its indexes. First (``--write-rounds``, before the records are loaded), what the
index costs a write: ``POST /v1/contacts`` on the ASGI app in process, in rounds that
alternate the app as it is and the app with the index's on-write callback taken out
(in this process only), as ``loadtests.bench.events`` measures the outbox; for the
second tenant (the other shard), so the searched one holds the loaded records only.
Takes 6 to 10 minutes at 1,000,000 records on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import asyncpg
import httpx

from loadtests.bench.prepare import ISSUER, PgServer, drop_databases, prepare
from meridian.app import create_app
from meridian.crud import hooks
from meridian.operations import rebuild_search
from meridian.runtime import Runtime
from meridian.search import repository
from meridian.search.models import KINDS
from meridian.settings import Settings


def _list(text: str, sep: str | None = None) -> list[str]:
    return text.split(sep)


FIRST_NAMES = _list(
    "James Mary John Patricia Robert Jennifer Michael Linda William Elizabeth David Barbara "
    "Richard Susan Joseph Jessica Thomas Sarah Charles Karen Christopher Nancy Daniel Lisa "
    "Matthew Betty Anthony Margaret Mark Sandra Donald Ashley Steven Kimberly Paul Emily "
    "Andrew Donna Joshua Michelle Kenneth Carol Kevin Amanda Brian Melissa George Deborah "
    "Timothy Stephanie Ronald Rebecca Jason Sharon Edward Laura Jeffrey Cynthia Ryan Amy "
    "Jacob Angela Gary Helen Nicholas Anna Eric Brenda Jonathan Pamela Stephen Nicole "
    "Larry Emma Justin Samantha Scott Katherine Brandon Christine Benjamin Debra Samuel "
    "Rachel Gregory Carolyn Alexander Janet Frank Catherine Patrick Maria Raymond Heather "
    "José Zoë François Jürgen Søren Łukasz Renée Chloé Joël Inés Ana Luis Carlos Sofía "
    "Mateo Noah Olivia Liam Ava Wei Yuki Hiroshi Priya Arjun Fatima Omar Ingrid Lars "
    "Astrid Björn Ångström Dagný Þóra Mária Ζωή"
)
LAST_NAMES = _list(
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez "
    "Lopez Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson "
    "White Harris Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott "
    "Torres Nguyen Hill Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell "
    "Carter Roberts Gomez Phillips Evans Turner Diaz Parker Cruz Edwards Collins Reyes "
    "Stewart Morris Morales Murphy Cook Rogers Gutierrez Ortiz Morgan Cooper Peterson "
    "Bailey Reed Kelly Howard Ramos Kim Cox Ward Richardson Watson Brooks Chavez Wood "
    "James Bennett Gray Mendoza Ruiz Hughes Price Alvarez Castillo Sanders Patel Myers "
    "Long Ross Foster Jimenez Müller Schröder Dvořák Núñez Østergaard Kowalski Nakamura "
    "Chen Singh O'Brien Dubois Lefèvre Rossi Bianchi Andersson Johansson Novak Weiß Łopata "
    "Ibáñez Çelik Şahin Göransson Fjørtoft Kjærgaard Quillfeather Zyborski Vantongerloo"
)
SYLLABLES = _list(
    "ac bel cor dan el fin gar hal ix jor kel lum mar nor ol pra quin ros sol tur ul ven "
    "wes xan yor zen bra cru dex fal gen hex io kor lyn mex nex orb pix qua rex syn"
)
COMPANY_SUFFIXES = ["Inc", "Labs", "GmbH", "Systems", "Group", "Ltd", "AG", "SA", "Partners"]
JOB_TITLES = _list(
    "CEO|CTO|CFO|COO|VP Sales|VP Engineering|Buyer|Director of Purchasing|Engineer|"
    "Head of IT|Office Manager|Procurement Lead|Product Manager|Analyst|Consultant",
    "|",
)
PRODUCTS = _list(
    "platform licence|support renewal|pilot|expansion|training|consulting|hardware refresh|"
    "cloud migration|security audit|annual subscription",
    "|",
)
CASE_SUBJECTS = _list(
    "Invoice shows the wrong VAT rate|Cannot log in|Export to CSV fails|Slow dashboard|"
    "Password reset email not received|Duplicate charge|Integration sync stopped|"
    "Report totals do not match|Mobile app crashes on start|Need a new user seat",
    "|",
)
# Each kind's share of the records.
SHARES = {"account": 0.10, "contact": 0.40, "lead": 0.20, "opportunity": 0.20, "case": 0.10}
QUERIES = {
    "common prefix (jo)": "jo",
    "common word (smith)": "smith",
    "rare word (quillfeather)": "quillfeather",
    "two words (maria garc)": "maria garc",
    "no accent typed (jose)": "jose",
    "no match (zzyzx)": "zzyzx",
    "one letter (m)": "m",
}

# A deterministic pick in [0, n) per row and salt; ``skew`` > 1 makes low indexes
# (the first names of a list) more frequent, as real names are.
PICK = (
    "floor({n} * power(((hashint8(i::bigint * 7919 + {salt}) & 2147483647)::float8"
    " / 2147483648), {skew}))::int"
)


def _array(values: list[str], type_: str = "text") -> str:
    """A constant array of this file's lists (or of the owners' ids)."""
    quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
    return f"ARRAY[{quoted}]::{type_}[]"


def pick(values: list[str], salt: int, skew: float = 1.0) -> str:
    index = PICK.format(n=len(values), salt=salt, skew=skew)
    return f"({_array(values)})[1 + {index}]"


async def load_records(url: str, tenant_id: UUID, owners: list[UUID], total: int) -> dict[str, int]:
    """``total`` records of the tenant, inserted as the superuser (RLS bypassed)."""
    counts = {kind: int(total * share) for kind, share in SHARES.items()}
    counts["contact"] += total - sum(counts.values())
    syllable = [pick(SYLLABLES, salt) for salt in (11, 12, 13)]
    company = f"initcap({' || '.join(syllable)}) || ' ' || {pick(COMPANY_SUFFIXES, 14)}"
    ids = _array([str(o) for o in owners], "uuid")
    owner = f"({ids})[1 + (hashint8(i::bigint * 31 + 5) & 2147483647) % {len(owners)}]"
    first, last = pick(FIRST_NAMES, 1, 2.0), pick(LAST_NAMES, 2, 2.5)
    title = pick(JOB_TITLES, 3)
    subject = pick(CASE_SUBJECTS, 31)
    description = (
        f"'Reported by ' || {pick(FIRST_NAMES, 32, 2.0)} || ' ' || {pick(LAST_NAMES, 33, 2.5)}"
        f" || ': ' || {pick(CASE_SUBJECTS, 34)} || ' since the last update.'"
    )
    # The kinds' statements: $1 the tenant, $2 how many.
    statements = {
        "account": f"""
INSERT INTO account (tenant_id, id, name, domain, owner_id)
SELECT $1, gen_random_uuid(), c.name, lower(replace(c.name, ' ', '')) || '.example', {owner}
  FROM generate_series(1, $2) i, LATERAL (SELECT {company} AS name) c""",  # noqa: S608
        "contact": f"""
INSERT INTO contact (tenant_id, id, first_name, last_name, title, owner_id)
SELECT $1, gen_random_uuid(), {first}, {last}, {title}, {owner}
  FROM generate_series(1, $2) i""",  # noqa: S608
        "lead": f"""
INSERT INTO lead (tenant_id, id, first_name, last_name, company, title, owner_id)
SELECT $1, gen_random_uuid(), {first}, {last}, {company}, {title}, {owner}
  FROM generate_series(1, $2) i""",  # noqa: S608
        "case": f"""
INSERT INTO "case" (tenant_id, id, subject, description, due_at, owner_id)
SELECT $1, gen_random_uuid(), {subject}, {description}, now() + interval '3 days', {owner}
  FROM generate_series(1, $2) i""",  # noqa: S608
    }
    conn = await asyncpg.connect(url)
    try:
        for kind in ("account", "contact", "lead", "case"):
            await conn.execute(statements[kind], tenant_id, counts[kind])
        stage = await conn.fetchrow(
            "SELECT s.pipeline_id, s.id FROM pipeline_stage s JOIN pipeline p"
            " ON p.tenant_id = s.tenant_id AND p.id = s.pipeline_id"
            " WHERE s.tenant_id = $1 AND p.is_default ORDER BY s.position LIMIT 1",
            tenant_id,
        )
        assert stage is not None
        await conn.execute(
            "CREATE TEMP TABLE bench_accounts AS SELECT row_number() OVER () AS n, id, name"
            " FROM account WHERE tenant_id = $1",
            tenant_id,
        )
        await conn.execute(
            f"""
INSERT INTO opportunity (tenant_id, id, account_id, name, amount, currency, pipeline_id,
                         stage_id, owner_id)
SELECT $1, gen_random_uuid(), a.id, a.name || ': ' || {pick(PRODUCTS, 21)},
       (hashint8(i::bigint) & 65535) * 10, 'USD', $3, $4, {owner}
  FROM generate_series(1, $2) i
  JOIN bench_accounts a ON a.n = 1 + (hashint8(i::bigint * 13 + 7) & 2147483647) % $5""",  # noqa: S608
            tenant_id,
            counts["opportunity"],
            stage["pipeline_id"],
            stage["id"],
            counts["account"],
        )
        for table in ("account", "contact", "lead", "opportunity", '"case"'):
            await conn.execute(f"ANALYZE {table}")
    finally:
        await conn.close()
    return counts


async def write_cost(
    client: httpx.AsyncClient, headers: dict[str, str], rounds: int, creates: int
) -> dict[str, list[float]]:
    """µs per create, per round, with and without the index's callback."""
    body = {"first_name": "José", "last_name": "Müller", "title": "CTO"}

    async def create_many(n: int) -> None:
        for _ in range(n):
            resp = await client.post("/v1/contacts", json=body, headers=headers)
            assert resp.status_code == 201, resp.text

    await create_many(100)  # warm: pools, statement caches, the policy
    keep_entry = hooks._ON_WRITE["search"]
    runs: dict[str, list[float]] = {"with the index": [], "without": []}
    for _ in range(rounds):
        for name, times in runs.items():
            if name == "without":
                del hooks._ON_WRITE["search"]
            try:
                start = time.perf_counter()
                await create_many(creates)
                times.append((time.perf_counter() - start) / creates * 1e6)
            finally:
                hooks._ON_WRITE["search"] = keep_entry
    return runs


def percentiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return at(0.50), at(0.95), at(0.99)


async def timed(run: Callable[[], Awaitable[Any]], runs: int) -> tuple[list[float], Any]:
    result = await run()  # warm: plans, pages in cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = await run()
        times.append(time.perf_counter() - start)
    return times, result


async def sql_search(
    rt: Runtime, tenant_id: UUID, viewer: UUID | None, q: str, limit: int
) -> list[Any]:
    """The endpoint's SQL in one read transaction of the tenant (its read pool)."""
    ctx = await rt.directory.resolve(tenant_id)
    assert ctx is not None
    async with rt.router.reader(ctx) as conn:
        words = await repository.terms(conn, q)
        return await repository.search_page(
            conn,
            tenant_id,
            viewer,
            kinds=KINDS,
            words=words,
            identifiers={},
            after=repository.Position(),
            rows=limit + 1,
        )


async def count_matches(url: str, tenant_id: UUID, q: str) -> int:
    """The records that have every word of ``q`` as a word or a word's start."""
    conn = await asyncpg.connect(url)
    try:
        words = await repository.terms(conn, q)
        found: int = await conn.fetchval(
            """
            SELECT count(*) FROM (
              SELECT t.kind, t.record_id
                FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS w(word, upper, n)
                JOIN search_term t
                  ON t.tenant_id = $1 AND t.term >= w.word AND t.term < w.upper
               GROUP BY t.kind, t.record_id HAVING count(DISTINCT w.n) = $4) m
            """,
            tenant_id,
            words,
            [repository.upper_bound(word) for word in words],
            len(words),
        )
        return found
    finally:
        await conn.close()


async def sizes(url: str) -> dict[str, str]:
    """The index's tables: rows, heap and primary key sizes."""
    conn = await asyncpg.connect(url)
    try:
        out = {}
        for table in ("search_entry", "search_term"):
            row = await conn.fetchrow(
                f"""
                SELECT (SELECT count(*) FROM {table}) AS rows,
                       pg_size_pretty(pg_table_size('{table}')) AS heap,
                       pg_size_pretty(pg_relation_size('pk_{table}')) AS primary_key,
                       pg_size_pretty(pg_total_relation_size('{table}')) AS total
                """  # noqa: S608 - the two tables' names
            )
            assert row is not None
            out[table] = (
                f"{row['rows']:,} rows, {row['total']} ({row['heap']} table incl. TOAST, "
                f"{row['primary_key']} primary key)"
            )
        return out
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> None:
    pg = PgServer(args.pg_host, args.pg_port, args.pg_user, "meridian_app")
    started = time.perf_counter()
    prepared = await prepare(pg, prefix=args.db_prefix, contacts=0, redis_url=None)
    settings: Settings = prepared.settings.model_copy(update={"password_grant": True})
    tenant = prepared.tenants[0]
    url = pg.raw(prepared.databases[tenant.shard_id])
    try:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as client:
                h = {"Authorization": f"Bearer {tenant.token}"}
                owners = []
                for n in range(args.owners):
                    body = {
                        "email": f"owner{n}@bench.example",
                        "name": f"Owner {n}",
                        "role": "sales_rep",
                        "password": "bench password 123",
                    }
                    resp = await client.post("/v1/users", json=body, headers=h)
                    resp.raise_for_status()
                    owners.append(UUID(resp.json()["id"]))
                rep = owners[0]
                other = {"Authorization": f"Bearer {prepared.tenants[1].token}"}
                writes = (
                    await write_cost(client, other, args.write_rounds, args.write_creates)
                    if args.write_rounds
                    else None
                )
                t0 = time.perf_counter()
                counts = await load_records(url, tenant.id, owners, args.records)
                loaded = time.perf_counter() - t0
                rt: Runtime = app.state.runtime
                t0 = time.perf_counter()
                rebuilt = await rebuild_search(rt, str(tenant.id))
                indexed = time.perf_counter() - t0
                conn = await asyncpg.connect(url)
                try:
                    # What autovacuum would do soon after: statistics for the planner, and
                    # the visibility map that lets a search read the terms' index alone.
                    await conn.execute("VACUUM ANALYZE search_entry")
                    await conn.execute("VACUUM ANALYZE search_term")
                finally:
                    await conn.close()
                print(
                    f"## Search: {args.records:,} records in one tenant "
                    f"({', '.join(f'{k} {v:,}' for k, v in counts.items())})\n"
                )
                if writes is not None:
                    with_index, without = writes["with the index"], writes["without"]
                    best = min(with_index) - min(without)
                    median = statistics.median(with_index) - statistics.median(without)
                    print(
                        f"- the index's cost on POST /v1/contacts ({args.write_rounds} rounds "
                        f"of {args.write_creates}): best {min(with_index):.0f} vs "
                        f"{min(without):.0f} µs per create ({best:+.0f} µs, "
                        f"{min(with_index) / min(without) - 1:+.0%}), median "
                        f"{statistics.median(with_index):.0f} vs "
                        f"{statistics.median(without):.0f} µs ({median:+.0f} µs)"
                    )
                print(f"- records loaded with SQL in {loaded:.1f} s")
                print(
                    f"- index built by `meridian search rebuild`'s code in {indexed:.1f} s "
                    f"({rebuilt['entries']:,} entries, one transaction)"
                )
                for table, size in (await sizes(url)).items():
                    print(f"- `{table}`: {size}")
                print()
                rep_column = f"SQL, sales rep (1 of {args.owners} owners)"
                print(
                    f"| query | matches | SQL, client p50 / p95 / p99 ms | {rep_column} "
                    "p50 / p95 / p99 ms | API, client p50 / p95 / p99 ms |"
                )
                print("|---|---:|---|---|---|")
                for name, q in QUERIES.items():
                    matches = await count_matches(url, tenant.id, q)

                    async def as_client(q: str = q) -> list[Any]:
                        return await sql_search(rt, tenant.id, None, q, args.limit)

                    async def as_rep(q: str = q) -> list[Any]:
                        return await sql_search(rt, tenant.id, rep, q, args.limit)

                    unscoped, _ = await timed(as_client, args.runs)
                    scoped, _ = await timed(as_rep, args.runs)

                    async def api(q: str = q) -> int:
                        resp = await client.get(
                            "/v1/search", params={"q": q, "limit": args.limit}, headers=h
                        )
                        assert resp.status_code == 200, resp.text
                        return len(resp.json()["data"])

                    through_api, _ = await timed(api, args.api_runs)
                    cells = [
                        " / ".join(f"{v:.1f}" for v in percentiles(t))
                        for t in (unscoped, scoped, through_api)
                    ]
                    print(f"| {name} | {matches:,} | {' | '.join(cells)} |")
        print(
            f"\n(limit {args.limit}; {args.runs} SQL runs and {args.api_runs} API runs per "
            f"query after one warm-up; run took {time.perf_counter() - started:.0f} s)"
        )
    finally:
        if not args.keep_databases:
            await drop_databases(pg, list(prepared.databases.values()))


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.search", description=__doc__)
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-user", default="postgres")
    parser.add_argument("--db-prefix", default="bench_search")
    parser.add_argument("--keep-databases", action="store_true")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--owners", type=int, default=20, help="users the records belong to")
    parser.add_argument("--limit", type=int, default=50, help="page size")
    parser.add_argument("--runs", type=int, default=40, help="SQL runs per query")
    parser.add_argument("--api-runs", type=int, default=20, help="API runs per query")
    parser.add_argument(
        "--write-rounds", type=int, default=6, help="rounds of the write cost (0: skip it)"
    )
    parser.add_argument("--write-creates", type=int, default=150, help="creates per round")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
