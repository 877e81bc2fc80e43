"""Fixtures of the kit's tests that go through the API (tests/crud/test_filter_lists.py)."""

from __future__ import annotations

from tests.contacts.conftest import intruder

__all__ = ["intruder"]
