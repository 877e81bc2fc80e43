"""``loadtests.bench.move`` end to end with tiny sizes: its own three PostgreSQL servers,
a Meridian server, the load process, the move, the read-back, everything removed at the
end. Figures are printed, never asserted; the acknowledged writes lost must be 0."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from loadtests.bench import move
from loadtests.bench.move import Window, longest_gap, main, parse_args, percentile
from meridian_dev.postgres import LocalCluster


def _leftover_servers() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("meridian-bench-move-*"))


def test_percentile_and_longest_gap() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert percentile([], 50) != percentile([], 50)  # NaN
    window = Window("during", 10.0, 20.0)
    assert longest_gap([11.0, 12.0, 17.5, 25.0], window) == pytest.approx(5.5)
    assert longest_gap([], window) == pytest.approx(10.0)


def test_sizes_are_checked() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--contacts", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--writers", "0"])
    assert parse_args([]).contacts == 100_000
    assert parse_args([]).writers == 8


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_move_under_load_runs_with_tiny_sizes(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _leftover_servers()
    argv = ["--contacts", "300", "--neighbours", "1", "--neighbour-contacts", "30"]
    argv += ["--writers", "4", "--before", "2", "--after", "1", "--no-fsync"]
    assert main([*argv, "--redis-url", redis_url]) == 0
    out = capsys.readouterr().out
    assert "| move state | done | done | met |" in out
    assert "| acknowledged writes lost | 0 | 0 | met |" in out
    assert "| reads, neighbour on src |" in out
    assert "| reads, neighbour on dst |" in out
    assert "PROBLEMS" not in out
    # The private servers (and their folders) are gone.
    assert _leftover_servers() <= before


@pytest.mark.slow
def test_the_servers_are_removed_when_the_run_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    before = _leftover_servers()
    started: list[Path] = []

    async def fail(servers: dict[str, LocalCluster], args: object) -> None:
        started.extend(s.root for s in servers.values())
        assert all(s.is_running() for s in servers.values())
        raise RuntimeError("seeding failed")

    monkeypatch.setattr(move, "prepare_platform", fail)
    with pytest.raises(RuntimeError, match="seeding failed"):
        main(["--contacts", "10", "--no-fsync", "--redis-url", ""])
    assert len(started) == 3
    assert not any(root.exists() for root in started)
    assert _leftover_servers() <= before
