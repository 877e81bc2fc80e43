"""Every MERIDIAN_* variable the deployment files name is a setting: pydantic-settings
ignores an unknown one, so a misspelt or stale name would be dropped without a word."""

from __future__ import annotations

import re
from pathlib import Path

from meridian.settings import Settings
from tests.deploy.dockerfile import ROOT

CHART = ROOT / "helm" / "meridian"
NAME = re.compile(r"\bMERIDIAN_[A-Z0-9_]*[A-Z0-9]\b")
# The chart's own variables, which MERIDIAN_SHARDS refers to as $(MERIDIAN_SHARD_0_DSN) so
# no DSN is written into the pod spec (helm/meridian/templates/_helpers.tpl).
CHART_INTERNAL = re.compile(r"MERIDIAN_SHARD_(\d+|%d)_(ADMIN_)?DSN")


def deployment_files() -> list[Path]:
    return [
        ROOT / "Dockerfile",
        ROOT / "compose.yaml",
        ROOT / "docs" / "deploy.md",
        CHART / "values.yaml",
        *sorted((CHART / "templates").iterdir()),
    ]


def setting_names() -> set[str]:
    return {f"MERIDIAN_{name.upper()}" for name in Settings.model_fields} | {
        # Read by the CLI itself (the dev platform's file), not a Settings field.
        "MERIDIAN_DEV_JSON",
    }


def unknown_names(text: str) -> set[str]:
    # The template writes MERIDIAN_SHARD_%d_DSN: read the name with its %d.
    text = text.replace("%d", "0")
    return {
        name
        for name in NAME.findall(text)
        if name not in setting_names() and not CHART_INTERNAL.fullmatch(name)
    }


def test_every_meridian_variable_named_is_a_setting() -> None:
    unknown = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in deployment_files()
        for name in unknown_names(path.read_text())
    }
    assert unknown == set()


def test_the_check_finds_an_unknown_name() -> None:
    assert unknown_names("MERIDIAN_REDIS_URLS: x\n- name: MERIDIAN_SHARD_0_DSN") == {
        "MERIDIAN_REDIS_URLS"
    }
    assert unknown_names("MERIDIAN_CONTROL_DSN MERIDIAN_* MERIDIAN_<SNAKE>") == set()
