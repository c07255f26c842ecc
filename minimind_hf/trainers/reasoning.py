"""Reasoning distillation: SFT on `<think>...</think><answer>...</answer>` traces with extra loss weight on the exact
tag spans (upstream: 10 on the tags, 1 elsewhere). The augmentation that lets thinking be switched off at inference,
[`minimind_hf.data.skip_thinking`], lives with the other data augmentations.

Why a trainer subclass: TRL's `SFTTrainer` computes its loss from the fused LM head's per-token log-probabilities
with uniform weights (`loss_type` "nll" or "dft"), and `compute_loss_func` would only see the logits and labels after
an extra full-logits forward. Per-token weights need the token ids, so `compute_loss` is replaced by the same fused
computation with the weights from [`reasoning_tag_weights`] applied; the normalisation (by the number of label
tokens, unweighted) is upstream's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from trl import SFTConfig, SFTTrainer

from .common import finish_token_loss

REASONING_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


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


def _token_bytes(tokenizer) -> Callable[[int], bytes]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_decoder = {char: byte for byte, char in bytes_to_unicode().items()}
    added = {token_id: token.content for token_id, token in tokenizer.added_tokens_decoder.items()}

    def to_bytes(token_id: int) -> bytes:
        if token_id in added:
            return added[token_id].encode("utf-8")
        piece = tokenizer.convert_ids_to_tokens(int(token_id))
        try:
            return bytes(byte_decoder[char] for char in piece)
        except KeyError:
            raise ValueError("reasoning_tag_weights needs a byte-level BPE tokenizer") from None

    return to_bytes


def reasoning_tag_weights(
    input_ids: Sequence[int],
    tokenizer,
    tags: Sequence[str] = REASONING_TAGS,
    tag_weight: float = 10.0,
    base_weight: float = 1.0,
) -> list[float]:
    """Per-token loss weights that up-weight exactly the tokens spelling the reasoning tags.

    Upstream weights every token id that occurs in any tag's tokenisation, so with multi-piece tags every `<`, `>`
    or `think` anywhere in the text got weight 10. Here the tags are located in the decoded byte string and only the
    tokens overlapping those byte spans get `tag_weight`; everything else gets `base_weight`. Works for any
    byte-level BPE tokenizer (the shipped one, where `<think>` is a single token, and upstream's, where it is not).

    Args:
        input_ids (`Sequence[int]`): one tokenised sequence.
        tokenizer: the tokenizer that produced it.
        tags (`Sequence[str]`, *optional*): the tag strings to find.
        tag_weight (`float`, *optional*, defaults to 10.0): weight of tag tokens.
        base_weight (`float`, *optional*, defaults to 1.0): weight of all other tokens.
    """
    to_bytes = _token_bytes(tokenizer)
    pieces = [to_bytes(t) for t in input_ids]
    starts = np.cumsum([0] + [len(p) for p in pieces])
    text = b"".join(pieces)
    weights = np.full(len(pieces), base_weight, dtype=np.float64)
    for tag in tags:
        needle = tag.encode("utf-8")
        for match in re.finditer(re.escape(needle), text):
            # tokens whose byte span [starts[i], starts[i+1]) overlaps the tag's span
            first = np.searchsorted(starts, match.start(), side="right") - 1
            last = np.searchsorted(starts, match.end(), side="left")
            weights[first:last] = tag_weight
    return weights.tolist()


__all__ = ["REASONING_TAGS", "ReasoningSFTConfig", "ReasoningSFTTrainer", "reasoning_tag_weights"]
