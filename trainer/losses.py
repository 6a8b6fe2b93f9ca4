"""The losses, and the one function that scores completions (`score`) that all of them read.

Conventions: log-probabilities are natural logs; a completion's log-probability is the sum over
its tokens, the steering digit included (it is the first token), as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainer.datasets import PackedBatch
from trainer.parallel import global_mean


@dataclass
class Scores:
    """Per group g and completion slot m."""

    logps: torch.Tensor  # [G, M] summed log-probability of the completion
    first_logps: torch.Tensor  # [G, M] log-probability of its first token (the digit)
    tokens: torch.Tensor  # [G, M] completion length (0: empty slot)
    digit_logps: torch.Tensor | None  # [G, K] full-vocabulary log-probs of the K digits at the
    # first response position (None when no digit ids were asked for)

    def reward_logps(self, include_first: bool) -> torch.Tensor:
        """What KTO's reward sums: every token, or every token but the digit."""
        return self.logps if include_first else self.logps - self.first_logps


def _decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The transformer body and the LM head of a causal LM, PEFT-wrapped or not: scoring runs
    the head on the completion positions only, never on the whole sequence."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return lm.get_decoder(), lm.get_output_embeddings()


def score(
    model: torch.nn.Module, batch: PackedBatch, digit_ids: torch.Tensor | None = None
) -> Scores:
    """Log-probabilities of every completion of every group in one forward pass."""
    decoder, head = _decoder_and_head(model)
    hidden = decoder(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    ).last_hidden_state  # [G, T, H]
    g, m, length = batch.source.shape
    picked = torch.gather(
        hidden, 1, batch.source.reshape(g, m * length, 1).expand(-1, -1, hidden.shape[-1])
    )
    logprobs = torch.log_softmax(head(picked).float(), dim=-1)  # [G, M*L, V]
    token = torch.gather(logprobs, 2, batch.labels.reshape(g, m * length, 1)).reshape(g, m, length)
    token = token.masked_fill(~batch.token_mask, 0.0)
    digit_logps = None
    if digit_ids is not None:
        # slot 0, token 0 is predicted from the prompt's last position: the first response
        # position, shared by every completion of the group
        digit_logps = logprobs[:, 0, :].index_select(-1, digit_ids.to(logprobs.device))
    return Scores(token.sum(-1), token[:, :, 0], batch.token_mask.sum(-1), digit_logps)


def sft_loss(scores: Scores) -> torch.Tensor:
    """Next-token loss on the completion tokens (prompt masked), averaged over tokens."""
    return -scores.logps.sum() / scores.tokens.sum().clamp(min=1)


def steering_kl(digit_logps: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Forward KL(target || model) over the K digits, averaged over the batch.

    p_k is the digit's full-vocabulary probability, not renormalised over the K digits: the
    mass on every other token counts as missing, so minimising this also pushes the first
    response token onto the digits (sum_k t_k log(t_k / p_k) >= -log sum_k p_k, with equality
    only when the digits carry all the mass in the target's proportions).
    """
    t = target.to(digit_logps.dtype)
    terms = torch.where(t > 0, t * (torch.log(t.clamp(min=1e-30)) - digit_logps), 0.0)
    return terms.sum(-1).mean()


def digit_stats(digit_logps: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """(digit mass, Jensen-Shannon distance of the renormalised digit distribution to the
    target, base 2), batch means, for the training curves."""
    with torch.no_grad():
        p = digit_logps.float().exp()
        mass = p.sum(-1)
        q = p / mass[:, None]
        t = target.float()
        mid = (q + t) / 2

        def kl2(a: torch.Tensor) -> torch.Tensor:
            return torch.where(a > 0, a * (a.clamp(min=1e-30) / mid.clamp(min=1e-30)).log2(), 0.0)

        js = (0.5 * kl2(q).sum(-1) + 0.5 * kl2(t).sum(-1)).clamp(min=0).sqrt()
    return float(mass.mean()), float(js.mean())


@dataclass
class KtoOutput:
    loss: torch.Tensor
    z0: torch.Tensor  # the reference point (detached)
    desirable_rewards: torch.Tensor
    undesirable_rewards: torch.Tensor


def kto_loss(
    desirable_logps: torch.Tensor,
    desirable_ref: torch.Tensor,
    undesirable_logps: torch.Tensor,
    undesirable_ref: torch.Tensor,
    mismatched_logps: torch.Tensor,
    mismatched_ref: torch.Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> KtoOutput:
    """KTO (Ethayarajh et al. 2024) as TRL computes it.

    reward r = beta * (log pi(y|x) - log pi_ref(y|x)); reference point
    z0 = max(0, mean over the batch's mismatched pairs of beta * (log pi - log pi_ref)), with no
    gradient (pooled over the processes of a data-parallel run); desirable loss
    1 - sigmoid(r - z0), undesirable loss 1 - sigmoid(z0 - r); the loss is the weighted mean
    over all desirable and undesirable examples.
    """
    z0 = global_mean(beta * (mismatched_logps - mismatched_ref)).clamp(min=0)
    r_des = beta * (desirable_logps - desirable_ref)
    r_und = beta * (undesirable_logps - undesirable_ref)
    losses = torch.cat(
        [
            desirable_weight * (1 - torch.sigmoid(r_des - z0)),
            undesirable_weight * (1 - torch.sigmoid(z0 - r_und)),
        ]
    )
    return KtoOutput(losses.mean(), z0, r_des.detach(), r_und.detach())


def dpo_loss(
    chosen_logps: torch.Tensor,
    chosen_ref: torch.Tensor,
    rejected_logps: torch.Tensor,
    rejected_ref: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """DPO's sigmoid loss: -log sigmoid(beta * (chosen log-ratio - rejected log-ratio))."""
    margin = (chosen_logps - chosen_ref) - (rejected_logps - rejected_ref)
    return -F.logsigmoid(beta * margin).mean()
