"""Webhook storage: subscriptions through the tenant repository (so their changes are
events: ``webhook.created|updated|deleted``, the secret only ever named as changed) and
deliveries, whose bookkeeping is not.

Why deliveries and a subscription's counters emit no events: they record what happened to
events. An event about a delivery would itself be delivered, whose outcome would be
another event, without end; a failing receiver would flood the log. The one event this
bookkeeping raises is ``webhook.disabled``, once, when a subscription is switched off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import UUID

import asyncpg
import orjson
from sqlalchemy import Select, Table, Uuid, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from meridian.crud.compiled import fetchrow, prepared
from meridian.crud.repository import TenantRepository
from meridian.webhooks.models import DeliveryRow, Webhook, WebhookDelivery, WebhookRow
from sharding.router import OnStale, ShardRouter
from tenancy.context import TenantContext

SORTABLE = {"created_at": Webhook.created_at}
DELIVERY_SORTABLE = {"created_at": WebhookDelivery.created_at}
SEALED = ("secret_enc",)
SUCCESS_RESOLUTION = timedelta(seconds=1)
_TENANT = bindparam("tenant_id", type_=Uuid())
# The tables, for Core updates without the ORM's bookkeeping.
_WEBHOOK = cast(Table, Webhook.__table__)
_DELIVERY_TABLE = cast(Table, WebhookDelivery.__table__)
_DELIVERY = bindparam("delivery_id", type_=Uuid())


class WebhookRepository(TenantRepository[WebhookRow]):
    model = Webhook
    event_kind = "webhook"
    # The secret (sealed, its blind index and key version) is never read back with the
    # subscription, and never enters an event: a rotation shows as {"changed": true}.
    hidden = TenantRepository.hidden | {"secret_enc", "secret_bidx", "enc_version"}

    @staticmethod
    async def any_enabled(conn: asyncpg.Connection, tenant_id: UUID) -> bool:
        """Whether the tenant has an enabled subscription: most events of most tenants
        go to none, and this read spares them a write transaction."""
        found = await fetchrow(
            conn,
            select(Webhook.id)
            .where(Webhook.tenant_id == tenant_id, Webhook.enabled.is_(True))
            .limit(1),
        )
        return found is not None

    async def enabled(self) -> list[WebhookRow]:
        """The tenant's enabled subscriptions (the consumer matches each event with them)."""
        stmt = self.select_rows().where(Webhook.enabled.is_(True)).order_by(Webhook.id)
        rows = (await self.session.execute(stmt)).mappings()
        return [cast(WebhookRow, dict(r)) for r in rows]

    async def sealed_secret(self, webhook_id: UUID) -> bytes | None:
        stmt = select(Webhook.secret_enc).where(self.scoped(), Webhook.id == webhook_id)
        found: bytes | None = await self.session.scalar(stmt)
        return found

    @staticmethod
    def needs_success_mark(consecutive_dead: int, last_success_at: datetime | None) -> bool:
        """Whether a success changes the subscription (``delivered``), as last read."""
        return (
            consecutive_dead > 0
            or last_success_at is None
            or last_success_at < datetime.now(UTC) - SUCCESS_RESOLUTION
        )

    async def delivered(self, webhook_id: UUID) -> None:
        """A delivery succeeded: the run of dead deliveries is over (no event).

        ``last_success_at`` is kept to the second: a busy subscription's deliveries
        would otherwise each lock its row until their commit, one after the other. A
        row the condition leaves out is not locked at all."""
        stmt = (
            update(_WEBHOOK)
            .where(
                self.scoped(),
                Webhook.id == webhook_id,
                (Webhook.consecutive_dead > 0)
                | Webhook.last_success_at.is_(None)
                | (Webhook.last_success_at < func.now() - SUCCESS_RESOLUTION),
            )
            .values(consecutive_dead=0, last_success_at=func.now())
        )
        await self.session.execute(stmt)

    async def died(self, webhook_id: UUID) -> int | None:
        """One more dead delivery in a row (no event); the new count, None when the
        subscription is gone or already disabled."""
        stmt = (
            update(Webhook)
            .where(self.scoped(), Webhook.id == webhook_id, Webhook.enabled.is_(True))
            .values(consecutive_dead=Webhook.consecutive_dead + 1)
            .returning(Webhook.consecutive_dead)
        )
        count: int | None = await self.session.scalar(stmt)
        return count

    async def disable(self, webhook_id: UUID, reason: str) -> WebhookRow | None:
        """Switch the subscription off with ``reason`` and tell the tenant: one
        ``webhook.disabled`` event (a new version, so ETags change)."""
        stmt = (
            update(Webhook)
            .where(self.scoped(), Webhook.id == webhook_id, Webhook.enabled.is_(True))
            .values(
                enabled=False,
                disabled_reason=reason,
                disabled_at=func.now(),
                version=Webhook.version + 1,
                updated_at=func.now(),
            )
            .returning(*self.read_columns())
        )
        row = (await self.session.execute(stmt)).mappings().one_or_none()
        if row is None:
            return None
        self.emit_derived("disabled", row, {"reason": reason})
        return cast(WebhookRow, dict(row))


