"""Fixtures of the sharing tests."""

from __future__ import annotations

from tests.contacts.conftest import intruder
from tests.fixtures.users import user_api

__all__ = ["intruder", "user_api"]
