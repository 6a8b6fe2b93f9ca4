"""The grouped CPU LoRA ops against vLLM's own PyTorch ops and a per-token reference."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
import torch
from vllm.lora.ops import torch_ops

from distctl import cpu_lora

SLOTS, RANK, HIDDEN, OUT = 3, 8, 24, 40


def _case(tokens: int, indices: list[int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, HIDDEN, generator=g)
    a = torch.randn(SLOTS, 1, RANK, HIDDEN, generator=g)
    b = torch.randn(SLOTS, 1, OUT, RANK, generator=g)
    return x, a, b, torch.tensor(indices, dtype=torch.long)


def _reference(x, w, indices, scale=1.0):
    """Token by token, skipping tokens without an adapter (index -1)."""
    w = w.squeeze(1)
    rows = [
        scale * (w[i] @ x[t]) if i >= 0 else torch.zeros(w.shape[1])
        for t, i in enumerate(indices.tolist())
    ]
    return torch.stack(rows)


@pytest.mark.parametrize("indices", [[1] * 6, [0, 2, 2, 1, 0, 2], [2, -1, 0, -1, 2, 2]])
def test_shrink_then_expand_matches_the_per_token_definition(indices):
    x, a, b, idx = _case(len(indices), indices)
    buffer = torch.full((len(indices), RANK), 7.0)  # shrink overwrites whatever was there
    cpu_lora.bgmv_shrink(x, a, buffer, idx, 0.5)
    torch.testing.assert_close(buffer, _reference(x, a, idx, 0.5))
    y = torch.ones(len(indices), OUT)
    cpu_lora.bgmv_expand(buffer, b, y, idx, add_inputs=True)
    torch.testing.assert_close(y, 1 + _reference(buffer, b, idx))


def test_equals_vllm_torch_ops_when_every_token_has_an_adapter():
    indices = [0, 2, 2, 1, 0, 2, 1]
    x, a, b, idx = _case(len(indices), indices, seed=1)
    ours, theirs = torch.zeros(len(indices), RANK), torch.zeros(len(indices), RANK)
    cpu_lora.bgmv_shrink(x, a, ours, idx, 2.0)
    torch_ops.bgmv_shrink(x, a, theirs, idx, 2.0)
    torch.testing.assert_close(ours, theirs)
    ours_y, theirs_y = torch.ones(len(indices), OUT + 8), torch.ones(len(indices), OUT + 8)
    cpu_lora.bgmv_expand_slice(ours, b, ours_y, idx, 4, OUT, add_inputs=True)
    torch_ops.bgmv_expand_slice(theirs, b, theirs_y, idx, 4, OUT, add_inputs=True)
    torch.testing.assert_close(ours_y, theirs_y)


def test_sequence_ops_expand_one_index_per_sequence_to_its_tokens():
    seq_lens = torch.tensor([2, 3, 1])
    seq_loras = torch.tensor([1, -1, 0])
    x, a, b, _ = _case(6, [0] * 6, seed=2)
    token_idx = torch.tensor([1, 1, -1, -1, -1, 0])
    start = torch.tensor([0, 2, 5])
    buffer = torch.zeros(6, RANK)
    cpu_lora.sgmv_shrink(x, a, buffer, start, seq_lens, seq_loras, 3, 3, 6, 1.0)
    torch.testing.assert_close(buffer, _reference(x, a, token_idx))
    y = torch.zeros(6, OUT)
    cpu_lora.sgmv_expand(buffer, b, y, start, seq_lens, seq_loras, 3, 3, 6, add_inputs=False)
    torch.testing.assert_close(y, _reference(buffer, b, token_idx))
    sliced = torch.zeros(6, OUT + 4)
    cpu_lora.sgmv_expand_slice(
        buffer, b, sliced, start, seq_lens, seq_loras, 3, 3, 6, 4, OUT, add_inputs=True
    )
    torch.testing.assert_close(sliced[:, 4:], y)
    assert not sliced[:, :4].any()


def test_expand_keeps_to_the_columns_weights_and_output_share():
    _, _, b, idx = _case(3, [0, 0, 0])
    buffer = torch.randn(3, RANK)
    y = torch.zeros(3, OUT - 5)  # the model pads less than the adapter here
    cpu_lora.bgmv_expand(buffer, b, y, idx, add_inputs=False)
    torch.testing.assert_close(y, _reference(buffer, b, idx)[:, : OUT - 5])


def test_registered_as_a_vllm_general_plugin_and_installs_on_cpu():
    plugins = entry_points(group="vllm.general_plugins")
    (plugin,) = [e for e in plugins if e.name.startswith("distctl")]
    assert plugin.value == "distctl.cpu_lora:install"
    from vllm.lora.punica_wrapper import punica_cpu

    plugin.load()()
    assert punica_cpu.bgmv_shrink is cpu_lora.bgmv_shrink
    assert punica_cpu.sgmv_expand_slice is cpu_lora.sgmv_expand_slice
