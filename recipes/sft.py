"""Supervised fine-tuning with TRL's SFTTrainer: loss on the assistant turns only (all of them, each through its
`<|im_end|>`), multi-turn, tool calls and think blocks, with upstream's augmentations as seeded `dataset.map` steps.

    accelerate launch --config_file accelerate_configs/single_process.yaml recipes/sft.py \
        --config recipes/minimind2-small/sft.yaml
    # CPU smoke run on the embedded curriculum, from a pretraining output:
    python recipes/sft.py --config recipes/tiny/sft.yaml --model_name_or_path outputs/tiny/pretrain \
        --max_steps 5 --output_dir /tmp/sft-smoke
"""

from dataclasses import dataclass, field

from trl import SFTConfig, SFTTrainer

from minimind_hf.chat_templates import training_chat_template
from minimind_hf.data import add_random_system_prompt, load_sft_dataset, strip_empty_think
from minimind_hf.lora import lora_config
from minimind_hf.training import (
    DataArguments,
    ModelArguments,
    RecipeParser,
    build_model,
    check_output_dir,
    end_distributed,
    finish_run,
    recipe_tokenizer,
)


@dataclass
class SFTDataArguments(DataArguments):
    """Conversations in upstream's SFT format (e.g. sft_mini_512.jsonl) or the curriculum's dialogues."""

    random_system_prompt_p: float = field(
        default=0.2, metadata={"help": "Probability of prepending a random system prompt (upstream: 0.2)."}
    )
    strip_empty_think_p: float = field(
        default=0.95, metadata={"help": "Probability of dropping an empty think block (MiniMind2: 0.95)."}
    )
    augmentation_seed: int = field(default=0, metadata={"help": "Seed of the augmentation maps."})
    curriculum_stage: str = field(default="sft", metadata={"help": "Curriculum stage used when no files are given."})


def load_datasets(data_args: SFTDataArguments):
    train_files, eval_files = data_args.files(data_args.curriculum_stage)
    train = load_sft_dataset(train_files)
    train = add_random_system_prompt(train, p=data_args.random_system_prompt_p, seed=data_args.augmentation_seed)
    train = strip_empty_think(train, p=data_args.strip_empty_think_p, seed=data_args.augmentation_seed)
    return train, load_sft_dataset(eval_files) if eval_files else None


def make_parser() -> RecipeParser:
    """The recipe's arguments, in the order `main` takes them (defaults < YAML `--config` < command line)."""
    return RecipeParser((SFTDataArguments, SFTConfig, ModelArguments))


def main(data_args: SFTDataArguments, training_args: SFTConfig, model_args: ModelArguments) -> dict:
    resume_from = check_output_dir(training_args)
    tokenizer = recipe_tokenizer(model_args)
    train_dataset, eval_dataset = load_datasets(data_args)
    model = build_model(model_args, tokenizer, seed=training_args.seed)

    # The training template renders the same text but marks assistant spans for `assistant_only_loss`.
    with training_chat_template(tokenizer):
        trainer = SFTTrainer(
            model=model,
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            peft_config=lora_config(model_args, model),
        )
        trainer.train(resume_from_checkpoint=resume_from)
    return finish_run(trainer)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
    end_distributed()
