"""Static checks of the Grafana dashboard and its provisioning."""

from __future__ import annotations

import yaml

from tests.deploy.promkit import (
    DASHBOARD_JSON,
    DATASOURCE_UID,
    DEPLOY,
    TEMPLATE_VARIABLES,
    dashboard_panels,
    dashboard_queries,
    grafana_substitute,
    load_dashboard,
)

PROVISIONING = DEPLOY / "grafana" / "provisioning"


def walk(node, path="$"):
    if isinstance(node, dict):
        for k, v in node.items():
            yield path, k, v
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


def test_datasource_is_provisioned_with_the_uid():
    (ds,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert ds["uid"] == DATASOURCE_UID and ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090"


def test_dashboard_provider_points_at_the_mounted_folder():
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "distctl.yml").read_text())[
        "providers"
    ]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts


def test_datasource_referenced_by_uid_only():
    refs = [(path, v) for path, k, v in walk(load_dashboard()) if k == "datasource"]
    assert refs
    for path, ref in refs:
        assert ref == {"type": "prometheus", "uid": DATASOURCE_UID}, path
    assert "datasourceId" not in DASHBOARD_JSON.read_text()


def test_template_variables():
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    assert set(TEMPLATE_VARIABLES) <= set(variables)
    for name in TEMPLATE_VARIABLES:
        v = variables[name]
        assert v["includeAll"] and v["allValue"] == ".*"
        assert v["query"]["query"] == f"label_values(distctl_generations_total, {name})"


def test_every_panel_has_queries():
    panels = dashboard_panels()
    assert len(panels) >= 15
    for panel in panels:
        assert panel["targets"], panel["title"]
        assert panel.get("description"), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), (panel["title"], target["refId"])
    ids = [p["id"] for p in load_dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def test_template_variables_used_as_regex_matchers():
    """Multi-value and "All" selections are regexes, so every use must be =~."""
    for q in dashboard_queries():
        for name in TEMPLATE_VARIABLES:
            if f"${name}" in q.expr:
                assert f'=~"${name}"' in q.expr, (q.panel, q.expr)
                assert f'="${name}"' not in q.expr.replace(f'=~"${name}"', ""), q.panel
        grafana_substitute(q.expr)  # no other variables


def test_dashboard_covers_the_issue_panels():
    exprs = "\n".join(q.expr for q in dashboard_queries())
    for needle in (
        "distctl_generations_total",
        "distctl_target_mass_total",
        "distctl_request_mae_bucket",
        "distctl_steering_total",
        "distctl_request_duration_seconds_bucket",
        "distctl_time_to_first_generation_seconds_bucket",
        "distctl_requests_in_flight",
        "distctl_requests_total",
        "distctl_adapters_loaded",
        "distctl_adapter_loads_total",
        "distctl_engine_ready",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
    ):
        assert needle in exprs, needle
    for q in (0.5, 0.95, 0.99):
        assert f"histogram_quantile({q}, sum by (le, mode) (rate(distctl_request_duration" in exprs
