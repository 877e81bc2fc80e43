"""Without a key-encryption key nothing starts: no silent default key."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from meridian.cli import app
from meridian.runtime import Runtime
from meridian.settings import KeyConfigError, Settings
from tenancy.keyring import LocalKeyProvider

if TYPE_CHECKING:
    from tests.fixtures.databases import TestDatabases


async def test_runtime_refuses_to_start_without_a_kek(databases: TestDatabases) -> None:
    settings = databases.settings(kek=None)
    with pytest.raises(KeyConfigError, match="MERIDIAN_KEK"):
        await Runtime.start(settings)


def test_serve_refuses_to_start_without_a_kek(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from meridian.settings import get_settings

    for name in [n for n in os.environ if n.startswith(("MERIDIAN_KEK", "MERIDIAN_DEV_JSON"))]:
        monkeypatch.delenv(name)
    # Away from the checkout: after `scripts/dev`, its ./.meridian/dev.json (which names
    # a KEK file) would otherwise be picked up, as it is meant to be for a user.
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["serve"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert "no key-encryption key configured" in result.output


def test_kek_from_a_file_or_json(tmp_path: Path) -> None:
    secret = LocalKeyProvider.generate_secret()
    path = tmp_path / "kek"
    path.write_text(secret + "\n")
    assert Settings(kek_file=path).key_provider().primary_id == "local-1"
    rotating = json.dumps(
        {
            "primary": "kek-2",
            "keys": {"local-1": secret, "kek-2": base64.b64encode(b"2" * 32).decode()},
        }
    )
    assert Settings(kek=rotating).key_provider().primary_id == "kek-2"
    with pytest.raises(KeyConfigError):
        Settings(kek="not base64 of 32 bytes").key_provider()
