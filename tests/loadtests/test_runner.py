"""The load-test runner end to end: a seeded platform, a real API server on a free
port, Locust as a subprocess, the summary JSON and the threshold exit codes."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtests.credentials import Credentials, Zipf
from loadtests.runner import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_THRESHOLD,
    duration_seconds,
    judge,
    run_loadtest,
    summarise,
)
from meridian_dev.postgres import free_port

DRIVER = Path(__file__).resolve().parent / "task_driver.py"


def _run(base: str, credentials: Path, tmp_path: Path, **kwargs: Any) -> int:
    return run_loadtest(
        base,
        4,
        4,
        "6s",
        tmp_path / "summary.json",
        credentials=credentials,
        html=tmp_path / "report.html",
        csv_prefix=tmp_path / "stats",
        # Fast users: a short run still visits every scenario.
        think_time="0.05-0.2",
        **kwargs,
    )


@pytest.mark.slow
async def test_runner_writes_summary_and_passes_thresholds(
    api_server: str, credentials: Path, tmp_path: Path
) -> None:
    code = await asyncio.to_thread(
        _run, api_server, credentials, tmp_path, max_error_rate=0.0, max_p95_ms=60_000
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code == EXIT_OK, summary.get("failures")
    total = summary["total"]
    assert total["requests"] > 20
    assert total["failures"] == 0
    assert total["error_rate"] == 0.0
    assert total["rps"] > 0
    assert 0 <= total["p50_ms"] <= total["p95_ms"] <= total["p99_ms"]
    assert total["p95_ms"] > 0
    assert summary["exceptions"] == 0
    assert summary["thresholds"] == {
        "max_error_rate": 0.0,
        "max_p95_ms": 60_000,
        "passed": True,
        "violations": [],
    }
    names = {(e["method"], e["name"]) for e in summary["endpoints"]}
    # Tokens come from the real token endpoint; requests group by templated path.
    assert ("POST", "/oauth/token") in names
    assert ("GET", "/v1/contacts/{id}") in names or ("GET", "/v1/contacts") in names
    # Four users: the admin, then (by weight) a sales rep, a manager and a support agent,
    # whose first task is as likely as any (each user runs ~30 in the 6 s).
    assert any(n.startswith("/v1/leads") for _, n in names)
    assert any(n.startswith("/v1/cases") for _, n in names)
    assert not any(
        len(part) == 36 and part.count("-") == 4 for _, n in names for part in n.split("/")
    ), "a raw id leaked into a request name"
    # The flood scenario's users run only when named: the default mix has none of them.
    assert not any(n.startswith(("flood: ", "neighbour: ")) for _, n in names), names
    assert summary["groups"] == []
    for endpoint in summary["endpoints"]:
        assert set(endpoint) >= {"requests", "failures", "p50_ms", "p95_ms", "p99_ms", "rps"}
        # Every request's answer is counted by status (a token or a page: 200; a 0 would
        # be no answer at all, which this run must not have).
        assert sum(endpoint["statuses"].values()) == endpoint["requests"], endpoint
        assert "0" not in endpoint["statuses"], endpoint
    assert (tmp_path / "report.html").stat().st_size > 0
    assert (tmp_path / "stats_stats.csv").exists()
    # The summary counts what Locust's own final table counts (its CSVs, rewritten once
    # a second and not at exit, can miss the last second's requests).
    log = (tmp_path / "stats_locust.log").read_text()
    aggregated = next(line for line in log.splitlines() if "Aggregated" in line)
    assert int(aggregated.split()[1]) == total["requests"], aggregated


def _one_tenant(credentials: Path, out: Path) -> dict[str, Any]:
    """A credentials file of the first tenant only; returns its entry."""
    data = json.loads(credentials.read_text())
    tenant: dict[str, Any] = data["tenants"][0]
    out.write_text(json.dumps({**data, "tenants": [tenant]}))
    return tenant


@pytest.mark.slow
async def test_every_scenario_task_runs_cleanly(
    api_server: str, credentials: Path, tmp_path: Path
) -> None:
    """Each task of the users, twice in turn, on one tenant prepared so the rarer paths
    are taken: the lead a rep converts first is a known contact's (409 duplicate, then
    linked), the second one is qualified by the rep first; an agent creates a case, logs
    a call on it, resolves it."""
    single = tmp_path / "credentials.json"
    tenant = _one_tenant(credentials, single)
    async with httpx.AsyncClient(base_url=api_server) as client:
        token = await client.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(tenant["client_id"], tenant["client_secret"]),
        )
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        # The only qualified lead is one whose e-mail is on a contact already.
        listed = await client.get("/v1/leads", params={"limit": 200}, headers=headers)
        for lead in listed.json()["data"]:
            if lead["status"] == "qualified":
                done = await client.patch(
                    f"/v1/leads/{lead['id']}", json={"status": "working"}, headers=headers
                )
                assert done.status_code == 200, done.text
        contacts = await client.get("/v1/contacts", params={"limit": 200}, headers=headers)
        known = next(c for c in contacts.json()["data"] if c["email"])
        made = await client.post(
            "/v1/leads",
            json={"last_name": known["last_name"], "email": known["email"], "status": "qualified"},
            headers=headers,
        )
        assert made.status_code == 201, made.text
    users = ["SalesRep", "Manager", "SupportAgent", "IntegrationClient"]
    command = [sys.executable, str(DRIVER), "--host", api_server, "--credentials", str(single)]
    done_run = await asyncio.to_thread(
        subprocess.run,
        [*command, "--rounds", "2", *users],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done_run.returncode == 0, done_run.stderr[-3000:]
    result = json.loads(done_run.stdout.strip().splitlines()[-1])
    assert result["exceptions"] == []
    assert result["failures"] == []
    made_requests = {(r["method"], r["name"]) for r in result["requests"] if r["requests"]}
    expected = {
        # SalesRep: leads by score, a lead and its timeline, a call on it; the known
        # contact's lead converted by linking that contact, then one qualified and
        # converted.
        ("GET", "/v1/leads/{id}"),
        ("GET", "/v1/leads/{id}/timeline"),
        ("POST", "/v1/activities (lead)"),
        ("GET", "/v1/leads?status=qualified&sort=-score"),
        ("POST", "/v1/leads/{id}/convert"),
        ("POST", "/v1/leads/{id}/convert (link contact)"),
        ("GET", "/v1/leads?status=working&sort=-score"),
        ("PATCH", "/v1/leads/{id}"),
        # Manager: the scoring rules.
        ("GET", "/v1/lead-scoring/rules"),
        # SupportAgent: the queue, a case and its timeline, a new case, a call on it, a
        # case resolved or closed.
        ("GET", "/v1/cases?overdue=true&sort=due_at"),
        ("GET", "/v1/cases/{id}"),
        ("GET", "/v1/cases/{id}/timeline"),
        ("POST", "/v1/cases"),
        ("POST", "/v1/activities (case)"),
        ("PATCH", "/v1/cases/{id}"),
        # SalesRep: the search box; IntegrationClient: a contacts sync by external ids,
        # a CSV of leads imported and its progress read.
        ("GET", "/v1/search?q"),
        ("POST", "/v1/contacts/batch"),
        ("POST", "/v1/imports"),
        ("GET", "/v1/imports/{id}"),
    }
    assert expected <= made_requests, sorted(expected - made_requests)
    assert made_requests & {
        ("GET", "/v1/leads?sort=-score"),
        ("GET", "/v1/leads?owner_id={id}&sort=-score"),
    }
    assert not any(
        len(part) == 36 and part.count("-") == 4 for _, n in made_requests for part in n.split("/")
    ), "a raw id leaked into a request name"


@pytest.mark.slow
async def test_runner_fails_when_a_threshold_is_broken(
    api_server: str, credentials: Path, tmp_path: Path
) -> None:
    code = await asyncio.to_thread(_run, api_server, credentials, tmp_path, max_p95_ms=0.001)
    assert code == EXIT_THRESHOLD
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["thresholds"]["passed"] is False
    assert summary["thresholds"]["violations"][0].startswith("p95")


async def test_runner_reports_an_unreachable_platform(credentials: Path, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code = await asyncio.to_thread(_run, base, credentials, tmp_path)
    assert code == EXIT_ERROR
    assert not (tmp_path / "summary.json").exists()


def test_missing_credentials_file_is_an_error(tmp_path: Path) -> None:
    code = run_loadtest(
        "http://127.0.0.1:9",
        1,
        1,
        "5s",
        tmp_path / "summary.json",
        credentials=tmp_path / "missing.json",
    )
    assert code == EXIT_ERROR


def test_durations_use_locust_syntax() -> None:
    assert duration_seconds("30s") == 30
    assert duration_seconds("2m") == 120
    assert duration_seconds("1h30m") == 5400
    assert duration_seconds("45") == 45
    with pytest.raises(ValueError, match="duration"):
        duration_seconds("soon")


async def test_zipf_skew_over_the_seeded_tenants(credentials: Path) -> None:
    tenants = Credentials.load(credentials).tenants
    assert len(tenants) == 3
    zipf = Zipf(tenants, 1.1)
    assert zipf.share(0) > zipf.share(1) > zipf.share(2)
    assert abs(sum(zipf.share(i) for i in range(3)) - 1) < 1e-9
    rng = random.Random(3)
    picks = [zipf.pick(rng).slug for _ in range(3000)]
    assert picks.count(tenants[0].slug) > picks.count(tenants[2].slug)


def test_summary_of_the_final_stats_and_the_error_rate_threshold(tmp_path: Path) -> None:
    """The final statistics the locustfile writes, with failures: totals, per endpoint,
    verdict."""
    final = tmp_path / "run_final.json"
    final.write_text(
        json.dumps(
            {
                "total": {
                    "method": "", "name": "Aggregated", "requests": 100, "failures": 2,
                    "rps": 3.3333, "avg_ms": 6.04, "max_ms": 80.0,
                    "p50_ms": 4, "p95_ms": 14, "p99_ms": 60,
                },
                "endpoints": [
                    {
                        "method": "POST", "name": "/v1/contacts", "requests": 10, "failures": 2,
                        "rps": 0.33, "avg_ms": 11.0, "max_ms": 80.0,
                        "p50_ms": 9, "p95_ms": 60, "p99_ms": 80,
                    },
                    {
                        "method": "GET", "name": "/v1/contacts/{id}", "requests": 90,
                        "failures": 0, "rps": 3.0, "avg_ms": 5.5, "max_ms": 40.1,
                        "p50_ms": 4, "p95_ms": 12, "p99_ms": 30,
                    },
                ],
                "failures": [
                    {
                        "method": "POST", "name": "/v1/contacts",
                        "error": "CatchResponseError('HTTP 503 shard-unavailable')",
                        "occurrences": 2,
                    }
                ],
                "exceptions": 0,
            }
        )
    )  # fmt: skip
    summary = summarise(final)
    assert summary["total"] == {
        "requests": 100,
        "failures": 2,
        "error_rate": 0.02,
        "rps": 3.33,
        "avg_ms": 6.0,
        "p50_ms": 4,
        "p95_ms": 14,
        "p99_ms": 60,
        "max_ms": 80.0,
    }
    assert [(e["method"], e["name"]) for e in summary["endpoints"]] == [
        ("GET", "/v1/contacts/{id}"),
        ("POST", "/v1/contacts"),
    ]
    assert summary["endpoints"][1]["error_rate"] == 0.2
    assert summary["failures"] == [
        {
            "method": "POST",
            "name": "/v1/contacts",
            "error": "HTTP 503 shard-unavailable",
            "occurrences": 2,
        }
    ]
    assert summary["exceptions"] == 0
    assert judge(summary, max_error_rate=0.05, max_p95_ms=20)["passed"] is True
    verdict = judge(summary, max_error_rate=0.01, max_p95_ms=None)
    assert verdict["passed"] is False
    assert verdict["violations"] == ["error rate 2.00% > 1.00%"]
