"""vLLM's CPU LoRA path with distctl's grouped ops, checked against PEFT on the same adapter.

The ops replace vLLM's own inside its engine process (a general plugin), so the check is the
one that matters: an adapter served by the engine gives the same next-token distribution as
the PEFT model it was saved from, alone and batched beside another adapter and the base model.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from distctl.attributes import get_attribute
from distctl.generation import GenerationSpec, Generator, LoraAdapter, Mode
from distctl.occupations import get_occupation
from distctl.prompts import canonical_prompt
from distctl.targets import resolve_target

GENDER = get_attribute("gender")
PROMPT = canonical_prompt("attribute", GENDER, get_occupation("us", "Software developers"))


def _peft_digit_distribution(settings: Any, adapter_path: Any, ids: list[int], digits: list[int]):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(settings.model_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_path).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].float()
    probs = torch.softmax(logits, -1)[digits]
    return dict(zip(GENDER.classes, (probs / probs.sum()).tolist(), strict=True))


async def test_served_adapter_matches_peft(
    settings: Any, generator: Generator, make_adapter: Any
) -> None:
    one = make_adapter("kernels-a", seed=11, scale=4.0)
    two = make_adapter("kernels-b", seed=12, scale=4.0)
    ids = generator.chat_ids(PROMPT)
    digits = list(generator.codec(GENDER).token_ids)
    expected = _peft_digit_distribution(settings, one.path, ids, digits)
    other = _peft_digit_distribution(settings, two.path, ids, digits)
    assert abs(expected["male"] - other["male"]) > 0.01  # the two adapters are distinguishable

    a, b = LoraAdapter.from_version(one), LoraAdapter.from_version(two)
    alone = await generator.digit_distribution(PROMPT, GENDER, a)
    assert alone == pytest.approx(expected, abs=2e-3)
    # one engine batch holding both adapters and the base model: each token must get its own
    # adapter's weights, and base-model tokens none
    base = generator.run(
        GenerationSpec(PROMPT, GENDER, resolve_target(GENDER, "uniform"), n=4, mode=Mode.PLAIN)
    )

    async def drain() -> int:
        return len([g async for g in base])

    *mixed, base_count = await asyncio.gather(
        *(generator.digit_distribution(PROMPT, GENDER, x) for x in (a, b, a, b)), drain()
    )
    assert base_count == 4
    for got, want in zip(mixed, (expected, other, expected, other), strict=True):
        assert got == pytest.approx(want, abs=2e-3)


def test_engine_uses_both_cores_by_default(engine: Any) -> None:
    assert os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
