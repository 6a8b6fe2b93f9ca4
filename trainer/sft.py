"""The training loop every stage shares, and stage 1 / IFT (supervised fine-tuning).

One loop for all stages (SFT, stage 2, DPO): AdamW on the LoRA parameters, linear warm-up of
min(150 steps, 10% of the stage) then a constant learning rate, gradient clipping, a tqdm bar
showing the loss and the steering KL, curves appended per step, and a checkpoint every
`checkpoint_every` steps so that an interrupted run resumes where it stopped.

Devices: CUDA when a GPU is there, CPU otherwise; the forward passes run under bf16 autocast
when `precision` says so ("auto": on a GPU with bf16). Under `torchrun` or
`accelerate launch` each process scores its share of every batch's groups and the gradients are
summed across processes so that the step is the one a single process would take
(`trainer.parallel`; data parallel without wrapping the model, since `score` calls the decoder
directly).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from trainer import parallel
from trainer.datasets import Group, PackedBatch, batches, pack
from trainer.hparams import HParams
from trainer.losses import Scores, digit_stats, score, sft_loss, steering_kl


@dataclass
class StepOutput:
    """One process's loss on its share of a batch."""

    loss: torch.Tensor  # a mean over the share
    weight: float  # that mean's denominator: completion tokens (SFT) or groups
    metrics: dict[str, float]  # means over the share's groups


# (packed batch, indices of its groups in the stage's group list) -> its loss
StepLoss = Callable[[PackedBatch, list[int]], StepOutput]


@dataclass
class Runtime:
    """Where and how a run computes; shared by its stages."""

    model: torch.nn.Module
    hp: HParams
    pad_id: int
    digit_ids: torch.Tensor | None  # None for plain (no-digit) methods
    checkpoint_dir: Path | None = None
    progress: bool = True
    curves: dict[str, list[float]] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def is_main(self) -> bool:
        return parallel.world()[0] == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        if compute_dtype(self.hp.precision, self.device) == torch.bfloat16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of the forward passes for a `precision` setting on `device`."""
    if precision == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def steering_metrics(scores: Scores, batch: PackedBatch) -> tuple[torch.Tensor, dict[str, float]]:
    """The steering KL (a loss term of stage 2) and the curves' digit mass and JS distance."""
    assert scores.digit_logps is not None
    kl = steering_kl(scores.digit_logps, batch.target)
    mass, js = digit_stats(scores.digit_logps, batch.target)
    return kl, {"steering_kl": kl.item(), "digit_mass": mass, "js_distance": js}


def stage_steps(n_groups: int, hp: HParams) -> int:
    per_epoch = -(-n_groups // hp.batch_size)
    total = per_epoch * hp.epochs
    return min(total, hp.max_steps) if hp.max_steps else total


class Checkpoint:
    """`<dir>/checkpoint.pt`: the adapter weights, optimizer, scheduler, stage, step and curves,
    replaced atomically; `<dir>/<name>.pt` holds per-stage artefacts (reference log-probs)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "checkpoint.pt"

    def load(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=False)

    def save(self, state: dict[str, Any]) -> None:
        self._write(self.path, state)

    def _write(self, path: Path, value: Any) -> None:
        """Write through a temporary file: an interrupted write never leaves a partial file."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(value, tmp)
        tmp.replace(path)

    def artefact(self, name: str, make: Callable[[], Any]) -> Any:
        """Load a stage artefact, or make and store it (once: a resumed stage reuses it)."""
        path = self.folder / f"{name}.pt"
        if path.is_file():
            return torch.load(path, map_location="cpu", weights_only=False)
        value = make()
        if parallel.world()[0] == 0:  # every process made the same value; one writes it
            self._write(path, value)
        return value


def _adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}


def _load_adapter_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, state)


def resume_point(rt: Runtime, stage_index: int) -> dict[str, Any] | None:
    """The checkpoint state when it belongs to this stage or a later one, after restoring the
    adapter and curves from it; None when the stage starts fresh."""
    if rt.checkpoint_dir is None:
        return None
    state = Checkpoint(rt.checkpoint_dir).load()
    if state is None or state["stage_index"] < stage_index:
        return None
    _load_adapter_state(rt.model, state["adapter"])
    rt.curves = state["curves"]
    return state


