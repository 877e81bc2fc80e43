"""The request metrics of /metrics: by route template and status (never the path), an
unmatched path as one series, the duration histogram, and only the busiest tenants
named. (Several processes counting into one exposition: tests/test_cli.py; the states
read when scraped: tests/test_health.py.) And the chart's metric contract, against
what the processes serve."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meridian.settings import Settings
from meridian.worker.main import serve_metrics
from tests.fixtures.api import Tenant, instance
from tests.fixtures.redis_servers import free_port
from tests.fixtures.worker import running_worker
from tests.helm.promql import COUNTERS_AND_GAUGES, HISTOGRAMS


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    # An instance of its own: its counts start at zero, and it names one tenant only.
    async with instance(settings.model_copy(update={"metrics_top_tenants": 1})) as client:
        yield client


async def samples(client: httpx.AsyncClient, name: str) -> dict[tuple[str, ...], float]:
    """The samples of ``name``, by their label values in the order of the labels' names."""
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    return {
        tuple(s.labels[k] for k in sorted(s.labels)): s.value
        for f in text_string_to_metric_families(resp.text)
        for s in f.samples
        if s.name == name
    }


async def test_requests_are_counted_by_route_template_and_status(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    for _ in range(3):  # three ids, one route
        missing = await client.get(f"/v1/contacts/{uuid.uuid4()}", headers=tenant.headers)
        assert missing.status_code == 404
    assert (await client.get("/v1/contacts", headers=tenant.headers)).status_code == 200
    assert (await client.get("/v1/contacts")).status_code == 401
    for path in ("/nowhere", f"/v1/{uuid.uuid4()}", "/v1/contacts/x/y/z"):
        assert (await client.get(path, headers=tenant.headers)).status_code == 404

    counted = await samples(client, "meridian_http_requests_total")
    assert counted[("GET", "/v1/contacts/{contact_id}", "404")] == 3
    assert counted[("GET", "/v1/contacts", "200")] == 1
    assert counted[("GET", "/v1/contacts", "401")] == 1
    # Paths no route took are one series, whatever they were.
    assert counted[("GET", "unmatched", "404")] == 3
    # Every route label is a route of the app: no path, no id.
    templates = set(client.app.openapi()["paths"])  # type: ignore[attr-defined]
    assert {route for _m, route, _s in counted} <= templates | {"unmatched"}, counted
    timed = await samples(client, "meridian_http_request_duration_seconds_count")
    assert timed[("GET", "/v1/contacts/{contact_id}")] == 3
    buckets = await samples(client, "meridian_http_request_duration_seconds_bucket")
    assert buckets[("+Inf", "GET", "/v1/contacts/{contact_id}")] == 3


async def test_only_the_busiest_tenants_are_named(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    for _ in range(3):
        assert (await client.get("/v1/contacts", headers=tenant.headers)).status_code == 200
    assert (await client.get("/v1/accounts", headers=other_tenant.headers)).status_code == 200
    assert await samples(client, "meridian_tenant_requests_total") == {(tenant.id,): 3}
    # The other tenant becomes the busier one: it is named instead.
    for _ in range(3):
        assert (await client.get("/v1/accounts", headers=other_tenant.headers)).status_code == 200
    assert await samples(client, "meridian_tenant_requests_total") == {(other_tenant.id,): 4}
    # No request metric carries a tenant.
    counted = await samples(client, "meridian_http_requests_total")
    assert not any(tenant.id in value for key in counted for value in key)


async def test_the_charts_metric_contract_is_what_the_api_and_the_worker_serve(
    client: httpx.AsyncClient, tenant: Tenant, settings: Settings
) -> None:
    """The dashboard and alerts are checked against a contract (tests/helm/promql.py);
    this checks the contract against the processes: every series it names is served,
    with exactly its labels, so the two cannot drift apart."""
    assert (await client.get("/v1/contacts", headers=tenant.headers)).status_code == 200
    port = free_port()
    async with running_worker(settings) as worker:
        worker.context.runtime.metrics.counter(
            "meridian_webhook_dead_letters", "as the delivery job names it", ["reason"]
        ).labels("expired")  # a child, so the family has a sample to read labels from
        runner = await serve_metrics(worker.context.runtime, port, host="127.0.0.1")
        try:
            async with httpx.AsyncClient() as http:
                served = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        finally:
            await runner.cleanup()
    served += (await client.get("/metrics")).text
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(served):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    names = {f.name for f in text_string_to_metric_families(served)}
    for name, expected in COUNTERS_AND_GAUGES.items():
        family = name.removesuffix("_total")
        assert family in names, name
        if name in labels:  # a family without samples yet (no move running) has none
            assert labels[name] == set(expected), name
    for name, expected in HISTOGRAMS.items():
        assert labels[f"{name}_count"] == set(expected), name
        assert labels[f"{name}_bucket"] == {*expected, "le"}, name
