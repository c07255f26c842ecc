"""SPO's arithmetic (minimind_hf.spo) against hand-computed numbers: the KL-adaptive forgetting factor and its clip,
the tracker's Beta updates and initialisation, pre-update advantages normalised over the batch, the prioritised
sampler's weights and draws, the checkpoint round trip through JSON, and the inputs it refuses."""

import json
import math

import pytest
import torch

from minimind_hf.spo import ValueTracker, forgetting_factor, policy_divergence


def test_forgetting_factor_and_its_clip():
    # Defaults D_half = 0.06, clip [0.875, 0.96]:
    #   D = 0     -> 2^0 = 1             -> clipped down to rho_max = 0.96
    #   D = 0.006 -> 2^(-0.1) = 0.933033 -> inside the clip, unchanged
    #   D = 0.06  -> 2^(-1) = 0.5        -> clipped up to rho_min = 0.875
    rho = forgetting_factor([0.0, 0.006, 0.06])
    torch.testing.assert_close(rho, torch.tensor([0.96, 2**-0.1, 0.875], dtype=torch.float64))
    # A wide clip shows the formula itself: D_half = 1, D = 1 -> 0.5, D = 2 -> 0.25, D = 0.5 -> 1/sqrt(2).
    rho = forgetting_factor([1.0, 2.0, 0.5], d_half=1.0, rho_min=0.1, rho_max=1.0)
    torch.testing.assert_close(rho, torch.tensor([0.5, 0.25, 1 / math.sqrt(2)], dtype=torch.float64))
    assert ValueTracker(d_half=1.0, rho_min=0.1, rho_max=1.0).rho(2.0).item() == pytest.approx(0.25)


