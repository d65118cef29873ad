"""contrib/prometheus and contrib/grafana: the alert rules load and fire as meant (promtool),
every dashboard query is valid PromQL, and every metric they name is one we export."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from scattergate.web.metrics import Metrics
from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "contrib/prometheus/scattergate-alerts.yml"
RULE_TESTS = ROOT / "contrib/prometheus/scattergate-alerts.test.yml"
DASHBOARD = ROOT / "contrib/grafana/scattergate-dashboard.json"
PROMETHEUS_OWN = {"up"}  # series Prometheus makes itself for every target
# Grafana's variables, given values so that the queries are plain PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$job": "scattergate"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
             "offset", "bool", "inf", "nan"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_binary("promtool"), *args], capture_output=True, text=True, timeout=60,
                          cwd=RULES.parent)


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (not functions, keywords or label names)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", expr):
        name, call = match.groups()
        if not call and name.lower() not in _KEYWORDS and not re.fullmatch(r"\d+[smhdwy]", name):
            names.add(name)
    return names


def dashboard_queries() -> list[str]:
    queries = []
    board = json.loads(DASHBOARD.read_text())
    for panel in board["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append(expr)
    return queries


def rule_queries() -> list[str]:
    return [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def exported_names(tmp_path: Path) -> set[str]:
    """Every series name /metrics can show, labelled families included before their first sample."""
    metrics = Metrics(tmp_path / "spool", tmp_path / "quarantine")
    names = set()
    for family in metrics.registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"]}
        names.update(family.name + s for s in suffixes.get(family.type, [""]))
    return names


def test_the_alert_rules_load_and_fire_on_the_series_they_are_meant_for() -> None:
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "5 rules found" in checked.stdout
    tested = promtool("test", "rules", RULE_TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool has no "parse this query"; a recording rule per query is checked the same way.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": expr} for i, expr in enumerate(dashboard_queries())]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_metric_named_is_one_we_export(source: str, tmp_path: Path) -> None:
    queries = rule_queries() if source == "alerts" else dashboard_queries()
    named = set().union(*map(metric_names, queries))
    # The extractor sees through functions, label matchers and aggregation clauses.
    assert {"scattergate_decision_findings_total", "scattergate_queue_messages"} <= named
    assert not named & {"rate", "sum", "finding", "job", "instance", "le"}
    assert named - exported_names(tmp_path) - PROMETHEUS_OWN == set()


def test_the_name_extractor() -> None:
    expr = ('histogram_quantile(0.95, sum by (check, le) (rate(a_bucket{job=~"x|y"}[5m]))) > 3 * '
            '(sum without (kind) (rate(b_total[1d] offset 15m)) unless c) and on (instance) d')
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "d"}
