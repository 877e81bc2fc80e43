"""Every table belongs to exactly one plane: control or shard (Sentry's silo rule)."""

from __future__ import annotations

from sqlalchemy import MetaData, Table

from meridian.models import CONTROL_MODELS, SHARD_MODELS, control_metadata, shard_metadata
from tenancy.planes import ControlBase, ShardBase, TenantScoped


def _tables(models: tuple[type[object], ...]) -> dict[str, Table]:
    tables: dict[str, Table] = {}
    for model in models:
        table = model.__table__  # type: ignore[attr-defined]
        assert isinstance(table, Table)
        tables[table.name] = table
    return tables


def test_model_lists_do_not_overlap() -> None:
    assert not set(CONTROL_MODELS) & set(SHARD_MODELS)
    assert len(set(CONTROL_MODELS)) == len(CONTROL_MODELS)
    assert len(set(SHARD_MODELS)) == len(SHARD_MODELS)


def test_no_table_is_in_both_metadata() -> None:
    both = set(control_metadata.tables) & set(shard_metadata.tables)
    assert not both, f"tables in both planes: {sorted(both)}"


def test_every_model_belongs_to_its_plane_only() -> None:
    for model in CONTROL_MODELS:
        assert issubclass(model, ControlBase), model
        assert not issubclass(model, ShardBase), model
        table = model.__table__
        assert table.metadata is control_metadata, model
        assert control_metadata.tables[table.name] is table
        assert table.name not in shard_metadata.tables
    for model in SHARD_MODELS:
        assert issubclass(model, ShardBase), model
        assert not issubclass(model, ControlBase), model
        table = model.__table__
        assert table.metadata is shard_metadata, model
        assert shard_metadata.tables[table.name] is table
        assert table.name not in control_metadata.tables


def test_every_table_of_each_metadata_is_covered_by_a_model() -> None:
    assert set(_tables(CONTROL_MODELS)) == set(control_metadata.tables)
    assert set(_tables(SHARD_MODELS)) == set(shard_metadata.tables)


def test_every_mapped_class_is_listed() -> None:
    # A model that is mapped but missing from the lists would escape the checks above.
    control_mapped = {m.class_ for m in ControlBase.registry.mappers}
    shard_mapped = {m.class_ for m in ShardBase.registry.mappers}
    assert control_mapped == set(CONTROL_MODELS)
    assert shard_mapped == set(SHARD_MODELS)


def _foreign_keys_stay_inside(metadata: MetaData) -> None:
    for table in metadata.tables.values():
        for fk in table.foreign_keys:
            referred = fk.column.table
            assert referred.metadata is metadata, (
                f"{table.name} refers to {referred.name} of another plane"
            )


def test_foreign_keys_never_cross_planes() -> None:
    _foreign_keys_stay_inside(control_metadata)
    _foreign_keys_stay_inside(shard_metadata)


def test_shard_tables_are_tenant_scoped() -> None:
    for model in SHARD_MODELS:
        assert issubclass(model, TenantScoped), model
        table = model.__table__
        pk = [c.name for c in table.primary_key.columns]
        assert pk[0] == "tenant_id", (table.name, pk)
        assert not table.c.tenant_id.nullable


def test_control_tables_are_not_tenant_scoped_rows() -> None:
    # Control tables may name a tenant (directory, clients) but are not TenantScoped.
    for model in CONTROL_MODELS:
        assert not issubclass(model, TenantScoped), model
