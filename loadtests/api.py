"""What every simulated user shares: settings from the command line, the seeded
tenants, cached tokens, per-tenant knowledge (pipeline stages, ids seen in lists), and
one way to call the API that reports each request under a templated name.
"""

from __future__ import annotations

import json
import random
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from locust import FastHttpUser
from locust.env import Environment

from loadtests.credentials import DEFAULT_CREDENTIALS, Client, Credentials, TenantCredentials, Zipf
from loadtests.tokens import TokenCache

Json = dict[str, Any]
DEFAULT_ZIPF_S = 1.1
DEFAULT_THINK_TIME = "0.5-2"
# Ids remembered per tenant and kind: enough variety, bounded memory.
KNOWN_IDS = 500


@dataclass(frozen=True, slots=True)
class Options:
    credentials: Path
    zipf_s: float
    think_min: float
    think_max: float
    # The flood scenario's tenant (a slug; empty: the credentials file's first).
    flood_tenant: str = ""


def parse_think_time(raw: str) -> tuple[float, float]:
    """``"0.5-2"`` → (0.5, 2.0); ``"1"`` → (1.0, 1.0)."""
    low, _, high = raw.partition("-")
    try:
        lo, hi = float(low), float(high or low)
    except ValueError as exc:
        raise ValueError(f"think time must look like 0.5-2 (seconds), not {raw!r}") from exc
    if lo < 0 or hi < lo:
        raise ValueError(f"think time must be 0 <= min <= max, not {raw!r}")
    return lo, hi


def options_of(environment: Environment) -> Options:
    parsed: Any = environment.parsed_options
    think = parse_think_time(str(getattr(parsed, "think_time", None) or DEFAULT_THINK_TIME))
    zipf_s = getattr(parsed, "zipf_s", None)
    return Options(
        credentials=Path(getattr(parsed, "credentials", None) or DEFAULT_CREDENTIALS),
        # Not `or`: 0 (uniform) is a value, not a missing one.
        zipf_s=float(DEFAULT_ZIPF_S if zipf_s is None else zipf_s),
        think_min=think[0],
        think_max=think[1],
        flood_tenant=str(getattr(parsed, "flood_tenant", None) or ""),
    )


@dataclass(slots=True)
class Pipeline:
    id: str
    stages: list[Json]  # ordered by position


@dataclass(slots=True)
class TenantState:
    """What the users of one tenant (in this process) have learnt about it: values
    seen in responses (ids per kind, e-mail addresses) to visit or filter on later."""

    pipeline: Pipeline | None = None
    seen: dict[str, deque[str]] = field(default_factory=dict)

    def remember(self, kind: str, values: Iterable[str]) -> None:
        self.seen.setdefault(kind, deque(maxlen=KNOWN_IDS)).extend(values)

    def remember_rows(self, kind: str, rows: Iterable[Json]) -> None:
        self.remember(kind, (str(r["id"]) for r in rows if "id" in r))

    def forget(self, kind: str, value: str) -> None:
        """Drop a value that no longer fits ``kind`` (a lead converted, a case closed)."""
        known = self.seen.get(kind)
        while known is not None and value in known:
            known.remove(value)

    def any(self, kind: str, rng: random.Random) -> str | None:
        known = self.seen.get(kind)
        return known[rng.randrange(len(known))] if known else None


