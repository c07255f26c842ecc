"""Trainers for what TRL's own trainers do not express, or express slowly here (each module says why)."""

from .compact_head import compact_fused_lm_head, compact_trainer_heads
from .distillation import LogitDistillationConfig, LogitDistillationTrainer, check_teacher_vocabulary
from .pretraining import PretrainTrainer
from .reasoning import ReasoningSFTConfig, ReasoningSFTTrainer, reasoning_tag_weights
from .shared_prefix import SharedPrefixSFTTrainer

__all__ = [
    "LogitDistillationConfig",
    "LogitDistillationTrainer",
    "PretrainTrainer",
    "ReasoningSFTConfig",
    "ReasoningSFTTrainer",
    "SharedPrefixSFTTrainer",
    "check_teacher_vocabulary",
    "compact_fused_lm_head",
    "compact_trainer_heads",
    "reasoning_tag_weights",
]
