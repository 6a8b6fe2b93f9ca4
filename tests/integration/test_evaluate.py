"""A tiny evaluation end to end on the real engine and base model (the `generator` fixture of
tests/integration/conftest.py: one engine for the session)."""

import json

import pytest

from tests.unit.test_evaluate_run import ROW_FIELDS
from trainer.evaluate import evaluate, make_config, save

pytestmark = pytest.mark.integration


@pytest.mark.timeout(600)
async def test_zero_shot_evaluation_end_to_end(generator, tmp_path):
    config = make_config(
        method="zero-shot", dataset="gender-us-uniform", rounds=4, limit_occupations=2, seed=5
    )
    result = await evaluate(generator, config, progress=False)
    save(result, tmp_path)

    assert {p.name for p in tmp_path.iterdir()} == {
        "generations.jsonl",
        "report.json",
        "report.md",
        "shares.png",
        "mae.png",
    }
    rows = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    assert all(list(r) == ROW_FIELDS for r in rows)
    assert all(r["assigned"] is None and r["mode"] == "plain" for r in rows)
    assert all(r["extracted"] in (None, "male", "female") for r in rows)
    assert len({r["seed"] for r in rows}) == 8  # every sample has its own seed
    assert len({r["occupation"] for r in rows}) == 2

    report = json.loads((tmp_path / "report.json").read_text())
    overall = report["overall"]
    assert overall["n"] == 8 and overall["n_rounds"] == 4 and overall["occupations"] == 2
    assert 0 <= overall["mae"] <= 0.5
    lo, hi = overall["mae_ci"]
    assert 0 <= lo <= hi <= 0.5
    assert 0 < overall["noise_floor"] < 0.5
    assert 0 <= overall["invalid_rate"] <= 1 and overall["consistency"] is None
    assert len(report["per_occupation"]) == 2


@pytest.mark.timeout(600)
async def test_adapter_evaluation_appends_to_the_manifest(generator, make_adapter, tmp_path):
    from distctl.generation import LoraAdapter
    from distctl.manifest import read_manifest

    version = make_adapter("eval-it-ours", scale=0.01)  # near the base model: a random LoRA
    config = make_config(
        method="ours",
        dataset="gender-us-uniform",
        adapter=version.path,
        rounds=4,
        limit_occupations=1,
        mode="exact",
    )
    # an id no other integration test uses: the engine keys loaded adapters by it
    lora = LoraAdapter.from_version(version)
    result = await evaluate(generator, config, lora=lora, progress=False)
    save(result, tmp_path, plots=False)

    assert [r["assigned"] for r in result.rows].count("male") == 2  # exact: 2 of each class
    assert all(r["adapter"] == "eval-it-ours@v1" for r in result.rows)
    assert result.report["overall"]["consistency"] is not None
    (entry,) = read_manifest(version.path).eval
    assert entry["mode"] == "exact" and entry["n"] == 4
    assert entry["mae"] == result.report["overall"]["mae"]
