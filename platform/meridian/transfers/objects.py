"""The objects that import and export, each with what its domain hands the kit: its
repository and list fields (the export walks the list as ``GET /v1/{object}`` does), its
schemas, and its services' create and update as ``crud.batch.Writes`` (an import writes
each row through the batch flow, so through the same services as ``POST`` and ``PATCH``).

This is the one module of ``meridian.transfers`` that imports the CRM domains; each edge
is declared in pyproject.toml's independence contract. The batch routes build the same
``Writes`` from the same function of each domain's service (``writes``), per request; a
job has no request, so it calls it with the job's tenant and the keyring.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from pydantic import BaseModel
from sqlalchemy.orm import InstrumentedAttribute

from meridian.accounts import repository as accounts
from meridian.accounts import service as account_service
from meridian.accounts.schemas import AccountCreate, AccountRead, AccountUpdate
from meridian.cases import repository as cases
from meridian.cases import service as case_service
from meridian.cases.schemas import CaseCreate, CaseRead, CaseUpdate
from meridian.contacts import repository as contacts
from meridian.contacts import service as contact_service
from meridian.contacts.schemas import ContactCreate, ContactRead, ContactUpdate
from meridian.crud.batch import Writes
from meridian.crud.filters import FilterField
from meridian.crud.repository import TenantRepository
from meridian.crud.schemas import InputModel
from meridian.leads import repository as leads
from meridian.leads import service as lead_service
from meridian.leads.schemas import LeadCreate, LeadRead, LeadUpdate
from meridian.opportunities import repository as opportunities
from meridian.opportunities import service as opportunity_service
from meridian.opportunities.schemas import OpportunityCreate, OpportunityRead, OpportunityUpdate
from tenancy.context import TenantContext
from tenancy.keyring import TenantKeyring

CUSTOM = "custom"
CUSTOM_PREFIX = "custom."
# A custom field's name, as crud.custom.NAME has it, after "custom.".
CUSTOM_NAME = r"[a-z][a-z0-9_]{0,62}"
# The writes of one job: its tenant, the keyring, and whether a contact whose email is
# on file is created anyway (POST /v1/contacts?allow_duplicate=true).
WritesFor = Callable[[TenantContext, TenantKeyring, bool], Writes[Any, Any]]


@dataclass(frozen=True)
class Transferable:
    object: str  # the API's plural (and the permission object)
    kind: str  # the table
    repository: type[TenantRepository[Any]]
    filterable: Mapping[str, FilterField]
    sortable: Mapping[str, InstrumentedAttribute[Any]]
    create_model: type[InputModel]
    update_model: type[InputModel]
    read_model: type[BaseModel]
    writes: WritesFor
    # What an import may match existing records by (a sealed field through its index).
    match_by: tuple[str, ...] = ("external_id",)
    default_sort: str = "created_at"

    @cached_property
    def columns(self) -> tuple[str, ...]:
        """The record's fields as the API returns them, in order, but ``custom``."""
        return tuple(name for name in self.read_model.model_fields if name != CUSTOM)

    @cached_property
    def importable(self) -> tuple[str, ...]:
        """The fields a row may set: those of the create or the update schema."""
        names = set(self.create_model.model_fields) | set(self.update_model.model_fields)
        return tuple(sorted(names - {CUSTOM}))


OBJECTS: Mapping[str, Transferable] = {
    t.object: t
    for t in (
        Transferable(
            "accounts",
            "account",
            accounts.AccountRepository,
            accounts.FILTERABLE,
            accounts.SORTABLE,
            AccountCreate,
            AccountUpdate,
            AccountRead,
            account_service.writes,
        ),
        Transferable(
            "contacts",
            "contact",
            contacts.ContactRepository,
            contacts.FILTERABLE,
            contacts.SORTABLE,
            ContactCreate,
            ContactUpdate,
            ContactRead,
            contact_service.writes,
            match_by=("external_id", "email"),
        ),
        Transferable(
            "leads",
            "lead",
            leads.LeadRepository,
            leads.FILTERABLE,
            leads.SORTABLE,
            LeadCreate,
            LeadUpdate,
            LeadRead,
            lead_service.writes,
            match_by=("external_id", "email"),
        ),
        Transferable(
            "opportunities",
            "opportunity",
            opportunities.OpportunityRepository,
            opportunities.FILTERABLE,
            opportunities.SORTABLE,
            OpportunityCreate,
            OpportunityUpdate,
            OpportunityRead,
            opportunity_service.writes,
        ),
        Transferable(
            "cases",
            "case",
            cases.CaseRepository,
            cases.FILTERABLE,
            cases.SORTABLE,
            CaseCreate,
            CaseUpdate,
            CaseRead,
            case_service.writes,
        ),
    )
}
