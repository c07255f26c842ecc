"""What the SFTTrainer subclasses share with `trl.SFTTrainer.compute_loss` once they have their own token loss."""

from __future__ import annotations

import torch


def finish_token_loss(trainer, loss: torch.Tensor, outputs, num_items_in_batch, mode: str) -> torch.Tensor:
    """As `SFTTrainer.compute_loss` does after its token loss: `num_items_in_batch` counts every rank's tokens while
    DDP averages gradients, so the loss is scaled by the number of processes; on MoE models the router's balance loss
    (a per-micro-batch mean, averaged over accumulation steps) is added and logged as `aux_loss`."""
    if trainer.args.average_tokens_across_devices and num_items_in_batch is not None:
        loss = loss * (trainer.accelerator.num_processes // trainer.get_tp_size())
    if trainer.aux_loss_enabled:
        steps = trainer.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
        loss = loss + trainer.router_aux_loss_coef * outputs.aux_loss / steps
        trainer._metrics[mode]["aux_loss"].append(
            trainer.accelerator.gather_for_metrics(outputs.aux_loss).mean().item()
        )
    return loss
