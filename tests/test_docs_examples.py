"""The documentation runs as written: every shell example of the README and of
docs/api.md, taken from the Markdown (not copied here), runs in order in one bash
session against a live `meridian dev`, from the folder it runs in, with a new user's
environment (no MERIDIAN_* settings, the virtualenv's bin on PATH).

A block is skipped only when an HTML comment right above it says why:
``<!-- docs-test: skip (reason) -->``. Any `curl` answering 4xx/5xx fails the run,
unless the example prints the status itself (``-w '%{http_code}'``); a status it
announces in a trailing comment (``# 404``) must be the one printed.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.dev_platform import VENV_BIN, DevPlatform, clean_env, running_dev_platform

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ("README.md", "docs/api.md")
_FENCE = re.compile(r"^```bash\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_SKIP = re.compile(r"<!-- docs-test: skip \((?P<why>[^)]+)\) -->\s*$")
_ANNOUNCED = re.compile(r"#\s*(\d{3})\b")
_MARK = "::docs-example::"


@dataclass(frozen=True)
class Example:
    where: str  # file:line
    code: str
    skip: str | None

    def announced_statuses(self) -> list[str]:
        """The statuses the example says it prints, in order."""
        return [
            found.group(1)
            for line in self.code.splitlines()
            if (found := _ANNOUNCED.search(line)) and "http_code" in self._command_of(line)
        ]

    def _command_of(self, line: str) -> str:
        # The command a trailing comment belongs to may start on an earlier line.
        lines = self.code.splitlines()
        at = lines.index(line)
        start = at
        while start > 0 and lines[start - 1].rstrip().endswith("\\"):
            start -= 1
        return "\n".join(lines[start : at + 1])


def examples(document: str) -> list[Example]:
    text = (ROOT / document).read_text()
    found = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = _SKIP.search(before)
        line = text[: match.start()].count("\n") + 1
        found.append(Example(f"{document}:{line}", match.group(1), skip and skip["why"]))
    return found


ALL = [example for document in DOCUMENTS for example in examples(document)]

PRELUDE = f"""
set -euo pipefail
# An HTTP error fails the example, unless it prints the status itself.
curl() {{
    case " $* " in
        *"%{{http_code}}"*) command curl "$@" ;;
        *) command curl --fail-with-body "$@" ;;
    esac
}}
export PATH="{VENV_BIN}:$PATH"
"""


@pytest.fixture(scope="module")
def dev() -> Iterator[DevPlatform]:
    with running_dev_platform("meridian-docs-", env=clean_env()) as platform:
        yield platform


def test_every_example_is_found_and_every_skip_says_why() -> None:
    assert len([e for e in ALL if e.where.startswith("docs/api.md")]) >= 10
    assert any("oauth/token" in e.code for e in ALL if e.where.startswith("README.md"))
    for example in ALL:
        assert example.skip is None or example.skip.strip(), example.where


def test_the_examples_run_in_order_against_meridian_dev(dev: DevPlatform) -> None:
    runnable = [e for e in ALL if e.skip is None]
    script = PRELUDE + "".join(
        f"\necho '{_MARK}{n}'\n{example.code}" for n, example in enumerate(runnable)
    )
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=dev.workdir,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    outputs: dict[int, str] = {}
    for chunk in done.stdout.split(_MARK)[1:]:
        number, _, output = chunk.partition("\n")
        outputs[int(number)] = output
    ran = len(outputs)
    if done.returncode != 0:
        failed = runnable[ran - 1] if ran else None
        pytest.fail(
            f"example at {failed and failed.where} failed ({done.returncode}):\n"
            f"{failed and failed.code}\n--- stdout ---\n{outputs.get(ran - 1, '')}"
            f"\n--- stderr ---\n{done.stderr[-3000:]}"
        )
    assert ran == len(runnable)
    for n, example in enumerate(runnable):
        printed = [line for line in outputs[n].splitlines() if re.fullmatch(r"\d{3}", line)]
        assert printed == example.announced_statuses(), (example.where, outputs[n])
