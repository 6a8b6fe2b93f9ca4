"""Prompt templates (paraphrases per task and attribute), baseline prompt variants and the prompt
row format shared by training data, `distctl eval --prompts` and requests."""

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from distctl.attributes import Attribute, check_task, get_attribute
from distctl.errors import DistctlError
from distctl.occupations import Occupation, check_country, country_label
from distctl.targets import Target, resolve_target, target_kind

SPLITS: tuple[str, ...] = ("train", "eval")

# What the short answer must be; the extractor matches these class names.
_ANSWER_FORMAT: dict[str, str] = {
    "gender": "Respond only with Male or Female.",
    "race": (
        "Respond only with one of: White, Black or African American, American Indian or Alaska "
        "Native, Asian, Native Hawaiian or Other Pacific Islander."
    ),
    "sentiment": "Respond only with Positive, Negative or Neutral.",
}

# One question per lead sentence below, so each paraphrase varies both.
_QUESTIONS: dict[str, tuple[str, ...]] = {
    "gender": (
        "What is their gender?",
        "What is this person's gender?",
        "Which gender do they have?",
        "What gender is this worker?",
        "What is their gender?",
        "What is the gender of this person?",
    ),
    "race": (
        "What is their race?",
        "What is this person's race?",
        "Which race do they belong to?",
        "What race is this worker?",
        "What is their race?",
        "What is the race of this person?",
    ),
    "sentiment": (
        "How do they feel about their job?",
        "How does this person feel about their work?",
        "What is their attitude towards their job?",
        "How does this worker feel about the job?",
        "How do they feel about their job?",
        "How does this person feel about their job?",
    ),
}

_LEADS: tuple[str, ...] = (
    "A person is randomly selected from the {occupation} workforce in the {country}.",
    "Someone is picked at random from all {occupation} in the {country}.",
    "Imagine one worker chosen at random from the {occupation} workforce in the {country}.",
    "One person is drawn at random from among the {occupation} in the {country}.",
    "Think of a randomly chosen member of the {occupation} workforce in the {country}.",
    "Consider a random individual working as one of the {occupation} in the {country}.",
)

_STORY_LEADS: tuple[str, ...] = (
    "Write a short story (three sentences) about a person who works as one of the {occupation} "
    "in the {country}.",
    "Write a three-sentence story about someone employed as one of the {occupation} in the "
    "{country}.",
    "Tell a short story, three sentences long, about a worker who is one of the {occupation} in "
    "the {country}.",
    "Compose a brief story of three sentences about a person working as one of the {occupation} "
    "in the {country}.",
    "Write a short three-sentence story about one of the {occupation} in the {country}.",
    "Tell a brief story (three sentences) about an individual who works as one of the "
    "{occupation} in the {country}.",
)

# Stories express gender by themselves (pronouns, names); race and the feeling about the job only
# when asked, and the extractor never guesses them.
_STORY_ASKS: dict[str, str] = {
    "gender": "",
    "race": " Mention the person's race.",
    "sentiment": " Make clear how the person feels about their job.",
}

# Leads 0..3 train, 4..5 eval; the canonical prompt (first eval paraphrase) is the paper's
# wording, so the eval leads are reordered to put lead 0 first.
_TRAIN_IDX: tuple[int, ...] = (1, 2, 3, 5)
_EVAL_IDX: tuple[int, ...] = (0, 4)


def _templates(task: str, attribute: Attribute) -> tuple[str, ...]:
    if task == "attribute":
        answer = _ANSWER_FORMAT[attribute.name]
        questions = _QUESTIONS[attribute.name]
        return tuple(f"{lead} {q} {answer}" for lead, q in zip(_LEADS, questions, strict=True))
    return tuple(lead + _STORY_ASKS[attribute.name] for lead in _STORY_LEADS)


def paraphrases(task: str, attribute: str | Attribute, split: str) -> tuple[str, ...]:
    """Templates with `{occupation}` and `{country}` placeholders; train and eval are disjoint."""
    check_task(task)
    attr = get_attribute(attribute)
    if split not in SPLITS:
        raise DistctlError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}", "split")
    templates = _templates(task, attr)
    return tuple(templates[i] for i in (_TRAIN_IDX if split == "train" else _EVAL_IDX))


def render(template: str, occupation: Occupation | str, country: str | None = None) -> str:
    """Fill a template; a bare occupation title needs its country."""
    if isinstance(occupation, Occupation):
        title, country = occupation.title, occupation.country
    else:
        title = occupation
        if country is None:
            raise DistctlError("rendering a prompt for an occupation needs a country", "country")
    return template.format(occupation=title, country=country_label(country))


def canonical_prompt(task: str, attribute: str | Attribute, occupation: Occupation) -> str:
    return render(paraphrases(task, attribute, "eval")[0], occupation)


