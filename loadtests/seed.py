"""Seeding at scale for load tests: many tenants with realistic CRM data.

Tenants are onboarded through the same code as ``POST /admin/v1/tenants`` (validation,
placement, residency, default pipeline, first client), a few at a time; each one's data
is bulk-loaded as soon as it is onboarded, in one transaction that enters the tenant like
every API transaction, as the app role, so RLS checks every row. The rows go in with ONE
statement: per table an ``INSERT ... SELECT FROM unnest(<an array per column>)``, as
data-modifying CTEs (foreign keys between them are checked at the statement's end), which
the policies' WITH CHECK see. (``COPY FROM`` is refused under row-level security, and
COPYing through temporary tables cost three round trips and a table's creation and drop
per table: most of a small tenant's time.)

Re-running with the same prefix is safe: tenants already loaded are skipped (a tenant
is loaded in one transaction, so it has either all of its data or none), tenants only
onboarded are loaded, and the credentials file keeps or renews each tenant's client.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import sys
import time
import uuid
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol, TypeVar
from uuid import UUID

import asyncpg
import uvloop
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from loadtests.words import COMPANY_FIRST, COMPANY_SECOND, FIRST_NAMES, LAST_NAMES
from meridian.admin.schemas import TenantCreate
from meridian.admin.service import tenant_admin
from meridian.admin.wiring import admin_deps
from meridian.cases.models import CLOSED_STATUSES
from meridian.cases.service import SLA
from meridian.crud.custom import Field, index_rows
from meridian.encryption.fields import encrypt_values
from meridian.errors import Conflict, IdempotencyKeyReused, MeridianError
from meridian.ids import new_id
from meridian.leads.schemas import ScoringRuleCreate
from meridian.leads.scoring import evaluate
from meridian.oauth.clients import ClientRecord, create_client, find_client
from meridian.oauth.models import OAuthClient
from meridian.operations import create_admin_client
from meridian.principal import SCOPE_READ, SCOPE_WRITE
from meridian.runtime import Runtime
from meridian.settings import Settings
from tenancy.context import TenantContext, TenantStatus
from tenancy.crypto import FieldCipher
from tenancy.models import Tenant

FILE_VERSION = 1
_PREFIX = re.compile(r"^[a-z0-9][a-z0-9-]{0,50}$")
# Seeders of one tenant (two runs at once) queue on this, then see the other's rows.
_LOCK_NAMESPACE = 0x5345  # "SE"
# Onboardings at once (they start in index order). Each holds up to two control-plane
# connections (its transaction, and the topology and tenant-count reads placement makes
# meanwhile) and the runtime's control pool has 15; past a few, they only queue on the
# placement lock and add CPU. With several shared shards in a region, which one a tenant
# lands on can then depend on which onboarding took that lock first (the spread over the
# shards is the same).
ONBOARDING_CONCURRENCY = 4
# The plan of the seeded tenants (its rate limits: docs/api.md, "Rate limits").
LOAD_PLAN = "enterprise"
# Tenants onboarded together (TenantAdminService.onboard_many: one placement for the
# batch, then finished ONBOARDING_CONCURRENCY at a time); two batches at once, so one
# batch's placement overlaps the other's finishing. More at once only starves the loads
# of control-plane connections (each finishing onboarding holds up to two).
ONBOARDING_BATCH = 32
ONBOARDING_BATCHES_AT_ONCE = 2
# While a phase runs, the credentials file is rewritten at most this often (and at the
# phase's end): rewritten after every tenant, a run of N tenants cost O(N^2).
_SAVE_INTERVAL = 2.0
Row = tuple[Any, ...]
T = TypeVar("T")


class SeedError(Exception):
    """A problem the user can fix (bad arguments, a slug taken by a real tenant, ...)."""


# -- results -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SeededTenant:
    slug: str
    id: UUID
    region: str
    shard_id: str
    client_id: str
    client_secret: str
    owner_ids: tuple[UUID, ...]
    # What this run did: "loaded" (data written now) or "skipped" (already seeded).
    status: str
    rows: dict[str, int] = field(default_factory=dict)
    # The service desk: its agents' user ids, and a client acting as a support agent.
    agent_ids: tuple[UUID, ...] = ()
    support_client: tuple[str, str] | None = None

    def credentials(self) -> dict[str, Any]:
        return {
            "slug": self.slug,
            "id": str(self.id),
            "region": self.region,
            "shard_id": self.shard_id,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "owner_ids": [str(o) for o in self.owner_ids],
            "agent_ids": [str(a) for a in self.agent_ids],
            "support_client": _client_entry(self.support_client),
        }


@dataclass(frozen=True, slots=True)
class SeedResult:
    tenants: tuple[SeededTenant, ...]
    onboarded: int  # tenants created by this run
    loaded: int  # tenants whose data this run loaded
    skipped: int  # tenants that were already fully seeded
    rows: dict[str, int]  # rows inserted by this run, per table
    seconds: float
    out: Path | None

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    def summary(self) -> str:
        rate = self.total_rows / self.seconds if self.seconds > 0 else 0.0
        parts = ", ".join(f"{n} {table}" for table, n in self.rows.items())
        return (
            f"{len(self.tenants)} tenants ({self.onboarded} onboarded, {self.loaded} loaded, "
            f"{self.skipped} already seeded); rows: {parts or 'none'}; "
            f"{self.seconds:.1f} s ({rate:,.0f} rows/s)"
            + (f"; credentials in {self.out}" if self.out else "")
        )


# -- word lists (small and embedded: no Faker dependency) ---------------------------------

COMPANY_SUFFIX = {
    "us": ("Inc.", "LLC", "Corp.", "Co.", ""),
    "eu": ("GmbH", "SA", "BV", "AB", "Ltd", "SAS", "S.p.A.", ""),
}
TLDS = {
    "us": ("com", "com", "com", "io", "co", "net"),
    "eu": ("com", "eu", "de", "fr", "nl", "se", "co.uk", "it", "io"),
}
PERSONAL_DOMAINS = ("gmail.com", "outlook.com", "proton.me", "yahoo.com", "icloud.com")
TITLES = (
    "CEO", "CFO", "CTO", "COO", "VP Sales", "VP Engineering", "VP Marketing",
    "Head of Procurement", "Head of IT", "Director of Operations", "Engineering Manager",
    "Product Manager", "Account Executive", "Sales Manager", "Marketing Manager",
    "IT Administrator", "Solutions Architect", "Data Analyst", "Office Manager",
    "Purchasing Manager", "Customer Success Manager", "Software Engineer", "Consultant",
    "Finance Manager", "HR Director", "Legal Counsel", "Project Manager", "Founder",
)  # fmt: skip
PRODUCTS = (
    "Platform licence", "Enterprise plan", "Support renewal", "Pilot", "Expansion",
    "Onboarding package", "Data migration", "Analytics add-on", "Security review",
    "Training", "Multi-year renewal", "Integration project", "Upgrade", "Seats top-up",
)  # fmt: skip
ACTIVITY_TYPES = ("email", "call", "meeting", "note", "task")
ACTIVITY_CUM_WEIGHTS = (35, 60, 75, 90, 100)
SUBJECTS = {
    "email": (
        "Follow-up on our call", "Pricing proposal", "Re: contract questions",
        "Intro and next steps", "Case study you asked for", "Renewal reminder",
        "Meeting recap", "Re: security questionnaire",
    ),
    "call": (
        "Discovery call", "Pricing discussion", "Check-in call", "Renewal call",
        "Technical questions", "Left a voicemail", "Budget review",
    ),
    "meeting": (
        "Product demo", "Quarterly business review", "Technical deep dive", "Kick-off",
        "On-site workshop", "Executive sponsor meeting", "Contract negotiation",
    ),
    "note": (
        "Budget approved", "Decision maker identified", "Competitor also in the running",
        "Prefers e-mail contact", "Champion moving to another team", "Legal review started",
    ),
    "task": (
        "Send proposal", "Prepare demo environment", "Schedule follow-up", "Update forecast",
        "Share references", "Draft statement of work",
    ),
}  # fmt: skip
BODIES = (
    "Went well; they want a written proposal by the end of the month.",
    "Main concern is migration effort from their current CRM.",
    "Asked for references from customers in the same industry.",
    "Procurement needs the security questionnaire filled in first.",
    "Interested in the analytics add-on; will loop in their data team.",
    "Timeline slipped one quarter because of a reorganisation.",
    "Agreed on the scope; pricing to be confirmed by finance.",
)
CURRENCIES = {
    "us": (("USD", 88), ("CAD", 8), ("MXN", 4)),
    "eu": (("EUR", 70), ("GBP", 15), ("CHF", 6), ("SEK", 5), ("PLN", 4)),
}
# Leads: where they come from (weights), and the share in each status. Statuses are dealt
# out in these shares exactly (_dealt), so even a small tenant has leads to qualify and
# to convert.
LEAD_SOURCES: tuple[tuple[str, int], ...] = (
    ("web", 30), ("advertising", 15), ("referral", 12), ("event", 12), ("cold_call", 10),
    ("partner", 8), ("social", 8), ("other", 5),
)  # fmt: skip
LEAD_STATUS_SHARES: tuple[tuple[str, float], ...] = (
    ("new", 0.30), ("working", 0.25), ("nurturing", 0.12), ("qualified", 0.10),
    ("unqualified", 0.11), ("converted", 0.12),
)  # fmt: skip
# Activities logged on a lead of each status (fewest, most): worked leads have more.
LEAD_ACTIVITIES = {
    "new": (0, 1), "working": (1, 4), "nurturing": (1, 3), "qualified": (2, 5),
    "unqualified": (0, 2), "converted": (2, 6),
}  # fmt: skip
LEAD_ACTIVITY_TYPES = ("call", "email", "meeting", "note")
LEAD_ACTIVITY_CUM_WEIGHTS = (40, 75, 85, 100)
# Leads that are people already in the CRM as contacts (same e-mail): converting one is
# refused with 409 duplicate until it is linked to that contact.
LEAD_DUPLICATE_SHARE = 0.04
# Lead scoring rules: (name, points, condition). Every tenant has the first two (the API
# guide's examples) and a few of the others. None tests the lead's status: a converted
# lead keeps the score it was converted with, so a status rule would make its stored
# score differ from evaluate() on its row.
SCORING_RULES: tuple[tuple[str, int, dict[str, Any]], ...] = (
    ("Referred", 20, {"type": "field", "field": "source", "op": "eq", "value": "referral"}),
    ("Engaged", 15, {"type": "activity", "activity_type": "call", "min_count": 2}),
    ("Met in person", 20, {"type": "activity", "activity_type": "meeting", "min_count": 1}),
    (
        "Event or partner",
        10,
        {"type": "field", "field": "source", "op": "in", "value": ["event", "partner"]},
    ),
    (
        "Executive",
        15,
        {
            "type": "field",
            "field": "title",
            "op": "in",
            "value": ["CEO", "CFO", "CTO", "COO", "Founder"],
        },
    ),
    ("Vice president", 10, {"type": "field", "field": "title", "op": "starts", "value": "VP"}),
    ("Head of", 5, {"type": "field", "field": "title", "op": "starts", "value": "Head of"}),
    ("Reachable by phone", 5, {"type": "field", "field": "phone", "op": "present"}),
    ("No e-mail", -10, {"type": "field", "field": "email", "op": "absent"}),
    ("Cold call", -5, {"type": "field", "field": "source", "op": "eq", "value": "cold_call"}),
    ("Busy thread", 10, {"type": "activity", "min_count": 4}),
)
# Cases: statuses dealt out in these shares; priorities and origins by weight.
CASE_STATUS_SHARES: tuple[tuple[str, float], ...] = (
    ("new", 0.12), ("open", 0.25), ("pending", 0.10), ("on_hold", 0.05),
    ("resolved", 0.18), ("closed", 0.30),
)  # fmt: skip
CASE_PRIORITIES: tuple[tuple[str, int], ...] = (
    ("low", 20), ("normal", 50), ("high", 22), ("urgent", 8),
)  # fmt: skip
CASE_ORIGINS: tuple[tuple[str, int], ...] = (
    ("email", 40), ("phone", 25), ("web", 20), ("chat", 12), ("other", 3),
)  # fmt: skip
CASE_SUBJECTS = (
    "Cannot log in after password reset", "Invoice shows the wrong VAT rate",
    "Export to CSV times out", "Sync with the mail server stopped",
    "Duplicate contacts after import", "Request for a data processing agreement",
    "Dashboard loads very slowly", "Two-factor codes not arriving",
    "Wrong currency on the quote", "Webhook deliveries failing",
    "Need more seats before renewal", "Report totals do not match", "User locked out",
    "Mobile app crashes on start", "Question about the API rate limits",
)  # fmt: skip
CASE_DESCRIPTIONS = (
    "Customer reports it started after the last update; affects several users.",
    "Happens every time; screenshots attached to the e-mail thread.",
    "Only some accounts are affected; the customer's admin tried the usual fixes.",
    "Blocking their month-end close, they asked for a call today.",
    "Intermittent; could not reproduce on our side yet.",
)
RESOLUTIONS = (
    "Reset the account and confirmed the customer can sign in.",
    "Configuration corrected; the customer confirmed it works.",
    "Known issue fixed in the latest release; customer updated.",
    "Explained the expected behaviour and sent the documentation.",
    "Data corrected on our side; no change needed by the customer.",
    "No answer from the customer after three reminders.",
)
CASE_ACTIVITY_TYPES = ("email", "call", "note")
CASE_ACTIVITY_CUM_WEIGHTS = (40, 75, 100)


def _rng_for(random_seed: int, prefix: str, index: int, part: str) -> random.Random:
    # One generator per tenant and purpose: a tenant's data does not depend on which
    # tenants run concurrently, or were skipped, in this run.
    return random.Random(f"{random_seed}:{prefix}:{index}:{part}")  # noqa: S311 - not crypto


def _uuid4(rng: random.Random) -> UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _company(rng: random.Random, region: str) -> str:
    suffix = rng.choice(COMPANY_SUFFIX.get(region, COMPANY_SUFFIX["us"]))
    name = f"{rng.choice(COMPANY_FIRST)} {rng.choice(COMPANY_SECOND)}"
    return f"{name} {suffix}".strip()


def _domain_label(name: str) -> str:
    words = name.lower().replace(".", "").split()[:2]
    return "".join(ch for ch in "".join(words) if ch.isalnum())


def _phone(rng: random.Random, region: str) -> str:
    if region == "eu":
        return rng.choice(
            (
                f"+44 20 7946 {rng.randint(0, 999):04d}",
                f"+49 30 {rng.randint(1_000_000, 9_999_999)}",
                f"+33 1 {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)} "
                f"{rng.randint(10, 99)}",
            )
        )
    # 555-01xx numbers are reserved for fiction in North America.
    return f"+1 ({rng.randint(201, 989)}) 555-01{rng.randint(0, 99):02d}"


def _stage_weights(stages: Sequence[asyncpg.Record]) -> list[float]:
    """Most deals sit in early stages; some are won or lost."""
    weights: list[float] = []
    open_seen = 0
    for stage in stages:
        if stage["kind"] == "won":
            weights.append(15.0)
        elif stage["kind"] == "lost":
            weights.append(10.0)
        else:
            weights.append(30.0 * 0.7**open_seen)
            open_seen += 1
    return weights


@dataclass(frozen=True, slots=True)
class Plan:
    contacts: int
    accounts: int
    opportunities_per_account: float
    activities_per_contact: int
    # Per tenant; None: half the contacts (leads) and a fifth of them (cases).
    leads: int | None = None
    cases: int | None = None

    @property
    def lead_count(self) -> int:
        return self.contacts // 2 if self.leads is None else self.leads

    @property
    def case_count(self) -> int:
        return self.contacts // 5 if self.cases is None else self.cases


COLUMNS: dict[str, tuple[str, ...]] = {
    # The tenant's sales team, first: the records' owners are these users.
    "app_user": ("tenant_id", "id", "email", "name", "role", "manager_id", "created_at"),
    "user_closure": ("tenant_id", "ancestor_id", "descendant_id", "depth"),
    # The tenant's custom fields (meridian.crud.custom), before the records using them.
    "field_definition": (
        "tenant_id", "id", "object", "name", "label", "type", "options", "position",
        "created_at", "updated_at", "version",
    ),
    "account": (
        "tenant_id", "id", "name", "domain", "parent_id", "owner_id", "created_at",
        "updated_at", "version", "custom",
    ),
    # The accounts' custom values, typed, as the API indexes them.
    "custom_value": ("tenant_id", "field_id", "record_id", "text_value", "number_value"),
    # Stored columns: generate() yields email and phone in clear at positions 4 and 5;
    # _seal_contacts() turns them into ciphertexts and blind indexes before the COPY.
    "contact": (
        "tenant_id", "id", "first_name", "last_name", "email_enc", "email_bidx",
        "phone_enc", "phone_bidx", "enc_version", "title", "account_id", "owner_id",
        "created_at", "updated_at", "version",
    ),
    "opportunity": (
        "tenant_id", "id", "account_id", "name", "amount", "currency", "pipeline_id",
        "stage_id", "expected_close_date", "owner_id", "created_at", "updated_at", "version",
    ),
    "lead_scoring_rule": (
        "tenant_id", "id", "name", "points", "condition", "active", "created_at", "updated_at",
        "version",
    ),
    # Stored columns: generate() yields email and phone in clear at positions 6 and 7;
    # _seal() turns them into ciphertexts and blind indexes, as for contacts.
    "lead": (
        "tenant_id", "id", "first_name", "last_name", "company", "title", "email_enc",
        "email_bidx", "phone_enc", "phone_bidx", "enc_version", "source", "status", "owner_id",
        "score", "score_details", "converted_at", "converted_account_id",
        "converted_contact_id", "converted_opportunity_id", "created_at", "updated_at",
        "version",
    ),
    "case": (
        "tenant_id", "id", "subject", "description", "status", "priority", "origin",
        "contact_id", "account_id", "owner_id", "due_at", "resolution", "resolved_at",
        "closed_at", "created_at", "updated_at", "version",
    ),
    "activity": (
        "tenant_id", "id", "type", "subject", "body", "occurred_at", "contact_id", "account_id",
        "opportunity_id", "owner_id", "created_at", "lead_id", "case_id",
    ),
}  # fmt: skip
# Where generate() leaves a table's sensitive fields in clear (email, then phone).
SEALED_AT = {"contact": 4, "lead": 6}
SUPPORT_ROLE = "support_agent"


def team(
    rng: random.Random, tenant_id: UUID, size: int, now: datetime
) -> tuple[tuple[UUID, ...], dict[str, list[Row]]]:
    """A sales team: one manager and ``size - 1`` reps reporting to her, as users (no
    password: load tests act through clients) and their reporting-line closure rows.
    Returns every member's id (the owners records are dealt to) and the rows."""
    ids = tuple(_uuid4(rng) for _ in range(size))
    manager = ids[0]
    users: list[Row] = []
    closure: list[Row] = []
    for n, user_id in enumerate(ids):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        email = f"{first.lower()}.{last.lower()}.{n}@team.example.com"
        role, boss = ("sales_manager", None) if n == 0 else ("sales_rep", manager)
        users.append((tenant_id, user_id, email, f"{first} {last}", role, boss, now))
        closure.append((tenant_id, user_id, user_id, 0))
        if boss is not None:
            closure.append((tenant_id, boss, user_id, 1))
    return ids, {"app_user": users, "user_closure": closure}


