"""The image (./Dockerfile, ./.dockerignore), checked without a Docker engine: its stages
and instructions as written, the build context .dockerignore lets through, and the wheel
that context builds (what the runtime stage gets), which must carry the migrations."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.dockerfile import DOCKERFILE, ROOT, Instruction, Stage, stages, user_ids

CHART = ROOT / "helm" / "meridian"


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def final_stage() -> Stage:
    return stages()[1][-1]


def builder_stage() -> Stage:
    _, found = stages()
    (builder,) = [s for s in found if s.name == "builder"]
    return builder


def env_of(stage: Stage) -> dict[str, str]:
    """A stage's ENV values (KEY=value form, as this Dockerfile writes them)."""
    env: dict[str, str] = {}
    for ins in stage.all("ENV"):
        for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", ins.args):
            env[key] = value
    return env


def test_two_stages_on_the_pinned_slim_python() -> None:
    global_args, found = stages()
    assert [s.name for s in found] == ["builder", "runtime"]
    assert global_args["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    for stage in found:
        assert stage.base == "python:3.11-slim-bookworm", stage.name
    # Every image a build pulls is pinned by a tag (never latest or none).
    pulled = [s.base for s in found] + [
        m.group(1)
        for s in found
        for ins in s.all("COPY")
        if (m := re.search(r"--from=(\S+)", ins.args)) and ":" in m.group(1)
    ]
    for image in pulled:
        assert re.fullmatch(r"[\w./-]+:[\w.-]+(@sha256:[0-9a-f]{64})?", image), image
        assert not image.endswith(":latest"), image


def test_the_python_matches_the_project() -> None:
    assert pyproject()["project"]["requires-python"] == ">=3.11,<3.12"
    assert "3.11" in final_stage().base


def test_builder_installs_the_locked_dependencies_with_uv() -> None:
    builder = builder_stage()
    syncs = [i for i in builder.all("RUN") if "uv sync" in i.args]
    assert len(syncs) == 2, "dependencies first (a cached layer), then the project"
    for run in syncs:
        assert "--locked" in run.args, run.args  # never resolve anew in a build
        assert "--no-dev" in run.args, run.args
        assert "--no-editable" in run.args, run.args
    assert "--no-install-project" in syncs[0].args
    # The lock file is in the context before the first sync reads it.
    position = builder.instructions.index
    copies = builder.all("COPY")
    lock_copy = next(c for c in copies if "uv.lock" in c.args.split())
    assert position(lock_copy) < position(syncs[0])
    assert "pyproject.toml" in lock_copy.args.split()
    # The sources come after the dependency layer, so a code change reuses it.
    assert any(position(c) > position(syncs[0]) for c in copies)


def test_uv_is_the_version_scripts_setup_pins() -> None:
    setup = (ROOT / "scripts" / "setup").read_text()
    pinned = re.search(r"^UV_VERSION=(\S+)$", setup, re.MULTILINE)
    assert pinned
    (arg,) = [i for i in builder_stage().all("ARG") if i.args.startswith("UV_VERSION=")]
    assert arg.args == f"UV_VERSION={pinned.group(1)}"
    assert any('"uv==${UV_VERSION}"' in i.args for i in builder_stage().all("RUN"))


def test_runtime_gets_the_builders_venv_and_puts_it_first_on_path() -> None:
    venv = env_of(builder_stage())["UV_PROJECT_ENVIRONMENT"]
    copies = [i.args for i in final_stage().all("COPY")]
    assert copies == [f"--from=builder {venv} {venv}"]
    assert env_of(final_stage())["PATH"].startswith(f"{venv}/bin:")
    # Compiled at build time: the chart's root filesystem is read-only.
    assert env_of(builder_stage())["UV_COMPILE_BYTECODE"] == "1"
    assert env_of(final_stage())["PYTHONDONTWRITEBYTECODE"] == "1"


def test_runs_as_a_numeric_non_root_user_the_chart_matches() -> None:
    stage = final_stage()
    uid, gid = user_ids(stage)
    assert uid != 0
    assert gid != 0
    # USER is the last word on the user: nothing after it switches back.
    users = stage.all("USER")
    assert stage.instructions.index(users[-1]) > max(
        stage.instructions.index(i) for i in stage.all("RUN")
    )
    (adduser,) = [i.args for i in stage.all("RUN") if "useradd" in i.args]
    assert f"--uid {uid}" in adduser
    assert f"--gid {gid}" in adduser
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    pod = values["podSecurityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (uid, gid, gid)
    assert pod["runAsNonRoot"] is True


def test_entrypoint_is_meridian_and_the_default_command_serves() -> None:
    stage = final_stage()
    assert stage.last("ENTRYPOINT").exec_form() == ["meridian"]
    cmd = stage.last("CMD").exec_form()
    assert cmd[0] == "serve"
    port = cmd[cmd.index("--port") + 1]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"  # noqa: S104 - reachable from outside the container
    exposed = stage.last("EXPOSE").args.split()
    assert port in exposed
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert str(values["worker"]["metrics"]["port"]) in exposed
    assert str(values["api"]["port"]) == port


def test_healthcheck_asks_healthz_with_python() -> None:
    stage = final_stage()
    check: Instruction = stage.last("HEALTHCHECK")
    argv = check.exec_form()
    assert argv[0] == "python"  # the slim image has no curl or wget
    assert "HEALTHCHECK_URL" in argv[-1]
    url = env_of(stage)["HEALTHCHECK_URL"]
    cmd = stage.last("CMD").exec_form()
    assert url == f"http://127.0.0.1:{cmd[cmd.index('--port') + 1]}/healthz"


def test_oci_labels() -> None:
    labels = " ".join(i.args for i in final_stage().all("LABEL"))
    for key in ("title", "description", "version", "revision", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    (version,) = [i.args for i in final_stage().all("ARG") if i.args.startswith("VERSION=")]
    assert version == f"VERSION={pyproject()['project']['version']}"


def test_documented_image_is_the_charts_default() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    repository = values["image"]["repository"]
    assert values["image"]["tag"] == ""  # the appVersion
    build = re.search(r"docker build -t (\S+):(\S+) ", DOCKERFILE.read_text())
    assert build, "the Dockerfile documents its build command"
    assert build.groups() == (repository, chart["appVersion"])
    assert chart["appVersion"] == pyproject()["project"]["version"]


# -- the build context and the wheel it builds -----------------------------------------


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex over slash-separated relative paths."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        rules.append((negated, _pattern(line.lstrip("!").strip("/"))))
    return rules


def in_context(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path, or a folder above it, decides."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for negated, rule in rules:
        if any(rule.fullmatch(p) for p in prefixes):
            included = negated
    return included


def build_context(dest: Path) -> list[str]:
    """Copies what .dockerignore lets into the build context to ``dest``; returns it."""
    rules = dockerignore_rules()
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    kept = [p for p in tracked if (ROOT / p).is_file() and in_context(p, rules)]
    for relative in kept:
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, target)
    return kept


def test_dockerignore_keeps_what_the_wheel_needs_and_nothing_else() -> None:
    rules = dockerignore_rules()
    config = pyproject()["tool"]["hatch"]["build"]["targets"]["wheel"]
    sources = [*config["packages"], *config["force-include"]]
    for needed in ["pyproject.toml", "uv.lock", "README.md", *sources]:
        assert in_context(needed, rules), needed
        assert in_context(f"{needed}/x.py", rules) or not (ROOT / needed).is_dir(), needed
    for kept_out in [
        ".venv/bin/python",
        ".meridian/dev.json",
        "tests/conftest.py",
        "docs/api.md",
        "helm/meridian/values.yaml",
        ".git/HEAD",
        "platform/meridian/__pycache__/app.cpython-311.pyc",
        "loadtests/results/run.json",
        "compose.yaml",
    ]:
        assert not in_context(kept_out, rules), kept_out


def test_dockerignore_reading_is_docker_s() -> None:
    """The reader above, on patterns whose outcome Docker documents."""
    rules = [(False, _pattern("*")), (True, _pattern("src")), (False, _pattern("**/*.pyc"))]
    assert in_context("src/a/b.py", rules)
    assert not in_context("src/a/b.pyc", rules)
    assert not in_context("other/b.py", rules)
    assert not in_context("top.txt", rules)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `uv sync --no-editable` installs, built from the Docker build context."""
    uv = shutil.which("uv")
    assert uv, "uv is on PATH wherever scripts/setup ran"
    context = tmp_path_factory.mktemp("context")
    build_context(context)
    out = tmp_path_factory.mktemp("dist")
    # The build backend (hatchling) is in uv's cache wherever scripts/setup installed the
    # project; without it, uv fetches it from the package index.
    for extra in (["--offline"], []):
        done = subprocess.run(
            [uv, "build", "--wheel", "--out-dir", str(out), *extra, str(context)],
            capture_output=True, text=True, check=False, timeout=300,
        )  # fmt: skip
        if done.returncode == 0:
            break
    assert done.returncode == 0, done.stderr
    (built,) = out.glob("meridian-*.whl")
    return built


def test_the_wheel_carries_every_migration(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    source = ROOT / "platform" / "migrations"
    expected = {
        f"migrations/{p.relative_to(source).as_posix()}"
        for p in source.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert {"migrations/control/env.py", "migrations/shard/env.py"} <= expected
    assert expected - names == set()
    assert "meridian/migrate.py" in names
    assert "meridian/cli.py" in names


def test_installed_wheel_finds_its_migrations(wheel: Path, tmp_path: Path) -> None:
    """Unpacked as an installer would (pure Python: everything in site-packages), the
    wheel's meridian.migrate finds both Alembic trees and their heads."""
    site = tmp_path / "site-packages"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import json, meridian, meridian.migrate as m\n"
        "from alembic.script import ScriptDirectory\n"
        "heads = {p: ScriptDirectory.from_config(m.alembic_config(p, 'r')).get_heads()"
        " for p in ('control', 'shard')}\n"
        "print(json.dumps({'meridian': meridian.__file__, 'migrations': str(m.MIGRATIONS),"
        " 'heads': heads}))\n"
    )
    # The wheel first on the path, so its meridian shadows the checkout's.
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True, text=True, check=False, cwd=tmp_path, timeout=120,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["meridian"].startswith(str(site))
    assert found["migrations"] == str(site / "migrations")
    for plane in ("control", "shard"):
        assert found["heads"][plane] == source_heads(plane), plane


def source_heads(plane: str) -> list[str]:
    """The revisions of a tree in the checkout that no other revision follows."""
    revisions: set[str] = set()
    followed: set[str] = set()
    for path in (ROOT / "platform" / "migrations" / plane / "versions").glob("*.py"):
        text = path.read_text()
        revision = re.search(r'^revision = "([^"]+)"', text, re.MULTILINE)
        assert revision, path
        revisions.add(revision.group(1))
        followed.update(re.findall(r'^down_revision = "([^"]+)"', text, re.MULTILINE))
    return sorted(revisions - followed)
