"""What a dev platform holds from its first run: a platform-admin client, the ``demo``
tenant, its users (a sales manager who signs in, a rep reporting to her) and records, all
made through the API, each step once (progress and secrets kept in the data folder)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx

from meridian.operations import create_admin_client
from meridian.settings import Settings
from meridian_dev.datadir import DataDir, DevError, Json, save_json, say, warn

DEMO_SLUG = "demo"
_KEY_PREFIX = "meridian-dev-demo"


async def client_token(http: httpx.AsyncClient, cred: Json) -> str | None:
    """A token for the client, or None when the client is unknown, revoked or inactive."""
    resp = await http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(str(cred.get("client_id")), str(cred.get("client_secret"))),
    )
    if resp.status_code == 200:
        return str(resp.json()["access_token"])
    if resp.status_code in (400, 401):
        return None
    raise DevError(f"the token endpoint answered {resp.status_code}: {resp.text}")


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return f"{resp.status_code} {resp.text[:200]}"
    if isinstance(body, dict):
        return f"{resp.status_code} {body.get('detail') or body.get('title') or body}"
    return f"{resp.status_code} {body}"


async def ensure_admin(
    http: httpx.AsyncClient, settings: Settings, creds: Json, paths: DataDir
) -> Json:
    admin = creds.get("admin")
    if isinstance(admin, dict) and await client_token(http, admin):
        return admin
    if admin:
        warn("the saved platform-admin client no longer works (new databases?); making a new one")
    new = await create_admin_client(settings, "meridian dev admin")
    admin = {"client_id": new.client_id, "client_secret": new.client_secret}
    creds["admin"] = admin
    save_json(paths.credentials, creds, private=True)
    say("created a platform-admin client")
    return admin


async def _find_tenant(http: httpx.AsyncClient, headers: dict[str, str], slug: str) -> Json | None:
    cursor: str | None = None
    while True:
        params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
        resp = await http.get("/admin/v1/tenants", params=params, headers=headers)
        if resp.status_code != 200:
            raise DevError(f"listing tenants failed: {_detail(resp)}")
        page: Json = resp.json()
        for row in page["data"]:
            if row["slug"] == slug:
                found: Json = row
                return found
        cursor = page.get("next_cursor")
        if not cursor:
            return None


async def ensure_demo_tenant(
    http: httpx.AsyncClient, admin_headers: dict[str, str], creds: Json, state: Json, paths: DataDir
) -> Json | None:
    demo = creds.get("demo_tenant")
    if isinstance(demo, dict) and await client_token(http, demo):
        return demo
    # The key is saved before the call, so a run killed mid-onboarding resumes it.
    key = state.setdefault("demo_onboarding_key", f"{_KEY_PREFIX}-{uuid.uuid4()}")
    save_json(paths.state, state)
    resp = await http.post(
        "/admin/v1/tenants",
        json={"slug": DEMO_SLUG, "name": "Demo Inc.", "region": "us"},
        headers={**admin_headers, "Idempotency-Key": key},
    )
    cred: Json | None = None
    if resp.status_code == 201:
        row: Json = resp.json()
        client = row["client"]
        if client.get("client_secret"):
            cred = {"client_id": client["client_id"], "client_secret": client["client_secret"]}
        say(f"created the demo tenant {DEMO_SLUG!r} on shard {row['shard_id']}")
    elif resp.status_code == 409:
        # It exists, but this data directory lost its credentials: give it a new client.
        found = await _find_tenant(http, admin_headers, DEMO_SLUG)
        if found is None or found["status"] != "active":
            warn(f"the demo tenant exists but is not usable ({found and found['status']})")
            return None
        row = found
    else:
        warn(f"could not create the demo tenant: {_detail(resp)}")
        return None
    if cred is None:
        # Its first client's secret went to a run that did not keep it.
        made = await http.post(
            f"/admin/v1/tenants/{row['id']}/clients",
            json={"name": "meridian dev"},
            headers=admin_headers,
        )
        if made.status_code != 201:
            raise DevError(f"could not add a client to the demo tenant: {_detail(made)}")
        client = made.json()
        cred = {"client_id": client["client_id"], "client_secret": client["client_secret"]}
    demo = {"id": str(row["id"]), "slug": DEMO_SLUG, **cred}
    creds["demo_tenant"] = demo
    save_json(paths.credentials, creds, private=True)
    return demo


# The demo tenant's users: a sales manager who signs in with the password grant (her
# password is made on the first run, kept in credentials.json and printed), and a rep who
# reports to her. The demo records are dealt out between them as owners.
DEMO_MANAGER = {"email": "ada@demo.example.com", "name": "Ada Lovelace", "role": "sales_manager"}
DEMO_REP = {"email": "grace@demo.example.com", "name": "Grace Hopper", "role": "sales_rep"}


@dataclass
class _Demo:
    """What the demo-data makers see: the API, and the ids made so far per step."""

    http: httpx.AsyncClient
    headers: dict[str, str]
    ids: dict[str, list[str]]
    creds: Json

    def owners(self) -> list[str]:
        return [*self.ids.get("users", []), *self.ids.get("team", [])]

    def owned(self, bodies: list[Json]) -> list[Json]:
        owners = self.owners()
        if not owners:
            return bodies
        return [{**body, "owner_id": owners[n % len(owners)]} for n, body in enumerate(bodies)]


def _demo_password(creds: Json) -> str:
    user = creds.setdefault("demo_user", {})
    if not user.get("password"):
        user.update(email=DEMO_MANAGER["email"], password=secrets.token_urlsafe(12))
    return str(user["password"])


async def _manager(demo: _Demo) -> list[Json] | None:
    return [{**DEMO_MANAGER, "password": _demo_password(demo.creds)}]


async def _rep(demo: _Demo) -> list[Json] | None:
    managers = demo.ids.get("users")
    return [{**DEMO_REP, "manager_id": managers[0]}] if managers else None


async def _accounts(demo: _Demo) -> list[Json] | None:
    return demo.owned(
        [
            {"name": "Acme Corporation", "domain": "acme.example.com"},
            {"name": "Globex", "domain": "globex.example.com"},
            {"name": "Initech", "domain": "initech.example.com"},
        ]
    )


async def _contacts(demo: _Demo) -> list[Json] | None:
    accounts = demo.ids.get("accounts")
    if not accounts or len(accounts) < 3:
        return None
    people = [
        ("Ada", "Lovelace", "CTO", 0),
        ("Grace", "Hopper", "VP Engineering", 0),
        ("Hank", "Scorpio", "CEO", 1),
        ("Bill", "Lumbergh", "Division VP", 2),
    ]
    domains = ["acme.example.com", "globex.example.com", "initech.example.com"]
    return demo.owned(
        [
            {
                "first_name": first,
                "last_name": last,
                "email": f"{first.lower()}@{domains[n]}",
                "title": title,
                "account_id": accounts[n],
            }
            for first, last, title, n in people
        ]
    )


async def _default_pipeline(demo: _Demo) -> tuple[str, list[Json]]:
    """The default pipeline's id and its stages in order."""
    resp = await demo.http.get("/v1/pipelines", params={"is_default": "true"}, headers=demo.headers)
    if resp.status_code != 200 or not resp.json()["data"]:
        raise DevError(f"the demo tenant has no default pipeline: {_detail(resp)}")
    pipeline = resp.json()["data"][0]
    return str(pipeline["id"]), sorted(pipeline["stages"], key=lambda s: s["position"])


