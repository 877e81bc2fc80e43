"""Shard topology, per-shard engines, the tenant-entering router and placement."""
