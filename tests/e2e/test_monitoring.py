"""The monitoring shows what it claims: the real service, a real Prometheus with the project's
config and rules, generate traffic, then every dashboard query and every rule."""

from __future__ import annotations

import contextlib
import math
import threading
import time
import urllib.request

import httpx
import pytest

from tests.deploy.promkit import (
    Prometheus,
    dashboard_queries,
    grafana_substitute,
    load_dashboard,
    load_rules,
    metric_names,
    recorded_names,
    wait_for_rules,
)

pytestmark = pytest.mark.e2e

GENERATE = {
    "attribute": "gender",
    "target": "uniform",
    "occupation": "Registered nurses",
    "country": "us",
    "n": 8,
    "mode": "exact",
    "max_tokens": 6,
    "stream": False,
}
BAD_GENERATE = {**GENERATE, "attribute": "height"}  # not an attribute: 422
FIRST_REQUESTS = 3
# Grafana's $__rate_interval for a 1 s scrape is 4 s; a wider window keeps every rate() over
# the background traffic non-zero even when one request takes several seconds.
RATE_INTERVAL = "30s"


def generate(client: httpx.Client, body: dict) -> httpx.Response:
    return client.post("/generate", json=body, timeout=180)


def wait_until(prom: Prometheus, expr: str, ok, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        body = prom.query(expr)
        result = body.get("data", {}).get("result", [])
        if body["status"] == "success" and result and ok(float(result[0]["value"][1])):
            return
        assert time.monotonic() < deadline, f"{expr}: {body}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def traffic(service_url, service_headers, prometheus_server):
    """A few generate calls and one bad request, seen by Prometheus; then one call at a time in
    the background until the module ends, so that every rate() has something to show."""
    client = httpx.Client(base_url=service_url, headers=service_headers)
    for _ in range(FIRST_REQUESTS):
        r = generate(client, GENERATE)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["generations"]) == GENERATE["n"]
    bad = generate(client, BAD_GENERATE)
    assert bad.status_code == 422, bad.text

    wait_until(
        prometheus_server,
        "sum(distctl_generations_total)",
        lambda v: v >= FIRST_REQUESTS * GENERATE["n"],
    )
    wait_until(prometheus_server, 'sum(distctl_requests_total{status="422"})', lambda v: v >= 1)

    stop = threading.Event()

    def background() -> None:
        with httpx.Client(base_url=service_url, headers=service_headers) as c:
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    generate(c, GENERATE)
                stop.wait(0.2)

    thread = threading.Thread(target=background, daemon=True)
    thread.start()
    time.sleep(5)  # a few scrapes of the background traffic
    yield client
    stop.set()
    thread.join(timeout=200)
    client.close()


def values(body: dict) -> list[float]:
    out = []
    for series in body["data"]["result"]:
        if "values" in series:
            out += [float(v) for _, v in series["values"]]
        else:
            out.append(float(series["value"][1]))
    return out


def run_panel_query(prom: Prometheus, query) -> dict:
    expr = grafana_substitute(query.expr, rate_interval=RATE_INTERVAL)
    return prom.query(expr) if query.instant else prom.query_range(expr, seconds=60, step="2s")


def test_every_dashboard_query_returns_data(traffic, prometheus_server):
    queries = dashboard_queries()
    empty = {q.panel + ":" + q.ref_id for q in queries}
    deadline = time.monotonic() + 60
    while empty and time.monotonic() < deadline:
        for q in queries:
            if q.panel + ":" + q.ref_id not in empty:
                continue
            body = run_panel_query(prometheus_server, q)
            assert body["status"] == "success", (q.panel, q.expr, body.get("error"))
            if body["data"]["result"]:
                empty.discard(q.panel + ":" + q.ref_id)
        if empty:
            time.sleep(2)
    assert not empty, f"dashboard queries without data after traffic: {sorted(empty)}"


def test_share_panel_shows_real_shares(traffic, prometheus_server):
    """The observed-vs-target ratios of the traffic's attribute are actual shares (finite, in
    [0, 1], summing to 1), not NaN from a window without increments. (Attributes without
    traffic are NaN, 0/0: Grafana draws nothing for them.)"""
    share_panel = next(p for p in load_dashboard()["panels"] if p["title"].startswith("Observed"))
    for target in share_panel["targets"]:
        expr = grafana_substitute(target["expr"], rate_interval=RATE_INTERVAL)
        deadline = time.monotonic() + 30
        while True:
            result = prometheus_server.query(expr)["data"]["result"]
            shares = {
                s["metric"]["class"]: float(s["value"][1])
                for s in result
                if s["metric"]["attribute"] == GENERATE["attribute"]
            }
            if shares and all(math.isfinite(v) for v in shares.values()):
                break
            assert time.monotonic() < deadline, (target["refId"], result)
            time.sleep(1)
        assert set(shares) <= {"male", "female"}, shares
        assert all(0 <= v <= 1 for v in shares.values()), shares
        assert math.isclose(sum(shares.values()), 1, abs_tol=1e-6), shares
        if target["refId"] == "B":  # the target side: uniform over gender
            assert set(shares) == {"male", "female"}
            assert all(math.isclose(v, 0.5, abs_tol=1e-6) for v in shares.values()), shares


def test_template_variables_have_values(traffic, prometheus_server):
    for name in ("adapter", "attribute", "mode"):
        body = prometheus_server.api(
            f"/api/v1/label/{name}/values", **{"match[]": "distctl_generations_total"}
        )
        assert body["status"] == "success" and body["data"], (name, body)
    modes = prometheus_server.api(
        "/api/v1/label/mode/values", **{"match[]": "distctl_generations_total"}
    )["data"]
    assert GENERATE["mode"] in modes


def test_every_rule_loaded_and_healthy(traffic, prometheus_server):
    rules = wait_for_rules(prometheus_server)
    expected = {r.get("alert") or r["record"] for r in load_rules()}
    assert {r["name"] for r in rules} == expected
    # evaluate once more after the traffic, then demand health "ok" everywhere
    time.sleep(1)
    rules = wait_for_rules(prometheus_server)
    bad = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not bad


def test_scrape_target_up(traffic, prometheus_server):
    body = prometheus_server.api("/api/v1/targets")
    (target,) = body["data"]["activeTargets"]
    assert target["health"] == "up", target.get("lastError")


def test_metric_names_exist_in_service_metrics(traffic, service_url):
    with urllib.request.urlopen(f"{service_url}/metrics", timeout=30) as r:
        text = r.read().decode()
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    used: dict[str, str] = {}
    for q in dashboard_queries():
        for name in metric_names(q.expr):
            used.setdefault(name, f"panel {q.panel!r}")
    for rule in load_rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, f"rule {rule.get('alert') or rule['record']}")
    # `up` is Prometheus' own; recording rules are Prometheus' own series
    missing = {
        name: where
        for name, where in used.items()
        if name != "up" and name not in recorded_names() and name not in exported
    }
    assert not missing, f"used but not exported by /metrics: {missing}"
