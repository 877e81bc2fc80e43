"""Sensitive fields: which they are, and how rows cross the encryption boundary."""
