"""contrib/: the Prometheus rules pass promtool's check and unit tests, a real Prometheus loads
them and evaluates them on a real rollbackd, and every metric the rules and the Grafana
dashboard query is one that rollbackd's /metrics exposes (a renamed metric fails here)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness.api import Rollbackd
from tests.harness.paths import ROOT
from tests.harness.prometheus_server import PrometheusServer
from tests.harness.servers import require_binary, wait_for

CONTRIB = ROOT / "contrib"
RULES = CONTRIB / "prometheus" / "rollbackd-rules.yml"
RULE_TESTS = sorted((CONTRIB / "prometheus").glob("*.test.yml"))
DASHBOARD = CONTRIB / "grafana" / "rollbackd-dashboard.json"

# Series Prometheus writes itself for every scrape, not rollbackd's to expose.
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
                 "scrape_samples_post_metric_relabeling", "scrape_series_added"}
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                   "group_left", "group_right", "atan2", "inf", "nan"}
# Grafana's variables, as a query Prometheus can run: every job and host, a sensible range.
GRAFANA_VARIABLES = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h",
                     "job": ".*", "instance": ".*"}


# -- reading PromQL and the exposition ----------------------------------------------------

def metric_names(promql: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions or
    aggregations (followed by "("), keywords, label names ({...}, by (...)) or durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', promql)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = re.findall(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", text)
    return {name for name in names if name.lower() not in PROMQL_KEYWORDS}


def exposition_names(url: str) -> set[str]:
    """Every series name /metrics declares (# TYPE, with a histogram's _bucket, _count and
    _sum) or carries, so a labelled family with no child yet counts as present."""
    names: set[str] = set()
    for line in httpx.get(f"{url}/metrics", timeout=5, trust_env=False).text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind in ("histogram", "summary"):
                names |= {f"{name}_count", f"{name}_sum"}
            if kind == "histogram":
                names.add(f"{name}_bucket")
        elif line and not line.startswith("#"):
            match = re.match(r"[a-zA-Z_:][\w:]*", line)
            assert match is not None, f"not an exposition line: {line!r}"
            names.add(match.group())
    return names


def with_grafana_variables(expr: str) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)",
                  lambda m: GRAFANA_VARIABLES[m.group(1) or m.group(2)], expr)


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    found: list[dict[str, Any]] = []
    for panel in board["panels"]:
        found += [panel, *panel.get("panels", [])]
    return found


def dashboard_queries(board: dict[str, Any]) -> dict[str, str]:
    """{where: PromQL} for every panel target and every query variable (label_values(SELECTOR,
    label) is Grafana's; its selector is PromQL)."""
    queries = {f"panel {panel['title']!r} target {target['refId']}": target["expr"]
               for panel in panels(board) for target in panel.get("targets", [])}
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            selector = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            queries[f"variable {variable['name']!r}"] = selector.group(1) if selector else query
    return queries


def unknown_metrics(queries: dict[str, str], known: set[str]) -> dict[str, set[str]]:
    return {where: missing for where, query in queries.items()
            if (missing := metric_names(query) - known)}


# -- servers ------------------------------------------------------------------------------

class RulesPrometheus(PrometheusServer):
    """Prometheus scraping one rollbackd as job "rollbackd" (as README's scrape config does)
    with rollbackd-rules.yml loaded."""

    def __init__(self, target: str, rules: Path) -> None:
        self.rules = rules
        super().__init__([target], scrape_interval="1s", scrape_self=False)

    def _config(self, targets: list[str], interval: str, scrape_self: bool,
                metrics_path: str) -> str:
        config = json.loads(super()._config(targets, interval, scrape_self, metrics_path))
        config["scrape_configs"][0]["job_name"] = "rollbackd"
        config["rule_files"] = [str(self.rules)]
        return json.dumps(config, indent=2)

    def api(self, path: str) -> Any:
        body = httpx.get(f"{self.url}/api/v1/{path}", timeout=5, trust_env=False).json()
        assert body["status"] == "success", body
        return body["data"]

    def rules_loaded(self) -> list[dict[str, Any]]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def rollbackd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rollbackd]:
    # Its own, empty backups directory: no restore point, whatever the machine holds.
    directory = tmp_path_factory.mktemp("rollbackd")
    (directory / "backups").mkdir()
    daemon = Rollbackd(directory, api=f'[backups]\ndir = "{directory / "backups"}"\n')
    yield daemon
    daemon.close()


@pytest.fixture(scope="module")
def prometheus(rollbackd: Rollbackd) -> Iterator[RulesPrometheus]:
    server = RulesPrometheus(rollbackd.url.removeprefix("http://"), RULES)
    server.start()
    try:
        server.wait_for_series('up{job="rollbackd"} == 1', timeout=30)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def exposed(rollbackd: Rollbackd) -> set[str]:
    return exposition_names(rollbackd.url) | SCRAPE_SERIES


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = require_binary("promtool", "prometheus")
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=RULES.parent, check=False)


# -- the rules ----------------------------------------------------------------------------

