"""The OpenAPI document as the API's contract, built once (on the first request for it).

FastAPI derives paths, parameters, bodies and success responses from the routes; this
completes every operation with what its declarations imply, so the document cannot
forget an answer the code gives:

- the tenant dependency (``RequireTenant``): 401, 403, 429 and 503 with ``Retry-After``,
  the rate-limit headers, and the OAuth scope its action needs; the platform-admin
  dependency: 401, 403, ``platform:admin``;
- a path parameter: 404 and 422; query parameters: 422; a ``cursor``: 400;
- a JSON body: 400 (malformed), 413, 415, 422; any other body: 413;
- ``If-Match``: 412; ``If-None-Match``: 304 with the ``ETag``; ``Idempotency-Key``: 422
  and the ``Idempotent-Replayed`` header;
- a ``Versioned`` response body: ``ETag``; an ``Addressable`` one created (201): ``Location``;
- what only the route knows: ``openapi_extra=problems(Conflict, ...)``.

Every error is ``application/problem+json``: the ``Problem`` schema with ``type`` limited to
the classes of ``meridian.errors`` that carry that status, so a client can switch on them
and a contract test fails on any type or status the document does not name.
"""

from __future__ import annotations

import http
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel

from meridian.crud.schemas import Addressable, Versioned
from meridian.deps import RequireTenant, require_admin
from meridian.errors import (
    PROBLEM_BASE,
    PROBLEM_MEDIA_TYPE,
    BadRequest,
    Forbidden,
    IdempotencyKeyReused,
    InsufficientScope,
    InvalidCursor,
    MeridianError,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    QuotaExceeded,
    RateLimited,
    ServiceUnavailable,
    ShardUnavailable,
    TenantBusy,
    TenantSuspended,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
    problem_types,
)
from meridian.principal import SCOPE_ADMIN, SCOPE_READ, SCOPE_WRITE

# Where a route names the problems only it can answer with (popped from the document).
_EXTRA_KEY = "x-meridian-problems"
SCHEMAS = "#/components/schemas/"
HEADERS = "#/components/headers/"
RATE_LIMIT_HEADERS = ("RateLimit", "RateLimit-Policy")
REQUEST_ID = "X-Request-ID"
# The objects whose records count against the records-per-object quota (crud.quota).
QUOTA_OBJECTS = frozenset({"accounts", "contacts", "leads", "opportunities", "cases"})

SCOPES = {
    SCOPE_READ: "Read the tenant's CRM data (GET on /v1).",
    SCOPE_WRITE: "Change the tenant's CRM data (POST, PUT, PATCH, DELETE on /v1).",
    SCOPE_ADMIN: "Platform administration (/admin/v1); platform-admin clients only.",
}
SECURITY_SCHEMES: dict[str, Any] = {
    "oauth2": {
        "type": "oauth2",
        "description": "OAuth 2.0 client credentials: a client of a tenant (crm:*) or a "
        "platform-admin client (platform:admin).",
        "flows": {"clientCredentials": {"tokenUrl": "/oauth/token", "scopes": SCOPES}},
    },
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "An access token from /oauth/token (RFC 9068 JWT).",
    },
}