def support_team(
    rng: random.Random, tenant_id: UUID, size: int, now: datetime
) -> tuple[tuple[UUID, ...], dict[str, list[Row]]]:
    """The service desk: ``size`` support agents (no manager, no password), who own the
    tenant's cases. Returns their ids and their user and closure rows."""
    ids = tuple(_uuid4(rng) for _ in range(size))
    users: list[Row] = []
    closure: list[Row] = []
    for n, user_id in enumerate(ids):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        # "support" keeps them apart from the sales team's addresses (unique per tenant).
        email = f"{first.lower()}.{last.lower()}.support{n}@team.example.com"
        users.append((tenant_id, user_id, email, f"{first} {last}", SUPPORT_ROLE, None, now))
        closure.append((tenant_id, user_id, user_id, 0))
    return ids, {"app_user": users, "user_closure": closure}


def _dealt(rng: random.Random, shares: Sequence[tuple[str, float]], n: int) -> list[str]:
    """``n`` values in ``shares`` (summing to 1) as exactly as whole numbers allow (largest
    remainders first), in random order."""
    exact = [(value, share * n) for value, share in shares]
    counts = {value: int(x) for value, x in exact}
    rest = n - sum(counts.values())
    for value, _ in sorted(exact, key=lambda e: e[1] - int(e[1]), reverse=True)[:rest]:
        counts[value] += 1
    out = [value for value, _ in shares for _ in range(counts[value])]
    rng.shuffle(out)
    return out


