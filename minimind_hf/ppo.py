"""The arithmetic of PPO with a critic, as upstream MiniMind HEAD's `train_ppo.py` does it: token-level GAE, whitened
advantages, the clipped policy loss with k3 KL to a frozen reference inside the loss, the clipped value loss and the
approximate-KL early stop.

Ours because nothing maintained has it: TRL dropped its PPO trainer after 1.12 (`trl.experimental.ppo`), and that one
put the KL penalty into the reward (per-token `-kl_coef * (logp - ref_logp)` added before GAE) where upstream MiniMind
adds `kl_coef * k3` to the policy loss; TRL's GRPO-family losses have no critic. Every function works on padded
`(batch, tokens)` tensors of the completion positions with a `mask` (1 on completion tokens that count, 0 on padding
and on anything after the end of a completion) and is checked against hand-computed examples in tests/test_ppo.py.

Conventions (upstream HEAD's): the sequence reward sits on the last counted token of each completion; `gamma` 1.0 and
`lam` 0.95; returns are `advantages + values` from before whitening; advantages are whitened over the counted tokens
of the whole batch; the policy loss is the token mean over counted tokens of `max(-A r, -A clip(r, 1-e, 1+e)) +
kl_coef * k3`, with `r = exp(logp - old_logp)` and `k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1`; the value
loss is `0.5 * mean(max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2))`; a minibatch whose approximate KL
`mean(0.5 (logp - old_logp)^2)` exceeds the threshold stops the epoch.
"""

from __future__ import annotations

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over the positions where `mask` is 1 (a scalar; 0 when nothing is counted)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """`(values - mean) / std` over the counted positions (population std), zero elsewhere."""
    mask = mask.to(values.dtype)
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + eps) * mask


def last_token_rewards(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token rewards with each completion's sequence score on its last counted token and 0 elsewhere (a
    completion with no counted token gets nothing)."""
    if scores.shape != mask.shape[:1]:
        raise ValueError(f"last_token_rewards: {scores.shape[0]} scores for {mask.shape[0]} completions")
    rewards = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device)
    lengths = mask.long().sum(-1)
    has = lengths > 0
    # the last counted position: counted positions are a prefix of each row
    last = (lengths - 1).clamp(min=0)
    rewards[has, last[has]] = scores[has]
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each completion's counted tokens.

    `delta_t = r_t + gamma * V_{t+1} - V_t` with `V` past the last counted token taken as 0, and
    `A_t = delta_t + gamma * lam * A_{t+1}`; returns `(advantages, returns = advantages + values)`, both zero on
    positions the mask drops. Counted positions must be a prefix of each row (completion tokens, then padding).
    """
    if not rewards.shape == values.shape == mask.shape:
        raise ValueError(
            f"gae: rewards {tuple(rewards.shape)}, values {tuple(values.shape)}, mask {tuple(mask.shape)}"
        )
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference): `exp(ref - logp) - (ref - logp) - 1` (>= 0)."""
    diff = ref_logp - logp
    return torch.exp(diff) - diff - 1


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate plus `kl_coef * k3` to the reference, token mean over the counted tokens.

    Returns the loss and its statistics: `clip_fraction` (counted tokens where the clipped term was chosen),
    `approx_kl` (`mean(0.5 (logp - old_logp)^2)`, upstream's early-stop measure) and `kl` (mean k3, when a reference
    is given).
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    per_token = torch.maximum(unclipped, clipped)
    stats = {
        "clip_fraction": float(masked_mean((clipped > unclipped).to(logp.dtype), mask)),
        "approx_kl": float(masked_mean(0.5 * log_ratio.detach() ** 2, mask)),
    }
    if ref_logp is not None:
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + kl_coef * kl
        stats["kl"] = float(masked_mean(kl.detach(), mask))
    return masked_mean(per_token, mask), stats


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped value loss, `0.5 * mean(max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2))` over the
    counted tokens, with `value_clip_fraction` (counted tokens where the clipped error was larger)."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, {"value_clip_fraction": float(masked_mean((clipped > unclipped).to(values.dtype), mask))}


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """`1 - Var(R - V) / Var(R)` over the counted tokens: 1 for a perfect critic, 0 for a constant one (nan when the
    returns do not vary)."""
    residual = returns - values
    var_returns = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    var_residual = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    if float(var_returns) == 0.0:
        return float("nan")
    return float(1 - var_residual / var_returns)


__all__ = [
    "explained_variance",
    "gae",
    "k3_kl",
    "last_token_rewards",
    "masked_mean",
    "policy_loss",
    "value_loss",
    "whiten",
]
