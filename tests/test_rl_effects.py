"""GRPO, CISPO, PPO, SPO and the reward model each do their job on the embedded curriculum, from a tiny SFT model (CPU, slow).

The SFT base is the quickstart's: `recipes/tiny/pretrain.yaml` then `recipes/tiny/sft.yaml` (about 9 minutes on 2
CPU cores), built once and cached on disk (`tests/utils.build_sft_base`; `make test-slow-bases` builds it); set
`MINIMIND_HF_SFT_BASE` to an SFT folder of the same curriculum seed (e.g. `outputs/quickstart/sft`) to use another. `MINIMIND_HF_CURRICULUM_SEED` picks the curriculum (default 0); each seed is
one slow-tier part:

    MINIMIND_HF_SFT_BASE=outputs/quickstart/sft pytest -m slow tests/test_rl_effects.py -s
    MINIMIND_HF_CURRICULUM_SEED=1 pytest -m slow tests/test_rl_effects.py -s

Every run is the shipped YAML as written, with only the start model, the output folder and the curriculum seed set.
The RL prompts are the curriculum's (`minimind_hf.curriculum.records.rl_records`): training questions about the facts
SFT held out, held-out questions about people no chat stage mentions, never trained on. The effect harness
(`minimind_hf.rl.reward_report`) scores the held-out prompts greedy and sampled at the training temperature on three
seeds. Every test prints its measurements (`-s` shows them):

- GRPO, CISPO, PPO and SPO (recipes/ppo.py and recipes/spo.py, ours): the sampled mean exact-answer reward rises
  over the SFT start by more than the start's spread across the three seeds (max - min), the greedy reward does not
  fall, and the final KL to the reference stays below `KL_BOUND`;
- the reward model ranks the held-out chosen answer above the rejected one on >= 80% of pairs;
- GRPO on the reward model's score beside the exact-answer reward (`grpo.yaml` with `--reward_funcs exact_answer
  <reward folder> --reward_weights 1.0 0.3`): the reward model's sampled mean score on the held-out prompts rises by
  more than the start's spread, and the exact-answer reward does not fall by more than its own spread. A strict
  xfail today: the tiny reward model is gamed at the exact answer's cost (see its marker).
"""

import json
import os
import time
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from minimind_hf.curriculum import ensure_curriculum
from minimind_hf.data import load_rl_dataset
from minimind_hf.rewards import get_reward_funcs
from minimind_hf.rl import reward_report
from minimind_hf.tokenization import load_tokenizer
from recipes import grpo, ppo, reward, spo
from tests.utils import build_sft_base

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny"
pytestmark = pytest.mark.slow

SEED = int(os.environ.get("MINIMIND_HF_CURRICULUM_SEED", "0"))
QUIET = ["--report_to", "none", "--save_strategy", "no", "--curriculum_seed", str(SEED)]
# k3 KL to the SFT start, per token, at the last logged step (upstream MiniMind's GRPO runs end near 0.05-0.3).
KL_BOUND = 0.5
# The reward model's weight beside the exact answer's 1.0 (its scores span about -4..4, the exact answer 0..1).
RM_WEIGHT = float(os.environ.get("MINIMIND_HF_RM_WEIGHT", "0.3"))


def report(stage: str, **numbers) -> None:
    print(f"\n[{stage} seed {SEED}] " + json.dumps(numbers, ensure_ascii=False))


def build_base(tmp_path_factory):
    """This module's SFT base (cached; `tests/test_sft_bases.py` builds and checks it as its own slow-tier part)."""
    return build_sft_base(tmp_path_factory, QUIET)


@pytest.fixture(scope="session")
def sft_base(tmp_path_factory):
    return build_base(tmp_path_factory)


@pytest.fixture(scope="session")
def heldout():
    """The curriculum's held-out RL prompts, as the RL recipe reads them."""
    return load_rl_dataset([ensure_curriculum(seed=SEED)["rl"]["eval"]])


def measure(folder, heldout, reward_funcs, temperature: float) -> dict:
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    return reward_report(model, load_tokenizer(folder), heldout, reward_funcs, temperature=temperature)


def train(module, config: str, start: Path, out: Path, *extra: str) -> tuple[dict, float]:
    argv = ["--config", str(TINY / config), "--model_name_or_path", str(start), "--output_dir", str(out)]
    began = time.perf_counter()
    module.main(*module.make_parser().parse_args_and_config([*argv, *QUIET, *extra]))
    return json.loads((out / "trainer_state.json").read_text()), time.perf_counter() - began


def logged(state: dict, key: str) -> list[float]:
    return [entry[key] for entry in state["log_history"] if key in entry]


