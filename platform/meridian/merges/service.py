"""Duplicate rules, finding a record's duplicates, merging records and undoing a merge.

A merge runs in one write transaction: the group is locked (every record in the
caller's scope, or 404), the snapshot taken (rows as stored: ciphertext stays
ciphertext), every reference to a merged record moved to the survivor (records through
their repositories, so events, caches and hooks see each change; activities, shares and
archived lookup values by statement), the merged records deleted through their
repository, and the survivor updated through its kind's own service (validation,
encryption, custom fields, lead scoring), like lead conversion creates records through
theirs. An undo puts everything back in one transaction, or refuses (see ``undo``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from meridian.accounts.service import account as account_service
from meridian.contacts.service import contact as contact_service
from meridian.crud import custom, hooks
from meridian.crud.repository import WRITTEN, Row, TenantRepository
from meridian.encryption.fields import SENSITIVE, open_row, search_indexes
from meridian.errors import NOT_FOUND, UNIQUE, Conflict, Forbidden, Gone, NotFound, invalid_field
from meridian.events import outbox
from meridian.ids import new_id
from meridian.leads.service import ConvertedLead
from meridian.leads.service import lead as lead_service
from meridian.merges import matching
from meridian.merges.matching import FIELDS, PLURALS, MatchField, Rule, match_key
from meridian.merges.models import DuplicateRuleRow, MergeRecordRow
from meridian.merges.repository import (
    BOOKKEEPING,
    UNDO_WINDOW,
    DuplicateRuleRepository,
    MergeRepository,
    Merging,
    Reference,
    decode,
    encode,
    fetch_candidates,
    references_to,
    table_of,
)
from meridian.merges.schemas import UPDATE_MODELS, DuplicateRuleUpdate, MergeRequest
from meridian.projections.repository import InteractionWriter
from tenancy.context import TenantContext
from tenancy.keyring import TenantKeyring

# The kinds whose interaction summaries a merge recomputes (meridian.projections).
SUMMARISED = ("account", "contact")
Apply = Callable[[AsyncSession, TenantContext, UUID, Any, TenantKeyring], Awaitable[Row | None]]


async def _update_account(
    session: AsyncSession, tenant: TenantContext, rid: UUID, body: Any, keyring: TenantKeyring
) -> Row | None:
    return await account_service.update(session, tenant, rid, body, None, keyring)


async def _update_contact(
    session: AsyncSession, tenant: TenantContext, rid: UUID, body: Any, keyring: TenantKeyring
) -> Row | None:
    return await contact_service.update(session, tenant, rid, body, None, keyring)


async def _update_lead(
    session: AsyncSession, tenant: TenantContext, rid: UUID, body: Any, keyring: TenantKeyring
) -> Row | None:
    return await lead_service.update(session, tenant, rid, body, None, keyring)


# Each kind's own update path: the survivor takes its values through it.
UPDATES: Mapping[str, Apply] = {
    "account": _update_account,
    "contact": _update_contact,
    "lead": _update_lead,
}


def repository(kind: str) -> type[TenantRepository[Any]]:
    repo = TenantRepository.for_kind(kind)
    if repo is None:  # pragma: no cover - every kind's domain is imported by the app
        raise RuntimeError(f"no repository for {kind}")
    return repo


def note(session: AsyncSession, table: str, record_id: UUID | None) -> None:
    """A write made here, not through a repository, for the caches to forget after the
    commit (as ``TenantRepository`` notes its own, ``crud.repository.written``)."""
    session.info.setdefault(WRITTEN, set()).add((table, record_id))


# -- duplicate rules ----------------------------------------------------------------------------
def _check_conditions(kind: str, conditions: Sequence[Mapping[str, Any]]) -> None:
    """Each field once, and each a field of the rule's kind (a creation's schema says
    so per kind; a change names fields of any kind: one of another kind than the rule's,
    stored, is a conflict with it)."""
    seen: set[str] = set()
    for n, condition in enumerate(conditions):
        field = condition["field"]
        spec = FIELDS[kind].get(field)
        if spec is None or (condition["type"] == "fuzzy" and not spec.fuzzy):
            similar = "compares similar" if condition["type"] == "fuzzy" else "compares"
            fields = [f for f, s in FIELDS[kind].items() if s.fuzzy or condition["type"] == "exact"]
            raise Conflict(
                f"conditions.{n}: this is a {kind} rule, which {similar} "
                f"{', '.join(fields)}; not {field}."
            )
        where = f"conditions.{n}.field"
        if field in seen:
            raise invalid_field(where, f"{field} is compared once per rule", UNIQUE)
        seen.add(field)


class DuplicateRuleService:
    async def create(
        self, session: AsyncSession, tenant: TenantContext, body: BaseModel
    ) -> DuplicateRuleRow:
        values = body.model_dump(mode="json")
        _check_conditions(values["kind"], values["conditions"])
        repo = DuplicateRuleRepository(session, tenant)
        await self._check_name(repo, values["kind"], values["name"], None)
        return await repo.insert({"id": new_id(), **values})

    async def update(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        rule_id: UUID,
        body: DuplicateRuleUpdate,
        expected_version: int | None,
    ) -> DuplicateRuleRow | None:
        repo = DuplicateRuleRepository(session, tenant)
        kind = await repo.kind_of(rule_id)
        if kind is None:
            return None
        values = body.model_dump(mode="json", include=set(body.changes()))
        if "conditions" in values:
            _check_conditions(kind, values["conditions"])
        if "name" in values:
            await self._check_name(repo, kind, values["name"], rule_id)
        return await repo.update(rule_id, values, expected_version=expected_version)

    async def _check_name(
        self, repo: DuplicateRuleRepository, kind: str, name: str, rule_id: UUID | None
    ) -> None:
        if await repo.name_taken(kind, name, rule_id) is not None:
            raise Conflict(f"The tenant has a {kind} duplicate rule named {name!r}.")


# -- finding duplicates -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Found:
    """A record's duplicates: (stored row, score, hits) best first, and the rules used."""

    matches: list[tuple[dict[str, Any], float, list[matching.Hit]]]
    rules: tuple[Rule, ...]


