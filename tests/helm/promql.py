"""The metric contract the chart's dashboard and alerts are written against, and a check
that a PromQL expression names only its series and their labels.

The check is lexical, not a PromQL parser: it finds the series names and label names an
expression uses (in selectors, ``by``/``without``/``on``/``ignoring`` lists) and compares
them with the contract. That is what drifts when a metric is renamed; the syntax itself
is Prometheus' to judge.
"""

from __future__ import annotations

import re

# family -> its labels. Histograms are listed apart: their series are _bucket (with le),
# _sum and _count.
COUNTERS_AND_GAUGES: dict[str, frozenset[str]] = {
    "meridian_http_requests_total": frozenset({"method", "route", "status"}),
    "meridian_shard_up": frozenset({"shard"}),
    "meridian_tenant_move_lag_bytes": frozenset({"move", "source", "target"}),
    "meridian_webhook_dead_letters_total": frozenset({"reason"}),
    "meridian_tenant_requests_total": frozenset({"tenant"}),
    "meridian_cache_requests_total": frozenset({"level", "kind", "result"}),
    "meridian_cache_l2_errors_total": frozenset({"reason"}),
    "meridian_rate_limited_total": frozenset({"quota"}),
    "meridian_tenant_busy_total": frozenset(),
}
HISTOGRAMS: dict[str, frozenset[str]] = {
    "meridian_http_request_duration_seconds": frozenset({"method", "route"}),
    "meridian_cache_load_seconds": frozenset({"kind"}),
}
FAMILIES = frozenset(COUNTERS_AND_GAUGES) | frozenset(HISTOGRAMS)

# Labels Prometheus adds to every scraped series (target labels).
TARGET_LABELS = frozenset({"namespace", "job", "instance", "pod", "service", "container"})


def series_labels() -> dict[str, frozenset[str]]:
    """Every series name of the contract and the labels it carries."""
    series = dict(COUNTERS_AND_GAUGES)
    for name, labels in HISTOGRAMS.items():
        series[f"{name}_bucket"] = labels | {"le"}
        series[f"{name}_sum"] = labels
        series[f"{name}_count"] = labels
    return series


def family_of(series: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if series.endswith(suffix) and series.removesuffix(suffix) in HISTOGRAMS:
            return series.removesuffix(suffix)
    return series


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)", re.IGNORECASE
)
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENTIFIER = re.compile(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on"})
_KEYWORDS |= frozenset({"ignoring", "group_left", "group_right", "inf", "nan"})


def used_series(expr: str) -> set[str]:
    """The series names an expression selects."""
    text = _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", _STRING.sub('""', expr))
    text = _GROUPING.sub(" ", _RANGE.sub(" ", text))
    return {
        m.group(1)
        for m in _IDENTIFIER.finditer(text)
        if not m.group(2) and m.group(1).lower() not in _KEYWORDS
    }


def contract_problems(expr: str) -> list[str]:
    """What in ``expr`` is not in the contract: unknown series, labels a series does not
    carry, grouping by a label none of its series carries. Empty: it keeps to it."""
    known = series_labels()
    problems: list[str] = []
    names = used_series(expr)
    if not names:
        problems.append(f"selects no series: {expr}")
    for name in sorted(names - set(known)):
        problems.append(f"{name} is not a contract series")
    # Matchers are read with the strings still in place (a label value may hold '{').
    for match in _SELECTOR.finditer(_STRING.sub('""', expr)):
        name = match.group(1)
        if name is None:
            problems.append(f"a selector without a metric name: {match.group(0)}")
            continue
        allowed = known.get(name, frozenset()) | TARGET_LABELS
        for label in _MATCHER_LABEL.findall(match.group(2)):
            if label not in allowed:
                problems.append(f"{name} has no label {label!r}")
    carried = set(TARGET_LABELS).union(*(known.get(n, frozenset()) for n in names))
    for grouping in _GROUPING.finditer(_STRING.sub('""', expr)):
        for label in (part.strip() for part in grouping.group(1).split(",")):
            if label and label not in carried:
                problems.append(f"grouped by {label!r}, which none of {sorted(names)} carries")
    return problems
