"""TRL's fused LM head, scoring only the positions that have a label on every device.

TRL 1.16's SFT, DPO and GRPO trainers patch the policy (and the reference model) with
`trl.trainer.utils.add_fused_lm_head`: `model(..., labels=labels, fused_lm_head=True)` returns per-token
log-probabilities (and entropy, top-1, ...) of the labels. On a device with Triton only the labelled positions are
projected; elsewhere (CPU) every position is, tile by tile, so that tile shapes stay fixed for compilers, and TRL has
no switch for its compact mode there, hence this wrapper (the projection is the model's own, the softmax torch's). A GRPO prompt with the tool schemas is about 620 tokens and its
completion about 45: on CPU the head and its softmax run over all 670 positions to score 45 of them; a tool SFT
dialogue is about 670 tokens with about 70 targets.

`compact_fused_lm_head(model, temperature)`, applied after the trainer is built, puts a forward in front of TRL's
that, for `fused_lm_head=True` calls, asks the model for the logits of only the positions whose next token is a label
in some row (`logits_to_keep` as an index tensor), then computes the same fields on those (temperature-scaled,
fp32): `log_probs`, `entropy`, `log_sum_sq_probs`, `mean_logits`, `is_top1`, zero where the label is -100, with
`label_mask`, `loss` and, on MoE, the model's own balance loss (its `router_aux_loss_type`, as pretraining adds it;
TRL's head puts transformers' Mixtral-style `load_balancing_loss_func` in its place). Calls it does not
cover (pre-shifted `shift_labels`, a model with logit soft-capping or scaling) go to TRL's forward. Tested against
TRL's head field by field, with gradients.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


def compact_fused_lm_head(model, temperature: float = 1.0) -> None:
    """Puts the compact forward (module docstring) in front of the fused head TRL added to `model`."""
    trl_forward = model.forward
    own_forward = type(model).forward.__get__(model)
    config = model.config.get_text_config()
    # Soft-capped or scaled logits (TRL reads these attributes): TRL's head alone knows those models.
    scaling = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
    if any(getattr(config, name, None) is not None for name in scaling):
        return

    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head or shift_labels is not None or labels is None:
            return trl_forward(
                *args,
                fused_lm_head=fused_lm_head,
                labels=labels,
                shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch,
                **kwargs,
            )
        kwargs["use_cache"] = False
        if getattr(config, "output_router_logits", False):
            kwargs.setdefault("output_router_logits", True)
        targets = labels[:, 1:]
        mask = targets != -100
        columns = mask.any(dim=0).nonzero().squeeze(1)
        outputs = own_forward(*args, logits_to_keep=columns, **kwargs)
        kept = targets[:, columns]
        chosen = kept != -100  # the same positions as `mask`, in the same (row-major) order
        logits = outputs.logits[chosen].float() / temperature
        wanted = kept[chosen]
        log_softmax = logits.log_softmax(-1)
        log_probs = log_softmax.gather(-1, wanted.unsqueeze(-1)).squeeze(-1)
        entropy = -(log_softmax.exp() * log_softmax).sum(-1)
        with torch.no_grad():
            log_sum_sq_probs = torch.logsumexp(2 * log_softmax, dim=-1)
            mean_logits = logits.mean(-1)
            is_top1 = logits.argmax(-1) == wanted

        def full(values: torch.Tensor) -> torch.Tensor:  # zero where the label is -100; keeps the graph
            return values.new_zeros(mask.shape).masked_scatter(mask, values)

        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        loss = -log_probs.sum() / count
        aux_loss = getattr(outputs, "aux_loss", None)
        if aux_loss is not None:
            loss = loss + getattr(config, "router_aux_loss_coef", 0.0) * aux_loss
        return FusedOutput(
            loss=loss,
            log_probs=full(log_probs),
            entropy=full(entropy),
            log_sum_sq_probs=full(log_sum_sq_probs),
            mean_logits=full(mean_logits),
            is_top1=full(is_top1),
            label_mask=mask,
            aux_loss=aux_loss,
        )

    model.forward = types.MethodType(forward, model)


@dataclass
class FusedOutput(ModelOutput):
    """The fields of TRL's `FusedCausalLMOutput` (see `compact_fused_lm_head`)."""

    loss: torch.Tensor | None = None
    log_probs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    log_sum_sq_probs: torch.Tensor | None = None
    mean_logits: torch.Tensor | None = None
    is_top1: torch.Tensor | None = None
    label_mask: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


def compact_trainer_heads(trainer, temperature: float = 1.0) -> None:
    """`compact_fused_lm_head` on the models a TRL trainer patched with its fused head: the policy (its base model
    under PEFT, as TRL patches it) and the reference model when there is one."""
    model = trainer.model
    compact_fused_lm_head(model.get_base_model() if hasattr(model, "get_base_model") else model, temperature)
    if getattr(trainer, "ref_model", None) is not None:
        compact_fused_lm_head(trainer.ref_model, temperature)
