"""Runs the Locust suite headless against a platform and judges the result.

``run_loadtest`` starts Locust as a subprocess (so ``--processes`` can spread users over
several cores: one Locust process tops out near 7-8k requests/s), lets it write its HTML
report and CSVs, turns the final statistics (written by the locustfile as the run ends,
see ``--final-stats`` there) into a summary JSON (totals and, per endpoint, requests,
failures, p50/p95/p99 and RPS) and returns a non-zero exit code when a threshold given by
the caller is broken.

Exit codes: 0 passed; 1 a threshold was broken; 2 the test could not run or produced
no requests (platform unreachable, bad credentials file, Locust failed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from loadtests.credentials import Credentials, CredentialsError

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
EXIT_OK, EXIT_THRESHOLD, EXIT_ERROR = 0, 1, 2
_DURATION = re.compile(r"^(?:\d+h)?(?:\d+m)?(?:\d+s)?$|^\d+$")
# Locust needs a moment to start its processes and, at the end, to write its reports.
_GRACE_SECONDS = 120


@dataclass(frozen=True, slots=True)
class SeedPlan:
    """What to seed when the credentials file does not already cover it.

    Seeding talks to the databases directly (see ``loadtests.seed``), with the settings of
    the platform the command acts on (``meridian.settings.get_settings``).
    """

    tenants: int
    contacts: int
    prefix: str = "seed"


def duration_seconds(duration: str) -> int:
    """Locust's ``-t`` syntax (``30s``, ``2m``, ``1h30m``, or plain seconds) in seconds."""
    if not duration or not _DURATION.match(duration):
        raise ValueError(f"duration must look like 30s, 5m or 1h30m, not {duration!r}")
    if duration.isdigit():
        return int(duration)
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([hms])", duration))