async def _opportunities(demo: _Demo) -> list[Json] | None:
    accounts = demo.ids.get("accounts")
    if not accounts or len(accounts) < 3:
        return None
    pipeline_id, stages = await _default_pipeline(demo)
    today = datetime.now(UTC).date()

    def body(name: str, account: int, amount: str, stage: int, close_in_days: int) -> Json:
        return {
            "name": name,
            "account_id": accounts[account],
            "amount": amount,
            "currency": "USD",
            "expected_close_date": (today + timedelta(days=close_in_days)).isoformat(),
            "pipeline_id": pipeline_id,
            "stage_id": str(stages[min(stage, len(stages) - 1)]["id"]),
        }

    return demo.owned(
        [
            body("Acme platform licence", 0, "48000.00", 2, 30),
            body("Globex support renewal", 1, "12500.00", 1, 60),
            body("Initech pilot", 2, "3000.00", 0, 14),
        ]
    )


async def _activities(demo: _Demo) -> list[Json] | None:
    accounts, contacts = demo.ids.get("accounts"), demo.ids.get("contacts")
    if not accounts or not contacts:
        return None
    now = datetime.now(UTC).replace(microsecond=0)
    out: list[Json] = [
        {
            "type": "call",
            "subject": "Discovery call",
            "body": "Talked through their current CRM and pain points.",
            "occurred_at": (now - timedelta(days=3)).isoformat(),
            "contact_id": contacts[0],
            "account_id": accounts[0],
        },
        {
            "type": "meeting",
            "subject": "Technical deep dive",
            "occurred_at": (now - timedelta(days=1)).isoformat(),
            "contact_id": contacts[1],
            "account_id": accounts[0],
        },
        {
            "type": "note",
            "subject": "Budget approved for Q3",
            "occurred_at": now.isoformat(),
            "account_id": accounts[1],
        },
    ]
    if demo.ids.get("opportunities"):
        out[0]["opportunity_id"] = demo.ids["opportunities"][0]
    return demo.owned(out)


