"""Webhook endpoints: subscriptions (``/v1/webhooks``), their deliveries, manual retries
and replays. HTTP only: the flows are meridian.crud.endpoints', the rules the service's.

A subscription's representation never carries its secret, so its reads do not go
through the flows that open sealed fields: the secret is opened once, in the creation's
response (``endpoints.create``), and a rotation answers with the new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
from fastapi import APIRouter, Query, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.responses import Response

from meridian.crud import control, endpoints
from meridian.crud.http import (
    CursorQuery,
    IdempotencyKeyHeader,
    IfMatchHeader,
    IfNoneMatchHeader,
    LimitQuery,
    conditional_response,
    etag,
    expected_version,
    page_body,
    sort_query,
    tagged_response,
)
from meridian.crud.pagination import Cursor, check_limit, filters_digest, parse_sort
from meridian.crud.schemas import Page
from meridian.deps import (
    CanCreateWebhooks,
    CanDeleteWebhooks,
    CanReadWebhooks,
    CanUpdateWebhooks,
    ControlPlane,
    JobQueue,
    Keyring,
    PlatformSettings,
    TenantAccess,
    record_viewer,
)
from meridian.errors import Conflict, Forbidden, Gone, NotFound, ValidationFailed
from meridian.events import log
from meridian.web.openapi import problems
from meridian.web.responses import json_response
from meridian.webhooks.delivery import enqueue
from meridian.webhooks.models import WebhookDelivery
from meridian.webhooks.repository import (
    DELIVERY_SORTABLE,
    SORTABLE,
    DeliveryRepository,
    WebhookRepository,
)
from meridian.webhooks.schemas import (
    DeliveryRead,
    ReplayAccepted,
    ReplayRequest,
    SecretRead,
    WebhookCreate,
    WebhookCreated,
    WebhookRead,
    WebhookUpdate,
)
from meridian.webhooks.service import MAX_REPLAY, check_target, matches
from meridian.webhooks.service import webhook as webhook_service
from tenancy.models import Tenant

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
KIND = "webhook"
REPLAY_PAGE = 1000
DeliveryStatus = Literal["pending", "delivered", "failed", "dead"]


def require_every_record(access: TenantAccess) -> None:
    """A subscription receives the events of every record: a caller whose record scope
    is limited would see through it what its lists hide."""
    if record_viewer(access) is not None:
        raise Forbidden(
            "Webhooks receive the events of every record; subscribing needs the "
            "records:read_all permission."
        )


def decoded(row: Mapping[str, Any]) -> dict[str, Any]:
    """A subscription read on a raw connection, whose JSON columns arrive as text."""
    found = dict(row)
    if isinstance(found.get("filter"), str):
        found["filter"] = orjson.loads(found["filter"])
    return found


async def _subscription(access: TenantAccess, webhook_id: UUID) -> dict[str, Any]:
    row = await endpoints.by_id(access, WebhookRepository, webhook_id)
    if row is None:
        raise endpoints.not_found(KIND, webhook_id)
    return decoded(row)


@router.post(
    "",
    status_code=201,
    response_model=WebhookCreated,
    openapi_extra=problems(Forbidden, ValidationFailed),
)
async def create_webhook(
    body: WebhookCreate,
    request: Request,
    access: CanCreateWebhooks,
    keyring: Keyring,
    settings: PlatformSettings,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Subscribe a URL to events. The answer carries the signing secret, the only time
    it is shown (a replay of the same Idempotency-Key shows it again)."""
    require_every_record(access)
    await check_target(body.url, allow_private=settings.webhook_allow_private_targets)
    return await endpoints.create(
        access,
        request,
        idempotency_key,
        body,
        lambda session: webhook_service.create(session, access.tenant, body, keyring, access.can),
        kind=KIND,
    )


@router.get("", response_model=Page[WebhookRead])
async def list_webhooks(
    access: CanReadWebhooks,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    sort: Annotated[str | None, sort_query(SORTABLE, "created_at")] = None,
    enabled: Annotated[bool | None, Query(description="Only enabled (or disabled) ones.")] = None,
) -> Response:
    size = check_limit(limit)
    order = parse_sort(sort, SORTABLE, "created_at")
    tenant_id = access.tenant.tenant_id
    digest = filters_digest(tenant_id, {"enabled": enabled})
    after = Cursor.decode(cursor, sort=order, digest=digest) if cursor else None
    where = [] if enabled is None else [WebhookRepository.attr("enabled").is_(enabled)]
    rows = await endpoints.read(
        access,
        lambda conn: WebhookRepository.fetch_page(
            conn, tenant_id, where=where, sort=order, limit=size, cursor=after
        ),
    )
    page = [decoded(r) for r in rows]
    return json_response(page_body(page, limit=size, sort=order, digest=digest))


