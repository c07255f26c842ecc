"""The reward model (recipes/reward.py on TRL's RewardTrainer): every reward YAML parses, two steps from an untrained
tiny model save a folder that AutoModelForSequenceClassification loads and the `reward_model` reward scores, the
held-out ranking accuracy is written per pair kind, and the ranking measure itself is checked by hand."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from minimind_hf.rewards import get_reward_funcs
from minimind_hf.rl import ranking_accuracy
from minimind_hf.tokenization import load_tokenizer
from minimind_hf.training import RecipeError
from recipes import reward
from tests.utils import parse_shipped_yaml, shipped_yamls, tiny_model, write_jsonl


@pytest.mark.parametrize("path", shipped_yamls({"reward"}))
def test_every_reward_yaml_parses(path):
    raw, (data_args, training_args, model_args) = parse_shipped_yaml(path, reward)
    assert training_args.output_dir == raw["output_dir"] and model_args.model_name_or_path.endswith("/sft")
    assert not training_args.activation_checkpointing and not model_args.use_peft


def test_ranking_accuracy_by_hand():
    # A reward that scores a completion by its length: the longer answer wins.
    def by_length(prompts, completions, **kwargs):
        return [float(len(c[0]["content"])) for c in completions]

    def pair(chosen, rejected, split):
        user = [{"role": "user", "content": "q"}]
        return {
            "prompt": user,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "split": split,
        }

    pairs = [pair("long answer", "short", "a"), pair("x", "longer", "a"), pair("same", "same", "b")]
    result = ranking_accuracy(by_length, pairs)
    # a: one win of two; b: a tie is not a win; margins 6, -5, 0.
    assert result == {"all": 1 / 3, "a": 0.5, "b": 0.0, "margin": pytest.approx(1 / 3)}
    with pytest.raises(ValueError, match="no preference pairs"):
        ranking_accuracy(by_length, [])


def reward_argv(model_dir, out, *extra):
    return [
        "--config", "recipes/tiny/reward.yaml",
        "--model_name_or_path", str(model_dir),
        "--output_dir", str(out),
        "--max_steps", "2",
        "--per_device_train_batch_size", "4",
        "--logging_steps", "1",
        *extra,
    ]  # fmt: skip


def test_two_steps_save_a_reward_model_that_the_reward_scores(saved_tiny, tmp_path):
    out = tmp_path / "rm"
    metrics = reward.main(*reward.make_parser().parse_args_and_config(reward_argv(saved_tiny, out)))
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [e for e in history if "loss" in e]
    assert len(steps) == 2 and all({"accuracy", "margin"} <= set(e) for e in steps)

    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(model).__name__ == "MiniMindForSequenceClassification" and model.config.num_labels == 1
    # The backbone came from the causal-LM checkpoint: two Adam steps at lr 1e-4 move each weight by at most ~2e-4,
    # a fresh draw (another seed) differs everywhere.
    source, other = tiny_model().model.embed_tokens.weight, tiny_model(seed=1).model.embed_tokens.weight
    assert (model.model.embed_tokens.weight - source).abs().max() < 5e-4
    assert (other - source).abs().max() > 1e-2

    accuracy = json.loads((out / "ranking_accuracy.json").read_text())
    assert set(accuracy) == {"all", "wrong_fact", "evasive", "unknown_entity", "margin"}
    assert all(0.0 <= accuracy[k] <= 1.0 for k in ("all", "wrong_fact", "evasive", "unknown_entity"))
    assert metrics["ranking_accuracy/all"] == accuracy["all"]

    # The folder as a GRPO reward, by path: one float per completion, equal to the model's own score.
    (fn,) = get_reward_funcs([str(out)])
    prompt = [{"role": "user", "content": "Where was Ada born?"}]
    completion = [{"role": "assistant", "content": "Ada was born in Lima."}]
    (score,) = fn(prompts=[prompt], completions=[completion])
    tokenizer = load_tokenizer(out)
    ids = tokenizer(tokenizer.apply_chat_template(prompt + completion, tokenize=False), return_tensors="pt")
    with torch.no_grad():
        assert score == pytest.approx(model(**ids).logits[0, 0].item(), abs=1e-5)


def test_bad_input_stops_before_writing(saved_tiny, tmp_path):
    bad = write_jsonl(tmp_path / "pairs.jsonl", [{"chosen": [{"role": "user", "content": "hi"}], "rejected": []}])
    with pytest.raises(ValueError, match="pairs.jsonl:1"):
        reward.main(*reward.make_parser().parse_args_and_config(reward_argv(saved_tiny, tmp_path / "a", "--dataset_files", str(bad))))  # fmt: skip
    with pytest.raises(RecipeError, match="use_peft"):
        reward.main(*reward.make_parser().parse_args_and_config(reward_argv(saved_tiny, tmp_path / "b", "--use_peft", "true")))  # fmt: skip
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
