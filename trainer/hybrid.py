"""Stage 2 of the paper's method: KTO + steering KL on the stage-1 adapter (and the ablations).

The reference is the stage-1 model, frozen. Frozen means its log-probabilities never change, so
they are computed once, before the first stage-2 update, for every completion of every group
(desirable, undesirable and the mismatched pairs), and stored with the run's checkpoint so that
a resumed stage 2 never recomputes them from an already-updated adapter. Stage 2 then costs one
forward and backward per batch, the mismatched pairs riding in the same packed pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from trainer.datasets import Group, PackedBatch, pack
from trainer.losses import kto_loss
from trainer.sft import (
    Checkpoint,
    Runtime,
    StepLoss,
    StepOutput,
    forward,
    steering_metrics,
    train_stage,
)

# completion slots of a stage-2 group (trainer.datasets.kto_groups)
DESIRABLE, UNDESIRABLE, MISMATCHED = 0, 1, slice(2, 4)


@dataclass(frozen=True)
class Reference:
    """The frozen reference's log-probabilities, per group and completion slot."""

    logps: torch.Tensor  # [N, M] every token
    first_logps: torch.Tensor  # [N, M] the first token (the digit, for steering completions)

    def reward_logps(self, include_first: bool) -> torch.Tensor:
        return self.logps if include_first else self.logps - self.first_logps


def reference_logps(rt: Runtime, groups: Sequence[Group]) -> Reference:
    """Score every group with the current weights, without gradients."""
    was_training = rt.model.training
    rt.model.eval()
    logps, firsts = [], []
    with torch.no_grad():
        for start in range(0, len(groups), rt.hp.batch_size):
            batch = pack(groups[start : start + rt.hp.batch_size], rt.pad_id).to(rt.device)
            scores = forward(rt, batch)
            logps.append(scores.logps.float().cpu())
            firsts.append(scores.first_logps.float().cpu())
    rt.model.train(was_training)
    return Reference(torch.cat(logps), torch.cat(firsts))


def frozen_reference(rt: Runtime, name: str, groups: Sequence[Group]) -> Reference:
    """The reference of a stage, computed once (and, with a checkpoint folder, kept there)."""
    if rt.checkpoint_dir is None:
        return reference_logps(rt, groups)
    return Checkpoint(rt.checkpoint_dir).artefact(name, lambda: reference_logps(rt, groups))


def hybrid_step(rt: Runtime, ref: Reference | None, kto: bool, kl: bool) -> StepLoss:
    """ours: KTO + KL; ours-kto: KTO only; ours-kl: KL only (no reference needed)."""
    hp = rt.hp
    ref_rewards = None if ref is None else ref.reward_logps(hp.reward_includes_digit)

    def step(batch: PackedBatch, indices: list[int]) -> StepOutput:
        scores = forward(rt, batch)
        kl_term, metrics = steering_metrics(scores, batch)
        loss = hp.kl_weight * kl_term if kl else torch.zeros((), device=kl_term.device)
        if kto:
            assert ref_rewards is not None
            policy = scores.reward_logps(hp.reward_includes_digit)
            reference = ref_rewards[indices].to(policy.device)
            out = kto_loss(
                policy[:, DESIRABLE],
                reference[:, DESIRABLE],
                policy[:, UNDESIRABLE],
                reference[:, UNDESIRABLE],
                # the reference point carries no gradient
                policy[:, MISMATCHED].detach().flatten(),
                reference[:, MISMATCHED].flatten(),
                beta=hp.beta,
                desirable_weight=hp.desirable_weight,
                undesirable_weight=hp.undesirable_weight,
            )
            loss = loss + hp.kto_weight * out.loss
            metrics |= {"kto": out.loss.item(), "z0": out.z0.item()}
        # both terms are means over the groups (KTO's over their two rows each)
        return StepOutput(loss, float(len(indices)), metrics)

    return step


def run_hybrid(
    rt: Runtime, stage_index: int, groups: Sequence[Group], kto: bool = True, kl: bool = True
) -> None:
    """Stage 2 on the adapter as stage 1 left it. `groups` are `kto_groups` when KTO is on; KL
    alone reads only the first response position, so any groups of the rows do."""
    ref = frozen_reference(rt, f"reference-{stage_index}", groups) if kto else None
    train_stage(
        rt,
        stage_index,
        "stage 2 (hybrid)",
        groups,
        rt.hp.stage2_lr,
        hybrid_step(rt, ref, kto=kto, kl=kl),
    )
