"""The token endpoint and bearer-token verification, from an attacker's side.

Variants of real tokens are built with joserfc (and by hand where joserfc refuses, as
for ``alg: none``); one forged with the real signing key and valid claims is accepted,
which shows the rejections below are about the one thing each variant changes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from meridian.settings import Settings
from tests.fixtures.api import Tenant, onboard, token_for
from tests.fixtures.databases import raw_dsn
from tests.fixtures.problems import assert_problem

if TYPE_CHECKING:
    from tests.fixtures.databases import TestDatabases

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


# -- token plumbing -------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def split(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    return json.loads(unb64(header)), json.loads(unb64(payload)), signature


def assemble(header: dict[str, Any], claims: dict[str, Any], signature: str) -> str:
    return ".".join((b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), signature))


def sign(header: dict[str, Any], claims: dict[str, Any], key: RSAKey) -> str:
    # default_type=None: the header is exactly what the test says (typ included or not).
    return jwt.encode(header, claims, key, default_type=None)


def sign_raw(header: dict[str, Any], claims: dict[str, Any], key: RSAKey) -> str:
    """A valid RS256 signature over any header at all (joserfc validates headers)."""
    signing_input = ".".join(
        (b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()))
    ).encode()
    private = key.private_key
    assert private is not None
    signature = private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return signing_input.decode() + "." + b64(signature)


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = ".".join(
        (b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()))
    ).encode()
    mac = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return signing_input.decode() + "." + b64(mac)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_401(resp: httpx.Response) -> None:
    assert_problem(resp, 401, "unauthorized")
    assert resp.headers["www-authenticate"].startswith("Bearer")


# -- fixtures -------------------------------------------------------------------------


class ActiveKey:
    def __init__(self, kid: str, private: RSAKey, public_jwk: dict[str, Any]) -> None:
        self.kid = kid
        self.private = private
        self.public_jwk = public_jwk


@pytest.fixture
async def active_key(databases: TestDatabases, app_client: httpx.AsyncClient) -> ActiveKey:
    """The control plane's real signing key (what an attacker must never have)."""
    conn = await asyncpg.connect(raw_dsn(databases.control))
    try:
        row = await conn.fetchrow(
            "SELECT kid, private_jwk::text AS private, public_jwk::text AS public "
            "FROM signing_key WHERE state = 'active' ORDER BY created_at DESC LIMIT 1"
        )
    finally:
        await conn.close()
    assert row is not None
    return ActiveKey(
        row["kid"], RSAKey.import_key(json.loads(row["private"])), json.loads(row["public"])
    )


@pytest.fixture
def claims(tenant: Tenant, settings: Settings) -> dict[str, Any]:
    """Valid claims of ``tenant`` (a fresh jti each time)."""
    now = int(time.time())
    return {
        "iss": settings.issuer,
        "aud": settings.audience,
        "exp": now + 600,
        "iat": now,
        "sub": tenant.client_id,
        "client_id": tenant.client_id,
        "jti": uuid.uuid4().hex,
        "scope": "crm:read crm:write",
        "tenant_id": tenant.id,
    }


def at_header(key: ActiveKey) -> dict[str, Any]:
    return {"typ": "at+jwt", "alg": "RS256", "kid": key.kid}


async def _get(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/v1/accounts", headers=bearer(token))


# -- the Authorization header ---------------------------------------------------------


async def test_no_token_is_401_with_challenge(app_client: httpx.AsyncClient) -> None:
    resp = await app_client.get("/v1/accounts")
    assert_401(resp)
    assert resp.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "value",
    [
        "Basic dXNlcjpwYXNz",
        "Token abc",
        "Bearer",
        "Bearer ",
        "Bearer    ",
        "BearerX abc",
        "abc",
    ],
)
async def test_wrong_scheme_is_401(app_client: httpx.AsyncClient, value: str) -> None:
    assert_401(await app_client.get("/v1/accounts", headers={"Authorization": value}))


async def test_scheme_is_case_insensitive(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    resp = await app_client.get("/v1/accounts", headers={"Authorization": f"bearer {tenant.token}"})
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "a.b.c",
        "eyJ.eyJ.",
        "..",
        "a.b.c.d.e",
        "x" * 9000,
        "Zm9v.YmFy.YmF6",
        b64(b'{"alg":"RS256"}') + "." + b64(b"not json") + ".sig",
    ],
)
async def test_garbage_token_is_401(app_client: httpx.AsyncClient, token: str) -> None:
    assert_401(await _get(app_client, token))


