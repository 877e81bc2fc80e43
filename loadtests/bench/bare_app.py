"""The reference endpoints: hello-world, and the SQL Meridian runs, with nothing around it.

Served by uvicorn exactly as Meridian is (uvloop, httptools, no access log, the same
worker count) and, like Meridian, with the start-up heap frozen. Configured by
environment variables, which the harness sets:

    BENCH_DSN        asyncpg DSN of the shard (the harness uses the superuser: RLS is not
                     evaluated, so this is the database's floor, not Meridian's)
    BENCH_POOL_SIZE  asyncpg pool size (the harness passes Meridian's read pool size;
                     connections are released without a reset round trip, as Meridian's are)
    BENCH_GET_SQL    Meridian's by-id SELECT, parameters ($1 tenant_id, $2 id)
    BENCH_LIST_SQL   Meridian's first-page SELECT, parameters ($1 tenant_id, $2 limit + 1)
"""

from __future__ import annotations

import base64
import gc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import asyncpg
import orjson
from fastapi import FastAPI
from starlette.responses import Response

# Meridian's collector settings (meridian.app.GC_THRESHOLDS), so the floor runs alike.
GC_THRESHOLDS = (50_000, 20, 100)


def _default(value: Any) -> Any:
    # asyncpg returns its own UUID type, which orjson does not serialise (as Meridian).
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, bytes):
        # Encrypted columns, sent as stored: the bare baseline does no decryption (the
        # crypto cost per page is measured by loadtests/crypto_bench.py).
        return base64.b64encode(value).decode()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _json(content: Any) -> Response:
    return Response(orjson.dumps(content, default=_default), media_type="application/json")


async def _reset(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's default reset (RESET ALL, UNLISTEN, ... : one more round
    trip per request), as Meridian's read pool does; these handlers leave no state behind."""


def create_app() -> FastAPI:
    dsn = os.environ["BENCH_DSN"]
    pool_size = int(os.environ.get("BENCH_POOL_SIZE", "10"))
    get_sql = os.environ["BENCH_GET_SQL"]
    list_sql = os.environ["BENCH_LIST_SQL"]
    pools: list[asyncpg.Pool] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(dsn, min_size=pool_size, max_size=pool_size, reset=_reset)
        pools.append(pool)
        gc.collect()
        gc.freeze()
        # The same collector settings as Meridian's (meridian.app): a fair floor.
        gc.set_threshold(*GC_THRESHOLDS)
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"message": "Hello, World!"}

    @app.get("/pg/contacts/{tenant_id}/{contact_id}")
    async def get_contact(tenant_id: UUID, contact_id: UUID) -> Response:
        row = await pools[0].fetchrow(get_sql, tenant_id, contact_id)
        if row is None:
            return Response(status_code=404)
        return _json(dict(row))

    @app.get("/pg/contacts/{tenant_id}")
    async def list_contacts(tenant_id: UUID, limit: int = 50) -> Response:
        rows = await pools[0].fetch(list_sql, tenant_id, limit + 1)
        return _json({"data": [dict(r) for r in rows[:limit]], "next_cursor": None})

    return app