class Platform:
    """Per-process shared state, built once when Locust starts."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.credentials = Credentials.load(options.credentials)
        self.zipf = Zipf(self.credentials.tenants, options.zipf_s)
        # The tenants with a support desk client, in the same order (None: no tenant has
        # one, as in a credentials file from before the seeder made them).
        desks = [t for t in self.credentials.tenants if t.support_client is not None]
        self.support_zipf = Zipf(desks, options.zipf_s) if desks else None
        # The flood scenario: the flooding tenant and the others on its shard (None: it
        # has none, so there is nobody to measure beside it).
        self.flood_tenant = self.credentials.tenant(options.flood_tenant)
        neighbours = self.credentials.shard_neighbours(self.flood_tenant)
        self.neighbour_zipf = Zipf(neighbours, options.zipf_s) if neighbours else None
        self.tokens = TokenCache()
        self.tenants: dict[str, TenantState] = {}
        self._lock = threading.Lock()

    def state(self, tenant: TenantCredentials) -> TenantState:
        with self._lock:
            return self.tenants.setdefault(tenant.id, TenantState())


_platform: Platform | None = None


def platform(environment: Environment) -> Platform:
    global _platform
    if _platform is None:
        _platform = Platform(options_of(environment))
    return _platform


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Any
    headers: Mapping[str, str]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def data(self) -> list[Json]:
        """The rows of a list page (empty when the reply is not one)."""
        if isinstance(self.body, dict) and isinstance(self.body.get("data"), list):
            return [r for r in self.body["data"] if isinstance(r, dict)]
        return []

    @property
    def next_cursor(self) -> str | None:
        cursor = self.body.get("next_cursor") if isinstance(self.body, dict) else None
        return cursor if isinstance(cursor, str) else None


# Looks at a reply with an expected status; returns why it is wrong, or None.
Check = Callable[[Reply], "str | None"]


def _problem(status: int, body: Any, error: object) -> str:
    """A failure message that groups well in Locust's failure table."""
    if status == 0:
        return f"no response: {type(error).__name__ if error else 'error'}"
    if isinstance(body, dict):
        kind = body.get("type") or body.get("error")
        if isinstance(kind, str):
            return f"HTTP {status} {kind.removeprefix('urn:meridian:problem:')}"
    return f"HTTP {status}"


