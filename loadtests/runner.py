"""Runs the Locust suite headless against a platform and judges the result.

``run_loadtest`` starts Locust as a subprocess (so ``--processes`` can spread users over
several cores: one Locust process tops out near 7-8k requests/s), lets it write its HTML
report and CSVs, turns the final statistics (written by the locustfile as the run ends,
see ``--final-stats`` there) into a summary JSON (totals and, per endpoint, requests,
failures, p50/p95/p99 and RPS) and returns a non-zero exit code when a threshold given by
the caller is broken.

``run_flood`` runs the flood scenario the same way, twice: the neighbours of one tenant
on its shard alone, then beside that tenant flooding the shard (``python -m
loadtests.flood``).

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
from collections.abc import Sequence
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
        duration_seconds(duration)
        if users < 1 or spawn_rate <= 0:
            raise ValueError("users must be at least 1 and the spawn rate positive")
        _check_processes(processes)
        if max_error_rate is not None and not 0 <= max_error_rate <= 1:
            raise ValueError("max_error_rate is a fraction between 0 and 1")
        if seed_if_needed is not None:
            _seed_if_needed(seed_if_needed, credentials)
        Credentials.load(credentials)  # fail here, clearly, rather than in every worker
        _check_reachable(host)
    except (ValueError, CredentialsError, RuntimeError) as exc:
        _say(f"loadtest: {exc}")
        return EXIT_ERROR
    summary = _run_locust(
        host,
        users,
        spawn_rate,
        duration,
        credentials=credentials,
        html=html,
        csv_prefix=csv_prefix,
        processes=processes,
        think_time=think_time,
        zipf_s=zipf_s,
        locustfile=locustfile,
        show_locust_output=show_locust_output,
    )
    if summary is None:
        return EXIT_ERROR
    verdict = judge(summary, max_error_rate=max_error_rate, max_p95_ms=max_p95_ms)
    summary["thresholds"] = verdict
    _write_json(summary_json, summary)
    _say(render(summary))
    if summary["total"]["requests"] == 0:
        _say("loadtest: no requests were made")
        return EXIT_ERROR
    return EXIT_OK if verdict["passed"] else EXIT_THRESHOLD


def _check_processes(processes: int) -> None:
    if processes == 0 or processes < -1:
        raise ValueError("processes must be -1 (one per core) or at least 1")


def _run_locust(
    host: str,
    users: int,
    spawn_rate: float,
    duration: str,
    *,
    credentials: Path,
    html: Path | None,
    csv_prefix: Path | None,
    processes: int,
    think_time: str | None,
    zipf_s: float | None,
    locustfile: Path,
    show_locust_output: bool,
    user_classes: Sequence[str] = (),
    options: Sequence[str] = (),
) -> dict[str, Any] | None:
    """One headless Locust run: its summary (see ``summarise``), or None when Locust
    failed (said on stdout, with the end of its log). ``user_classes`` names the users
    to run (none: the default mix); ``options`` go on Locust's command line last."""
    seconds = duration_seconds(duration)
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
        *user_classes,
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
        # Request failures are judged by the caller; a non-zero exit from Locust then
        # means Locust itself failed.
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
    # Last: an option taking any number of values (--config-users) must not swallow
    # what follows it.
    command += options
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
            return None
        return summarise(
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
        return None
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


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


def _statuses(raw: dict[str, Any]) -> dict[str, int]:
    """Answers by HTTP status (``"0"``: none came)."""
    return {str(k): int(v) for k, v in (raw.get("statuses") or {}).items()}


def summarise(final_stats: Path, *, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary of a run from the final statistics the locustfile wrote."""
    data = json.loads(final_stats.read_text())
    endpoints = [
        {"method": e["method"], "name": e["name"], **_figures(e), "statuses": _statuses(e)}
        for e in data["endpoints"]
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
        # Requests named `group: …` (the flood scenario's `flood: `, `neighbour: `), each
        # group's together.
        "groups": [
            {"name": g["name"], **_figures(g), "statuses": _statuses(g)}
            for g in data.get("groups") or []
        ],
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


# -- the flood scenario ------------------------------------------------------------------

# The issue's target: the neighbours' p99 during a flood within 20 % of their p99 alone.
FLOOD_TARGET_P99_RATIO = 1.2


def run_flood(
    host: str,
    summary_json: Path,
    *,
    credentials: Path,
    flood_tenant: str | None = None,
    neighbours: int = 30,
    flooders: int = 32,
    duration: str = "1m",
    spawn_rate: float | None = None,
    processes: int = 1,
    think_time: str | None = None,
    zipf_s: float | None = None,
    csv_prefix: Path | None = None,
    max_p99_ratio: float | None = None,
    locustfile: Path = LOCUSTFILE,
    show_locust_output: bool = False,
) -> int:
    """One tenant flooding its shard, and the other tenants of that shard beside it.

    Two Locust runs of ``duration`` each: ``neighbours`` Neighbour users (sales reps of
    the flood tenant's shard neighbours) alone, then the same with ``flooders`` Flooder
    users of ``flood_tenant`` (a slug; None: the credentials file's first tenant).
    Statistics are reset once every user of a run is started (``--reset-stats``), so
    the ramp-up is not measured. The summary has the neighbours' figures in both runs,
    their p99 and p50 ratios, and the flooder's answers by status; ``max_p99_ratio``
    makes a ratio above it exit 1. ``csv_prefix`` (None: a scratch folder) gets
    ``_alone`` and ``_flood`` for each run's CSVs, log and HTML report.
    """
    host = host.rstrip("/")
    try:
        duration_seconds(duration)
        if neighbours < 1 or flooders < 1:
            raise ValueError("the flood needs at least one neighbour and one flooder")
        if spawn_rate is not None and spawn_rate <= 0:
            raise ValueError("the spawn rate must be positive")
        _check_processes(processes)
        loaded = Credentials.load(credentials)
        flooding = loaded.tenant(flood_tenant)
        beside = loaded.shard_neighbours(flooding)
        if not beside:
            raise ValueError(
                f"no other tenant of the credentials file is on {flooding.slug}'s shard "
                f"{flooding.shard_id}: there is no neighbour to measure"
            )
        _check_reachable(host)
    except (ValueError, CredentialsError, RuntimeError) as exc:
        _say(f"flood: {exc}")
        return EXIT_ERROR

    users = neighbours + flooders
    # Everyone within about a second: the measured time is what is left of `duration`.
    rate = spawn_rate if spawn_rate is not None else float(users)
    scratch = Path(tempfile.mkdtemp(prefix="meridian-flood-")) if csv_prefix is None else None
    prefix = csv_prefix if csv_prefix is not None else (scratch or Path()) / "flood"
    started_at = datetime.now(UTC)
    started = time.monotonic()
    scenario = ["--flood-tenant", flooding.slug, "--reset-stats"]
    phases: dict[str, dict[str, Any]] = {}
    loads: dict[str, list[float]] = {}
    try:
        for phase, classes, count, options in (
            ("alone", ("Neighbour",), neighbours, scenario),
            (
                "flood",
                ("Neighbour", "Flooder"),
                users,
                [
                    *scenario,
                    "--config-users",
                    json.dumps({"user_class_name": "Flooder", "fixed_count": flooders}),
                ],
            ),
        ):
            loads[phase] = [round(x, 2) for x in os.getloadavg()]
            _say(f"flood: {phase}: {count} users for {duration} (load {loads[phase][0]:g})")
            summary = _run_locust(
                host,
                count,
                rate if phase == "flood" else min(rate, float(neighbours)),
                duration,
                credentials=credentials,
                html=Path(f"{prefix}_{phase}.html") if scratch is None else None,
                csv_prefix=Path(f"{prefix}_{phase}"),
                processes=processes,
                think_time=think_time,
                zipf_s=zipf_s,
                locustfile=locustfile,
                show_locust_output=show_locust_output,
                user_classes=classes,
                options=options,
            )
            if summary is None:
                return EXIT_ERROR
            phases[phase] = summary
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    alone = _group(phases["alone"], "neighbour")
    during = _group(phases["flood"], "neighbour")
    flood = _group(phases["flood"], "flood")
    result: dict[str, Any] = {
        "scenario": "flood",
        "host": host,
        "credentials": str(credentials),
        "flood_tenant": {"slug": flooding.slug, "shard_id": flooding.shard_id},
        "neighbour_tenants": [t.slug for t in beside],
        "neighbours": neighbours,
        "flooders": flooders,
        "duration": duration,
        "processes": processes,
        "started_at": started_at.isoformat(timespec="seconds"),
        "wall_seconds": round(time.monotonic() - started, 1),
        "load_average": loads,
        "neighbour": {
            "alone": alone,
            "during": during,
            "p50_ratio": _ratio(during, alone, "p50_ms"),
            "p99_ratio": _ratio(during, alone, "p99_ms"),
            "target_p99_ratio": FLOOD_TARGET_P99_RATIO,
        },
        "flooder": flood,
        "phases": phases,
    }
    ratio = result["neighbour"]["p99_ratio"]
    violations = []
    if max_p99_ratio is not None and (ratio is None or ratio > max_p99_ratio):
        violations.append(f"neighbour p99 during / alone {ratio} > {max_p99_ratio:g}")
    result["thresholds"] = {
        "max_p99_ratio": max_p99_ratio,
        "passed": not violations,
        "violations": violations,
    }
    _write_json(summary_json, result)
    _say(render_flood(result))
    if not alone["requests"] or not during["requests"]:
        _say("flood: the neighbours made no requests")
        return EXIT_ERROR
    if not flood["requests"]:
        _say("flood: the flooders made no requests")
        return EXIT_ERROR
    return EXIT_THRESHOLD if violations else EXIT_OK


def _group(summary: dict[str, Any], name: str) -> dict[str, Any]:
    """A group's figures in a run's summary (zeros when it made no request)."""
    for group in summary["groups"]:
        if group["name"] == name:
            return {k: v for k, v in group.items() if k != "name"}
    return {**_figures({"requests": 0, "failures": 0}), "statuses": {}}


def _ratio(during: dict[str, Any], alone: dict[str, Any], key: str) -> float | None:
    if not during.get(key) or not alone.get(key):
        return None
    return round(float(during[key]) / float(alone[key]), 2)


def render_flood(result: dict[str, Any]) -> str:
    """The flood's figures as a short table."""
    flood, neighbour = result["flooder"], result["neighbour"]
    lines = [
        f"flood of {result['flood_tenant']['slug']} on {result['flood_tenant']['shard_id']}: "
        f"{result['flooders']} flooders; {result['neighbours']} neighbours on "
        f"{', '.join(result['neighbour_tenants'])}; {result['duration']} per phase",
        f"{'':<28} {'reqs':>7} {'fail':>5} {'rps':>7} {'p50':>6} {'p95':>6} {'p99':>6}",
    ]
    for label, e in (
        ("neighbours alone", neighbour["alone"]),
        ("neighbours during the flood", neighbour["during"]),
        ("flooder", flood),
    ):
        lines.append(
            f"{label:<28} {e['requests']:>7} {e['failures']:>5} {e['rps']:>7.1f} "
            f"{_ms(e['p50_ms']):>6} {_ms(e['p95_ms']):>6} {_ms(e['p99_ms']):>6}"
        )
    ratio = neighbour["p99_ratio"]
    target = neighbour["target_p99_ratio"]
    verdict = "no figure" if ratio is None else ("met" if ratio <= target else "missed")
    lines.append(
        f"neighbour p99 during / alone: {_ms(ratio)} (target <= {target:g}: {verdict}); "
        f"p50: {_ms(neighbour['p50_ratio'])}"
    )
    answers = ", ".join(f"{s}: {n}" for s, n in flood["statuses"].items()) or "none"
    lines.append(f"flooder answers by status: {answers}")
    for violation in result["thresholds"]["violations"]:
        lines.append(f"FAILED: {violation}")
    return "\n".join(lines)


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
