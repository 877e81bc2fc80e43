"""Fixtures of the kit's tests that go through the API (tests/crud/test_filter_lists.py)."""

from __future__ import annotations

from tests.contacts.conftest import intruder
from tests.fixtures.users import user_api

__all__ = ["intruder", "user_api"]