# -- forged and tampered tokens -------------------------------------------------------


async def test_token_signed_with_the_real_key_is_accepted(
    app_client: httpx.AsyncClient, active_key: ActiveKey, claims: dict[str, Any]
) -> None:
    # The positive control for every rejection below.
    resp = await _get(app_client, sign(at_header(active_key), claims, active_key.private))
    assert resp.status_code == 200, resp.text
    raw = {**claims, "jti": uuid.uuid4().hex}
    resp = await _get(app_client, sign_raw(at_header(active_key), raw, active_key.private))
    assert resp.status_code == 200, resp.text


async def test_tampered_tenant_claim_is_401(
    app_client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    header, payload, signature = split(tenant.token)
    assert payload["tenant_id"] == tenant.id
    payload["tenant_id"] = other_tenant.id
    assert_401(await _get(app_client, assemble(header, payload, signature)))
    # The untouched token still works: the signature, not the shape, was the problem.
    assert (await _get(app_client, tenant.token)).status_code == 200


@pytest.mark.parametrize(
    "change",
    [
        {"scope": "crm:read crm:write platform:admin"},
        {"exp": 4102444800},
        {"sub": "someone-else"},
        {"aud": "other-api"},
    ],
)
async def test_tampered_claims_are_401(
    app_client: httpx.AsyncClient, tenant: Tenant, change: dict[str, Any]
) -> None:
    header, payload, signature = split(tenant.token)
    payload.update(change)
    assert_401(await _get(app_client, assemble(header, payload, signature)))


async def test_tampered_header_is_401(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    header, payload, signature = split(tenant.token)
    header["x"] = 1
    assert_401(await _get(app_client, assemble(header, payload, signature)))


async def test_other_key_with_the_same_kid_is_401(
    app_client: httpx.AsyncClient, active_key: ActiveKey, claims: dict[str, Any]
) -> None:
    impostor = RSAKey.generate_key(2048, parameters={"kid": active_key.kid, "alg": "RS256"})
    assert_401(await _get(app_client, sign(at_header(active_key), claims, impostor)))


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
async def test_alg_none_is_401(
    app_client: httpx.AsyncClient, active_key: ActiveKey, claims: dict[str, Any], alg: str
) -> None:
    header = {**at_header(active_key), "alg": alg}
    assert_401(await _get(app_client, assemble(header, claims, "")))
    real = sign(at_header(active_key), claims, active_key.private)
    assert_401(await _get(app_client, assemble(header, claims, real.split(".")[2])))


@pytest.mark.parametrize("form", ["pem", "jwk-json", "n-bytes"])
async def test_hs256_with_the_public_key_is_401(
    app_client: httpx.AsyncClient, active_key: ActiveKey, claims: dict[str, Any], form: str
) -> None:
    """Algorithm confusion: HMAC keyed with the (public) RSA key material."""
    public = RSAKey.import_key(active_key.public_jwk)
    secret = {
        "pem": public.as_pem(private=False),
        "jwk-json": json.dumps(active_key.public_jwk).encode(),
        "n-bytes": unb64(active_key.public_jwk["n"]),
    }[form]
    for alg in ("HS256", "hs256"):
        header = {**at_header(active_key), "alg": alg}
        assert_401(await _get(app_client, hs256(header, claims, secret)))


@pytest.mark.parametrize("alg", ["RS384", "RS512", "PS256", "ES256"])
async def test_other_algorithms_are_401(
    app_client: httpx.AsyncClient, active_key: ActiveKey, claims: dict[str, Any], alg: str
) -> None:
    header = {**at_header(active_key), "alg": alg}
    real = sign(at_header(active_key), claims, active_key.private)
    assert_401(await _get(app_client, assemble(header, claims, real.split(".")[2])))


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"exp": -3600}, id="expired-an-hour-ago"),
        pytest.param({"exp": -120}, id="expired-beyond-leeway"),
        pytest.param({"nbf": 3600}, id="not-yet-valid"),
    ],
)
async def test_expired_or_not_yet_valid_is_401(
    app_client: httpx.AsyncClient,
    active_key: ActiveKey,
    claims: dict[str, Any],
    change: dict[str, int],
) -> None:
    now = int(time.time())
    forged = {**claims, **{k: now + v for k, v in change.items()}}
    assert_401(await _get(app_client, sign(at_header(active_key), forged, active_key.private)))


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"aud": "other-api"}, id="wrong-audience"),
        pytest.param({"aud": ["other-api"]}, id="audience-list-without-ours"),
        pytest.param({"iss": "https://evil.example"}, id="wrong-issuer"),
        pytest.param({"iss": "http://127.0.0.1:8000/"}, id="issuer-trailing-slash"),
    ],
)
async def test_wrong_audience_or_issuer_is_401(
    app_client: httpx.AsyncClient,
    active_key: ActiveKey,
    claims: dict[str, Any],
    change: dict[str, Any],
) -> None:
    forged = {**claims, **change}
    assert_401(await _get(app_client, sign(at_header(active_key), forged, active_key.private)))


