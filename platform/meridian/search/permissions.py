"""Who may search: a caller whose role may read at least one of the searched kinds.

Search has no permission of its own; it searches the kinds the role may read and leaves
out the others (``access.can(<plural>, "read")``, checked per request by the router).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, Request

from meridian.deps import RequireTenant, TenantAccess
from meridian.errors import Forbidden
from meridian.search.models import KINDS

# The permission object of each kind (the catalogue's plural).
OBJECTS: dict[str, str] = {
    "account": "accounts",
    "contact": "contacts",
    "lead": "leads",
    "opportunity": "opportunities",
    "case": "cases",
}


class RequireReadOfAny(RequireTenant):
    """The tenant dependency for ``read`` on any one of ``objects``.

    It declares the first (``accounts``: every template role that reads records reads
    accounts), which is what the OpenAPI document and the route's checks see; a role
    denied it is tried on the others in turn. Each try is the whole cached chain (token,
    tenant, actor, policy: a few microseconds once warm), so a role that reads accounts
    pays nothing extra.
    """

    def __init__(self, objects: Sequence[str]) -> None:
        super().__init__(objects[0], "read")
        self.objects = tuple(objects)
        self._others = tuple(RequireTenant(obj, "read") for obj in objects[1:])

    async def __call__(self, request: Request) -> TenantAccess:
        try:
            return await super().__call__(request)
        except Forbidden as exc:
            # Only the role's denial is worth another try (not a platform token, a
            # missing scope or a suspended tenant).
            if exc.extensions.get("object") != self.obj:
                raise
        for other in self._others:
            try:
                return await other(request)
            except Forbidden as exc:
                if exc.extensions.get("object") != other.obj:
                    raise
        raise Forbidden(
            f"Searching needs read on at least one of {', '.join(self.objects)}.",
            object=self.obj,
            action=self.act,
        )


CanSearch = Annotated[TenantAccess, Depends(RequireReadOfAny([OBJECTS[kind] for kind in KINDS]))]