DemoBodies = Callable[[_Demo], Awaitable[list[Json] | None]]
# (step, collection it is POSTed to, bodies). Order matters: later steps refer to the
# ids of earlier ones.
DEMO_DATA: tuple[tuple[str, str, DemoBodies], ...] = (
    ("users", "users", _manager),
    ("team", "users", _rep),
    ("accounts", "accounts", _accounts),
    ("contacts", "contacts", _contacts),
    ("opportunities", "opportunities", _opportunities),
    ("activities", "activities", _activities),
)


async def seed_demo_data(
    demo_tenant: Json, state: Json, creds: Json, paths: DataDir, http: httpx.AsyncClient
) -> None:
    """Demo users and records through the HTTP API, each step once; Idempotency-Keys make
    a re-run after a crash replay instead of duplicating."""
    token = await client_token(http, demo_tenant)
    if token is None:
        warn("the demo tenant's client cannot get a token; no demo data")
        return
    if state.get("demo_tenant_id") != demo_tenant["id"]:
        # Progress belongs to one tenant: a demo tenant made anew starts from nothing.
        state.update(demo_tenant_id=demo_tenant["id"], demo_seeded=[], demo_ids={})
    done: list[str] = state.setdefault("demo_seeded", [])
    demo = _Demo(
        http, {"Authorization": f"Bearer {token}"}, state.setdefault("demo_ids", {}), creds
    )
    if "users" in done and not creds.get("demo_user", {}).get("password"):
        await _reset_demo_password(demo)
    for step, collection, make_bodies in DEMO_DATA:
        if step in done:
            continue
        bodies = await make_bodies(demo)
        if bodies is None:
            continue
        save_json(paths.credentials, creds, private=True)  # a password made for the bodies
        made: list[str] = []
        for n, body in enumerate(bodies):
            resp = await http.post(
                f"/v1/{collection}",
                json=body,
                headers={**demo.headers, "Idempotency-Key": f"{_KEY_PREFIX}:{step}:{n}"},
            )
            if resp.status_code != 201:
                warn(f"demo {step} not created ({_detail(resp)}); will retry on the next run")
                break
            made.append(str(resp.json()["id"]))
        else:
            demo.ids[step] = made
            done.append(step)
            save_json(paths.state, state)
            say(f"demo data: {len(made)} {collection} ({step})")


async def _reset_demo_password(demo: _Demo) -> None:
    """The demo manager exists, but this data folder lost her password: set a new one."""
    manager = demo.ids["users"][0]
    resp = await demo.http.patch(
        f"/v1/users/{manager}",
        json={"password": _demo_password(demo.creds)},
        headers=demo.headers,
    )
    if resp.status_code != 200:
        raise DevError(f"could not reset the demo user's password: {_detail(resp)}")
