"""One error hierarchy, rendered as RFC 9457 ``application/problem+json``.

Expected outcomes are 4xx with a stable ``type``; only bugs are 500.
"""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_BASE = "urn:meridian:problem:"
PROBLEM_MEDIA_TYPE = "application/problem+json"


class MeridianError(Exception):
    status_code: ClassVar[int] = 500
    type_slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal server error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.type_slug


class BadRequest(MeridianError):
    status_code = 400
    type_slug = "bad-request"
    title = "Bad request"


class InvalidCursor(BadRequest):
    type_slug = "invalid-cursor"
    title = "Invalid pagination cursor"


class Unauthorized(MeridianError):
    status_code = 401
    type_slug = "unauthorized"
    title = "Authentication required"

    def __init__(self, detail: str | None = None, **kw: Any) -> None:
        kw.setdefault("headers", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        super().__init__(detail, **kw)


class Forbidden(MeridianError):
    status_code = 403
    type_slug = "forbidden"
    title = "Forbidden"


class InsufficientScope(Forbidden):
    type_slug = "insufficient-scope"
    title = "The token lacks a required scope"


class TenantSuspended(Forbidden):
    type_slug = "tenant-suspended"
    title = "The tenant is suspended"


class NotFound(MeridianError):
    status_code = 404
    type_slug = "not-found"
    title = "Not found"


class MethodNotAllowed(MeridianError):
    status_code = 405
    type_slug = "method-not-allowed"
    title = "Method not allowed"


class Conflict(MeridianError):
    status_code = 409
    type_slug = "conflict"
    title = "Conflict"


class DedicatedShardOccupied(Conflict):
    """Onboarding named a dedicated shard that already holds a tenant."""

    type_slug = "dedicated-shard-occupied"
    title = "The dedicated shard already holds a tenant"


class Duplicate(Conflict):
    """The record duplicates an existing one (the body names it in ``duplicate_of``)."""

    type_slug = "duplicate"
    title = "Duplicate record"


class Gone(MeridianError):
    status_code = 410
    type_slug = "gone"
    title = "Gone"


class PreconditionFailed(MeridianError):
    status_code = 412
    type_slug = "precondition-failed"
    title = "Precondition failed"


class PayloadTooLarge(MeridianError):
    status_code = 413
    type_slug = "payload-too-large"
    title = "Request body too large"


class UnsupportedMediaType(MeridianError):
    status_code = 415
    type_slug = "unsupported-media-type"
    title = "Unsupported media type"


class ValidationFailed(MeridianError):
    status_code = 422
    type_slug = "validation"
    title = "The request is not valid"


# errors[].type of a field naming a record that does not exist (in the caller's tenant):
# a 422 a client cannot avoid by the shape of its request alone.
NOT_FOUND = "not_found"
# errors[].type of a value that must differ from its siblings' (two fulfilment steps of
# one name): JSON Schema can say "unique items" of whole items only, not of one member.
UNIQUE = "unique"
# errors[].type of a value that does not fit its custom field's definition: a default
# against the field's type and options (beside it in the request, a relation between
# members JSON Schema cannot state, or stored), new options against the stored type.
FIELD_DEFINITION = "field_definition"


def invalid_field(
    field: str, message: str, kind: str = "value_error", *, position: int | None = None
) -> ValidationFailed:
    """A 422 about one field of the request, with the ``errors`` entry clients read;
    ``kind`` is ``NOT_FOUND`` for a reference to a record that does not exist.
    ``position`` is where in the field's text the problem is (a filter expression's
    syntax error): a 0-based character offset."""
    entry: dict[str, Any] = {"loc": [field], "msg": message, "type": kind}
    if position is not None:
        entry["position"] = position
    return ValidationFailed(f"{field}: {message}", errors=[entry])


class IdempotencyKeyReused(ValidationFailed):
    type_slug = "idempotency-key-reused"
    title = "Idempotency-Key reused with a different request"


class QuotaExceeded(Conflict):
    """A quota of the tenant's plan (records per object, stored bytes) is reached;
    ``quota`` names it, with its ``limit`` and what is ``used``."""

    type_slug = "quota-exceeded"
    title = "A quota of the tenant's plan is reached"


class RateLimited(MeridianError):
    status_code = 429
    type_slug = "rate-limited"
    title = "Too many requests"


class ServiceUnavailable(MeridianError):
    status_code = 503
    type_slug = "unavailable"
    title = "Service unavailable"


class TenantBusy(ServiceUnavailable):
    type_slug = "tenant-busy"
    title = "Too many requests of this tenant in progress"


class ShardUnavailable(ServiceUnavailable):
    type_slug = "shard-unavailable"
    title = "The tenant's shard is unavailable"


def problem_types() -> list[type[MeridianError]]:
    """Every error class the API can answer with (subclasses defined anywhere count, so
    call this once all modules are imported), ordered by status, then type."""
    found: dict[str, type[MeridianError]] = {}
    pending: list[type[MeridianError]] = [MeridianError]
    while pending:
        cls = pending.pop()
        # A subclass that only changes behaviour keeps its parent's type.
        found.setdefault(cls.type_slug, cls)
        pending.extend(cls.__subclasses__())
    return sorted(found.values(), key=lambda c: (c.status_code, c.type_slug))


def error_for_status(status: int) -> type[MeridianError] | None:
    """The most general error class with this status (e.g. NotFound for 404), for errors
    raised outside the hierarchy (the router's 404 and 405)."""
    for cls in problem_types():
        parent = cls.__mro__[1]
        if cls.status_code == status and getattr(parent, "status_code", None) != status:
            return cls
    return None


def problem_body(
    status: int,
    type_: str,
    title: str,
    detail: str | None = None,
    instance: str | None = None,
    **extensions: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {"type": type_, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    body.update(extensions)
    return body
