"""A few training steps on the real base model; vLLM loads the adapter unchanged and its pass-1
digit distribution has moved toward a skewed target (the session `generator` of conftest.py)."""

import json

import pytest

from distctl.attributes import get_attribute
from distctl.manifest import AdapterVersion, read_manifest
from distctl.occupations import occupations
from distctl.prompts import paraphrases, render

pytestmark = pytest.mark.integration

# the base model already prefers digit 1 (female) at about 0.95, so the target skews male
TARGET = {"male": 0.9, "female": 0.1}


class BaseModelOnly:
    """Stands in for an adapter: pass 1 on the base model (no LoRA request)."""

    def request(self):
        return None


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A few steps of `ours` toward a skewed target on two occupations (requested before the
    engine, so that training does not share the cores with a starting engine)."""
    from trainer.train import main

    folder = tmp_path_factory.mktemp("training")
    template = paraphrases("attribute", "gender", "train")[0]
    rows = [
        {"prompt": render(template, o), "attribute": "gender", "target": TARGET}
        for o in occupations("us")[:2]
    ]
    prompts = folder / "rows.jsonl"
    prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = folder / "adapter"
    code = main(
        [
            "--prompts",
            str(prompts),
            "--method",
            "ours",
            "--out",
            str(out),
            "--rows-per-occupation",
            "10",
            "--batch-size",
            "4",
            "--max-steps",
            "4",
            "--lr",
            "1e-3",
            "--stage2-lr",
            "1e-3",
            "--no-progress",
        ]
    )
    assert code == 0
    return rows[0]["prompt"], AdapterVersion(out.name, 1, out, read_manifest(out))


@pytest.mark.timeout(1500)
async def test_trained_adapter_loads_in_vllm_and_moves_toward_the_target(trained, generator):
    from distctl.generation import LoraAdapter

    question, version = trained
    assert version.manifest.steering
    gender = get_attribute("gender")
    before = await generator.digit_distribution(question, gender, BaseModelOnly())
    adapter = LoraAdapter.from_version(version)
    after = await generator.digit_distribution(question, gender, adapter)

    def distance(d):
        return abs(d["male"] - TARGET["male"])

    assert distance(after) < distance(before), (before, after)
    assert after["male"] > before["male"]


@pytest.fixture(scope="module")
def trained_story(tmp_path_factory):
    """Two steps of `ours` on the story task: the trainer asks the base model for stories
    through the generation core (its own engine), keeps those the extractor agrees with and
    caches them under $DISTCTL_HOME."""
    from distctl.config import Settings
    from trainer.train import main

    folder = tmp_path_factory.mktemp("story")
    template = paraphrases("story", "gender", "train")[0]
    rows = [
        {"prompt": render(template, o), "attribute": "gender", "target": TARGET, "task": "story"}
        for o in occupations("us")[:2]
    ]
    prompts = folder / "rows.jsonl"
    prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = folder / "adapter"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DISTCTL_MODEL", str(Settings().model_path))
        env.setenv("DISTCTL_HOME", str(folder / "home"))
        env.setenv("DISTCTL_MAX_MODEL_LEN", "512")
        code = main(
            [
                "--prompts",
                str(prompts),
                "--task",
                "story",
                "--method",
                "ours",
                "--out",
                str(out),
                "--story-texts-per-class",
                "3",
                "--rows-per-occupation",
                "2",
                "--batch-size",
                "2",
                "--max-steps",
                "2",
                "--no-progress",
            ]
        )
    assert code == 0
    (cache,) = (folder / "home" / "cache" / "story-texts").glob("*.json")
    return rows, AdapterVersion(out.name, 1, out, read_manifest(out)), json.loads(cache.read_text())


@pytest.mark.timeout(1500)
async def test_story_training_uses_the_base_models_checked_stories(trained_story, generator):
    from distctl.extract import extract
    from distctl.generation import GenerationSpec, LoraAdapter, Mode

    rows, version, pool = trained_story
    gender = get_attribute("gender")
    assert version.manifest.task == "story" and version.manifest.steering
    assert set(pool) == {r["prompt"] for r in rows}
    kept = [(cls, text) for texts in pool.values() for cls, ts in texts.items() for text in ts]
    assert kept, "the base model wrote no usable story"
    assert all(extract(gender, text, task="story") == cls for cls, text in kept)
    assert {cls for cls, _ in kept} == set(gender.classes)

    spec = GenerationSpec(
        prompt=rows[0]["prompt"],
        attribute=gender,
        target=TARGET,
        n=2,
        mode=Mode.CALIBRATED,
        task="story",
        adapter=LoraAdapter.from_version(version),
        seed=3,
        max_tokens=48,
    )
    out = [g async for g in generator.run(spec)]
    assert len(out) == 2 and all(g.assigned in gender.classes for g in out)
