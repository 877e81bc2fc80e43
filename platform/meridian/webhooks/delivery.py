"""Sending one delivery: the signed POST and what came of it, and the job that runs it.

A delivery is the event's public JSON, POSTed with the Standard Webhooks headers
(``webhook-id`` = the event's id, so a receiver can deduplicate, ``webhook-timestamp``,
``webhook-signature``: ``v1,`` and the HMAC-SHA256 of ``id.timestamp.body`` under the
subscription's secret). A 2xx answer is delivered. Anything else is recorded (status,
at most 1 KB of the answer, the error) and the job raises, so saq runs it again after the
next delay of an exponential backoff with jitter; once the retry window has passed since
the first attempt the delivery is dead instead. Enough dead deliveries in a row disable
the subscription (``MERIDIAN_WEBHOOK_DISABLE_AFTER``).

Jobs are keyed by the delivery (and its run, bumped by a manual retry): enqueuing one
twice is a no-op, and a job of an older run stops without sending.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import aiohttp
from saq import Queue
from saq.utils import exponential_backoff
from standardwebhooks import Webhook as Signer

from meridian.encryption.fields import decrypt_values
from meridian.metrics import Metrics
from meridian.settings import Settings
from meridian.web import targets
from meridian.web.responses import dumps
from meridian.webhooks.repository import DeliveryRepository, WebhookRepository
from meridian.webhooks.service import KIND
from meridian.worker.main import context_of

logger = logging.getLogger("meridian.webhooks")

JOB = "webhook_deliver"
EXCERPT_BYTES = 1024
# saq stops retrying a job after this many attempts; the retry window ends it long before.
MAX_ATTEMPTS = 100_000
USER_AGENT = "Meridian-Webhooks/1"


class DeliveryFailed(Exception):
    """Raised by the job after a failed attempt it recorded: saq schedules the next."""


def job_key(delivery_id: UUID | str, run: int) -> str:
    return str(delivery_id) if run == 0 else f"{delivery_id}.{run}"


async def enqueue(
    queue: Queue, settings: Settings, tenant_id: UUID, delivery_id: UUID, run: int = 0
) -> None:
    """Hand a delivery to the workers (a no-op while its job is queued or running)."""
    await queue.enqueue(
        JOB,
        key=job_key(delivery_id, run),
        timeout=int(settings.webhook_timeout) + 30,
        retries=MAX_ATTEMPTS,
        retry_delay=settings.webhook_retry_base,
        retry_backoff=settings.webhook_retry_cap,
        tenant_id=str(tenant_id),
        delivery_id=str(delivery_id),
        run=run,
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    status_code: int | None = None
    excerpt: str | None = None
    error: str | None = None


def signed_headers(secret: str, msg_id: str, body: bytes, at: datetime) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Signer(secret).sign(msg_id, at, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


async def send(
    http: aiohttp.ClientSession, settings: Settings, url: str, event: dict[str, Any], secret: str
) -> Outcome:
    """One attempt: the URL checked again, then the signed POST (whose connection goes
    only to addresses ``targets.CheckedResolver`` accepts: what the name resolves to may
    have changed since it was configured)."""
    try:
        targets.check_url(url, allow_private=settings.webhook_allow_private_targets)
    except targets.TargetRefused as exc:
        return Outcome(False, error=f"target refused: {exc}")
    body = dumps(event)
    headers = signed_headers(secret, str(event["id"]), body, datetime.now(UTC))
    try:
        async with http.post(
            url,
            data=body,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout),
        ) as response:
            excerpt = (await targets.read_start(response, EXCERPT_BYTES)).decode(
                "utf-8", errors="replace"
            )
            status = response.status
    except TimeoutError:
        return Outcome(False, error=f"no answer within {settings.webhook_timeout:g} s")
    except aiohttp.ClientError as exc:
        return Outcome(False, error=targets.failure(exc)[:1000])
    if 200 <= status < 300:
        return Outcome(True, status, excerpt)
    return Outcome(False, status, excerpt, f"HTTP {status}")


async def webhook_deliver(
    ctx: dict[str, Any], *, tenant_id: str, delivery_id: str, run: int
) -> str:
    """The saq job: one attempt of a delivery, its outcome recorded."""
    wctx = context_of(ctx)
    settings, runtime = wctx.settings, wctx.runtime
    tenant = await runtime.directory.resolve(UUID(tenant_id))
    if tenant is None:
        return "tenant gone"
    did = UUID(delivery_id)
    started = datetime.now(UTC)
    found = await DeliveryRepository.for_attempt(
        runtime.router, tenant, did, runtime.refresh_tenant
    )
    if found is None:
        return "gone"  # its subscription was deleted
    if found["run"] != run:
        return "superseded"
    if found["status"] in ("delivered", "dead"):
        return str(found["status"])
    if not found["enabled"]:
        async with runtime.router.transaction(
            tenant, write=True, on_stale=runtime.refresh_tenant
        ) as session:
            await DeliveryRepository(session, tenant).mark(
                did,
                {
                    "status": "dead",
                    "next_attempt_at": None,
                    "last_error": "the subscription is disabled",
                },
            )
        _dead_letter(runtime.metrics, "disabled")
        return "disabled"
    subscription_id: UUID = found["subscription_id"]
    opened = await decrypt_values(
        runtime.keyring,
        tenant.tenant_id,
        KIND,
        subscription_id,
        {"secret_enc": bytes(found["secret_enc"])},
    )
    secret = opened["secret"]
    assert secret is not None
    outcome = await send(wctx.http, settings, found["url"], found["payload"], secret)
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "last_status_code": outcome.status_code,
        "response_excerpt": outcome.excerpt,
        "last_error": outcome.error,
    }
    first = found["first_attempt_at"] or started
    deadline = first + timedelta(seconds=settings.webhook_retry_window)
    delay = 0.0
    if outcome.ok:
        values.update(status="delivered", delivered_at=now, next_attempt_at=None)
    elif now >= deadline:
        values.update(status="dead", next_attempt_at=None)
    else:
        job = ctx["job"]
        # saq's backoff (exponential, with jitter, capped), and never past the window:
        # the last attempt is made when it ends.
        delay = exponential_backoff(
            attempts=job.attempts,
            base_delay=settings.webhook_retry_base,
            max_delay=settings.webhook_retry_cap,
            jitter=True,
        )
        delay = max(0.0, min(delay, (deadline - now).total_seconds()))
        values.update(status="failed", next_attempt_at=now + timedelta(seconds=delay))
    async with runtime.router.transaction(
        tenant, write=True, on_stale=runtime.refresh_tenant
    ) as session:
        if not await DeliveryRepository(session, tenant).record(did, run, values, started):
            return "superseded"
        subscriptions = WebhookRepository(session, tenant)
        if outcome.ok:
            if subscriptions.needs_success_mark(
                found["consecutive_dead"], found["last_success_at"]
            ):
                await subscriptions.delivered(subscription_id)
        elif values["status"] == "dead":
            dead = await subscriptions.died(subscription_id)
            if dead is not None and dead >= settings.webhook_disable_after:
                reason = (
                    f"{dead} deliveries in a row failed for the whole retry window "
                    f"(the last: {outcome.error})"
                )
                await subscriptions.disable(subscription_id, reason[:500])
    if values["status"] == "dead":
        _dead_letter(runtime.metrics, "expired")
    if values["status"] == "failed":
        # The delay saq waits before the next attempt is the one recorded above.
        job = ctx["job"]
        job.retry_delay = delay
        job.retry_backoff = False
        raise DeliveryFailed(f"delivery {delivery_id}: {outcome.error}")
    return str(values["status"])


def _dead_letter(metrics: Metrics, reason: str) -> None:
    metrics.counter(
        "meridian_webhook_dead_letters",
        "Webhook deliveries given up: the retry window passed (expired) or the "
        "subscription was disabled meanwhile (disabled).",
        ["reason"],
    ).labels(reason).inc()
