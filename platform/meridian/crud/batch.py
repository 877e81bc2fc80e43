"""Batch writes, ``POST /v1/{object}/batch``: up to 1,000 creates, updates and upserts
of one kind in one write transaction, one result per item, in request order.

The one flow every record kind shares (``run``); a domain's router hands it its
services, schemas and repository (``Writes``), so each item goes through exactly the
rules a single create or update does: validation with the same pydantic models, the
service's checks, encryption and duplicate rules, the repository's events and hooks,
the caller's record scope, ``If-Match``. Nothing here knows a domain.

- **Per item**: each item runs in a savepoint of the batch's transaction, so a failing
  item (its 4xx problem in its result) leaves the others applied. ``atomic: true``
  instead makes the first failure roll the whole batch back: the failed item says why
  and every other result is 424 ``batch-aborted``. The bodies of creates and updates
  are validated before anything is written, so an atomic batch reports every invalid
  body at once.
- **Idempotency**: the whole batch's response is kept with its ``Idempotency-Key``
  (``crud.idempotency``, the fingerprint of the body), in the same transaction: a
  retried batch replays its results instead of applying twice. An atomic batch that
  failed wrote nothing and keeps nothing, as a refused single write does.
- **Upsert** by ``external_id`` (unique per tenant and kind): found, it is updated with
  the body read as the kind's update schema (200); not found, created with that
  ``external_id`` from the body read as its create schema (201). Two concurrent upserts
  of one new id create one record: the insert waits on the unique index and takes
  nothing when the other committed it (``TenantRepository.insert``), and the item then
  updates that record. A record the caller's scope hides is never changed: 409
  ``duplicate`` naming it, as creating a record with an ``external_id`` in use is.
- **Permissions**: the route needs the kind's ``create`` or ``update``; an item the role
  may not do is 403 in its result, and a batch none of whose items it may do is refused
  whole (403), as a single write would be.
- **Caches** are invalidated after the commit by ``endpoints.writing`` (what the
  repository wrote), records decrypted and masked as the single-record endpoints do.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Annotated, Any, Generic, Literal, TypeVar, cast
from uuid import UUID

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, ValidationError, WithJsonSchema
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from meridian.crud import endpoints
from meridian.crud.http import ETAG_FORMAT, IF_MATCH_PATTERN, expected_version, stored_response
from meridian.crud.idempotency import StoredResponse
from meridian.crud.repository import ExternalIdTaken, Row, TenantRepository, VersionMismatch
from meridian.crud.schemas import ExternalId, Flag, InputModel
from meridian.deps import TenantAccess, record_viewer
from meridian.encryption.fields import sealed
from meridian.errors import (
    Forbidden,
    MeridianError,
    MethodNotAllowed,
    invalid_field,
    problem_body,
)
from meridian.web.problems import integrity_failed, unstorable_text, validation_failed
from meridian.web.responses import problem_response

MAX_ITEMS = 1000
# The batch routes (their bodies may be larger than other requests': web.limits).
PATH_PATTERN = re.compile(r"^/v1/[a-z-]+/batch/?$")
PATH = "/batch"

C = TypeVar("C", bound=InputModel)
U = TypeVar("U", bound=InputModel)
Item = TypeVar("Item")
Op = Literal["create", "update", "upsert"]


class BatchAborted(MeridianError):
    """An item of an atomic batch that was not applied: another item failed and the
    whole batch was rolled back."""

    status_code = 424
    type_slug = "batch-aborted"
    title = "Not applied: the atomic batch failed"


# -- the request --------------------------------------------------------------------
_BODY = Annotated[
    dict[str, Any],
    Field(
        description="The record's fields, exactly as the single-record endpoint takes "
        "them (its create or update schema, named in the operation's description). "
        "Checked per item: an invalid body is a 422 in the item's result."
    ),
]


class BatchCreate(InputModel):
    """Create a record: ``body`` is the kind's create schema (as ``POST /v1/{object}``)."""

    op: Literal["create"]
    body: _BODY