def scoring_rules(rng: random.Random, tenant_id: UUID, now: datetime) -> list[Row]:
    """A few lead scoring rules, their conditions as the API stores them."""
    first, rest = SCORING_RULES[:2], SCORING_RULES[2:]
    rows: list[Row] = []
    for n, (name, points, condition) in enumerate([*first, *rng.sample(rest, rng.randint(3, 6))]):
        # Tenants tune the points; a rule now and then is switched off (not the first two).
        tuned = points + rng.choice((-5, 0, 0, 5))
        body = ScoringRuleCreate(
            name=name,
            points=tuned if tuned * points > 0 else points,
            condition=condition,
            active=n < 2 or rng.random() >= 0.1,
        ).model_dump(mode="json")
        created = now - timedelta(days=rng.uniform(30, 2 * 365))
        rows.append(
            (
                tenant_id,
                new_id(),
                body["name"],
                body["points"],
                body["condition"],
                body["active"],
                created,
                created + (now - created) * rng.random(),
                1,
            )
        )
    return rows


def generate(
    rng: random.Random,
    tenant_id: UUID,
    region: str,
    stages: Sequence[asyncpg.Record],
    owner_ids: Sequence[UUID],
    plan: Plan,
    now: datetime,
    agent_ids: Sequence[UUID] = (),
) -> dict[str, list[Row]]:
    """All rows of one tenant but its users, in foreign-key order (accounts first).
    Cases are owned by ``agent_ids`` (none: unassigned); everything else by
    ``owner_ids``."""
    day = timedelta(days=1)
    year_ago = now - 365 * day
    today = now.date()
    tlds = TLDS.get(region, TLDS["us"])
    currencies, currency_weights = zip(*CURRENCIES.get(region, CURRENCIES["us"]), strict=True)

    def past(max_days: int, not_before: datetime | None = None) -> datetime:
        start = max(not_before or now - max_days * day, now - max_days * day)
        return start + (now - start) * rng.random()

    fields = custom_fields(tenant_id, currencies[0], now)
    custom_rows: list[Row] = []
    accounts: list[Row] = []
    account_info: list[tuple[UUID, str, str, UUID, datetime]] = []
    domains: set[str] = set()
    for n in range(plan.accounts):
        name = _company(rng, region)
        label = _domain_label(name)
        domain = f"{label}.{rng.choice(tlds)}"
        while domain in domains:
            domain = f"{label}{rng.randint(2, 999)}.{rng.choice(tlds)}"
        domains.add(domain)
        account_id = new_id()
        owner = rng.choice(owner_ids)
        created = past(3 * 365)
        # A few subsidiaries: the parent is an earlier account (self-references in one
        # INSERT are checked at its end, so order within the batch does not matter).
        parent = account_info[rng.randrange(n)][0] if n >= 10 and rng.random() < 0.05 else None
        values = _custom_values(rng, fields, currencies[0])
        accounts.append(
            (
                tenant_id,
                account_id,
                name,
                domain,
                parent,
                owner,
                created,
                past(365, created),
                1,
                values,
            )
        )
        custom_rows.extend(_custom_rows(tenant_id, fields, account_id, values))
        account_info.append((account_id, name, domain, owner, created))

    weights = _stage_weights(stages)
    opportunities: list[Row] = []
    opps_of: dict[UUID, list[UUID]] = {}
    for account_id, account_name, _, owner, account_created in account_info:
        count = round(rng.uniform(0, 2 * plan.opportunities_per_account))
        for _ in range(count):
            stage = rng.choices(stages, weights)[0]
            created = past(400, account_created)
            if stage["kind"] == "open":
                close: date | None = today + rng.randint(7, 180) * day
            else:
                close = min(today, (created + rng.randint(14, 200) * day).date())
            amount = Decimal(int(rng.lognormvariate(9.4, 1.1)) // 100 * 100 + 500)
            opp_id = new_id()
            opportunities.append(
                (
                    tenant_id,
                    opp_id,
                    account_id,
                    f"{' '.join(account_name.split()[:2])} - {rng.choice(PRODUCTS)}",
                    amount,
                    rng.choices(currencies, currency_weights)[0],
                    stage["pipeline_id"],
                    stage["id"],
                    close if rng.random() < 0.95 else None,
                    owner if rng.random() < 0.8 else rng.choice(owner_ids),
                    created,
                    past(200, created),
                    1,
                )
            )
            opps_of.setdefault(account_id, []).append(opp_id)

    contacts: list[Row] = []
    activities: list[Row] = []
    emails: set[str] = set()
    spread = plan.activities_per_contact // 2
    for _ in range(plan.contacts):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        account = rng.choice(account_info) if rng.random() < 0.9 else None
        contact_account: UUID | None = None
        if account is not None:
            contact_account, host = account[0], account[2]
            owner = account[3] if rng.random() < 0.7 else rng.choice(owner_ids)
            local = rng.choice((f"{first}.{last}", f"{first[0]}{last}", f"{first}"))
        else:
            host, owner = rng.choice(PERSONAL_DOMAINS), rng.choice(owner_ids)
            local = f"{first}.{last}{rng.randint(1, 99)}"
        email = f"{local}@{host}".lower()
        while email in emails:
            email = f"{local}{rng.randint(2, 999)}@{host}".lower()
        emails.add(email)
        contact_id = new_id()
        created = past(2 * 365)
        contacts.append(
            (
                tenant_id,
                contact_id,
                first,
                last,
                email if rng.random() < 0.95 else None,
                _phone(rng, region) if rng.random() < 0.7 else None,
                rng.choice(TITLES) if rng.random() < 0.85 else None,
                contact_account,
                owner,
                created,
                past(365, created),
                1,
            )
        )
        deals = opps_of.get(contact_account) if contact_account is not None else None
        count = rng.randint(
            plan.activities_per_contact - spread, plan.activities_per_contact + spread
        )
        for _ in range(count):
            kind = rng.choices(ACTIVITY_TYPES, cum_weights=ACTIVITY_CUM_WEIGHTS)[0]
            occurred = past(365, max(created, year_ago))
            activities.append(
                (
                    tenant_id,
                    new_id(),
                    kind,
                    rng.choice(SUBJECTS[kind]),
                    rng.choice(BODIES) if rng.random() < 0.4 else None,
                    occurred,
                    contact_id,
                    # The account is recorded as the API does, so account timelines
                    # include their contacts' activities.
                    contact_account,
                    rng.choice(deals) if deals and rng.random() < 0.3 else None,
                    owner if rng.random() < 0.8 else rng.choice(owner_ids),
                    min(now, occurred + timedelta(minutes=rng.randint(1, 240))),
                    None,
                    None,
                )
            )
    names = {a[0]: a[1] for a in account_info}
    rules = scoring_rules(rng, tenant_id, now)
    leads = _leads(rng, tenant_id, region, owner_ids, plan, now, contacts, names, opps_of, rules)
    cases = _cases(rng, tenant_id, agent_ids, plan, now, contacts, accounts)
    return {
        "field_definition": fields,
        "account": accounts,
        "custom_value": custom_rows,
        "contact": contacts,
        "opportunity": opportunities,
        "lead_scoring_rule": rules,
        "lead": leads.pop("lead"),
        "case": cases.pop("case"),
        "activity": [*activities, *leads["activity"], *cases["activity"]],
    }


# The accounts' custom fields every seeded tenant has: (name, label, type, options, share
# of the accounts with a value). The currency field's code is the tenant's main currency.
CUSTOM_FIELDS: tuple[tuple[str, str, str, dict[str, Any], float], ...] = (
    ("segment", "Segment", "picklist", {"values": ["Strategic", "Enterprise", "SMB"]}, 0.9),
    ("arr", "Annual revenue", "currency", {}, 0.7),
    ("partner", "Channel partner", "boolean", {}, 0.5),
)  # fmt: skip


def custom_fields(tenant_id: UUID, currency: str, now: datetime) -> list[Row]:
    rows: list[Row] = []
    for position, (name, label, kind, options, _share) in enumerate(CUSTOM_FIELDS):
        opts = {"currency": currency} if kind == "currency" else options
        rows.append(
            (tenant_id, new_id(), "account", name, label, kind, opts, position, now, now, 1)
        )
    return rows


def _custom_values(rng: random.Random, fields: Sequence[Row], currency: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for (name, _label, kind, options, share), _row in zip(CUSTOM_FIELDS, fields, strict=True):
        if rng.random() >= share:
            continue
        if kind == "picklist":
            values[name] = rng.choice(options["values"])
        elif kind == "currency":
            values[name] = f"{int(rng.lognormvariate(11.5, 1.3)) // 100 * 100}.00"
        else:
            values[name] = rng.random() < 0.3
    return values


def _custom_rows(
    tenant_id: UUID, fields: Sequence[Row], record_id: UUID, values: dict[str, Any]
) -> list[Row]:
    """``custom_value`` rows of one record, as ``meridian.crud.custom.index_rows`` makes."""
    rows: list[Row] = []
    for definition in fields:
        name, kind = definition[3], definition[5]
        if name not in values:
            continue
        spec = Field(definition[1], name, kind, False, False, None, definition[6])
        for row in index_rows(spec, values[name]):
            rows.append(
                (
                    tenant_id,
                    definition[1],
                    record_id,
                    row.get("text_value"),
                    row.get("number_value"),
                )
            )
    return rows


def _between(rng: random.Random, start: datetime, end: datetime) -> datetime:
    return start + (end - start) * rng.random()


def _leads(
    rng: random.Random,
    tenant_id: UUID,
    region: str,
    owner_ids: Sequence[UUID],
    plan: Plan,
    now: datetime,
    contacts: Sequence[Row],
    account_names: Mapping[UUID, str],
    opps_of: Mapping[UUID, list[UUID]],
    rules: Sequence[Row],
) -> dict[str, list[Row]]:
    """Leads (email and phone in clear, see ``COLUMNS``), scored by ``rules`` as the API
    scores them, and the activities logged on them. Converted leads became seeded
    contacts (same person, same e-mail) at their accounts, when the contact was created;
    a few others are people already in the CRM as contacts."""
    sources, source_weights = zip(*LEAD_SOURCES, strict=True)
    tlds = TLDS.get(region, TLDS["us"])
    rule_maps = [dict(zip(COLUMNS["lead_scoring_rule"], r, strict=True)) for r in rules]
    # Contacts at an account, by a unique e-mail address: what converted leads became.
    pool = [c for c in contacts if c[7] is not None and c[4] is not None]
    rng.shuffle(pool)
    reachable = [c for c in contacts if c[4] is not None]
    emails = {c[4] for c in reachable}
    leads: list[Row] = []
    activities: list[Row] = []
    for status in _dealt(rng, LEAD_STATUS_SHARES, plan.lead_count):
        lead_id = new_id()
        source = rng.choices(sources, source_weights)[0]
        owner: UUID | None = rng.choice(owner_ids) if rng.random() < 0.95 else None
        became: tuple[UUID | None, UUID | None, UUID | None] = (None, None, None)
        converted: datetime | None = None
        if status == "converted" and not pool:
            status = "qualified"  # no contact left to have become: not converted yet
        if status == "converted":
            contact = pool.pop()
            first, last, email, phone, title = contact[2:7]
            account: UUID = contact[7]
            company: str | None = account_names[account]
            owner, converted = contact[8], contact[9]
            deals = opps_of.get(account)
            deal = rng.choice(deals) if deals and rng.random() < 0.6 else None
            became = (account, contact[1], deal)
            created = converted - timedelta(days=rng.uniform(3, 120))
            updated = converted
        elif reachable and rng.random() < LEAD_DUPLICATE_SHARE:
            contact = rng.choice(reachable)
            first, last, email, phone, title = contact[2:7]
            company = account_names.get(contact[7]) if contact[7] is not None else None
            created = _between(rng, now - timedelta(days=365), now)
            updated = _between(rng, created, now)
        else:
            first = rng.choice(FIRST_NAMES) if rng.random() < 0.9 else None
            last = rng.choice(LAST_NAMES)
            company = _company(rng, region) if rng.random() < 0.85 else None
            title = rng.choice(TITLES) if rng.random() < 0.7 else None
            email = None
            if rng.random() < 0.85:
                host = (
                    f"{_domain_label(company)}.{rng.choice(tlds)}"
                    if company
                    else rng.choice(PERSONAL_DOMAINS)
                )
                local = f"{first}.{last}" if first else f"{last}{rng.randint(1, 99)}"
                email = f"{local}@{host}".lower()
                while email in emails:
                    email = f"{local}{rng.randint(2, 999)}@{host}".lower()
                emails.add(email)
            phone = _phone(rng, region) if rng.random() < 0.5 else None
            created = _between(rng, now - timedelta(days=365), now)
            updated = _between(rng, created, now)
        counts: dict[str, int] = {}
        until = converted or now  # a converted lead is worked on as its contact
        for _ in range(rng.randint(*LEAD_ACTIVITIES[status])):
            kind = rng.choices(LEAD_ACTIVITY_TYPES, cum_weights=LEAD_ACTIVITY_CUM_WEIGHTS)[0]
            counts[kind] = counts.get(kind, 0) + 1
            occurred = _between(rng, created, until)
            activities.append(
                (
                    tenant_id,
                    new_id(),
                    kind,
                    rng.choice(SUBJECTS[kind]),
                    rng.choice(BODIES) if rng.random() < 0.3 else None,
                    occurred,
                    None,  # a lead has no contact or account: its activities stay its own
                    None,
                    None,
                    owner if owner is not None and rng.random() < 0.9 else rng.choice(owner_ids),
                    min(now, occurred + timedelta(minutes=rng.randint(1, 240))),
                    lead_id,
                    None,
                )
            )
        # As the API scores it (sealed fields count by presence, so clear text will do).
        fields = {
            "first_name": first,
            "last_name": last,
            "company": company,
            "title": title,
            "email_enc": email,
            "phone_enc": phone,
            "source": source,
            "status": status,
        }
        score, details = evaluate(fields, counts, rule_maps)
        leads.append(
            (
                tenant_id,
                lead_id,
                first,
                last,
                company,
                title,
                email,
                phone,
                source,
                status,
                owner,
                score,
                details,
                converted,
                *became,
                created,
                updated,
                1,
            )
        )
    return {"lead": leads, "activity": activities}


def _cases(
    rng: random.Random,
    tenant_id: UUID,
    agent_ids: Sequence[UUID],
    plan: Plan,
    now: datetime,
    contacts: Sequence[Row],
    accounts: Sequence[Row],
) -> dict[str, list[Row]]:
    """Support cases about seeded contacts (and their accounts, as the API records them),
    due by their priority's service level; those resolved or closed have a resolution
    and their stamps."""
    priorities, priority_weights = zip(*CASE_PRIORITIES, strict=True)
    origins, origin_weights = zip(*CASE_ORIGINS, strict=True)
    cases: list[Row] = []
    activities: list[Row] = []
    for status in _dealt(rng, CASE_STATUS_SHARES, plan.case_count):
        case_id = new_id()
        priority = rng.choices(priorities, priority_weights)[0]
        contact_id: UUID | None = None
        account_id: UUID | None = None
        if contacts and rng.random() < 0.95:
            contact = rng.choice(contacts)
            contact_id, account_id = contact[1], contact[7]
        elif accounts:
            account_id = rng.choice(accounts)[1]
        unassigned = 0.5 if status == "new" else 0.05
        owner = rng.choice(agent_ids) if agent_ids and rng.random() >= unassigned else None
        done = status in CLOSED_STATUSES
        # Open cases are recent, and most are due by their service level: about a third
        # of them are overdue.
        created = _between(rng, now - timedelta(days=365 if done else 10), now)
        if rng.random() < 0.85:
            due = created + SLA[priority] * rng.choice((1, 2, 3, 5))
        else:
            due = created + timedelta(days=rng.uniform(1, 14))  # a date agreed with them
        resolved = closed = None
        resolution = None
        if done:
            resolved = min(now, created + timedelta(hours=rng.uniform(0.5, 240)))
            resolution = rng.choice(RESOLUTIONS)
            if status == "closed":
                closed = min(now, resolved + timedelta(days=rng.uniform(0, 7)))
        until = resolved or now
        worker = owner or (rng.choice(agent_ids) if agent_ids else None)
        for _ in range(rng.randint(1, 4) if done else rng.randint(0, 3)):
            kind = rng.choices(CASE_ACTIVITY_TYPES, cum_weights=CASE_ACTIVITY_CUM_WEIGHTS)[0]
            occurred = _between(rng, created, until)
            activities.append(
                (
                    tenant_id,
                    new_id(),
                    kind,
                    rng.choice(SUBJECTS[kind]),
                    rng.choice(CASE_DESCRIPTIONS) if rng.random() < 0.3 else None,
                    occurred,
                    contact_id,
                    account_id,  # the case's, as the API fills it in
                    None,
                    worker,
                    min(now, occurred + timedelta(minutes=rng.randint(1, 60))),
                    None,
                    case_id,
                )
            )
        cases.append(
            (
                tenant_id,
                case_id,
                rng.choice(CASE_SUBJECTS),
                rng.choice(CASE_DESCRIPTIONS) if rng.random() < 0.6 else None,
                status,
                priority,
                rng.choices(origins, origin_weights)[0] if rng.random() < 0.95 else None,
                contact_id,
                account_id,
                owner,
                due,
                resolution,
                resolved,
                closed,
                created,
                closed or resolved or _between(rng, created, now),
                1,
            )
        )
    return {"case": cases, "activity": activities}


# -- progress ----------------------------------------------------------------------------


class _Reporter(Protocol):
    """Progress of the phases (``onboarding``, ``loading``), which may run at once."""

    def phase(self, name: str, total: int) -> None: ...
    def advance(self, name: str, rows: int = 0) -> None: ...
    def close(self) -> None: ...


class _Quiet:
    def phase(self, name: str, total: int) -> None:
        pass

    def advance(self, name: str, rows: int = 0) -> None:
        pass

    def close(self) -> None:
        pass


class _Lines:
    """For logs (stderr not a terminal): a line per phase every few seconds and at its end."""

    def __init__(self) -> None:
        self._start = time.monotonic()
        # name -> [done, total, rows, last line's time]
        self._phases: dict[str, list[float]] = {}

    def phase(self, name: str, total: int) -> None:
        self._phases[name] = [0, total, 0, time.monotonic()]

    def advance(self, name: str, rows: int = 0) -> None:
        state = self._phases[name]
        state[0] += 1
        state[2] += rows
        now = time.monotonic()
        if state[0] == state[1] or now - state[3] >= 5:
            state[3] = now
            print(
                f"seed: {name} {state[0]:.0f}/{state[1]:.0f} tenants, "
                f"{state[2]:,.0f} rows, {now - self._start:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        pass


class _Bar:
    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tenants  {task.fields[rows]:>12,} rows"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._progress.start()
        self._tasks: dict[str, Any] = {}
        self._rows: dict[str, int] = {}

    def phase(self, name: str, total: int) -> None:
        self._tasks[name] = self._progress.add_task(name, total=total, rows=0)
        self._rows[name] = 0

    def advance(self, name: str, rows: int = 0) -> None:
        self._rows[name] += rows
        self._progress.update(self._tasks[name], advance=1, rows=self._rows[name])

    def close(self) -> None:
        self._progress.stop()


def _reporter(enabled: bool) -> _Reporter:
    if not enabled:
        return _Quiet()
    return _Bar() if sys.stderr.isatty() else _Lines()


# -- the credentials file ----------------------------------------------------------------


def _read_json(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise SeedError(f"{path} is unreadable ({exc}); fix or delete it") from exc
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic and private (it holds client secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


# -- the seeder --------------------------------------------------------------------------


@dataclass
class _Onboarded:
    index: int
    ctx: TenantContext
    client_id: str
    client_secret: str
    owner_ids: tuple[UUID, ...] = ()
    status: str = ""
    rows: dict[str, int] = field(default_factory=dict)
    agent_ids: tuple[UUID, ...] = ()
    # (client_id, secret) of the tenant's client with the support agent's role.
    support_client: tuple[str, str] | None = None
    # Onboarded by this run: its first client's secret was minted by this run (the
    # credentials file lists it as not seeded yet), so no one has read and cached the
    # empty tenant's pages before its data is loaded.
    new: bool = False


class Seeder:
    """The two phases of :func:`seed`: onboard every tenant, load its data.

    :meth:`run` overlaps them (:func:`seed` uses it); each can also run on its own
    (:meth:`onboard_all`, :meth:`load_all`), and be re-run.
    """

    def __init__(
        self,
        rt: Runtime,
        *,
        prefix: str,
        regions: Sequence[str],
        plan: Plan,
        random_seed: int,
        out: Path | None,
        concurrency: int = 3,
        reporter: _Reporter | None = None,
    ) -> None:
        self.rt = rt
        self.prefix = prefix
        self.regions = tuple(regions)
        self.plan = plan
        self.random_seed = random_seed
        self.out = out
        self.concurrency = concurrency
        self.reporter = reporter or _Quiet()
        self.now = datetime.now(UTC).replace(microsecond=0)
        self._file = _read_json(out)
        self._entries: dict[str, dict[str, Any]] = {
            str(e.get("slug")): e for e in self._file.get("tenants", []) if isinstance(e, dict)
        }
        # As read at the start: onboarding rewrites the entries before loading reads them.
        self._previous = dict(self._entries)
        self._saved_at = 0.0
        self._insert: _Insert | None = None  # built on the first load (column types)

    def slug(self, index: int) -> str:
        return f"{self.prefix}-{index:04d}"

    def idempotency_key(self, index: int) -> str:
        # Stable across runs: a run killed mid-onboarding is resumed, not duplicated.
        return f"meridian-seed:{self.slug(index)}"

    # -- phase 1 -------------------------------------------------------------------------

    async def ensure_admin(self) -> dict[str, str]:
        """A platform-admin client for the load test's admin users (kept across runs)."""
        saved = self._file.get("admin")
        if isinstance(saved, dict) and await self._client_works(
            str(saved.get("client_id")), str(saved.get("client_secret"))
        ):
            return {"client_id": saved["client_id"], "client_secret": saved["client_secret"]}
        new = await create_admin_client(self.rt.settings, f"load test admin ({self.prefix})")
        admin = {"client_id": new.client_id, "client_secret": new.client_secret}
        self._file["admin"] = admin
        self._save()
        return admin

    async def run(self, tenants: int) -> tuple[list[_Onboarded], int]:
        """Onboard tenants 0..N-1 and load each as soon as it is onboarded; returns them
        in index order and how many are new. The phases overlap, so what the round trips
        of one leave of the CPU serves the other."""
        self.reporter.phase("onboarding", tenants)
        self.reporter.phase("loading", tenants)
        done: dict[int, _Onboarded] = {}
        created = 0
        ready: asyncio.Queue[_Onboarded | None] = asyncio.Queue()
        failures: list[Exception] = []

        async def load(tenant: _Onboarded) -> None:
            await self.load(tenant)
            self._record(tenant, "loading", sum(tenant.rows.values()))

        async def next_ready() -> _Onboarded | None:
            tenant = await ready.get()
            if tenant is None:
                ready.put_nowait(None)  # the end, for the other loaders too
            return tenant

        def onboarded(tenant: _Onboarded, new: bool) -> None:
            nonlocal created
            done[tenant.index], created = tenant, created + new
            self._record(tenant, "onboarding")
            ready.put_nowait(tenant)

        async def onboard_batch(indexes: range) -> None:
            await self.onboard_batch(indexes, onboarded)

        async def onboarding() -> None:
            try:
                await _each(
                    _take(_batches(tenants)), ONBOARDING_BATCHES_AT_ONCE, onboard_batch, failures
                )
            finally:
                ready.put_nowait(None)

        try:
            await asyncio.gather(onboarding(), _each(next_ready, self.concurrency, load, failures))
        finally:
            self._save()
        if failures:
            raise failures[0]
        return [done[i] for i in sorted(done)], created

    async def onboard_all(self, tenants: int) -> tuple[list[_Onboarded], int]:
        """Onboard (or find) tenants 0..N-1 in batches, as :meth:`run` does without
        loading them; returns them in index order and how many are new."""
        self.reporter.phase("onboarding", tenants)
        done: dict[int, _Onboarded] = {}
        created = 0
        failures: list[Exception] = []

        def onboarded(tenant: _Onboarded, new: bool) -> None:
            nonlocal created
            done[tenant.index], created = tenant, created + new
            self._record(tenant, "onboarding")

        async def onboard_batch(indexes: range) -> None:
            await self.onboard_batch(indexes, onboarded)

        try:
            await _each(
                _take(_batches(tenants)), ONBOARDING_BATCHES_AT_ONCE, onboard_batch, failures
            )
        finally:
            self._save()
        if failures:
            raise failures[0]
        return [done[i] for i in sorted(done)], created

    def _request(self, index: int) -> TenantCreate:
        region = self.regions[index % len(self.regions)]
        name = _company(_rng_for(self.random_seed, self.prefix, index, "name"), region)
        # The largest plan: a load test drives each tenant harder than most customers.
        return TenantCreate(slug=self.slug(index), name=name, region=region, plan=LOAD_PLAN)

    async def onboard_batch(
        self, indexes: Sequence[int], done: Callable[[_Onboarded, bool], None]
    ) -> None:
        """Onboard tenants together (one placement, finished concurrently: the API's
        onboarding, :meth:`TenantAdminService.onboard_many`), handing each to ``done``
        (with whether it is new) in index order. Any problem sends the batch through
        :meth:`onboard` one by one, which resumes what was done (same idempotency keys),
        stops at the tenant that cannot be onboarded and says why."""
        requests = [(self._request(i), self.idempotency_key(i)) for i in indexes]
        try:
            answers = await tenant_admin.onboard_many(
                admin_deps(self.rt), requests, concurrency=ONBOARDING_CONCURRENCY
            )
        except MeridianError:
            for i in indexes:
                tenant, created = await self.onboard(i)
                await self._add_support_clients([tenant])
                done(tenant, created)
            return
        tenants: list[_Onboarded] = []
        for i, (row, created) in zip(indexes, answers, strict=True):
            tenant = await self._onboarded(i, row)
            tenant.new = created
            tenants.append(tenant)
        await self._add_support_clients(tenants)
        for tenant in tenants:
            done(tenant, tenant.new)

    async def _onboarded(self, index: int, row: dict[str, Any]) -> _Onboarded:
        # The answer is the tenant as onboarding left it, read after its last write:
        # reading the directory again would only repeat it.
        ctx = TenantContext(
            tenant_id=row["id"],
            slug=row["slug"],
            shard_id=row["shard_id"],
            region=row["region"],
            status=TenantStatus(row["status"]),
            epoch=row["epoch"],
        )
        if ctx.status is not TenantStatus.ACTIVE:
            raise SeedError(f"tenant {ctx.slug!r} is {ctx.status.value}; it cannot be seeded")
        client_id, secret = row["client"]["client_id"], row["client"]["client_secret"]
        if not secret:
            # The first client's secret is shown once; reuse what we kept, or add a client.
            client_id, secret = await self._credentials_for(ctx)
        return _Onboarded(index, ctx, client_id, secret)

    async def onboard(self, index: int) -> tuple[_Onboarded, bool]:
        slug = self.slug(index)
        body = self._request(index)
        try:
            row, created_now = await tenant_admin.onboard(
                admin_deps(self.rt), body, self.idempotency_key(index)
            )
        except IdempotencyKeyReused:
            # Ours (same key) but asked with other arguments (e.g. other regions): keep it.
            ctx = await self.rt.directory.load(await self._tenant_id(slug))
        except Conflict as exc:
            # The slug is taken, or placement found no room (every shard of the region
            # full or closed): only the first is about the prefix.
            if await self._find_tenant_id(slug) is None:
                raise SeedError(f"onboarding {slug!r} failed: {exc}") from exc
            raise SeedError(
                f"a tenant with slug {slug!r} exists and was not created by the seeder; "
                f"use another --prefix"
            ) from exc
        except MeridianError as exc:
            raise SeedError(f"onboarding {slug!r} failed: {exc}") from exc
        else:
            tenant = await self._onboarded(index, row)
            tenant.new = created_now
            return tenant, created_now
        if ctx is None or ctx.status is not TenantStatus.ACTIVE:
            state = ctx.status.value if ctx else "gone"
            raise SeedError(f"tenant {slug!r} is {state}; it cannot be seeded")
        # The first client's secret is shown once; reuse what we kept, or add a client.
        client_id, secret = await self._credentials_for(ctx)
        return _Onboarded(index, ctx, client_id, secret, new=False), False

    async def _tenant_id(self, slug: str) -> UUID:
        found = await self._find_tenant_id(slug)
        if found is None:
            raise SeedError(f"tenant {slug!r} disappeared while seeding")
        return found

    async def _find_tenant_id(self, slug: str) -> UUID | None:
        async with self.rt.control.connect() as conn:
            found: UUID | None = await conn.scalar(select(Tenant.id).where(Tenant.slug == slug))
        return found

    async def _credentials_for(self, ctx: TenantContext) -> tuple[str, str]:
        entry = self._entries.get(ctx.slug) or {}
        client_id, secret = str(entry.get("client_id", "")), str(entry.get("client_secret", ""))
        if (
            entry.get("id") == str(ctx.tenant_id)
            and secret
            and await self._client_works(client_id, secret)
        ):
            return client_id, secret
        # With the first client's role (it administers the tenant), which the scenarios
        # act with: a client added through the admin API is an integration, which may not
        # read the lead scoring rules the managers look at.
        async with self.rt.control.begin() as conn:
            new = await create_client(
                conn,
                name="load test client",
                scope=f"{SCOPE_READ} {SCOPE_WRITE}",
                tenant_id=ctx.tenant_id,
                role="admin",
            )
        return new.client_id, new.client_secret

    async def _add_support_clients(self, tenants: Sequence[_Onboarded]) -> None:
        """Give each tenant a client acting as a support agent (its token carries that
        role, for the load test's SupportAgent users): the one in the credentials file
        while it works, else a new one; the new ones in one control-plane transaction."""
        kept: dict[UUID, tuple[str, str]] = {}
        for tenant in tenants:
            entry = self._entries.get(tenant.ctx.slug) or {}
            saved = entry.get("support_client")
            if entry.get("id") == str(tenant.ctx.tenant_id) and isinstance(saved, dict):
                kept[tenant.ctx.tenant_id] = (
                    str(saved.get("client_id", "")),
                    str(saved.get("client_secret", "")),
                )
        working = await self._working_support_clients(kept)
        missing = []
        for tenant in tenants:
            pair = kept.get(tenant.ctx.tenant_id)
            if pair is not None and pair[0] in working:
                tenant.support_client = pair
            else:
                missing.append(tenant)
        if not missing:
            return
        async with self.rt.control.begin() as conn:
            for tenant in missing:
                new = await create_client(
                    conn,
                    name="load test support desk",
                    scope=f"{SCOPE_READ} {SCOPE_WRITE}",
                    tenant_id=tenant.ctx.tenant_id,
                    role=SUPPORT_ROLE,
                )
                tenant.support_client = (new.client_id, new.client_secret)

    async def _working_support_clients(self, kept: Mapping[UUID, tuple[str, str]]) -> set[str]:
        """The ids of ``kept`` (tenant -> client id, secret) that still work as that
        tenant's support agent client; one query for them all."""
        if not kept:
            return set()
        stmt = select(
            OAuthClient.client_id,
            OAuthClient.secret_hash,
            OAuthClient.tenant_id,
            OAuthClient.scope,
            OAuthClient.revoked_at,
            OAuthClient.role,
        ).where(OAuthClient.client_id.in_([client_id for client_id, _ in kept.values()]))
        async with self.rt.control.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        secret_of = dict(kept.values())
        working = set()
        for row in rows:
            record = ClientRecord(
                client_id=row.client_id,
                secret_hash=row.secret_hash,
                tenant_id=row.tenant_id,
                scope=row.scope,
                revoked=row.revoked_at is not None,
                role=row.role,
            )
            if (
                not record.revoked
                and record.role == SUPPORT_ROLE
                and kept.get(row.tenant_id, ("",))[0] == record.client_id
                and record.secret_matches(secret_of[record.client_id])
            ):
                working.add(row.client_id)
        return working

    async def _client_works(self, client_id: str, secret: str) -> bool:
        async with self.rt.control.connect() as conn:
            client = await find_client(conn, client_id)
        return client is not None and not client.revoked and client.secret_matches(secret)

    # -- phase 2 -------------------------------------------------------------------------

    async def load_all(self, tenants: Sequence[_Onboarded]) -> None:
        """Load every tenant not yet seeded, a few at a time (PostgreSQL ingests one
        tenant while Python generates the next)."""
        self.reporter.phase("loading", len(tenants))
        failures: list[Exception] = []

        async def load(tenant: _Onboarded) -> None:
            await self.load(tenant)
            self._record(tenant, "loading", sum(tenant.rows.values()))

        try:
            await _each(_take(tenants), self.concurrency, load, failures)
        finally:
            self._save()
        if failures:
            raise failures[0]

    async def load(self, tenant: _Onboarded) -> None:
        """Generate and insert the tenant's rows in one transaction, unless it has data."""
        ctx = tenant.ctx
        async with self.rt.router.transaction(ctx, write=True) as session:
            conn = await _driver_connection(session)
            # One round trip, two statements (the timeout applies to each separately): a
            # big tenant's insert may outlast the API's statement timeout, and a second
            # seeder of the tenant waits on the lock, then sees the other's rows.
            lock_key = ctx.tenant_id.int & 0x7FFFFFFF
            await conn.execute(
                "SET LOCAL statement_timeout = 0; "
                f"SELECT pg_advisory_xact_lock({_LOCK_NAMESPACE}, {lock_key})"
            )
            stages = await conn.fetch(_STAGES, ctx.tenant_id)
            # Every onboarded tenant has its default pipeline; without one, ask directly.
            if stages[0]["seeded"] if stages else await conn.fetchval(_SEEDED, ctx.tenant_id):
                tenant.status = "skipped"
                tenant.owner_ids = await self._known_owners(conn, ctx)
                tenant.agent_ids = await self._known_agents(conn, ctx)
                return
            if not stages:
                raise SeedError(f"tenant {ctx.slug!r} has no default pipeline")
            if self._insert is None:
                self._insert = await _Insert.build(conn)
            rng = _rng_for(self.random_seed, self.prefix, tenant.index, "data")
            owner_ids, rows = team(rng, ctx.tenant_id, rng.randint(5, 15), self.now)
            # A generator of its own: the sales data stays what it was before agents existed.
            desk = _rng_for(self.random_seed, self.prefix, tenant.index, "support")
            agent_ids, agents = support_team(desk, ctx.tenant_id, desk.randint(2, 5), self.now)
            for table, extra in agents.items():
                rows[table].extend(extra)
            rows |= generate(
                rng, ctx.tenant_id, ctx.region, stages, owner_ids, self.plan, self.now, agent_ids
            )
            cipher = await self.rt.keyring.active_cipher(ctx.tenant_id)
            for table in SEALED_AT:
                rows[table] = _seal(cipher, table, rows[table])
            tenant.rows.update(await self._insert.run(conn, ctx.tenant_id, rows))
        # As after any API creation: list pages cached before the load (say, of the
        # empty tenant) must not outlive it. A tenant this run created has none (six
        # Redis round trips saved per tenant).
        if not tenant.new:
            await asyncio.gather(
                *(
                    self.rt.cache.invalidate(str(ctx.tenant_id), f"{kind}-list")
                    for kind in COLUMNS
                    if kind in self.rt.list_cache
                )
            )
        tenant.status, tenant.owner_ids, tenant.agent_ids = "loaded", owner_ids, agent_ids

    async def _known_owners(self, conn: asyncpg.Connection, ctx: TenantContext) -> tuple[UUID, ...]:
        entry = self._previous.get(ctx.slug) or {}
        if entry.get("id") == str(ctx.tenant_id) and entry.get("owner_ids"):
            return tuple(UUID(o) for o in entry["owner_ids"])
        return tuple(await _owner_ids(conn, ctx.tenant_id))

    async def _known_agents(self, conn: asyncpg.Connection, ctx: TenantContext) -> tuple[UUID, ...]:
        entry = self._previous.get(ctx.slug) or {}
        if entry.get("id") == str(ctx.tenant_id) and entry.get("agent_ids"):
            return tuple(UUID(a) for a in entry["agent_ids"])
        # Tenants seeded before support agents existed have none (and no cases).
        rows = await conn.fetch(
            "SELECT id FROM app_user WHERE tenant_id = $1 AND role = $2 ORDER BY id",
            ctx.tenant_id,
            SUPPORT_ROLE,
        )
        return tuple(r["id"] for r in rows)

    # -- state ---------------------------------------------------------------------------

    def _entry(self, tenant: _Onboarded) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "slug": tenant.ctx.slug,
            "id": str(tenant.ctx.tenant_id),
            "region": tenant.ctx.region,
            "shard_id": tenant.ctx.shard_id,
            "client_id": tenant.client_id,
            "client_secret": tenant.client_secret,
            "owner_ids": [str(o) for o in tenant.owner_ids],
            "agent_ids": [str(a) for a in tenant.agent_ids],
            "support_client": _client_entry(tenant.support_client),
            "seeded": tenant.status in ("loaded", "skipped"),
        }
        return entry

    def _record(self, tenant: _Onboarded, phase: str, rows: int = 0) -> None:
        self._entries[tenant.ctx.slug] = self._entry(tenant)
        self._save_soon()
        self.reporter.advance(phase, rows)

    def _save_soon(self) -> None:
        """Save unless the file was written less than ``_SAVE_INTERVAL`` ago (a phase
        saves at its end anyway; a run killed in between re-finds what it did)."""
        if time.monotonic() - self._saved_at >= _SAVE_INTERVAL:
            self._save()

    def _save(self) -> None:
        self._saved_at = time.monotonic()
        if self.out is None:
            return
        self._file.update(
            {
                "version": FILE_VERSION,
                "prefix": self.prefix,
                "issuer": self.rt.settings.issuer,
                "random_seed": self.random_seed,
                "plan": {
                    "contacts": self.plan.contacts,
                    "accounts_per_tenant": self.plan.accounts,
                    "opportunities_per_account": self.plan.opportunities_per_account,
                    "activities_per_contact": self.plan.activities_per_contact,
                    "leads_per_tenant": self.plan.lead_count,
                    "cases_per_tenant": self.plan.case_count,
                },
                "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
                # Tenants of this prefix, in index order (the load test's Zipf ranks);
                # by length first, so that -10000 comes after -9999.
                "tenants": sorted(
                    self._entries.values(), key=lambda e: (len(str(e["slug"])), str(e["slug"]))
                ),
            }
        )
        _write_json(self.out, self._file)


def _client_entry(client: tuple[str, str] | None) -> dict[str, str] | None:
    if client is None:
        return None
    return {"client_id": client[0], "client_secret": client[1]}


async def _owner_ids(conn: asyncpg.Connection, tenant_id: UUID) -> list[UUID]:
    """The owners a seeded tenant's records name (when the credentials file lost them)."""
    rows = await conn.fetch(
        "SELECT owner_id FROM account WHERE tenant_id = $1 AND owner_id IS NOT NULL "
        "UNION SELECT owner_id FROM contact WHERE tenant_id = $1 AND owner_id IS NOT NULL "
        "ORDER BY owner_id",
        tenant_id,
    )
    return [r["owner_id"] for r in rows]


async def _driver_connection(session: AsyncSession) -> asyncpg.Connection:
    """The asyncpg connection under the session's transaction (for COPY)."""
    conn = await session.connection()
    raw = await conn.get_raw_connection()
    driver: asyncpg.Connection = raw.driver_connection
    return driver


def _seal(cipher: FieldCipher, table: str, rows: list[Row]) -> list[Row]:
    """Generated contact or lead rows (email, phone in clear at ``SEALED_AT[table]``) as
    stored: encrypted, with blind indexes, under the tenant's active key (the insert must
    never carry plaintext). A row with neither has no key version, as from the API."""
    at = SEALED_AT[table]
    sealed: list[Row] = []
    for row in rows:
        email, phone = row[at], row[at + 1]
        # A contact's tax id is not seeded (None: its columns are left empty).
        stored = encrypt_values(cipher, table, row[1], {"email": email, "phone": phone})
        sealed.append(
            (
                *row[:at],
                stored["email_enc"],
                stored["email_bidx"],
                stored["phone_enc"],
                stored["phone_bidx"],
                cipher.version if email is not None or phone is not None else None,
                *row[at + 2 :],
            )
        )
    return sealed


# The default pipeline's stages, in order, and whether the tenant has data already.
_STAGES = (
    "SELECT s.pipeline_id, s.id, s.kind, "
    "EXISTS (SELECT 1 FROM account WHERE tenant_id = $1) AS seeded "
    "FROM pipeline_stage s "
    "JOIN pipeline p ON p.tenant_id = s.tenant_id AND p.id = s.pipeline_id "
    "WHERE s.tenant_id = $1 AND p.tenant_id = $1 AND p.is_default "
    "ORDER BY s.position"
)
_SEEDED = "SELECT EXISTS (SELECT 1 FROM account WHERE tenant_id = $1)"


@dataclass(frozen=True, slots=True)
class _Insert:
    """One statement that inserts all of a tenant's rows: per table (``COLUMNS``, in
    foreign-key order) a data-modifying CTE ``INSERT ... SELECT $1, * FROM unnest(<an
    array per column>)``, $1 being the tenant; it answers the rows inserted per table."""

    sql: str
    # Per table, the positions (in COLUMNS) of jsonb columns: their values go as JSON
    # text (SQLAlchemy's asyncpg codec, on this connection, encodes jsonb from text).
    json_columns: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @classmethod
    async def build(cls, conn: asyncpg.Connection) -> _Insert:
        # The arrays need their element types; the shards' schemas are all the same.
        types = {
            (r["table"], r["column"]): r["type"]
            for r in await conn.fetch(
                "SELECT c.relname AS table, a.attname AS column, "
                "format_type(a.atttypid, NULL) AS type "
                "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relname = ANY($1::text[]) "
                "AND a.attnum > 0 AND NOT a.attisdropped",
                list(COLUMNS),
            )
        }
        ctes: list[str] = []
        n = 1
        for table, columns in COLUMNS.items():
            assert columns[0] == "tenant_id"  # the one value every row shares: $1
            arrays = []
            for column in columns[1:]:
                n += 1
                arrays.append(f"${n}::{types[table, column]}[]")
            # Fixed table and column names and catalog types, never input; quoted, as
            # "case" is a keyword.
            names = ", ".join(f'"{c}"' for c in columns)
            ctes.append(
                f'ins_{table} AS (INSERT INTO public."{table}" ({names}) '  # noqa: S608
                f"SELECT $1, * FROM unnest({', '.join(arrays)}) RETURNING 1)"
            )
        counts = ", ".join(f'(SELECT count(*) FROM ins_{t}) AS "{t}"' for t in COLUMNS)  # noqa: S608
        json_columns = {
            table: tuple(i for i, c in enumerate(columns) if types[table, c] == "jsonb")
            for table, columns in COLUMNS.items()
        }
        return cls(f"WITH {', '.join(ctes)} SELECT {counts}", json_columns)

    async def run(
        self, conn: asyncpg.Connection, tenant_id: UUID, rows: dict[str, list[Row]]
    ) -> dict[str, int]:
        """Insert ``rows`` (per table, in ``COLUMNS`` order, the tenant's id first)."""
        arrays: list[list[Any]] = []
        for table, columns in COLUMNS.items():
            records = rows.get(table, [])
            if not records:
                arrays.extend([] for _ in columns[1:])
                continue
            if self.json_columns.get(table):
                records = [_json_text(r, self.json_columns[table]) for r in records]
            # Rows into columns, but the tenant id's (the first).
            arrays.extend(list(column) for column in list(zip(*records, strict=True))[1:])
        result = await conn.fetchrow(self.sql, tenant_id, *arrays)
        assert result is not None
        inserted = {table: int(result[table]) for table in COLUMNS}
        for table, n in inserted.items():
            if n != len(rows.get(table, [])):
                raise SeedError(f"{table}: inserted {n} of {len(rows.get(table, []))} rows")
        return inserted


def _json_text(row: Row, positions: Sequence[int]) -> Row:
    return tuple(json.dumps(v) if i in positions else v for i, v in enumerate(row))


def _batches(tenants: int) -> Iterator[range]:
    """Tenant indexes 0..N-1 in onboarding batches (TenantAdminService.onboard_many)."""
    for start in range(0, tenants, ONBOARDING_BATCH):
        yield range(start, min(start + ONBOARDING_BATCH, tenants))


def _take(items: Iterable[T]) -> Callable[[], Awaitable[T | None]]:
    """``items`` one by one for :func:`_each` (None at the end)."""
    pending = iter(items)

    async def take() -> T | None:
        return next(pending, None)

    return take


async def _each(
    take: Callable[[], Awaitable[T | None]],
    limit: int,
    work: Callable[[T], Awaitable[None]],
    failures: list[Exception],
) -> None:
    """``work`` on every item ``take`` gives until None, ``limit`` at a time, started in
    order. Once ``failures`` (shared by the phases of a run) holds one, no new item
    starts and those running finish: nothing is cancelled in the middle of a
    transaction. The caller raises the first failure."""

    async def worker() -> None:
        while not failures:
            item = await take()
            if item is None or failures:
                return
            try:
                await work(item)
            except Exception as exc:
                failures.append(exc)

    await asyncio.gather(*(worker() for _ in range(limit)))


# -- entry points ------------------------------------------------------------------------


def run_blocking(work: Coroutine[Any, Any, T]) -> T:
    """Run :func:`seed` (or another coroutine of this module) from synchronous code, such
    as ``meridian seed`` and the load-test runner, on uvloop: seeding is CPU-bound in this
    process, and uvloop's event loop took about 15% less CPU per small tenant than
    asyncio's (uvloop comes with ``uvicorn[standard]``, which serves the API)."""
    return uvloop.run(work)


async def seed(
    settings: Settings,
    *,
    tenants: int,
    contacts: int,
    accounts_per_tenant: int | None = None,
    opportunities_per_account: float = 1.5,
    activities_per_contact: int = 5,
    leads_per_tenant: int | None = None,
    cases_per_tenant: int | None = None,
    regions: Sequence[str] = ("us", "eu"),
    prefix: str = "seed",
    random_seed: int = 1,
    concurrency: int = 3,
    out: Path | None = None,
    progress: bool = True,
) -> SeedResult:
    """Onboard ``tenants`` tenants (``<prefix>-0000`` ...) spread over ``regions`` and
    load realistic CRM data into each; write their credentials to ``out``.

    ``accounts_per_tenant`` defaults to a tenth of ``contacts``, ``leads_per_tenant`` to
    half of them and ``cases_per_tenant`` to a fifth. Data is deterministic
    for a given ``random_seed`` (ids and timestamps excepted). Re-running is safe: it
    skips tenants already seeded and finishes the others.
    """
    if tenants < 1:
        raise SeedError("tenants must be at least 1")
    if contacts < 1:
        raise SeedError("contacts must be at least 1")
    accounts = max(1, contacts // 10) if accounts_per_tenant is None else accounts_per_tenant
    if accounts < 1:
        raise SeedError("accounts_per_tenant must be at least 1")
    if opportunities_per_account < 0 or activities_per_contact < 0:
        raise SeedError("opportunities and activities per record cannot be negative")
    if (leads_per_tenant or 0) < 0 or (cases_per_tenant or 0) < 0:
        raise SeedError("leads and cases per tenant cannot be negative")
    if not _PREFIX.match(prefix):
        raise SeedError("prefix: lower-case letters, digits and dashes, at most 51 characters")
    if not regions:
        raise SeedError("give at least one region")
    if concurrency < 1:
        raise SeedError("concurrency must be at least 1")
    plan = Plan(
        contacts,
        accounts,
        opportunities_per_account,
        activities_per_contact,
        leads=leads_per_tenant,
        cases=cases_per_tenant,
    )
    started = time.monotonic()
    # Enough control-plane connections for the onboardings and loads under way: with
    # the API's 5 kept open, most of them would be opened and closed per statement.
    rt = await Runtime.start(settings.model_copy(update={"control_pool_size": 20}))
    reporter = _reporter(progress)
    try:
        seeder = Seeder(
            rt,
            prefix=prefix,
            regions=regions,
            plan=plan,
            random_seed=random_seed,
            out=out,
            concurrency=concurrency,
            reporter=reporter,
        )
        await seeder.ensure_admin()
        onboarded, created = await seeder.run(tenants)
    finally:
        reporter.close()
        await rt.stop()
    rows: dict[str, int] = dict.fromkeys(COLUMNS, 0)
    for t in onboarded:
        for table, n in t.rows.items():
            rows[table] += n
    return SeedResult(
        tenants=tuple(
            SeededTenant(
                slug=t.ctx.slug,
                id=t.ctx.tenant_id,
                region=t.ctx.region,
                shard_id=t.ctx.shard_id,
                client_id=t.client_id,
                client_secret=t.client_secret,
                owner_ids=t.owner_ids,
                status=t.status,
                rows=dict(t.rows),
                agent_ids=t.agent_ids,
                support_client=t.support_client,
            )
            for t in onboarded
        ),
        onboarded=created,
        loaded=sum(t.status == "loaded" for t in onboarded),
        skipped=sum(t.status == "skipped" for t in onboarded),
        rows=rows,
        seconds=time.monotonic() - started,
        out=out,
    )


__all__ = [
    "ONBOARDING_CONCURRENCY",
    "Plan",
    "SeedError",
    "SeedResult",
    "SeededTenant",
    "Seeder",
    "generate",
    "run_blocking",
    "scoring_rules",
    "seed",
    "support_team",
]
