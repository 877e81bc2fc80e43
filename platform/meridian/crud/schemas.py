"""Base classes of request/response schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict


class InputModel(BaseModel):
    """Request bodies: unknown fields are an error, strings are trimmed."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    def changes(self) -> dict[str, Any]:
        """The fields the client actually sent (PATCH semantics)."""
        return self.model_dump(exclude_unset=True)


class RecordRead(BaseModel):
    id: UUID
    created_at: datetime
    updated_at: datetime
    version: int


class Page(BaseModel):
    data: list[Any]
    next_cursor: str | None