# Response headers, declared once and referenced where they are sent.
_ETAG = {
    "description": 'The representation\'s version as a strong ETag ("3"); send it back in '
    "If-Match to change the resource only if nobody else did meanwhile.",
    "required": True,
    "schema": {"type": "string", "pattern": r'^"[0-9]+"$'},
}
RESPONSE_HEADERS: dict[str, Any] = {
    "ETag": _ETAG,
    "Location": {
        "description": "Where the created resource lives.",
        "required": True,
        "schema": {"type": "string", "format": "uri-reference"},
    },
    "Retry-After": {
        "description": "Seconds after which the request may succeed.",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    },
    "Idempotent-Replayed": {
        "description": "Present when this is the stored response of an earlier request "
        "with the same Idempotency-Key; nothing was changed again.",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "RateLimit-Policy": {
        "description": "The quotas this request counted against (IETF draft "
        'ratelimit-headers): `"tenant";q=6000;w=60, "caller";q=1200;w=60` (q requests per '
        "w seconds).",
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": 'What is left of each quota: `"tenant";r=5998;t=1, "caller";r=1187;t=8` '
        "(r requests left, t seconds until the quota is whole again).",
        "schema": {"type": "string"},
    },
    "X-Request-ID": {
        "description": "The request's id in the logs: the X-Request-ID it was sent with (up "
        "to 64 letters, digits and `._:-`), else a new one.",
        "required": True,
        "schema": {"type": "string", "maxLength": 64},
    },
    "WWW-Authenticate": {
        "description": "The Bearer challenge (RFC 6750).",
        "required": True,
        "schema": {"type": "string", "pattern": "^Bearer"},
    },
}


def problems(*errors: type[MeridianError]) -> dict[str, Any]:
    """``openapi_extra`` of a route that answers with problems its declarations do not
    imply, e.g. ``problems(Conflict)`` on a DELETE refused while others refer to it."""
    return {_EXTRA_KEY: [PROBLEM_BASE + e.type_slug for e in errors]}


def _problem_schema(types: list[type[MeridianError]]) -> dict[str, Any]:
    rows = "\n".join(
        f"| `{PROBLEM_BASE}{c.type_slug}` | {c.status_code} | {c.title} |" for c in types
    )
    return {
        "title": "Problem",
        "type": "object",
        "description": "An error (RFC 9457). `type` is stable: branch on it, not on "
        "`title` or `detail`.\n\n| type | status | title |\n|---|---|---|\n" + rows,
        "required": ["type", "title", "status"],
        "properties": {
            "type": {"type": "string", "enum": [PROBLEM_BASE + c.type_slug for c in types]},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "instance": {"type": "string", "description": "The request path."},
            "errors": {
                "type": "array",
                "description": "validation: what is wrong, field by field.",
                "items": {"$ref": SCHEMAS + "ProblemFieldError"},
            },
            "object": {"type": "string", "description": "forbidden: the object type."},
            "action": {"type": "string", "description": "forbidden: the action refused."},
            "duplicate_of": {
                "type": "string",
                "format": "uuid",
                "description": "duplicate: the existing record.",
            },
            "constraint": {
                "type": "string",
                "description": "conflict, validation: the database constraint that refused "
                "the change.",
            },
        },
        "additionalProperties": False,
    }


PROBLEM_FIELD_ERROR: dict[str, Any] = {
    "title": "ProblemFieldError",
    "type": "object",
    "required": ["loc", "msg", "type"],
    "properties": {
        "loc": {
            "type": "array",
            "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            "description": 'Where: e.g. ["email"], ["stages", 0, "name"], ["query", "limit"].',
        },
        "msg": {"type": "string"},
        "type": {"type": "string", "description": "A machine-readable error kind."},
        "position": {
            "type": "integer",
            "minimum": 0,
            "description": "Where in the parameter's text the problem is (a `filter` "
            "expression): a 0-based character offset.",
        },
    },
    "additionalProperties": False,
}


class _Operation:
    """What one operation can answer: problem types per status, headers per status."""

    def __init__(self) -> None:
        self.problems: dict[int, set[type[MeridianError]]] = {}
        self.headers: dict[int, set[str]] = {}
        self.security: list[dict[str, list[str]]] = []
        # Counted against the tenant's quotas: every answer may carry their headers.
        self.rate_limited = False

    def error(self, *errors: type[MeridianError], headers: Iterable[str] = ()) -> None:
        for err in errors:
            self.problems.setdefault(err.status_code, set()).add(err)
            self.headers.setdefault(err.status_code, set()).update(headers)

    def header(self, status: int, name: str) -> None:
        self.headers.setdefault(status, set()).add(name)


def _model(annotation: Any) -> type[BaseModel] | None:
    return (
        annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    )


def _derive(
    route: Any, success: int, operation: dict[str, Any], types: Sequence[type[MeridianError]]
) -> _Operation:
    op = _Operation()
    # Any operation: a bug (internal), or a stored field that cannot be decrypted.
    op.error(*(err for err in types if err.status_code == 500))
    dependant = route.dependant
    calls = [d.call for d in dependant.dependencies]
    tenant = next((c for c in calls if isinstance(c, RequireTenant)), None)
    if tenant is not None:
        op.error(Unauthorized, headers=["WWW-Authenticate"])
        op.error(Forbidden, InsufficientScope, TenantSuspended)
        op.error(ServiceUnavailable, ShardUnavailable, TenantBusy, headers=["Retry-After"])
        op.error(RateLimited, headers=["Retry-After"])
        if tenant.obj in QUOTA_OBJECTS and "create" in (tenant.act, *tenant.alternatives):
            op.error(QuotaExceeded)  # records per object (crud.quota)
        op.security = [{"oauth2": [tenant.scope]}, {"bearer": []}]
    elif require_admin in calls:
        op.error(Unauthorized, headers=["WWW-Authenticate"])
        op.error(InsufficientScope)
        op.security = [{"oauth2": [SCOPE_ADMIN]}, {"bearer": []}]
    if dependant.path_params:
        op.error(NotFound, ValidationFailed)
    if dependant.query_params:
        op.error(ValidationFailed)
    query = {p.alias: p for p in dependant.query_params}
    if "cursor" in query and query["cursor"].field_info.annotation in (str, str | None):
        op.error(InvalidCursor)  # an opaque cursor (the admin list's is a plain uuid)
    if "sort" in query:
        op.error(BadRequest)  # a field that is not sortable
    headers = {p.alias for p in dependant.header_params}
    if headers:
        op.error(ValidationFailed)
    if "If-Match" in headers:
        op.error(PreconditionFailed)
    if "Idempotency-Key" in headers:
        op.error(IdempotencyKeyReused)
        op.header(success, "Idempotent-Replayed")
    if "If-None-Match" in headers:
        op.header(304, "ETag")
    if route.body_field is not None:
        op.error(BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed)
    elif "requestBody" in operation:
        op.error(PayloadTooLarge)
    model = _model(route.response_model)
    if model is not None and issubclass(model, Versioned):
        op.header(success, "ETag")
    if model is not None and issubclass(model, Addressable) and success == 201:
        op.header(success, "Location")
    by_urn = {PROBLEM_BASE + c.type_slug: c for c in types}
    op.error(*(by_urn[urn] for urn in operation.pop(_EXTRA_KEY, [])))
    op.rate_limited = tenant is not None
    return op


def _problem_response(status: int, errors: set[type[MeridianError]]) -> dict[str, Any]:
    slugs = sorted(e.type_slug for e in errors)
    reason = http.HTTPStatus(status).phrase
    return {
        "description": f"{reason}: " + ", ".join(f"`{s}`" for s in slugs),
        "content": {
            PROBLEM_MEDIA_TYPE: {
                "schema": {
                    "allOf": [{"$ref": SCHEMAS + "Problem"}],
                    "properties": {
                        "type": {"enum": [PROBLEM_BASE + s for s in slugs]},
                        "status": {"const": status},
                    },
                }
            }
        },
    }


def _apply(operation: dict[str, Any], op: _Operation) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    # FastAPI's own validation error (application/json, HTTPValidationError) is replaced.
    responses.pop("422", None)
    for status, errors in sorted(op.problems.items()):
        declared = responses.setdefault(str(status), {})
        problem = _problem_response(status, errors)
        declared.setdefault("description", problem["description"])
        declared.setdefault("content", {}).update(problem["content"])
    if "304" in {str(s) for s in op.headers}:
        responses.setdefault("304", {"description": "Not modified: the ETag is current."})
    for code in (c for c in responses if c.isdigit()):
        # Every answer names its request (meridian.web.requests).
        op.headers.setdefault(int(code), set()).add(REQUEST_ID)
        if op.rate_limited:
            # Whatever the answer once the quotas were counted (one before, a 401, goes
            # without them: the headers are optional).
            op.headers[int(code)].update(RATE_LIMIT_HEADERS)
    for status, names in op.headers.items():
        if names and str(status) in responses:
            headers = responses[str(status)].setdefault("headers", {})
            for name in sorted(names):
                headers.setdefault(name, {"$ref": HEADERS + name})
    if op.security:
        operation["security"] = op.security
    for parameter in operation.get("parameters", []):
        _absent_is_null(parameter)


def _absent_is_null(parameter: dict[str, Any]) -> None:
    """A query or header parameter is null by being absent: ``"null"`` is not a value on
    the wire, so the optional parameter's schema is its non-null branch."""
    schema = parameter.get("schema", {})
    branches = schema.get("anyOf")
    if parameter.get("in") in {"query", "header"} and branches:
        kept = [b for b in branches if b.get("type") != "null"]
        if len(kept) == 1:
            rest = {k: v for k, v in schema.items() if k not in {"anyOf", "default"}}
            parameter["schema"] = {**kept[0], **rest}


def _link_created(paths: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Links from each creation (a 201 with a Location) to the operations on what it
    created: ``POST /v1/accounts`` → ``GET /v1/accounts/{account_id}`` with the new
    id, so clients (and contract tests) can follow them."""
    for path, item in paths.items():
        created = item.get("post", {}).get("responses", {}).get("201", {})
        if "Location" not in created.get("headers", {}):
            continue
        ref = created["content"]["application/json"]["schema"]["$ref"]
        fields = schemas[ref.removeprefix(SCHEMAS)]["properties"]
        key = "id" if "id" in fields else "name"
        links: dict[str, Any] = created.setdefault("links", {})
        for target, target_item in paths.items():
            # One parameter more than the creation's path: the new resource's.
            if not target.startswith(f"{path}/{{") or target.count("{") != path.count("{") + 1:
                continue
            new = target[len(path) + 2 :].split("}", 1)[0]
            parameters = {new: f"$response.body#/{key}"}
            for old in path.split("{")[1:]:
                name = old.split("}", 1)[0]
                parameters[name] = f"$request.path.{name}"
            for method, operation in target_item.items():
                links[operation["operationId"]] = {
                    "operationId": operation["operationId"],
                    "parameters": parameters,
                    "description": f"{method.upper()} {target} of the created resource.",
                }


def build(app: FastAPI) -> dict[str, Any]:
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    paths: dict[str, Any] = doc["paths"]
    types = problem_types()
    for ctx in iter_route_contexts(app.routes):
        if not isinstance(ctx.original_route, APIRoute) or not ctx.include_in_schema:
            continue
        path, methods = ctx.path_format, ctx.methods
        if path is None or methods is None:  # never for an APIRoute; typed as optional
            continue
        for method in sorted(methods):
            operation = paths[path][method.lower()]
            success = ctx.status_code or 200
            _apply(operation, _derive(ctx, success, operation, types))
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    _link_created(paths, schemas)
    schemas["Problem"] = _problem_schema(types)
    schemas["ProblemFieldError"] = PROBLEM_FIELD_ERROR
    components["headers"] = RESPONSE_HEADERS
    components["securitySchemes"] = SECURITY_SCHEMES
    return doc


def install(app: FastAPI) -> None:
    """Serves ``build(app)`` at ``/openapi.json``, computed on first use and kept."""
    built: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not built:
            built.update(build(app))
        return built

    app.openapi = openapi  # type: ignore[method-assign]
