"""What ``GET /v1/search`` answers (the OpenAPI document's view of it)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field

from meridian.search.models import SearchKind


class SearchHit(BaseModel):
    """One record that matches, as the index shows it."""

    kind: SearchKind
    id: UUID
    # An account's, opportunity's name; a contact's or lead's first and last name; a
    # case's subject.
    title: str
    # An account's domain; a contact's job title; a lead's company and job title.
    subtitle: str | None
    rank: float = Field(
        description="Higher is better, within one query: the integer part is the tier "
        "(4: an email, phone or tax id matched exactly; 3: every word is a whole word of "
        "the title; 2: a whole word of the record; 1: every word starts a word of the "
        "title; 0: starts a word of the record), the fraction prefers records of fewer "
        "words."
    )
    record: dict[str, Any] | None = Field(
        None,
        description="With include=record: the record as its GET returns it (sensitive "
        "fields masked without pii:read).",
    )


class SearchPage(BaseModel):
    data: list[SearchHit]
    next_cursor: str | None
