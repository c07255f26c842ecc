"""The SPO recipe (recipes/spo.py on transformers' Trainer, minimind_hf.spo's tracker): every SPO YAML parses, two
steps train an untrained tiny model on the curriculum's RL prompts with the reward, advantage, KL and tracker logs,
the tracker is saved with one entry per visited prompt, the loss matches a hand computation, and a bad reward stops
before training."""

import json
import math

import pytest
import torch

from minimind_hf.rewards import get_reward_funcs
from minimind_hf.trainers.rollout import completion_mask
from minimind_hf.training import RecipeError
from recipes import spo
from tests.utils import parse_shipped_yaml, shipped_yamls


@pytest.mark.parametrize("path", shipped_yamls({"spo"}))
def test_every_spo_yaml_parses(path):
    raw, (data_args, training_args, model_args) = parse_shipped_yaml(path, spo)
    assert training_args.output_dir == raw["output_dir"] and model_args.model_name_or_path
    assert training_args.beta > 0 and training_args.reward_max > training_args.reward_min
    get_reward_funcs([r for r in data_args.reward_funcs if "/" not in r])


def spo_argv(model_dir, out, *extra):
    return [
        "--config", "recipes/tiny/spo.yaml",
        "--model_name_or_path", str(model_dir),
        "--output_dir", str(out),
        "--max_steps", "2",
        "--per_device_train_batch_size", "4",
        "--max_completion_length", "8",
        "--logging_steps", "1",
        *extra,
    ]  # fmt: skip


def test_two_steps_log_rewards_advantages_kl_and_save_the_tracker(saved_tiny, tmp_path):
    extra = ["--reward_funcs", "exact_answer", "think_format", "--reward_weights", "0.5", "0.5"]
    spo.main(*spo.make_parser().parse_args_and_config(spo_argv(saved_tiny, tmp_path / "run", *extra)))
    history = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
    steps = [e for e in history if "reward" in e]
    assert len(steps) == 2
    keys = {
        "loss", "reward", "rewards/exact_answer/mean", "rewards/think_format/mean", "advantage/raw_mean",
        "advantage/raw_std", "kl", "tracker/value_mean", "tracker/divergence", "tracker/rho", "completions/mean_length",
    }  # fmt: skip
    for entry in steps:
        assert keys <= set(entry)
        assert 0.0 <= entry["reward"] <= 1.0 and entry["kl"] >= 0.0 and 0.0 < entry["tracker/value_mean"] < 1.0
        assert 1 <= entry["completions/mean_length"] <= 8 and math.isfinite(entry["loss"])
    assert (tmp_path / "run" / "model.safetensors").exists()
    tracker = json.loads((tmp_path / "run" / spo.TRACKER_FILE).read_text())
    ids = [pid for pid, *_ in tracker["prompts"]]
    # 2 steps x 4 prompts drawn without replacement within a step: 5 to 8 distinct prompts, one entry each
    assert len(ids) == len(set(ids)) and 5 <= len(ids) <= 8
    assert sum(visits for *_, visits in tracker["prompts"]) == 8
    assert tracker["config"]["rho_max"] == 0.96


