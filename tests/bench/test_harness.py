"""The benchmark harness's pure helpers: wrk output and scripts, ratios, tables.

No figures are asserted here: benchmarks print numbers, they are never timed tests.
"""

from __future__ import annotations

import uuid

import pytest

from loadtests.bench import citus
from loadtests.bench.cli import _get_requests, main, parse_args
from loadtests.bench.many import ManyTenant, many_cases, many_ratios, many_requests
from loadtests.bench.prepare import BenchTenant, contact_sql
from loadtests.bench.report import (
    Case,
    Ratio,
    Report,
    WrkOutputError,
    WrkResult,
    counter_total,
    docs_section,
    median_result,
    parse_wrk,
    wrk_script,
)
from tests.fixtures.citus import ensure_citus_installed

# Verbatim output of wrk 4.1.0 (Debian) with --latency.
WRK_OUTPUT = """\
Running 1s test @ http://127.0.0.1:18931/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.44ms    2.20ms  13.69ms   74.22%
    Req/Sec     1.20k   185.77     1.50k    72.73%
  Latency Distribution
     50%    2.86ms
     75%    4.54ms
     90%    6.54ms
     99%   10.54ms
  1317 requests in 1.10s, 2.68MB read
Requests/sec:   1196.23
Transfer/sec:      2.44MB
"""

WRK_WITH_ERRORS = """\
Running 10s test @ http://127.0.0.1:8000
  1 threads and 64 connections
  Latency Distribution
     50%  850.00us
     75%    1.20ms
     90%    2.00ms
     99%    1.50s
  40000 requests in 10.00s, 5.00MB read
  Socket errors: connect 0, read 3, write 1, timeout 2
  Non-2xx or 3xx responses: 12
Requests/sec:   4000.00
Transfer/sec:    512.00KB
"""


def test_parse_wrk_reads_throughput_and_percentiles() -> None:
    result = parse_wrk(WRK_OUTPUT)
    assert result == WrkResult(requests_per_sec=1196.23, p50_ms=2.86, p99_ms=10.54, requests=1317)


def test_parse_wrk_converts_units_and_counts_errors() -> None:
    result = parse_wrk(WRK_WITH_ERRORS)
    assert result.p50_ms == pytest.approx(0.85)
    assert result.p99_ms == pytest.approx(1500.0)
    assert result.non_2xx == 12
    assert result.socket_errors == 6


def test_parse_wrk_refuses_output_without_latency_figures() -> None:
    with pytest.raises(WrkOutputError):
        parse_wrk("unable to connect to 127.0.0.1:8000 Connection refused\n")
    without_latency = WRK_OUTPUT.replace("     99%   10.54ms\n", "")
    with pytest.raises(WrkOutputError):
        parse_wrk(without_latency)


def test_median_result_takes_medians_and_adds_errors() -> None:
    runs = [
        WrkResult(100.0, 1.0, 10.0, 1000, non_2xx=1),
        WrkResult(300.0, 3.0, 30.0, 3000),
        WrkResult(200.0, 2.0, 90.0, 2000, socket_errors=2),
    ]
    assert median_result(runs) == WrkResult(200.0, 2.0, 30.0, 6000, non_2xx=1, socket_errors=2)
    with pytest.raises(ValueError, match="no results"):
        median_result([])


def test_wrk_script_cycles_through_paths_and_tokens() -> None:
    script = wrk_script([("/v1/contacts/a", "tok-1"), ("/hello", None), ('/q?x="1"', "t")])
    assert '{"/v1/contacts/a", "Bearer tok-1"},' in script
    assert '{"/hello", nil},' in script
    assert r'{"/q?x=\"1\"", "Bearer t"},' in script
    # Requests are formatted in init (after wrk sets Host), then only picked per request.
    assert "function init(args)" in script
    assert 'reqs[k] = wrk.format("GET", spec[1], headers, body)' in script
    assert "i = i % n + 1" in script
    with pytest.raises(ValueError, match="no requests"):
        wrk_script([])


