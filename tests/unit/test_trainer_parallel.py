"""Data-parallel training: `torchrun` with two CPU processes (gloo) takes the steps one process
takes, including a step whose batch is too short to give the second process a share."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.unit.test_trainer_stages import MODEL, tiny_model_dir  # noqa: F401 (fixture)

pytestmark = pytest.mark.skipif(
    not (MODEL / "tokenizer.json").is_file(), reason="base model not prepared"
)


def train(launcher: list[str], model_dir, tmp_path, name: str, method: str):
    out = tmp_path / name
    env = os.environ | {
        "DISTCTL_HOME": str(tmp_path / f"home-{name}"),
        "DISTCTL_MODEL": str(model_dir),
        "OMP_NUM_THREADS": "1",
    }
    args = [
        *launcher,
        "-m",
        "distctl.cli",
        "train",
        "--dataset",
        "gender-us-real",
        "--method",
        method,
        "--out",
        str(out),
        # 14 occupations x 2 rows = 28 groups: batches of 9, 9, 9 and 1
        "--rows-per-occupation",
        "2",
        "--batch-size",
        "9",
        "--epochs",
        "1",
        "--lr",
        "5e-3",
        "--stage2-lr",
        "5e-3",
        "--no-progress",
    ]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((out / "distctl.json").read_text())
    return load_file(out / "adapter_model.safetensors"), manifest


@pytest.mark.parametrize("method", ["ours", "dpo"])
def test_two_processes_train_the_adapter_one_process_trains(tiny_model_dir, tmp_path, method):  # noqa: F811
    single, single_manifest = train([sys.executable], tiny_model_dir, tmp_path, "one", method)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    double, double_manifest = train(
        [*torchrun, "--nproc_per_node", "2"], tiny_model_dir, tmp_path, "two", method
    )
    assert single.keys() == double.keys()
    for key, weights in single.items():
        assert torch.allclose(weights, double[key], atol=2e-5), key
    # LoRA's B matrices start at zero: the comparison is between trained adapters
    assert max(w.abs().max().item() for k, w in single.items() if "lora_B" in k) > 1e-3
    curves, curves2 = single_manifest["curves"], double_manifest["curves"]
    assert curves.keys() == curves2.keys()
    assert len(curves["loss"]) == 8  # two stages of four steps
    for key in curves:
        assert curves2[key] == pytest.approx(curves[key], rel=1e-4, abs=1e-6), key
