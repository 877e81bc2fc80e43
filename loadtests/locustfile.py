"""Meridian's Locust scenarios: people and machines using a seeded platform.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 \\
           --credentials loadtest-credentials.json          # written by `meridian seed`

Each simulated user belongs to one tenant, picked with a Zipf skew over the tenants of
the credentials file (so hot tenants exist), and gets its token from the real token
endpoint (cached per tenant and refreshed before it expires). Requests are named by
template (``/v1/contacts/{id}``) so statistics group per endpoint.

- SalesRep: browses and filters lists page by page, searches (a name or a company as
  it is typed, then its next page), opens records and timelines,
  moves deals along the pipeline (If-Match with the ETag just read), logs activities;
  works leads (the hottest first, a lead and its timeline, calls logged on it) and now
  and then converts a qualified one with a deal (a 409 duplicate is answered by linking
  the contact it names).
- Manager: the pipeline board (opportunities per stage), deals closing soon, the
  biggest deals, account and opportunity timelines, recent activity, the lead scoring
  rules and leads by score, a segment's accounts by annual revenue (custom fields).
- SupportAgent: acts with the support agent's role (the tenant's support desk client):
  the overdue queue by due time and its own cases, a case with its timeline and
  contact, new cases for seeded contacts, calls logged on cases, cases resolved or
  closed with a resolution (If-Match with the ETag just read).
- IntegrationClient: imports batches (an account, its contacts, a deal) with an
  Idempotency-Key per record, retrying the same key after timeouts and 5xx/429, and
  now and then replaying a request whose answer it "lost" to check it is not applied
  twice; syncs contacts in batches (`POST /v1/contacts/batch`, upserts by its own
  `external_id`, some rows sent again); and now and then uploads a CSV import and
  follows its progress (with no worker running, it stays queued: still a success).
- PlatformAdmin (one per test): lists tenants and shards, looks tenants up, and
  onboards a new tenant now and then.

The flood scenario (`python -m loadtests.flood`) has two more users, run only when
named on the command line (`locust -f … Neighbour Flooder --flood-tenant SLUG`):

- Flooder: one tenant (``--flood-tenant``) asking, with no pause, for a contacts page
  filtered by `contains`, which makes PostgreSQL scan the tenant's contacts; the
  bulkheads' 503 tenant-busy and the rate limits' 429 are expected answers.
- Neighbour: a sales rep of another tenant on the flooding tenant's shard, whose
  latency the bulkheads are there to keep.

Their requests are named `flood: …` and `neighbour: …`; the final statistics add up
each such group and count every request's answers by status.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

# Locust puts this file's folder on sys.path, not the repository: make `loadtests`
# importable when the file is run from a checkout that is not installed.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from locust import events, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.exception import StopUser  # noqa: E402
from locust.runners import WorkerRunner  # noqa: E402
from locust.stats import StatsEntry, StatsError  # noqa: E402

from loadtests.api import (  # noqa: E402
    DEFAULT_THINK_TIME,
    DEFAULT_ZIPF_S,
    Check,
    Json,
    MeridianUser,
    Reply,
    platform,
)
from loadtests.credentials import DEFAULT_CREDENTIALS, Client  # noqa: E402
from loadtests.words import COMPANY_FIRST, FIRST_NAMES, LAST_NAMES  # noqa: E402

SORTS = {
    "contacts": ("last_name", "-updated_at", "created_at", "-created_at"),
    "accounts": ("name", "-updated_at", "created_at"),
}
ACTIVITY_SUBJECTS = {
    "call": ("Follow-up call", "Pricing discussion", "Left a voicemail"),
    "email": ("Sent the proposal", "Answered security questions", "Shared a case study"),
    "meeting": ("Demo", "Quarterly review", "Contract negotiation"),
    "note": ("Budget confirmed", "New decision maker", "Competitor in the deal"),
}
# The seeded accounts' custom segment values (loadtests.seed.CUSTOM_FIELDS).
SEGMENTS = ("Strategic", "Enterprise", "SMB")
TITLES = ("Head of Sales", "VP Operations", "IT Director", "Procurement Lead", "CFO")
LEAD_CALLS = ("Discovery call", "Qualification call", "Left a voicemail", "Follow-up call")
CASE_SUBJECTS = (
    "Cannot export the quarterly report", "Password reset e-mail not arriving",
    "Invoice address is wrong", "Sync stopped overnight", "Question about user roles",
)  # fmt: skip
CASE_PRIORITIES = ("low", "normal", "normal", "normal", "high", "urgent")
CASE_ORIGINS = ("email", "phone", "web", "chat")
CASE_CALLS = {
    "call": ("Called the customer back", "Walked through the settings", "Left a voicemail"),
    "email": ("Sent the workaround", "Asked for screenshots", "Confirmed the fix"),
}
RESOLUTIONS = (
    "Settings corrected with the customer on the phone.",
    "Fixed by the latest release; the customer confirmed.",
    "Explained the expected behaviour; no change needed.",
)
# Statuses worth retrying with the same Idempotency-Key: no answer, overload, outage.
RETRYABLE = frozenset({0, 429, 500, 502, 503, 504})
PROBLEM = "urn:meridian:problem:"


def _add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("Meridian")
    group.add_argument(
        "--credentials",
        type=str,
        env_var="MERIDIAN_LOADTEST_CREDENTIALS",
        default=str(DEFAULT_CREDENTIALS),
        help="Credentials file written by `meridian seed --out` (tenants and admin client).",
    )
    group.add_argument(
        "--zipf-s",
        type=float,
        env_var="MERIDIAN_LOADTEST_ZIPF_S",
        default=DEFAULT_ZIPF_S,
        help="Zipf exponent of the tenant skew (0 = uniform; 1.1 = a few hot tenants).",
    )
    group.add_argument(
        "--think-time",
        type=str,
        env_var="MERIDIAN_LOADTEST_THINK_TIME",
        default=DEFAULT_THINK_TIME,
        help="Seconds a person waits between actions, as MIN-MAX (e.g. 0.5-2).",
    )

    group.add_argument(
        "--flood-tenant",
        type=str,
        env_var="MERIDIAN_LOADTEST_FLOOD_TENANT",
        default="",
        help="The flood scenario's flooding tenant, a slug of the credentials file "
        "(default: its first tenant).",
    )

    group.add_argument(
        "--final-stats",
        type=str,
        default="",
        help="Write the run's final statistics here as JSON (what `meridian loadtest` reads).",
    )


_environment: list[Environment] = []


def _load_credentials(environment: Environment, **_: Any) -> None:
    # Fail at start-up, in every process, rather than in the first user.
    platform(environment)
    _environment.append(environment)


def _select_user_classes(environment: Environment, **_: Any) -> None:
    """Users of a scenario of their own (the flood's) run only when named on the command
    line: Locust otherwise runs every class of the file, and the default mix must stay
    what it is. (A weight of 0 would not do: Locust drops such classes when it builds
    the environment, before ``--config-users`` could give them a count.)"""
    if getattr(environment.parsed_options, "user_classes", None):
        return
    environment.user_classes[:] = [
        c for c in environment.user_classes if not getattr(c, "only_when_named", False)
    ]


# Answers per request, by status: Locust keeps successes and failures only, and a flood's
# 200s, 503s and 429s are all successes. Workers send theirs with each stats report.
_statuses: Counter[tuple[str, str, int]] = Counter()


def _count_status(request_type: str, name: str, response: Any = None, **_: Any) -> None:
    status = getattr(response, "status_code", None) or 0  # 0: no answer
    _statuses[(request_type, name, int(status))] += 1


def _report_statuses(client_id: str, data: dict[str, Any], **_: Any) -> None:
    data["meridian_statuses"] = [[m, n, s, c] for (m, n, s), c in _statuses.items()]
    _statuses.clear()


def _merge_statuses(client_id: str, data: dict[str, Any], **_: Any) -> None:
    for method, name, status, count in data.get("meridian_statuses") or ():
        _statuses[(str(method), str(name), int(status))] += int(count)


def _reset_statuses(**_: Any) -> None:
    # With --reset-stats Locust forgets what the ramp-up did once every user runs
    # (each process its own); the counts follow the statistics.
    if _environment and _environment[-1].reset_stats:
        _statuses.clear()


def _status_counts(method: str, name: str) -> dict[str, int]:
    return {
        str(s): c for (m, n, s), c in sorted(_statuses.items()) if (m, n) == (method, name) and c
    }


def _groups(entries: list[StatsEntry]) -> list[Json]:
    """One entry per group of request names (``group: name``), every request of the
    group together: percentiles need the merged histogram, not the entries' own."""
    merged: dict[str, StatsEntry] = {}
    statuses: dict[str, Counter[str]] = {}
    for e in entries:
        group, sep, _ = e.name.partition(": ")
        if not sep:
            continue
        if group not in merged:
            merged[group] = StatsEntry(e.stats, group, "")
            statuses[group] = Counter()
        merged[group].extend(e)
        statuses[group].update(_status_counts(e.method or "", e.name))
    return [
        {**_entry(merged[g]), "statuses": dict(sorted(statuses[g].items()))} for g in sorted(merged)
    ]


def _entry(entry: StatsEntry) -> Json:
    return {
        "method": entry.method or "",
        "name": entry.name,
        "requests": entry.num_requests,
        "failures": entry.num_failures,
        "rps": entry.total_rps,
        "avg_ms": entry.avg_response_time,
        "max_ms": entry.max_response_time,
        **{
            f"p{round(q * 100)}_ms": entry.get_response_time_percentile(q)
            if entry.num_requests
            else None
            for q in (0.5, 0.95, 0.99)
        },
    }


def _write_final_stats(**_: Any) -> None:
    """The statistics as the run ends. Locust's CSVs are rewritten once a second by a
    background writer and not again at exit, so they miss the last second's requests;
    this runs after the final table is printed, on the same numbers."""
    if not _environment:
        return
    env = _environment[-1]
    path = env.parsed_options.final_stats if env.parsed_options else ""
    if not path or isinstance(env.runner, WorkerRunner) or env.runner is None:
        return
    stats = env.stats
    entries = [e for e in stats.entries.values() if e.num_requests or e.num_failures]
    data = {
        "total": _entry(stats.total),
        "endpoints": [
            {**_entry(e), "statuses": _status_counts(e.method or "", e.name)} for e in entries
        ],
        "groups": _groups(entries),
        "failures": [
            {
                "method": e.method,
                "name": e.name,
                "error": StatsError.parse_error(e.error),
                "occurrences": e.occurrences,
            }
            for e in stats.errors.values()
        ],
        "exceptions": sum(int(e["count"]) for e in env.runner.exceptions.values()),
    }
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


# Locust's event hooks are untyped; registering through Any keeps that contained here.
_events: Any = events
_events.init_command_line_parser.add_listener(_add_arguments)
_events.init.add_listener(_load_credentials)
_events.init.add_listener(_select_user_classes)
_events.request.add_listener(_count_status)
_events.report_to_master.add_listener(_report_statuses)
_events.worker_report.add_listener(_merge_statuses)
_events.spawning_complete.add_listener(_reset_statuses)
_events.quit.add_listener(_write_final_stats)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _key() -> str:
    return f"lt-{uuid.uuid4()}"


def _problem_is(status: int, slug: str) -> Check:
    """A ``status`` is an expected outcome only with this problem type (others are
    failures)."""

    def check(reply: Reply) -> str | None:
        if reply.status != status:
            return None
        kind = reply.body.get("type") if isinstance(reply.body, dict) else None
        if kind == PROBLEM + slug:
            return None
        found = kind.removeprefix(PROBLEM) if isinstance(kind, str) else "no problem type"
        return f"HTTP {status} {found}"

    return check


def _conflict_is(slug: str) -> Check:
    return _problem_is(409, slug)


def _multipart(*parts: tuple[str, str | None, str, bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body of (name, filename, content type, bytes) parts."""
    boundary = f"meridian-{uuid.uuid4().hex}"
    out = bytearray()
    for name, filename, content_type, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        out += f"Content-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


# Typed into the search box: the names the seed gives people and companies.
SEARCH_WORDS = (*LAST_NAMES, *FIRST_NAMES, *COMPANY_FIRST)


def _currency(region: str) -> str:
    return "EUR" if region == "eu" else "USD"


class SalesRep(MeridianUser):
    weight = 6

    def on_start(self) -> None:
        owners = self.tenant.owner_ids
        self.me = self.rng.choice(owners) if owners else None

    @task(4)
    def browse_contacts(self) -> None:
        rows = self.browse(
            "/v1/contacts",
            name="/v1/contacts",
            params={"limit": "25", "sort": self.rng.choice(SORTS["contacts"])},
            kind="contact",
            pages=self.rng.randint(1, 3),
        )
        self.state.remember("email", (str(r["email"]) for r in rows if r.get("email")))

    @task(2)
    def my_contacts(self) -> None:
        if self.me is None:
            return
        self.browse(
            "/v1/contacts",
            name="/v1/contacts?owner_id={id}",
            params={"limit": "25", "owner_id": self.me, "sort": "-updated_at"},
            kind="contact",
            pages=self.rng.randint(1, 2),
        )

    @task(2)
    def find_contact(self) -> None:
        """Search by e-mail (exact) or by account, as from a search box or a company page."""
        email = self.state.any("email", self.rng)
        if email is not None and self.rng.random() < 0.5:
            self.page("/v1/contacts", name="/v1/contacts?email", params={"email": email})
            return
        account = self.known_or_listed("account", "/v1/accounts", "/v1/accounts")
        if account is not None:
            self.page(
                "/v1/contacts",
                name="/v1/contacts?account_id={id}",
                params={"account_id": account, "limit": "50"},
                kind="contact",
            )

    @task(4)
    def open_contact(self) -> None:
        contact = self.known_or_listed("contact", "/v1/contacts", "/v1/contacts")
        if contact is None:
            return
        self.call("GET", f"/v1/contacts/{contact}", name="/v1/contacts/{id}")
        if self.rng.random() < 0.5:
            self.call(
                "GET",
                f"/v1/contacts/{contact}/timeline",
                name="/v1/contacts/{id}/timeline",
                params={"limit": "20"},
            )

    @task(2)
    def open_account(self) -> None:
        if self.rng.random() < 0.3:
            self.browse(
                "/v1/accounts",
                name="/v1/accounts",
                params={"limit": "25", "sort": self.rng.choice(SORTS["accounts"])},
                kind="account",
                pages=self.rng.randint(1, 2),
            )
        account = self.known_or_listed("account", "/v1/accounts", "/v1/accounts")
        if account is None:
            return
        self.call("GET", f"/v1/accounts/{account}", name="/v1/accounts/{id}")
        self.page(
            "/v1/opportunities",
            name="/v1/opportunities?account_id={id}",
            params={"account_id": account},
            kind="opportunity",
        )

    @task(2)
    def advance_deal(self) -> None:
        """Move one of my open deals to its next stage, with the ETag just read."""
        pipeline = self.pipeline()
        if pipeline is None:
            return
        params = {"limit": "25", "sort": "-updated_at"}
        if self.me is not None:
            params["owner_id"] = self.me
        deals = self.page(
            "/v1/opportunities",
            name="/v1/opportunities?owner_id={id}" if self.me else "/v1/opportunities",
            params=params,
            kind="opportunity",
        ).data
        open_ids = {s["id"] for s in pipeline.stages if s.get("kind") == "open"}
        candidates = [d for d in deals if d.get("stage_id") in open_ids]
        if not candidates:
            return
        deal_id = str(self.rng.choice(candidates)["id"])
        for _ in range(2):  # a 412 means someone else moved it: read again, retry once
            current = self.call(
                "GET", f"/v1/opportunities/{deal_id}", name="/v1/opportunities/{id}"
            )
            etag = current.headers.get("etag")
            if not current.ok or etag is None or not isinstance(current.body, dict):
                return
            target = self._next_stage(pipeline.stages, current.body)
            if target is None:
                return
            reply = self.call(
                "PATCH",
                f"/v1/opportunities/{deal_id}",
                name="/v1/opportunities/{id}",
                body={"stage_id": target},
                headers={"If-Match": etag},
                expect=(200, 412),
            )
            if reply.status != 412:
                return

    def _next_stage(self, stages: list[Json], deal: Json) -> str | None:
        open_stages = [s for s in stages if s.get("kind") == "open"]
        closed = [s for s in stages if s.get("kind") in ("won", "lost")]
        position = next((i for i, s in enumerate(open_stages) if s["id"] == deal["stage_id"]), None)
        if position is None:
            return None  # already won or lost
        if position + 1 < len(open_stages):
            return str(open_stages[position + 1]["id"])
        return str(self.rng.choice(closed)["id"]) if closed else None

    @task(2)
    def log_activity(self) -> None:
        contact = self.known_or_listed("contact", "/v1/contacts", "/v1/contacts")
        if contact is None:
            return
        kind = self.rng.choice(tuple(ACTIVITY_SUBJECTS))
        body: Json = {
            "type": kind,
            "subject": self.rng.choice(ACTIVITY_SUBJECTS[kind]),
            "occurred_at": _now(),
            "contact_id": contact,
        }
        if self.rng.random() < 0.5:
            body["body"] = "Logged from the load test."
        self.call(
            "POST",
            "/v1/activities",
            name="/v1/activities",
            body=body,
            headers={"Idempotency-Key": _key()},
            expect=(201,),
        )

    @task(2)
    def search(self) -> None:
        """The search box: a person's or a company's name as it is typed (its first
        letters, then more), and now and then the answer's next page."""
        word = self.rng.choice(SEARCH_WORDS)
        typed = word[: self.rng.randint(min(3, len(word)), len(word))]
        self.browse(
            "/v1/search",
            name="/v1/search?q",
            params={"q": typed, "limit": "20"},
            pages=1 if self.rng.random() < 0.8 else 2,
        )

    @task(1)
    def update_contact(self) -> None:
        contact = self.known_or_listed("contact", "/v1/contacts", "/v1/contacts")
        if contact is None:
            return
        current = self.call("GET", f"/v1/contacts/{contact}", name="/v1/contacts/{id}")
        etag = current.headers.get("etag")
        if not current.ok or etag is None:
            return
        self.call(
            "PATCH",
            f"/v1/contacts/{contact}",
            name="/v1/contacts/{id}",
            body={"title": self.rng.choice(TITLES)},
            headers={"If-Match": etag},
            expect=(200, 412),  # 412: another user changed it first, as designed
        )

    # -- leads ---------------------------------------------------------------------------

    @task(2)
    def browse_leads(self) -> None:
        """The hottest leads first: everyone's, or mine."""
        params = {"limit": "25", "sort": "-score"}
        name = "/v1/leads?sort=-score"
        if self.me is not None and self.rng.random() < 0.5:
            params["owner_id"] = self.me
            name = "/v1/leads?owner_id={id}&sort=-score"
        rows = self.browse(
            "/v1/leads", name=name, params=params, kind="lead", pages=self.rng.randint(1, 2)
        )
        self._note_qualified(rows)

    def _note_qualified(self, rows: list[Json]) -> None:
        self.state.remember(
            "qualified_lead", (str(r["id"]) for r in rows if r.get("status") == "qualified")
        )

    @task(2)
    def open_lead(self) -> None:
        """A lead's page: the lead and what was done with it (its timeline)."""
        lead = self.known_or_listed("lead", "/v1/leads", "/v1/leads")
        if lead is None:
            return
        self.call("GET", f"/v1/leads/{lead}", name="/v1/leads/{id}")
        self.call(
            "GET",
            f"/v1/leads/{lead}/timeline",
            name="/v1/leads/{id}/timeline",
            params={"limit": "20"},
        )

    @task(1)
    def log_lead_call(self) -> None:
        """A call on a lead; the API scores the lead again in the same transaction, so it
        is reported apart from other activities."""
        lead = self.known_or_listed("lead", "/v1/leads", "/v1/leads")
        if lead is None:
            return
        self.call(
            "POST",
            "/v1/activities",
            name="/v1/activities (lead)",
            body={
                "type": "call",
                "subject": self.rng.choice(LEAD_CALLS),
                "occurred_at": _now(),
                "lead_id": lead,
            },
            headers={"Idempotency-Key": _key()},
            expect=(201,),
        )

    @task(1)
    def convert_lead(self) -> None:
        """A qualified lead becomes an account, a contact and a deal. Its e-mail may be
        on a contact already (409 duplicate, naming it): then that contact is linked.
        Another rep converting it first is fine too: the answer is its conversion."""
        lead = self._qualified_lead()
        if lead is None:
            return
        lead_id = str(lead["id"])
        company = lead.get("company") or lead.get("last_name") or "New customer"
        body: Json = {
            "opportunity": {
                "name": f"{str(company)[:180]}: first order",
                "amount": f"{self.rng.randint(5, 300) * 100}.00",
                "currency": _currency(self.tenant.region),
            }
        }
        path = f"/v1/leads/{lead_id}/convert"
        reply = self.call(
            "POST",
            path,
            name="/v1/leads/{id}/convert",
            body=body,
            expect=(200, 409),
            check=_conflict_is("duplicate"),
        )
        duplicate = reply.body.get("duplicate_of") if isinstance(reply.body, dict) else None
        if reply.status == 409 and isinstance(duplicate, str):
            reply = self.call(
                "POST",
                path,
                name="/v1/leads/{id}/convert (link contact)",
                body={**body, "contact_id": duplicate},
            )
        self.state.forget("qualified_lead", lead_id)
        if reply.status == 200 and isinstance(reply.body, dict):
            # What it became is worth a visit, as for any record seen.
            for kind in ("account", "contact", "opportunity"):
                record = reply.body.get(f"{kind}_id")
                if isinstance(record, str):
                    self.state.remember(kind, [record])

    def _qualified_lead(self) -> Json | None:
        """A qualified lead as just read: one seen in a list, or from the list of
        qualified ones; with none left, the hottest lead being worked is qualified."""
        for _ in range(2):
            lead_id = self.state.any("qualified_lead", self.rng)
            if lead_id is None:
                listed = self.page(
                    "/v1/leads",
                    name="/v1/leads?status=qualified&sort=-score",
                    params={"status": "qualified", "sort": "-score", "limit": "20"},
                    kind="lead",
                )
                self._note_qualified(listed.data)
                lead_id = self.state.any("qualified_lead", self.rng)
                if lead_id is None:
                    return self._qualify()
            reply = self.call("GET", f"/v1/leads/{lead_id}", name="/v1/leads/{id}")
            if isinstance(reply.body, dict) and reply.body.get("status") == "qualified":
                return reply.body
            self.state.forget("qualified_lead", lead_id)  # converted by someone meanwhile
        return None

    def _qualify(self) -> Json | None:
        working = self.page(
            "/v1/leads",
            name="/v1/leads?status=working&sort=-score",
            params={"status": "working", "sort": "-score", "limit": "10"},
            kind="lead",
        ).data
        if not working:
            return None
        lead_id = str(self.rng.choice(working[:3])["id"])
        current = self.call("GET", f"/v1/leads/{lead_id}", name="/v1/leads/{id}")
        etag = current.headers.get("etag")
        if not current.ok or etag is None:
            return None
        reply = self.call(
            "PATCH",
            f"/v1/leads/{lead_id}",
            name="/v1/leads/{id}",
            body={"status": "qualified"},
            headers={"If-Match": etag},
            # 412: changed meanwhile; 409: converted meanwhile (a converted lead is
            # read-only). Both are someone else's work, not errors.
            expect=(200, 409, 412),
            check=_conflict_is("lead-converted"),
        )
        return reply.body if reply.status == 200 and isinstance(reply.body, dict) else None


class Manager(MeridianUser):
    weight = 2

    @task(2)
    def accounts_by_segment(self) -> None:
        """The seeded custom fields: a segment's accounts, biggest annual revenue first
        (a custom filter and a custom sort, page by page)."""
        self.browse(
            "/v1/accounts",
            name="/v1/accounts?filter=custom.segment&sort=-custom.arr",
            params={
                "limit": "25",
                "filter": f"custom.segment[eq]:{self.rng.choice(SEGMENTS)}",
                "sort": "-custom.arr",
            },
            kind="account",
            pages=self.rng.randint(1, 2),
        )

    @task(3)
    def pipeline_board(self) -> None:
        """The board: one column of deals per stage."""
        pipeline = self.pipeline()
        if pipeline is None:
            return
        for stage in pipeline.stages:
            self.page(
                "/v1/opportunities",
                name="/v1/opportunities?stage_id={id}",
                params={"pipeline_id": pipeline.id, "stage_id": str(stage["id"]), "limit": "20"},
                kind="opportunity",
            )

    @task(2)
    def closing_soon(self) -> None:
        today = date.today()  # noqa: DTZ011 - the manager's calendar day is what matters
        self.browse(
            "/v1/opportunities",
            name="/v1/opportunities?close_after&close_before",
            params={
                "close_after": today.isoformat(),
                "close_before": (today + timedelta(days=30)).isoformat(),
                "limit": "50",
            },
            kind="opportunity",
            pages=self.rng.randint(1, 2),
        )

    @task(1)
    def biggest_deals(self) -> None:
        self.page(
            "/v1/opportunities",
            name="/v1/opportunities?sort=-amount",
            params={"sort": "-amount", "limit": "20"},
            kind="opportunity",
        )

    @task(1)
    def rep_pipeline(self) -> None:
        owners = self.tenant.owner_ids
        if owners:
            self.page(
                "/v1/opportunities",
                name="/v1/opportunities?owner_id={id}",
                params={"owner_id": self.rng.choice(owners), "limit": "50"},
                kind="opportunity",
            )

    @task(3)
    def account_timeline(self) -> None:
        account = self.known_or_listed("account", "/v1/accounts", "/v1/accounts")
        if account is not None:
            self.browse(
                f"/v1/accounts/{account}/timeline",
                name="/v1/accounts/{id}/timeline",
                params={"limit": "25"},
                pages=self.rng.randint(1, 2),
            )

    @task(2)
    def opportunity_timeline(self) -> None:
        deal = self.known_or_listed("opportunity", "/v1/opportunities", "/v1/opportunities")
        if deal is not None:
            self.call("GET", f"/v1/opportunities/{deal}", name="/v1/opportunities/{id}")
            self.call(
                "GET",
                f"/v1/opportunities/{deal}/timeline",
                name="/v1/opportunities/{id}/timeline",
                params={"limit": "25"},
            )

    @task(1)
    def recent_activity(self) -> None:
        since = (datetime.now(UTC) - timedelta(days=7)).isoformat(timespec="seconds")
        self.page(
            "/v1/activities",
            name="/v1/activities?occurred_after",
            params={"occurred_after": since, "limit": "50"},
        )

    @task(1)
    def scoring_rules(self) -> None:
        """The tenant's lead scoring rules, and one of them."""
        rules = self.page(
            "/v1/lead-scoring/rules", name="/v1/lead-scoring/rules", params={"limit": "50"}
        ).data
        if rules and self.rng.random() < 0.5:
            rule = self.rng.choice(rules)
            self.call(
                "GET",
                f"/v1/lead-scoring/rules/{rule['id']}",
                name="/v1/lead-scoring/rules/{id}",
            )

    @task(2)
    def leads_by_score(self) -> None:
        """The funnel by score: all leads, those qualified (ready to convert) or those
        being worked."""
        status = self.rng.choice((None, "qualified", "working"))
        params = {"sort": "-score", "limit": "25"}
        name = "/v1/leads?sort=-score"
        if status is not None:
            params["status"] = status
            name = f"/v1/leads?status={status}&sort=-score"
        self.page("/v1/leads", name=name, params=params, kind="lead")


class SupportAgent(MeridianUser):
    """The service desk, with the support agent's role: its token is the tenant's
    support desk client's (``loadtests.seed``), so the API allows what it allows a
    support agent (cases; reading, not deleting, the customers they are about)."""

    weight = 2

    def on_start(self) -> None:
        if self.tenant.support_client is None:
            # A tenant seeded before support desks existed: work at one that has one.
            desks = self.platform.support_zipf
            if desks is None:
                raise StopUser()  # no tenant has a support desk client: seed again
            self.tenant = desks.pick(self.rng)
        agents = self.tenant.agent_ids
        self.me = self.rng.choice(agents) if agents else None

    @property
    def client_credentials(self) -> Client | None:
        return self.tenant.support_client

    def _note_open(self, rows: list[Json]) -> None:
        # Cases still to work on: resolved ones too (they get closed later).
        self.state.remember(
            "open_case", (str(r["id"]) for r in rows if r.get("status") != "closed")
        )

    @task(3)
    def overdue_queue(self) -> None:
        """The cases past their due time, the most overdue first."""
        rows = self.browse(
            "/v1/cases",
            name="/v1/cases?overdue=true&sort=due_at",
            params={"overdue": "true", "sort": "due_at", "limit": "25"},
            kind="case",
            pages=self.rng.randint(1, 2),
        )
        self._note_open(rows)

    @task(2)
    def my_cases(self) -> None:
        if self.me is None:
            return
        rows = self.browse(
            "/v1/cases",
            name="/v1/cases?owner_id={id}&sort=due_at",
            params={"owner_id": self.me, "sort": "due_at", "limit": "25"},
            kind="case",
        )
        self._note_open(rows)

    @task(3)
    def open_case(self) -> None:
        case = self.known_or_listed("case", "/v1/cases", "/v1/cases")
        if case is None:
            return
        reply = self.call("GET", f"/v1/cases/{case}", name="/v1/cases/{id}")
        self.call(
            "GET",
            f"/v1/cases/{case}/timeline",
            name="/v1/cases/{id}/timeline",
            params={"limit": "20"},
        )
        contact = reply.body.get("contact_id") if isinstance(reply.body, dict) else None
        if isinstance(contact, str) and self.rng.random() < 0.5:
            self.call("GET", f"/v1/contacts/{contact}", name="/v1/contacts/{id}")

    @task(1)
    def create_case(self) -> None:
        """A customer (a seeded contact) calls or writes in; the case is about the
        contact's account and due by its priority's service level."""
        contact = self.known_or_listed("contact", "/v1/contacts", "/v1/contacts")
        if contact is None:
            return
        body: Json = {
            "subject": self.rng.choice(CASE_SUBJECTS),
            "priority": self.rng.choice(CASE_PRIORITIES),
            "origin": self.rng.choice(CASE_ORIGINS),
            "contact_id": contact,
        }
        if self.me is not None:
            body["owner_id"] = self.me
        if self.rng.random() < 0.5:
            body["description"] = "Logged from the load test."
        reply = self.call(
            "POST",
            "/v1/cases",
            name="/v1/cases",
            body=body,
            headers={"Idempotency-Key": _key()},
            expect=(201,),
        )
        if reply.status == 201 and isinstance(reply.body, dict):
            self.state.remember_rows("case", [reply.body])
            self.state.remember_rows("open_case", [reply.body])

    @task(2)
    def log_case_call(self) -> None:
        case = self.state.any("open_case", self.rng) or self.known_or_listed(
            "case", "/v1/cases", "/v1/cases"
        )
        if case is None:
            return
        kind = self.rng.choice(tuple(CASE_CALLS))
        self.call(
            "POST",
            "/v1/activities",
            name="/v1/activities (case)",
            body={
                "type": kind,
                "subject": self.rng.choice(CASE_CALLS[kind]),
                "occurred_at": _now(),
                "case_id": case,
            },
            headers={"Idempotency-Key": _key()},
            expect=(201,),
        )

    @task(1)
    def resolve_case(self) -> None:
        """Resolve (or close) an open case with its resolution, or close a resolved one,
        with the ETag just read; a 412 means someone else changed it first, so it reads
        again and retries once."""
        case = self._open_case()
        if case is None:
            return
        for _ in range(2):
            current = self.call("GET", f"/v1/cases/{case}", name="/v1/cases/{id}")
            etag = current.headers.get("etag")
            if not current.ok or etag is None or not isinstance(current.body, dict):
                return
            status = current.body.get("status")
            if status == "closed":
                self.state.forget("open_case", case)
                return
            if status == "resolved":
                change: Json = {"status": "closed"}  # its resolution is stored already
            else:
                change = {
                    "status": self.rng.choice(("resolved", "resolved", "closed")),
                    "resolution": self.rng.choice(RESOLUTIONS),
                }
            reply = self.call(
                "PATCH",
                f"/v1/cases/{case}",
                name="/v1/cases/{id}",
                body=change,
                headers={"If-Match": etag},
                expect=(200, 412),
            )
            if reply.status != 412:
                if change["status"] == "closed":
                    self.state.forget("open_case", case)
                return

    def _open_case(self) -> str | None:
        case = self.state.any("open_case", self.rng)
        if case is None:
            listed = self.page(
                "/v1/cases",
                name="/v1/cases?status=open&sort=due_at",
                params={"status": "open", "sort": "due_at", "limit": "50"},
                kind="case",
            )
            self._note_open(listed.data)
            case = self.state.any("open_case", self.rng)
        return case


class IntegrationClient(MeridianUser):
    """A machine importing from another system: bursts of creates, safe retries."""

    weight = 1
    # A batch is a burst of requests; the pause after it keeps writes a minority of the
    # traffic, as on a CRM people mostly read. Pauses stay under uvicorn's 5 s keep-alive:
    # a POST sent as the server closes an idle connection fails (and is not retried by
    # the HTTP client, POST not being idempotent).
    think_factor = 2.0

    def create(self, path: str, body: Json) -> Json | None:
        """POST with an Idempotency-Key; on no answer or a retryable status, the same
        key and body again (with backoff), so the record is created exactly once."""
        key = _key()
        headers = {"Idempotency-Key": key}
        for attempt in range(4):
            reply = self.call(
                "POST",
                path,
                name=path if attempt == 0 else f"{path} (retry)",
                body=body,
                headers=headers,
                expect=(201,),
            )
            if reply.status == 201 and isinstance(reply.body, dict):
                if self.rng.random() < 0.05:
                    self._replay(path, body, headers, reply.body)
                return reply.body
            if reply.status not in RETRYABLE:
                return None
            retry_after = reply.headers.get("retry-after", "")
            delay = float(retry_after) if retry_after.isdigit() else 0.2 * 2**attempt
            time.sleep(min(delay, 5.0) * self.rng.uniform(0.5, 1.5))  # gevent-patched
        return None

    def _replay(self, path: str, body: Json, headers: dict[str, str], first: Json) -> None:
        """The answer was "lost": the same request again must return the same record."""

        def same_record(reply: Reply) -> str | None:
            if reply.headers.get("idempotent-replayed") != "true":
                return "replay not marked Idempotent-Replayed"
            if not isinstance(reply.body, dict) or reply.body.get("id") != first.get("id"):
                return "replay returned a different record"
            return None

        self.call(
            "POST",
            path,
            name=f"{path} (replay)",
            body=body,
            headers=headers,
            expect=(201,),
            check=same_record,
        )

    @task
    def import_batch(self) -> None:
        tag = uuid.uuid4().hex[:10]
        account = self.create(
            "/v1/accounts", {"name": f"Imported {tag}", "domain": f"imported-{tag}.example.com"}
        )
        if account is None:
            return
        for n in range(self.rng.randint(3, 10)):
            self.create(
                "/v1/contacts",
                {
                    "first_name": "Imported",
                    "last_name": f"Contact {n}",
                    "email": f"contact{n}.{tag}@imported-{tag}.example.com",
                    "account_id": account["id"],
                },
            )
        self.create(
            "/v1/opportunities",
            {
                "account_id": account["id"],
                "name": f"Imported deal {tag}",
                "amount": f"{self.rng.randint(1, 500) * 100}.00",
                "currency": "EUR" if self.tenant.region == "eu" else "USD",
            },
        )

    @task(2)
    def sync_contacts(self) -> None:
        """A nightly sync's page: contacts upserted by the client's own ids, a fifth of
        them ones it sent before (updated, not duplicated); one result per item."""
        state = self.state
        rows = []
        for _ in range(self.rng.randint(20, 100)):
            known = state.any("external_contact", self.rng)
            external_id = known if known and self.rng.random() < 0.2 else f"crm-{_key()}"
            first, last = self.rng.choice(FIRST_NAMES), self.rng.choice(LAST_NAMES)
            rows.append(
                {
                    "op": "upsert",
                    "external_id": external_id,
                    "body": {
                        "first_name": first,
                        "last_name": last,
                        "email": f"{first}.{last}.{external_id}@sync.example.com".lower(),
                    },
                }
            )

        def every_item_written(reply: Reply) -> str | None:
            results = reply.body.get("results") if isinstance(reply.body, dict) else None
            if not isinstance(results, list) or len(results) != len(rows):
                return "batch answer without one result per item"
            failed = [r for r in results if r.get("status") not in (200, 201)]
            return f"{len(failed)} batch items failed" if failed else None

        reply = self.call(
            "POST",
            "/v1/contacts/batch",
            name="/v1/contacts/batch",
            body={"items": rows},
            headers={"Idempotency-Key": _key()},
            check=every_item_written,
        )
        if reply.ok:
            state.remember("external_contact", (str(r["external_id"]) for r in rows))

    @task(1)
    def import_file(self) -> None:
        """A CSV of leads uploaded as an import, then its progress read a few times."""
        tag = uuid.uuid4().hex[:10]
        lines = ["First,Last,Company,Email"]
        for n in range(self.rng.randint(20, 200)):
            first, last = self.rng.choice(FIRST_NAMES), self.rng.choice(LAST_NAMES)
            company = self.rng.choice(COMPANY_FIRST)
            lines.append(f"{first},{last},{company},{first}.{last}.{n}.{tag}@import.example.com")
        options = {
            "object": "leads",
            "mapping": {"First": "first_name", "Last": "last_name", "Company": "company",
                        "Email": "email"},
        }  # fmt: skip
        body, content_type = _multipart(
            ("options", None, "application/json", json.dumps(options).encode()),
            ("file", f"leads-{tag}.csv", "text/csv", "\n".join(lines).encode()),
        )
        reply = self.call(
            "POST",
            "/v1/imports",
            name="/v1/imports",
            content=(body, content_type),
            headers={"Idempotency-Key": _key()},
            expect=(202,),
        )
        if not reply.ok or not isinstance(reply.body, dict):
            return

        def not_failed(reply: Reply) -> str | None:
            state = reply.body.get("state") if isinstance(reply.body, dict) else None
            return f"import {state}" if state in ("failed", "cancelled") else None

        for _ in range(3):
            time.sleep(self.rng.uniform(0.5, 1.0))  # gevent-patched
            progress = self.call(
                "GET",
                f"/v1/imports/{reply.body['id']}",
                name="/v1/imports/{id}",
                check=not_failed,
            )
            if not progress.ok or (progress.body or {}).get("state") == "done":
                return


class Neighbour(SalesRep):
    """The flood scenario's neighbour: a sales rep of another tenant on the flooding
    tenant's shard, whose latency the bulkheads are there to keep. Named on the command
    line only (see ``_select_user_classes``)."""

    only_when_named = True
    request_prefix = "neighbour: "

    def on_start(self) -> None:
        neighbours = self.platform.neighbour_zipf
        if neighbours is None:
            flood = self.platform.flood_tenant
            logging.error("no other tenant on %s's shard %s", flood.slug, flood.shard_id)
            raise StopUser()
        self.tenant = neighbours.pick(self.rng)
        super().on_start()


class Flooder(MeridianUser):
    """The flood scenario's flooder: one tenant (``--flood-tenant``) asking, with no
    pause, for a contacts page filtered by ``contains`` (``loadtests.bench.bulkhead``'s
    FLOOD_PATH), for which PostgreSQL scans the tenant's contacts: a request that holds
    a shard connection long and costs the API little. Past the tenant's share of the
    shard's connections the bulkhead answers 503 tenant-busy, past its quota the rate
    limits 429: the answers a flood should get, so they count as successes. Named on the
    command line only (see ``_select_user_classes``)."""

    only_when_named = True
    request_prefix = "flood: "

    def on_start(self) -> None:
        self.tenant = self.platform.flood_tenant

    def wait_time(self) -> float:
        return 0.0  # a runaway job does not think

    @task
    def flood(self) -> None:
        # A needle no title holds, new each time: the same page again would be answered
        # by the list cache and spare the shard, as a runaway job's queries do not.
        needle = f"nobody-has-this-{uuid.uuid4().hex[:12]}"
        self.call(
            "GET",
            "/v1/contacts",
            name="/v1/contacts?filter=contains",
            params={"limit": "50", "filter": f"title[contains]:{needle}"},
            expect=(200, 429, 503),
            check=_problem_is(503, "tenant-busy"),
        )


class PlatformAdmin(MeridianUser):
    """One per test, whatever the user count: admins are few."""

    fixed_count = 1
    think_factor = 2.0  # with onboarding one task in eight: a new tenant every ~20 s

    def on_start(self) -> None:
        if self.platform.credentials.admin is None:
            raise StopUser()  # the credentials file has no admin client

    @property
    def client_credentials(self) -> Client | None:
        return self.platform.credentials.admin

    @task(3)
    def list_tenants(self) -> None:
        self.browse(
            "/admin/v1/tenants",
            name="/admin/v1/tenants",
            params={"limit": "50"},
            pages=self.rng.randint(1, 3),
        )

    @task(2)
    def get_tenant(self) -> None:
        tenant = self.platform.zipf.pick(self.rng)
        self.call("GET", f"/admin/v1/tenants/{tenant.id}", name="/admin/v1/tenants/{id}")

    @task(2)
    def list_shards(self) -> None:
        self.call("GET", "/admin/v1/shards", name="/admin/v1/shards")

    @task(1)
    def onboard_tenant(self) -> None:
        slug = f"lt-{uuid.uuid4().hex[:12]}"
        regions = self.platform.credentials.regions or ("us",)
        body = {"slug": slug, "name": f"Load test {slug}", "region": self.rng.choice(regions)}
        headers = {"Idempotency-Key": _key()}
        for attempt in range(3):
            reply = self.call(
                "POST",
                "/admin/v1/tenants",
                name="/admin/v1/tenants" if attempt == 0 else "/admin/v1/tenants (retry)",
                body=body,
                headers=headers,
                expect=(201,),
            )
            if reply.status not in RETRYABLE:
                return
            time.sleep(0.5 * 2**attempt)
