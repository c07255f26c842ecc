"""TRL's SFTTrainer with the LM head run only where a target is.

TRL 1.16's SFTTrainer scores every position through its tiled "fused LM head" (`trl.kernels.ChunkedLogProbFunction`),
which on CPU runs as eager torch ops and computes entropy and top-1 for every tile. With an assistant-only loss most
positions carry no target: in the curriculum's tool dialogues about 90% of the tokens are the system prompt with the
schemas and the question. `TargetHeadSFTTrainer` asks the model for the logits of only the positions whose next token
is a target in some row of the batch (`logits_to_keep` as an index tensor, which transformers' causal LMs and
MiniMind take), then takes the cross-entropy (fp32, summed over targets and divided by `num_items_in_batch` as TRL
does), the entropy and the top-1 accuracy on those positions alone. The token loss, its gradients and the logged
metrics (`entropy`, `mean_token_accuracy`, `num_tokens`) are TRL's up to float rounding (tested against
`trl.SFTTrainer.compute_loss`). On MoE models the balance loss is the model's own (its `router_aux_loss_type`, as
pretraining's `PretrainTrainer` adds it), logged as `aux_loss`; TRL's fused head puts transformers' Mixtral-style
`load_balancing_loss_func` in its place.

TRL's own path runs where this one does not apply: another `loss_type` than `nll` (DFT), label smoothing, a
`compute_loss_func`, or a caller that wants the outputs back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from trl import SFTTrainer

from .common import finish_token_loss


class TargetHeadSFTTrainer(SFTTrainer):
    """[`trl.SFTTrainer`] whose LM head and loss see only the positions with a target (see the module docstring)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if (
            return_outputs
            or self.compute_loss_func is not None
            or self.label_smoother is not None
            or self.args.loss_type != "nll"
        ):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if model.training else "eval"
        targets = inputs["labels"][:, 1:]
        # Position p predicts token p + 1: keep the positions whose next token is a target in any row.
        columns = (targets != -100).any(dim=0).nonzero().squeeze(1)
        forward = {k: v for k, v in inputs.items() if k != "labels"}
        forward["use_cache"] = False
        if self.aux_loss_enabled:
            forward["output_router_logits"] = True
        outputs = model(**forward, logits_to_keep=columns)
        targets = targets[:, columns]
        mask = targets != -100
        logits = outputs.logits[mask].float()
        wanted = targets[mask]
        count = mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = F.cross_entropy(logits, wanted, reduction="sum") / torch.as_tensor(count).clamp(min=1)
        loss = finish_token_loss(self, loss, outputs, num_items_in_batch, mode)

        with torch.no_grad():
            log_probs = logits.log_softmax(-1)
            entropy = -(log_probs.exp() * log_probs).sum()
            correct = (logits.argmax(-1) == wanted).sum()
        gather = self.accelerator.gather_for_metrics
        valid = gather(mask.sum()).sum()
        entropy, correct = gather(entropy).sum(), gather(correct).sum()
        self._metrics[mode]["entropy"].append((entropy / valid).item() if valid > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((correct / valid).item() if valid > 0 else 0.0)
        if mode == "train":  # as SFTTrainer counts the tokens fed
            if "attention_mask" in inputs:
                fed = gather(inputs["attention_mask"].sum()).sum().item()
            else:
                fed = gather(torch.tensor(inputs["position_ids"].size(1), device=loss.device)).sum().item()
            self._total_train_tokens += fed // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return loss