@pytest.mark.parametrize("claim", ["iss", "aud", "exp", "iat", "sub", "client_id", "jti"])
async def test_missing_essential_claim_is_401(
    app_client: httpx.AsyncClient, active_key: ActiveKey, claims: dict[str, Any], claim: str
) -> None:
    forged = {k: v for k, v in claims.items() if k != claim}
    assert_401(await _get(app_client, sign(at_header(active_key), forged, active_key.private)))


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"tenant_id": "not-a-uuid"}, id="tenant-not-uuid"),
        pytest.param({"tenant_id": 42}, id="tenant-number"),
        pytest.param({"scope": ["crm:read"]}, id="scope-list"),
        pytest.param({"exp": "soon"}, id="exp-text"),
    ],
)
async def test_malformed_claims_are_401(
    app_client: httpx.AsyncClient,
    active_key: ActiveKey,
    claims: dict[str, Any],
    change: dict[str, Any],
) -> None:
    forged = {**claims, **change}
    assert_401(await _get(app_client, sign(at_header(active_key), forged, active_key.private)))


async def test_token_of_unknown_tenant_is_401(
    app_client: httpx.AsyncClient, active_key: ActiveKey, claims: dict[str, Any]
) -> None:
    forged = {**claims, "tenant_id": str(uuid.uuid4())}
    assert_401(await _get(app_client, sign(at_header(active_key), forged, active_key.private)))


@pytest.mark.parametrize("typ", [None, "JWT", "jwt", "at+JWT+x", ""])
async def test_wrong_or_missing_typ_is_401(
    app_client: httpx.AsyncClient,
    active_key: ActiveKey,
    claims: dict[str, Any],
    typ: str | None,
) -> None:
    header = {"alg": "RS256", "kid": active_key.kid}
    if typ is not None:
        header["typ"] = typ
    assert_401(await _get(app_client, sign(header, claims, active_key.private)))


@pytest.mark.parametrize("kid", ["nope", "", None, 7])
async def test_unknown_or_missing_kid_is_401(
    app_client: httpx.AsyncClient, active_key: ActiveKey, claims: dict[str, Any], kid: Any
) -> None:
    header: dict[str, Any] = {"typ": "at+jwt", "alg": "RS256"}
    if kid is not None:
        header["kid"] = kid
    # Signed with the real key: only the kid is wrong.
    assert_401(await _get(app_client, sign_raw(header, claims, active_key.private)))
    stranger = RSAKey.generate_key(2048, parameters={"kid": "stranger"})
    assert_401(await _get(app_client, sign({**header, "kid": "stranger"}, claims, stranger)))


# -- the token endpoint ---------------------------------------------------------------


async def _token_response(
    client: httpx.AsyncClient, form: dict[str, str], auth: tuple[str, str] | None = None
) -> httpx.Response:
    return await client.post("/oauth/token", data=form, auth=auth)


