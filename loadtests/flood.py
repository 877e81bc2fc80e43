"""``python -m loadtests.flood``: one tenant floods its shard; the other tenants of that
shard are measured alone, then during the flood (the bulkheads' figure: their p99
during the flood over their p99 alone, target 1.2). Runs ``loadtests.runner.run_flood``
against a running platform, by default the dev platform this folder's `meridian`
commands act on.

    python -m loadtests.flood --neighbours 30 --flooders 32 --duration 1m
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loadtests.credentials import DEFAULT_CREDENTIALS, RESULTS_DIR
from loadtests.runner import run_flood


def _default_host() -> str:
    # Imported here, as `meridian loadtest` does: only the default needs the platform's
    # settings (the dev platform's URL from .meridian/dev.json).
    from meridian.settings import DevPlatformError, get_settings

    try:
        return get_settings().issuer
    except DevPlatformError as exc:
        raise SystemExit(f"flood: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.flood", description=__doc__)
    parser.add_argument("--host", help="the API's base URL (default: the dev platform's)")
    parser.add_argument("--credentials", type=str, default=str(DEFAULT_CREDENTIALS))
    parser.add_argument(
        "--flood-tenant", help="slug of the flooding tenant (default: the file's first)"
    )
    parser.add_argument("--neighbours", type=int, default=30, help="Neighbour users")
    parser.add_argument("--flooders", type=int, default=32, help="Flooder users (no pause)")
    parser.add_argument("--duration", default="1m", help="each phase's run time (30s, 2m)")
    parser.add_argument("--spawn-rate", type=float, help="users per second (default: all in 1 s)")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="Locust worker processes (-1: one per core); one tops out near 7-8k requests/s",
    )
    parser.add_argument("--think-time", help="the neighbours' pause, MIN-MAX (default 0.5-2)")
    parser.add_argument("--zipf-s", type=float, help="skew over the neighbour tenants")
    parser.add_argument("--summary-json", type=str, default=str(RESULTS_DIR / "flood.json"))
    parser.add_argument(
        "--csv-prefix",
        type=str,
        default=str(RESULTS_DIR / "flood"),
        help="prefix of each phase's CSVs, log and HTML report (_alone, _flood)",
    )
    parser.add_argument(
        "--max-p99-ratio",
        type=float,
        help="exit 1 when the neighbours' p99 during / alone is above this (e.g. 1.2)",
    )
    parser.add_argument("--show-locust-output", action="store_true")
    args = parser.parse_args(argv)
    return run_flood(
        args.host or _default_host(),
        Path(args.summary_json),
        credentials=Path(args.credentials),
        flood_tenant=args.flood_tenant,
        neighbours=args.neighbours,
        flooders=args.flooders,
        duration=args.duration,
        spawn_rate=args.spawn_rate,
        processes=args.processes,
        think_time=args.think_time,
        zipf_s=args.zipf_s,
        csv_prefix=Path(args.csv_prefix),
        max_p99_ratio=args.max_p99_ratio,
        show_locust_output=args.show_locust_output,
    )


if __name__ == "__main__":
    sys.exit(main())
