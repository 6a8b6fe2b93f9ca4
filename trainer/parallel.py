"""Data parallel training under `torchrun` or `accelerate launch` (one process per device).

Every process holds the whole model and scores its share of each batch. A step is meant to be
the same step whatever the number of processes: losses are means over the whole batch (its
completion tokens, or its groups), so each process backpropagates its share of the batch's sum
divided by the batch's denominator, and the gradients are summed across processes. With one
process every function here is the identity.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist


def init() -> None:
    """Join the process group the launcher describes (WORLD_SIZE > 1); no-op otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        # NCCL runs every collective, barriers included, on the process's current device: bind
        # it to this process's GPU first, or every rank would talk through GPU 0
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")


def finish() -> None:
    """Leave the process group (no barrier: after a failure the others may never reach one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """(rank, world size)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of `values` over the processes (a new tensor on `values`' device, no
    gradient)."""
    out = values.detach().clone()
    if world()[1] > 1:
        # NCCL reduces GPU tensors only; the step's totals are built on the CPU
        wire = out.cuda() if dist.get_backend() == "nccl" else out
        dist.all_reduce(wire, op=dist.ReduceOp.SUM)
        out = wire.to(values.device)
    return out


def global_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean of `values` pooled over every process's batch share (no gradient): TRL gathers
    KTO's reference point the same way."""
    flat = values.detach().float().flatten()
    total = all_sum(torch.stack([flat.sum(), torch.tensor(float(flat.numel()))]).to(flat))
    return (total[0] / total[1].clamp(min=1)).to(values.dtype)


def sum_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Sum the gradients over the processes (a parameter without one counts as zeros, so that
    every process reduces the same tensors)."""
    if world()[1] == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the body on rank 0 first, then on the others: rank 0 builds what is cached on disk
    (the story texts) and the others read it."""
    rank, size = world()
    if size > 1 and rank != 0:
        dist.barrier()
    yield
    if size > 1 and rank == 0:
        dist.barrier()
