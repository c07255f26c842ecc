"""The RL stage (recipes/grpo.py on TRL's GRPOTrainer, minimind_hf.rl): every GRPO / CISPO YAML parses, two steps
train on an untrained tiny model with TRL's reward and KL logs, prompts are truncated and their thinking switched
per row as asked, bad rewards stop before the first step, and the effect harness scores what it generates."""

import json

import pytest
import torch
from datasets import Dataset

from minimind_hf.rewards import get_reward_funcs
from minimind_hf.rl import call_rewards, prepare_prompts, reward_report
from minimind_hf.tokenization import load_tokenizer
from minimind_hf.training import RecipeError
from recipes import grpo
from tests.utils import parse_shipped_yaml, shipped_yamls, tiny_model


@pytest.mark.parametrize("path", shipped_yamls({"grpo", "cispo"}))
def test_every_grpo_yaml_parses(path):
    raw, (data_args, training_args, model_args) = parse_shipped_yaml(path, grpo)
    assert training_args.output_dir == raw["output_dir"] and model_args.model_name_or_path
    assert training_args.loss_type == path.stem
    if path.stem == "cispo":
        assert training_args.epsilon_high == 5.0
    assert training_args.num_generations >= 2 and not training_args.use_bias_correction_kl
    get_reward_funcs([r for r in data_args.reward_funcs if "/" not in r])


def grpo_argv(model_dir, out, *extra):
    return [
        "--config", "recipes/tiny/grpo.yaml",
        "--model_name_or_path", str(model_dir),
        "--output_dir", str(out),
        "--max_steps", "2",
        "--num_generations", "4",
        "--per_device_train_batch_size", "8",
        "--max_completion_length", "8",
        "--logging_steps", "1",
        *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("loss", ["grpo", "cispo"])
def test_two_steps_log_reward_and_kl(saved_tiny, tmp_path, loss):
    extra = ["--loss_type", loss] + (["--epsilon_high", "5.0"] if loss == "cispo" else [])
    extra += ["--reward_funcs", "exact_answer", "think_format"]
    grpo.main(*grpo.make_parser().parse_args_and_config(grpo_argv(saved_tiny, tmp_path / "run", *extra)))
    history = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
    steps = [e for e in history if "reward" in e]
    assert len(steps) == 2
    for entry in steps:
        assert {"rewards/exact_answer/mean", "rewards/think_format/mean", "kl", "completions/mean_length"} <= set(
            entry
        )
        assert 0.0 <= entry["rewards/exact_answer/mean"] <= 1.0 and entry["kl"] >= 0.0
    assert (tmp_path / "run" / "model.safetensors").exists()


def test_unknown_reward_and_fresh_model_with_kl_stop_before_writing(saved_tiny, tmp_path):
    with pytest.raises(ValueError, match="unknown reward 'no_such_reward'"):
        grpo.main(*grpo.make_parser().parse_args_and_config(grpo_argv(saved_tiny, tmp_path / "a", "--reward_funcs", "no_such_reward")))  # fmt: skip
    argv = ["--config", "recipes/tiny/grpo.yaml", "--preset", "tiny", "--model_name_or_path", "", "--output_dir"]
    with pytest.raises(RecipeError, match="beta"):
        grpo.main(*grpo.make_parser().parse_args_and_config([*argv, str(tmp_path / "b")]))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_reward_kwargs_from_yaml_or_json_build_the_factory_rewards(tmp_path):
    config = tmp_path / "grpo.yaml"
    config.write_text(
        "reward_funcs: [exact_answer, length_window]\n"
        "reward_kwargs:\n  length_window: {min_chars: 0, max_chars: 2, falloff_chars: 2}\n"
        "output_dir: unused\nbf16: false\n"
    )
    data_args = grpo.make_parser().parse_args_and_config(["--config", str(config)])[0]
    exact, window = grpo.reward_functions(data_args)
    assert window(completions=["ab", "abc", "abcd", ""]) == [1.0, 0.5, 0.0, 1.0]
    argv = ["--config", str(config), "--reward_kwargs", '{"length_window": {"max_chars": 1}}']
    data_args = grpo.make_parser().parse_args_and_config(argv)[0]
    assert grpo.reward_functions(data_args)[1](completions=["a", "ab"]) == [1.0, 1 - 1 / 128]
    for bad, message in (
        ('{"length_window": {"max_char": 1}}', "reward 'length_window'.*max_char"),
        ('{"think_format": {"x": 1}}', "options given for reward"),
        ("{not json", "reward_kwargs: not a JSON object"),
        ('{"length_window": 3}', "reward_kwargs: need a mapping"),
    ):
        argv = ["--config", str(config), "--reward_kwargs", bad]
        with pytest.raises(ValueError, match=message):
            grpo.reward_functions(grpo.make_parser().parse_args_and_config(argv)[0])


def test_a_reward_needing_a_missing_column_stops_before_training(saved_tiny, tmp_path):
    rows = tmp_path / "rl.jsonl"
    rows.write_text(json.dumps({"conversations": [{"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": ""}]}) + "\n")  # fmt: skip
    argv = grpo_argv(saved_tiny, tmp_path / "run", "--dataset_files", str(rows), "--reward_funcs", "tool_call_valid")
    with pytest.raises(ValueError, match="tool_call_valid"):
        grpo.main(*grpo.make_parser().parse_args_and_config(argv))


def rl_rows(n=3):
    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "system", "content": "x " * 50}, {"role": "user", "content": f"{i} + 1?"}],
                "gt": [str(i + 1)],
                "tools": None,
            }
            for i in range(n)
        ]  # fmt: skip
    )


