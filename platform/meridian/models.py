"""Imports every model so each plane's metadata is complete (Alembic, tests)."""

from __future__ import annotations

from authz.models import CasbinRule, PolicyVersion, RecordShare, TenantRole, UserClosure
from meridian.accounts.models import Account
from meridian.activities.models import Activity
from meridian.cases.models import Case
from meridian.contacts.models import Contact
from meridian.crud.custom import CustomValue, FieldDefinition
from meridian.crud.idempotency import IdempotencyKey
from meridian.events.models import EventOutbox, EventPending, EventRelay, EventSequence
from meridian.fulfilment.models import (
    FulfilmentConfig,
    FulfilmentSaga,
    FulfilmentStep,
    FulfilmentUnfinished,
)
from meridian.leads.models import Lead, LeadScoringRule
from meridian.merges.models import DuplicateRule, MergeRecord
from meridian.oauth.models import OAuthClient, RefreshToken, SigningKey, TokenRevocation
from meridian.opportunities.models import Opportunity
from meridian.pipelines.models import Pipeline, PipelineStage
from meridian.projections.models import InteractionSummary
from meridian.search.models import SearchEntry, SearchTerm
from meridian.transfers.models import (
    DataExport,
    DataFile,
    DataFileChunk,
    DataImport,
    TransferUnfinished,
)
from meridian.users.models import AppUser
from meridian.webhooks.models import Webhook, WebhookDelivery
from sharding.models import Shard, TenantMove, TenantResidency
from tenancy.models import DirectoryEntry, Tenant, TenantKey
from tenancy.planes import ControlBase, ShardBase

CONTROL_MODELS = (
    Tenant,
    DirectoryEntry,
    Shard,
    OAuthClient,
    SigningKey,
    RefreshToken,
    TokenRevocation,
    CasbinRule,
    TenantRole,
    PolicyVersion,
    TenantKey,
    TenantMove,
)
SHARD_MODELS = (
    TenantResidency,
    IdempotencyKey,
    Account,
    Contact,
    Pipeline,
    PipelineStage,
    Opportunity,
    Activity,
    AppUser,
    UserClosure,
    RecordShare,
    EventSequence,
    EventRelay,
    EventOutbox,
    EventPending,
    InteractionSummary,
    SearchEntry,
    SearchTerm,
    Lead,
    LeadScoringRule,
    Case,
    FieldDefinition,
    CustomValue,
    FulfilmentConfig,
    FulfilmentSaga,
    FulfilmentStep,
    FulfilmentUnfinished,
    Webhook,
    WebhookDelivery,
    DuplicateRule,
    MergeRecord,
    DataFile,
    DataFileChunk,
    DataExport,
    DataImport,
    TransferUnfinished,
)
control_metadata = ControlBase.metadata
shard_metadata = ShardBase.metadata
