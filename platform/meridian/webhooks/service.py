"""Webhook rules: which events a subscription receives (its types, its filter, and only
kinds its creator may read), its target (a public http(s) URL unless the platform allows
private ones), its secret (made here, sealed with the tenant's data key), and the
deliveries a manual retry or a replay makes."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from meridian.encryption import service as encryption
from meridian.errors import Conflict, Forbidden, NotFound, ValidationFailed, invalid_field
from meridian.events import log
from meridian.ids import new_id
from meridian.web import targets
from meridian.webhooks.models import WebhookRow
from meridian.webhooks.repository import DeliveryRepository, WebhookRepository
from meridian.webhooks.schemas import WebhookCreate, WebhookUpdate
from tenancy.context import TenantContext
from tenancy.keyring import TenantKeyring

KIND = "webhook"
EVERYTHING = "*"
SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
SECRET_BYTES = 32
# A replay makes at most this many deliveries: a longer range is refused (422), to be
# replayed in parts.
MAX_REPLAY = 10_000


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


# -- which events ---------------------------------------------------------------------
def kinds_for(event_types: Sequence[str], can: Callable[[str, str], bool]) -> list[str]:
    """The event kinds a subscription to ``event_types`` receives, for a subscriber whose
    capabilities ``can`` answers: what it names, each of which it must be able to read
    (403 otherwise), or for ``*`` every kind it can read."""
    readable = log.readable_kinds(can)
    named: set[str] = set()
    for entry in event_types:
        if entry == EVERYTHING:
            continue
        try:
            parsed = log.TypeFilter.parse(entry)
        except ValidationFailed as exc:
            message = str(exc.detail or exc).removeprefix("type: ")
            raise invalid_field("event_types", message) from exc
        for kind in (*parsed.kinds, *(t.split(".", 1)[0] for t in parsed.exact)):
            if kind not in readable:
                raise Forbidden(
                    f"event_types: events of kind {kind!r} need the "
                    f"{log.OBJECT_OF_KIND[kind]}:read permission."
                )
            named.add(kind)
    if EVERYTHING in event_types:
        return list(readable)
    return sorted(named)


@lru_cache(maxsize=1024)
def _type_filter(event_types: tuple[str, ...]) -> log.TypeFilter:
    return log.TypeFilter.parse(",".join(event_types))


def _same(a: Any, b: Any) -> bool:
    # JSON true is not 1, nor 1.0 true.
    return isinstance(a, bool) == isinstance(b, bool) and bool(a == b)


def matches(subscription: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
    """Whether ``event`` (the public shape) goes to ``subscription``."""
    kind = event["record"]["kind"]
    if kind not in subscription["kinds"]:
        return False
    types = tuple(subscription["event_types"])
    if EVERYTHING not in types and not _type_filter(types).matches(event["type"]):
        return False
    record = (event.get("data") or {}).get("record") or {}
    return all(
        field in record and _same(record[field], value)
        for field, value in (subscription["filter"] or {}).items()
    )


# -- targets ----------------------------------------------------------------------------
async def check_target(url: str, *, allow_private: bool) -> None:
    """422 for a URL that cannot be a target (checked before any transaction opens: it
    may wait for DNS)."""
    try:
        await targets.check_resolved(url, allow_private=allow_private)
    except targets.TargetRefused as exc:
        raise invalid_field("url", str(exc)) from exc


class WebhookService:
    async def create(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        body: WebhookCreate,
        keyring: TenantKeyring,
        can: Callable[[str, str], bool],
    ) -> dict[str, Any]:
        """The new subscription, with its sealed secret for the creation's response
        (opened there, once; kept sealed in the idempotency record)."""
        kinds = kinds_for(body.event_types, can)
        row_id = new_id()
        sealed = await encryption.for_insert(
            keyring, tenant.tenant_id, KIND, row_id, {"secret": new_secret()}
        )
        row = await WebhookRepository(session, tenant).insert(
            {
                "id": row_id,
                "url": body.url,
                "description": body.description,
                "event_types": list(dict.fromkeys(body.event_types)),
                "filter": body.filter,
                "kinds": kinds,
                "enabled": body.enabled,
                **sealed,
            }
        )
        return {**row, "secret_enc": sealed["secret_enc"], "enc_version": sealed["enc_version"]}

    async def update(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        webhook_id: UUID,
        body: WebhookUpdate,
        expected_version: int | None,
        can: Callable[[str, str], bool],
    ) -> WebhookRow | None:
        values = body.changes()
        if "event_types" in values:
            values["event_types"] = list(dict.fromkeys(values["event_types"]))
            values["kinds"] = kinds_for(values["event_types"], can)
        if values.get("enabled") is True:
            # Re-enabled: the count of dead deliveries starts again.
            values.update(consecutive_dead=0, disabled_reason=None, disabled_at=None)
        return await WebhookRepository(session, tenant).update(
            webhook_id, values, expected_version=expected_version
        )

    async def rotate_secret(
        self, session: AsyncSession, tenant: TenantContext, webhook_id: UUID, keyring: TenantKeyring
    ) -> tuple[WebhookRow, str] | None:
        """A new secret (the old one stops signing at once); the row and the secret."""
        secret = new_secret()
        sealed = await encryption.for_insert(
            keyring, tenant.tenant_id, KIND, webhook_id, {"secret": secret}
        )
        row = await WebhookRepository(session, tenant).update(
            webhook_id, sealed, expected_version=None
        )
        return (row, secret) if row is not None else None

    async def restart_delivery(
        self, session: AsyncSession, tenant: TenantContext, webhook_id: UUID, delivery_id: UUID
    ) -> int:
        """A dead or failed delivery tried again now: its new run (the job to enqueue)."""
        deliveries = DeliveryRepository(session, tenant)
        status = await deliveries.status_of(webhook_id, delivery_id)
        if status is None:
            raise NotFound(f"No delivery {delivery_id} of webhook {webhook_id}.")
        if status not in ("dead", "failed"):
            raise Conflict(f"The delivery is {status}; only a failed or dead one is retried.")
        return await deliveries.restart(delivery_id)

    async def add_replay(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        webhook_id: UUID,
        events: Sequence[Mapping[str, Any]],
    ) -> tuple[UUID, list[UUID]]:
        """New deliveries of ``events`` (one replay); its id and theirs."""
        if not await WebhookRepository(session, tenant).lock_visible(webhook_id, for_update=False):
            raise NotFound(f"No webhook with id {webhook_id}.")
        replay_id = new_id()
        ids = [new_id() for _ in events]
        await DeliveryRepository(session, tenant).add_replayed(webhook_id, events, ids, replay_id)
        return replay_id, ids


webhook = WebhookService()
