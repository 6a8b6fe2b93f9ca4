"""Generation core vs the bare engine: generations/s for the same number of samples.

The anchor is one plain vLLM request with n samples of the canonical prompt (the least the
engine can do for n samples); the core runs the same n in `exact` mode on the base model
(two pass-2 requests, one per class, each with its class-conditioned prompt) and reads every
text back. A ratio near 1.0 means steering and extraction cost nothing beyond the engine.

    .venv/bin/python bench/generation_throughput.py [--n 32] [--max-tokens 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


async def bench(n: int, max_tokens: int, repeats: int) -> None:
    from distctl.attributes import get_attribute
    from distctl.config import Settings
    from distctl.engine import build_engine, load_tokenizer
    from distctl.generation import GenerationSpec, Generator, Mode, _sampling_params, _tokens_prompt
    from distctl.occupations import get_occupation
    from distctl.prompts import canonical_prompt
    from distctl.targets import uniform

    settings = Settings(max_model_len=512)
    engine = build_engine(settings)
    generator = Generator(engine, load_tokenizer(settings))
    gender = get_attribute("gender")
    prompt = canonical_prompt("attribute", gender, get_occupation("us", "Registered nurses"))

    async def anchor(seed: int) -> int:
        params = _sampling_params(n=n, seed=seed, max_tokens=max_tokens, temperature=1.0)
        done = 0
        async for out in engine.generate(
            _tokens_prompt(generator.chat_ids(prompt)), params, f"anchor-{seed}"
        ):
            done += sum(c.finish_reason is not None for c in out.outputs)
        return done

    async def core(seed: int) -> int:
        spec = GenerationSpec(
            prompt, gender, uniform(gender), n, Mode.EXACT, seed=seed, max_tokens=max_tokens
        )
        return len([g async for g in generator.run(spec)])

    await anchor(0)  # warm-up: first-request compilation and cache allocation
    figures = {}
    for name, fn in (("engine", anchor), ("core", core)):
        start = time.perf_counter()
        total = sum([await fn(seed) for seed in range(1, repeats + 1)])
        figures[name] = total / (time.perf_counter() - start)
        print(f"{name:>6}: {figures[name]:.2f} generations/s ({total} generations)")
    print(f"ratio core/engine: {figures['core'] / figures['engine']:.2f} (aim: 0.9 or better)")
    engine.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(bench(args.n, args.max_tokens, args.repeats))


if __name__ == "__main__":
    main()
