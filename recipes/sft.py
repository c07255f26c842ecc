"""Supervised fine-tuning with TRL's SFTTrainer: loss on the assistant turns only (all of them, each through its
`<|im_end|>`), multi-turn, tool calls and think blocks, with upstream's augmentations as seeded `dataset.map` steps.
TRL's fused LM head runs on the target positions only (`minimind_hf.trainers.compact_trainer_heads`; TRL off Triton
projects every position): the same loss, 2.5-3.6x the real tokens/s on CPU (`benchmarks/sft_throughput.py`). `replay_docs` mixes that many pretraining documents into the SFT data (loss on all their tokens, as pretraining
trains): fine-tuning on dialogues about some entities alone makes a small model forget facts only pretraining taught,
and answer about those entities with the names SFT repeats (see the quickstart's `pretrain_only` split).

    accelerate launch --config_file accelerate_configs/single_process.yaml recipes/sft.py \
        --config recipes/minimind2-small/sft.yaml
    # CPU smoke run on the embedded curriculum, from a pretraining output:
    python recipes/sft.py --config recipes/tiny/sft.yaml --model_name_or_path outputs/tiny/pretrain \
        --max_steps 5 --output_dir /tmp/sft-smoke
"""

import logging
from dataclasses import dataclass, field

from datasets import concatenate_datasets
from trl import SFTConfig, SFTTrainer

from minimind_hf.chat_templates import training_chat_template
from minimind_hf.curriculum import ensure_curriculum
from minimind_hf.data import add_random_system_prompt, load_pretrain_dataset, load_sft_dataset, strip_empty_think
from minimind_hf.lora import lora_config
from minimind_hf.trainers import SharedPrefixSFTTrainer, compact_trainer_heads
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

logger = logging.getLogger(__name__)


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
    replay_docs: int = field(
        default=0,
        metadata={
            "help": "Pretraining documents mixed into SFT (drawn with `augmentation_seed`), loss on every token as in "
            "pretraining: keeps what only pretraining taught (0: none)."
        },
    )
    shared_prefix: bool = field(
        default=False,
        metadata={
            "help": "Dialogues of a batch that open with the same tokens (a system prompt with tool schemas) feed them "
            "once, with a mask that keeps every dialogue's loss and gradients as in its own row "
            "(minimind_hf.packing.SharedPrefixCollator)."
        },
    )
    replay_files: list[str] | None = field(
        default=None,
        metadata={
            "help": "Pretraining JSONL to replay from (default: the curriculum's pretraining training split when the "
            "SFT data is the curriculum's; with dataset_files and no replay_files nothing is replayed)."
        },
    )

    def replay_dataset(self, tokenizer, max_length: int | None):
        """`replay_docs` pretraining documents, each `bos + text + eos` as the pretraining recipe trains, tokenized to
        `input_ids` and `labels` (every token) and cut to `max_length`; None without replay."""
        if self.replay_docs <= 0:
            return None
        files = self.replay_files
        if not files and self.dataset_files:
            logger.warning(
                "replay_docs=%d but no replay_files for the given dataset_files: nothing is replayed", self.replay_docs
            )
            return None
        files = files or [ensure_curriculum(self.curriculum_dir, seed=self.curriculum_seed)["pretrain"]["train"]]
        docs = load_pretrain_dataset(files, bos_token=tokenizer.bos_token)
        if self.replay_docs > len(docs):
            raise RecipeError(f"replay_docs={self.replay_docs}, but {', '.join(map(str, files))} hold {len(docs)}")
        docs = docs.shuffle(seed=self.augmentation_seed).select(range(self.replay_docs))

        def tokenize(row):
            ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = ids[:max_length] if max_length else ids
            return {"input_ids": ids, "labels": list(ids)}

        return docs.map(tokenize, remove_columns=docs.column_names)


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
    if data_args.replay_docs > 0 and training_args.packing:
        raise RecipeError("replay_docs mixes unpacked pretraining rows into SFT: set packing: false to replay")
    if data_args.shared_prefix and (training_args.packing or training_args.padding_free):
        raise RecipeError("shared_prefix builds its own rows: set packing: false and padding_free: false")
    resume_from = check_output_dir(training_args)
    tokenizer = recipe_tokenizer(model_args)
    train_dataset, eval_dataset = load_datasets(data_args)
    replay = data_args.replay_dataset(tokenizer, training_args.max_length)
    model = build_model(model_args, tokenizer, seed=training_args.seed)
    attention = getattr(model.config, "_attn_implementation", None)
    if data_args.shared_prefix and attention not in ("sdpa", "eager"):
        raise RecipeError(
            f"shared_prefix needs a 4D attention mask, which sdpa and eager take; this model uses {attention}"
        )

    # The training template renders the same text but marks assistant spans for `assistant_only_loss`.
    with training_chat_template(tokenizer):
        trainer = (SharedPrefixSFTTrainer if data_args.shared_prefix else SFTTrainer)(
            model=model,
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            peft_config=lora_config(model_args, model),
        )
        compact_trainer_heads(trainer)  # TRL's fused LM head on the target positions only, on CPU too
        if replay is not None:  # beside TRL's tokenized dialogues; the Trainer's sampler shuffles them together
            chat = trainer.train_dataset.select_columns(["input_ids", "labels"])
            trainer.train_dataset = concatenate_datasets([chat, replay.cast(chat.features)])
        train(trainer, resume_from, model_args)
    return finish_run(trainer)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
    end_distributed()
