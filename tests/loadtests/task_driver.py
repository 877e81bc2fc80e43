"""Runs every task of some Locust user classes of ``loadtests/locustfile.py`` in turn,
a few rounds, against a live API, and prints the request statistics, failures and
exceptions as JSON: what ``test_runner.test_every_scenario_task_runs_cleanly`` checks.

A process of its own: importing Locust patches the standard library for gevent, which
the test process (asyncio) must not get.

    python tests/loadtests/task_driver.py --host URL --credentials FILE SalesRep ...
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Any

# Run as a script: the checkout's root is not on the path otherwise.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import locust
from locust.env import Environment
from locust.exception import StopUser

from loadtests import locustfile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--credentials", required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("users", nargs="+", help="user class names, run in this order")
    args = parser.parse_args(argv)
    options = argparse.Namespace(
        credentials=args.credentials, zipf_s=0.0, think_time="0", final_stats=""
    )
    classes = [getattr(locustfile, name) for name in args.users]
    env = Environment(
        user_classes=classes, host=args.host, events=locust.events, parsed_options=options
    )
    env.create_local_runner()  # its request listener keeps the statistics
    exceptions: list[dict[str, str]] = []
    ran: list[str] = []
    for cls in classes:
        cls.host = args.host  # as Locust's runner sets it before spawning
        user = cls(env)
        try:
            user.on_start()
        except StopUser:
            exceptions.append({"task": f"{cls.__name__}.on_start", "error": "StopUser"})
            continue
        # Every task once per round, in declaration order (weights repeat them in .tasks).
        tasks: list[Any] = list(dict.fromkeys(cls.tasks))
        for _ in range(args.rounds):
            for task in tasks:
                name = f"{cls.__name__}.{task.__name__}"
                ran.append(name)
                try:
                    task(user)
                except Exception:
                    exceptions.append({"task": name, "error": traceback.format_exc()})
    result = {
        "ran": ran,
        "requests": [
            {
                "method": e.method,
                "name": e.name,
                "requests": e.num_requests,
                "failures": e.num_failures,
            }
            for e in env.stats.entries.values()
        ],
        "failures": [
            {"method": e.method, "name": e.name, "error": str(e.error), "count": e.occurrences}
            for e in env.stats.errors.values()
        ],
        "exceptions": exceptions,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
