"""The flood scenario end to end (``loadtests.runner.run_flood``, ``python -m
loadtests.flood``): a real API server whose bulkhead lets a tenant hold one shard
connection and wait a millisecond for it, the Neighbour and Flooder users of the
locustfile, and the summary JSON. Figures are never asserted, only what was counted."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtests.credentials import Credentials, CredentialsError
from loadtests.runner import EXIT_ERROR, EXIT_OK, run_flood, summarise
from meridian.settings import Settings
from tests.loadtests.conftest import serving

FLOOD_NAME = "flood: /v1/contacts?filter=contains"


@pytest.fixture(scope="module")
def flood_server(settings: Settings) -> Iterator[str]:
    # One connection per tenant and no patience: any two flood requests at once make a
    # 503 tenant-busy, so the run shows how those are counted.
    with serving(
        settings, MERIDIAN_TENANT_CONNECTIONS="1", MERIDIAN_TENANT_CONNECTIONS_WAIT="0.001"
    ) as base:
        yield base


def _flood(base: str, credentials: Path, tmp_path: Path, **kwargs: Any) -> int:
    # One neighbour: a user makes one request at a time, so the bulkhead of one
    # connection never turns it away (two of one tenant would turn each other away).
    return run_flood(
        base,
        tmp_path / "flood.json",
        credentials=credentials,
        neighbours=1,
        flooders=4,
        duration="4s",
        think_time="0.05-0.2",
        csv_prefix=tmp_path / "flood",
        **kwargs,
    )


@pytest.mark.slow
async def test_flood_measures_the_neighbours_alone_and_during_the_flood(
    flood_server: str, credentials: Path, tmp_path: Path
) -> None:
    loaded = Credentials.load(credentials)
    flooding = loaded.tenants[0]
    beside = loaded.shard_neighbours(flooding)
    assert beside, "the seed alternates regions: the third tenant shares the first's shard"
    code = await asyncio.to_thread(_flood, flood_server, credentials, tmp_path)
    result = json.loads((tmp_path / "flood.json").read_text())
    assert code == EXIT_OK, result["phases"]["flood"]["failures"]
    assert result["flood_tenant"] == {"slug": flooding.slug, "shard_id": flooding.shard_id}
    assert result["neighbour_tenants"] == [t.slug for t in beside]
    assert flooding.slug not in result["neighbour_tenants"]
    assert (result["neighbours"], result["flooders"]) == (1, 4)
    assert set(result["load_average"]) == {"alone", "flood"}

    neighbour = result["neighbour"]
    for phase in ("alone", "during"):
        figures = neighbour[phase]
        assert figures["requests"] > 0
        assert figures["failures"] == 0
        assert 0 <= figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"]
        assert sum(figures["statuses"].values()) == figures["requests"]
    # Ratios of the figures above, as printed (their size is not the test's business).
    assert neighbour["p99_ratio"] == round(
        neighbour["during"]["p99_ms"] / neighbour["alone"]["p99_ms"], 2
    )
    assert neighbour["target_p99_ratio"] == 1.2

    # The flooder's requests happened, each answer counted, the bulkhead's 503s (and any
    # 429 of the rate limits) as successes.
    flood = result["flooder"]
    assert flood["requests"] > 0
    assert flood["failures"] == 0
    assert set(flood["statuses"]) <= {"200", "429", "503"}
    assert sum(flood["statuses"].values()) == flood["requests"]
    assert flood["statuses"].get("200", 0) > 0
    assert flood["statuses"].get("503", 0) > 0

    # The neighbours alone ran alone; during the flood, the flooder only flooded and only
    # the flood tenant flooded.
    alone, during = result["phases"]["alone"], result["phases"]["flood"]
    assert [g["name"] for g in alone["groups"]] == ["neighbour"]
    assert [g["name"] for g in during["groups"]] == ["flood", "neighbour"]
    flood_names = {e["name"] for e in during["endpoints"] if e["name"].startswith("flood: ")}
    assert flood_names == {FLOOD_NAME}
    for summary, allowed in ((alone, set()), (during, flood_names)):
        assert summary["exceptions"] == 0
        for e in summary["endpoints"]:
            name = e["name"]
            assert name == "/oauth/token" or name.startswith("neighbour: ") or name in allowed
    assert (tmp_path / "flood_flood_stats.csv").exists()
    assert (tmp_path / "flood_alone.html").stat().st_size > 0


def _write_credentials(path: Path, shards: list[str]) -> None:
    tenants = [
        {
            "slug": f"t-{n}",
            "id": f"00000000-0000-0000-0000-00000000000{n}",
            "region": "us",
            "shard_id": shard,
            "client_id": f"mc_{n}",
            "client_secret": "secret",
            "seeded": True,
        }
        for n, shard in enumerate(shards)
    ]
    path.write_text(json.dumps({"version": 1, "tenants": tenants}))


def test_neighbours_are_the_other_tenants_of_the_flood_tenants_shard(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    _write_credentials(path, ["us-1", "us-2", "us-1", "us-1"])
    loaded = Credentials.load(path)
    assert loaded.tenant(None).slug == "t-0"
    assert [t.slug for t in loaded.shard_neighbours(loaded.tenant(None))] == ["t-2", "t-3"]
    assert loaded.shard_neighbours(loaded.tenant("t-1")) == ()
    with pytest.raises(CredentialsError, match="t-9"):
        loaded.tenant("t-9")


def test_a_flood_with_nobody_to_measure_does_not_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "credentials.json"
    _write_credentials(path, ["us-1", "us-2"])
    # Refused before the platform is even looked for (nothing listens on port 9).
    assert _flood("http://127.0.0.1:9", path, tmp_path) == EXIT_ERROR
    assert "no other tenant" in capsys.readouterr().out
    assert _flood("http://127.0.0.1:9", path, tmp_path, flood_tenant="t-9") == EXIT_ERROR
    assert "t-9" in capsys.readouterr().out
    assert not (tmp_path / "flood.json").exists()


def test_summary_keeps_the_groups_and_the_answers_by_status(tmp_path: Path) -> None:
    def figures(name: str, requests: int, failures: int, statuses: dict[str, int]) -> Any:
        return {
            "method": "GET", "name": name, "requests": requests, "failures": failures,
            "rps": 1.0, "avg_ms": 5.0, "max_ms": 9.0, "p50_ms": 4, "p95_ms": 8, "p99_ms": 9,
            "statuses": statuses,
        }  # fmt: skip

    final = tmp_path / "run_final.json"
    final.write_text(
        json.dumps(
            {
                "total": figures("Aggregated", 10, 1, {}),
                "endpoints": [figures(FLOOD_NAME, 10, 1, {"200": 6, "503": 3, "500": 1})],
                "groups": [{**figures("flood", 10, 1, {"200": 6, "503": 3, "500": 1})}],
                "failures": [],
                "exceptions": 0,
            }
        )
    )
    summary = summarise(final)
    assert summary["endpoints"][0]["statuses"] == {"200": 6, "503": 3, "500": 1}
    (group,) = summary["groups"]
    assert group["name"] == "flood"
    assert (group["requests"], group["failures"], group["error_rate"]) == (10, 1, 0.1)
    assert group["statuses"] == {"200": 6, "503": 3, "500": 1}