def test_wrk_script_sends_a_body_with_its_method() -> None:
    script = wrk_script([("/v1/contacts", "t")], method="POST", body='{"last_name": "B"}')
    assert 'local body = "{\\"last_name\\": \\"B\\"}"' in script
    assert 'headers["Content-Type"] = "application/json"' in script
    assert 'reqs[k] = wrk.format("POST", spec[1], headers, body)' in script
    assert "local body = nil" in wrk_script([("/hello", None)])
    with pytest.raises(ValueError, match="not an HTTP method"):
        wrk_script([("/hello", None)], method='GET", "x')


def test_ratios_and_verdicts() -> None:
    results = {
        "a": WrkResult(600.0, 2.0, 20.0, 1),
        "b": WrkResult(1000.0, 1.0, 10.0, 1),
    }
    throughput = Ratio("a/b", "a", "b", "rps", at_least=0.5)
    latency = Ratio("a p99/b p99", "a", "b", "p99", at_most=1.0)
    info = Ratio("a p50/b p50", "a", "b", "p50")
    missing = Ratio("c/b", "c", "b", "rps", at_least=1.0)
    assert throughput.value(results) == pytest.approx(0.6)
    assert throughput.verdict(0.6) == "met"
    assert throughput.target == "≥ 0.5"
    assert latency.value(results) == pytest.approx(2.0)
    assert latency.verdict(2.0) == "missed"
    assert latency.target == "≤ 1"
    assert info.verdict(info.value(results)) == ""
    assert missing.value(results) is None
    assert missing.verdict(None) == "n/a"


def test_report_tables() -> None:
    report = Report(
        cases=[Case("a", "case A", "Meridian"), Case("b", "case B", "bare")],
        results={"a": WrkResult(13703.4, 4.356, 8.17, 1, non_2xx=3)},
        ratios=[Ratio("a/b", "a", "b", "rps", at_least=0.5)],
        notes=["a note"],
    )
    text = report.markdown()
    assert "| case A | Meridian | 13 703 | 4.36 | 8.17 | 3 | 0 |" in text
    assert "| case B | bare | not run | | | | |" in text
    assert "| a/b | n/a | ≥ 0.5 | n/a |" in text
    assert text.endswith("- a note")
    section = docs_section(
        title="Run", command="python -m loadtests.bench", environment=["Date: today"], report=report
    )
    assert section.startswith("\n## Run\n")
    assert "```\npython -m loadtests.bench\n```" in section
    assert "- Date: today" in section


def test_counter_total_sums_matching_samples() -> None:
    metrics = "\n".join(
        [
            "# HELP meridian_cache_requests_total Cache look-ups by level, kind and result.",
            "# TYPE meridian_cache_requests_total counter",
            'meridian_cache_requests_total{kind="contact",level="l1",result="hit"} 120.0',
            'meridian_cache_requests_total{kind="contact",level="l2",result="hit"} 5.0',
            'meridian_cache_requests_total{kind="contact",level="l1",result="miss"} 7.0',
            'meridian_cache_requests_total{kind="account",level="l1",result="hit"} 9.0',
            'meridian_cache_requests_created{kind="contact",level="l1",result="hit"} 1.7e9',
        ]
    )
    total = counter_total(metrics, "meridian_cache_requests_total", kind="contact", result="hit")
    assert total == 125.0
    assert counter_total(metrics, "absent_total") == 0.0


def test_get_requests_alternate_between_tenants() -> None:
    a = BenchTenant(uuid.uuid4(), "us-1", "ta", [uuid.UUID(int=1), uuid.UUID(int=2)])
    b = BenchTenant(uuid.uuid4(), "eu-1", "tb", [uuid.UUID(int=3), uuid.UUID(int=4)])
    requests = _get_requests([a, b])
    assert [token for _, token in requests] == ["ta", "tb", "ta", "tb"]
    assert requests[1][0] == f"/v1/contacts/{uuid.UUID(int=3)}"


def test_bare_endpoint_runs_meridians_own_sql() -> None:
    get_sql, list_sql = contact_sql()
    assert "FROM contact" in get_sql
    assert "contact.tenant_id = $1" in get_sql
    assert "contact.id = $2" in get_sql
    assert "tenant_id" not in get_sql.split("FROM")[0]  # the API never returns it
    assert "ORDER BY contact.created_at ASC, contact.id ASC" in list_sql
    assert "LIMIT $2" in list_sql


