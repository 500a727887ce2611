"""The deploy kit (Grafana dashboard, Prometheus config and alert rules) against the metrics the gateway exports.

Metric and label names are read from a live ``GatewayMetrics`` registry, so renaming a metric or a label in
``gateway/telemetry/metrics.py`` breaks this test until the dashboard and the alerts follow. The ``promtool``
checks need the Debian package ``prometheus`` (``make prometheus-tools``): they skip without it locally and fail
without it in CI.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.telemetry.metrics import GatewayMetrics
from gateway.telemetry.series import Series
from tests import harness

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "llm-gateway-dashboard.json"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yaml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts.test.yaml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yaml"

REQUIRED_ALERTS = {
    "EvalGateTripped",
    "FallbackRateHigh",
    "BackendDown",
    "BreakerOpen",
    "TTFTP99High",
    "PolicyReloadRejected",
    "MirrorDisagreementHigh",
    "LLMGatewayStateBackendDown",
    "RolloutRolledBack",
    "SemanticCohortFallthrough",
    "CaptureRecordsLost",
}
# What the dashboard must show (README.md, Telemetry); histograms are read through their buckets.
REQUIRED_DASHBOARD_METRICS = {
    "llm_gateway_requests_total",
    "llm_gateway_fallbacks_total",
    "llm_gateway_eval_fail_rate",
    "llm_gateway_eval_gate_tripped",
    "llm_gateway_time_to_first_token_seconds_bucket",
    "llm_gateway_request_duration_seconds_bucket",
    "llm_gateway_tokens_total",
    "llm_gateway_mirror_agreement_total",
    "llm_gateway_backend_up",
    "llm_gateway_breaker_open",
    "llm_gateway_overhead_seconds_bucket",
    "llm_gateway_policy_info",
    "llm_gateway_state_backend_up",
    "llm_gateway_state_sync_age_seconds",
    "llm_gateway_rollout_weight",
    "llm_gateway_rollout_state",
}
COHORT_MATCHER = 'cohort=~"$cohort"'

SELECTOR = re.compile(r"\b(?P<name>llm_gateway_[A-Za-z0-9_:]*)\s*(?:\{(?P<matchers>[^}]*)\})?")
MATCHER_LABEL = re.compile(r"(?P<label>[A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\((?P<labels>[^)]*)\)")


def require_tool(name: str) -> str:
    return harness.require_tool(name, "run `make prometheus-tools` (Debian package prometheus)")


def exported_series() -> dict[str, frozenset[str]]:
    """Sample name → label names, for every series a ``GatewayMetrics`` registry exposes.

    A labelled metric exposes no sample until it has a child, so one child per metric is made first.
    """
    metrics = GatewayMetrics()
    for metric in vars(metrics).values():
        if isinstance(metric, Series) and metric.labelnames:
            metric.labels(*("x" for _ in metric.labelnames))
    series: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in series.items()}


EXPORTED = exported_series()


def metric_names(expr: str) -> set[str]:
    return {match["name"] for match in SELECTOR.finditer(expr)}


def promql_problems(expr: str, exported: dict[str, frozenset[str]] = EXPORTED) -> list[str]:
    """Names in ``expr`` that the gateway does not export: metrics, matcher labels, grouping labels."""
    problems: list[str] = []
    known_labels: set[str] = set()
    matches = list(SELECTOR.finditer(expr))
    if not matches:
        return ["references no llm_gateway_ metric"]
    for match in matches:
        name = match["name"]
        if name not in exported:
            problems.append(f"unknown metric {name}")
            continue
        labels = exported[name]
        known_labels |= labels
        for label in MATCHER_LABEL.findall(match["matchers"] or ""):
            if label not in labels:
                problems.append(f"{name} has no label {label!r}")
    for group in GROUPING.finditer(expr):
        for label in filter(None, (part.strip() for part in group["labels"].split(","))):
            if label not in known_labels:
                problems.append(f"grouping label {label!r} is on none of the metrics")
    return problems


def dashboard() -> dict[str, Any]:
    with DASHBOARD.open() as f:
        loaded: dict[str, Any] = json.load(f)
    return loaded


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows and the panels of collapsed rows included."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def panel_exprs(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in all_panels(board["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def alert_rules() -> list[dict[str, Any]]:
    with ALERTS.open() as f:
        loaded = yaml.safe_load(f)
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args], capture_output=True, text=True, cwd=cwd, timeout=60, check=False
    )


def test_exported_series_come_from_the_registry() -> None:
    assert EXPORTED["llm_gateway_requests_total"] == {"cohort", "route", "model", "status"}
    assert "le" in EXPORTED["llm_gateway_time_to_first_token_seconds_bucket"]
    assert EXPORTED["llm_gateway_inflight_requests"] == frozenset()


def test_promql_checker_flags_unknown_metrics_and_labels() -> None:
    assert promql_problems("sum by (model) (rate(llm_gateway_requests_total[5m]))") == []
    assert promql_problems("rate(llm_gateway_request_total[5m])") == ["unknown metric llm_gateway_request_total"]
    assert promql_problems('llm_gateway_backend_up{cohort="a"}') == ["llm_gateway_backend_up has no label 'cohort'"]
    assert promql_problems("sum by (modle) (llm_gateway_backend_up)") == [
        "grouping label 'modle' is on none of the metrics"
    ]
    assert promql_problems("sum(up)") == ["references no llm_gateway_ metric"]


def test_dashboard_variables_and_datasource() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    cohort = variables["cohort"]
    assert cohort["type"] == "query"
    assert cohort["query"] == "label_values(llm_gateway_requests_total, cohort)"
    assert cohort["multi"] is True
    assert cohort["includeAll"] is True
    wrong_source = [
        panel["title"]
        for panel in all_panels(board["panels"])
        if panel["type"] != "row"
        and any(
            source.get("uid") != "${datasource}"
            for source in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]
        )
    ]
    assert wrong_source == []


def test_dashboard_panel_ids_and_layout() -> None:
    panels = list(all_panels(dashboard()["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    boxes: list[tuple[str, int, int, int, int]] = []
    for panel in panels:
        pos = panel["gridPos"]
        x, y, w, h = (pos[key] for key in "xywh")
        assert all(isinstance(v, int) for v in (x, y, w, h)), panel["title"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 24, f"{panel['title']}: {pos}"
        boxes.append((panel["title"], x, y, w, h))
    overlaps = [
        (a[0], b[0])
        for i, a in enumerate(boxes)
        for b in boxes[i + 1 :]
        if a[1] < b[1] + b[3] and b[1] < a[1] + a[3] and a[2] < b[2] + b[4] and b[2] < a[2] + a[4]
    ]
    assert overlaps == []


def test_dashboard_queries_use_exported_metrics() -> None:
    board = dashboard()
    exprs = list(panel_exprs(board))
    problems = [(title, expr, problem) for title, expr in exprs for problem in promql_problems(expr)]
    assert problems == []
    panels_without_query = [
        panel["title"] for panel in all_panels(board["panels"]) if panel["type"] != "row" and not panel["targets"]
    ]
    assert panels_without_query == []
    shown = set().union(*(metric_names(expr) for _, expr in exprs))
    assert REQUIRED_DASHBOARD_METRICS - shown == set()


def test_dashboard_filters_cohort_series_by_the_variable() -> None:
    unfiltered = [
        (title, match.group(0))
        for title, expr in panel_exprs(dashboard())
        for match in SELECTOR.finditer(expr)
        if "cohort" in EXPORTED[match["name"]] and COHORT_MATCHER not in (match["matchers"] or "")
    ]
    assert unfiltered == []


def test_dashboard_repeats_a_row_per_cohort() -> None:
    rows = [panel for panel in dashboard()["panels"] if panel["type"] == "row"]
    assert [row["title"] for row in rows if row.get("repeat") == "cohort"] == ["Cohort $cohort"]


def test_dashboard_shows_fleet_state_per_instance_in_the_gateway_row() -> None:
    """Fleet state is per instance (one Redis link each), so the panel keeps the scrape's ``instance`` label and
    sits in the Gateway row, not in the row repeated per cohort."""
    panels = dashboard()["panels"]
    (panel,) = [panel for panel in panels if panel["title"] == "Fleet state"]
    rows = [p["gridPos"]["y"] for p in panels if p["type"] == "row"]
    assert rows[0] < panel["gridPos"]["y"] < rows[1]
    shown = {name: target for target in panel["targets"] for name in metric_names(target["expr"])}
    assert set(shown) == {"llm_gateway_state_backend_up", "llm_gateway_state_sync_age_seconds"}
    for target in shown.values():
        assert "{{instance}}" in target["legendFormat"]
        assert not GROUPING.search(target["expr"]) and "(" not in target["expr"], target["expr"]


def test_state_backend_alert_fires_per_instance_after_two_minutes() -> None:
    (rule,) = [rule for rule in alert_rules() if rule["alert"] == "LLMGatewayStateBackendDown"]
    assert metric_names(rule["expr"]) == {"llm_gateway_state_backend_up"}
    assert rule["for"] == "2m" and rule["labels"]["severity"] == "warning"
    assert "per instance" in rule["annotations"]["description"]


def test_alert_rules_use_exported_metrics_and_annotate() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == REQUIRED_ALERTS
    assert len(rules) == len(REQUIRED_ALERTS)
    problems = [(rule["alert"], problem) for rule in rules for problem in promql_problems(rule["expr"])]
    assert problems == []
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        annotations = rule["annotations"]
        assert set(annotations) >= {"summary", "description"}, rule["alert"]
        assert "{{ $labels." in annotations["summary"], rule["alert"]
        assert "{{ $labels." in annotations["description"], rule["alert"]


def test_alert_unit_tests_cover_the_key_alerts() -> None:
    with ALERT_TESTS.open() as f:
        loaded = yaml.safe_load(f)
    firing = {
        case["alertname"] for test in loaded["tests"] for case in test["alert_rule_test"] if case.get("exp_alerts")
    }
    assert firing == REQUIRED_ALERTS


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(ALERTS.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", str(ALERT_TESTS.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("alert", sorted(REQUIRED_ALERTS))
def test_alert_unit_tests_fail_when_the_alert_never_fires(alert: str, tmp_path: Path) -> None:
    """The unit tests have teeth: with one alert's expression replaced by one that never fires, they fail."""
    with ALERTS.open() as f:
        loaded = yaml.safe_load(f)
    for group in loaded["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == alert:
                rule["expr"] = "vector(1) == 0"
    (tmp_path / ALERTS.name).write_text(yaml.safe_dump(loaded))
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    result = promtool("test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0, result.stdout
    assert f"alertname: {alert}," in result.stdout + result.stderr


def test_promtool_check_config() -> None:
    result = promtool("check", "config", str(PROMETHEUS_CONFIG.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    with PROMETHEUS_CONFIG.open() as f:
        config = yaml.safe_load(f)
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "llm-gateway"
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["127.0.0.1:8080"]}]
