"""Helpers shared by tests/deploy and tests/e2e: the project's monitoring files, the PromQL they
hold, and a real Prometheus server on loopback."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS_YML = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD_JSON = DEPLOY / "grafana" / "dashboards" / "distctl.json"
DATASOURCE_UID = "prometheus"
TEMPLATE_VARIABLES = ("adapter", "attribute", "mode")

INSTALL_HINT = "run scripts/ensure-test-tools.sh (Debian packages docker-compose, prometheus)"


def tool(name: str) -> str:
    """Path of a required command-line tool; fails (never skips) when it is missing."""
    path = shutil.which(name)
    assert path, f"{name} not found: {INSTALL_HINT}"
    return path


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the dashboard and the rules -----------------------------------------------------------


def load_dashboard() -> dict:
    return json.loads(DASHBOARD_JSON.read_text())


def dashboard_panels(dashboard: dict | None = None) -> list[dict]:
    """Every panel that shows data (rows are layout only), nested rows included."""
    dashboard = dashboard or load_dashboard()
    out = []
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref_id: str
    expr: str
    instant: bool


def dashboard_queries(dashboard: dict | None = None) -> list[PanelQuery]:
    return [
        PanelQuery(p["title"], t["refId"], t["expr"], bool(t.get("instant")) and not t.get("range"))
        for p in dashboard_panels(dashboard)
        for t in p["targets"]
    ]


def grafana_substitute(
    expr: str, *, rate_interval: str = "30s", interval: str = "5s", range_: str = "1h"
) -> str:
    """What Grafana sends Prometheus: its interval macros and the template variables (set to
    "All", i.e. the allValue ".*") replaced."""
    values = {
        "__rate_interval": rate_interval,
        "__interval": interval,
        "__range": range_,
        **{v: ".*" for v in TEMPLATE_VARIABLES},
    }

    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        assert name in values, f"unknown Grafana variable ${name} in {expr!r}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, expr)


def load_rules() -> list[dict]:
    return [rule for g in yaml.safe_load(ALERTS_YML.read_text())["groups"] for rule in g["rules"]]


def recorded_names() -> set[str]:
    return {r["record"] for r in load_rules() if "record" in r}


_METRIC = re.compile(r"(?<![\w:])(distctl_\w+|vllm:[\w:]+|up)(?=\s*[{\[)\s]|$)")


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads (the service's distctl_*, vLLM's vllm:*, and up),
    label values and strings left out."""
    no_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(_METRIC.findall(no_strings))


# --- a real Prometheus ----------------------------------------------------------------------


def adapted_config(target: str, scrape_interval: str) -> dict:
    """The project's prometheus.yml with only the scrape target and scrape interval changed."""
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["global"]["scrape_interval"] = scrape_interval
    for job in config["scrape_configs"]:
        if "scrape_interval" in job:
            job["scrape_interval"] = scrape_interval
        for static in job.get("static_configs", []):
            static["targets"] = [target]
    return config


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen
    log: Path

    def api(self, path: str, **params: str) -> dict:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:  # 400/422 carry the PromQL error as JSON
            return json.loads(e.read())

    def query(self, expr: str) -> dict:
        return self.api("/api/v1/query", query=expr)

    def query_range(self, expr: str, seconds: int = 60, step: str = "2s") -> dict:
        end = time.time()
        return self.api(
            "/api/v1/query_range", query=expr, start=str(end - seconds), end=str(end), step=step
        )

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]


def wait_ready(
    process: subprocess.Popen,
    url: str,
    timeout: float,
    log_tail: Callable[[], str],
    interval: float = 1.0,
) -> None:
    """Poll `url` until it answers 200; fail with the log if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, (
            f"{url}: process exited ({process.returncode}):\n{log_tail()}"
        )
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        assert time.monotonic() < deadline, f"{url} not 200 in {timeout:.0f}s:\n{log_tail()}"
        time.sleep(interval)


@contextlib.contextmanager
def run_prometheus(workdir: Path, target: str, scrape_interval: str = "1s") -> Iterator[Prometheus]:
    """Starts Prometheus on a free loopback port with the project's config (adapted) and rules,
    and a fresh TSDB in workdir."""
    binary = tool("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    # rule_files are relative to the config file: keep the same layout.
    shutil.copy(ALERTS_YML, workdir / ALERTS_YML.name)
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(adapted_config(target, scrape_interval), sort_keys=False))
    port = find_free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_ready(process, f"{prom.url}/-/ready", 60, prom.log_tail, interval=0.2)
        yield prom
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_rules(prom: Prometheus, timeout: float = 60) -> list[dict]:
    """Every loaded rule, once each has been evaluated at least once."""
    deadline = time.monotonic() + timeout
    while True:
        body = prom.api("/api/v1/rules")
        assert body["status"] == "success", body
        rules = [r for g in body["data"]["groups"] for r in g["rules"]]
        pending = [r["name"] for r in rules if r.get("lastEvaluation", "").startswith("0001-")]
        if rules and not pending:
            return rules
        assert time.monotonic() < deadline, f"rules not evaluated in {timeout}s: {pending}"
        time.sleep(1)
