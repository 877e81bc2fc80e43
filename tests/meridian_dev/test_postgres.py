"""Private PostgreSQL clusters with either engine's binaries, in folders the server user
could not traverse to (a mode-700 home), as root and not."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from meridian_dev.postgres import (
    LocalCluster,
    LocalPgError,
    PgEngine,
    embedded_bin_dir,
    free_port,
    reachable,
    server_user,
    staged_bin_dir,
)
from tests.fixtures.dev_platform import private_workdir

pytestmark = pytest.mark.slow


@pytest.fixture
def closed_folder() -> Iterator[Path]:
    """A folder only its owner may enter, with a folder inside it."""
    outer = private_workdir("meridian-localpg-")
    try:
        yield outer / "inner"
    finally:
        shutil.rmtree(outer, ignore_errors=True)


@pytest.mark.parametrize(("engine", "major"), [("embedded", 16), ("system", 15)])
def test_cluster_lives_under_a_closed_folder(
    closed_folder: Path, engine: PgEngine, major: int
) -> None:
    cluster = LocalCluster(closed_folder / "pg", port=free_port(), engine=engine, fsync=False)
    try:
        assert cluster.initdb() is True
        assert cluster.initdb() is False  # made once
        assert cluster.data_major() == major == cluster.binaries_major()
        cluster.start()
        assert cluster.is_running()
        assert cluster.running_port() == cluster.port
        assert cluster.sql("SHOW server_version_num").startswith(str(major))
        cluster.ensure_role("meridian_owner")
        assert cluster.ensure_database("lpg_check", owner="meridian_owner") is True
        assert cluster.ensure_database("lpg_check", owner="meridian_owner") is False
        cluster.stop()
        assert not cluster.is_running()
        cluster.start()  # and again, after a clean stop
        assert cluster.sql("SELECT count(*) FROM pg_database WHERE datname = 'lpg_check'") == "1"
    finally:
        cluster.stop("immediate")
    # Nothing above the cluster was opened up for the server user.
    assert oct(closed_folder.parent.stat().st_mode & 0o777) == oct(0o700)


def test_a_cluster_is_not_started_by_another_major_version(closed_folder: Path) -> None:
    made = LocalCluster(closed_folder / "pg", port=free_port(), engine="system", fsync=False)
    made.initdb()
    other = LocalCluster(made.root, port=made.port, engine="embedded", fsync=False)
    with pytest.raises(
        LocalPgError, match=r"made by PostgreSQL 15.*embedded binaries are PostgreSQL 16"
    ):
        other.start()
    assert not made.is_running()


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A root-owned folder anyone may traverse (pytest's tmp_path is mode 700)."""
    folder = Path(tempfile.mkdtemp(prefix="meridian-staging-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_unreachable_embedded_binaries_are_staged_where_the_server_user_reaches_them(
    closed_folder: Path, open_folder: Path
) -> None:
    """A virtualenv under a closed home: as root, the binaries are copied (same layout,
    shared libraries included) to a root-owned folder the server user can reach; run as
    another user, the installed ones are used as they are."""
    if os.geteuid() != 0:
        installed = embedded_bin_dir()
        assert staged_bin_dir(installed, server_user(), root=open_folder) == installed
        return
    site = closed_folder / "site-packages"
    installed = embedded_bin_dir()
    package = installed.parent.parent
    shutil.copytree(package, site / package.name, symlinks=True)
    shutil.copytree(package.parent / "pgserver.libs", site / "pgserver.libs", symlinks=True)
    copy = site / package.name / "pginstall" / "bin"
    user = server_user()
    assert not reachable(copy / "initdb", user)
    staging = open_folder / "staging"
    staged = staged_bin_dir(copy, user, root=staging)
    assert staged.is_relative_to(staging)
    assert reachable(staged / "initdb", user)
    assert staged_bin_dir(copy, user, root=staging) == staged  # once per version
    # The server user runs them: every shared library resolves from the staged copy.
    for binary in ("postgres", "initdb", "pg_ctl", "psql"):
        done = subprocess.run(
            [str(staged / binary), "--version"],
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
        )
        assert done.returncode == 0, (binary, done.stderr)
        assert "16." in done.stdout
