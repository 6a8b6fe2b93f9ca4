"""trainer/evaluate.py without an engine: option checks, the prompt layout, and evaluate() on a
fake generator (the real Generator runs in tests/integration/test_evaluate.py)."""

import json
from dataclasses import dataclass, field

import pytest

from distctl.datasets import get_dataset
from distctl.errors import DistctlError
from distctl.generation import Generation, GenerationSpec
from distctl.manifest import Manifest, TargetRecord, read_manifest, write_adapter
from distctl.prompts import paraphrases, render
from trainer import evaluate as ev

# the columns of generations.jsonl, in order (issue #4)
ROW_FIELDS = [
    "dataset",
    "task",
    "method",
    "mode",
    "adapter",
    "prompt",
    "occupation",
    "country",
    "attribute",
    "target",
    "assigned",
    "extracted",
    "text",
    "seed",
]


@dataclass
class FakeRun:
    spec: GenerationSpec
    digit_distribution: dict | None = None
    closed: bool = False
    _items: list = field(default_factory=list)

    def __post_init__(self):
        classes = self.spec.attribute.classes
        steered = self.spec.mode.value != "plain"
        for i in range(self.spec.n):
            seed = self.spec.seed + i
            assigned = classes[i % len(classes)] if steered else None
            # plain: a deterministic answer from the seed; every 7th answer names no class
            extracted = assigned if steered else (None if seed % 7 == 0 else classes[seed % 2])
            self._items.append(
                Generation(
                    i,
                    extracted or "unsure",
                    assigned,
                    extracted,
                    None if assigned is None else True,
                    1,
                    seed,
                )
            )
        self._items.reverse()  # finishing order differs from index order
        if self.spec.mode.value == "calibrated":
            self.digit_distribution = dict(self.spec.target)

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self._items:
            raise StopAsyncIteration
        return self._items.pop(0)

    async def aclose(self):
        self.closed = True


class FakeGenerator:
    def __init__(self):
        self.specs: list[GenerationSpec] = []
        self.runs: list[FakeRun] = []

    def run(self, spec):
        self.specs.append(spec)
        self.runs.append(FakeRun(spec))
        return self.runs[-1]


def make_adapter(root, method="ours", dataset="gender-us-real", attribute="gender"):
    spec = get_dataset(dataset)
    manifest = Manifest(
        base_model="fake",
        base_model_sha256="0" * 64,
        dataset=dataset,
        country=spec.country,
        attribute=attribute,
        classes=["male", "female"],
        digit_tokens=["0", "1"],
        task="attribute",
        target=TargetRecord(kind=spec.target),
        method=method,
        seed=42,
    )
    return write_adapter(
        lambda folder: None, manifest, root=root, name=f"{dataset}-attribute-{method}"
    )


def test_spread_and_seeds():
    assert ev.spread(100, 2) == [50, 50]
    assert ev.spread(5, 2) == [3, 2]
    assert ev.spread(1, 2) == [1, 0]
    assert ev.spec_seed(0, 3) == ev.spec_seed(0, 3)
    seeds = {ev.spec_seed(s, i) for s in range(3) for i in range(50)}
    assert len(seeds) == 150 and all(0 <= s < 1 << 48 for s in seeds)


def test_dataset_items_spread_rounds_over_eval_paraphrases():
    items = ev.dataset_items("gender-us-uniform", "attribute", "zero-shot", 5)
    spec = get_dataset("gender-us-uniform")
    occupations = spec.occupations()
    assert len(items) == 2 * len(occupations)
    first = occupations[0]
    templates = paraphrases("attribute", "gender", "eval")
    assert [i.prompt for i in items[:2]] == [render(t, first) for t in templates]
    assert [i.n for i in items[:2]] == [3, 2]
    per_occ = {}
    for i in items:
        per_occ[i.occupation] = per_occ.get(i.occupation, 0) + i.n
    assert set(per_occ.values()) == {5}


def test_prompt_method_states_the_target_and_filters_work():
    items = ev.dataset_items("gender-us-real", "attribute", "prompt", 4, limit_occupations=2)
    assert len({i.occupation for i in items}) == 2
    assert all("Across many answers" in i.prompt for i in items)
    title = get_dataset("gender-us-real").occupations()[3].title
    picked = ev.dataset_items(
        "gender-us-real", "attribute", "zero-shot", 4, occupations=[title.upper()]
    )
    assert {i.occupation for i in picked} == {title}
    with pytest.raises(DistctlError, match="unknown us occupations"):
        ev.dataset_items("gender-us-real", "attribute", "zero-shot", 4, occupations=["wizards"])


