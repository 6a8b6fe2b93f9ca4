"""Shared e2e fixtures: the real service (`distctl serve`) and a real Prometheus scraping it.

`service_url` starts `distctl serve` once per session on a free loopback port with an API key
(`service_headers` carries it) and an empty adapter root, and waits for /readyz.
Set DISTCTL_E2E_URL to run against a service that is already up instead (it must accept
`service_headers`' key, or have none configured).
`prometheus_server` runs the project's deploy/prometheus/prometheus.yml and alerts.yml, adapted
only in the scrape target (that service) and the scrape interval (1 s).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.promkit import Prometheus, find_free_port, run_prometheus, wait_ready

SERVICE_API_KEY = "e2e-test-key-not-secret"
READY_TIMEOUT_S = 180


@pytest.fixture
def free_port() -> int:
    return find_free_port()


def _distctl() -> str:
    beside = Path(sys.executable).parent / "distctl"  # the venv running pytest
    path = str(beside) if beside.exists() else shutil.which("distctl")
    assert path, "the distctl console script is not installed (pip install -e .[cpu,dev])"
    return path


@pytest.fixture(scope="session")
def service_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {SERVICE_API_KEY}"}


@pytest.fixture(scope="session")
def service_url(tmp_path_factory) -> Iterator[str]:
    if os.environ.get("DISTCTL_E2E_URL"):
        yield os.environ["DISTCTL_E2E_URL"].rstrip("/")
        return
    workdir = tmp_path_factory.mktemp("service")
    port = find_free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTCTL_API_KEYS")}
    env.update(
        VLLM_CPU_KVCACHE_SPACE="1",
        DISTCTL_MAX_MODEL_LEN="512",
        DISTCTL_KV_CACHE_GB="1",
        DISTCTL_ADAPTER_ROOT=str(workdir / "adapters"),
        DISTCTL_API_KEYS=f"{SERVICE_API_KEY}:admin",
    )
    (workdir / "adapters").mkdir()
    log = workdir / "service.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [_distctl(), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # vLLM may start helper processes: stop the whole group
        )
    url = f"http://127.0.0.1:{port}"

    def tail() -> str:
        return log.read_text(errors="replace")[-6000:]

    try:
        wait_ready(process, f"{url}/readyz", READY_TIMEOUT_S, tail)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 15)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()


@pytest.fixture(scope="session")
def prometheus_server(service_url, tmp_path_factory) -> Iterator[Prometheus]:
    target = service_url.removeprefix("http://")
    with run_prometheus(tmp_path_factory.mktemp("prometheus"), target, scrape_interval="1s") as p:
        yield p
