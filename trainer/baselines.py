"""The paper's fine-tuning baselines: IFT (`trainer.sft.run_sft` on plain answers) and DPO.

DPO starts from the IFT adapter, which is also its reference (frozen, so its log-probabilities
are precomputed once, as stage 2's are). TRL's DPOTrainer would take the reference as a second
PEFT adapter or the adapter-free base model and score it on every step; the loss is small
enough to write once here (`trainer.losses.dpo_loss`, tested against a hand-computed value).
"""

from __future__ import annotations

from collections.abc import Sequence

from trainer.datasets import Group, PackedBatch
from trainer.hybrid import Reference, frozen_reference
from trainer.losses import dpo_loss
from trainer.sft import Runtime, StepLoss, StepOutput, forward, train_stage

CHOSEN, REJECTED = 0, 1


def dpo_step(rt: Runtime, ref: Reference) -> StepLoss:
    def step(batch: PackedBatch, indices: list[int]) -> StepOutput:
        logps = forward(rt, batch).logps
        reference = ref.logps[indices].to(logps.device)
        loss = dpo_loss(
            logps[:, CHOSEN],
            reference[:, CHOSEN],
            logps[:, REJECTED],
            reference[:, REJECTED],
            beta=rt.hp.beta,
        )
        return StepOutput(loss, float(len(indices)), {})

    return step


def run_dpo(rt: Runtime, stage_index: int, groups: Sequence[Group]) -> None:
    """DPO on `dpo_groups`, from the adapter as IFT left it."""
    ref = frozen_reference(rt, f"reference-{stage_index}", groups)
    train_stage(rt, stage_index, "DPO", groups, rt.hp.stage2_lr, dpo_step(rt, ref))
