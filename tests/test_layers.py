"""What import-linter cannot see: no domain reaches into the runtime through the
request's ``TenantAccess`` (``access.runtime.…``). Domains get the runtime's parts as
small typed dependencies (``meridian.deps.Keyring``, ``ControlPlane``, …) or, for a
service's collaborators, from their wiring (``admin.wiring``, the oauth routers)."""

from __future__ import annotations

import ast
from pathlib import Path

import meridian

DOMAINS = (
    "accounts",
    "activities",
    "admin",
    "contacts",
    "oauth",
    "opportunities",
    "pipelines",
    "roles",
    "sharing",
    "users",
)
PACKAGE = Path(meridian.__file__).parent


def runtime_reads(source: str) -> list[int]:
    """Lines where ``source`` reads an attribute named ``runtime``."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute) and node.attr == "runtime"
    ]


def test_no_domain_reads_the_runtime_off_the_request() -> None:
    found = {
        str(path.relative_to(PACKAGE)): lines
        for domain in DOMAINS
        for path in sorted((PACKAGE / domain).rglob("*.py"))
        if (lines := runtime_reads(path.read_text()))
    }
    assert found == {}


def test_the_check_sees_a_runtime_read() -> None:
    assert runtime_reads("def f(access):\n    return access.runtime.keyring\n") == [2]
