"""The shipped Prometheus alert rules: every metric they name exists, every runbook section exists,
Prometheus loads them, and (with promtool) they are valid and fire when tests/prometheus/alerts.test.yml
says they should.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from alarmcentre import metrics
from tests.conftest import REPO, missing_service

PROMETHEUS_DIR = REPO / "config" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = REPO / "tests" / "prometheus" / "alerts.test.yml"
OPERATIONS = REPO / "docs" / "operations.md"
SEVERITIES = {"critical", "warning"}

# The series a metric of each type exposes, by suffix (what PromQL names).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
}


def exposed_series() -> dict[str, str]:
    """Every series name alarmcentre.metrics exposes -> the metric's type."""
    names: dict[str, str] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                for suffix in _SUFFIXES[family.type]:
                    names[family.name + suffix] = family.type
    return names


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    assert rules and all("alert" in rule for rule in rules), "alerts.yml holds alerting rules only"
    return rules


def anchors(markdown: str) -> set[str]:
    """The anchors of a Markdown file's headings, as the usual renderers make them."""
    found = set()
    for line in markdown.splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            found.add(text.replace(" ", "-"))
    return found


def test_the_series_list_knows_each_type() -> None:
    # Guards the check below: suffix rules right for a counter, a histogram and a gauge.
    series = exposed_series()
    assert series["alarmcentre_sms_errors_total"] == "counter"
    assert "alarmcentre_sms_errors" not in series  # a counter is only queried with its suffix
    assert {"alarmcentre_ingest_lag_seconds_bucket", "alarmcentre_ingest_lag_seconds_count",
            "alarmcentre_ingest_lag_seconds_sum"} <= set(series)
    assert "alarmcentre_ingest_lag_seconds" not in series
    assert series["alarmcentre_open_incidents"] == "gauge"
    assert series["alarmcentre_canary_last_success_timestamp_seconds"] == "gauge"
    assert series["alarmcentre_canary_failures_total"] == "counter"


def test_every_metric_an_alert_uses_exists() -> None:
    series = exposed_series()
    used: dict[str, set[str]] = {}
    for rule in alert_rules():
        for name in re.findall(r"\balarmcentre_\w+", rule["expr"]):
            used.setdefault(name, set()).add(rule["alert"])
    assert len(used) >= 10
    unknown = {name: sorted(alerts) for name, alerts in used.items() if name not in series}
    assert unknown == {}, "metrics named in alerts.yml that alarmcentre.metrics does not expose"


def test_every_alert_has_severity_texts_and_a_runbook_section() -> None:
    sections = anchors(OPERATIONS.read_text())
    names = []
    for rule in alert_rules():
        name = rule["alert"]
        names.append(name)
        assert rule.get("labels", {}).get("severity") in SEVERITIES, name
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), name
        page, _, anchor = annotations.get("runbook_url", "").partition("#")
        assert page == "docs/operations.md" and anchor, (name, annotations.get("runbook_url"))
        assert anchor in sections, f"{name}: no section #{anchor} in docs/operations.md"
    assert len(names) == len(set(names)), "alert names are unique"
    assert {"AlarmPipelineStalled", "BrokerDisconnected", "IngestDatabaseDown", "CanaryLate",
            "IncidentUnacknowledged60s", "IncidentUnacknowledged180s", "IngestRejectsSpiking",
            "SmsSendingFailing", "SchedulerNotRunning"} <= set(names)


def test_prometheus_loads_the_rules_and_compose_mounts_them() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]  # relative to prometheus.yml
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert "./config/prometheus:/etc/prometheus:ro" in compose["services"]["prometheus"]["volumes"]


def test_every_alert_has_a_firing_test() -> None:
    tested = set(re.findall(r'alertname="(\w+)"', ALERT_TESTS.read_text()))
    assert {rule["alert"] for rule in alert_rules()} - tested == set()


# -- promtool (Debian: apt-get install prometheus) --------------------------------------------


@pytest.fixture
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        missing_service("no promtool on PATH (Debian: apt-get install prometheus); the checks above still ran")
    assert path is not None
    return path


def _run(*args: str, cwd: Path) -> None:
    result = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_finds_the_rules_and_config_valid(promtool: str) -> None:
    _run(promtool, "check", "rules", str(ALERTS), cwd=REPO)
    _run(promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"), cwd=REPO)


def test_promtool_unit_tests_of_the_alerts_pass(promtool: str) -> None:
    _run(promtool, "test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
