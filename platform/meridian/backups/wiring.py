"""The collaborators of tenant exports and imports, taken out of the runtime by their
callers (``meridian.operations``, the tests)."""

from __future__ import annotations

from meridian.backups.service import BackupDeps
from meridian.runtime import Runtime


def backup_deps(rt: Runtime) -> BackupDeps:
    return BackupDeps(
        control_owner_dsn=rt.settings.control_migrate_dsn,
        keyring=rt.keyring,
        directory=rt.directory,
        caches=rt,
        reload_topology=rt.reload_topology,
        tenant_counts=rt.tenant_counts,
        announce_policy=rt.announce_policy,
    )
