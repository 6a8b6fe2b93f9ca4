"""The generation core: how a steered generation is produced, for evaluation and the service.

A run takes one prompt and n samples. It decides a class per sample (the steering plan),
then produces the texts:

- pass 1 (calibrated mode only) reads the K digit log-probabilities at the first response
  position in one engine request and renormalises them over the K digits;
- pass 2 sends one engine request per class with n = that class's count, the class's digit
  forced as the first assistant token (or, without a steering adapter, the class stated in a
  class-conditioned instruction), so that the samples of a class share their prefix.

Each finished generation is read back from its text (never from the digit), counted in the
run's tally, and yielded in finishing order. Closing the run aborts every engine request it
started.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from distctl.attributes import Attribute
from distctl.codec import SteeringCodec
from distctl.errors import DistctlError
from distctl.extract import extract
from distctl.manifest import AdapterVersion
from distctl.metrics import Tally
from distctl.prompts import class_instruction
from distctl.quota import allocate
from distctl.targets import Target

if TYPE_CHECKING:
    from vllm.lora.request import LoRARequest


class Mode(StrEnum):
    CALIBRATED = "calibrated"
    SAMPLED = "sampled"
    EXACT = "exact"
    PLAIN = "plain"


Pass2 = Literal["assistant", "user-turn"]
DEFAULT_MAX_TOKENS: dict[str, int] = {"attribute": 8, "story": 160}
# vLLM seeds are 64-bit; child samples of a request take seed + index
_SEED_LIMIT = 1 << 62
_DIGITS_RE = re.compile(r"[0-9]")
_LORA_IDS = itertools.count(1)


class Engine(Protocol):
    """What the core needs of vLLM's AsyncLLM (a fake implements the same for unit tests)."""

    def generate(
        self, prompt: Any, sampling_params: Any, request_id: str, *, lora_request: Any = None
    ) -> AsyncIterator[Any]: ...

    async def abort(self, request_id: str | Sequence[str]) -> None: ...


class ChatTokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class LoraAdapter:
    """One adapter version as the engine knows it."""

    name: str
    version: int
    path: Path
    lora_id: int
    steering: bool
    attribute: str
    task: str

    @classmethod
    def from_version(cls, adapter: AdapterVersion, lora_id: int | None = None) -> LoraAdapter:
        """`lora_id` defaults to the next id of this process: vLLM treats two LoRAs with one id
        as the same adapter, so every loaded version needs its own."""
        m = adapter.manifest
        lora_id = next(_LORA_IDS) if lora_id is None else lora_id
        return cls(
            adapter.name, adapter.version, adapter.path, lora_id, m.steering, m.attribute, m.task
        )

    @property
    def label(self) -> str:
        # the version is part of the name, and vLLM keys its prefix cache on name and path,
        # so a retrained adapter never reuses blocks computed by the old one
        return f"{self.name}@v{self.version}"

    def request(self) -> LoRARequest:
        from vllm.lora.request import LoRARequest

        return LoRARequest(self.label, self.lora_id, str(self.path))


@dataclass(frozen=True)
class GenerationSpec:
    prompt: str
    attribute: Attribute
    target: Target
    n: int
    mode: Mode
    task: str = "attribute"
    adapter: LoraAdapter | None = None
    seed: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None
    retries: int = 0
    pass2: Pass2 = "assistant"

    def __post_init__(self) -> None:
        if self.n < 1:
            raise DistctlError("n must be at least 1", field="n")
        if self.retries < 0:
            raise DistctlError("retries must be 0 or more", field="retries")
        if self.mode is Mode.CALIBRATED and not (self.adapter and self.adapter.steering):
            raise DistctlError("calibrated mode needs a steering adapter", field="adapter")
        if (
            self.adapter is not None
            and self.adapter.steering
            and (self.adapter.attribute != self.attribute.name)
        ):
            raise DistctlError(
                f"adapter {self.adapter.name!r} steers {self.adapter.attribute}, "
                f"not {self.attribute.name}",
                field="adapter",
            )

    @property
    def steering_adapter(self) -> LoraAdapter | None:
        return self.adapter if self.adapter is not None and self.adapter.steering else None

    @property
    def token_budget(self) -> int:
        return self.max_tokens if self.max_tokens is not None else DEFAULT_MAX_TOKENS[self.task]


@dataclass(frozen=True)
class Generation:
    index: int
    text: str
    assigned: str | None
    extracted: str | None
    consistent: bool | None
    attempts: int
    seed: int


@dataclass(frozen=True)
class _Request:
    """One pass-2 engine request: a prompt shared by `indices`, child j seeded `seeds[j]`."""

    prompt_ids: list[int]
    indices: list[int]
    seeds: list[int]
    assigned: str | None
    attempt: int


