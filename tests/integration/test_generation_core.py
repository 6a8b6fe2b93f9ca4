"""The generation core on the real engine and base model."""

from __future__ import annotations

import asyncio
from collections import Counter
from fractions import Fraction
from typing import Any

import pytest

from distctl.attributes import get_attribute
from distctl.basemodel import prepare_base_model
from distctl.codec import SteeringCodec
from distctl.config import Settings
from distctl.generation import Generation, GenerationSpec, Generator, LoraAdapter, Mode
from distctl.occupations import get_occupation
from distctl.prompts import canonical_prompt
from distctl.quota import prefix_bound
from distctl.targets import resolve_target

GENDER = get_attribute("gender")
NURSES = canonical_prompt("attribute", GENDER, get_occupation("us", "Registered nurses"))


class CountingEngine:
    """Forwards to the real engine and records each request's sampling parameters."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.params: list[Any] = []

    def generate(self, prompt: Any, sampling_params: Any, request_id: str, **kw: Any) -> Any:
        self.params.append(sampling_params)
        return self.engine.generate(prompt, sampling_params, request_id, **kw)

    async def abort(self, request_id: Any) -> None:
        await self.engine.abort(request_id)


def spec(**kw: Any) -> GenerationSpec:
    base: dict[str, Any] = dict(
        prompt=NURSES,
        attribute=GENDER,
        target=resolve_target(GENDER, "uniform"),
        n=6,
        mode=Mode.SAMPLED,
        seed=11,
        max_tokens=5,
    )
    base.update(kw)
    return GenerationSpec(**base)


async def collect(generator: Generator, s: GenerationSpec) -> list[Generation]:
    return [g async for g in generator.run(s)]


def test_steering_digits_are_single_tokens(tokenizer: Any) -> None:
    codec = SteeringCodec(tokenizer, "race")
    assert [tokenizer.decode([t]) for t in codec.token_ids] == ["0", "1", "2", "3", "4"]


def test_prepare_is_idempotent(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    folder = prepare_base_model(Settings())
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert "ready" in capsys.readouterr().out


async def test_exact_mode_meets_the_quota_bound(generator: Generator) -> None:
    target = {"male": 0.7, "female": 0.3}
    run = generator.run(spec(mode=Mode.EXACT, target=target, n=10))
    out = [g async for g in run]
    assert sorted(g.index for g in out) == list(range(10))
    counts: Counter[str] = Counter()
    bound = prefix_bound(2)
    for t, cls in enumerate(run.plan, start=1):
        counts[cls] += 1  # type: ignore[index]
        for c, p in target.items():
            assert abs(counts[c] - t * Fraction(str(p))) <= bound
    assert Counter(g.assigned for g in out) == {"male": 7, "female": 3}
    assert run.tally.n == 10 and run.tally.steered == 10


async def test_pass2_one_request_per_class(engine: Any, tokenizer: Any) -> None:
    counting = CountingEngine(engine)
    out = await collect(Generator(counting, tokenizer), spec(mode=Mode.EXACT, n=6))
    assert len(out) == 6
    assert sorted(p.n for p in counting.params) == [3, 3]


async def test_same_seed_same_generations(generator: Generator) -> None:
    first = sorted((g.index, g.text, g.seed) for g in await collect(generator, spec()))
    again = sorted((g.index, g.text, g.seed) for g in await collect(generator, spec()))
    assert first == again
    other = sorted((g.index, g.text) for g in await collect(generator, spec(seed=12)))
    assert other != [(i, t) for i, t, _ in first]


async def test_plain_mode_assigns_nothing(generator: Generator) -> None:
    run = generator.run(spec(mode=Mode.PLAIN))
    out = [g async for g in run]
    assert all(g.assigned is None and g.consistent is None for g in out)
    assert run.tally.steered == 0 and run.tally.consistency is None


async def test_calibrated_runs_pass1_once(engine: Any, tokenizer: Any, make_adapter: Any) -> None:
    version = make_adapter("core-calibrated")
    adapter = LoraAdapter.from_version(version)
    counting = CountingEngine(engine)
    generator = Generator(counting, tokenizer)
    run = generator.run(spec(mode=Mode.CALIBRATED, adapter=adapter, n=8))
    out = [g async for g in run]
    assert len(out) == 8
    assert [p.max_tokens for p in counting.params if p.logprob_token_ids] == [1]
    dist = run.digit_distribution
    assert dist is not None and set(dist) == {"male", "female"}
    assert sum(dist.values()) == pytest.approx(1.0)
    direct = await generator.digit_distribution(NURSES, GENDER, adapter)
    assert direct == pytest.approx(dist, abs=1e-4)


async def test_closing_early_aborts_every_request(engine: Any, generator: Generator) -> None:
    run = generator.run(spec(mode=Mode.EXACT, n=8, max_tokens=64))
    async for _ in run:
        break
    await run.aclose()
    for _ in range(50):
        if engine.get_num_unfinished_requests() == 0:
            break
        await asyncio.sleep(0.1)
    assert engine.get_num_unfinished_requests() == 0
