"""Fixtures of the import and export tests: a worker for the module (small chunks, so
a test's few hundred rows take several transactions), user tokens, another tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from meridian.settings import Settings
from meridian.worker.main import RunningWorker
from tests.fixtures.worker import running_worker

# Rows per import transaction and per export page in these tests.
CHUNK_ROWS = 40


@pytest.fixture(scope="module")
async def worker(settings: Settings) -> AsyncIterator[RunningWorker]:
    async with running_worker(
        settings, import_chunk_rows=CHUNK_ROWS, export_page_rows=CHUNK_ROWS
    ) as running:
        yield running
