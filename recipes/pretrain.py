"""Pretrain MiniMind from scratch (or continue pretraining) on raw text with TRL's SFTTrainer (through
`minimind_hf.trainers.PretrainTrainer`, which keeps the model's own loss: twice as fast on CPU, see its docstring).

Each document is `<|im_start|> text <|im_end|>`, as upstream trains. Documents are packed best-fit-decreasing into
rows of `max_length` tokens (no padding waste, unlike upstream's padded batches); position_ids restart at every
document, which keeps documents from attending to each other (see `minimind_hf/packing.py`). With
`attn_implementation: flash_attention_2` on a GPU, `packing: true` hands packing to TRL's padding-free path instead.

    accelerate launch --config_file accelerate_configs/single_process.yaml recipes/pretrain.py \
        --config recipes/minimind2-small/pretrain.yaml
    # CPU smoke run on the embedded curriculum:
    python recipes/pretrain.py --config recipes/tiny/pretrain.yaml --max_steps 5 --output_dir /tmp/pretrain-smoke
"""

from dataclasses import dataclass

from trl import SFTConfig

from minimind_hf.data import load_pretrain_dataset
from minimind_hf.lora import lora_config
from minimind_hf.packing import PackedCollator, tokenize_and_pack
from minimind_hf.trainers import PretrainTrainer
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
class PretrainDataArguments(DataArguments):
    """Pretraining text: upstream `{"text": ...}` JSONL (e.g. pretrain_hq.jsonl) or the curriculum's prose."""


def make_parser() -> RecipeParser:
    """The recipe's arguments, in the order `main` takes them (defaults < YAML `--config` < command line)."""
    return RecipeParser((PretrainDataArguments, SFTConfig, ModelArguments))


def main(data_args: PretrainDataArguments, training_args: SFTConfig, model_args: ModelArguments) -> dict:
    resume_from = check_output_dir(training_args)
    tokenizer = recipe_tokenizer(model_args)
    train_files, eval_files = data_args.files("pretrain")
    # Validates every line before any training starts.
    train_dataset = load_pretrain_dataset(train_files, bos_token=tokenizer.bos_token)
    eval_dataset = load_pretrain_dataset(eval_files, bos_token=tokenizer.bos_token) if eval_files else None
    model = build_model(model_args, tokenizer, seed=training_args.seed)

    collator = None
    if not training_args.packing:

        def pack(dataset):
            return tokenize_and_pack(
                dataset, tokenizer, training_args.max_length, num_proc=training_args.dataset_num_proc
            )

        train_dataset = pack(train_dataset)
        eval_dataset = pack(eval_dataset) if eval_dataset is not None else None
        training_args.dataset_kwargs = {"skip_prepare_dataset": True}
        collator = PackedCollator(pad_token_id=tokenizer.pad_token_id)
    trainer = PretrainTrainer(
        model=model,
        args=training_args,
        data_collator=collator,
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