class BatchUpdate(InputModel):
    """Change the record ``id``: ``body`` is the kind's update schema (as ``PATCH``: the
    fields sent change, null clears an optional one)."""

    op: Literal["update"]
    id: UUID
    if_match: Annotated[
        str | None,
        Field(
            pattern=IF_MATCH_PATTERN,
            json_schema_extra={"format": ETAG_FORMAT},
            description='The record\'s ETag ("3") or *, as If-Match on PATCH: a record '
            "changed since is 412 in the item's result.",
        ),
    ] = None
    body: _BODY


class BatchUpsert(InputModel):
    """Update the record with this ``external_id`` (``body``: the update schema), or
    create it with that ``external_id`` (``body``: the create schema)."""

    op: Literal["upsert"]
    external_id: ExternalId
    body: _BODY


BatchItem = Annotated[BatchCreate | BatchUpdate | BatchUpsert, Field(discriminator="op")]


class BatchRequest(InputModel):
    """Up to 1,000 writes of one kind, applied in order in one transaction."""

    items: Annotated[
        list[BatchItem],
        Field(min_length=1, max_length=MAX_ITEMS, description=f"1 to {MAX_ITEMS:,} writes."),
    ]
    atomic: Annotated[
        Flag,
        Field(
            description="true: all or nothing; the first failing item rolls the batch back "
            "and every other result is 424 batch-aborted. false (default): each item on "
            "its own."
        ),
    ] = False


# -- the response -------------------------------------------------------------------
class BatchResult(BaseModel, Generic[Item]):
    """One item's outcome."""

    index: int = Field(ge=0, description="The item's position in the request (from 0).")
    status: int = Field(
        ge=200,
        le=599,
        description="201 created, 200 updated, or the status of the item's problem (4xx; "
        "424: not applied, the atomic batch failed).",
    )
    id: UUID | None = Field(
        default=None, description="The record's id (written, or named by an update)."
    )
    record: Item | None = Field(
        default=None,
        description="The record as written, as the single-record endpoint returns it.",
    )
    problem: Annotated[
        dict[str, Any] | None,
        WithJsonSchema({"allOf": [{"$ref": "#/components/schemas/Problem"}]}),
        Field(description="Why the item failed (RFC 9457), as a single write would say."),
    ] = None


class BatchResults(BaseModel, Generic[Item]):
    """One result per item, in request order."""

    results: list[BatchResult[Item]]


def refuse_other_methods(router: APIRouter) -> None:
    """Makes every method but POST answer 405 (``Allow: POST``) on the batch path,
    rather than reach the record routes beside it, where ``batch`` would be read as an
    id (422). Called right after the batch route (which POST reaches first), ahead of
    ``/{id}`` (routes match in order); not in the OpenAPI document."""
    # An ASGI app, not a function: Starlette's route of one takes every method.
    router.add_route(
        router.prefix + PATH, cast(Any, _Refusal()), methods=None, include_in_schema=False
    )


class _Refusal:
    """405 with ``Allow: POST``, whatever the method."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        err = MethodNotAllowed(f"{scope['method']} is not allowed here; a batch is POSTed.")
        body = problem_body(
            err.status_code, err.type, err.title, err.detail, instance=scope.get("path")
        )
        await problem_response(body, {"Allow": "POST"})(scope, receive, send)


def describe(kind: str, create: type[BaseModel], update: type[BaseModel]) -> str:
    """The batch route's description: which schemas the items' bodies are."""
    return (
        f"Up to {MAX_ITEMS:,} creates, updates and upserts of {kind} records in one "
        f"request. Each item's `body` is a `{create.__name__}` (create; upsert of a new "
        f"`external_id`) or a `{update.__name__}` (update; upsert of an existing one), "
        "checked and applied exactly as the single-record endpoints do. The answer is "
        "200 with one result per item, in request order: 201 or 200 with the record, or "
        "the item's own problem. `Idempotency-Key` covers the whole batch; `if_match` "
        "is per item. See docs/api.md, Batch writes."
    )


# -- what a domain hands in ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Writes(Generic[C, U]):
    """A kind's batch writes: its table (``kind``), permission object (``obj``),
    repository, schemas, and its services' create and update for this request."""

    kind: str
    obj: str
    repository: type[TenantRepository[Any]]
    create_model: type[C]
    update_model: type[U]
    create: Callable[[AsyncSession, C], Awaitable[Row]]
    update: Callable[[AsyncSession, UUID, U, int | None], Awaitable[Row | None]]


