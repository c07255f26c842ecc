"""A reward model with TRL's RewardTrainer: a `MiniMindForSequenceClassification` (`num_labels=1`) trained on
preference pairs to score chosen above rejected (`-log sigmoid(r_chosen - r_rejected)`).

The backbone starts from `model_name_or_path` (an SFT checkpoint: its causal-LM weights load into the
classification class, the `score` head starts fresh) or a fresh `preset`. Pairs are upstream's DPO format or the
embedded curriculum's (wrong fact, evasive answer, confidently invented fact about an unknown name); without
`eval_files` the curriculum's held-out pairs are used. After training, the saved folder is loaded back as the
`reward_model` reward (`minimind_hf.rewards`), exactly as GRPO uses it, and its held-out ranking accuracy per pair
kind is written to `ranking_accuracy.json` and returned with the training metrics.

    accelerate launch --config_file accelerate_configs/single_process.yaml recipes/reward.py \
        --config recipes/minimind2-small/reward.yaml
    # CPU run on the embedded curriculum's preference pairs, from the tiny SFT output:
    python recipes/reward.py --config recipes/tiny/reward.yaml
    # then GRPO on its scores:
    python recipes/grpo.py --config recipes/tiny/grpo.yaml --reward_funcs exact_answer outputs/tiny/reward
"""

from dataclasses import dataclass, field
from pathlib import Path

from trl import RewardConfig, RewardTrainer

from minimind_hf.data import dpo_record_to_columns, load_dpo_dataset
from minimind_hf.evaluation import load_eval_records
from minimind_hf.rewards import reward_model
from minimind_hf.rl import ranking_accuracy
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
    write_json,
)


@dataclass
class RewardDataArguments(DataArguments):
    """Preference pairs in upstream's DPO format (e.g. dpo.jsonl) or the curriculum's pairs."""

    curriculum_stage: str = field(default="dpo", metadata={"help": "Curriculum stage used when no files are given."})


def make_parser() -> RecipeParser:
    """The recipe's arguments, in the order `main` takes them (defaults < YAML `--config` < command line)."""
    return RecipeParser((RewardDataArguments, RewardConfig, ModelArguments))


def held_out_files(data_args: RewardDataArguments) -> list:
    """`eval_files`, else (training on the curriculum) the curriculum's held-out pairs, else none."""
    if data_args.eval_files or data_args.dataset_files:
        return list(data_args.eval_files or [])
    from minimind_hf.curriculum import ensure_curriculum

    return [ensure_curriculum(data_args.curriculum_dir, seed=data_args.curriculum_seed)["dpo"]["eval"]]


def main(data_args: RewardDataArguments, training_args: RewardConfig, model_args: ModelArguments) -> dict:
    if model_args.use_peft:
        # A LoRA run would save an adapter without its `score` head, which the `reward_model` reward cannot load.
        raise RecipeError("use_peft: the reward model is trained in full (a MiniMind reward model is small)")
    resume_from = check_output_dir(training_args)
    tokenizer = recipe_tokenizer(model_args)
    train_files, _ = data_args.files(data_args.curriculum_stage)
    eval_files = held_out_files(data_args)
    # Validates every pair (file, line, field) before the model is built.
    train_dataset = load_dpo_dataset(train_files)
    eval_dataset = load_dpo_dataset(eval_files) if eval_files else None
    model = build_model(model_args, tokenizer, seed=training_args.seed, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id  # the score is read at the last non-pad token
    trainer = RewardTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
    )
    train(trainer, resume_from, model_args)
    metrics = finish_run(trainer)
    if eval_files and trainer.is_world_process_zero():
        # The saved folder as GRPO sees it: loaded back through AutoModelForSequenceClassification, scored as a reward.
        pairs = [
            {**dpo_record_to_columns(record), "split": record.get("split")}
            for path in eval_files
            for record in load_eval_records(path)
        ]
        accuracy = ranking_accuracy(reward_model(training_args.output_dir), pairs)
        write_json(Path(training_args.output_dir) / "ranking_accuracy.json", accuracy)
        metrics = {**metrics, **{f"ranking_accuracy/{name}": value for name, value in accuracy.items()}}
    return metrics


if __name__ == "__main__":
    print(main(*make_parser().parse_args_and_config()))
    end_distributed()
