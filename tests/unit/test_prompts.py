import json
from pathlib import Path

import pytest

from distctl.attributes import ATTRIBUTES, TASKS
from distctl.errors import DistctlError
from distctl.occupations import get_occupation
from distctl.prompts import (
    PromptRow,
    canonical_prompt,
    class_instruction,
    load_prompt_rows,
    paraphrases,
    prompt_engineering,
    render,
)

NURSES = get_occupation("us", "Registered nurses")


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("attribute", list(ATTRIBUTES))
def test_paraphrases_disjoint_and_enough(task: str, attribute: str) -> None:
    train, evaluation = paraphrases(task, attribute, "train"), paraphrases(task, attribute, "eval")
    assert len(train) + len(evaluation) >= 5 and len(train) >= 3 and len(evaluation) >= 2
    assert not set(train) & set(evaluation)
    assert len(set(train + evaluation)) == len(train + evaluation)
    for template in train + evaluation:
        text = render(template, NURSES)
        assert "Registered nurses" in text and "the US" in text and "{" not in text


def test_canonical_prompts_are_the_papers() -> None:
    assert canonical_prompt("attribute", "gender", NURSES) == (
        "A person is randomly selected from the Registered nurses workforce in the US. "
        "What is their gender? Respond only with Male or Female."
    )
    assert canonical_prompt("attribute", "race", NURSES).endswith(
        "What is their race? Respond only with one of: White, Black or African American, "
        "American Indian or Alaska Native, Asian, Native Hawaiian or Other Pacific Islander."
    )
    assert canonical_prompt("attribute", "sentiment", NURSES).endswith(
        "How do they feel about their job? Respond only with Positive, Negative or Neutral."
    )
    assert canonical_prompt("story", "gender", NURSES) == (
        "Write a short story (three sentences) about a person who works as one of the "
        "Registered nurses in the US."
    )
    assert "feels about their job" in canonical_prompt("story", "sentiment", NURSES)


def test_render_bare_title_needs_country() -> None:
    template = paraphrases("attribute", "gender", "eval")[0]
    assert "Pilots workforce in the UK" in render(template, "Pilots", "uk")
    with pytest.raises(DistctlError) as e:
        render(template, "Pilots")
    assert e.value.field == "country"
    with pytest.raises(DistctlError) as e:
        paraphrases("attribute", "gender", "test")
    assert e.value.field == "split"


def test_prompt_engineering_states_target() -> None:
    assert prompt_engineering("Q?", "gender", {"male": 0.5, "female": 0.5}) == (
        "Q? Across many answers, answer so that the answers follow this distribution: "
        "Male 50%, Female 50%."
    )
    text = prompt_engineering("Q?", "sentiment", {"positive": 1 / 3, "negative": 2 / 3})
    assert text.endswith("Positive 33.3%, Negative 66.7%, Neutral 0%.")


def test_class_instruction() -> None:
    assert class_instruction("Q?", "gender", "attribute", "female") == (
        "Q? The person is female. Answer accordingly."
    )
    assert "woman" in class_instruction("S.", "gender", "story", "female")
    assert " man" in class_instruction("S.", "gender", "story", "male")
    assert "Black or African American" in class_instruction(
        "Q?", "race", "attribute", "black or african american"
    )
    assert "Asian" in class_instruction("S.", "race", "story", "asian")
    assert "negative about their job" in class_instruction("S.", "sentiment", "story", "negative")
    assert "neutral" in class_instruction("Q?", "sentiment", "attribute", "neutral")
    with pytest.raises(DistctlError):
        class_instruction("Q?", "gender", "attribute", "robot")


def test_prompt_row_defaults_and_target() -> None:
    row = PromptRow(prompt="Q?", attribute="gender", target="uniform")
    assert row.task == "attribute" and row.occupation is None and row.country is None
    assert row.resolved_target() == {"male": 0.5, "female": 0.5}
    real = PromptRow(
        prompt="Q?",
        attribute="gender",
        target="real_world",
        occupation="Registered nurses",
        country="US",
    )
    assert real.country == "us"
    assert real.resolved_target()["female"] == pytest.approx(2413 / 2817)
    explicit = PromptRow(prompt="Q?", attribute="race", target={"asian": 1.0}, task="story")
    assert explicit.resolved_target()["asian"] == 1.0


def _write(tmp_path: Path, rows: list[object]) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_load_prompt_rows(tmp_path: Path) -> None:
    good = {"prompt": "Q?", "attribute": "gender", "target": {"male": 0.3, "female": 0.7}}
    rows = load_prompt_rows(_write(tmp_path, [good, "", good]))
    assert len(rows) == 2 and rows[0].resolved_target()["female"] == 0.7


@pytest.mark.parametrize(
    ("bad", "field", "needle"),
    [
        ({"attribute": "gender", "target": "uniform"}, "prompt", "required"),
        ({"prompt": "  ", "attribute": "gender", "target": "uniform"}, "prompt", "non-empty"),
        ({"prompt": "Q", "attribute": "age", "target": "uniform"}, "attribute", "allowed"),
        ({"prompt": "Q", "attribute": "gender", "target": {"male": 0.9}}, "target", "sum to 1"),
        ({"prompt": "Q", "attribute": "gender", "target": "zipf"}, "target", "allowed"),
        ({"prompt": "Q", "attribute": "gender", "target": 3}, "target", "allowed"),
        ({"prompt": "Q", "attribute": "race", "target": "real_world"}, "target", "gender only"),
        ({"prompt": "Q", "attribute": "gender", "target": "real_world"}, "occupation", "needs"),
        (
            {"prompt": "Q", "attribute": "gender", "target": "uniform", "task": "poem"},
            "task",
            "allowed",
        ),
        (
            {"prompt": "Q", "attribute": "gender", "target": "uniform", "country": "fr"},
            "country",
            "allowed",
        ),
        ({"prompt": "Q", "attribute": "gender", "target": "uniform", "taget": 1}, "taget", "extra"),
    ],
)
def test_load_prompt_rows_errors_name_line_and_field(
    tmp_path: Path, bad: dict[str, object], field: str, needle: str
) -> None:
    good = {"prompt": "Q?", "attribute": "gender", "target": "uniform"}
    with pytest.raises(DistctlError) as e:
        load_prompt_rows(_write(tmp_path, [good, good, bad]))
    assert e.value.field == field
    assert str(e.value).startswith(f"line 3: {field}: ")
    assert needle in str(e.value)


def test_load_prompt_rows_bad_json(tmp_path: Path) -> None:
    with pytest.raises(DistctlError, match="line 2: not valid JSON"):
        load_prompt_rows(
            _write(tmp_path, [{"prompt": "Q", "attribute": "race", "target": "uniform"}, "{nope"])
        )
    with pytest.raises(DistctlError, match="line 1: a prompt row must be a JSON object"):
        load_prompt_rows(_write(tmp_path, ["[1, 2]"]))