@pytest.fixture(scope="session")
def exact():
    return get_reward_funcs(["exact_answer"])


@pytest.fixture(scope="session")
def temperature():
    """The shipped GRPO YAML's sampling temperature: the harness samples as training does."""
    return grpo.make_parser().parse_args_and_config(["--config", str(TINY / "grpo.yaml")])[1].temperature


@pytest.fixture(scope="session")
def start_report(sft_base, heldout, exact, temperature):
    """The SFT start on the held-out prompts."""
    return measure(sft_base, heldout, exact, temperature)


def summary(result: dict, name: str) -> dict:
    sampled = result["sampled"][name]
    return {"greedy": round(result["greedy"][name], 4), **{k: round(sampled[k], 4) for k in ("mean", "min", "max")}}


@pytest.mark.parametrize(
    ("recipe", "config"), [(grpo, "grpo.yaml"), (grpo, "cispo.yaml"), (ppo, "ppo.yaml"), (spo, "spo.yaml")]
)
def test_rl_raises_heldout_exact_answer_reward(
    recipe, config, sft_base, heldout, exact, temperature, start_report, tmp_path
):
    out = tmp_path / config.removesuffix(".yaml")
    state, seconds = train(recipe, config, sft_base, out)
    after = measure(out, heldout, exact, temperature)
    before_s, after_s = summary(start_report, "exact_answer"), summary(after, "exact_answer")
    kl = logged(state, "kl")
    train_reward = logged(state, "rewards/exact_answer/mean")
    report(
        config.removesuffix(".yaml"),
        steps=state["global_step"],
        seconds=round(seconds),
        heldout_before=before_s,
        heldout_after=after_s,
        train_reward_first_last=[round(train_reward[0], 3), round(train_reward[-1], 3)],
        kl_last=round(kl[-1], 4),
        kl_max=round(max(kl), 4),
        n=after["n"],
    )
    spread = before_s["max"] - before_s["min"]
    assert after_s["mean"] - before_s["mean"] > spread, (before_s, after_s)
    assert after_s["greedy"] >= before_s["greedy"], (before_s, after_s)
    assert kl[-1] < KL_BOUND


@pytest.fixture(scope="session")
def reward_model_run(sft_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("reward") / "reward"
    train(reward, "reward.yaml", sft_base, out)
    return out, json.loads((out / "ranking_accuracy.json").read_text())


def test_reward_model_ranks_heldout_pairs(reward_model_run):
    _, accuracy = reward_model_run
    report("reward", **{k: round(v, 4) for k, v in accuracy.items()})
    assert accuracy["all"] >= 0.80


@pytest.mark.xfail(
    strict=True,
    reason="the tiny reward model prefers other answers than the right one (5 epochs: wrong_fact pairs 61%): from the "
    "seed-0 "
    "quickstart SFT, weight 0.3 raises its score -2.14 -> -1.94 while the exact answer falls 73.1% -> 63.6% sampled; "
    "weight 0.1 keeps the exact answer (76.7%) but not the score (-2.20); weight 0.2 (8-epoch model): -2.82 -> -1.95, "
    "exact 72.9% -> 58.1%; weight 1: -1.50, exact 33.7%. On wrong-fact "
    "pairs about the held-out prompts' facts it ranks 53.9% right (chance), also when trained on wrong-fact pairs of "
    "the RL training facts: its held-out score can only rise through style",
)
def test_grpo_on_the_reward_model_raises_its_score(reward_model_run, sft_base, heldout, temperature, tmp_path):
    folder, _ = reward_model_run
    funcs = get_reward_funcs(["exact_answer", str(folder)])
    before = measure(sft_base, heldout, funcs, temperature)
    out = tmp_path / "grpo_rm"
    weights = ["--reward_weights", "1.0", str(RM_WEIGHT)]
    state, seconds = train(grpo, "grpo.yaml", sft_base, out, "--reward_funcs", "exact_answer", str(folder), *weights)
    after = measure(out, heldout, funcs, temperature)
    name = folder.name
    report(
        "grpo_rm",
        steps=state["global_step"],
        seconds=round(seconds),
        rm_before=summary(before, name),
        rm_after=summary(after, name),
        exact_before=summary(before, "exact_answer"),
        exact_after=summary(after, "exact_answer"),
        kl_last=round(logged(state, "kl")[-1], 4),
    )
    rm_before, rm_after = summary(before, name), summary(after, name)
    assert rm_after["mean"] - rm_before["mean"] > rm_before["max"] - rm_before["min"]
    exact_before, exact_after = summary(before, "exact_answer"), summary(after, "exact_answer")
    assert exact_after["mean"] >= exact_before["mean"] - (exact_before["max"] - exact_before["min"])
