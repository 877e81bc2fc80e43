"""Requests of the import and export tests."""

from __future__ import annotations

import csv
import io
import uuid
from typing import Any

import httpx
import orjson

from tests.fixtures.users import PASSWORD, new_user, sign_in
from tests.fixtures.waiting import eventually

Headers = dict[str, str]
FINISHED = ("done", "failed", "cancelled")


async def export(client: httpx.AsyncClient, headers: Headers, **body: Any) -> dict[str, Any]:
    resp = await client.post("/v1/exports", json=body, headers=headers)
    assert resp.status_code == 202, resp.text
    made: dict[str, Any] = resp.json()
    assert made["state"] in ("queued", "running", "done"), made
    return made


async def finished(
    client: httpx.AsyncClient, headers: Headers, kind: str, job_id: str
) -> dict[str, Any]:
    """The export or import once it ended (the worker runs it meanwhile)."""

    async def ended() -> dict[str, Any] | None:
        resp = await client.get(f"/v1/{kind}/{job_id}", headers=headers)
        assert resp.status_code == 200, resp.text
        job: dict[str, Any] = resp.json()
        return job if job["state"] in FINISHED else None

    return await eventually(ended, within=120, interval=0.1, what=f"{kind} {job_id} to end")


async def exported(
    client: httpx.AsyncClient, headers: Headers, **body: Any
) -> tuple[dict[str, Any], bytes]:
    """An export run to its end, and its file (downloaded without a token)."""
    made = await export(client, headers, **body)
    done = await finished(client, headers, "exports", made["id"])
    assert done["state"] == "done", done
    resp = await client.get(done["download_url"])
    assert resp.status_code == 200, resp.text
    return done, resp.content


def csv_rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode())))


def jsonl_rows(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


async def upload(
    client: httpx.AsyncClient,
    headers: Headers,
    options: dict[str, Any],
    content: bytes,
    *,
    filename: str = "rows.csv",
    media_type: str = "text/csv",
    extra: Headers | None = None,
) -> httpx.Response:
    parts = [
        ("options", (None, orjson.dumps(options), "application/json")),
        ("file", (filename, content, media_type)),
    ]
    return await client.post("/v1/imports", files=parts, headers={**headers, **(extra or {})})


async def imported(
    client: httpx.AsyncClient, headers: Headers, options: dict[str, Any], content: bytes, **kw: Any
) -> dict[str, Any]:
    resp = await upload(client, headers, options, content, **kw)
    assert resp.status_code == 202, resp.text
    return await finished(client, headers, "imports", resp.json()["id"])


def csv_bytes(header: list[str], rows: list[list[Any]]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue().encode()


async def every(
    client: httpx.AsyncClient, headers: Headers, path: str, **params: Any
) -> list[dict[str, Any]]:
    """Every record of a list, page by page, as the API returns it."""
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, "limit": 200, **({"cursor": cursor} if cursor else {})}
        resp = await client.get(path, params=query, headers=headers)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        out += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            return out


async def exporter_without_pii(
    client: httpx.AsyncClient, user_api: httpx.AsyncClient, tenant: Any
) -> Headers:
    """A user whose role reads every contact and exports, without pii:read."""
    role = f"exp_{uuid.uuid4().hex[:8]}"
    resp = await client.post(
        "/v1/roles",
        json={
            "name": role,
            "permissions": [
                {"object": "contacts", "action": "read"},
                {"object": "records", "action": "read_all"},
                {"object": "exports", "action": "read"},
                {"object": "exports", "action": "create"},
            ],
        },
        headers=tenant.headers,
    )
    assert resp.status_code == 201, resp.text
    user = await new_user(client, tenant, role=role, password=PASSWORD)
    return await sign_in(user_api, tenant, user["email"])
