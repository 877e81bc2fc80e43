"""Fixtures of the users tests."""

from __future__ import annotations

from tests.contacts.conftest import intruder

__all__ = ["intruder"]
