"""The ``meridian`` command line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer

from meridian.settings import get_settings

app = typer.Typer(no_args_is_help=True, help="Meridian CRM platform.")
shards_app = typer.Typer(no_args_is_help=True, help="Shard topology.")
admin_app = typer.Typer(no_args_is_help=True, help="Platform administration.")
app.add_typer(shards_app, name="shards")
app.add_typer(admin_app, name="admin")


@app.command()
def dev(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    data_dir: Annotated[Path, typer.Option(help="Where the embedded servers keep data.")] = Path(
        ".meridian"
    ),
) -> None:
    """The whole platform on this machine, with embedded defaults.

    Without MERIDIAN_CONTROL_DSN: a private PostgreSQL and Redis under --data-dir.

    URLs and credentials (platform admin, demo tenant) go to .meridian/dev.json.
    """
    from meridian.dev import DevError, run_dev

    try:
        run_dev(host=host, port=port, data_dir=data_dir)
    except DevError as exc:
        typer.echo(f"meridian dev: {exc}", err=True)
        raise typer.Exit(1) from exc


@app.command()
def serve(
    host: Annotated[str, typer.Option()] = "0.0.0.0",  # noqa: S104 - a server binds all by design
    port: Annotated[int, typer.Option()] = 8000,
    workers: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """Run the API against the configured (MERIDIAN_*) servers."""
    import uvicorn

    uvicorn.run(
        "meridian.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


@app.command()
def migrate() -> None:
    """Apply control-plane migrations, then shard migrations on every shard."""
    from meridian.bootstrap import migrate_all

    done = asyncio.run(migrate_all(get_settings()))
    typer.echo(f"migrated control plane and {len(done)} shard(s): {', '.join(done)}")


@shards_app.command("add")
def shards_add(
    shard_id: Annotated[str, typer.Argument(help="Shard id, e.g. us-2.")],
    region: Annotated[str, typer.Option(help="Region, e.g. us or eu.")],
    dsn: Annotated[str, typer.Option(help="DSN the API connects with (app role).")],
    admin_dsn: Annotated[str | None, typer.Option(help="DSN migrations use (owner).")] = None,
    capacity: Annotated[int, typer.Option(min=1)] = 1000,
) -> None:
    """Register a shard (and migrate it)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from meridian.migrate import upgrade
    from sharding.registry import upsert_shard

    settings = get_settings()

    async def run() -> None:
        await upgrade("shard", admin_dsn or dsn, app_role=settings.app_db_role)
        engine = create_async_engine(settings.control_migrate_dsn)
        try:
            async with engine.begin() as conn:
                await upsert_shard(
                    conn,
                    shard_id=shard_id,
                    region=region,
                    dsn=dsn,
                    admin_dsn=admin_dsn or dsn,
                    capacity=capacity,
                )
        finally:
            await engine.dispose()

    asyncio.run(run())
    typer.echo(f"shard {shard_id} ({region}) registered and migrated")


@shards_app.command("list")
def shards_list() -> None:
    """Print the shard topology with tenant counts."""
    from sqlalchemy import func, select
    from sqlalchemy.ext.asyncio import create_async_engine

    from sharding.models import Shard
    from tenancy.models import DirectoryEntry

    async def run() -> list[dict[str, object]]:
        engine = create_async_engine(get_settings().control_migrate_dsn)
        try:
            async with engine.connect() as conn:
                stmt = (
                    select(
                        Shard.id,
                        Shard.region,
                        Shard.state,
                        Shard.capacity,
                        func.count(DirectoryEntry.tenant_id).label("tenants"),
                    )
                    .outerjoin(DirectoryEntry, DirectoryEntry.shard_id == Shard.id)
                    .group_by(Shard.id)
                    .order_by(Shard.id)
                )
                return [dict(r) for r in (await conn.execute(stmt)).mappings()]
        finally:
            await engine.dispose()

    for row in asyncio.run(run()):
        typer.echo(json.dumps(row))


@admin_app.command("create-client")
def admin_create_client(
    name: Annotated[str, typer.Option(help="A label for the client.")] = "platform admin",
) -> None:
    """Create a platform-admin OAuth client (scope platform:admin); prints its secret once."""
    from meridian.bootstrap import create_admin_client

    client = asyncio.run(create_admin_client(get_settings(), name))
    typer.echo(
        json.dumps(
            {
                "client_id": client.client_id,
                "client_secret": client.client_secret,
                "scope": client.scope,
            }
        )
    )


def main() -> None:
    app()
