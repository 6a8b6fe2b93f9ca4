"""scripts/ensure-test-tools.sh: valid, and a no-op once the tools are there."""

from __future__ import annotations

import subprocess

from tests.deploy.promkit import REPO, tool

SCRIPT = REPO / "scripts" / "ensure-test-tools.sh"


def test_script_is_valid_bash():
    assert SCRIPT.stat().st_mode & 0o111
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_script_is_idempotent():
    for name in ("docker-compose", "promtool", "prometheus"):
        tool(name)
    done = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and not done.stdout and not done.stderr, done


def test_script_explains_what_is_missing(tmp_path):
    """Without the tools and without apt-get, it names the packages and fails."""
    done = subprocess.run(
        ["/bin/bash", str(SCRIPT)],
        env={"PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "docker-compose prometheus" in done.stderr