def train_stage(
    rt: Runtime,
    stage_index: int,
    name: str,
    groups: Sequence[Group],
    lr: float,
    step_loss: StepLoss,
) -> None:
    """Run one stage to its end (or resume it), leaving the model with the stage's weights."""
    hp = rt.hp
    steps = stage_steps(len(groups), hp)
    plan = batches(len(groups), hp.batch_size, hp.epochs, hp.seed + stage_index)[:steps]
    params = [p for p in rt.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=hp.weight_decay)
    warmup = hp.warmup(steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)) if warmup else 1.0
    )
    start = 0
    state = resume_point(rt, stage_index)
    if state is not None:
        if state["stage_index"] > stage_index or state["step"] >= steps:
            return  # this stage finished before the interruption
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["step"]
    rank, size = parallel.world()
    rt.model.train()
    bar = tqdm(
        total=steps,
        initial=start,
        desc=name,
        disable=not (rt.progress and rt.is_main),
        dynamic_ncols=True,
    )
    for step in range(start, steps):
        mine = plan[step][rank::size]
        # a process left without a share (a short last batch) still runs a forward pass, at
        # weight 0, so that every process reduces the same tensors
        indices = mine or plan[step][:1]
        out = step_loss(pack([groups[i] for i in indices], rt.pad_id).to(rt.device), indices)
        weight, share = (out.weight, float(len(mine))) if mine else (0.0, 0.0)
        keys = sorted(out.metrics)
        totals = parallel.all_sum(
            torch.tensor(
                [out.loss.item() * weight, weight, share] + [out.metrics[k] * share for k in keys],
                dtype=torch.float64,
            )
        ).tolist()
        optimizer.zero_grad(set_to_none=True)
        (out.loss * (weight / totals[1])).backward()
        parallel.sum_gradients(params)
        torch.nn.utils.clip_grad_norm_(params, hp.grad_clip)
        optimizer.step()
        scheduler.step()
        value = totals[0] / totals[1]
        metrics = {k: v / totals[2] for k, v in zip(keys, totals[3:], strict=True)}
        _log(rt, stage_index, value, metrics)
        bar.update(1)
        bar.set_postfix(
            {"loss": f"{value:.4f}"}
            | ({"kl": f"{metrics['steering_kl']:.4f}"} if "steering_kl" in metrics else {})
        )
        done = step + 1
        if (
            rt.checkpoint_dir is not None
            and rt.is_main
            and (done % hp.checkpoint_every == 0 or done == steps)
        ):
            Checkpoint(rt.checkpoint_dir).save(
                {
                    "stage_index": stage_index,
                    "step": done,
                    "adapter": _adapter_state(rt.model),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "curves": rt.curves,
                }
            )
    bar.close()


def _log(rt: Runtime, stage_index: int, loss: float, metrics: dict[str, float]) -> None:
    rt.curves.setdefault("stage", []).append(float(stage_index + 1))
    rt.curves.setdefault("loss", []).append(loss)
    # methods without a steering digit (IFT, DPO) have no steering curves at all
    for key in ("steering_kl", "digit_mass", "js_distance"):
        if key in metrics:
            rt.curves.setdefault(key, []).append(metrics[key])


def forward(rt: Runtime, batch: PackedBatch) -> Scores:
    with rt.autocast():
        return score(rt.model, batch, rt.digit_ids)


def sft_step(rt: Runtime) -> StepLoss:
    """Stage 1 and IFT: next-token loss on the completion (digit + text, or plain text)."""

    def step(batch: PackedBatch, indices: list[int]) -> StepOutput:
        scores = forward(rt, batch)
        metrics = steering_metrics(scores, batch)[1] if rt.digit_ids is not None else {}
        return StepOutput(sft_loss(scores), float(scores.tokens.sum()), metrics)

    return step


def run_sft(rt: Runtime, stage_index: int, groups: Sequence[Group]) -> None:
    train_stage(
        rt,
        stage_index,
        "stage 1 (SFT)" if rt.digit_ids is not None else "IFT",
        groups,
        rt.hp.lr,
        sft_step(rt),
    )
