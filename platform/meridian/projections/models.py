"""The interaction summary of a record: one row per contact, account or opportunity
that has activities, derived from the ``activity`` table (never written by a request).

A summary is a projection: everything in it can be computed again from the activities
(``meridian.projections.repository``), which is what every write of it does.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TypedDict
from uuid import UUID

from sqlalchemy import CheckConstraint, DateTime, Index, Integer, String, func, literal_column
from sqlalchemy.orm import Mapped, mapped_column

from tenancy.planes import ShardBase, TenantScoped

RECORD_KINDS = ("account", "contact", "opportunity")
# The activity types and the count columns of each window (``<plural>_<window>``).
TYPE_COLUMNS = {
    "call": "calls",
    "email": "emails",
    "meeting": "meetings",
    "note": "notes",
    "task": "tasks",
}
WINDOWS = {"30d": 720, "90d": 2160}  # in hours: a day is 24 h whatever the time zone

# Sort keys of nullable times: keyset cursors need a value on every row, so a record
# without a past activity sorts as the oldest, one without a next task as the latest.
# Constants in the SQL (not parameters), so the expression indexes below serve them.
NEVER = datetime(1, 1, 1, tzinfo=UTC)
NO_TASK = datetime(9999, 12, 31, tzinfo=UTC)
NEVER_SQL = "'0001-01-01 00:00:00+00'::timestamptz"
NO_TASK_SQL = "'9999-12-31 00:00:00+00'::timestamptz"


class InteractionSummary(TenantScoped, ShardBase):
    __tablename__ = "interaction_summary"
    __table_args__ = (
        CheckConstraint("record_kind IN ('account', 'contact', 'opportunity')", name="record_kind"),
        Index(
            "ix_interaction_summary_activities_30d",
            "tenant_id",
            "record_kind",
            "activities_30d",
            "record_id",
        ),
        Index(
            "ix_interaction_summary_activities_90d",
            "tenant_id",
            "record_kind",
            "activities_90d",
            "record_id",
        ),
        # The refresh job's scan: rows whose windows or next task have moved on.
        Index("ix_interaction_summary_refresh", "tenant_id", "refresh_at"),
    )

    record_kind: Mapped[str] = mapped_column(String(16), primary_key=True, sort_order=-10)
    record_id: Mapped[UUID] = mapped_column(primary_key=True, sort_order=-9)
    # The latest activity that has happened (occurred_at up to the computation).
    last_activity_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_activity_type: Mapped[str | None] = mapped_column(String(16))
    last_activity_id: Mapped[UUID | None]
    # Activities in (computed_at - window, computed_at], by type and in all.
    calls_30d: Mapped[int] = mapped_column(Integer)
    emails_30d: Mapped[int] = mapped_column(Integer)
    meetings_30d: Mapped[int] = mapped_column(Integer)
    notes_30d: Mapped[int] = mapped_column(Integer)
    tasks_30d: Mapped[int] = mapped_column(Integer)
    activities_30d: Mapped[int] = mapped_column(Integer)
    calls_90d: Mapped[int] = mapped_column(Integer)
    emails_90d: Mapped[int] = mapped_column(Integer)
    meetings_90d: Mapped[int] = mapped_column(Integer)
    notes_90d: Mapped[int] = mapped_column(Integer)
    tasks_90d: Mapped[int] = mapped_column(Integer)
    activities_90d: Mapped[int] = mapped_column(Integer)
    # The earliest task due after the computation (a task's due time is its occurred_at).
    next_task_id: Mapped[UUID | None]
    next_task_due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The statement time of the computation: the "now" of the windows, and what orders
    # concurrent recomputations (the later one wins).
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # When the row stops being exact by the passing of time alone: an activity leaves a
    # window or a future one comes due; at most a day after computed_at.
    refresh_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


_TZ = DateTime(timezone=True)
# Sort expressions, the same in the indexes (the migration's) and in the list's SQL.
LAST_ACTIVITY_KEY = func.coalesce(
    InteractionSummary.last_activity_at, literal_column(NEVER_SQL, _TZ)
)
NEXT_TASK_KEY = func.coalesce(InteractionSummary.next_task_due_at, literal_column(NO_TASK_SQL, _TZ))
Index(
    "ix_interaction_summary_last_activity",
    InteractionSummary.tenant_id,
    InteractionSummary.record_kind,
    LAST_ACTIVITY_KEY,
    InteractionSummary.record_id,
)
Index(
    "ix_interaction_summary_next_task",
    InteractionSummary.tenant_id,
    InteractionSummary.record_kind,
    NEXT_TASK_KEY,
    InteractionSummary.record_id,
)


class InteractionRow(TypedDict):
    """A summary as the reads return it (without the tenant)."""

    record_kind: str
    record_id: UUID
    last_activity_at: datetime | None
    last_activity_type: str | None
    last_activity_id: UUID | None
    calls_30d: int
    emails_30d: int
    meetings_30d: int
    notes_30d: int
    tasks_30d: int
    activities_30d: int
    calls_90d: int
    emails_90d: int
    meetings_90d: int
    notes_90d: int
    tasks_90d: int
    activities_90d: int
    next_task_id: UUID | None
    next_task_due_at: datetime | None
    computed_at: datetime
    refresh_at: datetime
