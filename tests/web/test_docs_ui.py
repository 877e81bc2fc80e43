"""/docs works without a network and its Authorize button gets a token."""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.fixtures.api import Tenant

ASSETS = {
    "/docs/static/swagger-ui-bundle.js": "javascript",
    "/docs/static/swagger-ui.css": "text/css",
    "/docs/static/favicon.png": "image/png",
}


async def test_the_docs_page_refers_only_to_local_urls(app_client: httpx.AsyncClient) -> None:
    page = await app_client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "//" not in html.replace("://", "")  # no protocol-relative URL either
    assert not re.search(r"https?://", html), html
    referenced = set(re.findall(r'(?:src|href)="([^"]+)"', html))
    assert referenced == set(ASSETS), referenced
    assert "url: '/openapi.json'" in html
    # The OAuth flow comes back to a page of ours; nothing is sent to a validator.
    assert "oauth2RedirectUrl: window.location.origin + '/docs/oauth2-redirect'" in html
    assert '"validatorUrl": null' in html


async def test_the_docs_assets_are_served(app_client: httpx.AsyncClient) -> None:
    for path, kind in ASSETS.items():
        asset = await app_client.get(path)
        assert asset.status_code == 200, path
        assert kind in asset.headers["content-type"], (path, asset.headers)
        assert len(asset.content) > 1000, path
    assert "SwaggerUIBundle" in (await app_client.get("/docs/static/swagger-ui-bundle.js")).text
    redirect = await app_client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200
    assert "oauth2" in redirect.text


async def test_the_document_offers_client_credentials_and_bearer(
    app_client: httpx.AsyncClient,
) -> None:
    doc: dict[str, Any] = (await app_client.get("/openapi.json")).json()
    schemes = doc["components"]["securitySchemes"]
    flow = schemes["oauth2"]["flows"]["clientCredentials"]
    assert flow["tokenUrl"] == "/oauth/token"
    assert set(flow["scopes"]) == {"crm:read", "crm:write", "platform:admin"}
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    paths = doc["paths"]
    assert paths["/v1/contacts"]["get"]["security"] == [{"oauth2": ["crm:read"]}, {"bearer": []}]
    assert paths["/v1/contacts"]["post"]["security"] == [
        {"oauth2": ["crm:write"]},
        {"bearer": []},
    ]
    assert paths["/admin/v1/tenants"]["post"]["security"][0] == {"oauth2": ["platform:admin"]}
    assert "security" not in paths["/oauth/token"]["post"]
    assert "security" not in paths["/healthz"]["get"]


async def test_the_token_endpoint_documents_its_form_and_oauth_errors(
    app_client: httpx.AsyncClient,
) -> None:
    doc: dict[str, Any] = (await app_client.get("/openapi.json")).json()
    token = doc["paths"]["/oauth/token"]["post"]
    form = token["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    assert form["required"] == ["grant_type"]
    assert form["properties"]["grant_type"]["enum"] == [
        "client_credentials",
        "password",
        "refresh_token",
    ]
    assert {"scope", "client_id", "client_secret", "username", "password", "tenant"} <= set(
        form["properties"]
    )
    assert {"refresh_token"} <= set(form["properties"])
    for status in ("400", "401"):
        error = token["responses"][status]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/OAuthError"}
    oauth_error = doc["components"]["schemas"]["OAuthError"]
    assert set(oauth_error["properties"]) == {"error", "error_description"}
    assert "invalid_client" in oauth_error["properties"]["error"]["enum"]
    revoke = doc["paths"]["/oauth/revoke"]["post"]
    form = revoke["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    assert form["required"] == ["token"]
    assert {"400", "401"} <= set(revoke["responses"])


async def test_authorize_with_client_credentials_as_the_page_does(
    app_client: httpx.AsyncClient, tenant: Tenant
) -> None:
    """Swagger UI posts the flow's form to tokenUrl with the chosen scopes, the client in
    a Basic header (its default) or in the body; the token then calls /v1."""
    scope = "crm:read crm:write"
    as_header = await app_client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "scope": scope},
        auth=(tenant.client_id, tenant.client_secret),
    )
    in_body = await app_client.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "scope": scope,
            "client_id": tenant.client_id,
            "client_secret": tenant.client_secret,
        },
    )
    for resp in (as_header, in_body):
        assert resp.status_code == 200, resp.text
        token = resp.json()
        assert token["token_type"] == "Bearer"
        listed = await app_client.get(
            "/v1/contacts", headers={"Authorization": f"Bearer {token['access_token']}"}
        )
        assert listed.status_code == 200, listed.text