async def rules_for(conn: asyncpg.Connection, tenant_id: UUID, kind: str) -> tuple[Rule, ...]:
    """The tenant's active rules of ``kind``; the defaults when it has defined none."""
    rows = await DuplicateRuleRepository.fetch_of_kind(conn, tenant_id, kind)
    if not rows:
        return matching.DEFAULT_RULES[kind]
    return tuple(Rule.of(r) for r in rows if r["active"])


def _candidates_of(
    repo: type[TenantRepository[Any]],
    kind: str,
    rule: Rule,
    record: Mapping[str, Any],
    indexes: Mapping[str, frozenset[bytes]],
) -> Any:
    """The indexed condition that finds ``rule``'s candidates (a sealed field's blind
    index first, then a plain column, then a match key); None when the record has no
    value for any (then the rule matches nothing)."""
    chosen: Any = None
    rank = 3
    for condition in rule.conditions:
        spec: MatchField = FIELDS[kind][condition.field]
        if spec.sealed and indexes.get(condition.field) and rank > 0:
            found = list(indexes[condition.field])
            chosen, rank = repo.attr(f"{condition.field}_bidx").in_(found), 0
        elif spec.column is not None and record.get(spec.column) is not None and rank > 1:
            chosen, rank = repo.attr(spec.column) == record[spec.column], 1
        elif spec.key is not None and record.get(spec.key) and rank > 2:
            value = str(record[spec.key])
            chosen, rank = match_key(repo.attr(spec.key)) == match_key(value), 2
    return chosen


async def find_duplicates(
    conn: asyncpg.Connection,
    keyring: TenantKeyring,
    tenant_id: UUID,
    kind: str,
    record_id: UUID,
    viewer: UUID | None,
    limit: int,
) -> Found | None:
    """``record_id``'s duplicates that ``viewer`` may see (None: the record is not in
    the viewer's scope), under the tenant's rules, in one read transaction."""
    repo = repository(kind)
    record = await repo.fetch_visible(conn, tenant_id, record_id, viewer)
    if record is None:
        return None
    rules = await rules_for(conn, tenant_id, kind)
    clear = await open_row(keyring, tenant_id, kind, record, reveal=True)
    sealed_fields = SENSITIVE.get(kind, ())
    wanted = {c.field for r in rules for c in r.conditions if c.field in sealed_fields}
    indexes: dict[str, frozenset[bytes]] = {}
    for field in sorted(wanted):
        value = clear.get(field)
        if value:
            found = await search_indexes(keyring, tenant_id, kind, field, value)
            indexes[field] = frozenset(found)
    extra = [f"{f}_bidx" for f in sealed_fields]
    candidates: dict[UUID, dict[str, Any]] = {}
    for rule in rules:
        criterion = _candidates_of(repo, kind, rule, clear, indexes)
        if criterion is None:
            continue
        for row in await fetch_candidates(
            conn, repo, tenant_id, viewer, record_id, criterion, extra
        ):
            candidates.setdefault(row["id"], row)
    ordered = sorted(candidates.values(), key=lambda r: str(r["id"]))
    matches = matching.ranked(kind, rules, clear, ordered, indexes)[:limit]
    for row, _, _ in matches:
        for column in extra:
            row.pop(column, None)
    return Found(matches, rules)