class DeliveryRepository(TenantRepository[DeliveryRow]):
    """Deliveries: read like any list, written only by the methods below (no events)."""

    model = WebhookDelivery
    hidden = TenantRepository.hidden | {"payload", "run"}

    async def add_live(
        self, matched: Sequence[tuple[UUID, Mapping[str, Any]]], ids: Sequence[UUID]
    ) -> None:
        """One pending delivery per (subscription, event) pair; none twice (the unique
        index on (tenant, subscription, event) for live deliveries)."""
        rows = [
            self._values(sub, event, new_id, None)
            for (sub, event), new_id in zip(matched, ids, strict=True)
        ]
        # In chunks: a statement takes at most 32,767 parameters.
        for start in range(0, len(rows), 1000):
            stmt = (
                pg_insert(WebhookDelivery)
                .values(rows[start : start + 1000])
                .on_conflict_do_nothing(
                    index_elements=["tenant_id", "subscription_id", "event_id"],
                    index_where=WebhookDelivery.replay_id.is_(None),
                )
            )
            await self.session.execute(stmt)

    async def add_replayed(
        self,
        subscription_id: UUID,
        events: Sequence[Mapping[str, Any]],
        ids: Sequence[UUID],
        replay_id: UUID,
    ) -> None:
        rows = [
            self._values(subscription_id, event, new_id, replay_id)
            for event, new_id in zip(events, ids, strict=True)
        ]
        # In chunks: a statement takes at most 32,767 parameters.
        for start in range(0, len(rows), 1000):
            await self.session.execute(
                pg_insert(WebhookDelivery).values(rows[start : start + 1000])
            )

    def _values(
        self, subscription_id: UUID, event: Mapping[str, Any], new_id: UUID, replay: UUID | None
    ) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "id": new_id,
            "subscription_id": subscription_id,
            "event_id": UUID(str(event["id"])),
            "event_seq": int(event["seq"]),
            "event_type": str(event["type"]),
            "payload": dict(event),
            "replay_id": replay,
        }

    async def waiting(
        self, event_ids: Sequence[UUID], subscription_ids: Sequence[UUID]
    ) -> list[UUID]:
        """The live deliveries of these events to these subscriptions not yet attempted,
        oldest event first (to hand to the queue; a redelivered event enqueues them
        again, which the queue's job keys make a no-op)."""
        if not event_ids or not subscription_ids:
            return []
        stmt = (
            select(WebhookDelivery.id)
            .where(
                self.scoped(),
                WebhookDelivery.subscription_id.in_(subscription_ids),
                WebhookDelivery.event_id.in_(event_ids),
                WebhookDelivery.replay_id.is_(None),
                WebhookDelivery.status == "pending",
            )
            .order_by(WebhookDelivery.event_seq)
        )
        return list((await self.session.scalars(stmt)).all())

    @staticmethod
    def _attempt_statement() -> Select[Any]:
        d, w = WebhookDelivery, Webhook
        return (
            select(
                d.id,
                d.subscription_id,
                d.payload,
                d.status,
                d.run,
                d.attempts,
                d.first_attempt_at,
                w.url,
                w.enabled,
                w.secret_enc,
                w.consecutive_dead,
                w.last_success_at,
            )
            .join(w, (w.tenant_id == d.tenant_id) & (w.id == d.subscription_id))
            .where(d.tenant_id == _TENANT, w.tenant_id == _TENANT, d.id == _DELIVERY)
        )

    @staticmethod
    async def for_attempt(
        router: ShardRouter, tenant: TenantContext, delivery_id: UUID, on_stale: OnStale
    ) -> dict[str, Any] | None:
        """What a delivery job needs: the delivery, its payload and run, and its
        subscription's target, read on the raw read path (no write transaction, no ORM);
        the attempt's outcome is recorded with ``record``, which checks the run again.

        A read transaction, not ``ShardRouter.read_one``: the join inside its lateral
        would be flattened and could scan before the tenant is entered."""
        compiled = prepared(
            (WebhookDelivery, "attempt"), lambda: DeliveryRepository._attempt_statement()
        )
        values = {"tenant_id": tenant.tenant_id, "delivery_id": delivery_id}
        async with router.reader(tenant, on_stale=on_stale) as conn:
            row = await conn.fetchrow(compiled.sql, *compiled.args(values))
        if row is None:
            return None
        found = dict(row)
        if isinstance(found["payload"], str):
            found["payload"] = orjson.loads(found["payload"])
        return found

    async def record(
        self, delivery_id: UUID, run: int, values: Mapping[str, Any], started: datetime
    ) -> bool:
        """An attempt's outcome, unless a manual retry started another run meanwhile;
        the first attempt's start (``started``) is kept as the retry window's."""
        # A Core update of the table: the ORM's bulk-update bookkeeping costs more than
        # the statement, and a delivery job makes one per attempt.
        stmt = (
            update(_DELIVERY_TABLE)
            .where(self.scoped(), WebhookDelivery.id == delivery_id, WebhookDelivery.run == run)
            .values(
                **values,
                first_attempt_at=func.coalesce(WebhookDelivery.first_attempt_at, started),
                attempts=WebhookDelivery.attempts + 1,
                last_attempt_at=func.now(),
                updated_at=func.now(),
            )
            .returning(WebhookDelivery.id)
        )
        return await self.session.scalar(stmt) is not None

    async def mark(self, delivery_id: UUID, values: Mapping[str, Any]) -> None:
        stmt = (
            update(WebhookDelivery)
            .where(self.scoped(), WebhookDelivery.id == delivery_id)
            .values(**values, updated_at=func.now())
        )
        await self.session.execute(stmt)

    async def restart(self, delivery_id: UUID) -> int:
        """A new run of a delivery (a manual retry): pending again, with a fresh retry
        window; jobs of the earlier runs stop. The new run's number."""
        stmt = (
            update(WebhookDelivery)
            .where(self.scoped(), WebhookDelivery.id == delivery_id)
            .values(
                run=WebhookDelivery.run + 1,
                status="pending",
                first_attempt_at=None,
                next_attempt_at=func.now(),
                updated_at=func.now(),
            )
            .returning(WebhookDelivery.run)
        )
        run: int = (await self.session.execute(stmt)).scalar_one()
        return run

    async def status_of(self, subscription_id: UUID, delivery_id: UUID) -> str | None:
        stmt = (
            select(WebhookDelivery.status)
            .where(
                self.scoped(),
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.subscription_id == subscription_id,
            )
            .with_for_update(key_share=True)
        )
        found: str | None = await self.session.scalar(stmt)
        return found
