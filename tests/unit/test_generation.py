"""The generation core on a fake engine: plans, pass 1, pass 2 batching, retries, abort."""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from distctl.attributes import get_attribute
from distctl.errors import DistctlError
from distctl.generation import (
    Generation,
    GenerationSpec,
    Generator,
    LoraAdapter,
    Mode,
    plan_classes,
)
from distctl.targets import resolve_target
from tests.fakes import FakeEngine, FakeTokenizer

GENDER = get_attribute("gender")
UNIFORM = resolve_target(GENDER, "uniform")
PROMPT = "A person is randomly selected from the Nurses workforce in the US. What is their gender?"
STEERING = LoraAdapter("steer", 1, Path("/adapters/steer/v1"), 1, True, "gender", "attribute")


def spec(**kw: object) -> GenerationSpec:
    base: dict[str, object] = dict(
        prompt=PROMPT, attribute=GENDER, target=UNIFORM, n=10, mode=Mode.SAMPLED, seed=7
    )
    base.update(kw)
    return GenerationSpec(**base)  # type: ignore[arg-type]


async def collect(generator: Generator, s: GenerationSpec) -> list[Generation]:
    return [g async for g in generator.run(s)]


def test_plan_plain_is_unassigned() -> None:
    assert plan_classes(Mode.PLAIN, UNIFORM, 3, np.random.default_rng(0)) == [None] * 3


def test_plan_exact_follows_quota() -> None:
    plan = plan_classes(Mode.EXACT, {"male": 0.3, "female": 0.7}, 10, np.random.default_rng(0))
    assert Counter(plan) == {"male": 3, "female": 7}


def test_plan_sampled_is_seeded() -> None:
    a = plan_classes(Mode.SAMPLED, UNIFORM, 50, np.random.default_rng(3))
    assert a == plan_classes(Mode.SAMPLED, UNIFORM, 50, np.random.default_rng(3))
    assert set(a) == {"male", "female"}


def test_calibrated_needs_steering_adapter() -> None:
    with pytest.raises(DistctlError) as err:
        spec(mode=Mode.CALIBRATED)
    assert err.value.field == "adapter"


async def test_sampled_without_adapter_uses_instruction_one_request_per_class() -> None:
    engine = FakeEngine()
    out = await collect(Generator(engine, FakeTokenizer()), spec(mode=Mode.EXACT))
    assert sorted(g.index for g in out) == list(range(10))
    assert all(g.consistent for g in out)
    assert len(engine.requests) == 2
    assert sorted(params.n for _, params, _ in engine.requests) == [5, 5]
    assert len({g.seed for g in out}) == 10


async def test_tally_counts_texts_and_same_seed_repeats() -> None:
    generator = Generator(FakeEngine(), FakeTokenizer())
    run = generator.run(spec())
    first = sorted([(g.index, g.text) async for g in run])
    assert run.tally.n == 10 and run.tally.consistency == 1.0
    again = sorted([(g.index, g.text) async for g in generator.run(spec())])
    assert first == again


async def test_calibrated_runs_pass1_once_and_renormalises() -> None:
    tokenizer = FakeTokenizer()
    zero, one = tokenizer.encode("0")[0], tokenizer.encode("1")[0]
    # full-vocabulary probabilities 0.3 and 0.1: renormalised over the two digits, 0.75/0.25
    engine = FakeEngine(digit_logprobs={zero: math.log(0.3), one: math.log(0.1)})
    run = Generator(engine, tokenizer).run(spec(mode=Mode.CALIBRATED, adapter=STEERING, n=8))
    out = [g async for g in run]
    assert run.digit_distribution == pytest.approx({"male": 0.75, "female": 0.25})
    pass1 = [r for r in engine.requests if r[1].logprob_token_ids]
    assert len(pass1) == 1
    assert all(g.text.lower() == g.assigned for g in out)
    assert all(lora.lora_name == "steer@v1" for _, _, lora in engine.requests)


async def test_retries_redraw_until_consistent_and_report_every_attempt() -> None:
    def stubborn(prompt: str, lora: object, rng: random.Random) -> str:
        return "Male" if rng.random() < 0.5 else "Female"

    seen: list[Generation] = []
    generator = Generator(FakeEngine(respond=stubborn), FakeTokenizer())
    run = generator.run(spec(retries=6, n=12), on_attempt=seen.append)
    out = [g async for g in run]
    assert len(out) == 12 and run.attempts_total == len(seen) > 12
    assert sum(g.consistent for g in out) > 6
    assert max(g.attempts for g in out) > 1
    assert run.tally.n == 12


async def test_plain_on_steering_adapter_reports_drawn_digit() -> None:
    def with_digit(prompt: str, lora: object, rng: random.Random) -> str:
        return "1 Female"

    out = await collect(
        Generator(FakeEngine(respond=with_digit), FakeTokenizer()),
        spec(mode=Mode.PLAIN, adapter=STEERING, n=3),
    )
    assert [(g.assigned, g.text, g.extracted) for g in out] == [("female", "Female", "female")] * 3


async def test_user_turn_variant_strips_digits() -> None:
    def noisy(prompt: str, lora: object, rng: random.Random) -> str:
        return "1 Female 2"

    engine = FakeEngine(respond=noisy)
    out = await collect(
        Generator(engine, FakeTokenizer()),
        spec(mode=Mode.EXACT, adapter=STEERING, pass2="user-turn", n=2),
    )
    assert {g.text for g in out} == {"Female"}


async def test_aclose_aborts_engine_requests() -> None:
    engine = FakeEngine(step_delay=0.05, chunks=50)
    run = Generator(engine, FakeTokenizer()).run(spec(mode=Mode.EXACT))
    task = asyncio.create_task(run.__anext__())
    await asyncio.sleep(0.2)
    assert engine.get_num_unfinished_requests() == 2
    task.cancel()
    await run.aclose()
    assert engine.get_num_unfinished_requests() == 0
    assert len(engine.aborted) == 2
