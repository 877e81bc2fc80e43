"""``Idempotency-Key`` for POST: a retry returns the first response.

The key row is written in the same shard transaction as the change it guards, so the
two commit or vanish together. A concurrent duplicate blocks on the key's unique index
until the first transaction ends, then replays its response: no double writes, no lock
table. Keys expire after 24 hours; an expired key is taken over by the next request.
Its one user is the creation flow, ``meridian.crud.endpoints.create``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy import DateTime, Index, Integer, LargeBinary, String, func, select, update
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from meridian.errors import BadRequest, IdempotencyKeyReused
from tenancy.planes import ShardBase, TenantScoped

KEY_TTL = timedelta(hours=24)
MAX_KEY_LENGTH = 255
# Printable ASCII, no space first or last (HTTP strips those, so the key would change).
KEY_PATTERN = r"^[!-~]([ -~]*[!-~])?$"


class IdempotencyKey(TenantScoped, ShardBase):
    __tablename__ = "idempotency_key"

    __table_args__ = (Index("ix_idempotency_key_created", "tenant_id", "created_at"),)

    key: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH), primary_key=True, sort_order=-10)
    request_hash: Mapped[bytes] = mapped_column(LargeBinary)
    status_code: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[Any | None] = mapped_column(JSONB)
    response_headers: Mapped[dict[str, str] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


@dataclass(slots=True)
class StoredResponse:
    status_code: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    replayed: bool = False


def validate_key(key: str) -> str:
    """The key, if it has the format the header declares (checked there for HTTP)."""
    if len(key) > MAX_KEY_LENGTH or not re.fullmatch(KEY_PATTERN, key):
        raise BadRequest(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters."
        )
    return key


def request_fingerprint(method: str, path: str, payload: Any) -> bytes:
    try:
        canonical = orjson.dumps([method, path, payload], option=orjson.OPT_SORT_KEYS)
    except TypeError:
        # An integer beyond 64 bits in a free-form body (a batch item's, checked later,
        # item by item): the standard library writes any integer.
        canonical = json.dumps(
            [method, path, payload], sort_keys=True, separators=(",", ":"), default=str
        ).encode()
    return hashlib.sha256(canonical).digest()


async def run_idempotent(
    session: AsyncSession,
    tenant_id: UUID,
    key: str | None,
    fingerprint: bytes,
    produce: Callable[[], Awaitable[StoredResponse]],
) -> StoredResponse:
    if key is None:
        return await produce()
    key = validate_key(key)
    table = IdempotencyKey.__table__.c
    # now() only in VALUES: Citus refuses functions that are not IMMUTABLE in DO
    # UPDATE SET, so the takeover of an expired key reuses the inserted value
    # (EXCLUDED) and expiry compares with a bound cutoff (the app's clock: seconds of
    # skew do not matter against a 24-hour lifetime).
    inserted = insert(IdempotencyKey).values(
        tenant_id=tenant_id, key=key, request_hash=fingerprint, created_at=func.now()
    )
    claim = inserted.on_conflict_do_update(
        index_elements=[table.tenant_id, table.key],
        set_={
            "request_hash": fingerprint,
            "status_code": None,
            "response_body": None,
            "response_headers": None,
            "created_at": inserted.excluded.created_at,
        },
        where=table.created_at < datetime.now(UTC) - KEY_TTL,
    ).returning(table.key)
    claimed = (await session.execute(claim)).first()
    if claimed is None:
        row = (
            await session.execute(
                select(
                    table.request_hash,
                    table.status_code,
                    table.response_body,
                    table.response_headers,
                ).where(table.tenant_id == tenant_id, table.key == key)
            )
        ).one()
        if row.request_hash != fingerprint:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was used for a different request; use a new key."
            )
        return StoredResponse(
            row.status_code, row.response_body, dict(row.response_headers or {}), replayed=True
        )
    response = await produce()
    await session.execute(
        update(IdempotencyKey)
        .where(table.tenant_id == tenant_id, table.key == key)
        .values(
            status_code=response.status_code,
            response_body=orjson.loads(orjson.dumps(response.body, default=str)),
            response_headers=response.headers,
        )
    )
    return response