def run_loadtest(
    host: str,
    users: int,
    spawn_rate: float,
    duration: str,
    summary_json: Path,
    *,
    credentials: Path,
    html: Path | None = None,
    csv_prefix: Path | None = None,
    max_error_rate: float | None = None,
    max_p95_ms: float | None = None,
    processes: int = 1,
    seed_if_needed: SeedPlan | None = None,
    think_time: str | None = None,
    zipf_s: float | None = None,
    locustfile: Path = LOCUSTFILE,
    show_locust_output: bool = False,
) -> int:
    """Run the suite for ``duration`` with ``users`` users against ``host``.

    ``max_error_rate`` is a fraction (0.01 = 1% of requests failed); ``max_p95_ms``
    bounds the 95th percentile of all requests. ``processes`` > 1 runs that many Locust
    worker processes (-1: one per core). Locust's own output goes to
    ``<csv_prefix>_locust.log`` unless ``show_locust_output``. Returns the exit code
    (see the module doc).
    """
    host = host.rstrip("/")
    try:
        seconds = duration_seconds(duration)
        if users < 1 or spawn_rate <= 0:
            raise ValueError("users must be at least 1 and the spawn rate positive")
        if processes == 0 or processes < -1:
            raise ValueError("processes must be -1 (one per core) or at least 1")
        if max_error_rate is not None and not 0 <= max_error_rate <= 1:
            raise ValueError("max_error_rate is a fraction between 0 and 1")
        if seed_if_needed is not None:
            _seed_if_needed(seed_if_needed, credentials)
        Credentials.load(credentials)  # fail here, clearly, rather than in every worker
        _check_reachable(host)
    except (ValueError, CredentialsError, RuntimeError) as exc:
        _say(f"loadtest: {exc}")
        return EXIT_ERROR

    scratch = None
    if csv_prefix is None:
        scratch = Path(tempfile.mkdtemp(prefix="meridian-loadtest-"))
        csv_prefix = scratch / "locust"
    csv_prefix.parent.mkdir(parents=True, exist_ok=True)
    final_stats = Path(f"{csv_prefix}_final.json")
    final_stats.unlink(missing_ok=True)  # a previous run's must not pass for this one's
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(locustfile),
        "--headless",
        "--only-summary",
        "-u",
        str(users),
        "-r",
        f"{spawn_rate:g}",
        "-t",
        duration,
        "--host",
        host,
        "--csv",
        str(csv_prefix),
        "--final-stats",
        str(final_stats),
        "--credentials",
        str(credentials),
        # Request failures are judged below against the thresholds; a non-zero exit
        # from Locust then means Locust itself failed.
        "--exit-code-on-error",
        "0",
    ]
    if html is not None:
        command += ["--html", str(html)]
    if processes != 1:
        command += ["--processes", str(processes)]
    if think_time is not None:
        command += ["--think-time", think_time]
    if zipf_s is not None:
        command += ["--zipf-s", f"{zipf_s:g}"]
    started_at = datetime.now(UTC)
    started = time.monotonic()
    # Locust logs everything, its final tables included, on stderr: keep it in a file
    # next to the CSVs (our summary is printed instead) unless asked to show it.
    log_path = Path(f"{csv_prefix}_locust.log")
    try:
        with log_path.open("wb") as log:
            output = None if show_locust_output else log
            completed = subprocess.run(  # noqa: S603 - our own argv, no shell
                command,
                stdout=output,
                stderr=output,
                timeout=seconds + _GRACE_SECONDS,
                check=False,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        wall = time.monotonic() - started
        if completed.returncode != 0 or not final_stats.exists():
            _say(f"loadtest: locust exited with {completed.returncode}; no usable statistics")
            _say(_tail(log_path))
            return EXIT_ERROR
        summary = summarise(
            final_stats,
            meta={
                "host": host,
                "users": users,
                "spawn_rate": spawn_rate,
                "duration": duration,
                "processes": processes,
                "credentials": str(credentials),
                "started_at": started_at.isoformat(timespec="seconds"),
                "wall_seconds": round(wall, 1),
                "html": str(html) if html else None,
                "csv_prefix": str(csv_prefix) if scratch is None else None,
            },
        )
    except subprocess.TimeoutExpired:
        _say(f"loadtest: locust did not finish within {seconds + _GRACE_SECONDS} s")
        return EXIT_ERROR
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    verdict = judge(summary, max_error_rate=max_error_rate, max_p95_ms=max_p95_ms)
    summary["thresholds"] = verdict
    _write_json(summary_json, summary)
    _say(render(summary))
    if summary["total"]["requests"] == 0:
        _say("loadtest: no requests were made")
        return EXIT_ERROR
    return EXIT_OK if verdict["passed"] else EXIT_THRESHOLD


# -- the final statistics ----------------------------------------------------------------


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _figures(raw: dict[str, Any]) -> dict[str, Any]:
    requests, failures = int(raw["requests"]), int(raw["failures"])
    return {
        "requests": requests,
        "failures": failures,
        "error_rate": round(failures / requests, 6) if requests else 0.0,
        "rps": round(float(raw.get("rps") or 0.0), 2),
        "avg_ms": _round(raw.get("avg_ms")),
        "p50_ms": raw.get("p50_ms"),
        "p95_ms": raw.get("p95_ms"),
        "p99_ms": raw.get("p99_ms"),
        "max_ms": _round(raw.get("max_ms")),
    }


def summarise(final_stats: Path, *, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary of a run from the final statistics the locustfile wrote."""
    data = json.loads(final_stats.read_text())
    endpoints = [
        {"method": e["method"], "name": e["name"], **_figures(e)} for e in data["endpoints"]
    ]
    endpoints.sort(key=lambda e: (-e["requests"], e["name"], e["method"]))
    failures = [
        {
            "method": f["method"],
            "name": f["name"],
            "error": _unwrap(f["error"]),
            "occurrences": int(f["occurrences"]),
        }
        for f in data["failures"]
    ]
    failures.sort(key=lambda r: -r["occurrences"])
    return {
        **(meta or {}),
        "total": _figures(data["total"]),
        "endpoints": endpoints,
        "failures": failures[:50],
        # Python exceptions inside the scenarios: a bug in the load test, not the API.
        "exceptions": int(data["exceptions"]),
    }


_WRAPPED = re.compile(r"^CatchResponseError\((['\"])(.*)\1\)$", re.DOTALL)


def _unwrap(error: str) -> str:
    """Locust stores a failure message as ``CatchResponseError('…')``: keep the message."""
    found = _WRAPPED.match(error)
    return found.group(2) if found else error


def judge(
    summary: dict[str, Any], *, max_error_rate: float | None, max_p95_ms: float | None
) -> dict[str, Any]:
    """Thresholds apply to all requests together (the Aggregated row)."""
    total = summary["total"]
    violations = []
    if max_error_rate is not None and total["error_rate"] > max_error_rate:
        violations.append(f"error rate {total['error_rate']:.2%} > {max_error_rate:.2%}")
    p95 = total.get("p95_ms")
    if max_p95_ms is not None and (p95 is None or p95 > max_p95_ms):
        violations.append(f"p95 {p95} ms > {max_p95_ms:g} ms")
    return {
        "max_error_rate": max_error_rate,
        "max_p95_ms": max_p95_ms,
        "passed": not violations,
        "violations": violations,
    }


def render(summary: dict[str, Any]) -> str:
    """A short human-readable table of the summary."""
    total = summary["total"]
    lines = [
        f"{'endpoint':<58} {'reqs':>7} {'fail':>5} {'rps':>7} {'p50':>6} {'p95':>6} {'p99':>6}"
    ]
    for e in [*summary["endpoints"], {"method": "", "name": "total", **total}]:
        label = f"{e['method']} {e['name']}".strip()[:58]
        lines.append(
            f"{label:<58} {e['requests']:>7} {e['failures']:>5} {e['rps']:>7.1f} "
            f"{_ms(e['p50_ms']):>6} {_ms(e['p95_ms']):>6} {_ms(e['p99_ms']):>6}"
        )
    verdict = summary.get("thresholds") or {}
    lines.append(
        f"error rate {total['error_rate']:.2%}; "
        + ("thresholds passed" if verdict.get("passed", True) else "FAILED: ")
        + "; ".join(verdict.get("violations", []))
    )
    return "\n".join(lines)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


# -- preparation -------------------------------------------------------------------------


def _check_reachable(host: str) -> None:
    try:
        resp = httpx.get(f"{host}/healthz", timeout=5.0)
    except httpx.HTTPError as exc:
        raise RuntimeError(f"{host} is not reachable ({exc})") from exc
    if resp.status_code != 200:
        raise RuntimeError(f"{host}/healthz answered {resp.status_code}")


def _covered(plan: SeedPlan, credentials: Path) -> bool:
    try:
        data = json.loads(credentials.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or data.get("prefix") != plan.prefix:
        return False
    seeded = [t for t in data.get("tenants") or [] if isinstance(t, dict) and t.get("seeded")]
    return len(seeded) >= plan.tenants


def _seed_if_needed(plan: SeedPlan, credentials: Path) -> None:
    if _covered(plan, credentials):
        return
    # Imported here: the rest of the runner (and Locust) needs no part of the platform.
    from loadtests.seed import SeedError, run_blocking, seed
    from meridian.settings import DevPlatformError, get_settings

    try:
        settings = get_settings()
        result = run_blocking(
            seed(
                settings,
                tenants=plan.tenants,
                contacts=plan.contacts,
                prefix=plan.prefix,
                out=credentials,
            )
        )
    except (SeedError, DevPlatformError) as exc:
        raise RuntimeError(f"seeding failed: {exc}") from exc
    _say(f"seeded: {result.summary()}")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _say(message: str) -> None:
    print(message, flush=True)
