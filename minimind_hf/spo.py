"""The arithmetic of SPO, Single-stream Policy Optimization (Xu & Ding, arXiv 2509.13232): a per-prompt value tracker
that replaces GRPO's group baseline, the advantages it gives, and the prioritised prompt sampler it makes possible.

SPO draws one response per prompt, so there is no group to take a baseline from. Instead it keeps, for every prompt
`x`, a Beta belief about the prompt's success probability under the current policy and uses its mean as the baseline.
What this module computes, following the paper (the KL-adaptive value tracker, global advantage normalisation and
prioritised sampling of its method section, and its Algorithm 1) and the authors' implementation
(`spo/spo_ray_trainer.py` and `spo/config/spo_trainer.yaml` in verl-project/verl-recipe) for the constants:

* Tracker: `alpha(x) <- rho(x) * alpha(x) + r` and `beta(x) <- rho(x) * beta(x) + (1 - r)`, value
  `v(x) = alpha / (alpha + beta)`. The paper's rewards are binary; a reward in [0, 1] is accepted as a fractional
  count, which is exactly the adaptive EMA the paper proves the update equivalent to,
  `v <- v + (r - v) / (rho * N + 1)` with `N = alpha + beta`, and is what it suggests for non-binary rewards. A reward
  outside [0, 1] would make `alpha` or `beta` negative and is refused.
* Forgetting: `rho(x) = 2 ** (-D(x) / D_half)` clipped to `[rho_min, rho_max]`, where `D(x)` is the divergence between
  the current policy and the one that last answered `x`: the more the policy moved, the more of the old evidence is
  forgotten. Defaults are the authors' `D_half = 0.06`, `rho_min = 0.875`, `rho_max = 0.96`. The authors measure `D`
  as the token mean of `|log pi_then - log pi_now|` over the response the prompt got at its last visit
  ([`policy_divergence`]); a first visit has `D = 0`, so `rho = rho_max`. The trainer measures `D` and passes it in.
* Initialisation: from `n0` offline answers of the starting policy with `s` successes (the authors use `n0 = 8`),
  `v0 = (s + 1/2) / (n0 + 1)` (the authors' half-count smoothing, so `v0` is never exactly 0 or 1) and
  `alpha0 = N0 * v0`, `beta0 = N0 * (1 - v0)` with `N0 = 1 / (1 - rho_min)`, the effective sample size at which the
  tracker settles under the strongest forgetting. A prompt with no offline answers gets the same formula with
  `n0 = 0`: `alpha0 = beta0 = N0 / 2` (the authors' code special-cases this to `alpha0 = beta0 = 1/2`, a much
  weaker prior that the first reward then swings to 0.75 or 0.25; we keep the one formula and its `N0`).
* Advantage: `A = r - v_prev(x)` with the value from before this reward is absorbed (so the baseline does not depend
  on the action), then normalised over the whole batch, `(A - mean) / (std + 1e-8)`, with the unbiased batch std as
  in the authors' code. One batch, one normalisation: there are no groups.
* Prioritised sampling: weight `sqrt(v (1 - v)) / N ** gamma + epsilon`, normalised to probabilities: the Bernoulli
  standard deviation favours prompts the policy sometimes solves, `epsilon = 0.05` keeps every prompt reachable.
  The paper allows `gamma` in [0, 1] to favour prompts with little evidence; the authors' code uses `gamma = 0`, and
  so does our default.

Upstream MiniMind's SPO port (2510) differs on purpose and we do not follow it: it keeps one global tracker for all
prompts, derives `rho` from the change of the batch-mean token log-prob (`D_half = 0.06`, clip [0.5, 0.96], a
constant 0.9 on the first step), squashes rewards to [0, 1] with `(r + 3) / 6`, uses `r - (6 p - 3)` clamped to
+-5 as the advantage, and has neither batch normalisation nor a prioritised sampler. A global tracker is a running
mean reward, not a per-prompt baseline, which is the point of SPO.

The state is plain floats and ints keyed by prompt id (a `str` or `int`, e.g. the dataset row) so that a trainer can
checkpoint it as JSON with [`ValueTracker.state_dict`].
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch

__all__ = ["ValueTracker", "forgetting_factor", "policy_divergence"]

_NORM_EPS = 1e-8


def forgetting_factor(
    kl: torch.Tensor | Sequence[float] | float,
    *,
    d_half: float = 0.06,
    rho_min: float = 0.875,
    rho_max: float = 0.96,
) -> torch.Tensor:
    """`rho = clip(2 ** (-D / D_half), rho_min, rho_max)`, elementwise over the divergences `kl` (float64)."""
    d = torch.as_tensor(kl, dtype=torch.float64)
    if torch.isnan(d).any() or (d < 0).any():
        raise ValueError(f"policy divergences must be >= 0, got {d.tolist()}")
    return torch.clamp(torch.pow(2.0, -d / d_half), min=rho_min, max=rho_max)


def policy_divergence(
    logps_then: torch.Tensor, logps_now: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The authors' per-prompt `D`: token mean of `|log pi_then - log pi_now|` over each response's tokens.

    Args:
        logps_then: `(batch, seq)` log-probs of each prompt's last response under the policy that produced it.
        logps_now: the same tokens' log-probs under the current policy.
        mask: `(batch, seq)`, 1 on response tokens (all tokens if None).

    Returns:
        `(batch,)` divergences, 0 for a row without response tokens.
    """
    if logps_then.shape != logps_now.shape:
        raise ValueError(f"log-prob shapes differ: {tuple(logps_then.shape)} vs {tuple(logps_now.shape)}")
    diff = (logps_then.double() - logps_now.double()).abs()
    if mask is None:
        mask = torch.ones_like(diff)
    elif mask.shape != diff.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the log-probs' {tuple(diff.shape)}")
    mask = mask.to(diff.dtype)
    return (diff * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


class ValueTracker:
    """Per-prompt Beta trackers of success probability, with KL-adaptive forgetting (see the module docstring).

    Args:
        d_half: divergence at which half the old evidence is forgotten.
        rho_min, rho_max: clip range of the forgetting factor (`0 < rho_min <= rho_max <= 1`).
        epsilon: exploration floor added to every sampling weight.
        gamma: exponent of the effective sample size dividing the sampling weight (0: the authors' choice).
    """

    def __init__(
        self,
        *,
        d_half: float = 0.06,
        rho_min: float = 0.875,
        rho_max: float = 0.96,
        epsilon: float = 0.05,
        gamma: float = 0.0,
    ):
        if not d_half > 0:
            raise ValueError(f"d_half must be > 0, got {d_half}")
        if not 0 < rho_min <= rho_max <= 1 or rho_min >= 1:
            raise ValueError(f"need 0 < rho_min <= rho_max <= 1 and rho_min < 1, got {rho_min}, {rho_max}")
        if not epsilon >= 0 or not 0 <= gamma <= 1:
            raise ValueError(f"need epsilon >= 0 and 0 <= gamma <= 1, got {epsilon}, {gamma}")
        self.d_half, self.rho_min, self.rho_max = float(d_half), float(rho_min), float(rho_max)
        self.epsilon, self.gamma = float(epsilon), float(gamma)
        self.alpha: dict[Hashable, float] = {}
        self.beta: dict[Hashable, float] = {}
        self.visits: dict[Hashable, int] = {}

    @property
    def n0(self) -> float:
        """`N0 = 1 / (1 - rho_min)`: the effective sample size of a fresh prompt's prior."""
        return 1.0 / (1.0 - self.rho_min)

    def prior(self, offline_rewards: Sequence[float] = ()) -> tuple[float, float]:
        """`(alpha0, beta0)` from `n0` offline rewards: `N0 * v0`, `N0 * (1 - v0)`, `v0 = (s + 1/2) / (n0 + 1)`."""
        rewards = _check_rewards(offline_rewards)
        v0 = (sum(rewards) + 0.5) / (len(rewards) + 1)
        return self.n0 * v0, self.n0 * (1.0 - v0)

    def initialize(self, prompt_id: Hashable, offline_rewards: Sequence[float] = ()) -> None:
        """Set (or reset) a prompt's tracker from the starting policy's offline rewards on it."""
        self.alpha[prompt_id], self.beta[prompt_id] = self.prior(offline_rewards)
        self.visits[prompt_id] = 0

    def _params(self, prompt_id: Hashable) -> tuple[float, float]:
        if prompt_id in self.alpha:
            return self.alpha[prompt_id], self.beta[prompt_id]
        return self.prior()

    def value(self, ids: Sequence[Hashable]) -> torch.Tensor:
        """`v(x) = alpha / (alpha + beta)` per id (float64); an unseen id has the no-sample prior's 0.5."""
        _check_ids(ids)
        return torch.tensor([a / (a + b) for a, b in map(self._params, ids)], dtype=torch.float64)

    def effective_size(self, ids: Sequence[Hashable]) -> torch.Tensor:
        """`N(x) = alpha + beta` per id (float64)."""
        _check_ids(ids)
        return torch.tensor([a + b for a, b in map(self._params, ids)], dtype=torch.float64)

    def rho(self, kl: torch.Tensor | Sequence[float] | float) -> torch.Tensor:
        """This tracker's forgetting factor for divergences `kl` (see [`forgetting_factor`])."""
        return forgetting_factor(kl, d_half=self.d_half, rho_min=self.rho_min, rho_max=self.rho_max)

    def advantages(self, ids: Sequence[Hashable], rewards: Sequence[float] | torch.Tensor) -> torch.Tensor:
        """Batch-normalised `r - v(x)`, with `v` from before these rewards are absorbed (call before `update`).

        A batch of one (or of equal raw advantages) has zero spread and gets zero advantages.
        """
        r = torch.tensor(_check_rewards(rewards, len(_check_ids(ids))), dtype=torch.float64)
        raw = r - self.value(ids)
        centred = raw - raw.mean()
        if len(raw) < 2:
            return centred
        return centred / (raw.std(unbiased=True) + _NORM_EPS)

    def update(
        self,
        ids: Sequence[Hashable],
        rewards: Sequence[float] | torch.Tensor,
        kl: Sequence[float] | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Absorb one reward per id: `alpha <- rho * alpha + r`, `beta <- rho * beta + (1 - r)`.

        Args:
            ids: prompt ids of the batch; an id seen for the first time starts from the no-sample prior unless
                [`initialize`] gave it offline rewards.
            rewards: one reward in [0, 1] per id.
            kl: per-id divergence between the current policy and the one that last answered that prompt; None means
                0 for every id (a first visit, or no measurement), i.e. `rho = rho_max`. An id repeated in the batch
                was answered by one policy: its tracker is discounted once (with its first entry's `kl`) and then
                absorbs all of its rewards.

        Returns:
            The `rho` applied to each entry (float64).
        """
        n = len(_check_ids(ids))
        r = _check_rewards(rewards, n)
        if kl is None:
            kl = [0.0] * n
        rho = self.rho(kl).reshape(-1)
        if len(rho) != n:
            raise ValueError(f"got {len(rho)} divergences for {n} prompts")
        discounted: set[Hashable] = set()
        for i, (prompt_id, reward) in enumerate(zip(ids, r)):
            alpha, beta = self._params(prompt_id)
            if prompt_id not in discounted:
                alpha, beta = rho[i].item() * alpha, rho[i].item() * beta
                discounted.add(prompt_id)
            self.alpha[prompt_id], self.beta[prompt_id] = alpha + reward, beta + (1.0 - reward)
            self.visits[prompt_id] = self.visits.get(prompt_id, 0) + 1
        return rho

    def sampling_weights(self, ids: Sequence[Hashable]) -> torch.Tensor:
        """Sampling probabilities over `ids`: `sqrt(v (1 - v)) / N ** gamma + epsilon`, normalised (float64)."""
        v, size = self.value(ids), self.effective_size(ids)
        weights = torch.sqrt(v * (1.0 - v)) / size.pow(self.gamma) + self.epsilon
        total = weights.sum()
        if not total > 0:  # epsilon = 0 and every prompt certain: fall back to uniform
            return torch.full_like(weights, 1.0 / len(weights))
        return weights / total

    def sample(
        self,
        ids: Sequence[Hashable],
        k: int,
        generator: torch.Generator | None = None,
        replacement: bool | None = None,
    ) -> list[Hashable]:
        """Draw `k` of `ids` by [`sampling_weights`]; without replacement unless `k > len(ids)` (or asked)."""
        _check_ids(ids)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if replacement is None:
            replacement = k > len(ids)
        if not replacement and k > len(ids):
            raise ValueError(f"cannot draw {k} of {len(ids)} prompts without replacement")
        picks = torch.multinomial(self.sampling_weights(ids), k, replacement=replacement, generator=generator)
        return [ids[i] for i in picks.tolist()]

    def state_dict(self) -> dict:
        """The tracker as JSON-serialisable types (prompt ids must be `str` or `int` to survive JSON)."""
        return {
            "config": {
                "d_half": self.d_half,
                "rho_min": self.rho_min,
                "rho_max": self.rho_max,
                "epsilon": self.epsilon,
                "gamma": self.gamma,
            },
            "prompts": [[pid, self.alpha[pid], self.beta[pid], self.visits.get(pid, 0)] for pid in self.alpha],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore [`state_dict`]'s output (replaces this tracker's config and every prompt's state)."""
        self.__init__(**state["config"])
        for pid, alpha, beta, visits in state["prompts"]:
            if not (alpha >= 0 and beta >= 0 and alpha + beta > 0):
                raise ValueError(f"bad tracker state for prompt {pid!r}: alpha={alpha}, beta={beta}")
            self.alpha[pid], self.beta[pid], self.visits[pid] = float(alpha), float(beta), int(visits)


def _check_ids(ids: Sequence[Hashable]) -> Sequence[Hashable]:
    if isinstance(ids, str | bytes) or len(ids) == 0:
        raise ValueError("ids must be a non-empty sequence of prompt ids")
    return ids


def _check_rewards(rewards: Sequence[float] | torch.Tensor, n: int | None = None) -> list[float]:
    values = [float(r) for r in (rewards.reshape(-1).tolist() if isinstance(rewards, torch.Tensor) else rewards)]
    if n is not None and len(values) != n:
        raise ValueError(f"got {len(values)} rewards for {n} prompts")
    bad = [r for r in values if math.isnan(r) or not 0.0 <= r <= 1.0]
    if bad:
        raise ValueError(
            f"SPO's value tracker needs rewards in [0, 1] (success probabilities), got {bad[:5]}; "
            "map the reward to [0, 1] first (e.g. 1 for a correct answer, 0 otherwise)"
        )
    return values
