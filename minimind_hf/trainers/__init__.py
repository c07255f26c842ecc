"""Trainers for the post-training stages that TRL's own trainers do not express (each module says why)."""

from .distillation import LogitDistillationConfig, LogitDistillationTrainer, check_teacher_vocabulary
from .reasoning import ReasoningSFTConfig, ReasoningSFTTrainer, skip_thinking

__all__ = [
    "LogitDistillationConfig",
    "LogitDistillationTrainer",
    "ReasoningSFTConfig",
    "ReasoningSFTTrainer",
    "check_teacher_vocabulary",
    "skip_thinking",
]