def plan_classes(
    mode: Mode,
    target: Target,
    n: int,
    rng: np.random.Generator,
    digit_distribution: Target | None = None,
) -> list[str | None]:
    """The class assigned to each sample index, or None everywhere in plain mode."""
    if mode is Mode.PLAIN:
        return [None] * n
    if mode is Mode.EXACT:
        return list(allocate(target, n))
    weights = digit_distribution if mode is Mode.CALIBRATED else target
    assert weights is not None
    classes = list(weights)
    p = np.array([weights[c] for c in classes], dtype=float)
    return [classes[i] for i in rng.choice(len(classes), size=n, p=p / p.sum())]


def _sampling_params(**kwargs: Any) -> Any:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(output_kind=RequestOutputKind.DELTA, **kwargs)


def _tokens_prompt(ids: list[int]) -> Any:
    from vllm.inputs import TokensPrompt

    return TokensPrompt(prompt_token_ids=ids)


class Generator:
    """Produces steered generations on one engine; shared by evaluation and the service."""

    def __init__(self, engine: Engine, tokenizer: ChatTokenizer) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self._codecs: dict[str, SteeringCodec] = {}

    def codec(self, attribute: Attribute) -> SteeringCodec:
        if attribute.name not in self._codecs:
            self._codecs[attribute.name] = SteeringCodec(self.tokenizer, attribute)
        return self._codecs[attribute.name]

    def chat_ids(self, user_message: str) -> list[int]:
        """The prompt through the model's chat template, up to the first assistant token."""
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user_message}],
            tokenize=False,
            add_generation_prompt=True,
        )
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    async def digit_distribution(
        self, prompt: str, attribute: Attribute, adapter: LoraAdapter
    ) -> Target:
        """Pass 1: the adapter's distribution over the K steering digits for this prompt,
        always at temperature 1 (the request's temperature is for the text)."""
        codec = self.codec(attribute)
        ids = list(codec.token_ids)
        params = _sampling_params(
            max_tokens=1, temperature=1.0, logprobs=len(ids), logprob_token_ids=ids
        )
        request_id = f"pass1-{uuid.uuid4().hex}"
        final = None
        async for output in self.engine.generate(
            _tokens_prompt(self.chat_ids(prompt)),
            params,
            request_id,
            lora_request=adapter.request(),
        ):
            final = output
        if final is None or not final.outputs or not final.outputs[0].logprobs:
            raise RuntimeError("pass 1 returned no log-probabilities")
        logprobs = final.outputs[0].logprobs[0]
        values = np.array([logprobs[token].logprob for token in codec.token_ids], dtype=float)
        probs = np.exp(values - values.max())
        probs /= probs.sum()
        return {c: float(p) for c, p in zip(attribute.classes, probs, strict=True)}

    def run(
        self, spec: GenerationSpec, on_attempt: Callable[[Generation], None] | None = None
    ) -> GenerationRun:
        """Start nothing yet: the engine requests start when the run is first iterated."""
        return GenerationRun(self, spec, on_attempt)