async def test_client_secret_basic_and_post_both_work(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    basic = await _token_response(
        app_client, {"grant_type": "client_credentials"}, (tenant.client_id, tenant.client_secret)
    )
    post = await _token_response(
        app_client,
        {
            "grant_type": "client_credentials",
            "client_id": tenant.client_id,
            "client_secret": tenant.client_secret,
        },
    )
    for resp in (basic, post):
        assert resp.status_code == 200, resp.text
        assert resp.headers["cache-control"] == "no-store"
        body = resp.json()
        assert body["token_type"].lower() == "bearer"
        assert body["expires_in"] > 0
        assert (await _get(app_client, body["access_token"])).status_code == 200


@pytest.mark.parametrize("method", ["basic", "post"])
@pytest.mark.parametrize("who", ["wrong-secret", "unknown-client", "empty-secret"])
async def test_bad_client_credentials_are_401_invalid_client(
    app_client: httpx.AsyncClient, tenant: Tenant, method: str, who: str
) -> None:
    client_id, secret = {
        "wrong-secret": (tenant.client_id, tenant.client_secret[:-1] + "x"),
        "unknown-client": ("mc_" + uuid.uuid4().hex, tenant.client_secret),
        "empty-secret": (tenant.client_id, ""),
    }[who]
    form = {"grant_type": "client_credentials"}
    if method == "basic":
        resp = await _token_response(app_client, form, (client_id, secret))
    else:
        resp = await _token_response(
            app_client, {**form, "client_id": client_id, "client_secret": secret}
        )
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"] == "invalid_client"
    assert "access_token" not in resp.json()


@pytest.mark.parametrize("method", ["basic", "post"])
async def test_unknown_client_looks_like_wrong_secret(
    app_client: httpx.AsyncClient, tenant: Tenant, method: str
) -> None:
    """No oracle for which client ids exist."""
    answers = []
    for client_id in (tenant.client_id, "mc_" + uuid.uuid4().hex):
        secret = "not-the-secret"
        form = {"grant_type": "client_credentials"}
        if method == "basic":
            resp = await _token_response(app_client, form, (client_id, secret))
        else:
            resp = await _token_response(
                app_client, {**form, "client_id": client_id, "client_secret": secret}
            )
        answers.append((resp.status_code, resp.json(), resp.headers.get("www-authenticate")))
    assert answers[0] == answers[1]


async def test_no_client_authentication_is_refused(app_client: httpx.AsyncClient) -> None:
    resp = await _token_response(app_client, {"grant_type": "client_credentials"})
    assert resp.status_code in (400, 401), resp.text
    assert resp.json()["error"] == "invalid_client"


async def test_revoked_client_gets_no_token(
    app_client: httpx.AsyncClient, tenant: Tenant, databases: TestDatabases
) -> None:
    conn = await asyncpg.connect(raw_dsn(databases.control))
    try:
        await conn.execute(
            "UPDATE oauth_client SET revoked_at = now() WHERE client_id = $1", tenant.client_id
        )
    finally:
        await conn.close()
    resp = await _token_response(
        app_client, {"grant_type": "client_credentials"}, (tenant.client_id, tenant.client_secret)
    )
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"] == "invalid_client"


@pytest.mark.parametrize(
    "grant",
    [
        "password",
        "authorization_code",
        "refresh_token",
        "implicit",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "",
    ],
)
async def test_unsupported_grant_is_400(
    app_client: httpx.AsyncClient, tenant: Tenant, grant: str
) -> None:
    resp = await _token_response(
        app_client,
        {"grant_type": grant, "username": "u", "password": "p", "code": "c"},
        (tenant.client_id, tenant.client_secret),
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"] in ("unsupported_grant_type", "invalid_request")
    assert "access_token" not in resp.json()


async def test_token_request_must_be_a_form(app_client: httpx.AsyncClient, tenant: Tenant) -> None:
    resp = await app_client.post(
        "/oauth/token",
        json={"grant_type": "client_credentials"},
        auth=(tenant.client_id, tenant.client_secret),
    )
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_request"


async def test_scope_beyond_the_client_is_not_granted(
    app_client: httpx.AsyncClient, admin_headers: dict[str, str], tenant: Tenant
) -> None:
    made = await app_client.post(
        f"/admin/v1/tenants/{tenant.id}/clients",
        json={"name": "reader", "scope": "crm:read"},
        headers=admin_headers,
    )
    assert made.status_code == 201, made.text
    reader = made.json()
    resp = await _token_response(
        app_client,
        {"grant_type": "client_credentials", "scope": "crm:read crm:write platform:admin"},
        (reader["client_id"], reader["client_secret"]),
    )
    # Narrowed to what the client holds (RFC 6749 §3.3 lets the server issue less).
    assert resp.status_code == 200, resp.text
    token = resp.json()["access_token"]
    scopes = set(split(token)[1]["scope"].split())
    assert scopes == {"crm:read"}
    assert (await _get(app_client, token)).status_code == 200
    created = await app_client.post("/v1/accounts", json={"name": "nope"}, headers=bearer(token))
    assert_problem(created, 403, "insufficient-scope")
    victim = await app_client.post("/v1/accounts", json={"name": "v"}, headers=tenant.headers)
    url = f"/v1/accounts/{victim.json()['id']}"
    assert_problem(
        await app_client.patch(url, json={"name": "x"}, headers=bearer(token)),
        403,
        "insufficient-scope",
    )
    assert_problem(await app_client.delete(url, headers=bearer(token)), 403, "insufficient-scope")
    assert (await app_client.get(url, headers=tenant.headers)).json()["name"] == "v"


async def test_tenant_client_cannot_get_admin_scope(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    resp = await _token_response(
        app_client,
        {"grant_type": "client_credentials", "scope": "platform:admin"},
        (tenant.client_id, tenant.client_secret),
    )
    # Narrowed to what the client holds, which leaves no platform scope.
    assert resp.status_code == 200, resp.text
    token = resp.json()["access_token"]
    assert "platform:admin" not in split(token)[1].get("scope", "").split()
    assert_problem(
        await app_client.get("/admin/v1/tenants", headers=bearer(token)),
        403,
        "insufficient-scope",
    )


async def test_narrower_scope_can_be_asked_for(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    token = await token_for(app_client, tenant.client_id, tenant.client_secret, scope="crm:read")
    assert split(token)[1]["scope"] == "crm:read"
    created = await app_client.post("/v1/accounts", json={"name": "no"}, headers=bearer(token))
    assert_problem(created, 403, "insufficient-scope")


# -- planes of access -----------------------------------------------------------------


async def test_platform_admin_token_is_refused_on_tenant_api(
    app_client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    for method, path in (
        ("GET", "/v1/accounts"),
        ("POST", "/v1/accounts"),
        ("GET", f"/v1/accounts/{uuid.uuid4()}"),
    ):
        kwargs: dict[str, Any] = {"json": {"name": "x"}} if method == "POST" else {}
        resp = await app_client.request(method, path, headers=admin_headers, **kwargs)
        assert_problem(resp, 403, "forbidden", "needs a tenant token")


async def test_tenant_token_is_refused_on_admin_api(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    for method, path in (
        ("GET", "/admin/v1/tenants"),
        ("GET", f"/admin/v1/tenants/{tenant.id}"),
        ("POST", f"/admin/v1/tenants/{tenant.id}/suspend"),
        ("POST", f"/admin/v1/tenants/{tenant.id}/clients"),
        ("GET", "/admin/v1/shards"),
    ):
        kwargs: dict[str, Any] = {"json": {}} if method == "POST" else {}
        resp = await app_client.request(method, path, headers=tenant.headers, **kwargs)
        assert_problem(resp, 403, "insufficient-scope")
    # And it did not suspend itself.
    assert (await _get(app_client, tenant.token)).status_code == 200


async def test_suspended_tenant_is_locked_out_until_resumed(
    app_client: httpx.AsyncClient, admin_headers: dict[str, str], tenant: Tenant
) -> None:
    suspended = await app_client.post(
        f"/admin/v1/tenants/{tenant.id}/suspend", headers=admin_headers
    )
    assert suspended.status_code == 200, suspended.text
    assert suspended.json()["status"] == "suspended"
    assert_problem(await _get(app_client, tenant.token), 403, "tenant-suspended")
    assert_problem(
        await app_client.post("/v1/accounts", json={"name": "x"}, headers=tenant.headers),
        403,
        "tenant-suspended",
    )
    refused = await _token_response(
        app_client, {"grant_type": "client_credentials"}, (tenant.client_id, tenant.client_secret)
    )
    assert refused.status_code in (400, 401), refused.text
    assert "access_token" not in refused.json()
    assert refused.json()["error"] in ("unauthorized_client", "invalid_client")

    # Without the secret, nobody learns that the tenant is suspended.
    stranger = await _token_response(
        app_client, {"grant_type": "client_credentials"}, (tenant.client_id, "guess")
    )
    assert stranger.status_code == 401, stranger.text
    assert stranger.json()["error"] == "invalid_client"
    assert "suspended" not in stranger.text

    resumed = await app_client.post(f"/admin/v1/tenants/{tenant.id}/resume", headers=admin_headers)
    assert resumed.status_code == 200, resumed.text
    assert (await _get(app_client, tenant.token)).status_code == 200
    fresh = await token_for(app_client, tenant.client_id, tenant.client_secret)
    assert (await _get(app_client, fresh)).status_code == 200


async def test_suspension_does_not_affect_other_tenants(
    app_client: httpx.AsyncClient, admin_headers: dict[str, str], tenant: Tenant
) -> None:
    bystander = await onboard(
        app_client, admin_headers, region="us", slug=f"by-{uuid.uuid4().hex[:10]}"
    )
    await app_client.post(f"/admin/v1/tenants/{tenant.id}/suspend", headers=admin_headers)
    try:
        assert (await _get(app_client, bystander.token)).status_code == 200
    finally:
        await app_client.post(f"/admin/v1/tenants/{tenant.id}/resume", headers=admin_headers)


# -- keys -----------------------------------------------------------------------------


@pytest.fixture
async def jwks(app_client: httpx.AsyncClient) -> dict[str, Any]:
    resp = await app_client.get("/.well-known/jwks.json")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = resp.json()
    return body


async def test_jwks_serves_public_keys_only(jwks: dict[str, Any], active_key: ActiveKey) -> None:
    keys = jwks["keys"]
    assert keys
    for key in keys:
        assert key["kty"] == "RSA"
        assert not PRIVATE_MEMBERS & set(key), key
        assert key.get("kid")
        assert {"n", "e"} <= set(key)
    assert active_key.kid in {k["kid"] for k in keys}
    # The published key is the public half of the signing key.
    published = next(k for k in keys if k["kid"] == active_key.kid)
    assert published["n"] == active_key.private.as_dict(private=False)["n"]


async def test_every_token_names_a_published_kid(
    app_client: httpx.AsyncClient,
    jwks: dict[str, Any],
    tenant: Tenant,
    admin_headers: dict[str, str],
) -> None:
    admin_token = admin_headers["Authorization"].removeprefix("Bearer ")
    keyset = KeySet.import_key_set(jwks)
    kids = {k["kid"] for k in jwks["keys"]}
    for token in (tenant.token, admin_token):
        header = split(token)[0]
        assert header["kid"] in kids
        assert header["typ"] == "at+jwt"
        assert header["alg"] == "RS256"
        # Anyone holding only the JWKS can verify it.
        assert jwt.decode(token, keyset, algorithms=["RS256"]).claims["sub"]


async def test_authorization_server_metadata(
    app_client: httpx.AsyncClient, settings: Settings
) -> None:
    resp = await app_client.get("/.well-known/oauth-authorization-server")
    assert resp.status_code == 200
    meta = resp.json()
    issuer = settings.issuer.rstrip("/")
    assert meta["issuer"] == issuer
    assert meta["token_endpoint"] == issuer + "/oauth/token"
    assert meta["jwks_uri"] == issuer + "/.well-known/jwks.json"
    assert set(meta["token_endpoint_auth_methods_supported"]) == {
        "client_secret_basic",
        "client_secret_post",
    }


# -- user tokens ----------------------------------------------------------------------


async def test_forged_user_tokens_are_refused(
    app_client: httpx.AsyncClient,
    active_key: ActiveKey,
    claims: dict[str, Any],
    tenant: Tenant,
    other_tenant: Tenant,
) -> None:
    """sub ≠ client_id makes a user token: sub must then be a user of the tenant."""
    from tests.oauth.conftest import make_user

    reader = await make_user(app_client, tenant, role="read_only")
    stranger = await make_user(app_client, other_tenant)

    def user_token(**change: Any) -> str:
        forged = {**claims, "sub": reader.id, "jti": uuid.uuid4().hex, **change}
        forged = {k: v for k, v in forged.items() if v is not None}
        return sign(at_header(active_key), forged, active_key.private)

    # The positive control: the reader's own token reads.
    assert (await _get(app_client, user_token())).status_code == 200
    for token in (
        user_token(sub="not-a-uuid"),  # neither the client nor a user id
        user_token(sub=str(uuid.uuid4())),  # no such user
        user_token(sub=stranger.id),  # a user of another tenant
        user_token(tenant_id=None),  # a user token must name its tenant
        user_token(tenant_id=other_tenant.id),  # the reader is not a user there
    ):
        assert_401(await _get(app_client, token))
    # A role claim does not make a user's token stronger: the role comes from the user.
    elevated = user_token(role="admin")
    made = await app_client.post(
        "/v1/users",
        json={"email": f"x-{uuid.uuid4().hex[:8]}@example.com", "name": "X", "role": "admin"},
        headers=bearer(elevated),
    )
    assert_problem(made, 403, "forbidden")


async def test_client_token_role_claim_must_be_text(
    app_client: httpx.AsyncClient, active_key: ActiveKey, claims: dict[str, Any]
) -> None:
    forged = {**claims, "role": ["admin"]}
    assert_401(await _get(app_client, sign(at_header(active_key), forged, active_key.private)))
