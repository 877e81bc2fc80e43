"""Interactive API docs at ``/docs`` that need no network: Swagger UI's files come from
the installed ``fastapi-offline`` package and are served by the API itself.

The page's Authorize button runs the OAuth client-credentials flow against
``/oauth/token`` (the ``oauth2`` security scheme of the OpenAPI document), or takes a
bearer token pasted in.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

DOCS = "/docs"
ASSETS = f"{DOCS}/static"
OAUTH2_REDIRECT = f"{DOCS}/oauth2-redirect"
ASSET_DIR = Path(fastapi_offline.__file__).parent / "static"

SWAGGER_UI_PARAMETERS = {
    # Swagger UI otherwise sends the document to validator.swagger.io for a badge.
    "validatorUrl": None,
    # A token fetched with Authorize survives a reload of the page.
    "persistAuthorization": True,
}


def install(app: FastAPI) -> None:
    """Serves ``/docs``, its assets under ``/docs/static`` and the OAuth redirect page.

    The app must be created with ``docs_url=None`` (FastAPI's own page loads its assets
    from a CDN).
    """
    app.mount(ASSETS, StaticFiles(directory=ASSET_DIR), name="docs-static")
    openapi_url = app.openapi_url or "/openapi.json"

    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API docs",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
            oauth2_redirect_url=OAUTH2_REDIRECT,
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )

    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    app.add_api_route(DOCS, swagger_ui, methods=["GET"], include_in_schema=False)
    app.add_api_route(OAUTH2_REDIRECT, oauth2_redirect, methods=["GET"], include_in_schema=False)