class MeridianUser(FastHttpUser):
    """Base of the simulated users: a tenant (or the platform), a token, an API call."""

    abstract = True
    network_timeout = 15.0
    connection_timeout = 5.0
    # Think time is scaled per kind of user (an integration is a machine, an admin rare).
    think_factor = 1.0
    # Put before every request name but the token endpoint's ("flood: /v1/contacts"):
    # the traffic of a group of users, measured apart from the rest of a run (the
    # locustfile's final statistics add up each group).
    request_prefix = ""
    # Left out of a run unless named on the command line (a scenario of its own).
    only_when_named = False

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.platform = platform(environment)
        self.rng = random.Random()  # noqa: S311 - picks traffic, not secrets
        self.tenant = self.platform.zipf.pick(self.rng)

    def wait_time(self) -> float:
        o = self.platform.options
        return self.rng.uniform(o.think_min, o.think_max) * self.think_factor

    @property
    def client_credentials(self) -> Client | None:
        return self.tenant.client

    @property
    def state(self) -> TenantState:
        return self.platform.state(self.tenant)

    # -- tokens ----------------------------------------------------------------------

    def token(self) -> str | None:
        client = self.client_credentials
        if client is None:
            return None
        return self.platform.tokens.get(client, self._fetch_token)

    def _fetch_token(self, client: Client) -> tuple[str, float] | None:
        """POST /oauth/token (client_credentials, HTTP Basic), as an integration does."""
        with self.client.request(
            "POST",
            "/oauth/token",
            name="/oauth/token",
            data=urlencode({"grant_type": "client_credentials"}),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            auth=(client.client_id, client.client_secret),
            catch_response=True,
        ) as resp:
            body = _json(resp.content)
            if resp.status_code != 200 or not isinstance(body, dict):
                resp.failure(_problem(resp.status_code, body, getattr(resp, "error", None)))
                return None
            token, lifetime = body.get("access_token"), body.get("expires_in")
            if not isinstance(token, str) or not isinstance(lifetime, int | float):
                resp.failure("token response without access_token/expires_in")
                return None
            resp.success()
            return token, float(lifetime)

    # -- calls -----------------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        *,
        name: str,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content: tuple[bytes, str] | None = None,
        headers: Mapping[str, str] | None = None,
        expect: Iterable[int] = (200,),
        check: Check | None = None,
        _retry_auth: bool = True,
    ) -> Reply:
        """One API request, reported under ``name``; statuses in ``expect`` count as
        success, anything else as a failure, and so does an expected status that
        ``check`` finds wrong (it returns a message). A 401 drops the token and retries
        once. ``body`` is sent as JSON; ``content`` (bytes, content type) as it is."""
        token = self.token()
        if token is None:
            return Reply(0, None, {})
        sent = {**(headers or {}), "Authorization": f"Bearer {token}"}
        url = f"{path}?{urlencode(params)}" if params else path
        expected = frozenset(expect)
        payload: dict[str, Any] = {"json": body}
        if content is not None:
            payload = {"data": content[0]}
            sent["Content-Type"] = content[1]
        with self.client.request(
            method,
            url,
            name=self.request_prefix + name,
            headers=sent,
            catch_response=True,
            **payload,
        ) as resp:
            status = resp.status_code
            parsed = _json(resp.content)
            received = {k.lower(): v for k, v in (resp.headers or {}).items()}
            wrong = check(Reply(status, parsed, received)) if check and status in expected else None
            if status not in expected:
                resp.failure(_problem(status, parsed, getattr(resp, "error", None)))
            elif wrong:
                resp.failure(wrong)
            else:
                resp.success()
        if status == 401 and _retry_auth:
            client = self.client_credentials
            if client is not None:
                self.platform.tokens.invalidate(client, token)
            return self.call(
                method,
                path,
                name=name,
                params=params,
                body=body,
                content=content,
                headers=headers,
                expect=expected,
                check=check,
                _retry_auth=False,
            )
        return Reply(status, parsed, received)

    def page(
        self, path: str, *, name: str, params: Mapping[str, str], kind: str | None = None
    ) -> Reply:
        """A list page; its rows' ids are remembered for later visits."""
        reply = self.call("GET", path, name=name, params=params)
        if reply.ok and kind is not None:
            self.state.remember_rows(kind, reply.data)
        return reply

    def browse(
        self,
        path: str,
        *,
        name: str,
        params: Mapping[str, str],
        kind: str | None = None,
        pages: int = 1,
    ) -> list[Json]:
        """Page through a list the way a person scrolls: first page, then a few more by
        ``next_cursor`` (reported separately, since a cursor page costs differently)."""
        reply = self.page(path, name=name, params=params, kind=kind)
        rows = reply.data
        for _ in range(pages - 1):
            cursor = reply.next_cursor
            if not reply.ok or cursor is None:
                break
            reply = self.page(
                path, name=f"{name} (next page)", params={**params, "cursor": cursor}, kind=kind
            )
            rows.extend(reply.data)
        return rows

    def pipeline(self) -> Pipeline | None:
        """The tenant's default pipeline with its stages (read once per process)."""
        state = self.state
        if state.pipeline is None:
            reply = self.call(
                "GET", "/v1/pipelines", name="/v1/pipelines", params={"is_default": "true"}
            )
            found = reply.data[0] if reply.data else None
            if found is None or not isinstance(found.get("stages"), list):
                return None
            stages = sorted(found["stages"], key=lambda s: int(s.get("position", 0)))
            state.pipeline = Pipeline(str(found["id"]), stages)
        return state.pipeline

    def known_or_listed(self, kind: str, path: str, name: str) -> str | None:
        """An id of ``kind`` seen before, or one from a fresh list page."""
        found = self.state.any(kind, self.rng)
        if found is None:
            self.page(path, name=name, params={"limit": "50"}, kind=kind)
            found = self.state.any(kind, self.rng)
        return found


def _json(content: bytes | None) -> Any:
    if not content:
        return None
    try:
        return json.loads(content)
    except ValueError:
        return None