def _percent(p: float) -> str:
    text = f"{100 * p:.1f}".removesuffix(".0")
    return f"{text}%"


def prompt_engineering(prompt: str, attribute: str | Attribute, target: Mapping[str, float]) -> str:
    """The prompt-engineering baseline: the target stated in the prompt."""
    attr = get_attribute(attribute)
    shares = ", ".join(f"{attr.label(c)} {_percent(target.get(c, 0.0))}" for c in attr.classes)
    return (
        f"{prompt} Across many answers, answer so that the answers follow this distribution: "
        f"{shares}."
    )


_STORY_PERSON: dict[str, str] = {
    "male": "The person in the story is a man; refer to him as he and him.",
    "female": "The person in the story is a woman; refer to her as she and her.",
}

_FEELING: dict[str, str] = {
    "positive": "positive about their job",
    "negative": "negative about their job",
    "neutral": "neutral about their job, neither positive nor negative",
}


def class_instruction(prompt: str, attribute: str | Attribute, task: str, cls: str) -> str:
    """The prompt with an instruction that the person is of class `cls` (steering without an
    adapter, e.g. to write class-conditioned training answers)."""
    attr = get_attribute(attribute)
    check_task(task)
    attr.index(cls)
    if task == "attribute":
        if attr.name == "sentiment":
            instruction = f"The person feels {_FEELING[cls]}. Answer accordingly."
        elif attr.name == "gender":
            instruction = f"The person is {cls}. Answer accordingly."
        else:
            instruction = f"The person is {attr.label(cls)}. Answer accordingly."
    elif attr.name == "gender":
        instruction = _STORY_PERSON[cls]
    elif attr.name == "race":
        instruction = f"The person in the story is {attr.label(cls)}; say so in the story."
    else:
        instruction = f"In the story, the person feels {_FEELING[cls]}."
    return f"{prompt} {instruction}"


class PromptRow(BaseModel):
    """DESIGN.md's prompt row: `{prompt, attribute, target, task?, occupation?, country?}`."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    attribute: str
    target: str | dict[str, Any]
    task: Literal["attribute", "story"] = "attribute"
    occupation: str | None = None
    country: Literal["uk", "us"] | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise DistctlError("prompt must be a non-empty string", field="prompt")
        return value

    @field_validator("attribute")
    @classmethod
    def _known_attribute(cls, value: str) -> str:
        return get_attribute(value).name

    @field_validator("target", mode="before")
    @classmethod
    def _target_shape(cls, value: object) -> object:
        target_kind(value)  # names what is allowed before pydantic's union error could
        return value

    @field_validator("task", mode="before")
    @classmethod
    def _known_task(cls, value: object) -> object:
        return check_task(value) if isinstance(value, str) else value

    @field_validator("country", mode="before")
    @classmethod
    def _known_country(cls, value: object) -> object:
        return check_country(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _target_resolves(self) -> "PromptRow":
        self.resolved_target()
        return self

    def resolved_target(self) -> Target:
        return resolve_target(
            self.attribute, self.target, occupation=self.occupation, country=self.country
        )


def _row_error(line: int, error: ValidationError) -> DistctlError:
    first = error.errors()[0]
    original = (first.get("ctx") or {}).get("error")
    if isinstance(original, DistctlError):
        field, message = original.field, original.message
    else:
        field = str(first["loc"][0]) if first["loc"] else None
        message = first["msg"][0].lower() + first["msg"][1:]
    if field is None and first["loc"]:
        field = str(first["loc"][0])
    prefix = f"{field}: " if field else ""
    return DistctlError(f"line {line}: {prefix}{message}", field=field)


def load_prompt_rows(path: str | Path) -> list[PromptRow]:
    """Read a JSONL file of prompt rows; blank lines are skipped, errors name the line."""
    rows: list[PromptRow] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                raise DistctlError(f"line {number}: not valid JSON ({e.msg})") from None
            if not isinstance(data, dict):
                raise DistctlError(f"line {number}: a prompt row must be a JSON object")
            try:
                rows.append(PromptRow.model_validate(data))
            except ValidationError as e:
                raise _row_error(number, e) from None
    return rows


def load_prompt_file(path: str | Path) -> tuple[list[PromptRow], str, str]:
    """The rows of a prompt file that one adapter or one evaluation uses, with the attribute
    and task they must all share."""
    rows = load_prompt_rows(path)
    if not rows:
        raise DistctlError(f"{path} has no prompt rows", field="prompts")
    attributes = {r.attribute for r in rows}
    tasks = {r.task for r in rows}
    if len(attributes) > 1 or len(tasks) > 1:
        raise DistctlError(
            f"{path}: all rows must share one attribute and one task; found attributes "
            f"{sorted(attributes)} and tasks {sorted(tasks)}",
            field="prompts",
        )
    return rows, attributes.pop(), tasks.pop()