def test_loss_matches_a_hand_computation():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -3.0, -1.0]])
    ref_logp = torch.tensor([[-1.5, -2.0, -9.0], [0.0, -2.0, -1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    advantages = torch.tensor([1.0, -0.5], dtype=torch.float64)
    loss, stats = spo.spo_loss(logp, ref_logp, advantages, mask, beta=0.1)

    def k3(lp, ref):
        return math.exp(ref - lp) - (ref - lp) - 1

    counted = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    adv = [1.0, -0.5]
    pg = [-adv[b] * logp[b, t].item() for b, t in counted]
    kl = [k3(logp[b, t].item(), ref_logp[b, t].item()) for b, t in counted]
    expected = sum(p + 0.1 * k for p, k in zip(pg, kl)) / len(counted)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats["kl"] == pytest.approx(sum(kl) / len(kl), rel=1e-6)
    no_ref, no_stats = spo.spo_loss(logp, None, advantages, mask, beta=0.1)
    assert no_ref.item() == pytest.approx(sum(pg) / len(pg), rel=1e-6) and "kl" not in no_stats


def test_completion_mask_keeps_tokens_through_the_first_eos():
    ids = torch.tensor([[5, 6, 2, 7, 2], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0]])
    assert completion_mask(ids, 2).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_unknown_reward_and_out_of_range_rewards_stop(saved_tiny, tmp_path):
    with pytest.raises(ValueError, match="unknown reward 'no_such_reward'"):
        spo.main(*spo.make_parser().parse_args_and_config(spo_argv(saved_tiny, tmp_path / "a", "--reward_funcs", "no_such_reward")))  # fmt: skip
    with pytest.raises(RecipeError, match="no evaluation loop"):
        spo.main(*spo.make_parser().parse_args_and_config(spo_argv(saved_tiny, tmp_path / "a", "--eval_files", "x")))
    assert not (tmp_path / "a").exists()
    # a weighted reward outside [reward_min, reward_max] would give the tracker a reward outside [0, 1]: an untrained
    # model's exact_answer is 0, below reward_min 0.5, so the first step stops with an error naming the range
    argv = spo_argv(saved_tiny, tmp_path / "b", "--reward_funcs", "exact_answer", "--reward_min", "0.5")
    with pytest.raises(ValueError, match="reward_min"):
        spo.main(*spo.make_parser().parse_args_and_config(argv))


def alternating(completions, **kwargs):
    """A reward with spread whatever an untrained model writes: 1, 0, 1, 0, ... down the batch."""
    return [float(i % 2 == 0) for i in range(len(completions))]


def test_revisited_prompts_measure_divergence_and_offline_samples_set_the_prior(saved_tiny, tmp_path):
    rows = tmp_path / "rl.jsonl"
    questions = [("1 + 1?", "2"), ("2 + 2?", "4"), ("3 + 3?", "6"), ("4 + 4?", "8")]
    rows.write_text(
        "".join(
            json.dumps(
                {"conversations": [{"role": "user", "content": q}, {"role": "assistant", "content": ""}], "gt": [a]}
            )
            + "\n"
            for q, a in questions
        )
    )
    argv = spo_argv(
        saved_tiny, tmp_path / "run", "--dataset_files", str(rows), "--max_steps", "3", "--learning_rate", "1e-2",
        "--offline_samples", "2", "--reward_funcs", "tests.test_spo_recipe.alternating",
    )  # fmt: skip
    spo.main(*spo.make_parser().parse_args_and_config(argv))
    steps = [
        e for e in json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"] if "reward" in e
    ]
    # every step draws all 4 prompts: the first visit has D = 0 and rho = rho_max, later visits measure the policy's move
    assert steps[0]["tracker/divergence"] == 0.0 and steps[0]["tracker/rho"] == pytest.approx(0.96)
    assert all(e["tracker/divergence"] > 0.0 and e["tracker/rho"] <= 0.96 for e in steps[1:])
    tracker = json.loads((tmp_path / "run" / spo.TRACKER_FILE).read_text())
    assert sorted(pid for pid, *_ in tracker["prompts"]) == [0, 1, 2, 3]
    assert all(visits == 3 for *_, visits in tracker["prompts"])
    # offline prior from 2 answers: N0 = 1 / (1 - 0.875) = 8, then three discounted updates add about 3 samples
    assert all(7.0 < alpha + beta < 12.0 for _, alpha, beta, _ in tracker["prompts"])


def test_checkpoints_hold_the_tracker_and_a_resumed_run_reloads_it(saved_tiny, tmp_path):
    argv = spo_argv(saved_tiny, tmp_path / "run", "--save_strategy", "steps", "--save_steps", "2")
    spo.main(*spo.make_parser().parse_args_and_config(argv))
    saved = json.loads((tmp_path / "run" / "checkpoint-2" / spo.TRACKER_FILE).read_text())
    assert sum(visits for *_, visits in saved["prompts"]) == 8
    resumed = [*argv, "--max_steps", "3", "--resume_from_checkpoint", "true"]
    spo.main(*spo.make_parser().parse_args_and_config(resumed))
    final = json.loads((tmp_path / "run" / spo.TRACKER_FILE).read_text())
    assert sum(visits for *_, visits in final["prompts"]) == 12
