"""Grouped LoRA matmuls for vLLM's CPU punica wrapper, installed as a vLLM general plugin.

vLLM's PyTorch-native LoRA ops (used on CPU) gather a copy of the adapter's weight matrix for
every token (`weights[indices]`) and multiply token by token. On 2 cores that made a batch of
4096 tokens 12-36x slower per layer than dense matmuls (80x at 1400 tokens), and evaluations
with an adapter stalled (minutes per engine step). Every token of one adapter shares the same
weights, so these ops run one dense matmul per distinct adapter in the batch instead. Tokens
with index -1 (no adapter) get no LoRA term, which is what the GPU kernels do; the PyTorch ops
read the last adapter slot for them.

The plugin is registered under `vllm.general_plugins` in pyproject.toml, so vLLM loads it in
every process it starts (engine core and workers). `VLLM_PLUGINS` set to a list without
`distctl_cpu_lora` turns it off (bench/lora_throughput.py compares both).
"""

from __future__ import annotations

import torch

_PATCHED = (
    "bgmv_expand",
    "bgmv_expand_slice",
    "bgmv_shrink",
    "sgmv_expand",
    "sgmv_expand_slice",
    "sgmv_shrink",
)


def lora_matmul(
    inputs: torch.Tensor,
    weights: torch.Tensor,
    output: torch.Tensor,
    indices: torch.Tensor,
    *,
    offset: int = 0,
    width: int | None = None,
    scale: float = 1.0,
    add: bool,
) -> None:
    """`output[t, offset:offset+width] (+)= scale * inputs[t] @ weights[indices[t]].T`.

    `weights` is (slots, out, in) or (slots, 1, out, in); `width` defaults to the columns the
    weights and the output have in common (LoRA and model may pad differently).
    """
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    if width is None:
        width = min(weights.shape[1], output.shape[1] - offset)
    tokens = indices.shape[0]
    target = output[:tokens, offset : offset + width]
    inputs = inputs.to(output.dtype)
    if not add:
        target.zero_()
    loras = torch.unique(indices).tolist()
    for lora in loras:
        if lora < 0:
            continue
        w = weights[lora, :width].to(output.dtype)
        if len(loras) == 1:
            target.add_(inputs @ w.T, alpha=scale)
        else:
            rows = (indices == lora).nonzero().squeeze(1)
            target.index_add_(0, rows, inputs.index_select(0, rows) @ w.T, alpha=scale)


def _token_indices(lora_indices: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
    return torch.repeat_interleave(lora_indices, seq_lens)


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    lora_matmul(
        inputs, lora_a_weights, output_tensor, lora_indices_tensor, scale=scaling, add=False
    )


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    lora_matmul(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add=add_inputs)


def bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    lora_matmul(
        inputs,
        lora_b_weights,
        output_tensor,
        lora_indices_tensor,
        offset=slice_offset,
        width=slice_size,
        add=add_inputs,
    )


def sgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    scaling: float,
) -> None:
    indices = _token_indices(lora_indices_tensor, seq_len_tensor)
    bgmv_shrink(inputs, lora_a_weights, output_tensor, indices, scaling)


def sgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    add_inputs: bool = False,
) -> None:
    indices = _token_indices(lora_indices_tensor, seq_len_tensor)
    bgmv_expand(inputs, lora_b_weights, output_tensor, indices, add_inputs)


def sgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = False,
) -> None:
    indices = _token_indices(lora_indices_tensor, seq_len_tensor)
    bgmv_expand_slice(
        inputs, lora_b_weights, output_tensor, indices, slice_offset, slice_size, add_inputs
    )


def install() -> None:
    """The plugin entry point: swap the ops the CPU punica wrapper calls (CPU only; loading it
    twice is harmless, as vLLM requires of general plugins)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.lora.punica_wrapper import punica_cpu

    for name in _PATCHED:
        setattr(punica_cpu, name, globals()[name])
