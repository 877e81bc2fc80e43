"""The capability model: Casbin's RBAC-with-domains model text, the catalogue of objects
and actions, the role templates every tenant shares, and a tenant's policy snapshot.

A domain is a tenant id; templates live in the domain ``*``. A tenant may override a
template (its own permissions replace the template's, in that tenant only) and define
custom roles, which may inherit another role (``g, custom, base, <tenant>``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from uuid import UUID

TEMPLATE_DOMAIN = "*"

# Cheap string equalities first: most rules fail on the object or the action, so the
# role-graph walk (g) runs only for the few rules that could grant the request.
MODEL_TEXT = """
[request_definition]
r = sub, dom, obj, act

[policy_definition]
p = sub, dom, obj, act

[role_definition]
g = _, _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = r.obj == p.obj && r.act == p.act && (p.dom == "*" || p.dom == r.dom) \
&& g(r.sub, p.sub, r.dom)
"""

CRUD = frozenset({"read", "create", "update", "delete"})

# Every object and the actions that exist on it; names outside this set are refused.
CATALOGUE: Mapping[str, frozenset[str]] = {
    "accounts": CRUD,
    "contacts": CRUD,
    "opportunities": CRUD,
    "leads": CRUD,
    # A tenant's lead scoring rules.
    "lead_scoring": CRUD,
    "cases": CRUD,
    # The tenant's custom fields (their definitions; values are the records').
    "fields": CRUD,
    # The tenant's duplicate rules (how records match), and merges (listing, undoing).
    "duplicate_rules": CRUD,
    "merges": frozenset({"read", "undo"}),
    "pipelines": CRUD,
    "activities": CRUD,
    "users": CRUD,
    "roles": CRUD,
    "shares": CRUD,
    # The tenant's event log and live stream (each event also needs read on its record's
    # object and, for a scoped user, the record in scope).
    "events": frozenset({"read"}),
    # Webhook subscriptions, their deliveries, retries and replays.
    "webhooks": CRUD,
    # The audit trail: sign-ins, role and permission changes, shares, exports, deletes.
    "audit": frozenset({"read"}),
    # A deal's fulfilment steps (the saga run when an opportunity is won).
    "fulfilment": frozenset({"read", "update"}),
    # Bulk transfers (meridian.transfers): export jobs; import jobs (update: cancel one).
    # Each also needs read (exports) or create/update (imports) on the object itself.
    "exports": frozenset({"read", "create"}),
    # The tenant's limits and how much of them it uses (GET /v1/quotas): every role.
    "quotas": frozenset({"read"}),
    "imports": frozenset({"read", "create", "update"}),
    # Sensitive fields (email, phone, tax id) in clear; without it they are masked.
    "pii": frozenset({"read"}),
    # Every record of the tenant, whatever the reporting line and the shares.
    "records": frozenset({"read_all"}),
}

# Actions that only read: an OAuth token needs crm:read for them, crm:write otherwise.
READ_ACTIONS = frozenset({"read", "read_all"})

Permission = tuple[str, str]  # (object, action)


def is_known(obj: str, act: str) -> bool:
    actions = CATALOGUE.get(obj)
    return actions is not None and act in actions


def _grant(objects: Iterable[str], actions: Iterable[str]) -> frozenset[Permission]:
    acts = tuple(actions)
    return frozenset((o, a) for o in objects for a in acts)


_CRM = ("accounts", "contacts", "opportunities")
_EVERYTHING = frozenset((o, a) for o, acts in CATALOGUE.items() for a in acts)
# Roles that merge records read the rules and may undo a merge; others see them only.
_MERGING = _grant(["duplicate_rules"], ["read"]) | _grant(["merges"], ["read", "undo"])
_SEEING_MERGES = _grant(["duplicate_rules", "merges"], ["read"])
# Bulk imports and exports: the roles that own the tenant's data at scale.
_TRANSFERS = _grant(["exports"], ["read", "create"]) | _grant(
    ["imports"], ["read", "create", "update"]
)

# The role templates. Record scope (own records, the reporting line below, shares) is
# applied by the SQL predicate; these grants only say what a role may do at all.
TEMPLATES: Mapping[str, frozenset[Permission]] = {
    "admin": _EVERYTHING,
    "sales_manager": (
        _grant((*_CRM, "leads", "pipelines", "lead_scoring"), CRUD)
        | _grant(["cases", "fields"], ["read"])
        | _grant(["activities"], ["read", "create"])
        | _grant(["shares"], ["read", "create", "delete"])
        | _grant(["users", "roles"], ["read"])
        | _MERGING
        | _TRANSFERS
        | {("pii", "read"), ("events", "read"), ("fulfilment", "read"), ("quotas", "read")}
    ),
    "sales_rep": (
        _grant((*_CRM, "leads"), CRUD)
        | _grant(["pipelines", "users", "lead_scoring", "cases", "fields"], ["read"])
        | _grant(["activities"], ["read", "create"])
        | _grant(["shares"], ["read", "create", "delete"])
        | _MERGING
        # Exports of what the rep's lists show (record scope holds in the file too).
        | _grant(["exports"], ["read", "create"])
        | {("pii", "read"), ("events", "read"), ("fulfilment", "read"), ("quotas", "read")}
    ),
    # The service desk: works cases (not deleting them: a case is a record of service),
    # reads the customers they are about.
    "support_agent": (
        _grant((*_CRM, "pipelines", "activities", "users", "shares", "fields"), ["read"])
        | _grant(["cases"], ["read", "create", "update"])
        | _grant(["accounts", "contacts"], ["update"])
        | _SEEING_MERGES
        | {("activities", "create"), ("pii", "read"), ("events", "read"), ("quotas", "read")}
    ),
    "read_only": _grant(
        (*_CRM, "leads", "cases", "pipelines", "activities", "events", "fields", "quotas"),
        ["read"],
    )
    | _SEEING_MERGES,
    # Machine clients syncing the tenant's data: CRM read/write over every record, no
    # say over people, roles or shares.
    "integration": (
        _grant((*_CRM, "leads", "cases"), CRUD)
        | _grant(["pipelines", "users", "fields"], ["read"])
        | _grant(["activities"], ["read", "create"])
        | _grant(["webhooks"], CRUD)
        | _MERGING
        | _TRANSFERS
        | {("pii", "read"), ("records", "read_all"), ("events", "read"), ("fulfilment", "read")}
        | {("quotas", "read")}
    ),
}

# Overriding admin could lock a tenant out of its own administration; it stays fixed.
LOCKED_TEMPLATES = frozenset({"admin"})

ROLE_NAME = re.compile(r"^[a-z][a-z0-9_]{1,62}$")
# Casbin's role manager stops walking at 10 levels and then silently denies: stay far
# below it.
MAX_INHERITANCE_DEPTH = 5

Rule = tuple[str, ...]  # ("p", role, domain, object, action) or ("g", role, parent, domain)


def template_rules() -> list[Rule]:
    return sorted(
        ("p", role, TEMPLATE_DOMAIN, obj, act)
        for role, perms in TEMPLATES.items()
        for obj, act in perms
    )


@dataclass(frozen=True, slots=True)
class RoleView:
    name: str
    kind: str  # "template" or "custom"
    overridden: bool  # a template whose permissions this tenant replaced
    inherits: str | None
    permissions: frozenset[Permission]  # granted to the role itself
    effective: frozenset[Permission]  # including what it inherits


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """One tenant's policy as stored: templates, its own rules, its roles, its version."""

    tenant_id: UUID
    version: int
    rules: tuple[Rule, ...]  # templates ("*") and the tenant's own p and g rules
    overrides: frozenset[str] = frozenset()  # templates replaced in this tenant
    custom_roles: frozenset[str] = frozenset()
    _views: dict[str, RoleView] = field(default_factory=dict, compare=False, repr=False)

    @property
    def domain(self) -> str:
        return str(self.tenant_id)

    def effective_rules(self) -> list[Rule]:
        """What the enforcer loads: the template rules of overridden roles give way to
        the tenant's own; rules of other tenants never get here."""
        dom = self.domain
        out: list[Rule] = []
        for rule in self.rules:
            if rule[0] == "p":
                if rule[2] == TEMPLATE_DOMAIN and rule[1] in self.overrides:
                    continue
                if rule[2] not in (TEMPLATE_DOMAIN, dom):
                    continue
            elif rule[0] == "g" and rule[3] != dom:
                continue
            out.append(rule)
        return out

    @property
    def role_names(self) -> frozenset[str]:
        templates = {r[1] for r in self.rules if r[0] == "p" and r[2] == TEMPLATE_DOMAIN}
        return frozenset(templates | set(TEMPLATES) | self.custom_roles)

    def parent_of(self, role: str) -> str | None:
        dom = self.domain
        for rule in self.rules:
            if rule[0] == "g" and rule[1] == role and rule[3] == dom:
                return rule[2]
        return None

    def roles(self) -> dict[str, RoleView]:
        """Every role of the tenant with its own and its effective permissions (a pure
        reading of the rules, checked against the enforcer by the tests)."""
        if self._views:
            return self._views
        own: dict[str, set[Permission]] = {name: set() for name in self.role_names}
        for rule in self.effective_rules():
            if rule[0] == "p":
                own.setdefault(rule[1], set()).add((rule[3], rule[4]))
        for name in sorted(own):
            chain: list[str] = []
            cursor: str | None = name
            while cursor is not None and cursor not in chain and len(chain) <= 10:
                chain.append(cursor)
                cursor = self.parent_of(cursor)
            effective = frozenset().union(*(own.get(r, set()) for r in chain))
            self._views[name] = RoleView(
                name=name,
                kind="custom" if name in self.custom_roles else "template",
                overridden=name in self.overrides,
                inherits=self.parent_of(name),
                permissions=frozenset(own[name]),
                effective=effective,
            )
        return self._views

    def depth_of(self, role: str) -> int:
        """How many roles ``role`` inherits through (0: none)."""
        depth, seen = 0, {role}
        cursor = self.parent_of(role)
        while cursor is not None and cursor not in seen:
            seen.add(cursor)
            depth += 1
            cursor = self.parent_of(cursor)
        return depth
