"""Capability checks and record scope."""
