"""White-box logit distillation from a larger teacher (dense or MoE) into a smaller student on SFT dialogues:
`alpha * CE + (1 - alpha) * T^2 * KL(teacher || student)` on the assistant tokens (upstream: alpha 0.5, T 1.5), with
the teacher's logits sliced to the student's vocabulary (`minimind_hf.trainers.LogitDistillationTrainer`; TRL's
distillation trainers are on-policy JSD without the CE term, see there). `alpha: 1.0` trains the same student by
cross-entropy alone, the baseline to compare with. A teacher whose tokenizer differs from the student's stops the run
before anything is written.

    accelerate launch --config_file accelerate_configs/single_process.yaml recipes/distill.py \
        --config recipes/minimind2-small/distill.yaml
    # CPU smoke run on the embedded curriculum: a small fresh student distilled from the tiny SFT output:
    python recipes/distill.py --config recipes/tiny/distill.yaml --teacher_model_name_or_path outputs/tiny/sft \
        --max_steps 5 --output_dir /tmp/distill-smoke
"""

from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoModelForCausalLM

from minimind_hf.chat_templates import training_chat_template
from minimind_hf.data import load_sft_dataset
from minimind_hf.lora import lora_config
from minimind_hf.tokenization import load_tokenizer
from minimind_hf.trainers import LogitDistillationConfig, LogitDistillationTrainer, check_teacher_vocabulary
from minimind_hf.training import (
    DataArguments,
    ModelArguments,
    RecipeError,
    RecipeParser,
    build_model,
    check_output_dir,
    end_distributed,
    finish_run,
    recipe_tokenizer,
    train,
)


@dataclass
class DistillDataArguments(DataArguments):
    """Conversations in upstream's SFT format (e.g. sft_mini_512.jsonl) or the curriculum's SFT dialogues."""

    curriculum_stage: str = field(default="sft", metadata={"help": "Curriculum stage used when no files are given."})


def load_teacher(path: str | None, attn_implementation: str | None = None):
    """The teacher model and its tokenizer (None when its folder has none)."""
    if not path or not (Path(path) / "config.json").is_file():
        raise RecipeError(f"teacher_model_name_or_path: {path!r} is not a model folder (no config.json)")
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    teacher = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    has_tokenizer = (Path(path) / "tokenizer_config.json").is_file()
    return teacher, load_tokenizer(path) if has_tokenizer else None


def make_parser() -> RecipeParser:
    """The recipe's arguments, in the order `main` takes them (defaults < YAML `--config` < command line)."""
    return RecipeParser((DistillDataArguments, LogitDistillationConfig, ModelArguments))


def main(data_args: DistillDataArguments, training_args: LogitDistillationConfig, model_args: ModelArguments) -> dict:
    resume_from = check_output_dir(training_args)
    tokenizer = recipe_tokenizer(model_args)
    train_files, eval_files = data_args.files(data_args.curriculum_stage)
    train_dataset = load_sft_dataset(train_files)
    eval_dataset = load_sft_dataset(eval_files) if eval_files else None
    model = build_model(model_args, tokenizer, seed=training_args.seed)
    teacher, teacher_tokenizer = load_teacher(training_args.teacher_model_name_or_path, model_args.attn_implementation)
    check_teacher_vocabulary(model, teacher, tokenizer, teacher_tokenizer)

    with training_chat_template(tokenizer):
        trainer = LogitDistillationTrainer(
            model=model,
            teacher_model=teacher,
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            peft_config=lora_config(model_args, model),
        )
        train(trainer, resume_from, model_args)
    return finish_run(trainer)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
    end_distributed()
