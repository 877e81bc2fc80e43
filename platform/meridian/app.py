"""The FastAPI application factory."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from meridian import __version__
from meridian.accounts.router import router as accounts_router
from meridian.activities.router import router as activities_router
from meridian.activities.router import timeline_router
from meridian.admin.router import router as admin_router
from meridian.cases.router import router as cases_router
from meridian.contacts.router import router as contacts_router
from meridian.crud import batch
from meridian.events.audit import router as audit_router
from meridian.events.history import router as history_router
from meridian.events.hub import LiveStreams
from meridian.events.router import router as events_router
from meridian.events.stream import router as stream_router
from meridian.fields.router import router as fields_router
from meridian.fulfilment.router import router as fulfilment_router
from meridian.health import router as health_router
from meridian.leads.router import router as leads_router
from meridian.leads.router import rules_router as lead_scoring_router
from meridian.merges import router as merges
from meridian.metrics import RequestMetrics
from meridian.oauth.router import router as oauth_router
from meridian.oauth.sessions import router as sessions_router
from meridian.opportunities.router import router as opportunities_router
from meridian.pipelines.router import router as pipelines_router
from meridian.projections.router import router as projections_router
from meridian.quotas.router import router as quotas_router
from meridian.roles.router import router as roles_router
from meridian.runtime import Runtime
from meridian.search.router import router as search_router
from meridian.settings import Settings, get_settings
from meridian.sharing.router import router as sharing_router
from meridian.telemetry import Tracing
from meridian.transfers import router as transfers
from meridian.users.router import router as users_router
from meridian.web import docs, openapi
from meridian.web.limits import BodySizeLimit
from meridian.web.problems import install_problem_handlers
from meridian.web.ratelimit import RateLimitHeaders
from meridian.web.requests import RequestContext
from meridian.webhooks.router import router as webhooks_router

GC_THRESHOLDS = (50_000, 20, 100)
DESCRIPTION = """A multi-tenant CRM. Tenants use `/v1`, platform administrators
`/admin/v1`; both with a bearer token from `/oauth/token` (client credentials).

Errors are `application/problem+json` (RFC 9457) with a stable `type`; every operation
lists the statuses and problem types it can answer with. The token and revocation
endpoints answer in OAuth's own error format (RFC 6749 §5.2)."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await Runtime.start(settings)
        runtime.start_moving()
        app.state.runtime = runtime
        # GET /v1/stream: the process's reader of the event stream (idle until a stream).
        app.state.live_streams = LiveStreams.build(settings, runtime.redis)
        # Start-up objects never die: freezing them keeps the GC from rescanning them,
        # which cut read p99 several-fold on this kind of machine.
        gc.collect()
        gc.freeze()
        # Requests allocate many short-lived objects; with the default threshold (700)
        # the young generation is collected every few requests and the older ones
        # often enough to show in the p99. A larger first threshold keeps collections
        # rare and cheap (the frozen start-up heap is never rescanned).
        gc.set_threshold(*GC_THRESHOLDS)
        try:
            yield
        finally:
            await app.state.live_streams.close()
            # The job queue's client, made by the first request that handed work over.
            queue = getattr(app.state, "job_queue", None)
            if queue is not None:
                await queue.disconnect()
            await runtime.stop()
            if tracing is not None:
                tracing.close()

    tracing = Tracing.of(settings)
    app = FastAPI(
        title="Meridian CRM API",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # Served by meridian.web.docs with local assets (FastAPI's page uses a CDN).
        docs_url=None,
        redoc_url=None,
    )
    install_problem_handlers(app)
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        paths=[
            (batch.PATH_PATTERN, settings.max_batch_body_bytes),
            (transfers.UPLOAD_PATTERN, settings.max_import_bytes),
        ],
    )
    # Around everything but the request's context: a request's time is all of it.
    app.add_middleware(RequestMetrics)
    # Outermost: every line a request logs, its errors' included, names it.
    app.add_middleware(RequestContext)
    if tracing is not None:
        # Its middleware goes around all of the above: the request's span is the
        # current one for everything the request does.
        tracing.instrument(app)
    # Routes are matched in order, one regex at a time: the hot CRM reads come first.
    for router in (
        merges.merging,  # POST …/merge and its 405s, ahead of the records' /{id} (see there)
        contacts_router,
        accounts_router,
        opportunities_router,
        leads_router,
        lead_scoring_router,
        cases_router,
        search_router,
        fields_router,
        *(merges.router, merges.rules_router, merges.merges_router),
        activities_router,
        timeline_router,
        projections_router,
        pipelines_router,
        sharing_router,
        events_router,
        quotas_router,
        webhooks_router,
        history_router,
        audit_router,
        stream_router,
        fulfilment_router,
        transfers.router,
        users_router,
        roles_router,
        sessions_router,
        oauth_router,
        admin_router,
        health_router,
    ):
        app.include_router(router)
    openapi.install(app)
    docs.install(app)
    return app
