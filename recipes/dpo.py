"""Direct preference optimisation with TRL's DPOTrainer, from an SFT checkpoint.

The reference model is the policy as it starts: a frozen copy of the loaded weights (never reloaded from
`config._name_or_path`, which names nothing for a model built in memory); under LoRA (`use_peft: true`) no copy is
kept and TRL disables the adapter to score the reference. On MoE models the router's load-balancing loss is added
(TRL reads `router_aux_loss_coef` from the config). Records whose chosen and rejected prompts differ stop the run
before anything is written.

    accelerate launch --config_file accelerate_configs/single_process.yaml recipes/dpo.py \
        --config recipes/minimind2-small/dpo.yaml
    # CPU smoke run on the embedded curriculum's preference pairs, from an SFT output:
    python recipes/dpo.py --config recipes/tiny/dpo.yaml --model_name_or_path outputs/tiny/sft \
        --max_steps 5 --output_dir /tmp/dpo-smoke
"""

import copy
from dataclasses import dataclass, field

from trl import DPOConfig, DPOTrainer

from minimind_hf.data import load_dpo_dataset
from minimind_hf.lora import lora_config
from minimind_hf.trainers import compact_trainer_heads
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
class DPODataArguments(DataArguments):
    """Preference pairs in upstream's DPO format (e.g. dpo.jsonl) or the curriculum's pairs."""

    curriculum_stage: str = field(default="dpo", metadata={"help": "Curriculum stage used when no files are given."})


def make_parser() -> RecipeParser:
    """The recipe's arguments, in the order `main` takes them (defaults < YAML `--config` < command line)."""
    return RecipeParser((DPODataArguments, DPOConfig, ModelArguments))


def main(data_args: DPODataArguments, training_args: DPOConfig, model_args: ModelArguments) -> dict:
    resume_from = check_output_dir(training_args)
    tokenizer = recipe_tokenizer(model_args)
    train_files, eval_files = data_args.files(data_args.curriculum_stage)
    # Validates every pair (including that chosen and rejected share their prompt) before training starts.
    train_dataset = load_dpo_dataset(train_files)
    eval_dataset = load_dpo_dataset(eval_files) if eval_files else None
    model = build_model(model_args, tokenizer, seed=training_args.seed)

    peft_config = lora_config(model_args, model)
    # Without LoRA the reference is an exact frozen copy; TRL would otherwise reload it from `config._name_or_path`.
    # With LoRA, or when the reference log-probs are precomputed, TRL needs no second model.
    needs_copy = peft_config is None and not training_args.precompute_ref_log_probs
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if needs_copy else None
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    compact_trainer_heads(trainer)  # TRL's fused head on the completion positions only (as on GPU)
    train(trainer, resume_from, model_args)
    return finish_run(trainer)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
    end_distributed()