@router.get("/{webhook_id}", response_model=WebhookRead)
async def get_webhook(
    webhook_id: UUID, access: CanReadWebhooks, if_none_match: IfNoneMatchHeader = None
) -> Response:
    return conditional_response(await _subscription(access, webhook_id), if_none_match)


@router.patch("/{webhook_id}", response_model=WebhookRead, openapi_extra=problems(Forbidden))
async def update_webhook(
    webhook_id: UUID,
    body: WebhookUpdate,
    access: CanUpdateWebhooks,
    settings: PlatformSettings,
    if_match: IfMatchHeader = None,
) -> Response:
    """Change a subscription; ``"enabled": true`` re-enables one the platform disabled."""
    require_every_record(access)
    version = expected_version(if_match)
    if body.url is not None:
        await check_target(body.url, allow_private=settings.webhook_allow_private_targets)
    row = await endpoints.transact(
        access,
        KIND,
        lambda session: webhook_service.update(
            session, access.tenant, webhook_id, body, version, access.can
        ),
    )
    if row is None:
        raise endpoints.not_found(KIND, webhook_id)
    return tagged_response(row, etag(row))


@router.delete("/{webhook_id}", status_code=204)
async def delete_webhook(
    webhook_id: UUID, access: CanDeleteWebhooks, if_match: IfMatchHeader = None
) -> Response:
    """Unsubscribe; its deliveries go with it (pending ones are not sent)."""
    return await endpoints.remove(access, WebhookRepository, KIND, webhook_id, if_match)


@router.post("/{webhook_id}/rotate-secret", response_model=SecretRead)
async def rotate_webhook_secret(
    webhook_id: UUID, access: CanUpdateWebhooks, keyring: Keyring
) -> Response:
    """A new signing secret, shown in this answer only; deliveries are signed with it
    from now on."""
    rotated = await endpoints.transact(
        access,
        KIND,
        lambda session: webhook_service.rotate_secret(session, access.tenant, webhook_id, keyring),
    )
    if rotated is None:
        raise endpoints.not_found(KIND, webhook_id)
    row, secret = rotated
    body = {"id": row["id"], "secret": secret, "version": row["version"]}
    return tagged_response(body, etag(row))


# -- deliveries ------------------------------------------------------------------------
@router.get("/{webhook_id}/deliveries", response_model=Page[DeliveryRead])
async def list_webhook_deliveries(
    webhook_id: UUID,
    access: CanReadWebhooks,
    status: DeliveryStatus | None = None,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    sort: Annotated[str | None, sort_query(DELIVERY_SORTABLE, "-created_at")] = None,
) -> Response:
    """The subscription's deliveries, newest first; ``status=dead`` is its dead-letter
    list."""
    size = check_limit(limit)
    order = parse_sort(sort, DELIVERY_SORTABLE, "-created_at")
    tenant_id = access.tenant.tenant_id
    digest = filters_digest(tenant_id, {"webhook": webhook_id, "status": status})
    after = Cursor.decode(cursor, sort=order, digest=digest) if cursor else None
    where = [WebhookDelivery.subscription_id == webhook_id]
    if status is not None:
        where.append(WebhookDelivery.status == status)

    async def work(conn: Any) -> list[Any] | None:
        if await WebhookRepository.fetch_one(conn, tenant_id, webhook_id) is None:
            return None
        return await DeliveryRepository.fetch_page(
            conn, tenant_id, where=where, sort=order, limit=size, cursor=after
        )

    rows = await endpoints.read(access, work)
    if rows is None:
        raise endpoints.not_found(KIND, webhook_id)
    return json_response(page_body(rows, limit=size, sort=order, digest=digest))


