"""The field-level rule: without ``pii:read`` sensitive fields are returned masked.

The sensitive fields of each kind are declared here and nowhere else. Masking happens
at response time on a copy: cached rows stay unmasked (and personal data stays out of
shared caches), so one cache entry serves principals with and without the permission.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

PII_PERMISSION = ("pii", "read")
_STARS = "***"
# A value hidden whole (a sensitive custom field's, whatever its type).
MASKED = _STARS


def mask_email(value: str) -> str:
    """``jane.doe@example.com`` → ``j***@example.com``: the domain stays (it is the
    company, which the account already shows); the mailbox does not."""
    local, at, domain = value.rpartition("@")
    if not at or not local:
        return _STARS
    return f"{local[0]}{_STARS}@{domain}"


def _last_four(value: str) -> str:
    return "".join(ch for ch in value if ch.isalnum())[-4:]


def mask_phone(value: str) -> str:
    """``+1 415 555 1234`` → ``***-***-1234``; short numbers are hidden entirely."""
    digits = "".join(ch for ch in value if ch.isdigit())
    if len(digits) < 7:
        return f"{_STARS}-{_STARS}"
    return f"{_STARS}-{_STARS}-{digits[-4:]}"


def mask_tax_id(value: str) -> str:
    """``DE123456789`` → ``*******6789``; short ids are hidden entirely."""
    tail = _last_four(value)
    if len(tail) < 4 or len(value) < 8:
        return _STARS
    return "*" * (len(value) - 4) + tail


Masker = Callable[[str], str]

SENSITIVE_FIELDS: Mapping[str, Mapping[str, Masker]] = {
    "contact": {"email": mask_email, "phone": mask_phone, "tax_id": mask_tax_id},
    "account": {"tax_id": mask_tax_id},
    "lead": {"email": mask_email, "phone": mask_phone},
}


def is_sensitive(kind: str) -> bool:
    return kind in SENSITIVE_FIELDS


def mask_row(kind: str, row: Mapping[str, Any], can_read_pii: bool) -> Mapping[str, Any]:
    """``row`` itself when nothing is to be hidden, else a masked copy (never mutated:
    it may be a cached value)."""
    fields = SENSITIVE_FIELDS.get(kind)
    if can_read_pii or not fields:
        return row
    masked: dict[str, Any] | None = None
    for name, mask in fields.items():
        value = row.get(name)
        if isinstance(value, str) and value:
            if masked is None:
                masked = dict(row)
            masked[name] = mask(value)
    return row if masked is None else masked
