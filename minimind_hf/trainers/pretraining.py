"""Pretraining trainer: TRL's SFTTrainer with the model's own loss.

TRL 1.16's SFTTrainer always scores tokens through its tiled "fused LM head" (`trl.kernels.ChunkedLogProbFunction`):
logits are computed tile by tile and recomputed in the backward pass, which saves memory on large vocabularies
with a Triton kernel on GPU. Pretraining labels every position, so nothing is skipped, MiniMind's vocabulary is
6,400, and on CPU the tiles run as eager torch ops: the tiny model's training step took 1.84 s with the fused head
against 0.90 s with the plain head (batch 16 x 256, one thread, measured). `PretrainTrainer` therefore uses the
model's own forward loss (`transformers.Trainer.compute_loss`: cross-entropy over the full logits, plus the MoE
balance loss that `MiniMindForCausalLM` adds when labels are given, in the configured `router_aux_loss_type`) and
logs the MoE balance loss as `aux_loss`. Everything else (datasets, packing, logging, checkpoints) is SFTTrainer's.
"""

from transformers import Trainer
from trl import SFTTrainer


class PretrainTrainer(SFTTrainer):
    """[`trl.SFTTrainer`] whose loss is the model's own (see the module docstring for why)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = Trainer.compute_loss(
            self, model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        aux_loss = getattr(outputs, "aux_loss", None)
        if aux_loss is not None:
            mode = "train" if model.training else "eval"
            gathered = self.accelerator.gather_for_metrics(aux_loss.detach().reshape(1))
            self._metrics[mode]["aux_loss"].append(gathered.mean().item())
        return (loss, outputs) if return_outputs else loss
