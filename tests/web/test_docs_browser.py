"""/docs in a real browser, offline: Swagger UI loads from the API itself (no request
leaves the platform), Authorize gets a token with the client-credentials flow, and
"Try it out" calls a /v1 endpoint with it. Debian's Chromium, driven by Playwright."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from tests.fixtures.dev_platform import DevPlatform, clean_env, running_dev_platform

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Headless, as root, and without the background traffic a closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def dev() -> Iterator[DevPlatform]:
    with running_dev_platform("meridian-docs-ui-", env=clean_env()) as platform:
        yield platform


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "Chromium is required (scripts/test installs it)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def test_authorize_then_try_it_out(dev: DevPlatform, browser: Browser) -> None:
    client = dev.info()["demo_tenant"]
    page = browser.new_page()
    elsewhere: list[str] = []
    page.on(
        "request",
        lambda request: (
            None if request.url.startswith(dev.base_url + "/") else elsewhere.append(request.url)
        ),
    )
    page.goto(f"{dev.base_url}/docs")
    expect(page.get_by_role("heading", name="Meridian CRM API")).to_be_visible()

    page.get_by_role("button", name="Authorize").first.click()
    modal = page.locator(".modal-ux")
    modal.locator("#client_id_clientCredentials").fill(client["client_id"])
    modal.locator("#client_secret_clientCredentials").fill(client["client_secret"])
    modal.locator("label[for='crm:read-clientCredentials-checkbox-oauth2']").click()
    with page.expect_response(lambda r: r.url.endswith("/oauth/token")) as token:
        modal.locator("button.authorize").first.click()
    assert token.value.status == 200
    modal.locator("button.close-modal").first.click()

    operation = page.locator("#operations-accounts-list_accounts_v1_accounts_get")
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    with page.expect_response(lambda r: "/v1/accounts" in r.url) as listed:
        operation.get_by_role("button", name="Execute").click()
    assert listed.value.status == 200
    assert listed.value.request.headers["authorization"].startswith("Bearer ")
    shown = operation.locator(".live-responses-table tbody .response-col_status").first
    expect(shown).to_have_text("200")
    expect(operation.locator(".live-responses-table .microlight").first).to_contain_text(
        "Acme Corporation"
    )
    assert elsewhere == [], "the page reached outside the platform"
