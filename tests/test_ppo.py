"""minimind_hf.ppo against hand-computed examples (the arithmetic is in the comments)."""

import math

import pytest
import torch

from minimind_hf.ppo import explained_variance, gae, k3_kl, last_token_rewards, policy_loss, value_loss, whiten


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_gae_with_a_padded_row_and_a_full_row():
    rewards = t([0, 0, 1, 0], [0, 0, 0, 2])
    # the padded position's value (9) must not leak into the last counted token's delta
    values = t([0.5, 0.6, 0.7, 9.0], [0.0, 0.0, 1.0, 1.0])
    mask = t([1, 1, 1, 0], [1, 1, 1, 1])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 0: d2 = 1 + 0 - 0.7 = 0.3 -> A2 = 0.3; d1 = 0.7 - 0.6 = 0.1 -> A1 = 0.1 + 0.5 * 0.3 = 0.25;
    #        d0 = 0.6 - 0.5 = 0.1 -> A0 = 0.1 + 0.5 * 0.25 = 0.225; padding: 0
    # row 1: d3 = 2 - 1 = 1 -> A3 = 1; d2 = 1 - 1 = 0 -> A2 = 0.5; d1 = 1 - 0 = 1 -> A1 = 1 + 0.25 = 1.25;
    #        d0 = 0 -> A0 = 0.625
    torch.testing.assert_close(advantages, t([0.225, 0.25, 0.3, 0], [0.625, 1.25, 0.5, 1.0]))
    torch.testing.assert_close(returns, t([0.725, 0.85, 1.0, 0], [0.625, 1.25, 1.5, 2.0]))


def test_gae_with_lambda_one_is_the_discounted_return_minus_the_value():
    rewards, values, mask = t([0, 0, 1]), t([0.5, 0.6, 0.7]), t([1, 1, 1])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=1.0)
    # A_t = 0.9^(2 - t) * 1 - V_t: 0.81 - 0.5, 0.9 - 0.6, 1 - 0.7; returns 0.81, 0.9, 1
    torch.testing.assert_close(advantages, t([0.31, 0.3, 0.3]))
    torch.testing.assert_close(returns, t([0.81, 0.9, 1.0]))


def test_gae_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="gae: rewards"):
        gae(t([0, 1]), t([0, 1, 2]), t([1, 1]))


def test_last_token_rewards_put_each_score_on_the_last_counted_token():
    mask = t([1, 1, 0], [1, 1, 1], [0, 0, 0])
    rewards = last_token_rewards(torch.tensor([3.0, 5.0, 7.0], dtype=torch.float64), mask)
    torch.testing.assert_close(rewards, t([0, 3, 0], [0, 0, 5], [0, 0, 0]))
    with pytest.raises(ValueError, match="2 scores for 3 completions"):
        last_token_rewards(torch.tensor([1.0, 2.0]), mask)


def test_whiten_over_counted_tokens_only():
    # mean 2, population variance (1 + 0 + 1) / 3 = 2/3: (x - 2) / sqrt(2/3) = -1.2247, 0, 1.2247; padding 0
    out = whiten(t([1, 2, 3, 100]), t([1, 1, 1, 0]))
    s = math.sqrt(1.5)
    torch.testing.assert_close(out, t([-s, 0, s, 0]))


def test_policy_loss_clips_and_adds_k3_kl():
    old = t([0.0, 0.0, 0.0, 0.0])
    logp = t([0.0, math.log(1.5), math.log(0.5), 5.0])  # ratios 1, 1.5, 0.5; the last token is masked out
    advantages = t([1.0, 1.0, -1.0, 100.0])
    mask = t([1, 1, 1, 0])
    loss, stats = policy_loss(logp, old, advantages, mask, clip=0.2)
    # r = 1, A = 1: max(-1, -1) = -1 (not clipped); r = 1.5, A = 1: max(-1.5, -1.2) = -1.2 (clipped);
    # r = 0.5, A = -1: max(0.5, 0.8) = 0.8 (clipped); mean (-1 - 1.2 + 0.8) / 3 = -0.466667
    assert float(loss) == pytest.approx(-1.4 / 3)
    assert stats["clip_fraction"] == pytest.approx(2 / 3)
    # 0.5 * (0 + ln(1.5)^2 + ln(0.5)^2) / 3 = 0.5 * (0.164402 + 0.480453) / 3
    assert stats["approx_kl"] == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 3)
    # reference: ref - logp = 0, 0, ln 2 -> k3 = 0, 0, 2 - ln 2 - 1 = 0.306853; loss + 0.1 * 0.306853 / 3
    ref = logp + t([0.0, 0.0, math.log(2.0), 7.0])
    loss_kl, stats_kl = policy_loss(logp, old, advantages, mask, clip=0.2, ref_logp=ref, kl_coef=0.1)
    k3 = 1 - math.log(2.0)
    assert float(loss_kl) == pytest.approx(-1.4 / 3 + 0.1 * k3 / 3)
    assert stats_kl["kl"] == pytest.approx(k3 / 3)


