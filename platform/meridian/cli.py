"""The ``meridian`` command line.

Every command but ``dev`` acts on one platform, found in this order: ``--dev-json`` or
MERIDIAN_DEV_JSON (a running ``meridian dev``'s file); the MERIDIAN_* environment when it
names a control plane (MERIDIAN_CONTROL_DSN); ``.meridian/dev.json`` in the current folder
when present (so commands run next to ``scripts/dev`` reach it); the defaults.
"""

from __future__ import annotations

import asyncio
import json
import logging
import logging.config
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, TypeVar
from uuid import UUID

import typer

from loadtests.credentials import DEFAULT_CREDENTIALS, RESULTS_DIR
from meridian import logs, metrics
from meridian.settings import DEV_JSON_ENV, get_settings
from sharding.engine import EngineMismatchError, ShardEngine
from sharding.models import MoveState

if TYPE_CHECKING:
    from meridian.runtime import Runtime

T = TypeVar("T")

app = typer.Typer(no_args_is_help=True, help="Meridian CRM platform.")
shards_app = typer.Typer(no_args_is_help=True, help="Shard topology.")
admin_app = typer.Typer(no_args_is_help=True, help="Platform administration.")
keys_app = typer.Typer(no_args_is_help=True, help="Token signing keys and the KEK.")
tenants_app = typer.Typer(
    no_args_is_help=True, help="Tenant data keys, moves, isolation and deletion."
)
app.add_typer(shards_app, name="shards")
app.add_typer(admin_app, name="admin")
app.add_typer(keys_app, name="keys")
moves_app = typer.Typer(no_args_is_help=True, help="Online moves of tenants between shards.")
app.add_typer(tenants_app, name="tenants")
app.add_typer(moves_app, name="moves")
projections_app = typer.Typer(no_args_is_help=True, help="Read models kept by the worker.")
app.add_typer(projections_app, name="projections")
search_app = typer.Typer(no_args_is_help=True, help="The global search index.")
app.add_typer(search_app, name="search")
# Where `meridian dev` writes the file that other commands read (relative to its cwd).
DEV_JSON = Path(".meridian/dev.json")


@contextmanager
def _one_line(command: str, *errors: type[BaseException]) -> Iterator[None]:
    """A problem the user can fix (one of ``errors``) ends ``meridian <command>`` with
    its message on one line and exit status 1, not a traceback."""
    try:
        yield
    except errors as exc:
        typer.echo(f"meridian {command}: {exc}", err=True)
        raise typer.Exit(1) from exc


