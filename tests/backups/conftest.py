"""Fixtures of the tenant archive tests: an operator key, and the archive's
dependencies on the suite's API instance."""

from __future__ import annotations

import os

import httpx
import pytest

from meridian.backups.archive import OperatorKey
from meridian.backups.service import BackupDeps
from meridian.backups.wiring import backup_deps
from tests.encryption.conftest import runtime_of


@pytest.fixture
def key() -> OperatorKey:
    return OperatorKey(os.urandom(32))


@pytest.fixture
def deps(app_client: httpx.AsyncClient) -> BackupDeps:
    return backup_deps(runtime_of(app_client))
