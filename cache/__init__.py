"""Two-level cache (process memory + Redis)."""
