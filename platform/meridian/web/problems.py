"""Exception handlers: everything leaves as RFC 9457 problem+json."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError, IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from meridian.errors import (
    PROBLEM_BASE,
    BadRequest,
    Conflict,
    MeridianError,
    ServiceUnavailable,
    ShardUnavailable,
    ValidationFailed,
    problem_body,
)
from meridian.web.responses import problem_response
from sharding.errors import ResidencyError, ShardUnavailableError, UnknownShardError

log = logging.getLogger("meridian.errors")

_HTTP_TITLES = {
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    415: ("unsupported-media-type", "Unsupported media type"),
}


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
    details = [
        {"loc": _clean_loc(tuple(e.get("loc", ()))), "msg": e.get("msg"), "type": e.get("type")}
        for e in errors[:50]
    ]
    first = details[0] if details else None
    summary = (
        f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}" if first else "invalid input"
    )
    return render(ValidationFailed(summary, errors=details), request)


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


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    slug, title = _HTTP_TITLES.get(exc.status_code, ("http-error", "HTTP error"))
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != title else None
    body = problem_body(exc.status_code, PROBLEM_BASE + slug, title, detail, request.url.path)
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


async def _unknown_shard(request: Request, exc: Exception) -> Response:
    log.error("unknown shard: %s", exc)
    return render(ShardUnavailable("The tenant's shard is not in the topology."), request)


async def _residency(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ResidencyError)
    detail = (
        "The tenant is read-only while it is being moved; retry shortly."
        if exc.read_only
        else "The tenant is being moved between shards; retry shortly."
    )
    return render(ServiceUnavailable(detail, headers={"Retry-After": "1"}), request)


# Constraint violations that reach here are client mistakes the services did not
# pre-check (racing writes, ids of records that do not exist or are not the tenant's).
async def _integrity(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, IntegrityError)
    orig: Any = exc.orig
    sqlstate = getattr(orig, "sqlstate", None)
    cause = getattr(orig, "__cause__", None)
    constraint = getattr(cause, "constraint_name", None) or "unknown"
    message = str(getattr(cause, "detail", "") or "")
    if sqlstate == "23503":
        if "is still referenced" in message:
            return render(
                Conflict("The record is still referenced by other records.", constraint=constraint),
                request,
            )
        return render(
            ValidationFailed("A referenced record does not exist.", constraint=constraint), request
        )
    if sqlstate == "23505":
        return render(
            Conflict("A record with these values exists.", constraint=constraint), request
        )
    if sqlstate in {"23514", "23502"}:
        return render(ValidationFailed("A value is not allowed.", constraint=constraint), request)
    log.exception("unmapped integrity error", exc_info=exc)
    return render(Conflict("The change conflicts with existing data."), request)


# Text PostgreSQL cannot store (NUL, or not representable in the database encoding):
# the client's input, not a bug.
_BAD_TEXT_SQLSTATES = frozenset({"22021", "22P05"})


async def _database_error(request: Request, exc: Exception) -> Response:
    # A DBAPIError from a session, or asyncpg's own error from the raw read path.
    origin = exc.orig if isinstance(exc, DBAPIError) else exc
    if getattr(origin, "sqlstate", None) in _BAD_TEXT_SQLSTATES:
        return render(
            ValidationFailed("A text value contains a character that cannot be stored (NUL)."),
            request,
        )
    return await _unhandled(request, exc)


async def _unhandled(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return render(MeridianError("An unexpected error occurred."), request)


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(MeridianError, _meridian_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ShardUnavailableError, _shard_unavailable)
    app.add_exception_handler(UnknownShardError, _unknown_shard)
    app.add_exception_handler(ResidencyError, _residency)
    app.add_exception_handler(IntegrityError, _integrity)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(asyncpg.PostgresError, _database_error)
    app.add_exception_handler(Exception, _unhandled)
