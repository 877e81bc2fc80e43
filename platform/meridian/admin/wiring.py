"""The platform-admin service's collaborators, taken out of the runtime by its callers
(the admin API, ``meridian.operations``, the load-test seeder)."""

from __future__ import annotations

from meridian.admin.service import AdminDeps
from meridian.runtime import Runtime


def admin_deps(rt: Runtime) -> AdminDeps:
    return AdminDeps(
        control=rt.control,
        engines=rt.engines,
        router=rt.router,
        directory=rt.directory,
        keyring=rt.keyring,
        revocations=rt.revocations,
        cache=rt.cache,
        list_kinds=tuple(rt.list_cache),
        reload_topology=rt.reload_topology,
        tenant_counts=rt.tenant_counts,
        moves=rt.moves,
    )
