"""White-box logit distillation as upstream MiniMind does it: `alpha * CE + (1 - alpha) * T^2 * KL(teacher || student)`
on the assistant tokens of SFT dialogues, with the teacher's logits sliced to the student's vocabulary.

Why not TRL's trainers: `trl.DistillationTrainer` is on-policy (the student generates the completions) and its loss is
a generalised JSD with no cross-entropy term and no T^2 factor; `trl.experimental.gkd.GKDTrainer` adds a JSD on fixed
data but also has no CE term, no T^2 scaling, samples student completions with probability `lmbda`, and refuses
teachers whose vocabulary size differs. Neither expresses the upstream objective, so this is a small `SFTTrainer`
subclass: TRL still does the data preparation (chat template, assistant-only labels), batching, logging and saving;
only `compute_loss` changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from trl import SFTConfig, SFTTrainer
from trl.models import prepare_deepspeed

from ..training import RecipeError
from .common import finish_token_loss


@dataclass
class LogitDistillationConfig(SFTConfig):
    r"""[`SFTConfig`] plus the distillation objective's parameters.

    Args:
        teacher_model_name_or_path (`str`, *optional*):
            Teacher checkpoint folder (dense or MoE; it must use the student's tokenizer).
        alpha (`float`, *optional*, defaults to `0.5`):
            Weight of the cross-entropy on the data; the KL term gets `1 - alpha` (upstream: 0.5). `1.0` trains by
            cross-entropy alone, the baseline a distilled student is compared with.
        temperature (`float`, *optional*, defaults to `1.5`):
            Softmax temperature of both distributions in the KL term, which is multiplied by `temperature**2` so its
            gradients keep their scale (upstream: 1.5).
    """

    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Teacher checkpoint folder (must share the student's tokenizer)."}
    )
    alpha: float = field(default=0.5, metadata={"help": "CE weight; the KL term gets 1 - alpha (upstream: 0.5)."})
    temperature: float = field(default=1.5, metadata={"help": "Softmax temperature of the KL term (upstream: 1.5)."})

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


def output_vocab_size(model) -> int:
    """Rows of the model's output projection: the width of its logits."""
    return model.get_output_embeddings().weight.shape[0]


def check_teacher_vocabulary(student, teacher, tokenizer=None, teacher_tokenizer=None) -> None:
    """Refuse a teacher whose logits cannot be read in the student's vocabulary.

    The teacher's logits are sliced to the student's width, which is only meaningful when token id `i` is the same
    string for both: the tokenizers (when given) must have identical vocabularies, and the teacher's output may be
    wider than the student's (padded embedding rows) but not narrower.

    Raises:
        [`RecipeError`]: naming the sizes, or the first token id the tokenizers disagree on.
    """
    student_vocab, teacher_vocab = output_vocab_size(student), output_vocab_size(teacher)
    if teacher_vocab < student_vocab:
        raise RecipeError(
            f"teacher vocabulary: the teacher predicts {teacher_vocab} tokens but the student {student_vocab}; the "
            "teacher's logits can be sliced to a smaller student vocabulary, never widened"
        )
    if tokenizer is not None and teacher_tokenizer is not None:
        student_ids, teacher_ids = tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
        if student_ids != teacher_ids:
            student_tokens = {i: t for t, i in student_ids.items()}
            teacher_tokens = {i: t for t, i in teacher_ids.items()}
            first = min(
                i for i in set(student_tokens) | set(teacher_tokens) if student_tokens.get(i) != teacher_tokens.get(i)
            )
            raise RecipeError(
                f"teacher vocabulary: the teacher's tokenizer differs from the student's ({len(teacher_ids)} vs "
                f"{len(student_ids)} tokens; id {first} is {teacher_tokens.get(first)!r} for the teacher and "
                f"{student_tokens.get(first)!r} for the student); logit distillation needs one shared vocabulary"
            )


class LogitDistillationTrainer(SFTTrainer):
    """[`SFTTrainer`] whose loss is `alpha * CE + (1 - alpha) * T^2 * KL(p_teacher^T || p_student^T)`, both terms
    averaged over the tokens that have labels (the assistant tokens with `assistant_only_loss`).

    The teacher runs in eval mode without gradients on the same batch; its logits are cut to the student's vocabulary
    width. On a MoE student the router's load-balancing loss (times `router_aux_loss_coef`) is added, as in SFT.
    Logged: `ce_loss`, `kl` (per-token KL at temperature T), and TRL's `aux_loss` / `num_tokens`.

    Args:
        model: the student (a model, or a `PeftModel`; `peft_config` wraps it as in [`SFTTrainer`]).
        teacher_model: the teacher model, already loaded.
        args ([`LogitDistillationConfig`]): training arguments with `alpha` and `temperature`.
        **kwargs: passed to [`SFTTrainer`] (datasets, `processing_class`, `peft_config`, ...).
    """

    _tag_names = ["trl", "sft", "distillation", "minimind"]

    def __init__(self, model, teacher_model, args: LogitDistillationConfig, **kwargs):
        super().__init__(model=model, args=args, **kwargs)
        check_teacher_vocabulary(self.model, teacher_model)
        teacher_model.eval()
        teacher_model.requires_grad_(False)
        if self.is_deepspeed_enabled:
            self.teacher_model = prepare_deepspeed(teacher_model, self.accelerator)
        else:
            self.teacher_model = self.accelerator.prepare_model(teacher_model, evaluation_mode=True)
        self.alpha = args.alpha
        self.temperature = args.temperature

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        labels = inputs["labels"]
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        model_inputs["use_cache"] = False
        if self.aux_loss_enabled:
            model_inputs["output_router_logits"] = True
        outputs = model(**model_inputs)
        with torch.no_grad():
            teacher_inputs = {k: v for k, v in model_inputs.items() if k != "output_router_logits"}
            teacher_logits = self.teacher_model(**teacher_inputs).logits

        # Position i predicts token i + 1; only positions whose next token has a label count.
        targets = labels[:, 1:]
        mask = targets != -100  # [B, S-1]
        vocab = outputs.logits.shape[-1]
        student = outputs.logits[:, :-1][mask].float()  # [N, V]
        teacher = teacher_logits[:, :-1, :vocab][mask].float()  # [N, V], sliced to the student's vocabulary
        num_tokens = mask.sum()
        denominator = torch.as_tensor(num_tokens if num_items_in_batch is None else num_items_in_batch)
        denominator = denominator.to(student.device).clamp(min=1)

        ce_sum = F.cross_entropy(student, targets[mask], reduction="sum")
        temperature = self.temperature
        kl_per_token = F.kl_div(
            F.log_softmax(student / temperature, dim=-1),
            F.log_softmax(teacher / temperature, dim=-1),
            log_target=True,
            reduction="none",
        ).sum(-1)  # [N]
        kl_sum = kl_per_token.sum()
        loss = (self.alpha * ce_sum + (1.0 - self.alpha) * temperature**2 * kl_sum) / denominator
        loss = finish_token_loss(self, loss, outputs, num_items_in_batch, mode)

        total = self.accelerator.gather_for_metrics(num_tokens).sum().clamp(min=1)
        self._metrics[mode]["ce_loss"].append(
            (self.accelerator.gather_for_metrics(ce_sum.detach()).sum() / total).item()
        )
        self._metrics[mode]["kl"].append((self.accelerator.gather_for_metrics(kl_sum.detach()).sum() / total).item())
        if mode == "train":
            self._total_train_tokens += (
                self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            )
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, outputs) if return_outputs else loss


__all__ = ["LogitDistillationConfig", "LogitDistillationTrainer", "check_teacher_vocabulary", "output_vocab_size"]
