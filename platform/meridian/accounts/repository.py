from __future__ import annotations

from uuid import UUID

from sqlalchemy import literal, select

from meridian.accounts.models import Account, AccountRow
from meridian.crud.filters import FilterField, sealed_field
from meridian.crud.repository import TenantRepository

SORTABLE = {
    "name": Account.name,
    "created_at": Account.created_at,
    "updated_at": Account.updated_at,
}
# What ?filter= may name (meridian.crud.filters); the tax id is sealed: equality only,
# through its blind index.
FILTERABLE = {
    "id": FilterField(Account.id, "uuid"),
    "name": FilterField(Account.name, "text"),
    # Stored lower-cased.
    "domain": FilterField(Account.domain, "text", normalize=str.lower),
    "parent_id": FilterField(Account.parent_id, "uuid"),
    "owner_id": FilterField(Account.owner_id, "uuid"),
    "external_id": FilterField(Account.external_id, "text"),
    "created_at": FilterField(Account.created_at, "datetime"),
    "updated_at": FilterField(Account.updated_at, "datetime"),
    "tax_id": sealed_field(max_length=40),
}


class AccountRepository(TenantRepository[AccountRow]):
    model = Account
    # The blind index serves searches only; the key version is in the ciphertext header.
    hidden = TenantRepository.hidden | {"tax_id_bidx", "enc_version"}

    async def ancestors_include(self, start: UUID, candidate: UUID) -> bool:
        """Whether ``candidate`` is ``start`` or one of its ancestors (cycle check)."""
        tid = self.tenant_id
        base = (
            select(Account.id, Account.parent_id, literal(0).label("depth"))
            .where(Account.tenant_id == tid, Account.id == start)
            .cte("chain", recursive=True)
        )
        step = select(Account.id, Account.parent_id, (base.c.depth + 1)).where(
            Account.tenant_id == tid, Account.id == base.c.parent_id, base.c.depth < 1000
        )
        chain = base.union_all(step)
        found = await self.session.scalar(
            select(chain.c.id).where(chain.c.id == candidate).limit(1)
        )
        return found is not None
