"""What the OpenAPI document says about errors, headers and parameter formats, derived
from the routes (meridian.web.openapi); Schemathesis holds the API to it
(test_openapi_contract.py)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from meridian.errors import PROBLEM_BASE, problem_types

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
async def doc(app_client: httpx.AsyncClient) -> dict[str, Any]:
    resp = await app_client.get("/openapi.json")
    assert resp.status_code == 200
    document: dict[str, Any] = resp.json()
    return document


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(p, m, op) for p, item in doc["paths"].items() for m, op in item.items()]


def problem_types_of(response: dict[str, Any]) -> set[str]:
    schema = response["content"][PROBLEM]["schema"]
    assert schema["allOf"] == [{"$ref": "#/components/schemas/Problem"}]
    return {t.removeprefix(PROBLEM_BASE) for t in schema["properties"]["type"]["enum"]}


def test_the_problem_types_are_the_error_classes(doc: dict[str, Any]) -> None:
    problem = doc["components"]["schemas"]["Problem"]
    listed = set(problem["properties"]["type"]["enum"])
    assert listed == {PROBLEM_BASE + c.type_slug for c in problem_types()}
    assert "urn:meridian:problem:dedicated-shard-occupied" in listed
    assert "urn:meridian:problem:field-unreadable" in listed
    assert {"errors", "object", "action", "duplicate_of", "constraint"} <= set(
        problem["properties"]
    )
    assert problem["additionalProperties"] is False


def test_every_error_answer_is_a_problem_of_its_own_status(doc: dict[str, Any]) -> None:
    for path, method, op in operations(doc):
        for status, response in op["responses"].items():
            if int(status) < 400 or (path.startswith("/oauth/") and status in {"400", "401"}):
                continue
            if path == "/readyz" and status == "503":
                continue  # the readiness report itself
            types = problem_types_of(response)
            assert types, (path, method, status)
            by_slug = {c.type_slug: c.status_code for c in problem_types()}
            assert {by_slug[t] for t in types} == {int(status)}, (path, method, status)


def test_statuses_follow_from_what_a_route_depends_on(doc: dict[str, Any]) -> None:
    paths = doc["paths"]
    read = paths["/v1/contacts/{contact_id}"]["get"]["responses"]
    assert {"200", "304", "401", "403", "404", "422", "429", "500", "503"} == set(read)
    assert problem_types_of(read["403"]) == {"forbidden", "insufficient-scope", "tenant-suspended"}
    assert problem_types_of(read["503"]) == {"unavailable", "shard-unavailable", "tenant-busy"}
    assert problem_types_of(read["429"]) == {"rate-limited"}
    limits = {"RateLimit", "RateLimit-Policy", "X-Request-ID"}
    assert set(read["503"]["headers"]) == {"Retry-After", *limits}
    assert set(read["429"]["headers"]) == {"Retry-After", *limits}
    assert "WWW-Authenticate" in read["401"]["headers"]
    assert set(read["200"]["headers"]) == {"ETag", *limits}
    assert set(read["304"]["headers"]) == {"ETag", *limits}

    update = paths["/v1/contacts/{contact_id}"]["patch"]["responses"]
    assert {"400", "412", "413", "415", "422"} <= set(update)
    assert problem_types_of(update["422"]) == {"validation"}

    create = paths["/v1/contacts"]["post"]["responses"]
    assert set(create["201"]["headers"]) == {
        "ETag",
        "Location",
        "Idempotent-Replayed",
        "RateLimit",
        "RateLimit-Policy",
        "X-Request-ID",
    }
    assert problem_types_of(create["409"]) == {"duplicate", "quota-exceeded"}
    assert problem_types_of(create["422"]) == {"validation", "idempotency-key-reused"}

    listing = paths["/v1/contacts"]["get"]["responses"]
    assert problem_types_of(listing["400"]) == {"bad-request", "invalid-cursor"}
    assert "404" not in listing
    assert "412" not in listing

    onboarding = paths["/admin/v1/tenants"]["post"]["responses"]
    assert problem_types_of(onboarding["409"]) == {"conflict", "dedicated-shard-occupied"}
    assert problem_types_of(onboarding["403"]) == {"insufficient-scope"}
    assert "503" not in onboarding
    # The token endpoint's own errors are OAuth's; a body too large is still a problem.
    assert problem_types_of(paths["/oauth/token"]["post"]["responses"]["413"]) == {
        "payload-too-large"
    }


def test_request_headers_and_parameters_state_their_formats(doc: dict[str, Any]) -> None:
    def parameter(path: str, method: str, name: str) -> dict[str, Any]:
        found = [p for p in doc["paths"][path][method]["parameters"] if p["name"] == name]
        assert len(found) == 1, (path, method, name)
        return found[0]["schema"]

    if_match = parameter("/v1/accounts/{account_id}", "patch", "If-Match")
    assert if_match["pattern"] == r'^ *(\*|"[0-9]{1,10}") *$'
    key = parameter("/v1/accounts", "post", "Idempotency-Key")
    assert (key["minLength"], key["maxLength"]) == (1, 255)
    assert "pattern" in key
    assert parameter("/v1/accounts/{account_id}", "get", "If-None-Match")["type"] == "string"
    assert parameter("/v1/accounts/{account_id}", "get", "account_id")["format"] == "uuid"
    sortable = {"amount", "created_at", "name", "updated_at"}
    # A list with custom fields also sorts by them: its fields, or custom.<name>.
    listed, custom = parameter("/v1/opportunities", "get", "sort")["anyOf"]
    assert set(listed["enum"]) == sortable | {f"-{f}" for f in sortable}
    assert re.fullmatch(custom["pattern"], "-custom.arr")
    assert not re.fullmatch(custom["pattern"], "custom.")
    pipelines = parameter("/v1/pipelines", "get", "sort")
    assert set(pipelines["enum"]) == {"name", "-name", "created_at", "-created_at"}
    limit = parameter("/v1/accounts", "get", "limit")
    assert (limit["minimum"], limit["maximum"]) == (1, 200)
    # An absent query or header parameter is its null: "null" is never a value to send.
    for _, _, op in operations(doc):
        for p in op.get("parameters", []):
            assert {"type": "null"} not in p["schema"].get("anyOf", []), p


def test_shapes_the_document_promises(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    stage = schemas["StageRead"]["properties"]["probability"]
    assert stage["type"] == "number"
    contact = schemas["ContactRead"]["properties"]["first_name"]
    assert {"type": "null"} in contact["anyOf"]
    shards = doc["paths"]["/admin/v1/shards"]["get"]["responses"]["200"]
    page = shards["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert set(schemas[page]["properties"]) == {"data", "next_cursor"}
    created = schemas["TenantCreated"]["properties"]["placement"]
    assert set(created["enum"]) == {"region", "dedicated", "shard"}


def test_creations_link_to_what_they_created(doc: dict[str, Any]) -> None:
    links = doc["paths"]["/v1/accounts"]["post"]["responses"]["201"]["links"]
    read = doc["paths"]["/v1/accounts/{account_id}"]["get"]["operationId"]
    assert links[read]["parameters"] == {"account_id": "$response.body#/id"}
    stages = doc["paths"]["/v1/pipelines/{pipeline_id}/stages"]["post"]["responses"]["201"]
    update = doc["paths"]["/v1/pipelines/{pipeline_id}/stages/{stage_id}"]["patch"]
    assert stages["links"][update["operationId"]]["parameters"] == {
        "stage_id": "$response.body#/id",
        "pipeline_id": "$request.path.pipeline_id",
    }
