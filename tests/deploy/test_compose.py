"""compose.yaml, checked without a Docker engine: against the Compose Specification's
schema, then what the schema cannot say (dependencies, health checks, ports, and that
each Meridian service's environment makes the Settings it needs)."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from jsonschema import validators

from meridian.settings import Settings
from tests.deploy.dockerfile import ROOT

COMPOSE = ROOT / "compose.yaml"
HERE = Path(__file__).resolve().parent
SCHEMA = HERE / "compose-spec.json"
CHART_VALUES = ROOT / "helm" / "meridian" / "values.yaml"


def raw_compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


_VARIABLE = re.compile(
    r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation of every string value: ${VAR}, ${VAR:-default},
    ${VAR-default}, $VAR, and $$ for a literal $."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        found = env.get(name)
        if m.group("op") == ":-" and not found:
            return str(m.group("default"))
        if m.group("op") == "-" and found is None:
            return str(m.group("default"))
        return found or ""

    return _VARIABLE.sub(one, value)


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """compose.yaml as Compose reads it: anchors merged, variables substituted."""
    doc: dict[str, Any] = interpolate(raw_compose(), env or {})
    return doc


def services(env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose(env)["services"]
    return found


def command(service: dict[str, Any]) -> list[str]:
    value = service.get("command", [])
    return value if isinstance(value, list) else value.split()


def meridian_services(env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services(env).items() if s.get("image") == "meridian:local"}


def by_command(first: str) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in meridian_services().items() if command(s)[:1] == [first]}


def compose_errors(doc: dict[str, Any]) -> list[str]:
    schema = json.loads(SCHEMA.read_text())
    validator = validators.validator_for(schema)(schema)
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]


# -- the Compose Specification ----------------------------------------------------------


def test_the_vendored_schema_is_the_documented_one() -> None:
    documented = re.search(r"sha256: `([0-9a-f]{64})`", (HERE / "README.md").read_text())
    assert documented
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == documented.group(1)
    schema = json.loads(SCHEMA.read_text())
    validators.validator_for(schema).check_schema(schema)


def test_compose_file_follows_the_compose_specification() -> None:
    assert compose_errors(raw_compose()) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("services.api-1.depends_on.migrate.condition", "service_done"),
        ("services.worker.environment", "MERIDIAN_LOG_FORMAT=json"),
        ("services.redis.replicas", 2),
        ("services.api-1.ports", "8001:8000"),
        ("services.migrate.healthcheck.timeout", ["5s"]),
        ("configs.proxy.contents", "x"),
    ],
)
def test_the_schema_refuses_what_compose_would(path: str, value: Any) -> None:
    doc = copy.deepcopy(raw_compose())
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node[part]
    node[last] = value
    assert compose_errors(doc), f"{path}={value!r} was accepted"


# -- what the schema cannot say -----------------------------------------------------------


def test_the_stack_has_its_services() -> None:
    found = services()
    postgres = sorted(n for n, s in found.items() if s.get("image", "").startswith("postgres:15"))
    assert postgres == ["control-db", "shard-eu-db", "shard-us-db"]
    assert [n for n, s in found.items() if s.get("image", "").startswith("redis:")] == ["redis"]
    assert sorted(by_command("serve")) == ["api-1", "api-2"]
    assert list(by_command("worker")) == ["worker"]
    assert list(by_command("migrate")) == ["migrate"]
    for name, service in meridian_services().items():
        # Built from ./Dockerfile, whose final stage is the runtime.
        assert service["build"]["context"] == ".", name
        assert "dockerfile" not in service["build"], name


def test_every_dependency_is_a_service_and_waits_for_the_right_state() -> None:
    found = services()
    for name, service in found.items():
        for dependency, wait in service.get("depends_on", {}).items():
            assert dependency in found, f"{name} depends on {dependency}, which is no service"
            target = found[dependency]
            if wait["condition"] == "service_healthy":
                check = target.get("healthcheck", {})
                assert check.get("test"), (name, dependency)
                assert not check.get("disable"), (name, dependency)
            else:
                assert wait["condition"] == "service_completed_successfully", (name, dependency)
                assert target.get("restart") == "no", dependency
    migrate = found["migrate"]["depends_on"]
    assert {d: w["condition"] for d, w in migrate.items()} == {
        "control-db": "service_healthy",
        "shard-us-db": "service_healthy",
        "shard-eu-db": "service_healthy",
    }
    for name in ("api-1", "api-2", "worker"):
        assert {d: w["condition"] for d, w in found[name]["depends_on"].items()} == {
            "migrate": "service_completed_successfully",
            "redis": "service_healthy",
        }, name
    assert set(found["proxy"]["depends_on"]) == {"api-1", "api-2"}


def test_long_running_services_have_health_checks() -> None:
    for name, service in services().items():
        check = service.get("healthcheck", {})
        if service.get("restart") == "no":
            continue  # a one-shot: done is its state
        assert check.get("test"), name
        assert not check.get("disable"), name
        assert service.get("restart") == "unless-stopped", name


def test_the_one_shot_migration() -> None:
    migrate = services()["migrate"]
    assert command(migrate) == ["migrate"]
    assert migrate["restart"] == "no"
    # The image's /healthz check would call it unhealthy while it runs.
    assert migrate["healthcheck"] == {"disable": True}
    assert "ports" not in migrate
    # `up --wait` takes a one-shot's exit as done only when a service waits for it so.
    waiting = [
        name
        for name, service in services().items()
        if service.get("depends_on", {}).get("migrate", {}).get("condition")
        == "service_completed_successfully"
    ]
    assert sorted(waiting) == ["api-1", "api-2", "worker"]


def _published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    out = []
    for spec in service.get("ports", []):
        host_ip, host_port, container_port = str(spec).split(":")
        out.append((host_ip, int(host_port), int(container_port)))
    return out


def test_published_ports_are_unique_and_on_loopback() -> None:
    seen: dict[int, str] = {}
    for name, service in services().items():
        for host_ip, host_port, _ in _published(service):
            assert host_ip == "127.0.0.1", name
            assert host_port not in seen, f"{name} and {seen.get(host_port)} publish {host_port}"
            seen[host_port] = name
    # Databases and Redis stay inside the stack's network.
    for name in ("control-db", "shard-us-db", "shard-eu-db", "redis"):
        assert "ports" not in services()[name], name


def test_api_instances_log_json_check_healthz_and_share_metrics_across_workers() -> None:
    for name, api in by_command("serve").items():
        argv = command(api)
        port = int(argv[argv.index("--port") + 1])
        workers = int(argv[argv.index("--workers") + 1])
        env = api["environment"]
        assert env["MERIDIAN_LOG_FORMAT"] == "json", name
        assert f"http://127.0.0.1:{port}/healthz" in " ".join(api["healthcheck"]["test"]), name
        assert [p[2] for p in _published(api)] == [port], name
        assert api["read_only"] is True, name
        if workers > 1:
            folder = env["PROMETHEUS_MULTIPROC_DIR"]
            # Writable although the root filesystem is not: on the tmpfs.
            assert any(folder.startswith(t.rstrip("/") + "/") for t in api["tmpfs"]), name


def test_worker_serves_metrics_on_the_port_it_checks_and_publishes() -> None:
    worker = services()["worker"]
    port = int(worker["environment"]["MERIDIAN_WORKER_METRICS_PORT"])
    assert f"http://127.0.0.1:{port}/metrics" in " ".join(worker["healthcheck"]["test"])
    assert ("127.0.0.1", port, port) in _published(worker)
    chart = yaml.safe_load(CHART_VALUES.read_text())
    assert chart["worker"]["metrics"]["port"] == port


def test_the_proxy_balances_over_both_api_instances() -> None:
    found = compose()
    config = found["configs"]["proxy"]["content"]
    upstreams = re.findall(r"server ([\w-]+):(\d+);", config)
    apis = by_command("serve")
    assert sorted(upstreams) == sorted(
        (name, command(api)[command(api).index("--port") + 1]) for name, api in apis.items()
    )
    # What compose hands nginx: its own variables, not ones compose emptied.
    assert "$http_host" in config
    assert "proxy_buffering off" in config  # live streams
    (published,) = _published(found["services"]["proxy"])
    assert f"listen {published[2]};" in config
    for api in apis.values():
        assert api["environment"]["MERIDIAN_ISSUER"] == f"http://127.0.0.1:{published[1]}"


def _settings_of(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    with monkeypatch.context() as m:
        for name in [n for n in os.environ if n.startswith("MERIDIAN_")]:
            m.delenv(name)
        for name, value in env.items():
            if name.startswith("MERIDIAN_"):
                m.setenv(name, str(value))
        return Settings()


def _user_host_db(dsn: str) -> tuple[str | None, str | None, str]:
    parts = urlsplit(dsn)
    return parts.username, parts.hostname, parts.path.lstrip("/")


def test_each_meridian_service_gets_the_settings_it_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    found = services()
    shard_hosts = {"us-1": "shard-us-db", "eu-1": "shard-eu-db"}
    for name in ("api-1", "api-2", "worker", "migrate"):
        settings = _settings_of(found[name]["environment"], monkeypatch)
        assert _user_host_db(settings.control_dsn) == (
            "meridian_app", "control-db", "meridian_control",
        ), name  # fmt: skip
        assert settings.app_db_role == "meridian_app"
        assert {s.id: s.region for s in settings.shards} == {"us-1": "us", "eu-1": "eu"}, name
        for shard in settings.shards:
            assert _user_host_db(shard.dsn) == (
                "meridian_app",
                shard_hosts[shard.id],
                "meridian_shard",
            )
        assert urlsplit(settings.redis_url or "").hostname == "redis", name
        settings.key_provider()  # the KEK loads: the API and the worker refuse to start without
        if name == "migrate":
            # Registers each shard with its owner DSN (migrations, tenant moves).
            assert _user_host_db(settings.control_migrate_dsn)[0] == "meridian_owner"
            for shard in settings.shards:
                assert shard.admin_dsn is not None
                assert _user_host_db(shard.admin_dsn) == (
                    "meridian_owner", shard_hosts[shard.id], "meridian_shard",
                )  # fmt: skip
        else:
            # The API and the worker never hold an owner's credentials.
            assert settings.control_admin_dsn is None, name
            assert all(s.admin_dsn is None for s in settings.shards), name
    assert _settings_of(found["worker"]["environment"], monkeypatch).worker_metrics_port == 9101


@pytest.mark.parametrize(
    "env",
    [{}, {"DEV_POSTGRES_PASSWORD": "owner-x", "DEV_APP_DB_PASSWORD": "app-y"}],
    ids=["defaults", "overridden"],
)
def test_every_password_has_one_source(env: dict[str, str]) -> None:
    """The role's password, the servers' and the DSNs' agree, defaults or overridden:
    none is written twice by hand."""
    doc = compose(env)
    found = doc["services"]
    app_role = re.search(r"PASSWORD '([^']*)'", doc["configs"]["app-role"]["content"])
    assert app_role
    servers = ("control-db", "shard-us-db", "shard-eu-db")
    (owner,) = {found[n]["environment"]["POSTGRES_PASSWORD"] for n in servers}
    expected = {"meridian_app": app_role.group(1), "meridian_owner": owner}
    dsns = re.findall(r"postgresql\+asyncpg://(\w+):([^@]*)@", json.dumps(found))
    assert {user for user, _ in dsns} == set(expected)
    for user, password in dsns:
        assert password == expected[user], user
    if env:
        assert expected == {"meridian_app": "app-y", "meridian_owner": "owner-x"}


def test_shard_servers_can_move_tenants() -> None:
    for name in ("shard-us-db", "shard-eu-db"):
        assert "wal_level=logical" in command(services()[name]), name
        assert services()[name]["environment"]["POSTGRES_USER"] == "meridian_owner"


def test_dev_credentials_are_marked_as_such() -> None:
    text = COMPOSE.read_text()
    assert "DEVELOPMENT CREDENTIALS ONLY" in text
    defaults = re.findall(r"\$\{DEV_[A-Z_]+:-([^}]*)\}", text)
    assert defaults
    for value in defaults:
        # Each default says what it is, or decodes to something that does (the KEK).
        said = value if "dev-only" in value else base64.b64decode(value).decode()
        assert "dev-only" in said, value
