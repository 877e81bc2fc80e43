"""Field-encryption figures: the crypto cost of a page of 100 contacts with 3 encrypted
fields (what the read path adds over the same page in clear), and re-encryption rows
per second, CPU alone and end to end against PostgreSQL.

    .venv/bin/python -m loadtests.crypto_bench [--rows 20000] [--pages 2000]

The end-to-end part creates (and drops) its own databases on the local PostgreSQL,
migrated like ``meridian migrate``, onboards a tenant, loads ``--rows`` encrypted
contacts, rotates the tenant's key and times ``meridian.encryption.reencrypt``.
Prints a Markdown table; all numbers come from one run on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import create_async_engine

from loadtests.bench.prepare import PgServer, database_names, drop_databases, prepare
from meridian.encryption.fields import encrypt_values, open_rows, sealed
from meridian.encryption.reencrypt import _reseal, reencrypt, rotate_tenant_key
from meridian.ids import new_id
from meridian.runtime import Runtime
from tenancy.crypto import FieldCipher
from tenancy.keyring import LocalKeyProvider, TenantKeyring

PAGE = 100


def _page(cipher: FieldCipher) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The same 100 contacts as the API reads them: in clear, and as stored."""
    clear, stored = [], []
    for i in range(PAGE):
        row_id = new_id()
        plain = {"email": f"p{i}@example.com", "phone": f"+1 555 {i:07d}", "tax_id": f"{i:09d}"}
        base = {"id": row_id, "first_name": "F", "last_name": f"L{i}", "title": None, "version": 1}
        clear.append({**base, **plain})
        enc = encrypt_values(cipher, "contact", row_id, plain)
        stored.append({**base, **{f"{f}_enc": enc[f"{f}_enc"] for f in plain}})
    return clear, stored


def _median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


async def page_costs(pages: int) -> list[tuple[str, str]]:
    tenant_id = uuid.uuid4()
    cipher = FieldCipher(tenant_id, 1, os.urandom(32))
    # A keyring whose cache holds the tenant's key, as after the first request of a
    # tenant (the control plane is never asked: the engine is not connected).
    keyring = TenantKeyring(
        create_async_engine("postgresql+asyncpg://unused@127.0.0.1/unused"),
        LocalKeyProvider({"k": os.urandom(32)}, "k"),
    )
    keyring._ciphers.set((tenant_id, 1), cipher, float("inf"))
    clear, stored = _page(cipher)
    cached = [sealed(r) for r in stored]  # as read back from a JSON cache: base64 text

    def timed_sync(fn: Any) -> float:
        samples = []
        for _ in range(pages):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        return _median_us(samples)

    async def timed(rows: list[dict[str, Any]]) -> float:
        samples = []
        for _ in range(pages):
            t0 = time.perf_counter()
            await open_rows(keyring, tenant_id, "contact", rows, reveal=True)
            samples.append(time.perf_counter() - t0)
        return _median_us(samples)

    # The clear page's own handling (a copy of each row), which the API did before too.
    in_clear = timed_sync(lambda: [dict(r) for r in clear])
    from_db = await timed(stored)
    from_cache = await timed(cached)
    single = []
    for _ in range(pages * 10):
        row = stored[0]
        t0 = time.perf_counter()
        cipher.decrypt("contact", "email", row["id"], row["email_enc"])
        single.append(time.perf_counter() - t0)
    return [
        ("page of 100 in clear (row copies only)", f"{in_clear:,.0f} µs"),
        ("page of 100 x 3 fields decrypted, rows from the database", f"{from_db:,.0f} µs"),
        ("page of 100 x 3 fields decrypted, rows from a JSON cache", f"{from_cache:,.0f} µs"),
        ("crypto per page (database rows - clear)", f"{from_db - in_clear:,.0f} µs"),
        ("one AES-256-GCM field decryption", f"{_median_us(single):.2f} µs"),
    ]


def reseal_rate(rows: int) -> tuple[str, str]:
    tenant_id = uuid.uuid4()
    old = FieldCipher(tenant_id, 1, os.urandom(32))
    new = FieldCipher(tenant_id, 2, os.urandom(32))
    records = []
    for i in range(rows):
        row_id = new_id()
        plain = {"email": f"p{i}@example.com", "phone": f"+1 555 {i:07d}", "tax_id": None}
        enc = encrypt_values(old, "contact", row_id, plain)
        records.append({"id": row_id, **{f"{f}_enc": enc[f"{f}_enc"] for f in plain}})
    t0 = time.perf_counter()
    for r in records:
        _reseal("contact", r, {1: old}, new, tenant_id)  # type: ignore[arg-type]
    seconds = time.perf_counter() - t0
    return ("re-encryption, CPU only (2 fields/row)", f"{rows / seconds:,.0f} rows/s")


async def reencrypt_rate(args: argparse.Namespace) -> list[tuple[str, str]]:
    pg = PgServer(args.pg_host, args.pg_port, args.pg_user, args.app_role)
    prepared = await prepare(pg, prefix=args.db_prefix, contacts=args.rows, redis_url=args.redis)
    try:
        rt = await Runtime.start(prepared.settings)
        try:
            tenant = prepared.tenants[0]
            ctx = await rt.directory.load(tenant.id)
            assert ctx is not None
            await rotate_tenant_key(rt, ctx.tenant_id, propagation=0)
            result = await reencrypt(rt, ctx, batch_size=args.batch)
        finally:
            await rt.stop()
    finally:
        if not args.keep_databases:
            await drop_databases(pg, list(database_names(args.db_prefix).values()))
    rows = result.rows.get("contact", 0)
    return [
        (
            f"re-encryption end to end ({rows:,} contacts, batches of {args.batch})",
            f"{rows / result.seconds:,.0f} rows/s",
        )
    ]


async def main_async(args: argparse.Namespace) -> None:
    figures = await page_costs(args.pages)
    figures.append(reseal_rate(args.rows))
    if not args.cpu_only:
        figures += await reencrypt_rate(args)
    print("| measurement | result |")
    print("|---|---|")
    for name, value in figures:
        print(f"| {name} | {value} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pages", type=int, default=2000, help="pages timed (median reported)")
    p.add_argument("--rows", type=int, default=20_000, help="rows re-encrypted")
    p.add_argument("--batch", type=int, default=500, help="re-encryption batch size")
    p.add_argument("--cpu-only", action="store_true", help="skip the database part")
    p.add_argument("--db-prefix", default="cryptobench")
    p.add_argument("--keep-databases", action="store_true")
    p.add_argument("--pg-host", default=os.environ.get("MERIDIAN_TEST_PG_HOST", "127.0.0.1"))
    p.add_argument(
        "--pg-port", type=int, default=int(os.environ.get("MERIDIAN_TEST_PG_PORT", "5432"))
    )
    p.add_argument("--pg-user", default=os.environ.get("MERIDIAN_TEST_PG_USER", "postgres"))
    p.add_argument("--app-role", default="meridian_app")
    p.add_argument("--redis", default=os.environ.get("MERIDIAN_TEST_REDIS_URL"))
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