def test_prompts_stay_conversational_unless_a_row_needs_its_own_rendering():
    tokenizer = load_tokenizer()
    assert prepare_prompts(rl_rows(), tokenizer)["prompt"] == rl_rows()["prompt"]
    # render=True (SPO): the same prompts as the chat template writes them, with the run's template kwargs
    rendered = prepare_prompts(rl_rows(), tokenizer, render=True, chat_template_kwargs={"enable_thinking": False})
    expected = [
        tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False, enable_thinking=False)
        for p in rl_rows()["prompt"]
    ]
    assert rendered["prompt"] == expected and all(t.endswith("</think>\n\n") for t in expected)
    cut = prepare_prompts(rl_rows(), tokenizer, max_prompt_length=20)
    for text in cut["prompt"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) <= 20 and text.endswith("<|im_start|>assistant\n")
    thinking = prepare_prompts(rl_rows(40), tokenizer, thinking_ratio=0.5, seed=1)["prompt"]
    opened = [t.endswith("<think>\n") for t in thinking]
    assert 5 < sum(opened) < 35 and all(o or t.endswith("</think>\n\n") for o, t in zip(opened, thinking))
    assert prepare_prompts(rl_rows(40), tokenizer, thinking_ratio=0.5, seed=1)["prompt"] == thinking


def test_the_effect_harness_scores_what_the_model_generates():
    tokenizer = load_tokenizer()
    rows = rl_rows(4)
    rewards = get_reward_funcs(["exact_answer", "repetition_penalty"])
    # hand-made completions: two right, one wrong, one without an answer
    scores = call_rewards(rewards, [dict(r) for r in rows], ["1", "3", "5", ""], tokenizer)
    assert scores["exact_answer"] == [1.0, 0.0, 0.0, 0.0] and scores["repetition_penalty"] == [0.0] * 4
    torch.manual_seed(0)
    report = reward_report(tiny_model(), tokenizer, rows, rewards, seeds=(0, 1), max_new_tokens=4)
    assert report["n"] == 4 and set(report["greedy"]) == {"exact_answer", "repetition_penalty"}
    sampled = report["sampled"]["exact_answer"]
    assert len(sampled["per_seed"]) == 2 and sampled["min"] <= sampled["mean"] <= sampled["max"]
