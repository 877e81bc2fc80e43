"""The dev platform's data folder: its KEK is made once, private, and kept."""

from __future__ import annotations

import stat
from pathlib import Path

from meridian_dev.datadir import ensure_kek
from tenancy.keyring import LocalKeyProvider


def test_dev_makes_a_private_kek_once(tmp_path: Path) -> None:
    path = ensure_kek(tmp_path / "kek")
    first = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_kek(path).read_text() == first  # kept across runs
    assert LocalKeyProvider.from_file(path).primary_id == "local-1"
