"""The deploy kit's rollout views: the dashboard's Rollouts row and its transition annotations, run by ``promtool``.

Two of their queries cannot be checked by eye. A transition counter child exists only from its first transition
on, so ``increase()`` alone never sees a rollout's first rollback; and the state panel folds the four 0/1 series of
``llm_gateway_rollout_state`` into one value that its value mappings must name. Both run through ``promtool test
rules`` on series shaped like a scraped gateway's (skips without promtool locally, fails without it in CI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gateway.rollouts.analysis import STATES
from tests.test_deploy_kit import alert_rules, all_panels, dashboard, metric_names, promql_problems, promtool

TRANSITIONS = "llm_gateway_rollout_transitions_total"
ROLLOUT_PANELS = ("Rollout weight", "Rollout state")
POD = 'job="llm-gateway",instance="10.0.0.1:8080"'

Sample = tuple[dict[str, str], float]


def transitions_annotation() -> dict[str, Any]:
    annotations: list[dict[str, Any]] = dashboard()["annotations"]["list"]
    (found,) = [a for a in annotations if a["name"] == "Rollout transitions"]
    return found


def panel(title: str) -> dict[str, Any]:
    (found,) = [p for p in all_panels(dashboard()["panels"]) if p["title"] == title]
    return found


def selector(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{name}="{value}"' for name, value in labels.items()) + "}"


def expr_test(tmp_path: Path, series: dict[str, str], cases: list[tuple[str, str, list[Sample]]]) -> str:
    """Run ``expr`` at each ``eval_time`` over ``series`` (15 s scrapes) and expect exactly ``samples``; the
    output of a failed run, or "" when every case passed."""
    test = {
        "interval": "15s",
        "input_series": [{"series": name, "values": values} for name, values in series.items()],
        "promql_expr_test": [
            {
                "expr": expr,
                "eval_time": at,
                "exp_samples": [{"labels": selector(labels), "value": value} for labels, value in samples],
            }
            for at, expr, samples in cases
        ],
    }
    (tmp_path / "expr.test.yaml").write_text(yaml.safe_dump({"rule_files": [], "tests": [test]}))
    result = promtool("test", "rules", "expr.test.yaml", cwd=tmp_path)
    return "" if result.returncode == 0 else result.stdout + result.stderr


def test_rollouts_have_a_row_of_their_own_between_the_gateway_and_the_cohort_rows() -> None:
    """A rollout is per route, not per cohort of the variable: its panels are not repeated per cohort."""
    panels = dashboard()["panels"]
    rows = [p for p in panels if p["type"] == "row"]
    assert [row["title"] for row in rows] == ["Gateway", "Rollouts", "Cohort $cohort"]
    assert "repeat" not in rows[1]
    top, bottom = rows[1]["gridPos"]["y"], rows[2]["gridPos"]["y"]
    inside = [p["title"] for p in panels if p["type"] != "row" and top < p["gridPos"]["y"] < bottom]
    assert sorted(inside) == sorted(ROLLOUT_PANELS)


def test_rollout_weight_panel_shows_each_route_and_candidate_in_percent() -> None:
    weight = panel("Rollout weight")
    (target,) = weight["targets"]
    assert metric_names(target["expr"]) == {"llm_gateway_rollout_weight"}
    assert "by (route, candidate)" in target["expr"]
    assert "{{route}}" in target["legendFormat"] and "{{candidate}}" in target["legendFormat"]
    defaults = weight["fieldConfig"]["defaults"]
    assert (defaults["unit"], defaults["min"], defaults["max"]) == ("percent", 0, 100)


def test_rollout_state_panel_names_every_state_the_gateway_has() -> None:
    (mapping,) = panel("Rollout state")["fieldConfig"]["defaults"]["mappings"]
    assert sorted(option["text"] for option in mapping["options"].values()) == sorted(STATES)


def test_rollout_state_panel_shows_the_state_each_rollout_is_in(tmp_path: Path) -> None:
    state_panel = panel("Rollout state")
    (target,) = state_panel["targets"]
    (mapping,) = state_panel["fieldConfig"]["defaults"]["mappings"]
    value_of = {option["text"]: float(code) for code, option in mapping["options"].items()}
    # billing_refund steps up, pauses at 3m, is rolled back at 5m, resumed at 7m, promoted at 9m; tool_required
    # progresses throughout. One 0/1 series per state, as a gateway exposes them (15 s scrapes: 4 a minute).
    timeline = ["progressing"] * 3 + ["paused"] * 2 + ["rolled_back"] * 2 + ["progressing"] * 2 + ["promoted"] * 3
    series: dict[str, str] = {}
    for state in STATES:
        labels = f'{{{POD},route="billing_refund",candidate="merged-v1",state="{state}"}}'
        series[f"llm_gateway_rollout_state{labels}"] = " ".join(
            "1" if now == state else "0" for now in timeline for _ in range(4)
        )
        series[f"llm_gateway_rollout_state{labels.replace('billing_refund', 'tool_required')}"] = " ".join(
            ["1" if state == "progressing" else "0"] * 4 * len(timeline)
        )
    billing, tools = (
        {"route": "billing_refund", "candidate": "merged-v1"},
        {"route": "tool_required", "candidate": "merged-v1"},
    )
    cases = [
        (f"{minute}m", target["expr"], [(billing, value_of[timeline[minute]]), (tools, value_of["progressing"])])
        for minute in (1, 3, 5, 7, 9)
    ]
    assert expr_test(tmp_path, series, cases) == ""


def test_transition_annotation_queries_the_transition_counter() -> None:
    annotation = transitions_annotation()
    assert annotation["enable"] is True
    assert annotation["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert metric_names(annotation["expr"]) == {TRANSITIONS}
    assert promql_problems(annotation["expr"]) == []
    assert annotation["target"]["expr"] == annotation["expr"]
    for label in ("route", "candidate", "to"):
        assert "{{" + label + "}}" in annotation["titleFormat"]
        assert label in annotation["tagKeys"].split(",")


def test_transition_annotation_marks_a_rollouts_first_transition_and_later_ones(tmp_path: Path) -> None:
    """The counter of a state a rollout never entered is absent until its first transition (0 is never
    exported): the annotation must mark that first one too, and each later one, and nothing in between."""
    expr = f"count by (route, candidate, to) ({transitions_annotation()['expr']})"
    first = f'{TRANSITIONS}{{{POD},route="billing_refund",candidate="merged-v1",to="progressing"}}'
    series = {
        first: "1x11 2x40",  # stepped up once before the test, again at 3m
        first.replace("progressing", "rolled_back"): "_x23 1x28",  # rolled back at 6m: the series appears
    }
    stepped = {"route": "billing_refund", "candidate": "merged-v1", "to": "progressing"}
    rolled_back = {**stepped, "to": "rolled_back"}
    cases: list[tuple[str, str, list[Sample]]] = [
        ("2m", expr, []),
        ("3m", expr, [(stepped, 1)]),
        ("4m", expr, [(stepped, 1)]),
        ("5m", expr, []),
        ("6m", expr, [(rolled_back, 1)]),
        ("7m", expr, [(rolled_back, 1)]),
        ("9m", expr, []),
    ]
    assert expr_test(tmp_path, series, cases) == ""


def test_rollback_alert_is_one_per_rollout_and_says_what_to_do() -> None:
    """Every instance reports the rollout's state: the alert groups instances away, and its text leads the operator
    to the evidence and to ``resume``."""
    (rule,) = [rule for rule in alert_rules() if rule["alert"] == "RolloutRolledBack"]
    assert metric_names(rule["expr"]) == {"llm_gateway_rollout_state"}
    assert 'state="rolled_back"' in rule["expr"] and "by (route, candidate)" in rule["expr"]
    assert rule["labels"]["severity"] == "warning"
    description = rule["annotations"]["description"]
    for hint in ("llm-gateway rollout status", "rollout_transition", "llm-gateway rollout resume {{ $labels.route }}"):
        assert hint in description
