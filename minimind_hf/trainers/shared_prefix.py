"""TRL's SFTTrainer with dialogues that open with the same tokens sharing them (`packing.SharedPrefixCollator`).

TRL pads every dialogue to its batch's longest (or flattens a batch padding-free, which still feeds each dialogue
whole): a system prompt carrying tool schemas is computed once per dialogue. Here it is computed once per batch group,
with the same loss and gradients. Nothing in TRL, transformers or PEFT shares a training prefix, hence this class.
"""

from __future__ import annotations

from trl import SFTTrainer

from ..packing import SharedPrefixCollator


class SharedPrefixSFTTrainer(SFTTrainer):
    """`SFTTrainer` whose collator is wrapped in [`SharedPrefixCollator`]. The trainer's `num_tokens` counts the
    positions fed (the shared prefix once per group), since TRL would sum the 4D attention mask."""

    def __init__(self, *args, min_shared_prefix: int = 16, **kwargs):
        super().__init__(*args, **kwargs)
        self.data_collator = SharedPrefixCollator(self.data_collator, min_prefix=min_shared_prefix)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        fed = inputs.pop("num_tokens_fed", None)
        before = self._total_train_tokens
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if fed is not None and model.training:
            self._total_train_tokens = before + int(self.accelerator.gather_for_metrics(fed.reshape(1)).sum().item())
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return result
