"""Reasoning distillation: SFT on `<think>...</think><answer>...</answer>` traces with extra loss weight on the exact
tag spans (upstream: 10 on the tags, 1 elsewhere), plus the augmentation that lets thinking be switched off at
inference.

Why a trainer subclass: TRL's `SFTTrainer` computes its loss from the fused LM head's per-token log-probabilities
with uniform weights (`loss_type` "nll" or "dft"), and `compute_loss_func` would only see the logits and labels after
an extra full-logits forward. Per-token weights need the token ids, so `compute_loss` is replaced by the same fused
computation with the weights from [`minimind_hf.data.reasoning_tag_weights`] applied; the normalisation (by the
number of label tokens, unweighted) is upstream's.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from trl import SFTConfig, SFTTrainer

from ..data import EMPTY_THINK, REASONING_TAGS, reasoning_tag_weights
from .common import finish_token_loss

_THINK_BLOCK = re.compile(r"^\s*<think>.*?</think>\s*", re.DOTALL)


@dataclass
class ReasoningSFTConfig(SFTConfig):
    r"""[`SFTConfig`] plus the tag weighting.

    Args:
        tag_weight (`float`, *optional*, defaults to `10.0`):
            Loss weight of the tokens spelling `<think>`, `</think>`, `<answer>`, `</answer>` (upstream: 10); every
            other trained token weighs 1. `1.0` is plain SFT.
    """

    tag_weight: float = field(default=10.0, metadata={"help": "Loss weight of the think/answer tag tokens."})


class ReasoningSFTTrainer(SFTTrainer):
    """[`SFTTrainer`] with per-token loss weights: `sum_t w_t * nll_t / (number of label tokens)`, where `w_t` is
    `tag_weight` on the exact tokens of the reasoning tags (located in the decoded bytes, so multi-piece tags such as
    `<answer>` are weighted only where they occur, unlike upstream's id matching) and 1 elsewhere."""

    _tag_names = ["trl", "sft", "reasoning", "minimind"]

    def tag_weights(self, input_ids: torch.Tensor) -> torch.Tensor:
        """`[B, S]` weights for a batch of token ids."""
        rows = [
            reasoning_tag_weights(row, self.processing_class, REASONING_TAGS, self.args.tag_weight)
            for row in input_ids.tolist()
        ]
        return torch.tensor(rows, dtype=torch.float32, device=input_ids.device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.args.tag_weight == 1.0:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        weights = self.tag_weights(inputs["input_ids"])[:, 1:]  # weight of the token each position predicts
        inputs = {**inputs, "use_cache": False}
        if self.aux_loss_enabled:
            inputs["output_router_logits"] = True
        outputs = model(**inputs, fused_lm_head=True)
        per_token_loss = -outputs.log_probs * weights  # log_probs is zero where the label is -100
        num_tokens = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = per_token_loss.sum() / torch.as_tensor(num_tokens).clamp(min=1)
        loss = finish_token_loss(self, loss, outputs, num_items_in_batch, mode)

        num_valid = self.accelerator.gather_for_metrics(outputs.label_mask.sum()).sum()
        entropy_sum = self.accelerator.gather_for_metrics(outputs.entropy.detach().sum()).sum()
        num_correct = self.accelerator.gather_for_metrics(outputs.is_top1.sum()).sum()
        self._metrics[mode]["entropy"].append((entropy_sum / num_valid).item() if num_valid > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((num_correct / num_valid).item() if num_valid > 0 else 0.0)
        if mode == "train":
            self._total_train_tokens += (
                self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            )
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        if return_outputs:
            # The fused head builds no logits; callers asking for outputs get a plain forward's.
            with torch.no_grad():
                outputs = model(**{k: v for k, v in inputs.items() if k not in ("labels", "output_router_logits")})
            return loss, outputs
        return loss


def _skip(example: dict, index: int, p: float, seed: int) -> dict:
    salt = int(hashlib.sha256(b"skip_thinking").hexdigest()[:8], 16)
    if np.random.default_rng([seed, salt, index]).random() >= p:
        return example
    for message in example["messages"]:
        if message["role"] != "assistant":
            continue
        if message.get("reasoning_content") is not None:
            message["reasoning_content"] = ""
        elif _THINK_BLOCK.match(message.get("content") or ""):
            message["content"] = EMPTY_THINK + _THINK_BLOCK.sub("", message["content"], count=1)
    return example


def skip_thinking(dataset, p: float = 0.2, seed: int = 0):
    """Empties the think block of a trace's assistant turns with probability `p`, so that the model also learns to
    answer straight after the empty block the chat template writes with `enable_thinking=False`
    (`<think>\\n\\n</think>\\n\\n`): minimind-3's switchable thinking. Content such as
    `<think>\\nFirst, ...\\n</think>\\n<answer>\\n7\\n</answer>` becomes `<think>\\n\\n</think>\\n\\n<answer>\\n7\\n</answer>`;
    a `reasoning_content` becomes empty. A seeded `dataset.map`: row `i` draws from a generator seeded by
    (`seed`, `i`)."""
    if p <= 0:
        return dataset
    return dataset.map(_skip, with_indices=True, fn_kwargs={"p": p, "seed": seed})


__all__ = ["ReasoningSFTConfig", "ReasoningSFTTrainer", "skip_thinking"]