@dataclass
class GenerationRun:
    """An async iterator of a spec's generations, in finishing order.

    `on_attempt` sees every attempt, retries included (the service counts the model's
    behaviour from it); the iterator and the tally see each index's final attempt once.
    """

    generator: Generator
    spec: GenerationSpec
    on_attempt: Callable[[Generation], None] | None = None
    plan: list[str | None] = field(default_factory=list)
    digit_distribution: Target | None = None
    attempts_total: int = 0
    time_to_first_s: float | None = None
    duration_s: float | None = None
    base_seed: int = 0

    def __post_init__(self) -> None:
        self.tally = Tally.new(self.spec.attribute, self.spec.target)
        self.base_seed = (
            self.spec.seed if self.spec.seed is not None else secrets.randbelow(_SEED_LIMIT)
        ) % _SEED_LIMIT
        self._run_id = uuid.uuid4().hex
        self._queue: asyncio.Queue[tuple[_Request, int, str] | BaseException] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._live: set[str] = set()
        self._requests = 0
        self._iterator = self._iterate()

    def __aiter__(self) -> GenerationRun:
        return self

    async def __anext__(self) -> Generation:
        return await self._iterator.__anext__()

    async def aclose(self) -> None:
        """Stop: cancel the readers and abort every engine request still running."""
        await self._abort_live()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self._iterator.aclose()

    async def _abort_live(self) -> None:
        if self._live:
            live = list(self._live)
            self._live.clear()
            # shielded: a consumer cancelled mid-abort (a client gone) must not leak requests
            await asyncio.shield(self.generator.engine.abort(live))
        for task in self._tasks:
            task.cancel()

    # -- the prompt of each pass-2 request -------------------------------------------------

    def _prompt_ids(self, assigned: str | None) -> list[int]:
        spec, gen = self.spec, self.generator
        adapter = spec.steering_adapter
        if assigned is None:
            return gen.chat_ids(spec.prompt)
        if adapter is None:
            return gen.chat_ids(class_instruction(spec.prompt, spec.attribute, spec.task, assigned))
        digit = gen.codec(spec.attribute).digit(assigned)
        if spec.pass2 == "user-turn":
            return gen.chat_ids(f"{spec.prompt} {digit}")
        return [*gen.chat_ids(spec.prompt), gen.codec(spec.attribute).token_id(assigned)]

    def _first_requests(self) -> list[_Request]:
        if all(c is None for c in self.plan):
            n = self.spec.n
            return [
                _Request(
                    self._prompt_ids(None),
                    list(range(n)),
                    [self.base_seed + i for i in range(n)],
                    None,
                    1,
                )
            ]
        requests, offset = [], 0
        for cls in self.spec.attribute.classes:
            indices = [i for i, c in enumerate(self.plan) if c == cls]
            if not indices:
                continue
            # consecutive seed blocks per class: every sample of the run has its own seed
            seeds = [self.base_seed + offset + j for j in range(len(indices))]
            offset += len(indices)
            requests.append(_Request(self._prompt_ids(cls), indices, seeds, cls, 1))
        return requests

    def _retry(self, index: int, assigned: str, attempt: int) -> _Request:
        seed = (self.base_seed + self.spec.n * (attempt - 1) + index) % _SEED_LIMIT
        return _Request(self._prompt_ids(assigned), [index], [seed], assigned, attempt)

    # -- engine requests -------------------------------------------------------------------

    def _start(self, request: _Request) -> None:
        spec = self.spec
        self._requests += 1
        request_id = f"distctl-{self._run_id}-{self._requests}"
        params = _sampling_params(
            n=len(request.indices),
            seed=request.seeds[0],
            temperature=spec.temperature,
            top_p=spec.top_p,
            max_tokens=spec.token_budget,
        )
        self._live.add(request_id)
        task = asyncio.create_task(self._read(request_id, request, params))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self, request_id: str, request: _Request, params: Any) -> None:
        lora = self.spec.adapter.request() if self.spec.adapter is not None else None
        pieces: dict[int, list[str]] = {}
        try:
            async for output in self.generator.engine.generate(
                _tokens_prompt(request.prompt_ids), params, request_id, lora_request=lora
            ):
                for completion in output.outputs:
                    pieces.setdefault(completion.index, []).append(completion.text)
                    if completion.finish_reason is not None:
                        text = "".join(pieces.pop(completion.index))
                        await self._queue.put((request, completion.index, text))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the consumer re-raises it
            await self._queue.put(exc)
        finally:
            self._live.discard(request_id)

    # -- reading a text back ---------------------------------------------------------------

    def _generation(self, request: _Request, child: int, raw: str) -> Generation:
        spec = self.spec
        assigned = request.assigned
        text = raw
        if spec.steering_adapter is not None:
            if spec.pass2 == "user-turn":
                text = _DIGITS_RE.sub("", raw)
            elif assigned is None:
                # plain mode on a steering adapter: the adapter draws its own digit
                assigned, text = self.generator.codec(spec.attribute).split(raw)
        text = text.strip()
        extracted = extract(spec.attribute, text, spec.task)
        consistent = None if assigned is None else extracted == assigned
        return Generation(
            request.indices[child],
            text,
            assigned,
            extracted,
            consistent,
            request.attempt,
            request.seeds[child],
        )

    async def _iterate(self) -> AsyncIterator[Generation]:
        spec = self.spec
        started = time.perf_counter()
        try:
            if spec.mode is Mode.CALIBRATED:
                assert spec.steering_adapter is not None
                self.digit_distribution = await self.generator.digit_distribution(
                    spec.prompt, spec.attribute, spec.steering_adapter
                )
            rng = np.random.default_rng(self.base_seed)
            self.plan = plan_classes(spec.mode, spec.target, spec.n, rng, self.digit_distribution)
            for request in self._first_requests():
                self._start(request)
            remaining = spec.n
            while remaining:
                item = await self._queue.get()
                if isinstance(item, BaseException):
                    raise item
                generation = self._generation(*item)
                self.attempts_total += 1
                if self.on_attempt is not None:
                    self.on_attempt(generation)
                redraw = (
                    spec.mode in (Mode.SAMPLED, Mode.EXACT)
                    and not generation.consistent
                    and generation.attempts <= spec.retries
                )
                if redraw:
                    assert generation.assigned is not None
                    self._start(
                        self._retry(generation.index, generation.assigned, generation.attempts + 1)
                    )
                    continue
                remaining -= 1
                self.tally.add(generation.extracted, generation.assigned)
                if self.time_to_first_s is None:
                    self.time_to_first_s = time.perf_counter() - started
                yield generation
        finally:
            self.duration_s = time.perf_counter() - started
            await self._abort_live()
