"""Schemathesis extensions for the contract test (loaded through SCHEMATHESIS_HOOKS)."""

from __future__ import annotations

import schemathesis
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import is_unexpected_http_status_case

from meridian.crud.filters import ERROR_TYPES as FILTER_ERRORS
from meridian.crud.filters import PARAMETER as FILTER
from meridian.crud.http import (
    ETAG_FORMAT,
    ETAG_LIST_FORMAT,
    IF_MATCH_PATTERN,
    IF_NONE_MATCH_PATTERN,
)
from meridian.errors import (
    FIELD_DEFINITION,
    NOT_FOUND,
    PROBLEM_BASE,
    PROBLEM_MEDIA_TYPE,
    UNIQUE,
    IdempotencyKeyReused,
    InvalidCursor,
)

# Schemathesis builds header values from letters and digits only, unless the schema
# names a format it has a strategy for: these generate the ETag headers' real forms.
schemathesis.openapi.format(ETAG_FORMAT, st.from_regex(IF_MATCH_PATTERN, fullmatch=True))
schemathesis.openapi.format(ETAG_LIST_FORMAT, st.from_regex(IF_NONE_MATCH_PATTERN, fullmatch=True))


INVALID_CURSOR = PROBLEM_BASE + InvalidCursor.type_slug
KEY_REUSED = PROBLEM_BASE + IdempotencyKeyReused.type_slug


@schemathesis.check
def refused_only_for_state(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """A request the document calls valid may be refused (400, 422) only for what no
    schema can state: a cursor that is not one the API issued, a reference to a record
    that does not exist (every ``errors[].type`` is ``not_found``), a value that must
    differ from its siblings' (``unique``: JSON Schema states uniqueness of whole items
    only), a value that must fit a stored definition the request does not carry
    (``field_definition``: a default against the type and options beside it or stored,
    new options against the stored type), an
    Idempotency-Key already used for another request, or a ``filter`` expression
    (its grammar and its fields' types are beyond a schema; its description states them).
    Anything else means the document promises more than the API accepts.

    ``positive_data_acceptance`` is told to allow 400 and 422 (schemathesis.toml) only
    because this check holds each such answer to those three reasons.
    """
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return None
    if is_unexpected_http_status_case(case) or response.status_code not in (400, 422):
        return None
    if response.headers.get("content-type", [""])[0] != PROBLEM_MEDIA_TYPE:
        # The OAuth endpoints' own errors: positive_data_acceptance judges those (a token
        # request may name credentials that do not exist).
        return None
    problem = response.json()
    kind = problem.get("type")
    if response.status_code == 400 and kind == INVALID_CURSOR and "cursor" in (case.query or {}):
        return None
    if response.status_code == 422:
        errors = problem.get("errors") or []
        if kind == KEY_REUSED or (
            errors and all(e.get("type") in (NOT_FOUND, UNIQUE, FIELD_DEFINITION) for e in errors)
        ):
            return None
        # A list's filter is a query parameter; an export's is a member of its body.
        filtered = FILTER in (case.query or {}) or (
            isinstance(case.body, dict) and FILTER in case.body
        )
        if (
            filtered
            and errors
            and all(e.get("loc") == [FILTER] and e.get("type") in FILTER_ERRORS for e in errors)
        ):
            return None
    raise AssertionError(
        f"A schema-valid request was refused with {response.status_code} {kind}: "
        f"{problem.get('detail')}"
    )
