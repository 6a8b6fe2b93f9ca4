"""promtool checks, promtool unit tests of the alert rules, and a real (empty) Prometheus that
loads the project's config and rules and parses every dashboard query."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.deploy.promkit import (
    ALERTS_YML,
    PROMETHEUS_YML,
    REPO,
    dashboard_queries,
    grafana_substitute,
    load_rules,
    run_prometheus,
    tool,
    wait_for_rules,
)

ALERTS_TEST = Path(__file__).with_name("alerts_test.yml")


def promtool(*args: str) -> str:
    done = subprocess.run(
        [tool("promtool"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_promtool_check_config():
    promtool("check", "config", str(PROMETHEUS_YML))


def test_promtool_check_rules():
    promtool("check", "rules", str(ALERTS_YML))


def test_promtool_rule_unit_tests():
    """Drift fires only beyond sampling noise, missing classes count as share 0, etc."""
    promtool("test", "rules", str(ALERTS_TEST))


def test_config_scrapes_distctl_every_5s():
    import yaml

    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    (job,) = config["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["distctl:8000"]
    assert job.get("scrape_interval", config["global"]["scrape_interval"]) == "5s"
    assert config["rule_files"] == ["alerts.yml"]


def test_alert_rules_present():
    alerts = {r["alert"] for r in load_rules() if "alert" in r}
    assert {
        "DistctlDistributionDrift",
        "DistctlSteeringConsistencyLow",
        "DistctlHighErrorRate",
        "DistctlEngineNotReady",
    } <= alerts
    drift = next(r for r in load_rules() if r.get("alert") == "DistctlDistributionDrift")
    assert drift["for"] == "10m"


@pytest.fixture(scope="module")
def empty_prometheus(tmp_path_factory):
    # Nothing listens on the target: the server starts, loads the rules, evaluates them on an
    # empty TSDB.
    with run_prometheus(tmp_path_factory.mktemp("prom"), target="127.0.0.1:9") as prom:
        yield prom


def test_rules_load_and_evaluate_ok(empty_prometheus):
    rules = wait_for_rules(empty_prometheus)
    assert len(rules) == len(load_rules())
    bad = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not bad


@pytest.mark.parametrize("query", dashboard_queries(), ids=lambda q: f"{q.panel}:{q.ref_id}")
def test_dashboard_query_parses(empty_prometheus, query):
    body = empty_prometheus.query(grafana_substitute(query.expr))
    assert body["status"] == "success", body.get("error")
