"""docker-compose validates the compose files (base, and base + GPU override), and the rendered
configuration has what the deployment promises."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.promkit import DEPLOY, REPO, tool

BASE = "docker-compose.yml"
GPU = "docker-compose.gpu.yml"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of deploy/ (beside the docker/ build files) whose env files are made from the
    shipped examples, as the README tells an operator to do."""
    root = tmp_path_factory.mktemp("compose")
    shutil.copytree(DEPLOY, root / "deploy", ignore=shutil.ignore_patterns("*.env", ".env"))
    shutil.copytree(REPO / "docker", root / "docker")
    for example in (root / "deploy").glob("*.env.example"):
        shutil.copy(example, example.with_suffix(""))
    return root / "deploy"


def compose(project: Path, *files: str, args: tuple[str, ...] = ("config",)) -> str:
    cmd = [tool("docker-compose")]
    for f in files:
        cmd += ["-f", str(project / f)]
    done = subprocess.run(
        [*cmd, *args], cwd=project, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("files", [(BASE,), (BASE, GPU)], ids=["cpu", "gpu"])
def test_compose_config_is_valid(project, files):
    compose(project, *files, args=("config", "-q"))


def test_env_examples_cover_every_env_file(project):
    for service in yaml.safe_load((project / BASE).read_text())["services"].values():
        for env_file in service.get("env_file", []):
            assert (project / f"{env_file}.example").is_file(), env_file
    ignored = (DEPLOY / ".gitignore").read_text().split()
    assert {"distctl.env", "grafana.env", ".env"} <= set(ignored)


def test_rendered_cpu_stack(project):
    config = yaml.safe_load(compose(project, BASE))
    services = config["services"]
    assert set(services) == {"distctl", "prometheus", "grafana"}
    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"], name
    assert set(config["volumes"]) == {"adapters", "prometheus-data", "grafana-data"}

    distctl = services["distctl"]
    assert distctl["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert "/readyz" in " ".join(distctl["healthcheck"]["test"])
    assert any(
        v["source"] == "adapters" if isinstance(v, dict) else v.startswith("adapters:")
        for v in distctl["volumes"]
    )
    assert "DISTCTL_API_KEYS" in distctl["environment"]  # from distctl.env

    prom = services["prometheus"]
    assert "--storage.tsdb.retention.time=15d" in prom["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]

    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"]  # from grafana.env, not the compose file
    raw = yaml.safe_load((DEPLOY / BASE).read_text())["services"]["grafana"]["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in raw


def test_rendered_gpu_override(project):
    distctl = yaml.safe_load(compose(project, BASE, GPU))["services"]["distctl"]
    assert distctl["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    devices = distctl["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"
    assert "gpu" in devices[0]["capabilities"]