@app.callback()
def platform_options(
    ctx: typer.Context,
    dev_json: Annotated[
        Path | None,
        typer.Option(
            envvar=DEV_JSON_ENV,
            help="Act on the `meridian dev` platform described by this dev.json. "
            "Default: ./.meridian/dev.json when it exists and MERIDIAN_CONTROL_DSN is unset.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Meridian CRM platform."""
    from meridian.settings import use_dev_platform

    if ctx.invoked_subcommand == "dev":
        return  # it writes the dev.json; it never reads one
    if dev_json is None and "MERIDIAN_CONTROL_DSN" not in os.environ and DEV_JSON.exists():
        dev_json = DEV_JSON
        typer.echo(f"meridian: using the dev platform of {DEV_JSON}", err=True)
    if dev_json is not None:
        use_dev_platform(dev_json)


@app.command()
def dev(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    data_dir: Annotated[
        Path, typer.Option(help="Where the private PostgreSQL and Redis keep their data.")
    ] = Path(".meridian"),
    postgres: Annotated[
        Literal["embedded", "system"] | None,
        typer.Option(
            help="PostgreSQL binaries of the private cluster: embedded (bundled by the "
            "'local' extra, nothing else to install) or system (Debian's postgresql). "
            "Default: the engine that made the data folder's cluster, else embedded.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """The whole platform on this machine, with embedded defaults.

    Without MERIDIAN_CONTROL_DSN: a private PostgreSQL and Redis under --data-dir.
    URLs and credentials (platform admin, demo tenant, demo user) go to
    .meridian/dev.json, where every other `meridian` command run from this folder
    finds the platform.
    """
    # Lazy, like the one in keys rotate-kek: the app needs the dev tooling nowhere else
    # (an import-linter contract in pyproject.toml says so).
    from meridian_dev.devserver import DevError, run_dev

    with _one_line("dev", DevError):
        run_dev(
            host=host,
            port=port,
            data_dir=data_dir,
            postgres=postgres,
        )


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",  # noqa: S104 - a server binds all by design
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Run the API against the platform's servers (MERIDIAN_* settings, or a dev.json)."""
    import uvicorn

    from meridian.settings import KeyConfigError

    with _one_line("serve", KeyConfigError):
        # Refuse to start at all rather than fail in each worker's start-up.
        get_settings().key_provider()
    # /metrics answers for every worker process: they count into files in one folder
    # (the one given, else a new one), which each start finds empty.
    folder = metrics.multiprocess_dir()
    if folder is None and workers > 1:
        folder = tempfile.mkdtemp(prefix="meridian-metrics-")
    if folder is not None:
        metrics.prepare_multiprocess_dir(Path(folder))
        os.environ[metrics.MULTIPROC_ENV] = folder

    uvicorn.run(
        "meridian.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        # Start-up, shutdown and errors are logged (uvicorn says where it listens once
        # it does); one line per request is not: at thousands of requests a second it
        # costs more than it tells.
        access_log=False,
        log_level="info",
        log_config=logs.config(get_settings().log_format),
    )


@app.command()
def worker() -> None:
    """Run the event worker: the outbox relay, webhook deliveries, projections and
    sagas (MERIDIAN_* settings, or a dev.json); several may run at once."""
    from meridian.settings import KeyConfigError
    from meridian.worker.main import run_worker

    settings = get_settings()
    with _one_line("worker", KeyConfigError):
        settings.key_provider()
    if not settings.redis_url:
        typer.echo("meridian worker: events need Redis: set MERIDIAN_REDIS_URL", err=True)
        raise typer.Exit(1)
    logging.config.dictConfig(logs.config(settings.log_format))
    # saq logs every job three times at INFO (enqueued, processing, finished) and httpx
    # every request: at a few hundred deliveries a second, formatting those lines costs
    # more than the jobs' bookkeeping. Their warnings and failed jobs still show; a
    # delivery's outcome is in its row.
    for chatty in ("saq", "httpx"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    asyncio.run(run_worker(settings))


@app.command()
def migrate() -> None:
    """Apply control-plane migrations, then shard migrations on every shard."""
    from meridian.operations import migrate_all

    done = asyncio.run(migrate_all(get_settings()))
    typer.echo(f"migrated control plane and {len(done)} shard(s): {', '.join(done)}")


@shards_app.command("add")
def shards_add(
    shard_id: Annotated[str, typer.Argument(help="Shard id, e.g. us-2.")],
    region: Annotated[str, typer.Option(help="Region, e.g. us or eu.")],
    dsn: Annotated[str, typer.Option(help="DSN the API connects with (app role).")],
    admin_dsn: Annotated[
        str | None,
        typer.Option(help="DSN migrations use (owner). Default: --dsn.", show_default=False),
    ] = None,
    capacity: Annotated[
        int, typer.Option(min=1, help="Tenants the shard takes before placement skips it.")
    ] = 1000,
    dedicated: Annotated[
        bool | None,
        typer.Option(
            "--dedicated/--shared",
            help="A dedicated shard holds one tenant, named at onboarding (`shard_id`); "
            "placement by region only uses shared shards. Default: shared for a new shard, "
            "unchanged for a registered one.",
            show_default=False,
        ),
    ] = None,
    engine: Annotated[
        ShardEngine | None,
        typer.Option(
            help="The database engine. Default: the one found on the database; when "
            "given, the database must run it (else nothing is done).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Register a shard (and migrate it)."""
    from meridian.operations import add_shard

    with _one_line("shards add", EngineMismatchError):
        recorded = asyncio.run(
            add_shard(
                get_settings(),
                shard_id=shard_id,
                region=region,
                dsn=dsn,
                admin_dsn=admin_dsn,
                capacity=capacity,
                dedicated=dedicated,
                engine=engine,
            )
        )
    typer.echo(f"shard {shard_id} ({region}, {recorded}) registered and migrated")


@shards_app.command("list")
def shards_list() -> None:
    """Print the shard topology with tenant counts."""
    from meridian.operations import list_shards

    for row in asyncio.run(list_shards(get_settings())):
        typer.echo(json.dumps(row))


@shards_app.command("distribute")
def shards_distribute(
    shard_id: Annotated[str, typer.Argument(help="Id of a PostgreSQL shard.")],
    admin_dsn: Annotated[
        str | None,
        typer.Option(
            help="DSN to convert the tables with: a superuser, or a role with BYPASSRLS "
            "that is a member of the tables' owner. Default: the shard's admin DSN.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Make a PostgreSQL shard a Citus one, its rows in place.

    For a shard database that now runs on a Citus coordinator (the citus extension
    created there and on every worker, the workers registered): distributes every
    tenant table on tenant_id in one colocation group, checks each table's row count,
    then records the shard's engine as citus. Resumable: tables already distributed
    are skipped. Refuses, changing nothing, when it cannot do it safely.
    """
    from meridian.operations import distribute_shard
    from sharding.citus import CitusAdminError

    with _one_line("shards distribute", CitusAdminError, LookupError):
        done = asyncio.run(distribute_shard(get_settings(), shard_id, admin_dsn=admin_dsn))
    typer.echo(json.dumps(done))


@shards_app.command("drain")
def shards_drain(
    shard_id: Annotated[str, typer.Argument(help="The shard to empty.")],
    parallel: Annotated[int, typer.Option(min=1, max=16, help="Moves at once.")] = 2,
) -> None:
    """Close a shard to new tenants and move every tenant off it, to the least-loaded
    active shard of its region, a few at a time. Run it again to finish after a failure."""
    from meridian.operations import drain_shard

    async def work(rt: Runtime) -> dict[str, object]:
        return await drain_shard(rt, shard_id, parallel=parallel)

    typer.echo(json.dumps(_with_runtime("shards drain", work)))


@shards_app.command("rebalance")
def shards_rebalance(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; move nothing.")
    ] = False,
    region: Annotated[
        str | None, typer.Option(help="Only this region's shards.", show_default=False)
    ] = None,
    tolerance: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Stop once the shards' rows differ by this share."),
    ] = 0.1,
    max_moves: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    parallel: Annotated[int, typer.Option(min=1, max=16, help="Moves at once.")] = 2,
) -> None:
    """Even out the rows of each region's active shared shards by moving tenants (the
    largest that narrows the gap most, from the fullest shard to the emptiest)."""
    from meridian.operations import rebalance

    async def work(rt: Runtime) -> dict[str, object]:
        return await rebalance(
            rt,
            region=region,
            tolerance=tolerance,
            max_moves=max_moves,
            dry_run=dry_run,
            parallel=parallel,
        )

    typer.echo(json.dumps(_with_runtime("shards rebalance", work)))


@admin_app.command("create-client")
def admin_create_client(
    name: Annotated[str, typer.Option(help="A label for the client.")] = "platform admin",
) -> None:
    """Create a platform-admin OAuth client (scope platform:admin); prints its secret once."""
    from meridian.operations import create_admin_client

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


@keys_app.command("rotate")
def keys_rotate(
    activate: Annotated[
        bool, typer.Option("--activate", help="Only promote the published next key.")
    ] = False,
) -> None:
    """Rotate the signing key in two steps, each a run of this command.

    First run: publish a next key (in the JWKS, signs nothing). A later run, once the
    JWKS cache time has passed: the next key signs, the old one is retired and stays
    published until its last token has expired.
    """
    from meridian.oauth.keys import KeyRotationError
    from meridian.operations import rotate_signing_key

    with _one_line("keys rotate", KeyRotationError):
        typer.echo(
            json.dumps(asyncio.run(rotate_signing_key(get_settings(), activate_only=activate)))
        )


@keys_app.command("list")
def keys_list() -> None:
    """Print the signing keys: state, when published or retired, and until when."""
    from meridian.operations import list_signing_keys

    for row in asyncio.run(list_signing_keys(get_settings())):
        typer.echo(json.dumps(row))


@keys_app.command("rotate-kek")
def keys_rotate_kek() -> None:
    """Re-wrap every tenant data key under the primary KEK.

    Configure MERIDIAN_KEK (or the file of MERIDIAN_KEK_FILE) as JSON holding the old
    and the new KEK with the new one primary, e.g.
    {"primary": "kek-2", "keys": {"kek-1": "<old base64>", "kek-2": "<new base64>"}};
    restart the API instances with it, run this, then drop the old KEK from the JSON.
    On a dev platform the KEK used here becomes the platform's own (its dev.json and
    data folder name it), so `meridian dev` and later commands keep reading the data.
    """
    from meridian.operations import KEK_ERRORS, rotate_kek

    settings = get_settings()
    with _one_line("keys rotate-kek", *KEK_ERRORS):
        result = asyncio.run(rotate_kek(settings))
    dev_json = os.environ.get(DEV_JSON_ENV)
    if dev_json:
        from meridian_dev.datadir import DevError, adopt_kek

        with _one_line("keys rotate-kek", DevError):
            result["dev_platform_kek_file"] = str(adopt_kek(Path(dev_json), settings))
        typer.echo("restart `meridian dev` so the running API uses the new KEK", err=True)
    typer.echo(json.dumps(result))


def _with_runtime(command: str, work: Callable[[Runtime], Awaitable[T]]) -> T:
    """Run ``work`` with a started runtime; a problem the user can fix is one line."""
    from meridian.operations import RUNTIME_ERRORS, with_runtime

    with _one_line(command, *RUNTIME_ERRORS):
        return asyncio.run(with_runtime(get_settings(), work))


@tenants_app.command("rotate-key")
def tenants_rotate_key(
    tenant: Annotated[str, typer.Argument(help="Tenant id or slug.")],
    batch_size: Annotated[
        int, typer.Option(min=1, max=10_000, help="Rows re-encrypted per transaction.")
    ] = 500,
    reencrypt_rows: Annotated[
        bool, typer.Option("--reencrypt/--no-reencrypt", help="Move old rows over now.")
    ] = True,
) -> None:
    """A new data-key version for the tenant, then re-encryption of its rows.

    The new version is published first and activated once every API instance has seen
    it (MERIDIAN_KEY_VERSIONS_TTL), so no search misses a row; new writes use it from
    then on. Interrupted? Run `meridian tenants reencrypt` (finished rows are skipped).
    """
    from meridian.encryption.reencrypt import ReencryptResult
    from meridian.operations import reencrypt_summary, reencrypt_tenant, rotate_tenant_key

    async def work(rt: Runtime) -> ReencryptResult | None:
        rotated = await rotate_tenant_key(rt, tenant)
        typer.echo(json.dumps(rotated.summary()))
        if not reencrypt_rows:
            return None
        return await reencrypt_tenant(
            rt, rotated.tenant, batch_size=batch_size, wait=rotated.propagation
        )

    result = _with_runtime("tenants rotate-key", work)
    if result is not None:
        typer.echo(json.dumps(reencrypt_summary(result)))


@tenants_app.command("reencrypt")
def tenants_reencrypt(
    tenant: Annotated[str, typer.Argument(help="Tenant id or slug.")],
    batch_size: Annotated[
        int, typer.Option(min=1, max=10_000, help="Rows re-encrypted per transaction.")
    ] = 500,
) -> None:
    """Move the tenant's rows still on old key versions to the active one (resumable),
    then retire the versions no row uses."""
    from meridian.operations import reencrypt_summary, reencrypt_tenant

    async def work(rt: Runtime) -> dict[str, object]:
        return reencrypt_summary(await reencrypt_tenant(rt, tenant, batch_size=batch_size))

    typer.echo(json.dumps(_with_runtime("tenants reencrypt", work)))


@tenants_app.command("isolate")
def tenants_isolate(
    tenant: Annotated[str, typer.Argument(help="Tenant id or slug.")],
    to_node: Annotated[
        str | None,
        typer.Option(
            help="host:port of the Citus worker to move the tenant's shard group to.",
            show_default=False,
        ),
    ] = None,
    admin_dsn: Annotated[
        str | None,
        typer.Option(
            help="DSN of the shard's coordinator to run it as: a superuser, or a role with "
            "BYPASSRLS that is a member of the tables' owner. Default: the shard's admin DSN.",
            show_default=False,
        ),
    ] = None,
    block_writes: Annotated[
        bool,
        typer.Option(
            "--block-writes",
            help="Copy with the group's writes blocked instead of replicating logically "
            "(for nodes without wal_level = logical).",
        ),
    ] = False,
) -> None:
    """Give a tenant of a Citus shard a shard group of its own, and move it to a worker.

    Idempotent: a tenant already alone in its group is not split again, a group already
    on the node is not moved. Online by default: the tenant keeps being served.
    """
    from meridian.operations import isolate_tenant
    from sharding.citus import TransferMode

    mode = TransferMode.BLOCK_WRITES if block_writes else TransferMode.ONLINE

    async def work(rt: Runtime) -> dict[str, object]:
        return await isolate_tenant(rt, tenant, to_node=to_node, admin_dsn=admin_dsn, mode=mode)

    typer.echo(json.dumps(_with_runtime("tenants isolate", work)))


@tenants_app.command("move")
def tenants_move(
    tenant: Annotated[str, typer.Argument(help="Tenant id or slug.")],
    to: Annotated[
        str | None, typer.Option("--to", help="The shard to move it to.", show_default=False)
    ] = None,
    region: Annotated[
        str | None,
        typer.Option(
            help="The region to move it to (its least-loaded active shard).", show_default=False
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Drive the move here, with a progress bar, to its end.")
    ] = False,
) -> None:
    """Move a tenant to another shard or region, online (writes freeze well under a
    second at the switch). Without --wait the move is planned and an API instance
    drives it (within MERIDIAN_MOVE_SWEEP_INTERVAL), or `meridian moves resume` does.
    The shards need wal_level = logical and superuser admin DSNs."""
    from meridian.operations import move_tenant

    if (to is None) == (region is None):
        typer.echo("meridian tenants move: give either --to <shard> or --region <region>", err=True)
        raise typer.Exit(2)

    async def work(rt: Runtime) -> dict[str, object]:
        return await move_tenant(rt, tenant, to=to, region=region, wait=wait)

    typer.echo(json.dumps(_with_runtime("tenants move", work)))


@moves_app.command("list")
def moves_list(
    tenant: Annotated[
        str | None, typer.Option(help="Only this tenant's (id or slug).", show_default=False)
    ] = None,
    state: Annotated[MoveState | None, typer.Option(show_default=False)] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
) -> None:
    """Moves, newest first, one JSON object per line."""
    from meridian.operations import list_moves

    async def work(rt: Runtime) -> list[dict[str, object]]:
        return await list_moves(rt, tenant=tenant, state=state, limit=limit)

    for row in _with_runtime("moves list", work):
        typer.echo(json.dumps(row))


@moves_app.command("show")
def moves_show(move_id: Annotated[UUID, typer.Argument(help="The move's id.")]) -> None:
    """Where a move stands: state, rows copied per table, lag, freeze, error."""
    from meridian.operations import show_move

    async def work(rt: Runtime) -> dict[str, object]:
        return await show_move(rt, move_id)

    typer.echo(json.dumps(_with_runtime("moves show", work)))


@moves_app.command("resume")
def moves_resume(move_id: Annotated[UUID, typer.Argument(help="The move's id.")]) -> None:
    """Drive an unfinished move here to its end, from where it stands (after its driver
    died, or once a shard that stopped it is back)."""
    from meridian.operations import resume_move

    async def work(rt: Runtime) -> dict[str, object]:
        return await resume_move(rt, move_id)

    typer.echo(json.dumps(_with_runtime("moves resume", work)))


@moves_app.command("cancel")
def moves_cancel(move_id: Annotated[UUID, typer.Argument(help="The move's id.")]) -> None:
    """Roll a move back (before it switched): the tenant stays where it is and the target
    keeps nothing of it. If another process drives the move, it rolls back there."""
    from meridian.operations import cancel_move

    async def work(rt: Runtime) -> dict[str, object]:
        return await cancel_move(rt, move_id)

    typer.echo(json.dumps(_with_runtime("moves cancel", work)))


@tenants_app.command("delete")
def tenants_delete(
    tenant: Annotated[str, typer.Argument(help="Tenant id or slug.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Crypto-shred a tenant: destroy its data keys, then mark it deleted. Its rows on
    the shard can never be read again. Irreversible."""
    from meridian.operations import delete_tenant

    if not yes:
        typer.confirm(f"Destroy every key of tenant {tenant} (irreversible)?", abort=True)

    async def work(rt: Runtime) -> None:
        typer.echo(json.dumps(await delete_tenant(rt, tenant)))

    _with_runtime("tenants delete", work)


_KEY_FILE_HELP = (
    "The operator's 32-byte key (raw, or base64 on one line: openssl rand -base64 32) "
    "that seals the archive's data keys. Keep it apart from the archives."
)


@tenants_app.command("export")
def tenants_export(
    tenant: Annotated[str, typer.Argument(help="Tenant id or slug.")],
    out: Annotated[Path, typer.Option(help="The archive to write (never overwritten).")],
    key_file: Annotated[Path, typer.Option(help=_KEY_FILE_HELP)],
) -> None:
    """Write a portable archive of the tenant: every row of it on its shard and in the
    control plane, with a manifest and checksums, sealed fields still sealed, and its
    data keys wrapped under the operator's key (docs/backups.md)."""
    from meridian.backups.archive import load_operator_key
    from meridian.backups.errors import BackupError
    from meridian.operations import export_tenant_archive

    with _one_line("tenants export", BackupError):
        key = load_operator_key(key_file)

        async def work(rt: Runtime) -> dict[str, object]:
            return await export_tenant_archive(rt, tenant, out, key)

        typer.echo(json.dumps(_with_runtime("tenants export", work)))


@tenants_app.command("import")
def tenants_import(
    archive: Annotated[Path, typer.Argument(help="An archive of `meridian tenants export`.")],
    key_file: Annotated[Path, typer.Option(help=_KEY_FILE_HELP)],
    shard: Annotated[
        str | None,
        typer.Option(
            help="The shard to restore it onto. Default: the least-loaded active shard of "
            "the tenant's region.",
            show_default=False,
        ),
    ] = None,
    as_new: Annotated[
        str | None,
        typer.Option(
            "--as-new",
            help="Restore it as a new tenant of this slug beside the original (a sandbox "
            "copy: new ids, new data keys, a first client of its own, webhooks disabled).",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="The new tenant's name (with --as-new). Default: the original's, with (sandbox).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Restore a tenant from its archive, as the same tenant (after a loss, or after it
    was deleted), or with --as-new as a new tenant beside it, onto any shard at the
    archive's schema revision. Everything is checked first; the tenant is reachable
    only once all of it is in place, and a failure leaves nothing behind."""
    from meridian.backups.archive import load_operator_key
    from meridian.backups.errors import BackupError
    from meridian.operations import import_tenant_archive

    with _one_line("tenants import", BackupError):
        if name is not None and as_new is None:
            raise BackupError("--name names the new tenant of --as-new")
        key = load_operator_key(key_file)

        async def work(rt: Runtime) -> dict[str, object]:
            return await import_tenant_archive(
                rt, archive, key, shard=shard, as_new=as_new, name=name
            )

        typer.echo(json.dumps(_with_runtime("tenants import", work)))


@projections_app.command("rebuild")
def projections_rebuild(
    tenant: Annotated[
        str | None,
        typer.Option(
            help="Only this tenant (id or slug). Default: every tenant.", show_default=False
        ),
    ] = None,
) -> None:
    """Compute the interaction summaries again from the activities (one transaction per
    tenant; the worker keeps them from then on)."""
    from meridian.operations import rebuild_projections

    async def work(rt: Runtime) -> dict[str, object]:
        return await rebuild_projections(rt, tenant)

    typer.echo(json.dumps(_with_runtime("projections rebuild", work)))


@search_app.command("rebuild")
def search_rebuild(
    tenant: Annotated[
        str | None,
        typer.Option(
            help="Only this tenant (id or slug). Default: every tenant.", show_default=False
        ),
    ] = None,
) -> None:
    """Compute the search index again from the records (one transaction per tenant;
    every write keeps it from then on). For records written around the app, such as
    rows loaded straight into a shard."""
    from meridian.operations import rebuild_search

    async def work(rt: Runtime) -> dict[str, object]:
        return await rebuild_search(rt, tenant)

    typer.echo(json.dumps(_with_runtime("search rebuild", work)))


@app.command()
def seed(
    tenants: Annotated[int, typer.Option(min=1, help="Tenants to create.")] = 10,
    contacts: Annotated[int, typer.Option(min=0, help="Contacts per tenant.")] = 2000,
    accounts_per_tenant: Annotated[
        int | None,
        typer.Option(min=1, help="Accounts per tenant. Default: a tenth of the contacts."),
    ] = None,
    opportunities_per_account: Annotated[
        float, typer.Option(min=0, help="Opportunities per account, on average.")
    ] = 1.5,
    activities_per_contact: Annotated[
        int, typer.Option(min=0, help="Activities per contact, on average.")
    ] = 5,
    region: Annotated[
        list[str] | None,
        typer.Option(
            help="Regions the tenants alternate over; repeat for several. Default: us, eu."
        ),
    ] = None,
    prefix: Annotated[str, typer.Option(help="Slug prefix of seeded tenants.")] = "seed",
    random_seed: Annotated[int, typer.Option(help="Same seed, same data.")] = 1,
    concurrency: Annotated[int, typer.Option(min=1, help="Tenants loaded at once.")] = 3,
    out: Annotated[
        Path, typer.Option(help="Credentials file for load tests (holds client secrets).")
    ] = DEFAULT_CREDENTIALS,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Create tenants with realistic CRM data in bulk (resumable)."""
    from loadtests.seed import SeedError, run_blocking
    from loadtests.seed import seed as run_seed

    with _one_line("seed", SeedError):
        result = run_blocking(
            run_seed(
                get_settings(),
                tenants=tenants,
                contacts=contacts,
                accounts_per_tenant=accounts_per_tenant,
                opportunities_per_account=opportunities_per_account,
                activities_per_contact=activities_per_contact,
                regions=tuple(region or ("us", "eu")),
                prefix=prefix,
                random_seed=random_seed,
                concurrency=concurrency,
                out=out,
                progress=progress,
            )
        )
    typer.echo(result.summary())


@app.command()
def loadtest(
    host: Annotated[
        str | None,
        typer.Option(
            help="Base URL of the platform under test. Default: the issuer of the platform "
            "this command acts on (the dev platform's URL).",
            show_default=False,
        ),
    ] = None,
    summary_json: Annotated[Path, typer.Option(help="Where to write the summary.")] = RESULTS_DIR
    / "summary.json",
    credentials: Annotated[
        Path, typer.Option(help="Credentials file written by `meridian seed`.")
    ] = DEFAULT_CREDENTIALS,
    users: Annotated[int, typer.Option(min=1, help="Simulated users.")] = 50,
    spawn_rate: Annotated[float, typer.Option(min=0.1, help="Users started per second.")] = 10.0,
    duration: Annotated[str, typer.Option(help="Run time, e.g. 30s, 5m, 1h30m.")] = "30s",
    html: Annotated[Path | None, typer.Option(help="Locust's HTML report.")] = RESULTS_DIR
    / "report.html",
    csv_prefix: Annotated[
        Path, typer.Option(help="Prefix of Locust's CSV files and log.")
    ] = RESULTS_DIR / "locust",
    max_error_rate: Annotated[
        float | None,
        typer.Option(
            help="Fail when more than this share of requests fails (0.01 = 1%).", show_default=False
        ),
    ] = None,
    max_p95_ms: Annotated[
        float | None,
        typer.Option(help="Fail when the p95 of all requests is above this.", show_default=False),
    ] = None,
    processes: Annotated[
        int,
        typer.Option(
            min=-1,
            help="Locust processes (-1: one per core). One tops out near 7-8k requests/s.",
        ),
    ] = 1,
    seed_tenants: Annotated[
        int | None,
        typer.Option(
            help="First seed this many tenants, unless the credentials file has them.",
            show_default=False,
        ),
    ] = None,
    seed_contacts: Annotated[int, typer.Option(help="Contacts per seeded tenant.")] = 2000,
    think_time: Annotated[
        str | None,
        typer.Option(
            help="Seconds between a user's actions, MIN-MAX. Default: 0.5-2.", show_default=False
        ),
    ] = None,
    zipf_s: Annotated[
        float | None,
        typer.Option(
            help="Zipf exponent of the tenant skew (0: uniform). Default: 1.1.", show_default=False
        ),
    ] = None,
    show_locust_output: Annotated[
        bool, typer.Option(help="Show Locust's own output instead of logging it.")
    ] = False,
) -> None:
    """Run the Locust suite headless; exits 1 when a threshold is broken."""
    import importlib.util

    if importlib.util.find_spec("locust") is None:
        typer.echo(
            "meridian loadtest: Locust is not installed; install the load-test extra: "
            "pip install 'meridian[loadtest]'",
            err=True,
        )
        raise typer.Exit(2)
    from loadtests.runner import SeedPlan, run_loadtest

    plan = SeedPlan(tenants=seed_tenants, contacts=seed_contacts) if seed_tenants else None
    raise typer.Exit(
        run_loadtest(
            host or get_settings().issuer,
            users,
            spawn_rate,
            duration,
            summary_json,
            credentials=credentials,
            html=html,
            csv_prefix=csv_prefix,
            max_error_rate=max_error_rate,
            max_p95_ms=max_p95_ms,
            processes=processes,
            seed_if_needed=plan,
            think_time=think_time,
            zipf_s=zipf_s,
            show_locust_output=show_locust_output,
        )
    )


def main() -> None:
    """The console script: errors a user can fix are one line on stderr, exit code 1."""
    from meridian.settings import DevPlatformError, KeyConfigError

    try:
        app()
    except (DevPlatformError, KeyConfigError) as exc:
        typer.echo(f"meridian: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:
        from meridian.operations import unreachable_database

        message = unreachable_database(exc)
        if message is None:
            raise
        typer.echo(f"meridian: {message}", err=True)
        sys.exit(1)