# -- merging --------------------------------------------------------------------------------------
@dataclass
class Merged:
    """What a merge did (or, in a dry run, would do)."""

    merge_id: UUID
    kind: str
    survivor: dict[str, Any]  # as stored: a GET opens and masks it
    merged_ids: list[UUID]
    reparented: dict[str, int]
    fields: dict[str, dict[str, Any]]  # the preview, values in clear


def _value_of(row: Mapping[str, Any], name: str) -> Any:
    return row.get(name)


def _as_id(value: Any) -> UUID | None:
    try:
        return UUID(str(value)) if value is not None else None
    except ValueError:
        return None


class MergeService:
    async def merge(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        kind: str,
        body: MergeRequest,
        keyring: TenantKeyring,
        *,
        viewer: UUID | None,
        actor: outbox.EventActor,
    ) -> Merged:
        survivor_id, merged_ids = body.survivor_id, list(body.merged_ids)
        if survivor_id in merged_ids:
            raise invalid_field("merged_ids", "must not name the survivor", UNIQUE)
        group = [survivor_id, *merged_ids]
        repo = repository(kind)
        scoped = repo(session, tenant, viewer=viewer)
        # In id order, so two merges of overlapping groups cannot deadlock.
        for record_id in sorted(group):
            if not await scoped.lock_visible(record_id, for_update=True):
                raise NotFound(f"No {kind} with id {record_id}.")
        m = Merging(session, tenant.tenant_id)
        stored = {r["id"]: r for r in await m.stored(kind, group, lock=False)}
        if kind == "lead":
            converted = [rid for rid in group if stored[rid]["status"] == "converted"]
            if converted:
                raise ConvertedLead(
                    f"Lead {converted[0]} was converted; converted leads are kept as they "
                    "were and cannot be merged."
                )
        # In clear for choosing (a sensitive custom value is sealed again for the
        # survivor by its update); the preview is masked by the router without pii:read.
        clear = {
            rid: await open_row(keyring, tenant.tenant_id, kind, row, reveal=True)
            for rid, row in stored.items()
        }
        lookups = await m.lookup_fields(kind)
        own_lookups = {f["name"] for f in lookups if f["object"] == kind and not f["archived_at"]}
        sensitive = {
            f.name for f in await custom.fields_of(session, tenant.tenant_id, kind) if f.sensitive
        }
        changes, preview = self._choose(kind, body, group, clear, own_lookups, sensitive)
        # Checked by the kind's own update schema before anything changes.
        update = self._update_body(kind, changes) if changes else None
        snapshot: dict[str, Any] = {
            "survivor": encode(stored[survivor_id]),
            "merged": [encode(stored[rid]) for rid in merged_ids],
            "custom_values": [encode(r) for r in await m.custom_values(merged_ids)],
        }
        moves, counts = await self._reparent(
            session, tenant, kind, survivor_id, merged_ids, lookups
        )
        snapshot["moves"] = moves
        plain = repo(session, tenant)
        for record_id in merged_ids:
            await plain.delete(record_id, expected_version=None)
        if update is not None:
            await UPDATES[kind](session, tenant, survivor_id, update, keyring)
        if kind == "lead":
            # Its activities now include the merged leads': activity-count rules.
            await lead_service.rescore(session, tenant, [survivor_id])
        await self._summaries(session, tenant.tenant_id, kind, [survivor_id], drop=merged_ids)
        (survivor,) = await m.stored(kind, [survivor_id], lock=False)
        merge_id = new_id()
        reparented = dict(sorted(counts.items()))
        plain.emit_derived(
            "merged",
            survivor,
            {
                "merge_id": str(merge_id),
                "merged_ids": [str(r) for r in merged_ids],
                "reparented": reparented,
            },
        )
        await MergeRepository(session, tenant).add(
            {
                "id": merge_id,
                "kind": kind,
                "survivor_id": survivor_id,
                "merged_ids": [str(r) for r in merged_ids],
                "actor_type": actor.type,
                "actor_id": actor.id,
                "survivor_version": survivor["version"],
                "reparented": reparented,
                "snapshot": snapshot,
            }
        )
        shown = {k: v for k, v in survivor.items() if k not in repo.hidden}
        return Merged(merge_id, kind, shown, merged_ids, reparented, preview)

    # -- the survivor's values ------------------------------------------------------------
    def _choose(
        self,
        kind: str,
        body: MergeRequest,
        group: list[UUID],
        clear: Mapping[UUID, Mapping[str, Any]],
        own_lookups: set[str],
        sensitive: set[str],
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """The survivor's changes, and per field who gave the value: the choice made, else
        the survivor's value, else the first merged record's that has one (a sensitive
        custom field's entry says so: the router masks it without pii:read)."""
        survivor_id = group[0]
        given: BaseModel | None = getattr(body, "fields", None)
        members = set(group)
        changes: dict[str, Any] = {}
        preview: dict[str, dict[str, Any]] = {}

        def pick(name: str, spec: Any, values: Mapping[UUID, Any]) -> tuple[UUID | None, Any]:
            if spec is None:
                chosen = next((rid for rid in group if values[rid] is not None), survivor_id)
                return chosen, values[chosen]
            if isinstance(spec, UUID):
                if spec not in members:
                    raise invalid_field(
                        f"fields.{name}", f"{spec} is none of the merged records", NOT_FOUND
                    )
                return spec, values[spec]
            return None, spec.value

        for name in UPDATE_MODELS[kind].model_fields:
            if name == "custom":
                continue
            values = {rid: _value_of(clear[rid], name) for rid in group}
            chosen, value = pick(name, getattr(given, name, None), values)
            if kind == "account" and name == "parent_id" and _as_id(value) in members:
                # A parent inside the group would be the survivor itself: none.
                value = None
            preview[name] = {
                "chosen": chosen,
                "value": value,
                "candidates": [{"record_id": rid, "value": values[rid]} for rid in group],
            }
            if value != values[survivor_id]:
                changes[name] = value
        custom_given: Mapping[str, Any] = getattr(given, "custom", None) or {}
        names = sorted(
            {n for rid in group for n in (clear[rid].get("custom") or {})} | set(custom_given)
        )
        patch: dict[str, Any] = {}
        for name in names:
            values = {rid: (clear[rid].get("custom") or {}).get(name) for rid in group}
            spec = custom_given.get(name)
            chosen, value = pick(f"custom.{name}", spec, values)
            if name in own_lookups and _as_id(value) in members:
                # A lookup inside the group would name the survivor itself: none.
                value = None
            preview[f"custom.{name}"] = {
                "chosen": chosen,
                "value": value,
                "candidates": [{"record_id": rid, "value": values[rid]} for rid in group],
                "sensitive": name in sensitive,
            }
            if value != values[survivor_id]:
                patch[name] = value
        if patch:
            changes["custom"] = patch
        return changes, preview

    def _update_body(self, kind: str, changes: Mapping[str, Any]) -> BaseModel:
        try:
            return UPDATE_MODELS[kind].model_validate(dict(changes))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise invalid_field(f"fields.{where}", first["msg"]) from exc

    # -- references ---------------------------------------------------------------------------
    async def _reparent(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        kind: str,
        survivor_id: UUID,
        merged_ids: list[UUID],
        lookups: Sequence[Mapping[str, Any]],
    ) -> tuple[list[dict[str, Any]], Counter[str]]:
        """Every reference to a merged record moved to the survivor; what moved, in the
        order it moved (an undo walks it backwards)."""
        m = Merging(session, tenant.tenant_id)
        group = [survivor_id, *merged_ids]
        moves: list[dict[str, Any]] = []
        counts: Counter[str] = Counter()
        for ref in references_to(kind):
            # The group's own rows: the merged go, the survivor's values are chosen.
            rows = await m.referring(ref, merged_ids, exclude=group if ref.table == kind else ())
            if not rows:
                continue
            counts[ref.key] += len(rows)
            table = table_of(ref.table)
            ref_repo = TenantRepository.for_kind(ref.table)
            if "version" in table.c and ref_repo is not None:
                writer = ref_repo(session, tenant)
                for row_id, old in rows:
                    await writer.update(row_id, {ref.column: survivor_id}, expected_version=None)
                    moves.append(
                        {"via": "record", **_ref(ref), "id": str(row_id), "from": str(old)}
                    )
                continue
            by_old: dict[UUID, list[UUID]] = {}
            for row_id, old in rows:
                by_old.setdefault(old, []).append(row_id)
            for old, ids in by_old.items():
                moved = await m.repoint(ref, ids, old, survivor_id)
                moves.append(
                    {"via": "rows", **_ref(ref), "ids": [str(i) for i in moved], "from": str(old)}
                )
            note(session, ref.table, None)
        await self._move_shares(
            session, tenant.tenant_id, kind, survivor_id, merged_ids, moves, counts
        )
        for field in lookups:
            refs = await m.lookups_of([field["id"]], merged_ids)
            for field_id, record_id, old in refs:
                if field["object"] == kind and record_id in group:
                    continue  # the merged go with their values; the survivor's are chosen
                key = f"custom.{field['object']}.{field['name']}"
                counts[key] += 1
                if field["archived_at"] is not None:
                    await m.repoint_lookup(field_id, record_id, old, survivor_id)
                    moves.append(
                        {
                            "via": "archived_lookup",
                            "table": field["object"],
                            "column": f"custom.{field['name']}",
                            "field_id": str(field_id),
                            "id": str(record_id),
                            "from": str(old),
                        }
                    )
                    continue
                writer = repository(field["object"])(session, tenant)
                await writer.update(
                    record_id, {"custom": {field["name"]: str(survivor_id)}}, expected_version=None
                )
                moves.append(
                    {
                        "via": "lookup",
                        "table": field["object"],
                        "column": f"custom.{field['name']}",
                        "field": field["name"],
                        "id": str(record_id),
                        "from": str(old),
                    }
                )
        return moves, counts

    async def _move_shares(
        self,
        session: AsyncSession,
        tenant_id: UUID,
        kind: str,
        survivor_id: UUID,
        merged_ids: list[UUID],
        moves: list[dict[str, Any]],
        counts: Counter[str],
    ) -> None:
        """Shares of a merged record become the survivor's, but for a grant the survivor
        has already (then the share goes: no grant twice)."""
        m = Merging(session, tenant_id)
        granted = {(s["user_id"], s["team_id"]) for s in await m.shares_of(kind, [survivor_id])}
        for share in await m.shares_of(kind, merged_ids):
            grantee = (share["user_id"], share["team_id"])
            if grantee in granted:
                await m.drop_share(share["id"])
                _share_event(session, tenant_id, "deleted", share)
                moves.append({"via": "dropped_share", "row": encode(share)})
                counts["record_share.dropped"] += 1
                continue
            granted.add(grantee)
            moved = await m.move_share(share["id"], share["record_id"], survivor_id)
            assert moved is not None  # locked by shares_of
            _share_event(session, tenant_id, "updated", moved, share["record_id"])
            moves.append(
                {
                    "via": "share",
                    "table": "record_share",
                    "column": "record_id",
                    "id": str(share["id"]),
                    "from": str(share["record_id"]),
                }
            )
            counts["record_share.record_id"] += 1

    async def _summaries(
        self,
        session: AsyncSession,
        tenant_id: UUID,
        kind: str,
        ids: Sequence[UUID],
        *,
        drop: Sequence[UUID] = (),
    ) -> None:
        """The interaction summaries of the records whose activities moved, computed again
        in the same transaction (the projections worker would only drop the merged
        records' on their deletion events)."""
        if kind not in SUMMARISED:
            return
        writer = InteractionWriter(session, tenant_id)
        for record_id in drop:
            await writer.drop(kind, record_id)
        for record_id in ids:
            await writer.recompute(kind, record_id)

    # -- undo ------------------------------------------------------------------------------------
    async def undo(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        merge_id: UUID,
        keyring: TenantKeyring,
        *,
        force: bool,
        viewer: UUID | None,
        actor: outbox.EventActor,
        can: Callable[[str, str], bool],
    ) -> MergeRecordRow:
        """The merged records back exactly as they were stored (same ids, ciphertexts,
        custom values), every moved reference back where it was, the survivor's values
        as before the merge.

        Refused: 404 for a merge the caller cannot see (one it made, or whose survivor
        is in its scope); 409 once undone, when the survivor is gone, when the survivor
        changed since the merge (unless ``force``), when a merged record's external id
        or unique custom value is now another record's, or when a key version its
        ciphertexts need was destroyed; 410 once the undo window (30 days) has passed.
        A reference that was deleted or changed since the merge stays as it is and is
        reported in ``skipped``.
        """
        merges = MergeRepository(session, tenant)
        merge = await merges.locked(merge_id)
        if merge is None:
            raise NotFound(f"No merge with id {merge_id}.")
        kind: str = merge["kind"]
        survivor_id: UUID = merge["survivor_id"]
        repo = repository(kind)
        m = Merging(session, tenant.tenant_id)
        survivor_exists = await m.exists(kind, survivor_id)
        if viewer is not None and merge["actor_id"] != str(viewer):
            scoped = repo(session, tenant, viewer=viewer)
            if not survivor_exists or not await scoped.exists(survivor_id):
                raise NotFound(f"No merge with id {merge_id}.")
        plural = PLURALS[kind]
        for action in ("create", "update"):
            if not can(plural, action):
                raise Forbidden(
                    f"Undoing a merge of {plural} restores and changes {plural}, which this "
                    f"role may not {action}.",
                    object=plural,
                    action=action,
                )
        if merge["state"] == "undone":
            raise Conflict(f"Merge {merge_id} was undone on {merge['undone_at']:%Y-%m-%d}.")
        if (
            merge["state"] == "expired"
            or merge["snapshot"] is None
            or merge["created_at"] + UNDO_WINDOW < datetime.now(UTC)
        ):
            raise Gone(
                f"Merge {merge_id} is older than {UNDO_WINDOW.days} days; it can no longer "
                "be undone."
            )
        if not survivor_exists:
            raise Conflict(f"The survivor {survivor_id} was deleted since the merge.")
        (current,) = await m.stored(kind, [survivor_id], lock=True)
        if current["version"] != merge["survivor_version"] and not force:
            raise Conflict(
                f"The survivor {survivor_id} changed since the merge; send force=true to "
                "undo anyway (its values go back to what they were before the merge)."
            )
        snapshot: dict[str, Any] = merge["snapshot"]
        table = table_of(kind)
        merged_rows = [decode(table, r) for r in snapshot["merged"]]
        merged_ids = [r["id"] for r in merged_rows]
        await self._check_restorable(m, keyring, tenant.tenant_id, kind, merged_rows, snapshot)
        before = decode(table, snapshot["survivor"])
        plain = repo(session, tenant)
        members = set(merged_ids)
        fields = {f.name for f in await custom.fields_of(session, tenant.tenant_id, kind)}
        now, later = self._survivor_values(current, before, members, fields)
        if now:
            await plain.update(survivor_id, now, expected_version=None)
        skipped: list[dict[str, Any]] = []
        for row in _parents_first(kind, merged_rows, members):
            row = await self._cleared_references(m, kind, row, members, skipped)
            restored = await m.insert_row(kind, row)
            note(session, kind, restored["id"])
            plain.emit_derived("created", restored, {"merge_id": str(merge_id), "restored": True})
            # The row as the kit's own writes hand it to the hooks (its read columns).
            read = {k: v for k, v in restored.items() if k not in repo.hidden}
            await hooks.record_written(session, tenant, hooks.Written(kind, "created", read))
        await m.restore_custom_values(
            [decode(table_of("custom_value"), r) for r in snapshot["custom_values"]]
        )
        if later:
            await plain.update(survivor_id, later, expected_version=None)
        for move in reversed(snapshot["moves"]):
            await self._move_back(session, tenant, m, survivor_id, move, skipped)
        if kind == "lead":
            await lead_service.rescore(session, tenant, [survivor_id])
        await self._summaries(session, tenant.tenant_id, kind, [survivor_id, *merged_ids])
        (survivor,) = await m.stored(kind, [survivor_id], lock=False)
        plain.emit_derived(
            "unmerged",
            survivor,
            {
                "merge_id": str(merge_id),
                "restored_ids": [str(r) for r in merged_ids],
                "skipped": skipped,
            },
        )
        return await merges.mark_undone(merge_id, (actor.type, actor.id), skipped)

    async def _check_restorable(
        self,
        m: Merging,
        keyring: TenantKeyring,
        tenant_id: UUID,
        kind: str,
        rows: Sequence[Mapping[str, Any]],
        snapshot: Mapping[str, Any],
    ) -> None:
        survivor = UUID(str(snapshot["survivor"]["id"]))
        for row in rows:
            if await m.exists(kind, row["id"]):
                raise Conflict(f"A {kind} with id {row['id']} exists again.")
            external_id = row.get("external_id")
            holder = await m.external_id_holder(kind, external_id) if external_id else None
            # The survivor gives back what it took (its own values come back first).
            if holder is not None and holder != survivor:
                raise Conflict(
                    f"external_id {external_id!r} of merged {kind} {row['id']} is now "
                    f"{kind} {holder}'s.",
                    duplicate_of=str(holder),
                )
        values = [decode(table_of("custom_value"), r) for r in snapshot["custom_values"]]
        needed = {r["enc_version"] for r in rows if r.get("enc_version") is not None}
        # Sensitive custom values come back sealed as they were, under their versions.
        needed |= {r["key_version"] for r in values if r.get("key_version") is not None}
        if needed:
            live = {v.version for v in await keyring.versions(tenant_id) if v.state != "destroyed"}
            if needed - live:
                raise Conflict(
                    "The merged records' encrypted fields need a data key version that was "
                    "destroyed since the merge; they cannot be restored."
                )
        holder = await m.unique_taken(values)
        if holder is not None and holder != survivor:
            raise Conflict(
                f"A unique custom value of a merged {kind} is now {kind} {holder}'s.",
                duplicate_of=str(holder),
            )

    def _survivor_values(
        self,
        current: Mapping[str, Any],
        before: Mapping[str, Any],
        merged: set[UUID],
        fields: set[str],
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The survivor's stored values back as they were, in two steps: what can be
        written now, and what names a merged record (written once it is back)."""
        now: dict[str, Any] = {}
        later: dict[str, Any] = {}
        for column, value in before.items():
            if column in BOOKKEEPING or column == "custom":
                continue
            if _same(current.get(column), value):
                continue
            (later if _as_id(value) in merged else now)[column] = value
        was: Mapping[str, Any] = before.get("custom") or {}
        has: Mapping[str, Any] = current.get("custom") or {}
        patch_now: dict[str, Any] = {}
        patch_later: dict[str, Any] = {}
        for name in sorted((set(was) | set(has)) & fields):
            value = was.get(name)
            if has.get(name) == value:
                continue
            (patch_later if _as_id(value) in merged else patch_now)[name] = value
        if patch_now:
            now["custom"] = patch_now
        if patch_later:
            later["custom"] = patch_later
        return now, later

    async def _cleared_references(
        self,
        m: Merging,
        kind: str,
        row: dict[str, Any],
        members: set[UUID],
        skipped: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """A restored row's references to records deleted since the merge are cleared
        (reported as skipped): the row comes back, without a dangling reference."""
        for fk in table_of(kind).foreign_key_constraints:
            target = fk.referred_table.name
            for column in (c.key for c in fk.columns if c.key != "tenant_id"):
                value = row.get(column)
                if value is None or (target == kind and value in members):
                    continue
                if not await m.exists(target, value):
                    row = {**row, column: None}
                    skipped.append(
                        {"table": kind, "column": column, "id": str(row["id"]), "reason": "deleted"}
                    )
        return row

    async def _move_back(
        self,
        session: AsyncSession,
        tenant: TenantContext,
        m: Merging,
        survivor_id: UUID,
        move: Mapping[str, Any],
        skipped: list[dict[str, Any]],
    ) -> None:
        """One reference back to the merged record it named, if it still names the
        survivor; else it is reported and left as it is."""
        via = move["via"]

        def skip(table: str, column: str, row_id: Any, reason: str) -> None:
            skipped.append({"table": table, "column": column, "id": str(row_id), "reason": reason})

        if via == "record":
            ref = Reference(move["table"], move["column"])
            row_id, old = UUID(move["id"]), UUID(move["from"])
            exists, value = await m.current(ref, row_id)
            if not exists or value != survivor_id:
                skip(ref.table, ref.column, row_id, "changed" if exists else "deleted")
                return
            await repository(ref.table)(session, tenant).update(
                row_id, {ref.column: old}, expected_version=None
            )
        elif via == "rows":
            ref = Reference(move["table"], move["column"])
            ids = [UUID(i) for i in move["ids"]]
            back = set(await m.repoint(ref, ids, survivor_id, UUID(move["from"])))
            note(session, ref.table, None)
            for row_id in ids:
                if row_id not in back:
                    exists, _ = await m.current(ref, row_id)
                    skip(ref.table, ref.column, row_id, "changed" if exists else "deleted")
        elif via == "share":
            share_id, old = UUID(move["id"]), UUID(move["from"])
            moved = await m.move_share(share_id, survivor_id, old)
            if moved is None:
                skip("record_share", "record_id", share_id, "deleted")
                return
            _share_event(session, tenant.tenant_id, "updated", moved, survivor_id)
        elif via == "dropped_share":
            row = decode(table_of("record_share"), move["row"])
            grantee = row["user_id"] or row["team_id"]
            if not await m.user_exists(grantee):
                skip("record_share", "id", row["id"], "deleted")
            elif await m.share_grantee_taken(row):
                skip("record_share", "id", row["id"], "conflict")
            else:
                await m.restore_share(row)
                _share_event(session, tenant.tenant_id, "created", row)
        elif via == "lookup":
            ref = Reference(move["table"], "custom")
            row_id = UUID(move["id"])
            exists, values = await m.current(ref, row_id)
            if not exists or (values or {}).get(move["field"]) != str(survivor_id):
                skip(move["table"], move["column"], row_id, "changed" if exists else "deleted")
                return
            await repository(move["table"])(session, tenant).update(
                row_id, {"custom": {move["field"]: move["from"]}}, expected_version=None
            )
        elif via == "archived_lookup":
            row_id = UUID(move["id"])
            if not await m.repoint_lookup(
                UUID(move["field_id"]), row_id, survivor_id, UUID(move["from"])
            ):
                skip(move["table"], move["column"], row_id, "changed")


def _ref(ref: Reference) -> dict[str, str]:
    return {"table": ref.table, "column": ref.column}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, memoryview):
        a = bytes(a)
    if isinstance(b, memoryview):
        b = bytes(b)
    return bool(a == b)


def _parents_first(
    kind: str, rows: Sequence[dict[str, Any]], members: set[UUID]
) -> list[dict[str, Any]]:
    """The merged rows in an order where a row's parent in the group (an account's
    ``parent_id``) is inserted before it."""
    pending = list(rows)
    done: set[UUID] = set()
    ordered: list[dict[str, Any]] = []
    column = "parent_id" if "parent_id" in table_of(kind).c else None
    while pending:
        ready = [
            r
            for r in pending
            if column is None or r.get(column) not in members or r.get(column) in done
        ]
        if not ready:  # a cycle cannot be stored; keep the order rather than loop
            ready = pending[:1]
        for row in ready:
            ordered.append(row)
            done.add(row["id"])
            pending.remove(row)
    return ordered


def _share_event(
    session: AsyncSession,
    tenant_id: UUID,
    action: str,
    share: Mapping[str, Any],
    old_record: UUID | None = None,
) -> None:
    """A share's event, as the sharing domain writes them (kind ``share``, audited)."""
    changes = None
    if action == "updated":
        changes = {"record_id": {"old": old_record, "new": share["record_id"]}}
    outbox.record(
        session,
        tenant_id,
        f"share.{action}",
        "share",
        share["id"],
        record=outbox.snapshot(share, ()),
        changes=changes,
    )


def merge_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A merge record as the API shows it."""
    undone_by = (
        {"type": row["undone_by_type"], "id": row["undone_by_id"]}
        if row["undone_by_type"] is not None
        else None
    )
    return {
        "id": row["id"],
        "kind": row["kind"],
        "survivor_id": row["survivor_id"],
        "merged_ids": [UUID(str(i)) for i in row["merged_ids"]],
        "state": row["state"],
        "actor": {"type": row["actor_type"], "id": row["actor_id"]},
        "created_at": row["created_at"],
        "undo_until": row["created_at"] + UNDO_WINDOW,
        "undone_at": row["undone_at"],
        "undone_by": undone_by,
        "reparented": row["reparented"],
        "skipped": row["skipped"],
    }


duplicate_rule = DuplicateRuleService()
merge = MergeService()