# -- the flow ----------------------------------------------------------------------
class _Aborted(Exception):
    """Raised out of the transaction of an atomic batch that failed: rolls it back."""

    def __init__(self, results: list[dict[str, Any]]) -> None:
        super().__init__("atomic batch aborted")
        self.results = results


class _Failed(Exception):
    """An item's expected failure, as the problem its result carries."""

    def __init__(self, error: MeridianError) -> None:
        super().__init__(error.detail or error.title)
        self.error = error


async def run(
    access: TenantAccess,
    request: Request,
    idempotency_key: str | None,
    body: BatchRequest,
    writes: Writes[Any, Any],
) -> Response:
    """The batch route's whole work: 200 with ``BatchResults`` (see the module)."""
    batch = _Batch(access, writes)
    batch.refuse_if_nothing_allowed(body.items)

    async def produce(session: AsyncSession) -> StoredResponse:
        results = await batch.apply(session, body.items, atomic=body.atomic)
        # Kept for replays as ciphertext (base64), never plaintext.
        return StoredResponse(200, {"results": results})

    payload = body.model_dump(mode="json")
    try:
        stored = await endpoints.idempotent(
            access, request, idempotency_key, payload, writes.kind, produce
        )
    except _Aborted as aborted:
        stored = StoredResponse(200, {"results": aborted.results})
    return stored_response(replace(stored, body=await batch.shown(stored.body)))


# What an atomic ``apply`` raises when an item fails (``results`` says which and why).
Aborted = _Aborted


async def apply(
    session: AsyncSession,
    access: TenantAccess,
    writes: Writes[Any, Any],
    items: Sequence[BatchItem],
    *,
    atomic: bool = False,
) -> list[dict[str, Any]]:
    """Each item's result, as a batch request gets it (independent items, each in a
    savepoint of ``session``: a write transaction the caller opened and commits), for a
    flow that writes many batches in one job (imports, ``meridian.transfers``). Records
    in the results are as stored (ciphertext); nothing is kept for idempotency.
    ``atomic``: no savepoint per item; the first failure raises ``Aborted``, and the
    caller rolls back what the items wrote (a savepoint of its own)."""
    return await _Batch(access, writes).apply(session, items, atomic=atomic)