def test_make_config_checks_options(tmp_path):
    base = {"dataset": "gender-us-real"}
    assert ev.make_config(method="zero-shot", **base).mode == "plain"
    with pytest.raises(DistctlError, match="needs --adapter"):
        ev.make_config(method="ift", **base)
    with pytest.raises(DistctlError, match="calibrated mode"):
        ev.make_config(method="prompt", mode="calibrated", **base)
    with pytest.raises(DistctlError, match="exactly one"):
        ev.make_config(method="zero-shot")
    with pytest.raises(DistctlError, match="rounds"):
        ev.make_config(method="zero-shot", rounds=0, **base)
    adapter = make_adapter(tmp_path)
    with pytest.raises(DistctlError, match="drop --adapter"):
        ev.make_config(method="zero-shot", adapter=adapter.path, **base)
    with pytest.raises(DistctlError, match="method ours, not ift"):
        ev.make_config(method="ift", adapter=adapter.path, **base)
    with pytest.raises(DistctlError, match="trained for gender"):
        ev.make_config(method="ours", adapter=adapter.path, dataset="race-us-uniform")
    config = ev.make_config(method="ours", adapter=adapter.path, **base)
    assert config.mode == "calibrated" and config.adapter.version == 1


def test_prompt_file_rows(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [
        {"prompt": "Who cooks?", "attribute": "gender", "target": {"male": 0.3, "female": 0.7}},
        {
            "prompt": "A nurse?",
            "attribute": "gender",
            "target": "real_world",
            "occupation": "Registered nurses",
            "country": "us",
        },
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = ev.make_config(method="zero-shot", prompts=path, rounds=6)
    assert config.dataset == "mine.jsonl" and config.task == "attribute"
    assert [i.n for i in config.items] == [6, 6]
    assert config.items[0].occupation == "row 1"
    assert config.items[1].target["female"] > 0.5
    with pytest.raises(DistctlError, match="--task story"):
        ev.make_config(method="zero-shot", prompts=path, task="story")


async def test_evaluate_on_a_fake_generator_writes_every_field(tmp_path):
    config = ev.make_config(
        method="zero-shot", dataset="gender-uk-real", rounds=5, limit_occupations=3, seed=11
    )
    gen = FakeGenerator()
    result = await ev.evaluate(gen, config, progress=False)
    assert [s.n for s in gen.specs] == [3, 2] * 3
    assert all(
        s.temperature == 1.0 and s.mode.value == "plain" and s.adapter is None for s in gen.specs
    )
    assert [s.seed for s in gen.specs] == [ev.spec_seed(11, i) for i in range(6)]
    assert all(r.closed for r in gen.runs)
    assert len(result.rows) == 15
    first = result.rows[0]
    assert list(first) == ROW_FIELDS
    assert first["seed"] == gen.specs[0].seed  # index order, not finishing order
    overall = result.report["overall"]
    assert overall["n"] == 15 and overall["n_rounds"] == 5 and overall["occupations"] == 3
    assert result.report["config"]["method"] == "zero-shot"

    ev.save(result, tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["overall"]["mae"] == pytest.approx(overall["mae"])
    assert len((tmp_path / "generations.jsonl").read_text().splitlines()) == 15


async def test_evaluate_with_an_adapter_appends_to_its_manifest(tmp_path):
    adapter = make_adapter(tmp_path / "adapters")
    config = ev.make_config(
        method="ours",
        dataset="gender-us-real",
        adapter=adapter.path,
        rounds=4,
        limit_occupations=2,
        mode="exact",
    )
    gen = FakeGenerator()
    result = await ev.evaluate(gen, config, progress=False)
    assert len({s.adapter.lora_id for s in gen.specs}) == 1
    assert all(s.adapter.steering for s in gen.specs)
    assert result.rows[0]["adapter"] == f"{adapter.name}@v1"
    assert result.report["overall"]["consistency"] == 1.0
    ev.save(result, tmp_path / "out", plots=False)
    (entry,) = read_manifest(adapter.path).eval
    assert entry == {
        "dataset": "gender-us-real",
        "task": "attribute",
        "mode": "exact",
        "pass2": "assistant",
        "n": 4,
        "mae": result.report["overall"]["mae"],
        "mae_ci": result.report["overall"]["mae_ci"],
    }


async def test_calibrated_runs_report_pass_one(tmp_path):
    adapter = make_adapter(tmp_path / "adapters")
    config = ev.make_config(
        method="ours", dataset="gender-us-real", adapter=adapter.path, rounds=2, limit_occupations=1
    )
    result = await ev.evaluate(FakeGenerator(), config, progress=False)
    ev.save(result, tmp_path / "out", plots=False)
    digits = result.report["digit_distributions"]
    assert len(digits) == 2 and digits[0]["digit_distribution"] == config.items[0].target


def test_main_rejects_bad_options_before_any_engine(capsys):
    with pytest.raises(DistctlError):
        ev.main(["--dataset", "gender-us-real", "--method", "ift", "--out", "x"])
    with pytest.raises(SystemExit):
        ev.main(["--dataset", "nope", "--method", "zero-shot", "--out", "x"])
