"""``meridian.crud.endpoints``: the write transaction every flow runs in, and its one
translation of a stale If-Match (``VersionMismatch``) into 412. The flows themselves are
tested through the routes of each resource."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from meridian.crud import endpoints
from meridian.crud.repository import VersionMismatch
from meridian.deps import TenantAccess
from meridian.errors import NotFound, PreconditionFailed


class FakeAccess:
    """Records what happens to the write transaction it hands out."""

    def __init__(self) -> None:
        self.events: list[str] = []
        # What the kit reads of a session besides using it: its info (what it wrote).
        self.session = cast(AsyncSession, SimpleNamespace(info={}))

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        self.events.append("begin")
        try:
            yield self.session
        except BaseException:
            self.events.append("rollback")
            raise
        self.events.append("commit")


def as_access(fake: FakeAccess) -> TenantAccess:
    return cast(TenantAccess, fake)


async def test_transact_runs_the_work_in_one_committed_transaction() -> None:
    fake = FakeAccess()
    seen: list[Any] = []

    async def work(session: AsyncSession) -> str:
        seen.append(session)
        return "done"

    assert await endpoints.transact(as_access(fake), "pipeline", work) == "done"
    assert seen == [fake.session]
    assert fake.events == ["begin", "commit"]


async def test_a_version_mismatch_is_412_naming_the_kind_after_the_rollback() -> None:
    fake = FakeAccess()

    async def work(session: AsyncSession) -> None:
        raise VersionMismatch

    with pytest.raises(PreconditionFailed) as caught:
        await endpoints.transact(as_access(fake), "pipeline stage", work)
    assert caught.value.status_code == 412
    assert caught.value.detail == (
        "The pipeline stage has changed since the ETag was issued; read it again."
    )
    assert isinstance(caught.value.__cause__, VersionMismatch)
    assert fake.events == ["begin", "rollback"]


async def test_other_errors_leave_the_transaction_unchanged() -> None:
    fake = FakeAccess()
    with pytest.raises(NotFound):
        async with endpoints.writing(as_access(fake), "account"):
            raise NotFound("No account with id x.")
    assert fake.events == ["begin", "rollback"]


def test_stale_is_the_one_412_of_a_stale_if_match() -> None:
    err = endpoints.stale("account")
    assert isinstance(err, PreconditionFailed)
    assert err.type == "urn:meridian:problem:precondition-failed"
    assert err.detail == "The account has changed since the ETag was issued; read it again."


# What only the kit does; a router doing it again is a second copy of a mechanism.
KIT_ONLY = (
    "access.write(",  # write transactions open in the flows (endpoints.writing)
    "run_idempotent",  # idempotent creation: endpoints.create
    "request_fingerprint",
    "VersionMismatch",  # a stale If-Match becomes 412 in endpoints.writing
    "PreconditionFailed",
    "Idempotent-Replayed",  # crud.http.stored_response
    "status_code=304",  # crud.http.conditional_response
)
APP = Path(endpoints.__file__).resolve().parents[1]


@pytest.mark.parametrize("router", sorted(APP.glob("*/router.py")), ids=lambda p: p.parent.name)
def test_routers_leave_the_kits_mechanisms_to_the_kit(router: Path) -> None:
    source = router.read_text()
    assert [token for token in KIT_ONLY if token in source] == []
