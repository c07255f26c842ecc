"""Reasoning distillation: SFT on `<think>\\n...\\n</think>\\n<answer>\\n...\\n</answer>` traces (e.g. upstream's
r1_mix_1024.jsonl) with loss weight `tag_weight` (upstream: 10) on the exact tag tokens
(`minimind_hf.trainers.ReasoningSFTTrainer`). A fraction `skip_thinking_p` of the traces gets an empty think block,
so that thinking can be switched at inference through the chat template:
`apply_chat_template(..., add_generation_prompt=True, enable_thinking=True)` opens `<think>\\n`, `False` writes the
empty block and the model answers directly.

    accelerate launch --config_file accelerate_configs/single_process.yaml recipes/reason.py \
        --config recipes/minimind2-small/reason.yaml
    # CPU smoke run on the embedded curriculum's arithmetic traces, from an SFT output:
    python recipes/reason.py --config recipes/tiny/reason.yaml --model_name_or_path outputs/tiny/sft \
        --max_steps 5 --output_dir /tmp/reason-smoke
"""

from dataclasses import dataclass, field

from minimind_hf.chat_templates import training_chat_template
from minimind_hf.data import add_random_system_prompt, load_reasoning_dataset, skip_thinking
from minimind_hf.lora import lora_config
from minimind_hf.trainers import ReasoningSFTConfig, ReasoningSFTTrainer, compact_trainer_heads
from minimind_hf.training import (
    DataArguments,
    ModelArguments,
    RecipeParser,
    build_model,
    check_output_dir,
    end_distributed,
    finish_run,
    recipe_tokenizer,
    train,
)


@dataclass
class ReasonDataArguments(DataArguments):
    """Reasoning traces: SFT format whose assistant turns hold think/answer blocks, or the curriculum's traces."""

    skip_thinking_p: float = field(
        default=0.2,
        metadata={"help": "Probability of emptying a trace's think block, so thinking can be switched off."},
    )
    random_system_prompt_p: float = field(
        default=0.2, metadata={"help": "Probability of prepending a random system prompt (upstream: 0.2)."}
    )
    augmentation_seed: int = field(default=0, metadata={"help": "Seed of the augmentation maps."})
    curriculum_stage: str = field(
        default="reasoning", metadata={"help": "Curriculum stage used when no files are given."}
    )


def load_datasets(data_args: ReasonDataArguments):
    train_files, eval_files = data_args.files(data_args.curriculum_stage)
    # Every assistant turn must hold a think block (or reasoning_content); a bad line stops here.
    train = load_reasoning_dataset(train_files)
    train = add_random_system_prompt(train, p=data_args.random_system_prompt_p, seed=data_args.augmentation_seed)
    train = skip_thinking(train, p=data_args.skip_thinking_p, seed=data_args.augmentation_seed)
    return train, load_reasoning_dataset(eval_files) if eval_files else None


def make_parser() -> RecipeParser:
    """The recipe's arguments, in the order `main` takes them (defaults < YAML `--config` < command line)."""
    return RecipeParser((ReasonDataArguments, ReasoningSFTConfig, ModelArguments))


def main(data_args: ReasonDataArguments, training_args: ReasoningSFTConfig, model_args: ModelArguments) -> dict:
    resume_from = check_output_dir(training_args)
    tokenizer = recipe_tokenizer(model_args)
    train_dataset, eval_dataset = load_datasets(data_args)
    model = build_model(model_args, tokenizer, seed=training_args.seed)

    with training_chat_template(tokenizer):
        trainer = ReasoningSFTTrainer(
            model=model,
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            peft_config=lora_config(model_args, model),
        )
        compact_trainer_heads(trainer)  # TRL's fused head on the answer positions only
        train(trainer, resume_from, model_args)
    return finish_run(trainer)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
    end_distributed()
