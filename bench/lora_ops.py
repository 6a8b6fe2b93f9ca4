"""vLLM's PyTorch-native LoRA ops (what its CPU backend runs) against distctl's grouped ones.

One decoder layer's worth of LoRA work for SmolLM2-135M (hidden 576, q 576, k/v 192, MLP 1536)
at the engine's padded rank, for batches of T tokens that all use one adapter (an evaluation) or
spread over several (the service with adapters in flight). Prints milliseconds per layer and
the ratio vllm / grouped (how many times faster the grouped ops are).

    .venv/bin/python bench/lora_ops.py --tokens 16,256,1400,4096 --rank 32 --repeats 3
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from vllm.lora.ops import torch_ops

from distctl import cpu_lora

HIDDEN, INTERMEDIATE = 576, 1536
# (input width, output slices) of each LoRA-wrapped linear layer of one decoder layer
LAYERS = (
    (HIDDEN, (HIDDEN, 192, 192)),  # qkv_proj
    (HIDDEN, (HIDDEN,)),  # o_proj
    (HIDDEN, (INTERMEDIATE, INTERMEDIATE)),  # gate_up_proj
    (INTERMEDIATE, (HIDDEN,)),  # down_proj
)


def one_layer(ops, tokens: int, rank: int, slots: int, loras: int) -> Callable[[], None]:
    g = torch.Generator().manual_seed(0)
    indices = torch.arange(tokens) % loras
    work = []
    for width, slices in LAYERS:
        x = torch.randn(tokens, width, generator=g)
        a = [torch.randn(slots, 1, rank, width, generator=g) for _ in slices]
        b = [torch.randn(slots, 1, s, rank, generator=g) for s in slices]
        y = torch.zeros(tokens, sum(slices))
        work.append((x, a, b, y, slices))

    def run() -> None:
        for x, a, b, y, slices in work:
            offset = 0
            for a_i, b_i, size in zip(a, b, slices, strict=True):
                buffer = torch.zeros(tokens, rank)
                ops.bgmv_shrink(x, a_i, buffer, indices, 1.0)
                ops.bgmv_expand_slice(buffer, b_i, y, indices, offset, size, True)
                offset += size

    return run


def timed(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", default="16,256,1400,4096")
    p.add_argument("--rank", type=int, default=32, help="the engine's max_lora_rank")
    p.add_argument("--slots", type=int, default=4, help="the engine's max_loras")
    p.add_argument("--loras", default="1,4", help="distinct adapters in the batch")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print(f"threads {torch.get_num_threads()}, rank {args.rank}, slots {args.slots}")
    print(f"{'tokens':>7} {'loras':>5} {'vllm ms':>9} {'grouped ms':>11} {'ratio':>7}")
    for loras in (int(n) for n in args.loras.split(",")):
        for tokens in (int(t) for t in args.tokens.split(",")):
            theirs = timed(one_layer(torch_ops, tokens, args.rank, args.slots, loras), args.repeats)
            ours = timed(one_layer(cpu_lora, tokens, args.rank, args.slots, loras), args.repeats)
            print(
                f"{tokens:>7} {loras:>5} {theirs * 1e3:>9.1f} {ours * 1e3:>11.2f} "
                f"{theirs / ours:>7.1f}"
            )


if __name__ == "__main__":
    main()
