"""Each loss on tiny tensors against values computed by hand."""

import math

import pytest
import torch

from trainer.losses import Scores, digit_stats, dpo_loss, kto_loss, sft_loss, steering_kl


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_steering_kl_uses_full_vocabulary_probabilities():
    # digit probabilities 0.5 and 0.25: 0.25 of the mass is elsewhere in the vocabulary
    logps = torch.log(torch.tensor([[0.5, 0.25]]))
    target = torch.tensor([[0.5, 0.5]])
    expected = 0.5 * math.log(0.5 / 0.5) + 0.5 * math.log(0.5 / 0.25)
    assert steering_kl(logps, target).item() == pytest.approx(expected, rel=1e-6)


def test_steering_kl_is_zero_only_when_the_digits_carry_the_target():
    target = torch.tensor([[0.9, 0.1]])
    assert steering_kl(torch.log(target), target).item() == pytest.approx(0.0, abs=1e-7)
    # the right proportions but half the mass elsewhere: KL = -log 0.5
    half = torch.log(target * 0.5)
    assert steering_kl(half, target).item() == pytest.approx(math.log(2), rel=1e-6)


def test_steering_kl_skips_zero_target_classes_and_averages_the_batch():
    logps = torch.log(torch.tensor([[0.2, 0.8], [0.5, 0.5]]))
    target = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    expected = (math.log(1 / 0.2) + 0.0) / 2
    assert steering_kl(logps, target).item() == pytest.approx(expected, rel=1e-6)


def test_kto_with_batch_reference_point():
    beta = 0.1
    des, des_ref = torch.tensor([-2.0, -1.0]), torch.tensor([-3.0, -1.5])
    und, und_ref = torch.tensor([-4.0]), torch.tensor([-3.0])
    mis, mis_ref = torch.tensor([-10.0, -8.0]), torch.tensor([-12.0, -9.0])
    z0 = beta * ((2.0 + 1.0) / 2)  # mean log-ratio 1.5 on the mismatched pairs
    expected = (
        (1 - sigmoid(beta * 1.0 - z0))
        + (1 - sigmoid(beta * 0.5 - z0))
        + (1 - sigmoid(z0 - beta * -1.0))
    ) / 3
    out = kto_loss(des, des_ref, und, und_ref, mis, mis_ref, beta=beta)
    assert out.z0.item() == pytest.approx(z0, rel=1e-6)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)


def test_kto_reference_point_is_clamped_at_zero_and_weights_apply():
    beta = 0.1
    des, ref = torch.tensor([-1.0]), torch.tensor([-2.0])
    und, und_ref = torch.tensor([-2.0]), torch.tensor([-1.0])
    mis, mis_ref = torch.tensor([-5.0]), torch.tensor([-1.0])  # negative mean: z0 = 0
    out = kto_loss(
        des,
        ref,
        und,
        und_ref,
        mis,
        mis_ref,
        beta=beta,
        desirable_weight=2.0,
        undesirable_weight=0.5,
    )
    assert out.z0.item() == 0.0
    expected = (2.0 * (1 - sigmoid(0.1)) + 0.5 * (1 - sigmoid(0.1))) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)


def test_kto_reference_point_has_no_gradient():
    mis = torch.tensor([1.0, 2.0], requires_grad=True)
    des = torch.tensor([-1.0], requires_grad=True)
    out = kto_loss(
        des,
        torch.tensor([-2.0]),
        torch.tensor([-2.0]),
        torch.tensor([-1.0]),
        mis,
        torch.tensor([0.0, 0.0]),
    )
    out.loss.backward()
    assert mis.grad is None or torch.all(mis.grad == 0)
    assert des.grad is not None and des.grad.item() < 0  # raising log pi lowers the loss


def test_dpo_sigmoid_loss():
    beta = 0.1
    loss = dpo_loss(
        torch.tensor([-1.0]),
        torch.tensor([-2.0]),
        torch.tensor([-3.0]),
        torch.tensor([-2.5]),
        beta=beta,
    )
    margin = (-1.0 + 2.0) - (-3.0 + 2.5)  # 1.5
    assert loss.item() == pytest.approx(-math.log(sigmoid(beta * margin)), rel=1e-6)


def test_sft_loss_is_the_mean_over_completion_tokens():
    scores = Scores(
        logps=torch.tensor([[-2.0], [-4.0]]),
        first_logps=torch.tensor([[-1.0], [-1.0]]),
        tokens=torch.tensor([[2], [3]]),
        digit_logps=None,
    )
    assert sft_loss(scores).item() == pytest.approx(6.0 / 5)
    assert scores.reward_logps(include_first=False).tolist() == [[-1.0], [-3.0]]


def test_digit_stats_mass_and_js_distance():
    logps = torch.log(torch.tensor([[0.4, 0.4]]))
    mass, js = digit_stats(logps, torch.tensor([[0.5, 0.5]]))
    assert mass == pytest.approx(0.8, rel=1e-6)
    assert js == pytest.approx(0.0, abs=1e-6)
    mass, js = digit_stats(torch.log(torch.tensor([[1.0, 1e-12]])), torch.tensor([[0.0, 1.0]]))
    assert js == pytest.approx(1.0, abs=1e-4)  # disjoint supports: the base-2 maximum