def test_policy_divergence_is_the_masked_token_mean_of_absolute_log_ratios():
    then = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    now = torch.tensor([[-1.5, -2.0, -2.0], [-9.0, -9.0, -9.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    # Row 0: |0.5|, |0|, (masked) -> 0.5 / 2 = 0.25. Row 1: no response tokens -> 0.
    torch.testing.assert_close(policy_divergence(then, now, mask), torch.tensor([0.25, 0.0], dtype=torch.float64))
    # Unmasked: row 0 -> (0.5 + 0 + 1) / 3 = 0.5; row 1 -> 8.
    torch.testing.assert_close(policy_divergence(then, now), torch.tensor([0.5, 8.0], dtype=torch.float64))


def test_initialisation_from_offline_samples_and_the_no_sample_prior():
    tracker = ValueTracker()  # rho_min = 0.875 -> N0 = 1 / (1 - 0.875) = 8
    assert tracker.n0 == pytest.approx(8.0)
    # n0 = 4 offline rewards, s = 1: v0 = (1 + 0.5) / (4 + 1) = 0.3 -> alpha0 = 8 * 0.3 = 2.4, beta0 = 8 * 0.7 = 5.6.
    tracker.initialize("p", [1, 0, 0, 0])
    assert tracker.alpha["p"] == pytest.approx(2.4) and tracker.beta["p"] == pytest.approx(5.6)
    assert tracker.value(["p"]).item() == pytest.approx(0.3)
    # No samples: v0 = 0.5 / 1 -> alpha0 = beta0 = N0 / 2 = 4; an unseen prompt reads the same prior.
    assert tracker.prior() == pytest.approx((4.0, 4.0))
    assert tracker.value(["never-seen"]).item() == 0.5 and tracker.effective_size(["never-seen"]).item() == 8.0


def test_two_updates_of_one_prompt():
    # rho_min = 0.5 -> N0 = 2, so an unseen prompt starts at alpha = beta = 1; D_half = 0.1 makes D = 0.1 give 0.5.
    tracker = ValueTracker(d_half=0.1, rho_min=0.5, rho_max=0.9)
    # First visit, no divergence: rho = clip(2^0) = 0.9. Reward 1:
    #   alpha = 0.9 * 1 + 1 = 1.9, beta = 0.9 * 1 + 0 = 0.9, v = 1.9 / 2.8 = 0.678571.
    rho = tracker.update(["p"], [1.0])
    assert rho.tolist() == pytest.approx([0.9])
    assert (tracker.alpha["p"], tracker.beta["p"]) == pytest.approx((1.9, 0.9))
    assert tracker.value(["p"]).item() == pytest.approx(1.9 / 2.8)
    # Second visit, D = 0.1: rho = 2^(-1) = 0.5. Reward 0:
    #   alpha = 0.5 * 1.9 = 0.95, beta = 0.5 * 0.9 + 1 = 1.45, v = 0.95 / 2.4 = 0.395833.
    tracker.update(["p"], [0.0], kl=[0.1])
    assert (tracker.alpha["p"], tracker.beta["p"]) == pytest.approx((0.95, 1.45))
    assert tracker.value(["p"]).item() == pytest.approx(0.95 / 2.4)
    # The paper's adaptive-EMA reading of the same step: v = v_prev + (r - v_prev) / (rho * N_prev + 1)
    #   = 0.678571 + (0 - 0.678571) / (0.5 * 2.8 + 1) = 0.678571 * (1 - 1 / 2.4) = 0.395833.
    assert tracker.value(["p"]).item() == pytest.approx(1.9 / 2.8 - (1.9 / 2.8) / 2.4)
    assert tracker.visits["p"] == 2


def test_a_prompt_repeated_in_one_batch_is_discounted_once():
    tracker = ValueTracker(d_half=0.1, rho_min=0.5, rho_max=0.9)
    # Both answers come from one policy: alpha = 0.5 * 1 + 1 + 0 = 1.5, beta = 0.5 * 1 + 0 + 1 = 1.5.
    tracker.update(["p", "p"], [1.0, 0.0], kl=[0.1, 0.1])
    assert (tracker.alpha["p"], tracker.beta["p"]) == pytest.approx((1.5, 1.5))
    assert tracker.visits["p"] == 2


def test_advantages_use_pre_update_values_and_batch_normalisation():
    tracker = ValueTracker()  # N0 = 8
    tracker.initialize("a", [1, 1, 1])  # v0 = (3 + 0.5) / 4 = 0.875
    tracker.initialize("c", [0, 0, 0])  # v0 = (0 + 0.5) / 4 = 0.125; "b" is unseen: v = 0.5
    ids, rewards = ["a", "b", "c"], [1.0, 0.0, 1.0]
    # Raw r - v: [1 - 0.875, 0 - 0.5, 1 - 0.125] = [3/24, -12/24, 21/24], mean 4/24 = 1/6.
    # Centred: [-1/24, -16/24, 17/24]; unbiased variance (1 + 256 + 289) / 576 / 2 = 273/576, std = sqrt(273) / 24.
    # Normalised: [-1, -16, 17] / sqrt(273) = [-0.060523, -0.968364, 1.028887].
    expected = torch.tensor([-1.0, -16.0, 17.0], dtype=torch.float64) / math.sqrt(273)
    adv = tracker.advantages(ids, rewards)
    torch.testing.assert_close(adv, expected)
    assert adv.mean().abs().item() < 1e-12 and adv.std().item() == pytest.approx(1.0, abs=1e-6)
    # The same call after the update sees these rewards in the baseline and gives other numbers. (With one rho for
    # all and equal N, r - v_new = (rho N / (rho N + 1)) (r - v_old) for every prompt and normalisation would hide
    # the difference, so the policy moved further for "b": rho = 0.96, 0.875, 0.96.)
    tracker.update(ids, rewards, kl=[0.0, 0.06, 0.0])
    assert not torch.allclose(tracker.advantages(ids, rewards), expected)
    # One prompt alone, or a batch whose raw advantages are equal, has no spread: zeros, not NaN.
    assert tracker.advantages(["b"], [1.0]).tolist() == [0.0]
    assert tracker.advantages(["x", "y"], [1.0, 1.0]).tolist() == [0.0, 0.0]


def test_sampling_weights():
    tracker = ValueTracker()  # epsilon = 0.05, gamma = 0
    tracker.alpha.update(zero=0.0, half=4.0, high=7.2)
    tracker.beta.update(zero=8.0, half=4.0, high=0.8)  # v = 0, 0.5, 0.9
    # sqrt(v (1 - v)) + 0.05 = [0 + 0.05, 0.5 + 0.05, 0.3 + 0.05] = [0.05, 0.55, 0.35], sum 0.95.
    probs = tracker.sampling_weights(["zero", "half", "high"])
    torch.testing.assert_close(probs, torch.tensor([0.05, 0.55, 0.35], dtype=torch.float64) / 0.95)
    # gamma = 1, epsilon = 0: v = 0.5 for both, N = 2 and 8 -> 0.5 / 2 = 0.25 and 0.5 / 8 = 0.0625 -> [0.8, 0.2].
    tracker = ValueTracker(gamma=1.0, epsilon=0.0)
    tracker.alpha.update(x=1.0, y=4.0)
    tracker.beta.update(x=1.0, y=4.0)
    torch.testing.assert_close(tracker.sampling_weights(["x", "y"]), torch.tensor([0.8, 0.2], dtype=torch.float64))


def test_sample_draws_given_ids_and_favours_uncertain_prompts():
    tracker = ValueTracker()
    tracker.alpha.update(zero=0.0, half=4.0, high=7.2)
    tracker.beta.update(zero=8.0, half=4.0, high=0.8)
    ids = ["zero", "half", "high"]
    draws = tracker.sample(ids, 3000, generator=torch.Generator().manual_seed(0))  # k > len(ids): with replacement
    assert set(draws) <= set(ids) and len(draws) == 3000
    counts = {i: draws.count(i) for i in ids}
    # Expected shares 0.579, 0.368, 0.053 (test_sampling_weights): about 1737, 1105, 158 of 3000.
    assert counts["half"] > counts["high"] > counts["zero"] > 0
    assert counts["half"] / 3000 == pytest.approx(0.55 / 0.95, abs=0.04)
    # Seeded draws repeat; without replacement every id appears once; too many without replacement is refused.
    again = tracker.sample(ids, 3000, generator=torch.Generator().manual_seed(0))
    assert again == draws
    assert sorted(tracker.sample(ids, 3, generator=torch.Generator().manual_seed(1))) == sorted(ids)
    with pytest.raises(ValueError, match="without replacement"):
        tracker.sample(ids, 4, replacement=False)


def test_state_dict_round_trip_through_json():
    tracker = ValueTracker(d_half=0.1, rho_min=0.5, rho_max=0.9, epsilon=0.1, gamma=0.5)
    tracker.initialize("p", [1, 0])
    tracker.update(["p", 7], [1.0, 0.25], kl=[0.05, 0.0])
    restored = ValueTracker()
    restored.load_state_dict(json.loads(json.dumps(tracker.state_dict())))
    assert restored.state_dict() == tracker.state_dict()
    assert (restored.d_half, restored.rho_min, restored.rho_max) == (0.1, 0.5, 0.9)
    assert restored.visits == {"p": 1, 7: 1}
    # The restored tracker carries on exactly as the original does.
    for t in (tracker, restored):
        t.update(["p", 7], [0.0, 1.0], kl=[0.2, 0.01])
    assert restored.state_dict() == tracker.state_dict()
    torch.testing.assert_close(restored.sampling_weights(["p", 7]), tracker.sampling_weights(["p", 7]))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda t: t.update(["p"], [1.5]), r"rewards in \[0, 1\]"),
        (lambda t: t.update(["p"], [-0.1]), r"rewards in \[0, 1\]"),
        (lambda t: t.advantages(["p"], [float("nan")]), r"rewards in \[0, 1\]"),
        (lambda t: t.initialize("p", [2.0]), r"rewards in \[0, 1\]"),
        (lambda t: t.update(["p", "q"], [1.0]), "1 rewards for 2 prompts"),
        (lambda t: t.advantages(["p"], [1.0, 0.0]), "2 rewards for 1 prompts"),
        (lambda t: t.update(["p", "q"], [1.0, 0.0], kl=[0.1]), "1 divergences for 2 prompts"),
        (lambda t: t.update(["p"], [1.0], kl=[-0.1]), "divergences must be >= 0"),
        (lambda t: t.value([]), "non-empty"),
        (lambda t: t.sample(["p"], 0), "k must be"),
    ],
)
def test_bad_inputs_are_refused(call, match):
    tracker = ValueTracker()
    with pytest.raises(ValueError, match=match):
        call(tracker)
    assert tracker.alpha == {}  # nothing was half-applied


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="rho_min"):
        ValueTracker(rho_min=0.97, rho_max=0.96)
    with pytest.raises(ValueError, match="rho_min"):
        ValueTracker(rho_min=1.0, rho_max=1.0)
    with pytest.raises(ValueError, match="d_half"):
        ValueTracker(d_half=0.0)
