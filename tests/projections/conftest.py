"""Fixtures of the projection tests: user tokens come from an API with the password grant."""

from __future__ import annotations
