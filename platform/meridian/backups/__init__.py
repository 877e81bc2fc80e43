"""Tenant archives: one tenant's rows (shard and control plane) in a portable file, and
restoring them onto any shard (``meridian tenants export`` / ``import``)."""
