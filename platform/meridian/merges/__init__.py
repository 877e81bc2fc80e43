"""Duplicate detection (a tenant's rules) and N-way merges of records, with undo."""
