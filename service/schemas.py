"""The HTTP request and response models (the edge of the service; inside, dataclasses)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from distctl.attributes import ATTRIBUTES, TASKS
from distctl.errors import DistctlError
from distctl.generation import Mode
from distctl.manifest import TargetRecord
from distctl.metrics import Tally
from distctl.occupations import COUNTRIES
from distctl.targets import target_kind

# Enumerations for the schema, built from distctl's own lists so there is one copy of each.
AttributeName = Literal[tuple(ATTRIBUTES)]  # type: ignore[valid-type]
TaskName = Literal[tuple(TASKS)]  # type: ignore[valid-type]
CountryCode = Literal[tuple(COUNTRIES)]  # type: ignore[valid-type]
NamedTarget = Literal["uniform", "real_world"]


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attribute: AttributeName = Field(description="the attribute whose distribution is steered")
    target: NamedTarget | dict[str, float] = Field(
        description="'uniform', 'real_world' (gender only; needs occupation and country) or a "
        "class -> probability map (omitted classes are 0; sums to 1 within 1e-6)"
    )
    occupation: str | None = Field(
        default=None, description="with country: the prompt is the task's canonical template"
    )
    country: CountryCode | None = None
    prompt: str | None = Field(
        default=None,
        min_length=1,
        max_length=4000,
        description="a free user message instead of occupation + country (chat template applied)",
    )
    task: TaskName = Field(default="attribute", description="chooses template and extractor")
    n: int = Field(default=10, ge=1, description="samples; at most the configured DISTCTL_MAX_N")
    mode: Mode = Mode.SAMPLED
    adapter: str | None = Field(default=None, description="an adapter by name; wins if given")
    seed: int | None = Field(default=None, ge=0, lt=1 << 62)
    temperature: float | None = Field(
        default=None, ge=0, le=5, description="of the text (pass 1 always samples at 1); null: 1"
    )
    top_p: float | None = Field(default=None, gt=0, le=1, description="null: 1")
    max_tokens: int | None = Field(
        default=None, ge=1, description="null: the task's default (attribute 8, story 160)"
    )
    retries: int = Field(
        default=0,
        ge=0,
        le=10,
        description="sampled/exact: redraw a sample whose text misses its class up to this often",
    )
    stream: bool = Field(default=True, description="text/event-stream; false: one JSON body")

    @field_validator("target", mode="before")
    @classmethod
    def _target_shape(cls, value: object) -> object:
        target_kind(value)  # names what is allowed before pydantic's union error could
        if isinstance(value, Mapping):
            for cls, p in value.items():
                # pydantic would read true as 1.0; true/false is never a probability
                if isinstance(p, bool):
                    raise DistctlError(
                        f"target probability for {cls!r} must be a number, got {p!r}", "target"
                    )
        return value


class TallyModel(BaseModel):
    """DESIGN.md's tally, field for field (distctl.metrics.Tally.to_dict)."""

    n: int
    counts: dict[str, int]
    invalid: int
    invalid_rate: float
    shares: dict[str, float]
    target: dict[str, float]
    mae: float
    kl: float | None
    tvd: float | None
    steered: int
    consistency: float | None

    @classmethod
    def of(cls, tally: Tally) -> TallyModel:
        return cls.model_validate(tally.to_dict())


class GenerationEvent(BaseModel):
    index: int = Field(description="0..n-1, each once")
    text: str
    assigned: str | None = Field(description="the class the plan assigned, null in plain mode")
    extracted: str | None = Field(description="the class read from the text, null if none")
    consistent: bool | None
    attempts: int
    tally: TallyModel = Field(description="the running tally including this generation")


class AdapterRef(BaseModel):
    name: str
    version: int
    method: str


class Timings(BaseModel):
    time_to_first_s: float | None
    duration_s: float | None
    generations_per_s: float | None


class Summary(BaseModel):
    tally: TallyModel
    adapter: AdapterRef | None = Field(description="null: the base model")
    mode: Mode
    digit_distribution: dict[str, float] | None = Field(
        description="pass 1's distribution over the steering digits (calibrated mode)"
    )
    timings: Timings
    attempts_total: int = Field(description="engine samples drawn, retries included")


class GenerateResponse(BaseModel):
    generations: list[GenerationEvent]
    summary: Summary


class StreamError(BaseModel):
    """The data of an `event: error`; the stream ends after it."""

    message: str


class AdapterInfo(BaseModel):
    name: str
    version: int = Field(description="the newest version on disk")
    dataset: str
    attribute: str
    task: str
    target: TargetRecord
    method: str
    loaded: bool
    loaded_version: int | None = Field(description="the version being served, if any")
    eval_mae: float | None = Field(description="the latest evaluation MAE in the manifest")


class AdapterLoad(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="an adapter folder under the adapter root")


class AdapterLoaded(BaseModel):
    adapter: AdapterInfo
    previous_version: int | None
    changed: bool = Field(description="false when that version was already being served")


class AttributeInfo(BaseModel):
    name: str
    classes: list[str] = Field(description="in steering-digit order: class i is digit i")


class OccupationInfo(BaseModel):
    country: str
    title: str
    sector: str
    real_world: dict[str, float]


class TargetsResponse(BaseModel):
    attributes: list[AttributeInfo]
    tasks: list[str]
    named_targets: dict[str, str]
    countries: list[str]
    occupations: list[OccupationInfo]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    adapters_loaded: int


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    detail: list[ErrorDetail]


class MessageBody(BaseModel):
    detail: str


def error_body(field: str | None, message: str, kind: str = "value_error") -> dict[str, Any]:
    """FastAPI's 422 format for an error that one body field caused."""
    loc = ["body", field] if field else ["body"]
    return {"detail": [{"loc": loc, "msg": message, "type": kind}]}