@router.get("/{webhook_id}/deliveries/{delivery_id}", response_model=DeliveryRead)
async def get_webhook_delivery(
    webhook_id: UUID, delivery_id: UUID, access: CanReadWebhooks
) -> Response:
    row = await endpoints.by_id(access, DeliveryRepository, delivery_id)
    if row is None or row["subscription_id"] != webhook_id:
        raise NotFound(f"No delivery {delivery_id} of webhook {webhook_id}.")
    return json_response(row)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/retry",
    status_code=202,
    response_model=DeliveryRead,
    openapi_extra=problems(Conflict),
)
async def retry_webhook_delivery(
    webhook_id: UUID,
    delivery_id: UUID,
    access: CanUpdateWebhooks,
    queue: JobQueue,
    settings: PlatformSettings,
) -> Response:
    """Try a failed or dead delivery again now (a fresh retry window); 409 for one that
    is pending or delivered."""

    async def restart(session: Any) -> tuple[int, Any]:
        run = await webhook_service.restart_delivery(
            session, access.tenant, webhook_id, delivery_id
        )
        return run, await DeliveryRepository(session, access.tenant).get(delivery_id)

    run, row = await endpoints.transact(access, KIND, restart)
    await enqueue(queue, settings, access.tenant.tenant_id, delivery_id, run)
    return json_response(row, 202)


async def _retention_days(control_plane: Any, tenant_id: UUID, default: int) -> int:
    async def work(conn: AsyncConnection) -> int | None:
        found: int | None = await conn.scalar(
            select(Tenant.event_retention_days).where(Tenant.id == tenant_id)
        )
        return found

    return await control.read(control_plane, work) or default


@router.post(
    "/{webhook_id}/replay",
    status_code=202,
    response_model=ReplayAccepted,
    openapi_extra=problems(Conflict, Gone),
)
async def replay_webhook(
    webhook_id: UUID,
    body: ReplayRequest,
    access: CanUpdateWebhooks,
    queue: JobQueue,
    settings: PlatformSettings,
    control_plane: ControlPlane,
) -> Response:
    """Deliver again, as new deliveries, every event of the range [since, until) that
    the subscription matches (an empty range replays nothing). A range that starts
    before the tenant's event retention is 410: those events are no longer kept, and a
    replay that skipped them silently would look complete."""
    tenant_id = access.tenant.tenant_id
    days = await _retention_days(control_plane, tenant_id, settings.event_retention_days)
    retention = timedelta(days=days)
    if body.since < datetime.now(UTC) - retention:
        raise Gone(
            f"since: events older than the retention ({days} days) are no longer kept; "
            "replay from a later time."
        )
    subscription = await _subscription(access, webhook_id)
    if not subscription["enabled"]:
        raise Conflict("The webhook is disabled; enable it before replaying.")
    events = await _replayed_events(access, subscription, body)
    replay_id, ids = await endpoints.transact(
        access,
        KIND,
        lambda session: webhook_service.add_replay(session, access.tenant, webhook_id, events),
    )
    for delivery_id in ids:
        await enqueue(queue, settings, tenant_id, delivery_id)
    return json_response({"replay_id": replay_id, "count": len(ids)}, 202)


async def _replayed_events(
    access: TenantAccess, subscription: dict[str, Any], body: ReplayRequest
) -> list[dict[str, Any]]:
    """The events of the range the subscription matches, oldest first (at most
    MAX_REPLAY, else 422)."""
    tenant_id = access.tenant.tenant_id
    types = subscription["event_types"]
    wanted = log.TypeFilter() if "*" in types else log.TypeFilter.parse(",".join(types))
    found: list[dict[str, Any]] = []
    after = 0
    await log.catch_up(access)
    while True:

        async def next_page(conn: Any, start: int = after) -> list[dict[str, Any]]:
            return await log.page(
                conn,
                tenant_id,
                None,
                kinds=subscription["kinds"],
                types=wanted,
                after=start,
                limit=REPLAY_PAGE,
                since=body.since,
                before=body.until,
            )

        page = await endpoints.read(access, next_page)
        found += [e for e in page if matches(subscription, e)]
        if len(found) > MAX_REPLAY:
            # What the log holds, not the request's form: a conflict with its state.
            raise Conflict(
                f"The range holds more than {MAX_REPLAY} matching events; replay it in parts."
            )
        if len(page) < REPLAY_PAGE:
            return found
        after = page[-1]["seq"]