def test_cli_rejects_unknown_cases() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--cases", "hello,nonsense"])
    assert parse_args(["--cases", "hello", "--workers", "2"]).workers == 2


def test_many_tenants_case_is_declared_and_asked_for_by_name() -> None:
    assert parse_args([]).many_counts == []  # not in the default run: it seeds thousands
    args = parse_args(["--cases", "many", "--many-tenants", "1000,10,10000"])
    assert args.many_counts == [10, 1000, 10000]
    assert [c.key for c in many_cases(args.many_counts)] == ["many_10", "many_1000", "many_10000"]
    ratios = many_ratios(args.many_counts)
    assert {(r.numerator, r.denominator) for r in ratios} == {
        ("many_1000", "many_10"),
        ("many_10000", "many_10"),
    }
    with pytest.raises(SystemExit):
        parse_args(["--cases", "many", "--many-tenants", "0,10"])


def test_many_requests_spread_evenly_over_the_tenants() -> None:
    tenants = [
        ManyTenant(uuid.uuid4(), f"c{i}", "s", [uuid.UUID(int=10 * i + k) for k in range(3)])
        for i in range(4)
    ]
    tokens = [f"t{i}" for i in range(4)]
    requests = many_requests(tenants, tokens, 2)
    assert [token for _, token in requests] == ["t0", "t1"] * 3  # every contact of both
    assert {path for path, _ in requests} == {
        f"/v1/contacts/{cid}" for t in tenants[:2] for cid in t.contact_ids
    }
    assert len(many_requests(tenants, tokens, 4)) == 12
    with pytest.raises(ValueError, match="5 wanted"):
        many_requests(tenants, tokens, 5)


@pytest.mark.timeout(600)
def test_many_tenants_case_runs_with_tiny_sizes(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole harness on the case, tiny: its own databases, 3 tenants seeded, one
    server, wrk for a second per N. Figures are printed, never asserted."""
    prefix = f"benchtest_{uuid.uuid4().hex[:8]}"
    argv = ["--cases", "many", "--many-tenants", "2,3", "--many-contacts", "2", "--contacts", "3"]
    argv += ["--duration", "1", "--warmup", "0", "--connections", "4", "--db-prefix", prefix]
    assert main([*argv, "--redis-url", redis_url]) == 0
    out = capsys.readouterr().out
    assert "spread over 2 tenants" in out
    assert "spread over 3 tenants" in out
    assert "3 tenants / 2 tenants (req/s)" in out


def test_citus_cases_run_by_default_only_where_they_can() -> None:
    default = parse_args([])
    assert citus.KEY in default.cases.split(",")
    assert default.citus_asked is False  # left out, with the reason, without Citus
    assert parse_args(["--cases", "hello,citus"]).citus_asked is True
    assert parse_args(["--cases", "hello"]).citus_asked is False
    keys = {c.key for c in citus.CASES}
    for ratio in citus.RATIOS:  # each Citus case against its plain twin
        assert {ratio.numerator, ratio.denominator} <= keys
        assert ratio.numerator.replace("citus_", "plain_") == ratio.denominator


@pytest.mark.timeout(600)
def test_citus_cases_run_with_tiny_sizes(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Citus cases end to end, tiny: a private 3-node cluster registered as a shard
    of the harness's own platform, a tenant on it and one on a plain shard, wrk for a
    second per case, the cluster removed. Figures are printed, never asserted."""
    ensure_citus_installed()  # a skip saying why where Citus cannot be had
    prefix = f"benchtest_{uuid.uuid4().hex[:8]}"
    argv = ["--cases", "citus", "--contacts", "60", "--duration", "1", "--warmup", "0"]
    argv += ["--connections", "4", "--db-prefix", prefix, "--redis-url", redis_url]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for case in citus.CASES:
        assert case.label in out
    for ratio in citus.RATIOS:
        assert f"| {ratio.label} | n/a |" not in out
        assert ratio.label in out
    assert "a coordinator and 2 workers" in out
