"""Capability questions the users, sharing and record-scope flows ask beyond the one
(object, action) their route declares. Decisions are Casbin's (``TenantAccess.can``,
memoised, no I/O)."""

from __future__ import annotations

from uuid import UUID

from meridian.deps import TenantAccess

RECORDS_READ_ALL = ("records", "read_all")


def sees_all_records(access: TenantAccess) -> bool:
    """Clients act for the whole tenant; a user sees everything if their role may."""
    return access.actor.user_id is None or access.can(*RECORDS_READ_ALL)


def record_viewer(access: TenantAccess) -> UUID | None:
    """The user whose record scope applies to this request; None when it sees all."""
    return None if sees_all_records(access) else access.actor.user_id
