"""LoRA fine-tuning with PEFT over an SFT checkpoint, through TRL's SFTTrainer (assistant-only loss, as SFT; TRL's
fused LM head on the target positions only, `minimind_hf.trainers.compact_trainer_heads`). The output
folder holds the adapter (`adapter_model.safetensors`, `adapter_config.json`) and the tokenizer; merge it into a plain
MiniMind folder with `recipes/merge_lora.py`. By default every attention and MLP projection is adapted, experts
included; the MoE router never is. Trainable and total parameter counts go to `train_results.json`.

`replay_samples` mixes general SFT dialogues into a small behaviour set such as the identity set (upstream trains on
the identity set alone, which teaches a small model to answer every question with its name).

    accelerate launch --config_file accelerate_configs/single_process.yaml recipes/lora.py \
        --config recipes/minimind2-small/lora.yaml
    python recipes/merge_lora.py --adapter_path outputs/minimind2-small/lora \
        --output_dir outputs/minimind2-small/lora-merged
    # CPU smoke run on the embedded curriculum's identity set, from an SFT output:
    python recipes/lora.py --config recipes/tiny/lora.yaml --model_name_or_path outputs/tiny/sft \
        --max_steps 5 --output_dir /tmp/lora-smoke
"""

from dataclasses import dataclass, field

from trl import SFTConfig, SFTTrainer

from minimind_hf.chat_templates import training_chat_template
from minimind_hf.curriculum import ensure_curriculum
from minimind_hf.data import add_random_system_prompt, load_sft_dataset
from minimind_hf.lora import add_replay, count_parameters, lora_config
from minimind_hf.trainers import compact_trainer_heads
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
class LoraDataArguments(DataArguments):
    """Conversations in upstream's SFT format (e.g. lora_identity.jsonl) or the curriculum's identity set."""

    random_system_prompt_p: float = field(
        default=0.0,
        metadata={"help": "Probability of a random system prompt (off: several of them name the old identity)."},
    )
    replay_samples: int = field(
        default=0,
        metadata={
            "help": "General SFT conversations mixed in so the adapter learns when the new behaviour applies (0: the "
            "training files alone, as upstream)."
        },
    )
    replay_files: list[str] | None = field(
        default=None, metadata={"help": "Where replay conversations come from (default: the curriculum's SFT set)."}
    )
    replay_exclude: list[str] | None = field(
        default=None, metadata={"help": "Replay conversations mentioning any of these strings are left out."}
    )
    augmentation_seed: int = field(default=0, metadata={"help": "Seed of the augmentation and replay draws."})
    curriculum_stage: str = field(
        default="lora_identity", metadata={"help": "Curriculum stage used when no files are given."}
    )


def load_datasets(data_args: LoraDataArguments):
    curriculum = None
    if not data_args.dataset_files or (data_args.replay_samples and not data_args.replay_files):
        curriculum = ensure_curriculum(data_args.curriculum_dir, seed=data_args.curriculum_seed)
    if data_args.dataset_files:
        train_files, eval_files = data_args.dataset_files, data_args.eval_files
    else:
        train_files, eval_files = [curriculum[data_args.curriculum_stage]["train"]], data_args.eval_files
    train = load_sft_dataset(train_files)
    if data_args.replay_samples:
        replay = load_sft_dataset(data_args.replay_files or [curriculum["sft"]["train"]])
        train = add_replay(
            train, replay, data_args.replay_samples, data_args.replay_exclude or (), data_args.augmentation_seed
        )
    train = add_random_system_prompt(train, p=data_args.random_system_prompt_p, seed=data_args.augmentation_seed)
    return train, load_sft_dataset(eval_files) if eval_files else None


@dataclass
class LoraModelArguments(ModelArguments):
    """As every recipe's model arguments, with `use_peft` on: this recipe trains an adapter."""

    use_peft: bool = field(default=True, metadata={"help": "Train a LoRA adapter (this recipe's purpose)."})


def make_parser() -> RecipeParser:
    """The recipe's arguments, in the order `main` takes them (defaults < YAML `--config` < command line)."""
    return RecipeParser((LoraDataArguments, SFTConfig, LoraModelArguments))


def main(data_args: LoraDataArguments, training_args: SFTConfig, model_args: LoraModelArguments) -> dict:
    resume_from = check_output_dir(training_args)
    tokenizer = recipe_tokenizer(model_args)
    train_dataset, eval_dataset = load_datasets(data_args)
    model = build_model(model_args, tokenizer, seed=training_args.seed)
    if not model_args.use_peft:
        raise RecipeError("use_peft: the LoRA recipe trains an adapter; recipes/sft.py fine-tunes every weight")
    peft_config = lora_config(model_args, model)

    with training_chat_template(tokenizer):
        trainer = SFTTrainer(
            model=model,
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        compact_trainer_heads(trainer)  # TRL's fused LM head on the target positions only, on CPU too
        trainable, total = count_parameters(trainer.model)
        train(trainer, resume_from, model_args)
    metrics = {**finish_run(trainer), "trainable_params": trainable, "total_params": total}
    trainer.save_metrics("train", metrics, combined=False)
    return metrics


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
    end_distributed()
