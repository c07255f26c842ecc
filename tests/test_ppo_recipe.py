"""The PPO recipe (recipes/ppo.py on transformers' Trainer, minimind_hf.ppo's arithmetic): every PPO YAML parses; two
steps train an untrained tiny policy and value model on the curriculum's RL prompts with the reward, KL, loss, clip and
critic logs; the saved folder loads as a causal LM with its value model beside it; the value model takes its own
learning rate; the approximate-KL early stop leaves the rest of a rollout without an update; a run resumes from a
checkpoint; bad settings stop before training."""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from minimind_hf.rewards import get_reward_funcs
from minimind_hf.training import RecipeError
from recipes import ppo
from tests.utils import parse_shipped_yaml, shipped_yamls


@pytest.mark.parametrize("path", shipped_yamls({"ppo"}))
def test_every_ppo_yaml_parses(path):
    raw, (data_args, training_args, model_args) = parse_shipped_yaml(path, ppo)
    assert training_args.output_dir == raw["output_dir"] and model_args.model_name_or_path
    assert training_args.beta > 0 and training_args.steps_per_rollout >= 1
    get_reward_funcs([r for r in data_args.reward_funcs if "/" not in r])


def ppo_argv(model_dir, out, *extra):
    return [
        "--config", "recipes/tiny/ppo.yaml",
        "--model_name_or_path", str(model_dir),
        "--output_dir", str(out),
        "--max_steps", "2",
        "--rollout_batch_size", "4",
        "--per_device_train_batch_size", "2",
        "--max_completion_length", "8",
        "--logging_steps", "1",
        *extra,
    ]  # fmt: skip


def run(argv):
    return ppo.main(*ppo.make_parser().parse_args_and_config(argv))


def history(out):
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


def test_two_steps_log_rewards_kl_losses_and_save_policy_and_value_model(saved_tiny, tmp_path):
    out = tmp_path / "run"
    extra = ["--reward_funcs", "exact_answer", "think_format", "--reward_weights", "0.5", "0.5"]
    run(ppo_argv(saved_tiny, out, *extra))
    steps = [e for e in history(out) if "loss" in e and "policy_loss" in e]
    assert len(steps) == 2
    # the first step starts the rollout: its reward and critic statistics are logged with it
    keys = {
        "reward", "rewards/exact_answer/mean", "rewards/think_format/mean", "explained_variance", "value_mean",
        "completions/mean_length",
    }  # fmt: skip
    assert keys <= set(steps[0])
    for entry in steps:
        assert {"policy_loss", "value_loss", "kl", "clip_fraction", "value_clip_fraction", "approx_kl"} <= set(entry)
        assert entry["kl"] >= 0.0 and entry["early_stopped"] == 0.0 and math.isfinite(entry["loss"])
    assert 1 <= steps[0]["completions/mean_length"] <= 8
    # the first minibatch of a rollout meets the policy that sampled it: ratio 1, nothing clipped
    assert steps[0]["approx_kl"] == pytest.approx(0.0, abs=1e-10) and steps[0]["clip_fraction"] == 0.0
    policy = AutoModelForCausalLM.from_pretrained(out)
    value = AutoModelForSequenceClassification.from_pretrained(out / ppo.VALUE_DIR)
    assert value.config.num_labels == 1
    start = AutoModelForCausalLM.from_pretrained(saved_tiny)
    moved = [n for n, p in policy.named_parameters() if not torch.equal(p, start.get_parameter(n))]
    assert moved, "two PPO steps left the policy unchanged"


def test_the_value_model_has_its_own_learning_rate(saved_tiny, tmp_path):
    argv = ppo_argv(saved_tiny, tmp_path / "run", "--learning_rate", "1e-5", "--value_learning_rate", "3e-4")
    data_args, training_args, model_args = ppo.make_parser().parse_args_and_config(argv)
    tokenizer = ppo.recipe_tokenizer(model_args)
    funcs, dataset, _ = ppo.rewards_and_prompts(data_args, training_args, tokenizer, render=True)
    policy = ppo.build_model(model_args, tokenizer)
    value = ppo.build_model(model_args, tokenizer, num_labels=1)
    trainer = ppo.PPOTrainer(
        model=ppo.PolicyAndValue(policy, value),
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        reward_funcs=funcs,
    )
    optimizer = trainer.create_optimizer()
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert {lr_of[id(p)] for p in policy.parameters()} == {1e-5}
    assert {lr_of[id(p)] for p in value.parameters()} == {3e-4}
    assert len(lr_of) == len({id(p) for p in trainer.model.parameters()})  # every parameter, once
    # the value model starts from the policy's backbone with a fresh one-output head
    assert torch.equal(value.model.embed_tokens.weight, policy.model.embed_tokens.weight)


def test_the_early_stop_leaves_the_rest_of_a_rollout_without_an_update(saved_tiny, tmp_path):
    out = tmp_path / "run"
    # a rollout of 4 prompts in minibatches of 2 over 2 epochs: 4 steps; a large learning rate moves the policy after
    # the first update, so every later minibatch of the rollout exceeds the tiny KL limit
    extra = ["--max_steps", "4", "--learning_rate", "1e-2", "--early_stop_kl", "1e-12", "--save_strategy", "steps",
             "--save_steps", "1"]  # fmt: skip
    run(ppo_argv(saved_tiny, out, *extra))
    steps = [e for e in history(out) if "loss" in e]
    assert [e["early_stopped"] for e in steps] == [0.0, 1.0, 1.0, 1.0]
    assert steps[1]["approx_kl"] > 1e-12
    weights = [AutoModelForCausalLM.from_pretrained(out / f"checkpoint-{s}").state_dict() for s in (1, 2, 3, 4)]
    for later in weights[1:]:
        assert all(torch.equal(later[k], weights[0][k]) for k in weights[0]), "a stopped step changed the policy"


def test_a_run_resumes_from_its_checkpoint(saved_tiny, tmp_path):
    out = tmp_path / "run"
    run(ppo_argv(saved_tiny, out, "--save_strategy", "steps", "--save_steps", "1"))
    assert (out / "checkpoint-1" / ppo.VALUE_DIR / "config.json").is_file()
    run(ppo_argv(saved_tiny, out, "--max_steps", "3", "--resume_from_checkpoint", str(out / "checkpoint-2")))
    steps = [e["step"] for e in history(out) if "loss" in e]
    assert steps == [1, 2, 3]


def test_bad_settings_stop_before_training(saved_tiny, tmp_path):
    with pytest.raises(RecipeError, match="multiple of per_device_train_batch_size"):
        ppo.make_parser().parse_args_and_config(ppo_argv(saved_tiny, tmp_path / "a", "--rollout_batch_size", "3"))
    with pytest.raises(ValueError, match="unknown reward 'no_such_reward'"):
        run(ppo_argv(saved_tiny, tmp_path / "a", "--reward_funcs", "no_such_reward"))
    with pytest.raises(RecipeError, match="no evaluation loop"):
        run(ppo_argv(saved_tiny, tmp_path / "a", "--eval_files", "x"))
    with pytest.raises(RecipeError, match="more than the"):
        run(
            ppo_argv(
                saved_tiny, tmp_path / "a", "--rollout_batch_size", "100000", "--per_device_train_batch_size", "1"
            )
        )
    assert not any((tmp_path / "a").glob("checkpoint-*"))