def test_promtool_check_rules_accepts_the_rules_file() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_fire_and_quiet_each_alert_as_expected() -> None:
    assert RULE_TESTS, "no *.test.yml beside the rules"
    result = promtool("test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not(
        prometheus: RulesPrometheus) -> None:
    text = "\n".join(path.read_text() for path in RULE_TESTS)
    alerts = {rule["name"] for rule in prometheus.rules_loaded() if rule["type"] == "alerting"}
    assert {"RollbackdDown", "RollbackdStuck", "RollbackdMonitoringBlind", "RollbackdRunFailed",
            "RollbackdPageUndelivered", "RollbackdRestorePointTooOld", "RollbackdDrillTooOld",
            "RollbackdPausedTooLong"} <= alerts
    untested = {name for name in alerts
                if not re.search(rf"alertname: {name}\n\s+exp_alerts:\n\s+- exp_labels:", text)
                or not re.search(rf"alertname: {name}\n\s+exp_alerts: \[\]", text)}
    assert untested == set()


def test_every_rule_has_a_severity_a_summary_a_description_and_a_runbook_hint(
        prometheus: RulesPrometheus) -> None:
    incomplete = {rule["name"]: rule for rule in prometheus.rules_loaded()
                  if rule["labels"].get("severity") not in ("critical", "warning")
                  or not {"summary", "description", "runbook"} <= set(rule["annotations"])}
    assert incomplete == {}


def test_every_metric_the_alert_rules_use_is_in_rollbackds_exposition(
        prometheus: RulesPrometheus, exposed: set[str]) -> None:
    queries = {f"rule {rule['name']} {rule['labels']}": rule["query"]
               for rule in prometheus.rules_loaded()}
    assert all(metric_names(query) for query in queries.values()), queries
    assert unknown_metrics(queries, exposed) == {}


def test_prometheus_evaluates_every_rule_on_a_real_rollbackd_without_error(
        prometheus: RulesPrometheus) -> None:
    wait_for(lambda: all(rule["health"] == "ok" for rule in prometheus.rules_loaded()), 20,
             what="every rule to be evaluated")
    assert [rule["lastError"] for rule in prometheus.rules_loaded() if rule.get("lastError")] \
        == []


def test_a_fresh_rollbackd_never_drilled_and_without_restore_point_has_those_alerts_pending(
        prometheus: RulesPrometheus) -> None:
    # rollbackd exposes 0 for "never": the alerts meant for it must see it, and only them.
    expected = {("RollbackdDrillTooOld", "never"), ("RollbackdRestorePointTooOld", "none")}
    seen: set[tuple[str, str]] = set()

    def pending() -> bool:
        nonlocal seen
        seen = {(alert["labels"]["alertname"], alert["labels"].get("cause", ""))
                for alert in prometheus.api("alerts")["alerts"]}
        return seen == expected

    wait_for(pending, 20, interval=0.5, what=f"alerts {expected} (seen so far: {seen})")
    assert all(alert["state"] == "pending" for alert in prometheus.api("alerts")["alerts"])


# -- the dashboard ------------------------------------------------------------------------

def test_the_dashboard_has_a_datasource_variable_and_job_and_instance_variables() -> None:
    board = dashboard()
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["type"] == variables["job"]["type"] == "query"
    assert 36 <= board["schemaVersion"] <= 41
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels(board):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert 'instance=~"$instance"' in target["expr"], (panel["title"], target)


def test_the_dashboard_covers_signals_decisions_runs_pages_and_data_safety() -> None:
    used = set().union(*map(metric_names, dashboard_queries(dashboard()).values()))
    assert {"rollbackd_signal", "rollbackd_rule_firing", "rollbackd_decisions_total",
            "rollbackd_incident_open", "rollbackd_runbook_duration_seconds_bucket",
            "rollbackd_runbook_steps_total", "rollbackd_pages_total",
            "rollbackd_page_queue_length", "rollbackd_page_oldest_undelivered_seconds",
            "rollbackd_backup_last_success_timestamp_seconds",
            "rollbackd_drill_last_success_timestamp_seconds", "rollbackd_probe_up",
            "rollbackd_probe_duration_seconds", "rollbackd_cycle_duration_seconds"} <= used


def test_every_metric_the_dashboard_queries_is_in_rollbackds_exposition(
        exposed: set[str]) -> None:
    assert unknown_metrics(dashboard_queries(dashboard()), exposed) == {}


def test_prometheus_runs_every_dashboard_query_without_error(
        prometheus: RulesPrometheus) -> None:
    failed = {}
    for where, query in dashboard_queries(dashboard()).items():
        body = prometheus.query(with_grafana_variables(query))
        if body["status"] != "success":
            failed[where] = body.get("error")
    assert failed == {}


def test_a_renamed_metric_in_a_query_is_reported_missing(exposed: set[str]) -> None:
    queries = {"old name": 'rate(rollbackd_cycle_total{instance=~"$instance"}[$__rate_interval])',
               "new name": 'rate(rollbackd_cycles_total{instance=~"$instance"}[5m])'}
    assert unknown_metrics(queries, exposed) == {"old name": {"rollbackd_cycle_total"}}


@pytest.mark.parametrize(("promql", "names"), [
    ('histogram_quantile(0.9, sum by (le, runbook) (increase(a_bucket{job=~"x"}[$__range])))',
     {"a_bucket"}),
    ("sum without (instance) (rate(a_total[5m])) / on (job) group_left (version) b_info",
     {"a_total", "b_info"}),
    ('time() - c_seconds > 8 * 86400 and c_seconds offset 1h > 1e3 or absent(d{x="e f"})',
     {"c_seconds", "d"}),
    ('max by (instance) (e == bool 1) unless ignoring(severity) f{severity!~"high|low"}',
     {"e", "f"}),
])
def test_the_promql_reader_finds_metric_names_not_functions_keywords_or_labels(
        promql: str, names: Sequence[str]) -> None:
    assert metric_names(promql) == set(names)