class _Batch:
    def __init__(self, access: TenantAccess, writes: Writes[Any, Any]) -> None:
        self.access = access
        self.writes = writes
        self.kind = writes.kind
        self.allowed = {act: access.can(writes.obj, act) for act in ("create", "update")}

    # -- permissions -------------------------------------------------------------------
    def _needs(self, item: BatchItem) -> tuple[str, ...]:
        """The actions of which the role needs one for ``item``."""
        return ("create", "update") if item.op == "upsert" else (item.op,)

    def _forbidden(self, act: str) -> Forbidden:
        role, obj = self.access.actor.role, self.writes.obj
        return Forbidden(f"The role '{role}' may not {act} {obj}.", object=obj, action=act)

    def refuse_if_nothing_allowed(self, items: Sequence[BatchItem]) -> None:
        """403 for the whole batch when the role may do none of its items."""
        if not any(any(self.allowed[a] for a in self._needs(item)) for item in items):
            raise self._forbidden(self._needs(items[0])[0])

    def _require(self, act: str) -> None:
        if not self.allowed[act]:
            raise _Failed(self._forbidden(act))

    # -- applying --------------------------------------------------------------------
    async def apply(
        self, session: AsyncSession, items: Sequence[BatchItem], *, atomic: bool
    ) -> list[dict[str, Any]]:
        """Every item's result, in order; raises ``_Aborted`` for an atomic batch with
        a failed item."""
        results: list[dict[str, Any] | None] = [None] * len(items)
        # Checks that need no database first: an atomic batch reports every invalid
        # body, and writes nothing.
        checked: list[InputModel | None] = []
        for index, item in enumerate(items):
            try:
                checked.append(self._check(item))
            except _Failed as failed:
                checked.append(None)
                results[index] = self._failure(index, item, failed.error)
        if atomic and any(r is not None for r in results):
            raise _Aborted(self._aborted(items, results))
        for index, item in enumerate(items):
            if results[index] is not None:
                continue
            try:
                if atomic:
                    results[index] = await self._write(session, index, item, checked[index])
                else:
                    async with _savepoint(session):
                        results[index] = await self._write(session, index, item, checked[index])
            except Exception as exc:  # sorted by _expected; the rest fails the batch
                error = self._expected(exc)
                if error is None:
                    raise
                results[index] = self._failure(index, item, error)
                if atomic:
                    raise _Aborted(self._aborted(items, results)) from exc
        return [r for r in results if r is not None]

    def _check(self, item: BatchItem) -> InputModel | None:
        """The body of a create or an update, validated (403 before 422, as a single
        request's permission is checked before its body); an upsert's waits for what
        it finds."""
        try:
            checked: InputModel
            if isinstance(item, BatchCreate):
                self._require("create")
                checked = self.writes.create_model.model_validate(item.body)
                return checked
            if isinstance(item, BatchUpdate):
                self._require("update")
                expected_version(item.if_match)  # a version never issued: 412
                checked = self.writes.update_model.model_validate(item.body)
                return checked
            given = item.body.get("external_id", item.external_id)
            if given != item.external_id:
                raise _Failed(
                    invalid_field(
                        "external_id", "must be the item's external_id, or left out", "value_error"
                    )
                )
            return None
        except ValidationError as exc:
            raise _Failed(validation_failed(exc.errors())) from exc
        except MeridianError as exc:
            raise _Failed(exc) from exc

    async def _write(
        self, session: AsyncSession, index: int, item: BatchItem, checked: InputModel | None
    ) -> dict[str, Any]:
        if isinstance(item, BatchCreate):
            assert checked is not None
            return self._success(index, 201, await self._create(session, checked))
        if isinstance(item, BatchUpdate):
            assert checked is not None
            version = expected_version(item.if_match)
            return self._success(index, 200, await self._update(session, item.id, checked, version))
        return await self._upsert(session, index, item)

    async def _create(self, session: AsyncSession, body: InputModel) -> Row:
        # A user's new record is theirs unless the body names an owner, as on POST.
        endpoints.default_owner(self.access, body)
        return await self.writes.create(session, body)

    async def _update(
        self, session: AsyncSession, record_id: UUID, body: InputModel, version: int | None
    ) -> Row:
        update = self.writes.update

        async def apply(session: AsyncSession, version: int | None) -> Row | None:
            return await update(session, record_id, body, version)

        return await endpoints.changed(session, self.access, self.kind, record_id, version, apply)

    async def _upsert(self, session: AsyncSession, index: int, item: BatchUpsert) -> dict[str, Any]:
        repo = self.writes.repository(session, self.access.tenant)
        found = await repo.find_external(item.external_id, lock=True)
        if found is None:
            self._require("create")
            body = self._validated(self.writes.create_model, item)
            try:
                return self._success(index, 201, await self._create(session, body))
            except ExternalIdTaken:
                # Created by a concurrent writer since it was looked for: update that one.
                found = await repo.find_external(item.external_id, lock=True)
                if found is None:
                    raise
        self._require("update")
        viewer = record_viewer(self.access)
        if self.writes.repository.is_scoped_for(viewer):
            scoped = self.writes.repository(session, self.access.tenant, viewer=viewer)
            if not await scoped.lock_visible(found, for_update=True):
                # Never changed, never duplicated: the id is taken, by a record the
                # caller cannot see.
                raise ExternalIdTaken(self.kind, item.external_id, found)
        changes = self._validated(self.writes.update_model, item, with_external_id=False)
        return self._success(index, 200, await self._update(session, found, changes, None))

    def _validated(
        self, model: type[InputModel], item: BatchUpsert, *, with_external_id: bool = True
    ) -> InputModel:
        body = {**item.body, "external_id": item.external_id} if with_external_id else item.body
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            raise _Failed(validation_failed(exc.errors())) from exc

    # -- results ---------------------------------------------------------------------
    def _expected(self, exc: Exception) -> MeridianError | None:
        """The problem of an item's expected failure; None for anything else (a shard
        gone, a bug), which fails the whole batch as it would a single request."""
        if isinstance(exc, _Failed):
            return exc.error
        if isinstance(exc, VersionMismatch):
            return endpoints.stale(self.kind)
        if isinstance(exc, ValidationError):
            return validation_failed(exc.errors())
        if isinstance(exc, MeridianError):
            return exc if exc.status_code < 500 else None
        if isinstance(exc, IntegrityError):
            return integrity_failed(exc)
        if isinstance(exc, DBAPIError):
            return unstorable_text(exc)
        return None

    def _success(self, index: int, status: int, row: Row) -> dict[str, Any]:
        return {"index": index, "status": status, "id": row["id"], "record": sealed(row)}

    def _failure(self, index: int, item: BatchItem, error: MeridianError) -> dict[str, Any]:
        result: dict[str, Any] = {"index": index, "status": error.status_code}
        if isinstance(item, BatchUpdate):
            result["id"] = item.id
        result["problem"] = problem_body(
            error.status_code, error.type, error.title, error.detail, **error.extensions
        )
        return result

    def _aborted(
        self, items: Sequence[BatchItem], results: list[dict[str, Any] | None]
    ) -> list[dict[str, Any]]:
        """Every result of an atomic batch rolled back: the failures as they are, every
        other item 424."""
        failed = [r for r in results if r is not None and r["status"] >= 400]
        first = failed[0]
        reason = BatchAborted(
            f"Not applied: item {first['index']} failed ({first['status']} "
            f"{first['problem']['type'].rsplit(':', 1)[-1]}) and the batch is atomic; "
            "nothing was written."
        )
        return [
            result
            if result is not None and result["status"] >= 400
            else self._failure(index, items[index], reason)
            for index, result in enumerate(results)
        ]

    async def shown(self, body: Any) -> Any:
        """The stored (or replayed) results with each record as the single-record
        endpoints show it: decrypted, and masked without pii:read."""
        if not isinstance(body, Mapping):
            return body
        out = []
        for result in body["results"]:
            record = result.get("record")
            if record is not None:
                clear = await endpoints.opened(self.access, self.kind, record)
                result = {**result, "record": endpoints.shown(self.access, self.kind, clear)}
            out.append(result)
        return {**body, "results": out}


@asynccontextmanager
async def _savepoint(session: AsyncSession) -> AsyncIterator[None]:
    """A savepoint whose rollback also forgets what the session noted meanwhile (the
    events queued for the outbox, the records to invalidate, a hook's own notes): the
    failed item leaves no trace in its batch's transaction.

    Plain SQL on the session's connection rather than ``session.begin_nested()``: the
    session holds no ORM objects to flush, and its nested-transaction bookkeeping cost
    a fifth of a batch's Python work per item (and its release fires ``before_commit``,
    which would append the queued events item by item instead of once, at the commit).
    A failed statement inside leaves the transaction usable once rolled back to it."""
    kept = {
        key: value.copy() if isinstance(value, list | set | dict) else value
        for key, value in session.info.items()
    }
    connection = await session.connection()
    await connection.exec_driver_sql("SAVEPOINT batch_item")
    try:
        yield
    except BaseException:
        await connection.exec_driver_sql("ROLLBACK TO SAVEPOINT batch_item")
        session.info.clear()
        session.info.update(kept)
        raise
    await connection.exec_driver_sql("RELEASE SAVEPOINT batch_item")
