"""Exception handlers: everything leaves as RFC 9457 problem+json."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError, IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from meridian.errors import (
    NOT_FOUND,
    PROBLEM_BASE,
    BadRequest,
    Conflict,
    MeridianError,
    ServiceUnavailable,
    ShardUnavailable,
    TenantBusy,
    UnsupportedMediaType,
    ValidationFailed,
    error_for_status,
    problem_body,
)
from meridian.web.responses import problem_response
from sharding.errors import (
    ResidencyError,
    ShardUnavailableError,
    TenantBusyError,
    UnknownShardError,
)

log = logging.getLogger("meridian.errors")

# What a shard that cannot be reached gets its clients to do: come back shortly.
RETRY_SOON = {"Retry-After": "1"}


def render(err: MeridianError, request: Request) -> Response:
    body = problem_body(
        err.status_code, err.type, err.title, err.detail, request.url.path, **err.extensions
    )
    return problem_response(body, err.headers)


async def _meridian_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MeridianError)
    return render(exc, request)


def _clean_loc(loc: tuple[Any, ...]) -> list[Any]:
    return [part for part in loc if part != "body" or len(loc) == 1]


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return render(BadRequest("The request body is not valid JSON."), request)
    if any(e.get("loc") == ("body",) and isinstance(e.get("input"), bytes) for e in errors):
        # FastAPI hands the body over undecoded when its Content-Type is not JSON.
        return render(UnsupportedMediaType("The request body must be application/json."), request)
    return render(validation_failed(errors), request)


def validation_failed(errors: Sequence[Any]) -> ValidationFailed:
    """The 422 of pydantic's errors (a request's, or a batch item's body): field by
    field, at most 50."""
    details = [
        {
            "loc": _clean_loc(tuple(e.get("loc", ()))),
            # Our validators' messages, without pydantic's "Value error, " in front.
            "msg": str(e.get("msg", "")).removeprefix("Value error, "),
            "type": e.get("type"),
        }
        for e in errors[:50]
    ]
    first = details[0] if details else None
    summary = (
        f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}" if first else "invalid input"
    )
    return ValidationFailed(summary, errors=details)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> set[str]:
    # The router's 405 names the methods of the first route matching the path only; a
    # resource's methods are spread over several routes (GET and POST /v1/accounts).
    routes = request.app.router.routes
    return {
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    }


@functools.cache
def _http_problem(status: int) -> tuple[str, str]:
    cls = error_for_status(status) or (BadRequest if status < 500 else MeridianError)
    return PROBLEM_BASE + cls.type_slug, cls.title


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    type_, title = _http_problem(exc.status_code)
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != title else None
    body = problem_body(exc.status_code, type_, title, detail, request.url.path)
    headers = dict(exc.headers or {})
    if exc.status_code == 405 and (methods := _allowed_methods(request)):
        headers["Allow"] = ", ".join(sorted(methods))
    return problem_response(body, headers)


async def _shard_unavailable(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ShardUnavailableError)
    retry = max(1, round(exc.retry_after))
    err = ShardUnavailable(
        "The shard holding this tenant's data cannot be reached; other tenants are unaffected.",
        headers={"Retry-After": str(retry)},
    )
    return render(err, request)


async def _tenant_busy(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TenantBusyError)
    request.app.state.runtime.metrics.tenant_busy.inc()
    err = TenantBusy(
        "This tenant already holds every shard connection it may at once; retry shortly.",
        headers={"Retry-After": str(max(1, round(exc.retry_after)))},
    )
    return render(err, request)


async def _unknown_shard(request: Request, exc: Exception) -> Response:
    log.error("unknown shard: %s", exc)
    return render(
        ShardUnavailable("The tenant's shard is not in the topology.", headers=RETRY_SOON), request
    )


async def _residency(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ResidencyError)
    detail = (
        "The tenant is read-only while it is being moved; retry shortly."
        if exc.read_only
        else "The tenant is being moved between shards; retry shortly."
    )
    return render(ServiceUnavailable(detail, headers=RETRY_SOON), request)


# Constraint violations that reach here are client mistakes the services did not
# pre-check (racing writes, ids of records that do not exist or are not the tenant's).
async def _integrity(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, IntegrityError)
    return render(integrity_failed(exc), request)


def integrity_failed(exc: IntegrityError) -> MeridianError:
    """What a constraint violation means to the client (a request's, or a batch item's)."""
    orig: Any = exc.orig
    sqlstate = getattr(orig, "sqlstate", None)
    cause = getattr(orig, "__cause__", None)
    constraint = getattr(cause, "constraint_name", None) or "unknown"
    message = str(getattr(cause, "detail", "") or "")
    if sqlstate == "23503":
        if "is still referenced" in message:
            return Conflict(
                "The record is still referenced by other records.", constraint=constraint
            )
        fields = _key_columns(message) or ["body"]
        errors = [
            {"loc": [f], "msg": "no such record in this tenant", "type": NOT_FOUND} for f in fields
        ]
        return ValidationFailed(
            "A referenced record does not exist.", constraint=constraint, errors=errors
        )
    if sqlstate == "23505":
        return Conflict("A record with these values exists.", constraint=constraint)
    if sqlstate in {"23514", "23502"}:
        return ValidationFailed("A value is not allowed.", constraint=constraint)
    log.exception("unmapped integrity error", exc_info=exc)
    return Conflict("The change conflicts with existing data.")


def _key_columns(detail: str) -> list[str]:
    """The referencing columns a foreign-key violation names ('Key (tenant_id, parent_id)=
    (…) is not present …'), without the tenant (every key carries it)."""
    found = _KEY.match(detail)
    if found is None:
        return []
    return [c.strip() for c in found.group(1).split(",") if c.strip() != "tenant_id"]


_KEY = re.compile(r"Key \(([^)]*)\)=")

# Text PostgreSQL cannot store (NUL, or not representable in the database encoding):
# the client's input, not a bug.
_BAD_TEXT_SQLSTATES = frozenset({"22021", "22P05"})


async def _database_error(request: Request, exc: Exception) -> Response:
    refused = unstorable_text(exc)
    if refused is not None:
        return render(refused, request)
    return await _unhandled(request, exc)


def unstorable_text(exc: Exception) -> ValidationFailed | None:
    """The 422 of a database error about text it cannot store, if ``exc`` is one (a
    DBAPIError from a session, or asyncpg's own error from the raw read path)."""
    origin = exc.orig if isinstance(exc, DBAPIError) else exc
    if getattr(origin, "sqlstate", None) in _BAD_TEXT_SQLSTATES:
        return ValidationFailed("A text value contains a character that cannot be stored (NUL).")
    return None


async def _unhandled(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return render(MeridianError("An unexpected error occurred."), request)


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(MeridianError, _meridian_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ShardUnavailableError, _shard_unavailable)
    app.add_exception_handler(UnknownShardError, _unknown_shard)
    app.add_exception_handler(TenantBusyError, _tenant_busy)
    app.add_exception_handler(ResidencyError, _residency)
    app.add_exception_handler(IntegrityError, _integrity)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(asyncpg.PostgresError, _database_error)
    app.add_exception_handler(Exception, _unhandled)