def test_policy_loss_gradient_flows_through_the_new_log_probs_only():
    logp = torch.tensor([0.1, -0.1], requires_grad=True)
    old = torch.tensor([0.0, 0.0], requires_grad=True)
    loss, _ = policy_loss(logp, old.detach(), torch.tensor([1.0, -1.0]), torch.ones(2), clip=0.2)
    loss.backward()
    # both ratios inside [0.8, 1.2]: d/dlogp of mean(-A exp(logp)) = -A exp(logp) / 2
    torch.testing.assert_close(logp.grad, torch.tensor([-math.exp(0.1) / 2, math.exp(-0.1) / 2]))


def test_k3_is_zero_at_equality_and_positive_otherwise():
    kl = k3_kl(t([0.0, 0.0, 0.0]), t([0.0, 1.0, -1.0]))
    # e^1 - 1 - 1 = 0.718282; e^-1 + 1 - 1 = 0.367879
    torch.testing.assert_close(kl, t([0.0, math.e - 2, math.exp(-1.0)]))


def test_value_loss_takes_the_larger_of_the_clipped_and_unclipped_errors():
    values, old, returns, mask = t([1.0, 0.0, 4.0]), t([0.5, 0.5, 0.0]), t([2.0, 0.0, 0.0]), t([1, 1, 0])
    loss, stats = value_loss(values, old, returns, mask, clip=0.2)
    # token 0: clipped V = 0.5 + 0.2 = 0.7, errors (1 - 2)^2 = 1 and (0.7 - 2)^2 = 1.69 -> 1.69
    # token 1: clipped V = 0.5 - 0.2 = 0.3, errors 0 and 0.09 -> 0.09; loss 0.5 * (1.69 + 0.09) / 2 = 0.445
    assert float(loss) == pytest.approx(0.445)
    assert stats["value_clip_fraction"] == pytest.approx(1.0)


def test_explained_variance():
    returns, mask = t([1.0, 2.0, 3.0, 50.0]), t([1, 1, 1, 0])
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(t([2.0, 2.0, 2.0, 0.0]), returns, mask) == pytest.approx(0.0)
    # residual -0.5, 0, 0.5: variance 1/6 against 2/3 -> 1 - 0.25
    assert explained_variance(t([1.5, 2.0, 2.5, 0.0]), returns, mask) == pytest.approx(0.75)
    assert math.isnan(explained_variance(t([1.0, 2.0]), t([1.0, 1.0]), t([1, 1])))


def test_completion_log_probs_from_the_kept_logits_equal_those_from_every_position():
    """PPO and SPO ask the model for the logits of the completions only (`RolloutTrainer._kept`): the same
    log-probabilities as slicing the logits of every position, at the sampling temperature."""
    from types import SimpleNamespace

    from minimind_hf.trainers.rollout import RolloutTrainer
    from tests.utils import tiny_model

    model = tiny_model()
    input_ids = torch.randint(3, model.config.vocab_size, (2, 30), generator=torch.Generator().manual_seed(0))
    inputs, width = {"input_ids": input_ids}, 22
    trainer = SimpleNamespace(args=SimpleNamespace(temperature=0.7), _kept=RolloutTrainer._kept)
    full = RolloutTrainer._completion_logps(trainer, model(**inputs).logits, input_ids, width)
    kept_logits = model(**inputs, logits_to_keep=RolloutTrainer._kept(input_ids, width)).logits
    assert kept_logits.shape[1] == 30 - width + 1
    kept = RolloutTrainer._completion_logps(trainer, kept_logits, input_ids, width)
    assert full.shape == (2, 30 - width)
    torch.testing.assert_close(kept, full)
    expected = torch.log_softmax(model(**inputs).logits[:, width - 1 : -1] / 0.7, -1)
    torch.testing.assert_close(full, expected.gather(-1, input_ids[:, width:, None]).squeeze(-1))
