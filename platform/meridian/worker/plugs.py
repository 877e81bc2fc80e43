"""The domains' worker parts, in the order they start (the worker's composition)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meridian.worker.main import PlugFactory

PLUGS: list[PlugFactory] = []
